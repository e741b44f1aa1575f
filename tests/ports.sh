# TCP ports on loopback for the test servers, the tests and the benchmarks
# (sourced, not run).

# A TCP port no socket uses, below the kernel's range for outgoing
# connections (whose local ports would otherwise take ours under us).
free_port() {
	local p low
	read -r low _ </proc/sys/net/ipv4/ip_local_port_range
	[ "$low" -gt 10000 ] || low=32768
	for _ in $(seq 200); do
		p=$((10000 + RANDOM % (low - 10000)))
		if ! ss -Htan "sport = :$p" | grep -q .; then
			echo "$p"
			return 0
		fi
	done
	echo "no free TCP port" >&2
	return 1
}

# wait_port PORT SECONDS: true once something listens on PORT.
wait_port() {
	local i
	for i in $(seq $(($2 * 10))); do
		if ss -Hltn "sport = :$1" | grep -q .; then return 0; fi
		sleep 0.1
	done
	return 1
}
