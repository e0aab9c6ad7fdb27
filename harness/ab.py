"""`lstm-bench ab`: is the candidate slower than the baseline, by how much, and how sure -- answered by pairing
the two in time on the same node, as Chromium Pinpoint, asv --interleave-rounds and benchstat advise.

A session = cells (a suite's train/infer trials) x pairs. Each pair runs the cell's baseline and candidate back
to back on one node (pairs.py), each in a fresh process; the order of each cell's pairs is AB/BA, balanced and
shuffled (stats.balanced_orders), and rounds interleave the cells so every cell's pairs spread over the whole
session. A pair with a failed or contaminated side is rerun with the same order (balance kept), at most
MAX_RERUNS times (the suite key `reruns` sets it), then reported as lost. After the first `pairs` rounds, the
cells still inconclusive get `step` more pairs, up to `max_pairs`: counts fixed before the session starts, never
"until significant".
Statistics: stats.paired_verdicts on log(candidate img/s / baseline img/s) per pair.

Code A/B: the two sides are git refs (trees.py). Config A/B: the same code (the working tree), the candidate's
spec changed by --candidate-set KEY=VALUE (impl=compiled against impl=naive). Each session writes
<out>/ab/<run_id>/: run.json (settings, both trees, calibration used, status), pairs.jsonl (every pair, both
records, appended and fsynced as it arrives), verdicts.csv and the report (report/ab.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import stats
from .errors import HarnessError
from .nodes import TIMING_SLOT
from .spec import TrialSpec
from .store import atomic_write, jsonable, new_run_id
from .trees import CodeTree

MAX_RERUNS = 2          # a contaminated or failed pair is rerun at most this often, then reported lost
AB_BUDGET_S = 1.0       # the time budget a side's trial names (the pair plan times a fixed 10 blocks)
AB_MODES = ("train", "infer")
CALIBRATION = "calibration"


@dataclass(frozen=True)
class Cell:
    name: str               # the baseline spec's label and mode: the row of every table
    baseline: TrialSpec
    candidate: TrialSpec
    resources: dict


@dataclass(frozen=True)
class Settings:
    pairs: int = 8
    step: int = 4
    max_pairs: int = 16
    threshold: float = stats.THRESHOLD
    alpha: float = stats.ALPHA
    fail_on: str = "regression"
    seed: int = 0
    reruns: int = MAX_RERUNS  # the suite's `reruns` key, where it has one

    def check(self) -> "Settings":
        if not 2 <= self.pairs <= self.max_pairs <= 1000:
            raise HarnessError(f"ab: need 2 <= --pairs ({self.pairs}) <= --max-pairs ({self.max_pairs}) <= 1000")
        if not 1 <= self.step:
            raise HarnessError(f"ab: --step must be >= 1, got {self.step}")
        if not (0 < self.threshold < 0.5 and 0 < self.alpha < 0.5):
            raise HarnessError(f"ab: need 0 < --threshold < 0.5 and 0 < --alpha < 0.5, got {self.threshold}, "
                               f"{self.alpha}")
        return self


def candidate_spec(spec: TrialSpec, sets: dict) -> TrialSpec:
    """The baseline spec with the candidate's --candidate-set fields replaced (one value each: no sweeps)."""
    flat = spec.flat()
    flat.pop("trial_id")
    for key, value in sets.items():
        if key not in flat or key in ("suite", "repeat", "sample_plan"):
            raise HarnessError(f"ab: --candidate-set {key}: not a trial field it can change")
        if isinstance(value, (list, dict)):
            raise HarnessError(f"ab: --candidate-set {key}: one value, not {value!r} (a session compares two sides)")
        flat[key] = tuple(value) if isinstance(value, list) else value
    return TrialSpec.from_flat(flat)


