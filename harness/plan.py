"""What a run will do, decided before any trial runs: the run directory (new, or the one --resume names), the
trials not already ok in it, the Ray resources each asks for, and which fit the cluster. Also the dry-run plan
that `lstm-bench run --dry-run` prints.

Resources: a CPU trial gets `cpus_per_trial` cores (its torch threads); a GPU trial one GPU and the core that feeds
it. Placement: an `exclusive` timing trial (the default for train, infer and profile) also takes its node's one
timing slot (nodes.TIMING_SLOT), so no other timing trial shares the node while it is timed; `shared` (the default
for accuracy, whose time-to-accuracy is wall clock but whose accuracy is not) packs trials as cores allow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HarnessError
from .nodes import TIMING_SLOT, describe_resources, fits
from .runlock import RunLock, lock_run_dir
from .spec import DEFAULT_TIMING_BUDGET_S, TrialSpec
from .store import RunStore, latest_by_trial, new_run_id, read_jsonl
from .suites import LABEL_FIELDS, Suite, _item

TIMING_MODES = ("train", "infer", "profile")
# Ray memory a trial reserves unless the suite's memory_mb says otherwise: Ray's memory monitor kills what goes
# beyond a node's memory, and without a reservation nothing stops Ray packing more trials than fit.
DEFAULT_MEMORY_MB = {"train": 2048, "infer": 1024, "profile": 2048, "accuracy": 4096}


def code_identity() -> dict:
    """What a run's numbers depend on in the driver's software: the hash of the harness code (not the commit: a
    commit that changes only docs changes no number) and torch. run.json keeps both; --resume refuses others."""
    import torch

    from .env import code_version
    return {"code_hash": code_version().split("+")[0], "torch_version": str(torch.__version__)}


def placement_of(spec: TrialSpec, placement: str | None) -> str:
    """The suite's placement, else the mode's default: exclusive for timing, shared for accuracy."""
    return placement or ("exclusive" if spec.mode in TIMING_MODES else "shared")


def trial_resources(spec: TrialSpec, cpus_per_trial: int, placement: str | None = None,
                    memory_mb: int | None = None) -> dict:
    """Ray resources for one trial (see the module doc); `memory` in bytes, as Ray counts it."""
    req = {"CPU": 1, "GPU": 1} if spec.device.startswith("cuda") else {"CPU": cpus_per_trial}
    req["memory"] = (memory_mb or DEFAULT_MEMORY_MB[spec.mode]) * 2**20
    if placement_of(spec, placement) == "exclusive":
        req[TIMING_SLOT] = 1
    return req


@dataclass
class Plan:
    """What a run will do, decided before Ray starts: the run directory, its metadata, what is already done."""
    suite: Suite
    run_dir: Path
    store: RunStore
    meta: dict
    done_before: set[str]
    todo: list[TrialSpec]
    runnable: list[TrialSpec] = field(default_factory=list)
    infeasible: list[TrialSpec] = field(default_factory=list)
    requests: dict[str, dict] = field(default_factory=dict)
    lock: RunLock | None = None  # this driver's lock on run_dir (runlock.py), held until the run ends


def plan(suite: Suite, out_dir: str | Path, resume: str | None) -> Plan:
    """The run directory (new, or the one --resume names, which must come from the same suite and overrides)
    and the trials not already ok in it."""
    run_id = resume or new_run_id()
    run_dir = Path(out_dir) / suite.name / run_id
    if resume and not run_dir.is_dir():
        raise HarnessError(f"--resume {resume}: no run directory {run_dir}")
    lock = lock_run_dir(run_dir)  # before anything is read: a live driver's run is not resumed under it
    try:
        return _plan(suite, run_dir, resume, lock)
    except BaseException:
        lock.release()
        raise


def _plan(suite: Suite, run_dir: Path, resume: str | None, lock: RunLock) -> Plan:
    store = RunStore(run_dir)
    meta = store.read_meta() if resume else {}
    overrides = getattr(suite, "overrides", {}) or {}
    if resume:
        if meta.get("suite_sha256") and meta["suite_sha256"] != suite.sha256:
            raise HarnessError(f"--resume {resume}: that run was made from a different suite file "
                               f"({meta.get('suite_path')}, sha256 {meta['suite_sha256'][:12]}) than {suite.path} "
                               f"(sha256 {suite.sha256[:12]}); start a new run instead")
        ours = code_identity()
        for key, theirs in ((k, meta.get(k)) for k in ours):
            if theirs and theirs != ours[key]:
                raise HarnessError(f"--resume {resume}: that run was made with {key} {theirs}, this one has "
                                   f"{ours[key]}; its numbers would not compare: start a new run instead")
        if meta and (meta.get("overrides") or {}) != overrides:
            raise HarnessError(f"--resume {resume}: that run was made with --set {_show_overrides(meta.get('overrides'))}"
                               f", this one has --set {_show_overrides(overrides)}; give the same overrides")
    done_before = {tid for tid, r in latest_by_trial(read_jsonl(store.trials_path)[0]).items()
                   if r.get("status") == "ok"}
    todo = [s for s in suite.trials if s.trial_id not in done_before]
    return Plan(suite, run_dir, store, meta, done_before, todo, lock=lock)


def _show_overrides(overrides) -> str:
    return " ".join(f"{k}={v}" for k, v in (overrides or {}).items()) or "(none)"


def place(p: Plan, nodes: list[dict], skip_infeasible: bool) -> None:
    """Split the trials to do into runnable and infeasible (no node has what they ask for)."""
    p.requests = {s.trial_id: trial_resources(s, p.suite.cpus_per_trial, p.suite.placement, p.suite.memory_mb)
                  for s in p.todo}
    p.infeasible = [s for s in p.todo if not fits(p.requests[s.trial_id], nodes)]
    if p.infeasible and not skip_infeasible:
        need = sorted({str(p.requests[s.trial_id]) for s in p.infeasible})
        slot = (f"; exclusive placement needs every node started with --resources='{{\"{TIMING_SLOT}\": 1}}' "
                f"(or --set placement=shared)" if not any(n["resources"].get(TIMING_SLOT) for n in nodes) else "")
        raise HarnessError(f"{len(p.infeasible)} trial(s) need resources no node has ({', '.join(need)}); "
                           f"cluster: {describe_resources(nodes)}{slot} (--skip-infeasible runs the rest)")
    p.runnable = [s for s in p.todo if s not in p.infeasible]


def format_plan(suite: Suite) -> str:
    """What `lstm-bench run SUITE --dry-run` prints: one line per trial, then the totals."""
    # Swept fields the label does not show (lr, dropout, ...) get their own column, or two trials would
    # look identical in the plan.
    axes = suite.raw.get("axes") or {}
    extra_fields = [k for k in axes if k not in LABEL_FIELDS and k != "data"]
    show_repeat = any(s.repeat for s in suite.trials)
    header = ["#", "trial_id", "label", "mode", "device", "data", "resources"]
    header += ["repeat"] if show_repeat else []
    header += ["swept"] if extra_fields else []
    rows = []
    for i, spec in enumerate(suite.trials, 1):
        res = " ".join(f"{k}={v}" for k, v in trial_resources(spec, suite.cpus_per_trial, suite.placement, suite.memory_mb).items())
        row = [str(i), spec.trial_id, spec.variant.label, spec.mode, spec.device, spec.data, res]
        row += [str(spec.repeat)] if show_repeat else []
        if extra_fields:
            flat = spec.flat()
            row.append(" ".join(f"{k}={flat[k]}" for k in extra_fields))
        rows.append(row)
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = [f"suite {suite.name} ({suite.path}, sha256 {suite.sha256[:12]})"]
    if suite.description:
        lines.append("  " + " ".join(suite.description.split()))
    if suite.overrides:
        lines.append("  with " + " ".join(_item(k, v) for k, v in suite.overrides.items()))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    n_gpu = sum(1 for s in suite.trials if s.device.startswith("cuda"))
    n = len(suite.trials)
    timed = [s.budget_s for s in suite.trials if s.budget_s < math.inf]
    budget = (f"time budget {suite.time_budget_s:g} s per trial" if suite.time_budget_s is not None
              else f"time budget per mode ({DEFAULT_TIMING_BUDGET_S:g} s for timing)")
    budget += f", {sum(timed):g} s if run one at a time" if timed else ""
    budget += f"; {n - len(timed)} accuracy trials run until their epochs end" if len(timed) < n else ""
    lines.append(f"{n} trials: {n - n_gpu} CPU, {n_gpu} GPU; {budget}")
    return "\n".join(lines)
