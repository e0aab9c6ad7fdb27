#!/usr/bin/env bash
# A two-host Ray cluster on one Linux machine, built from network namespaces: a demo and a test bed for
# multi-host sweeps without a second machine. Needs root and iproute2 (`ip netns`).
#
#   sudo scripts/netns-cluster.sh up                    # namespaces lb-head + lb-worker, a Ray node in each
#   sudo scripts/netns-cluster.sh run [SUITE [OUT_DIR]] [more `lstm-bench run` flags]
#                                                       # default: suites/smoke.yaml -> results/
#   sudo scripts/netns-cluster.sh status
#   sudo scripts/netns-cluster.sh down                  # idempotent: kills what runs in the namespaces,
#                                                       # deletes them (and the veth pair) and the state dir
#
# Layout: lb-head (10.213.77.1/24) <-- veth lb-veth-h / lb-veth-w --> lb-worker (10.213.77.2/24), a /24 of
# its own with no route anywhere else: Ray's traffic stays between the two namespaces. Each node gets its own
# --temp-dir (the namespaces share one filesystem; Ray's session dirs and sockets would otherwise collide),
# one CPU (so a sweep spreads over both) and a custom resource (host_head / host_worker) to tell them apart.
#
# The nodes are started by the recipes a real cluster uses, scripts/ray-head.sh and scripts/ray-worker.sh.
# Token authentication stays on: `up` writes a fresh random token to $STATE/auth_token (mode 600) and every
# Ray process here (head, worker, the `run` driver) gets RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=that file.
# ~/.ray/auth_token is neither read nor written.
#
# TLS (opt-in): `LB_TLS=1 netns-cluster.sh up` also makes a CA and a certificate per host
# (scripts/make-tls-certs.sh into $STATE/tls: head/ for 10.213.77.1, worker/ for 10.213.77.2) and starts each
# node with TLS_DIR=its folder; `run` and `status` then give the driver in lb-head the head's certificate
# (RAY_USE_TLS=1 RAY_TLS_SERVER_CERT/_KEY RAY_TLS_CA_CERT), as a driver on the head would have.
#
# Environment: RAY_PORT (6379), LB_NETNS_STATE (/run/lb-netns: tokens, certificates, logs, Ray temp dirs; keep
# it short, Ray's unix socket paths live under it; it must be a real directory owned by the caller (root) with
# mode 700, or not exist yet: a symlink or a folder someone else made is refused, since root keeps the
# cluster's token there and deletes what `up` made from it), LB_BIN (folder holding `ray` and `lstm-bench`; default: the
# repository's .venv/bin, else wherever `ray` is on PATH), LB_NETNS_TIMEOUT (seconds to wait for nodes, 90),
# LB_TLS (1: TLS, with `up`), LB_NETNS_WORKER_GPUS (GPUs the worker node declares to Ray, 0; a fake one makes it
# the cluster's only GPU node, for the fault tests: cuda trials are placed there and fail if one starts).
set -euo pipefail

HEAD_NS=lb-head
WORKER_NS=lb-worker
HEAD_IF=lb-veth-h
WORKER_IF=lb-veth-w
HEAD_IP=10.213.77.1
WORKER_IP=10.213.77.2
PREFIX=24
PORT=${RAY_PORT:-6379}
STATE=${LB_NETNS_STATE:-/run/lb-netns}  # /run: only root can create there (never a predictable /tmp name)
TIMEOUT=${LB_NETNS_TIMEOUT:-90}
WORKER_GPUS=${LB_NETNS_WORKER_GPUS:-0}  # GPUs the worker declares (Ray's GPU resource; none need exist)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    echo "usage: $0 up | run [SUITE [OUT_DIR]] [lstm-bench run flags...] | status | down" >&2
    exit 2
}

die() { echo "netns-cluster: $*" >&2; exit 1; }
log() { echo "netns-cluster: $*" >&2; }