def plan_cells(suite, candidate_sets: dict, pair_plan: bool) -> list[Cell]:
    """The session's cells: the suite's train/infer trials on synthetic data, each with its candidate."""
    from .plan import trial_resources
    cells, seen = [], set()
    for spec in suite.trials:
        if spec.mode not in AB_MODES:
            raise HarnessError(f"ab: {suite.name} has mode {spec.mode}: ab times train and infer only")
        if spec.data != "synthetic":
            raise HarnessError(f"ab: {suite.name} uses data {spec.data}: ab times synthetic data (throughput does not "
                               f"depend on the pixels, and no node needs the dataset): --set data=synthetic")
        base = dataclasses.replace(spec, time_budget_s=AB_BUDGET_S, max_budget_s=None,
                                   sample_plan="pair" if pair_plan else "standard")
        if not pair_plan:  # a ref before the pair plan: both sides run the standard plan, at a short budget
            base = dataclasses.replace(base, time_budget_s=2.0)
        cand = candidate_spec(base, candidate_sets)
        name = f"{spec.variant.label} {spec.mode}" + (f" r{spec.repeat}" if spec.repeat else "")
        if name in seen:
            raise HarnessError(f"ab: two cells of {suite.name} share the label {name!r}")
        seen.add(name)
        cells.append(Cell(name, base, cand, {**trial_resources(spec, suite.cpus_per_trial, "exclusive",
                                                                 suite.memory_mb)}))
    if not cells:
        raise HarnessError(f"ab: {suite.name} has no trials")
    return cells


@dataclass
class Session:
    """What a session found: pairs by cell, verdicts, counts, and where it lies."""
    run_dir: Path
    cells: list[Cell]
    pairs: dict = field(default_factory=dict)      # cell -> list of accepted pair dicts
    reruns: dict = field(default_factory=dict)     # cell -> reruns
    lost: dict = field(default_factory=dict)       # cell -> pairs given up after settings.reruns reruns
    verdicts: dict = field(default_factory=dict)   # cell -> stats.PairedVerdict
    fingerprints: set = field(default_factory=set)
    calibration: dict | None = None
    interrupted: bool = False


def log_ratio(pair: dict) -> float:
    return math.log(pair["candidate"]["img_per_s"] / pair["baseline"]["img_per_s"])


def analyse(session: Session, settings: Settings) -> dict:
    """stats.paired_verdicts over every cell (calibrated spread as the MDE's floor where one is known)."""
    logs = {c.name: [log_ratio(p) for p in session.pairs.get(c.name, [])] for c in session.cells}
    orders = {c.name: [p["order"] for p in session.pairs.get(c.name, [])] for c in session.cells}
    prior = None
    if session.calibration:
        by_id = session.calibration.get("cells", {})
        prior = {c.name: by_id[c.baseline.trial_id]["log_sd"] for c in session.cells
                 if c.baseline.trial_id in by_id and by_id[c.baseline.trial_id].get("log_sd") is not None}
    session.verdicts = stats.paired_verdicts(logs, settings.threshold, settings.alpha, orders, prior)
    return session.verdicts


def _pair_options(cell: Cell):
    res = dict(cell.resources)
    opts = {"num_cpus": res.pop("CPU", 1), "num_gpus": res.pop("GPU", 0), "memory": res.pop("memory", None),
            "resources": res or None, "max_retries": 1}
    return {k: v for k, v in opts.items() if v is not None}


