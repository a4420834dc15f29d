#!/bin/sh
# Makes a throw-away CA and a server certificate in DIR for the TLS tests (nothing here is
# committed: keys are generated at test time). The certificate is for localhost and 127.0.0.1-3
# unless SAN (an openssl subjectAltName list) names others; its CN is SAN's first DNS name.
#   make-certs.sh DIR [SAN]  ->  DIR/ca.pem DIR/server.pem DIR/server.key
set -eu
dir=$1
san=${2:-DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3}
cn=$(printf '%s\n' "$san" | tr ',' '\n' | sed -n 's/^DNS://p' | head -n 1)
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=egress-warden test CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=${cn:-localhost}" -keyout server.key -out server.csr 2>/dev/null
printf '%s\n' "subjectAltName=$san" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
