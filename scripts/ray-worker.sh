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
# Every worker needs the project installed in the same Python as `ray` (pip install -e . or the wheel); no
# dataset is needed on workers (the driver ships it through Ray's object store).
set -euo pipefail

if [[ $# -lt 2 || $1 == -* || $2 == -* ]]; then
    echo "usage: $0 HEAD_IP[:PORT] NODE_IP [--num-gpus N] [--resources JSON] [extra ray start flags]" >&2
    exit 2
fi
HEAD=$1; NODE_IP=$2; shift 2
[[ $HEAD == *:* ]] || HEAD=$HEAD:${RAY_PORT:-6379}
RAY=${RAY:-ray}
command -v "$RAY" >/dev/null || { echo "$0: no '$RAY' on PATH (activate the venv, or set RAY=path/to/ray)" >&2; exit 1; }

export RAY_AUTH_MODE=token
if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
    :  # taken from the environment
elif [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
    [[ -s $RAY_AUTH_TOKEN_PATH ]] || { echo "$0: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty" >&2; exit 1; }
elif [[ ! -s ~/.ray/auth_token ]]; then
    echo "$0: no token: copy the head's ~/.ray/auth_token here (mode 600), or set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN" >&2
    exit 1
fi

"$RAY" start --address="$HEAD" --node-ip-address="$NODE_IP" "$@"
echo "joined $HEAD as $NODE_IP; check with: RAY_AUTH_MODE=token $RAY status --address=$HEAD; stop with: $RAY stop"
