"""The `ab` and `calibrate` subcommands (harness/ab.py does the work): everything is checked before anything is
written or started, so bad input ends in one line and leaves no half session behind."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import signal
import sys
from pathlib import Path

from . import stats
from .errors import HarnessError


def add_parsers(sub, add_set_flag) -> None:
    ab = sub.add_parser("ab", help="A/B on a noisy machine: baseline and candidate paired in time, per cell a "
                                   "verdict with its interval (regression, improvement, unchanged, inconclusive)")
    ab.add_argument("suite", help="a suite of train/infer cells on synthetic data (e.g. suites/gate.yaml)")
    add_set_flag(ab)
    ab.add_argument("--baseline", metavar="REF", default=None,
                    help="git ref of the baseline's code (default with --candidate-set: the working tree)")
    side = ab.add_mutually_exclusive_group()
    side.add_argument("--candidate", metavar="REF", default=None,
                      help="git ref of the candidate's code (default: the working tree)")
    side.add_argument("--candidate-set", action="append", default=[], metavar="KEY=VALUE",
                      help="config A/B: the same code, the candidate's trial field changed (impl=compiled)")
    _add_session_flags(ab)
    ab.add_argument("--fail-on", choices=["regression", "any"], default="regression",
                    help="exit 1 on a regression (default), or on any change; 'any' also exits 2 on inconclusive")
    ab.add_argument("--allow-dirty", action="store_true",
                    help="let a side be a working tree with uncommitted changes under harness/")
    ab.add_argument("--pass-if-identical", action="store_true",
                    help="code A/B of two identical harness trees (a docs-only change): say so and exit 0 "
                         "instead of refusing (the CI gate)")
    ab.set_defaults(func=cmd_ab)

    cal = sub.add_parser("calibrate", help="A/A sessions (same code both sides): this machine's pair spread and "
                                           "false-alarm rate, stored for `ab` under RESULTS/calibration/")
    cal.add_argument("suite")
    add_set_flag(cal)
    cal.add_argument("--sessions", type=int, default=5, help="A/A sessions to run (default 5)")
    _add_session_flags(cal)
    cal.add_argument("--allow-dirty", action="store_true", help="calibrate with the working tree as it is")
    cal.set_defaults(func=cmd_calibrate)


def _add_session_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, default=8, help="pairs per cell, fixed in advance (default 8)")
    p.add_argument("--step", type=int, default=4, help="pairs added to each inconclusive cell (default 4)")
    p.add_argument("--max-pairs", type=int, default=16, help="cap on a cell's pairs (default 16)")
    p.add_argument("--threshold", type=float, default=stats.THRESHOLD,
                   help=f"smallest relative change called (default {stats.THRESHOLD})")
    p.add_argument("--alpha", type=float, default=stats.ALPHA, help="false-discovery rate over cells (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair orders (default 0: a fresh one)")
    p.add_argument("--out", default="results", help="results root: sessions under OUT/ab/, calibration under "
                                                   "OUT/calibration/ (default: results)")
    p.add_argument("--address", default=None, help="a Ray cluster (default: a new local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")


def _worktree_side(allow_dirty: bool):
    from . import trees
    changed = trees.dirty()
    if not changed:
        return trees.from_ref("HEAD")
    if not allow_dirty:
        raise HarnessError(f"the working tree has uncommitted changes under harness/ ({len(changed)} file(s), e.g. "
                           f"{changed[0]}): commit them, or pass --allow-dirty to measure them as they are")
    return trees.from_worktree()


def _settings(a):
    from .ab import Settings
    return Settings(pairs=a.pairs, step=a.step, max_pairs=a.max_pairs, threshold=a.threshold, alpha=a.alpha,
                    fail_on=getattr(a, "fail_on", "regression"), seed=a.seed).check()


def _suite_reruns(settings, suite):
    """The suite's `reruns` key, where it has one, says how often a contaminated pair is run again."""
    return settings if suite.reruns is None else dataclasses.replace(settings, reruns=suite.reruns)


def _suite(a):
    from .suites import load_suite, parse_sets
    return load_suite(a.suite, parse_sets(a.set))


def _progress(pair):
    v = pair["candidate"]["img_per_s"] / pair["baseline"]["img_per_s"]
    print(f"  {pair['cell']:<34} pair {pair['index'] + 1:>3} {pair['order']}  ratio {v:.3f}", file=sys.stderr,
          flush=True)


