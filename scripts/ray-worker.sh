#!/usr/bin/env bash
# Join this host to an lstm-bench Ray cluster as a worker node, with token authentication.
#
#   scripts/ray-worker.sh HEAD_IP[:PORT] NODE_IP [--num-gpus N] [--resources '{"name": amount}'] [other ray start flags]
#
#   HEAD_IP[:PORT]  the head's private address (port defaults to $RAY_PORT, else 6379)
#   NODE_IP         this host's address on the same private network
#
# The token must be the head's (see what scripts/ray-head.sh printed). Ray looks for it in this order:
# $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token. RAY_AUTH_MODE=token is set here: a worker
# started without it cannot join a head that has authentication on.
# TLS_DIR (optional): this node's folder from scripts/make-tls-certs.sh (ca.crt, node.crt, node.key); needed
# when the head was started with TLS, refused by it otherwise. TIMING_SLOT (1; 0: none): the node's
# "timing_slot" resource, added to --resources (lstm-bench's exclusive placement takes it; see below).
# Every worker needs the project installed in the same Python as `ray` (pip install -e . or the wheel); no
# dataset is needed on workers (the driver ships it through Ray's object store).
set -euo pipefail

if [[ $# -lt 2 || $1 == -* || $2 == -* ]]; then
    echo "usage: $0 HEAD_IP[:PORT] NODE_IP [--num-gpus N] [--resources JSON] [extra ray start flags]   (env: TLS_DIR)" >&2
    exit 2
fi
HEAD=$1; NODE_IP=$2; shift 2
[[ $HEAD == *:* ]] || HEAD=$HEAD:${RAY_PORT:-6379}
RAY=${RAY:-ray}
command -v "$RAY" >/dev/null || { echo "$0: no '$RAY' on PATH (activate the venv, or set RAY=path/to/ray)" >&2; exit 1; }

# TLS (opt-in): TLS_DIR=a folder holding ca.crt, node.crt and node.key, as scripts/make-tls-certs.sh makes
# one per node. Ray then encrypts and mutually authenticates every gRPC channel (RAY_USE_TLS=1 with
# RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT: Ray 2.60's names, read by its C++ core and by
# ray/_private/grpc_utils.py): a process without a certificate from the same CA cannot connect.
if [[ -n ${TLS_DIR:-} ]]; then
    [[ -d $TLS_DIR ]] || { echo "$0: TLS_DIR=$TLS_DIR is not a folder" >&2; exit 1; }
    TLS_DIR=$(cd "$TLS_DIR" && pwd)  # absolute: Ray's processes do not share our working directory
    for f in ca.crt node.crt node.key; do
        [[ -s $TLS_DIR/$f ]] || { echo "$0: no $TLS_DIR/$f (make it with scripts/make-tls-certs.sh)" >&2; exit 1; }
    done
    if [[ -n $(find "$TLS_DIR/node.key" -perm /077) ]]; then
        echo "$0: $TLS_DIR/node.key is open to group or others: chmod 600 it" >&2
        exit 1
    fi
    export RAY_USE_TLS=1 RAY_TLS_SERVER_CERT=$TLS_DIR/node.crt RAY_TLS_SERVER_KEY=$TLS_DIR/node.key \
        RAY_TLS_CA_CERT=$TLS_DIR/ca.crt
elif [[ ${RAY_USE_TLS:-0} == 1 || ${RAY_USE_TLS:-0} == true ]]; then  # set by hand, Ray's way: check it
    for v in RAY_TLS_SERVER_CERT RAY_TLS_SERVER_KEY RAY_TLS_CA_CERT; do
        [[ -n ${!v:-} && -s ${!v} ]] || { echo "$0: RAY_USE_TLS=$RAY_USE_TLS but $v is unset or not a file" >&2; exit 1; }
    done
fi
tls_on=0
if [[ ${RAY_USE_TLS:-0} == 1 || ${RAY_USE_TLS:-0} == true ]]; then tls_on=1; fi

export RAY_AUTH_MODE=token
if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
    :  # taken from the environment
elif [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
    [[ -s $RAY_AUTH_TOKEN_PATH ]] || { echo "$0: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2; exit 1; }
elif [[ ! -s ~/.ray/auth_token ]]; then
    echo "$0: no token: copy the head's ~/.ray/auth_token here (mode 600), or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN" >&2
    exit 1
fi

source "$(dirname "${BASH_SOURCE[0]}")/ray-timing-slot.sh"  # sets args: "$@" + the timing slot

"$RAY" start --address="$HEAD" --node-ip-address="$NODE_IP" "${args[@]}"
tls_note=""
if ((tls_on)); then tls_note=" with TLS"; fi
echo "joined $HEAD as $NODE_IP$tls_note; check with: RAY_AUTH_MODE=token $RAY status --address=$HEAD; stop with: $RAY stop"
