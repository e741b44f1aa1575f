#!/bin/bash
# tests/make-certs.sh DIR: X.509 certificates for TLS tests and benchmarks,
# laid out as cdisk-serve, nbdkit, nbdinfo and QEMU look for them:
#   DIR/{ca-cert,server-cert,server-key}.pem        the server (127.0.0.1, localhost)
#   DIR/client/{ca-cert,client-cert,client-key}.pem a client named "alice"
#   DIR/anon/ca-cert.pem                            a client without a certificate
# They expire in two days: they are for one run.
set -eu
d=$1
mkdir -p "$d/client" "$d/anon"
cd "$d"
certtool --generate-privkey --key-type ecdsa >ca-key.pem
printf 'cn = cdisk test CA\nca\ncert_signing_key\nexpiration_days = 2\n' >ca.info
certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info \
	--outfile ca-cert.pem
certtool --generate-privkey --key-type ecdsa >server-key.pem
printf 'cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >server.info
certtool --generate-certificate --load-ca-certificate ca-cert.pem \
	--load-ca-privkey ca-key.pem --load-privkey server-key.pem \
	--template server.info --outfile server-cert.pem
certtool --generate-privkey --key-type ecdsa >client/client-key.pem
printf 'cn = alice\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' >client.info
certtool --generate-certificate --load-ca-certificate ca-cert.pem \
	--load-ca-privkey ca-key.pem --load-privkey client/client-key.pem \
	--template client.info --outfile client/client-cert.pem
cp ca-cert.pem client/
cp ca-cert.pem anon/
