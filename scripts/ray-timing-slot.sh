# Sourced by ray-head.sh and ray-worker.sh: the node's "timing_slot" resource, added to the `ray start` flags.
# Sets the array `args` to "$@" with it added.
# One timing slot per node: lstm-bench's exclusive placement (the default for train, infer and profile trials)
# lets a node time one trial at a time by having each take the node's one "timing_slot" resource
# (harness/nodes.py). Added to the --resources given here, unless they name it (TIMING_SLOT=0: none).
with_timing_slot() {  # a --resources JSON object -> the same with "timing_slot": $TIMING_SLOT
    if [[ $1 == *'"timing_slot"'* ]]; then
        printf '%s' "$1"
    elif [[ $1 =~ ^[[:space:]]*\{[[:space:]]*\}[[:space:]]*$ ]]; then
        printf '{"timing_slot": %s}' "$TIMING_SLOT"
    else
        printf '%s' "${1/\{/\{\"timing_slot\": $TIMING_SLOT, }"
    fi
}
TIMING_SLOT=${TIMING_SLOT:-1}
[[ $TIMING_SLOT =~ ^[0-9]+$ ]] || { echo "$0: TIMING_SLOT must be a whole number" >&2; exit 2; }
args=("$@")
if ((TIMING_SLOT > 0)); then
    named=0
    for i in "${!args[@]}"; do
        case ${args[$i]} in
            --resources=*) args[$i]=--resources=$(with_timing_slot "${args[$i]#--resources=}"); named=1 ;;
            --resources) if ((i + 1 < ${#args[@]})); then args[$((i + 1))]=$(with_timing_slot "${args[$((i + 1))]}"); named=1; fi ;;
        esac
    done
    ((named)) || args+=("--resources={\"timing_slot\": $TIMING_SLOT}")
fi
