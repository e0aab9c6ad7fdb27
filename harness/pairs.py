"""One pair of an A/B: the baseline and the candidate of one cell, back to back on one node, each in a fresh
process of its own code, in the order the session drew (AB or BA).

The pair is one Ray task (it holds the node's timing slot, so no other timing work shares the node while it
runs); each side is a subprocess of that task running `lstm-bench trial --json` of its tree: the runner puts
the tree first on sys.path (so the editable install of this checkout cannot shadow it), prints which harness it
imported, and calls that tree's CLI. Flags name only the fields that differ from their defaults, so a ref that
predates a field still understands the command for a cell that does not use it.

Contamination (bias, not variance: the pair is rerun, not averaged in): a side that failed; other processes
used more CPU than the side left free (measure.contention_reason); the container throttled it; a recompile in
its timed window.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from .spec import TrainConfig, TrialSpec, Variant

RUNNER = ("import sys; tree = sys.argv[1]; sys.path.insert(0, tree); import harness; "
          "sys.stderr.write('LSTM_BENCH_HARNESS_FILE=' + harness.__file__ + '\\n'); sys.stderr.flush(); "
          "from harness.cli import main; sys.argv = ['lstm-bench', *sys.argv[2:]]; sys.exit(main())")
SIDE_TIMEOUT_S = 600.0
KEEP_OUT = ("step_ms", "error_detail")  # a pair's record keeps its blocks; every step's time stays out


def trial_argv(spec: TrialSpec) -> list[str]:
    """`lstm-bench trial` flags for this spec: the fields whose value differs from the field's default."""
    argv = ["trial"]
    groups = [(spec.variant, Variant), (spec, TrialSpec), (spec.train, TrainConfig)]
    for obj, cls in groups:
        for f in dataclasses.fields(cls):
            if f.name in ("variant", "train", "repeat", "suite"):
                continue
            value = getattr(obj, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value == default or value is None:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag)
            elif isinstance(value, (tuple, list)):
                argv += [flag, *map(str, value)]
            else:
                argv += [flag, str(value)]
    return argv + ["--json"]


def run_side(tree_dir: str, commit: str | None, spec: TrialSpec, timeout_s: float = SIDE_TIMEOUT_S) -> dict:
    """One side in a fresh process: its record (status failed, with the reason, when the process did not give
    one), plus harness_file (what it imported) and side_wall_s (the process's whole life)."""
    env = dict(os.environ, PYTHONPATH=tree_dir + os.pathsep + os.environ.get("PYTHONPATH", ""),
               LSTM_BENCH_COMMIT=commit or "unknown", PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", RUNNER, tree_dir, *trial_argv(spec)], capture_output=True,
                             text=True, timeout=timeout_s, env=env, cwd=tree_dir)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"side timed out after {timeout_s:g} s",
                "side_wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    harness_file = next((line.split("=", 1)[1] for line in out.stderr.splitlines()
                         if line.startswith("LSTM_BENCH_HARNESS_FILE=")), None)
    record = None
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            try:
                record = json.loads(line)
                break
            except json.JSONDecodeError:
                pass
    if record is None:
        tail = [x for x in out.stderr.strip().splitlines() if not x.startswith("LSTM_BENCH_HARNESS_FILE=")]
        record = {"status": "failed", "error": f"exit {out.returncode}: {tail[-1] if tail else 'no record'}"}
    for key in KEEP_OUT:
        record.pop(key, None)
    record.update(harness_file=harness_file, side_wall_s=wall)
    if harness_file is None or not os.path.realpath(harness_file).startswith(os.path.realpath(tree_dir) + os.sep):
        record.update(status="failed", error=f"the side imported {harness_file}, not its tree {tree_dir}")
    return record


def contamination(record: dict, free_cores: float) -> list[str]:
    """Why a side's number is biased (the pair is rerun): [] when it is clean."""
    from .measure import contention_reason
    if record.get("status") != "ok":
        return [f"failed: {record.get('error')}"]
    reasons = []
    external = record.get("external_cpu_cores")
    if external is not None and (why := contention_reason(float(external), free_cores)):
        reasons.append(why)
    throttled, start, end = (record.get(k) for k in ("cgroup_throttled_ms", "timed_start", "timed_end"))
    if throttled and start is not None and end is not None and throttled > 0.01 * 1000 * (end - start):
        reasons.append(f"throttled {throttled:.0f} ms by the container's CPU quota")
    if record.get("recompiles"):
        reasons.append(f"{record['recompiles']} recompile(s) in the timed window")
    return reasons


def pair_task(job: dict, baseline_archive: bytes, candidate_archive: bytes) -> dict:
    """Runs on a Ray worker: both sides of one pair, in job["order"]. Never raises for a side's own problems."""
    import ray

    from .measure import available_cores
    from .trees import unpack
    node = ray.get_runtime_context().get_node_id()
    archives = {"baseline": baseline_archive, "candidate": candidate_archive}
    sides = {}
    first = "baseline" if job["order"] == "AB" else "candidate"
    started = time.time()
    for side in (first, "candidate" if first == "baseline" else "baseline"):
        s = job["sides"][side]
        try:
            tree = str(unpack(archives[side], s["key"]))
        except Exception as exc:  # a node that cannot unpack is this pair's failure, not the session's
            sides[side] = {"status": "failed", "error": f"cannot unpack the {side} tree: {exc}"}
            continue
        spec = TrialSpec.from_flat(s["spec"])
        sides[side] = run_side(tree, s["commit"], spec)
        free = max(0.0, available_cores() - (spec.threads or 1))
        sides[side]["contamination"] = contamination(sides[side], free)
    return {**{k: job[k] for k in ("cell", "index", "order", "attempt")}, "node_id": node, "started": started,
            "ended": time.time(), "baseline": sides["baseline"], "candidate": sides["candidate"]}
