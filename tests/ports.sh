# TCP ports on loopback for the test servers, the tests and the benchmarks
# (sourced, not run).

# A TCP port nobody listens on, from a range of our own.
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 20000))
		if ! ss -Hltn "sport = :$p" | grep -q .; then
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
