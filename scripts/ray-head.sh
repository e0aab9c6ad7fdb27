#!/usr/bin/env bash
# Start the Ray head node of an lstm-bench cluster, on a real host, with token authentication.
#
#   scripts/ray-head.sh NODE_IP [extra `ray start` flags, e.g. --num-gpus 1 --resources '{"bigmem": 1}']
#
#   NODE_IP    this host's address on the cluster's PRIVATE network (the one the workers reach it on)
#   RAY_PORT   GCS port (default 6379); workers join at NODE_IP:RAY_PORT
#   DASHBOARD  1 (default): dashboard + job server on port 8265 (needed by `ray job submit`);
#              0: no dashboard (drivers then connect with `lstm-bench run ... --address NODE_IP:RAY_PORT`)
#   DASHBOARD_HOST  where the dashboard listens: NODE_IP by default, 127.0.0.1 when TLS is on (its HTTP is
#              outside Ray's TLS: reach it through `ssh -L 8265:127.0.0.1:8265 HEAD`); never 0.0.0.0
#   TLS_DIR    turn on Ray's TLS with this node's certificates (see below and scripts/make-tls-certs.sh)
#   TIMING_SLOT  the node's "timing_slot" resource (1; 0: none), added to --resources (see below)
#
# Keep the head on a private network (VPC subnet, VPN, or a firewall that lets in only the worker hosts):
# Ray's ports run arbitrary code for whoever holds the token, and without TLS_DIR the token travels in clear
# text. Never expose 6379, 8265, 10001 or the node's other Ray ports to the internet.
#
# Token authentication: RAY_AUTH_MODE=token (Ray 2.59+ turns it on for a head that finds a token; we set it
# explicitly, so that a head without one fails instead of starting open). The token is, in Ray's order:
# $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, which this script creates
# (`ray get-auth-token --generate`, 256 random bits, mode 600) when none of them exists.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: $0 NODE_IP [extra ray start flags]   (env: RAY_PORT=6379 DASHBOARD=1 DASHBOARD_HOST TLS_DIR)" >&2
    exit 2
fi
NODE_IP=$1; shift
PORT=${RAY_PORT:-6379}
RAY=${RAY:-ray}  # e.g. RAY=.venv/bin/ray
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
if [[ -z ${RAY_AUTH_TOKEN:-} && -z ${RAY_AUTH_TOKEN_PATH:-} ]]; then
    if [[ ! -s ~/.ray/auth_token ]]; then
        (umask 077 && "$RAY" get-auth-token --generate >/dev/null)
    fi
    chmod 600 ~/.ray/auth_token
    token_hint="ssh WORKER 'umask 077 && mkdir -p ~/.ray && cat > ~/.ray/auth_token' < ~/.ray/auth_token"
elif [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
    [[ -s $RAY_AUTH_TOKEN_PATH ]] || { echo "$0: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2; exit 1; }
    token_hint="copy $RAY_AUTH_TOKEN_PATH to each worker (mode 600) and point RAY_AUTH_TOKEN_PATH at it there"
else
    token_hint="give each worker the same RAY_AUTH_TOKEN (from a secret store; not on a command line)"
fi

dashboard=(--include-dashboard=false)
if [[ ${DASHBOARD:-1} == 1 ]]; then
    if ((tls_on)); then dash_host=${DASHBOARD_HOST:-127.0.0.1}; else dash_host=${DASHBOARD_HOST:-$NODE_IP}; fi
    case $dash_host in
        0.0.0.0 | :: | "[::]" | "")
            echo "$0: DASHBOARD_HOST='$dash_host' would listen on every interface: give one address" >&2
            exit 2 ;;
    esac
    dashboard=(--include-dashboard=true --dashboard-host="$dash_host")  # a private address or loopback only
fi

source "$(dirname "${BASH_SOURCE[0]}")/ray-timing-slot.sh"  # sets args: "$@" + the timing slot

"$RAY" start --head --node-ip-address="$NODE_IP" --port="$PORT" "${dashboard[@]}" "${args[@]}"

tls_note="and no TLS (the token crosses the network in clear: keep to a private network)"
if ((tls_on)); then tls_note="and TLS (CA $RAY_TLS_CA_CERT)"; fi
cat <<EOF

Ray head up at $NODE_IP:$PORT with token authentication $tls_note.
Workers need the same token. Copy it to each worker host:
    $token_hint
then on each worker:
    ${TLS_DIR:+TLS_DIR=THAT_WORKERS_TLS_DIR }scripts/ray-worker.sh $NODE_IP:$PORT WORKER_IP [--num-gpus 1]
Drivers need it too (RAY_AUTH_MODE=token and the token, as above):
    RAY_AUTH_MODE=token lstm-bench run suites/smoke.yaml --address $NODE_IP:$PORT
EOF
if ((tls_on)); then
    echo "  and, with TLS, a certificate from the same CA (a driver on this host may use this node's):"
    echo "    RAY_USE_TLS=1 RAY_TLS_SERVER_CERT=$RAY_TLS_SERVER_CERT RAY_TLS_SERVER_KEY=$RAY_TLS_SERVER_KEY RAY_TLS_CA_CERT=$RAY_TLS_CA_CERT"
fi
if [[ ${DASHBOARD:-1} == 1 ]]; then
    echo "    RAY_AUTH_MODE=token ray job submit --address http://$dash_host:8265 --working-dir . -- lstm-bench run suites/smoke.yaml --address auto"
fi
echo "Stop this node with: $RAY stop"