def run_pairs(session: Session, jobs: list[dict], refs: dict, sink, progress=None, pair_fn=None,
              window: int = 1, reruns: int = MAX_RERUNS) -> None:
    """Run `jobs` (one per pair) in their order, at most `window` in flight (the cluster's timing slots: Ray
    would otherwise start queued tasks by resource shape, not by submission, and a session of 2 GiB train pairs
    and 1 GiB infer pairs ran all train pairs first, un-interleaving the rounds); rerun the contaminated next.
    Accepted pairs land in session.pairs. A pair whose two sides ran on different hardware is refused: the
    session cannot pair them. `pair_fn` (tests only, an argument, never read from the environment) replaces
    pairs.pair_task."""
    import collections

    import ray

    from .pairs import pair_task
    task = ray.remote(pair_fn or pair_task)
    by_cell = {c.name: c for c in session.cells}

    def submit(job):
        return task.options(**_pair_options(by_cell[job["cell"]])).remote(job, refs["baseline"], refs["candidate"])

    queue, inflight = collections.deque(jobs), {}
    while queue or inflight:
        while queue and len(inflight) < window:
            job = queue.popleft()
            inflight[submit(job)] = job
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0, fetch_local=False)
        for ref in done:
            job = inflight.pop(ref)
            try:
                pair = ray.get(ref)
            except Exception as exc:  # the task itself was lost (node gone twice): treat as a failed pair
                pair = {**{k: job[k] for k in ("cell", "index", "order", "attempt")},
                        "baseline": {"status": "failed", "error": f"pair task lost: {type(exc).__name__}"},
                        "candidate": {"status": "failed", "error": "pair task lost"}}
                pair["baseline"]["contamination"] = [pair["baseline"]["error"]]
                pair["candidate"]["contamination"] = ["pair task lost"]
            fps = {pair[s].get("hw_fingerprint") for s in ("baseline", "candidate")}
            if all(pair[s].get("status") == "ok" for s in ("baseline", "candidate")) and len(fps) > 1:
                raise HarnessError(f"ab: the two sides of pair {job['index']} of {job['cell']} ran on different "
                                   f"hardware ({' vs '.join(sorted(map(str, fps)))}): incomparable")
            reasons = pair["baseline"].get("contamination", []) + pair["candidate"].get("contamination", [])
            pair["accepted"] = not reasons
            pair["reasons"] = "; ".join(reasons)
            sink(pair)
            if reasons:
                if job["attempt"] < reruns:
                    session.reruns[job["cell"]] = session.reruns.get(job["cell"], 0) + 1
                    queue.appendleft({**job, "attempt": job["attempt"] + 1})
                else:
                    session.lost[job["cell"]] = session.lost.get(job["cell"], 0) + 1
                continue
            session.fingerprints.update(fps)
            session.pairs.setdefault(job["cell"], []).append(pair)
            if progress:
                progress(pair)


def interleaved_jobs(cells: list[Cell], counts: dict, start: dict, orders: dict, sides_of, rng) -> list[dict]:
    """Pairs round by round: round r holds pair r of every cell that has one, the cells in a fresh random order
    each round, so no cell's pairs bunch in one stretch of the session."""
    jobs, rounds = [], max(counts.values(), default=0)
    for r in range(rounds):
        names = [c.name for c in cells if r < counts.get(c.name, 0)]
        rng.shuffle(names)
        for name in names:
            index = start.get(name, 0) + r
            jobs.append({"cell": name, "index": index, "order": orders[name][index], "attempt": 0,
                         "sides": sides_of(name)})
    return jobs


def load_calibration(results_root: Path, fingerprint: str | None) -> tuple[dict | None, Path | None]:
    if not fingerprint:
        return None, None
    path = Path(results_root) / CALIBRATION / f"{fingerprint}.json"
    try:
        return json.loads(path.read_text()), path
    except (OSError, json.JSONDecodeError):
        return None, None