def _finish(session, settings, trees_, command, sets) -> list[dict]:
    import json

    from .ab import verdict_rows
    from .report.ab import headline, write_report
    rows = verdict_rows(session)
    meta = json.loads((session.run_dir / "run.json").read_text())
    meta["candidate_sets"] = sets
    md = write_report(session.run_dir, rows, meta)
    print(headline(rows).to_string(index=False))
    print(f"report: {md} (ab.html, forest.png, verdicts.csv, pairs.jsonl beside it)")
    return rows


def cmd_ab(a) -> int:
    from . import trees
    from .ab import exit_code, plan_cells, run_session
    from .suites import parse_sets
    sets = parse_sets(a.candidate_set)
    settings = _settings(a)
    if sets:  # config A/B: one tree, both sides
        base = trees.from_ref(a.baseline) if a.baseline else _worktree_side(a.allow_dirty)
        cand = base
    else:
        if not a.baseline:
            raise HarnessError("ab: give --baseline REF (code A/B) or --candidate-set KEY=VALUE (config A/B)")
        base = trees.from_ref(a.baseline)
        cand = trees.from_ref(a.candidate) if a.candidate else _worktree_side(a.allow_dirty)
        if cand.key == base.key and a.pass_if_identical:
            print(f"ab: the candidate {cand.short} holds the same harness as the baseline {base.short}: "
                  f"no number can differ; passing")
            return 0
        if cand.key == base.key:
            raise HarnessError(f"ab: the candidate {cand.short} holds the same harness as the baseline "
                               f"{base.short}: nothing to compare (calibrate runs A/A on purpose)")
    suite = _suite(a)
    settings = _suite_reruns(settings, suite)
    cells = plan_cells(suite, sets, base.pair_plan and cand.pair_plan)
    if sets and all(c.baseline == c.candidate for c in cells):
        raise HarnessError(f"ab: --candidate-set {' '.join(a.candidate_set)} changes no cell of {suite.name}")
    command = "lstm-bench " + " ".join(shlex.quote(x) for x in a._argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"ab: {len(cells)} cells x {settings.pairs} pairs (up to {settings.max_pairs}); baseline {base.short}, "
          f"candidate {cand.short}{' with ' + ', '.join(a.candidate_set) if sets else ''}", file=sys.stderr)
    session = run_session(cells, {"baseline": base, "candidate": cand}, settings, Path(a.out), address=a.address,
                          num_cpus=a.num_cpus, command=command, results_root=Path(a.out), progress=_progress)
    rows = _finish(session, settings, {"baseline": base, "candidate": cand}, command, sets)
    if session.interrupted:
        print(f"interrupted: kept {session.run_dir}", file=sys.stderr)
        return 130
    return exit_code(rows, settings.fail_on)


def cmd_calibrate(a) -> int:
    from . import calibration
    from .ab import plan_cells, run_session
    if not 1 <= a.sessions <= 100:
        raise HarnessError(f"calibrate: --sessions must be in 1..100, got {a.sessions}")
    settings = _settings(a)
    tree = _worktree_side(a.allow_dirty)
    suite = _suite(a)
    settings = _suite_reruns(settings, suite)
    cells = plan_cells(suite, {}, tree.pair_plan)
    command = "lstm-bench " + " ".join(shlex.quote(x) for x in a._argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sessions = []
    for k in range(a.sessions):
        print(f"calibrate: A/A session {k + 1} of {a.sessions}", file=sys.stderr, flush=True)
        s = run_session(cells, {"baseline": tree, "candidate": tree}, settings, Path(a.out), address=a.address,
                        num_cpus=a.num_cpus, command=command, kind="calibrate", progress=None)
        _finish(s, settings, None, command, {})
        sessions.append(s)
        if s.interrupted:
            break
    cal = calibration.summarise(sessions, settings.threshold)
    for path in calibration.write(Path(a.out), cal):
        print(f"calibration: {path}")
    for fp, c in cal.items():
        print(f"{fp}: {c['sessions']} sessions, {c['sessions_with_any_false_alarm']} with a false alarm; spread "
              f"of paired log-ratios per cell: " + ", ".join(
                  f"{e['cell']} {100 * e['log_sd']:.1f}%" for e in c["cells"].values() if e["log_sd"] is not None))
    return 130 if sessions and sessions[-1].interrupted else 0