find_bin() {
    if [[ -n ${LB_BIN:-} ]]; then
        BIN=$LB_BIN
    elif [[ -x $ROOT/.venv/bin/ray ]]; then
        BIN=$ROOT/.venv/bin
    elif command -v ray >/dev/null; then
        BIN=$(dirname "$(command -v ray)")
    else
        die "no ray found: set LB_BIN to the folder holding ray and lstm-bench (e.g. .venv/bin)"
    fi
    [[ -x $BIN/ray ]] || die "$BIN/ray is not executable (LB_BIN?)"
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces): run with sudo"
    command -v ip >/dev/null || die "needs iproute2 (the ip command)"
}

# The state folder holds the token and is written and cleaned as root: trust it only if it is ours alone.
check_state() {
    if [[ -L $STATE ]]; then die "$STATE is a symlink: refusing (LB_NETNS_STATE must be a real directory)"; fi
    [[ -e $STATE ]] || return 0
    [[ -d $STATE ]] || die "$STATE exists and is not a directory"
    local owner mode
    owner=$(stat -c %u -- "$STATE")
    mode=$(stat -c %a -- "$STATE")
    [[ $owner == "$(id -u)" ]] || die "$STATE is owned by uid $owner, not $(id -u): refusing to keep a token there"
    (( (8#$mode & 8#077) == 0 )) || die "$STATE has mode $mode: it must give no access to group or others (700)"
}

make_state() {
    check_state
    if [[ ! -e $STATE ]]; then
        mkdir -p -- "$(dirname -- "$STATE")"
        (umask 077 && mkdir -- "$STATE") || die "cannot create $STATE"  # fails if someone made it meanwhile
    fi
}

ns_exists() { [[ -e /run/netns/$1 || -e /var/run/netns/$1 ]]; }

# Every Ray process here runs through this: inside namespace $1, with token auth from our own token file.
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is dropped: with it set to 0 `ray start --address` refuses to join (each
# namespace has a real address, so Ray has no 127.0.0.1 to rewrite). RAY_ADDRESS, RAY_AUTH_TOKEN, the TLS
# variables and TLS_DIR are dropped so that nothing from the caller's environment points elsewhere, overrides
# the token file or changes the TLS setting; callers add what they need as VAR=value arguments.
in_ns() {
    local ns=$1; shift
    ip netns exec "$ns" env -u RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER -u RAY_ADDRESS -u RAY_AUTH_TOKEN \
        -u RAY_USE_TLS -u RAY_TLS_SERVER_CERT -u RAY_TLS_SERVER_KEY -u RAY_TLS_CA_CERT -u TLS_DIR \
        RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_USAGE_STATS_ENABLED=0 "$@"
}

tls_on() { [[ -s $STATE/tls/head/node.crt ]]; }

# The environment of a driver in lb-head: with TLS, the head's certificate (a driver on the head may use it).
driver_env() {
    DRIVER_ENV=()
    if tls_on; then
        DRIVER_ENV=(RAY_USE_TLS=1 RAY_TLS_SERVER_CERT="$STATE/tls/head/node.crt"
                    RAY_TLS_SERVER_KEY="$STATE/tls/head/node.key" RAY_TLS_CA_CERT="$STATE/tls/head/ca.crt")
    fi
}

wait_for_nodes() {  # until both nodes are alive in the GCS, or TIMEOUT
    driver_env
    in_ns "$HEAD_NS" "${DRIVER_ENV[@]}" "$BIN/python" - "$HEAD_IP:$PORT" "$TIMEOUT" <<'EOF'
import sys, time
import ray
address, timeout = sys.argv[1], float(sys.argv[2])
ray.init(address=address, log_to_driver=False, logging_level="error")
deadline = time.time() + timeout
while True:
    alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    if len(alive) >= 2:
        print("netns-cluster: nodes alive:", ", ".join(alive), file=sys.stderr)
        break
    if time.time() > deadline:
        sys.exit(f"netns-cluster: only {alive} alive after {timeout:g}s")
    time.sleep(0.5)
EOF
}

kill_ns_processes() {  # $1: namespace. TERM, wait, then KILL; only processes inside that namespace.
    local ns=$1 pids deadline
    ns_exists "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z $pids ]] && return 0
    log "stopping $(wc -w <<<"$pids") process(es) in $ns"
    kill -TERM $pids 2>/dev/null || true
    deadline=$((SECONDS + 5))  # gcs_server and the autoscaler monitor may ignore TERM
    while pids=$(ip netns pids "$ns" 2>/dev/null || true); [[ -n $pids ]]; do
        if ((SECONDS >= deadline)); then
            kill -KILL $pids 2>/dev/null || true
        fi
        ((SECONDS >= deadline + 10)) && { log "processes left in $ns: $pids"; return 1; }
        sleep 0.2
    done
}

cmd_down() {
    need_root
    local rc=0
    for ns in "$WORKER_NS" "$HEAD_NS"; do
        kill_ns_processes "$ns" || rc=1
    done
    for ns in "$WORKER_NS" "$HEAD_NS"; do
        if ns_exists "$ns"; then
            ip netns del "$ns" || rc=1
        fi
    done
    # The veth ends live in the namespaces and go with them; a half-done `up` may leave one in the root.
    for ifc in "$HEAD_IF" "$WORKER_IF"; do
        if ip link show "$ifc" >/dev/null 2>&1; then
            ip link del "$ifc" || rc=1
        fi
    done
    # Only what `up` made (LB_NETNS_STATE may point anywhere): the token, the certificates, the logs, Ray's
    # temp dirs.
    rm -rf -- "$STATE/auth_token" "$STATE/tls" "$STATE/tls.log" "$STATE/head.log" "$STATE/worker.log" "$STATE/ray-head" \
        "$STATE/ray-worker"
    rmdir -- "$STATE" 2>/dev/null || true
    return $rc
}

cmd_up() {
    [[ $WORKER_GPUS =~ ^[0-9]+$ ]] || die "LB_NETNS_WORKER_GPUS must be a whole number, got '$WORKER_GPUS'"
    need_root
    find_bin
    [[ -x $BIN/python ]] || die "$BIN/python not found (LB_BIN must be a venv's bin folder)"
    if ns_exists "$HEAD_NS" || ns_exists "$WORKER_NS"; then
        log "namespaces from an earlier run exist: taking them down first"
        cmd_down
    fi
    trap 'log "up failed: logs in $STATE/*.log; run: $0 down"' ERR

    ip netns add "$HEAD_NS"
    ip netns add "$WORKER_NS"
    ip link add "$HEAD_IF" netns "$HEAD_NS" type veth peer name "$WORKER_IF" netns "$WORKER_NS"
    ip -n "$HEAD_NS" addr add "$HEAD_IP/$PREFIX" dev "$HEAD_IF"
    ip -n "$WORKER_NS" addr add "$WORKER_IP/$PREFIX" dev "$WORKER_IF"
    for ns in "$HEAD_NS" "$WORKER_NS"; do
        ip -n "$ns" link set lo up
    done
    ip -n "$HEAD_NS" link set "$HEAD_IF" up
    ip -n "$WORKER_NS" link set "$WORKER_IF" up
    if command -v ping >/dev/null; then
        ip netns exec "$HEAD_NS" ping -c1 -W2 "$WORKER_IP" >/dev/null 2>&1 ||
            log "warning: no ping reply from $WORKER_IP; going on"
    fi

    make_state
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32), end="")' >"$STATE/auth_token")
    local head_tls=() worker_tls=()
    rm -rf -- "$STATE/tls"
    if [[ ${LB_TLS:-0} == 1 ]]; then
        log "TLS on: a CA and a certificate per host in $STATE/tls"
        bash "$ROOT/scripts/make-tls-certs.sh" "$STATE/tls" "head=$HEAD_IP" "worker=$WORKER_IP" \
            >"$STATE/tls.log" 2>&1 || { cat "$STATE/tls.log" >&2; die "making the certificates failed"; }
        rm -f -- "$STATE/tls.log"
        head_tls=(TLS_DIR="$STATE/tls/head")
        worker_tls=(TLS_DIR="$STATE/tls/worker")
    fi

    # The real recipes start the nodes (RAY: our ray; DASHBOARD=0: no dashboard; the rest as `ray start` flags).
    log "starting the Ray head in $HEAD_NS at $HEAD_IP:$PORT with scripts/ray-head.sh (log: $STATE/head.log)"
    in_ns "$HEAD_NS" "${head_tls[@]}" RAY="$BIN/ray" RAY_PORT="$PORT" DASHBOARD=0 \
        bash "$ROOT/scripts/ray-head.sh" "$HEAD_IP" \
        --num-cpus=1 --num-gpus=0 --resources='{"host_head": 4, "timing_slot": 1}' \
        --object-store-memory=200000000 --temp-dir="$STATE/ray-head" --disable-usage-stats \
        >"$STATE/head.log" 2>&1 || { tail -n 30 "$STATE/head.log" >&2; die "head did not start"; }

    log "starting the Ray worker in $WORKER_NS at $WORKER_IP with scripts/ray-worker.sh (log: $STATE/worker.log)"
    in_ns "$WORKER_NS" "${worker_tls[@]}" RAY="$BIN/ray" \
        bash "$ROOT/scripts/ray-worker.sh" "$HEAD_IP:$PORT" "$WORKER_IP" \
        --num-cpus=1 --num-gpus="$WORKER_GPUS" --resources='{"host_worker": 4, "timing_slot": 1}' \
        --object-store-memory=200000000 --temp-dir="$STATE/ray-worker" --disable-usage-stats \
        >"$STATE/worker.log" 2>&1 || { tail -n 30 "$STATE/worker.log" >&2; die "worker did not start"; }

    wait_for_nodes || { tail -n 20 "$STATE/head.log" "$STATE/worker.log" >&2; die "nodes did not come up"; }
    trap - ERR
    log "up: head $HEAD_IP:$PORT, worker $WORKER_IP$(tls_on && echo ', TLS on'); next: $0 run [SUITE [OUT_DIR]]; then: $0 down"
}

cmd_run() {
    need_root
    find_bin
    ns_exists "$HEAD_NS" || die "no $HEAD_NS namespace: run '$0 up' first"
    [[ -s $STATE/auth_token ]] || die "no token at $STATE/auth_token: run '$0 down' then '$0 up'"
    local suite=$ROOT/suites/smoke.yaml out=results
    if [[ $# -gt 0 && $1 != -* ]]; then suite=$1; shift; fi
    if [[ $# -gt 0 && $1 != -* ]]; then out=$1; shift; fi
    [[ -x $BIN/lstm-bench ]] || die "$BIN/lstm-bench not found (pip install -e . in that venv)"
    # The driver runs inside lb-head: it reaches the head at 10.213.77.1 and, through it, the worker.
    driver_env
    in_ns "$HEAD_NS" "${DRIVER_ENV[@]}" "$BIN/lstm-bench" run "$suite" --address "$HEAD_IP:$PORT" --out "$out" "$@"
}

cmd_status() {
    need_root
    local ns
    for ns in "$HEAD_NS" "$WORKER_NS"; do
        if ns_exists "$ns"; then
            echo "$ns: $(ip netns pids "$ns" 2>/dev/null | wc -l) process(es); $(ip -n "$ns" -br addr | tr -s ' ' | tr '\n' ';')"
        else
            echo "$ns: absent"
        fi
    done
    if ns_exists "$HEAD_NS" && [[ -s $STATE/auth_token ]]; then
        find_bin
        driver_env
        in_ns "$HEAD_NS" "${DRIVER_ENV[@]}" "$BIN/ray" status --address="$HEAD_IP:$PORT" || true
    fi
}

[[ $# -ge 1 ]] || usage
action=$1; shift
check_state
case $action in
    up) cmd_up ;;
    run) cmd_run "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) usage ;;
esac
