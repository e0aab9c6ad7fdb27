#!/usr/bin/env bash
# Start the Ray head node of an lstm-bench cluster, on a real host, with token authentication.
#
#   scripts/ray-head.sh NODE_IP [extra `ray start` flags, e.g. --num-gpus 1 --resources '{"bigmem": 1}']
#
#   NODE_IP    this host's address on the cluster's PRIVATE network (the one the workers reach it on)
#   RAY_PORT   GCS port (default 6379); workers join at NODE_IP:RAY_PORT
#   DASHBOARD  1 (default): dashboard + job server bound to NODE_IP:8265 (needed by `ray job submit`);
#              0: no dashboard (drivers then connect with `lstm-bench run ... --address NODE_IP:RAY_PORT`)
#
# Keep the head on a private network (VPC subnet, VPN, or a firewall that lets in only the worker hosts):
# Ray's ports run arbitrary code for whoever holds the token, and the token travels in clear text (no TLS).
# Never expose 6379, 8265, 10001 or the node's other Ray ports to the internet.
#
# Token authentication: RAY_AUTH_MODE=token (Ray 2.59+ turns it on for a head that finds a token; we set it
# explicitly, so that a head without one fails instead of starting open). The token is, in Ray's order:
# $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, which this script creates
# (`ray get-auth-token --generate`, 256 random bits, mode 600) when none of them exists.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    echo "usage: $0 NODE_IP [extra ray start flags]   (env: RAY_PORT=6379 DASHBOARD=1)" >&2
    exit 2
fi
NODE_IP=$1; shift
PORT=${RAY_PORT:-6379}
RAY=${RAY:-ray}  # e.g. RAY=.venv/bin/ray
command -v "$RAY" >/dev/null || { echo "$0: no '$RAY' on PATH (activate the venv, or set RAY=path/to/ray)" >&2; exit 1; }

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
    dashboard=(--include-dashboard=true --dashboard-host="$NODE_IP")  # private address only, never 0.0.0.0
fi

"$RAY" start --head --node-ip-address="$NODE_IP" --port="$PORT" "${dashboard[@]}" "$@"

cat <<EOF

Ray head up at $NODE_IP:$PORT with token authentication.
Workers need the same token. Copy it to each worker host:
    $token_hint
then on each worker:
    scripts/ray-worker.sh $NODE_IP:$PORT WORKER_IP [--num-gpus 1]
Drivers need it too (RAY_AUTH_MODE=token and the token, as above):
    RAY_AUTH_MODE=token lstm-bench run suites/smoke.yaml --address $NODE_IP:$PORT
EOF
if [[ ${DASHBOARD:-1} == 1 ]]; then
    echo "    RAY_AUTH_MODE=token ray job submit --address http://$NODE_IP:8265 --working-dir . -- lstm-bench run suites/smoke.yaml --address auto"
fi
echo "Stop this node with: $RAY stop"
