#!/usr/bin/env bash
# Make the certificates for Ray's TLS (mutual TLS on every gRPC channel: GCS, raylets, workers, drivers):
# a private CA and, per node, a key and a certificate signed by it whose subjectAltName holds the node's IPs.
#
#   scripts/make-tls-certs.sh OUT_DIR NAME=IP[,IP|DNS...] [NAME=IP ...]
#   e.g. scripts/make-tls-certs.sh ~/lstm-bench-tls head=10.0.0.5 worker1=10.0.0.6 worker2=10.0.0.7 driver=10.0.0.9
#
# Writes (umask 077: every file mode 600, folders 700):
#   OUT_DIR/ca.key, OUT_DIR/ca.crt    the CA. ca.key signs certificates: it never leaves this machine.
#   OUT_DIR/NAME/node.key, node.crt   the node's key and certificate (serverAuth + clientAuth: a Ray node is
#   OUT_DIR/NAME/ca.crt               both), and a copy of the CA certificate: copy the folder OUT_DIR/NAME, and
#                                     only it, to that node, and start Ray there with TLS_DIR pointing at it:
#     TLS_DIR=~/.ray/tls scripts/ray-head.sh 10.0.0.5              (head)
#     TLS_DIR=~/.ray/tls scripts/ray-worker.sh 10.0.0.5 10.0.0.6   (each worker)
# A driver needs its own folder too (the cluster asks every client for a certificate from this CA); a driver
# on the head may use the head's. Run again with the same OUT_DIR to add nodes: an existing CA is reused.
#
# Each certificate's subjectAltName: the given IPs (IP:) and names (DNS:), plus IP:127.0.0.1 and DNS:localhost
# (Ray's processes on a node also talk to each other there). Ray checks the server's certificate against the
# address it dials, so list every address a node is reached at.
#
# Environment: DAYS (node certificate lifetime, 365), CA_DAYS (3650), KEY_BITS (RSA key size, 2048),
# OPENSSL (the openssl binary).
set -euo pipefail

usage() {
    echo "usage: $0 OUT_DIR NAME=IP[,IP|DNS...] [NAME=IP ...]   (env: DAYS=365 CA_DAYS=3650 KEY_BITS=2048)" >&2
    exit 2
}
die() { echo "make-tls-certs: $*" >&2; exit 1; }

[[ $# -ge 2 && $1 != -* ]] || usage
OUT=$1; shift
OPENSSL=${OPENSSL:-openssl}
DAYS=${DAYS:-365}
CA_DAYS=${CA_DAYS:-3650}
KEY_BITS=${KEY_BITS:-2048}
command -v "$OPENSSL" >/dev/null || die "no openssl on PATH (set OPENSSL=path/to/openssl)"
[[ $DAYS =~ ^[0-9]+$ && $CA_DAYS =~ ^[0-9]+$ && $KEY_BITS =~ ^[0-9]+$ ]] || die "DAYS, CA_DAYS and KEY_BITS must be integers"

is_ip() {  # IPv4 dotted quad, or anything with a colon (IPv6)
    [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || $1 == *:* ]]
}

# Check every argument before writing anything.
declare -a NAMES SANS
for spec in "$@"; do
    [[ $spec == *=* ]] || die "'$spec': expected NAME=IP[,IP|DNS...]"
    name=${spec%%=*}
    addrs=${spec#*=}
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ && $name != ca* ]] ||
        die "'$name': a node name is letters, digits, '.', '_', '-' (and not ca...)"
    [[ -n $addrs ]] || die "'$spec': no address"
    san=""
    IFS=, read -r -a parts <<<"$addrs"
    for a in "${parts[@]}"; do
        if is_ip "$a"; then
            san+="IP:$a,"
        elif [[ $a =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
            san+="DNS:$a,"
        else
            die "'$a' (node $name): neither an IP address nor a DNS name"
        fi
    done
    [[ ,$san, == *,IP:127.0.0.1,* ]] || san+="IP:127.0.0.1,"
    [[ ,$san, == *,DNS:localhost,* ]] || san+="DNS:localhost,"
    NAMES+=("$name")
    SANS+=("${san%,}")
done

umask 077
mkdir -p "$OUT"
chmod 700 "$OUT"
tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT

if [[ -s $OUT/ca.key && -s $OUT/ca.crt ]]; then
    echo "make-tls-certs: reusing the CA in $OUT" >&2
else
    "$OPENSSL" req -x509 -new -newkey "rsa:$KEY_BITS" -nodes -sha256 -days "$CA_DAYS" \
        -keyout "$OUT/ca.key" -out "$OUT/ca.crt" -subj "/CN=lstm-bench Ray CA $(date -u +%Y%m%dT%H%M%SZ)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>"$tmp/err" || { cat "$tmp/err" >&2; die "making the CA failed"; }
    echo "make-tls-certs: new CA $OUT/ca.crt (its key $OUT/ca.key stays here)" >&2
fi

for i in "${!NAMES[@]}"; do
    name=${NAMES[$i]}
    dir=$OUT/$name
    mkdir -p "$dir"
    chmod 700 "$dir"
    cat >"$tmp/ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = ${SANS[$i]}
EOF
    "$OPENSSL" req -new -newkey "rsa:$KEY_BITS" -nodes -sha256 -keyout "$dir/node.key" -out "$tmp/csr" \
        -subj "/CN=$name" 2>"$tmp/err" || { cat "$tmp/err" >&2; die "making the key of $name failed"; }
    "$OPENSSL" x509 -req -in "$tmp/csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -sha256 -days "$DAYS" \
        -set_serial "0x$("$OPENSSL" rand -hex 16)" -extfile "$tmp/ext" -out "$dir/node.crt" 2>"$tmp/err" ||
        { cat "$tmp/err" >&2; die "signing the certificate of $name failed"; }
    cp "$OUT/ca.crt" "$dir/ca.crt"
    chmod 600 "$dir/node.key" "$dir/node.crt" "$dir/ca.crt"
    "$OPENSSL" verify -CAfile "$OUT/ca.crt" "$dir/node.crt" >/dev/null || die "$dir/node.crt does not verify"
    echo "make-tls-certs: $dir/{node.key,node.crt,ca.crt}  subjectAltName ${SANS[$i]}" >&2
done
echo "make-tls-certs: copy each $OUT/NAME folder to its node (mode 700) and start Ray there with TLS_DIR=that folder" >&2
