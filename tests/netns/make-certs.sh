#!/bin/sh
# A throw-away CA and a server certificate for the lab's names (*.lab.test) in DIR, generated
# at test time (no key is committed).
#   make-certs.sh DIR  ->  DIR/ca.pem DIR/server.pem DIR/server.key
set -eu
dir=$1
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=egress-warden lab CA" -keyout ca.key -out ca.pem \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=api.lab.test" -keyout server.key -out server.csr 2>/dev/null
printf '%s\n' "subjectAltName=DNS:api.lab.test,DNS:*.lab.test" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