def run_session(cells: list[Cell], trees: dict[str, CodeTree], settings: Settings, out: Path, *,
                address: str | None = None, num_cpus: int | None = None, command: str = "",
                results_root: Path | None = None, kind: str = "ab", progress=None, pair_fn=None) -> Session:
    """Run one session (see the module doc) and write it under out/<kind>/<run_id>/."""
    import ray

    from .nodes import connect
    settings = settings.check()
    run_dir = Path(out) / kind / new_run_id()
    meta = {"kind": kind, "command": command, "settings": dataclasses.asdict(settings), "status": "running",
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "cells": {c.name: {"baseline": c.baseline.flat(), "candidate": c.candidate.flat()} for c in cells},
            "trees": {s: {"label": t.label, "commit": t.commit, "tree": t.key, "pair_plan": t.pair_plan}
                      for s, t in trees.items()}}
    connect(address, num_cpus=num_cpus)
    session = Session(run_dir, cells)
    refs = {side: ray.put(t.archive) for side, t in trees.items()}
    window = max(1, int(ray.cluster_resources().get(TIMING_SLOT, 1)))  # one pair per node at a time
    specs = {c.name: c for c in cells}

    def sides_of(name):
        c = specs[name]
        return {s: {"spec": getattr(c, s).flat(), "key": trees[s].key, "commit": trees[s].commit}
                for s in ("baseline", "candidate")}

    atomic_write(run_dir / "run.json", json.dumps(jsonable(meta), indent=2))
    rng = random.Random(settings.seed or time.time_ns())
    nrng = np.random.default_rng(rng.getrandbits(64))
    orders = {c.name: stats.balanced_orders(settings.max_pairs, nrng) for c in cells}
    fh = open(run_dir / "pairs.jsonl", "a", encoding="utf-8")

    def sink(pair):
        fh.write(json.dumps(jsonable(pair)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())

    counts = {c.name: settings.pairs for c in cells}
    try:
        while counts:
            start = {n: len(session.pairs.get(n, [])) + session.lost.get(n, 0) for n in counts}
            run_pairs(session, interleaved_jobs(cells, counts, start, orders, sides_of, rng), refs, sink, progress,
                      pair_fn, window, settings.reruns)
            if session.calibration is None and session.fingerprints and results_root is not None:
                session.calibration, path = load_calibration(results_root, sorted(session.fingerprints)[0])
                meta["calibration"] = str(path) if path else None
            analyse(session, settings)
            used = {n: len(session.pairs.get(n, [])) + session.lost.get(n, 0) for n in counts}
            counts = {k: n for k, n in stats.cells_to_extend(
                {k: dataclasses.replace(v, pairs=used.get(k, v.pairs)) for k, v in session.verdicts.items()},
                settings.step, settings.max_pairs).items() if n > 0}
    except KeyboardInterrupt:
        session.interrupted = True
    except BaseException as exc:  # bad input found mid-session (incomparable hardware), Ray lost, a bug
        meta["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        raise
    finally:
        fh.close()
        analyse(session, settings)
        meta.update(status="interrupted" if session.interrupted else "aborted" if "error" in meta else "finished",
                    ended_at=dt.datetime.now(dt.timezone.utc).isoformat(),
                    hw_fingerprints=sorted(session.fingerprints), calibration=meta.get("calibration"),
                    cluster=_cluster_resources())
        atomic_write(run_dir / "run.json", json.dumps(jsonable(meta), indent=2))
    return session


def _cluster_resources() -> dict | None:
    import ray
    try:
        return {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}
    except Exception:  # Ray gone: run.json is still written, without it
        return None


def verdict_rows(session: Session) -> list[dict]:
    """One row per cell: the table the report leads with and verdicts.csv holds."""
    rows = []
    for c in session.cells:
        v = session.verdicts.get(c.name)
        pairs = session.pairs.get(c.name, [])
        rows.append({"cell": c.name, "ratio": v.ratio, "ci_low": v.ci_low, "ci_high": v.ci_high,
                     "level": v.level, "verdict": v.verdict, "p_value": v.p_value, "mde": v.mde,
                     "pairs": v.pairs, "reruns": session.reruns.get(c.name, 0), "lost": session.lost.get(c.name, 0),
                     "ab_pairs": v.ab_pairs, "ba_pairs": v.ba_pairs, "order_bias": v.order_bias,
                     "log_sd": v.log_sd, "trial_id": c.baseline.trial_id,
                     "baseline_img_per_s": float(np.median([p["baseline"]["img_per_s"] for p in pairs]))
                     if pairs else math.nan,
                     "candidate_img_per_s": float(np.median([p["candidate"]["img_per_s"] for p in pairs]))
                     if pairs else math.nan})
    return rows


def exit_code(rows: list[dict], fail_on: str) -> int:
    """0 pass, 1 the gate failed (a regression; or any change under --fail-on any), 2 inconclusive under any."""
    verdicts = {r["verdict"] for r in rows}
    if "regression" in verdicts or (fail_on == "any" and "improvement" in verdicts):
        return 1
    if fail_on == "any" and "inconclusive" in verdicts:
        return 2
    return 0
