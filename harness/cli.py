"""lstm-bench: the command line. Bad input ends in one line on stderr and a non-zero exit, never a traceback
(set LSTM_BENCH_DEBUG=1 to see one for an unexpected error)."""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
from typing import TYPE_CHECKING

from .errors import HarnessError

if TYPE_CHECKING:
    from pathlib import Path

    from .spec import TrialSpec

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
MAX_NUM_CPUS = 4096  # --num-cpus of an embedded Ray: more is a typo, not a machine


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage + message over several lines; we print one
        command = self.prog.removeprefix("lstm-bench").strip()
        raise HarnessError(f"{command}: {message}" if command else message)


SUITE_ONLY = ("variant", "train", "repeat", "suite")  # TrialSpec fields a suite sets; no flag of their own
DATA_DEFAULT = ("cifar10 with --mode accuracy or with --data-root, else {default}; --data synthetic with "
                "--data-root is an error")


def trial_flag_groups() -> list:
    """(group title, dataclass, its fields that are flags): every trial flag comes from a spec field."""
    import dataclasses
    from .spec import TrainConfig, TrialSpec, Variant
    return [("variant", Variant, dataclasses.fields(Variant)),
            ("trial", TrialSpec, [f for f in dataclasses.fields(TrialSpec) if f.name not in SUITE_ONLY]),
            ("training recipe (accuracy mode; optimizer/lr also for train timing)", TrainConfig,
             dataclasses.fields(TrainConfig))]


def add_trial_flags(p: argparse.ArgumentParser) -> None:
    """--flag-name per field: default, type and help from the field, its metadata and its rule (harness.spec)."""
    from .spec import RULES
    for title, _, fields in trial_flag_groups():
        group = p.add_argument_group(title)
        for f in fields:
            rule, default, unit = RULES[f.name], f.default, f.metadata["unit"]
            shown = DATA_DEFAULT.format(default=default) if f.name == "data" else default
            help = f.metadata["help"]
            if not (shown is None or isinstance(shown, bool) or shown == ()):
                help += f"; default: {shown}"
            flag = "--" + f.name.replace("_", "-")
            if rule.type is bool:
                group.add_argument(flag, action="store_true", help=help)
                continue
            metavar = ("{" + ",".join(rule.choices) + "}" if rule.choices else unit.upper() if unit != "1"
                       else "N" if rule.type is int else "X")
            group.add_argument(flag, type=None if rule.type is str else rule.type, nargs="*" if rule.many else None,
                               default=None if f.name == "data" else list(default) if rule.many else default,
                               metavar=metavar, help=help)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("dataset")
    d.add_argument("--data-root", default=None, help="folder with cifar-10-batches-py/ or cifar-10-python.tar.gz")
    d.add_argument("--download", action="store_true", help="fetch CIFAR-10 through torchvision (needs internet)")
    d.add_argument("--allow-unofficial-data", action="store_true",
                   help="accept a copy whose md5 differs from the official release (recorded on every result)")


def add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite key for this run, VALUE read as YAML (repeatable): an axis or a list "
                        "value sweeps (hidden_size=[64,128]), a top-level key is replaced (time_budget_s=5), "
                        "another field is fixed (lr=0.01)")


def spec_from_args(a) -> "TrialSpec":
    from .spec import TrainConfig, TrialSpec, Variant
    values = {cls: {f.name: getattr(a, f.name) for f in fields} for _, cls, fields in trial_flag_groups()}
    trial = values[TrialSpec]
    data_root = getattr(a, "data_root", None)
    if trial["data"] == "synthetic" and data_root is not None:  # a typo'd or hostile folder must not go unnoticed
        raise HarnessError(f"--data synthetic reads no dataset, but --data-root {data_root} was given "
                           f"(drop one of them)")
    if trial["data"] is None:  # see DATA_DEFAULT
        if a.mode == "accuracy" or data_root is not None:
            trial["data"] = "cifar10"
        else:
            del trial["data"]
    return TrialSpec(variant=Variant(**values[Variant]), train=TrainConfig(**values[TrainConfig]), **trial)


def format_record(r: dict) -> str:
    """One trial as `lstm-bench trial` prints it: its label, then the fields of schema.TRIAL_COLUMNS it has."""
    from .schema import TRIAL_COLUMNS, all_fields
    from .spec import Variant
    fields = all_fields()
    lines = [f"{Variant(**{k: r[k] for k in Variant.__dataclass_fields__}).label}"]
    for key in TRIAL_COLUMNS:
        value = r.get(key)
        if value is None or value == "":
            continue
        try:
            text = fields[key].fmt.format(value)
        except (ValueError, TypeError):
            text = str(value)
        lines.append(f"  {key:<16} {text}")
    return "\n".join(lines)


def format_table(df) -> str:
    """A run's trials as `lstm-bench results` and `run` print them: the schema's summary columns."""
    import pandas as pd

    from .schema import SUMMARY_COLUMNS
    from .spec import seq_label
    if df.empty:
        return "(no trials)"
    view = df[[c for c in SUMMARY_COLUMNS if c in df.columns]].copy()
    if "patch_size" in view:
        view["seq"] = [seq_label(s, p) for s, p in zip(view["seq"], view["patch_size"])]
        view = view.drop(columns="patch_size")
    view = view.sort_values([c for c in ("device", "mode", "seq", "hidden_size", "num_layers", "impl") if c in view],
                            kind="stable")
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.max_columns", None,
                           "display.float_format", lambda v: f"{v:,.2f}"):
        return view.to_string(index=False)


def to_json(record: dict) -> str:
    from .store import jsonable
    return json.dumps(jsonable(record))


# ---- subcommands ------------------------------------------------------------------------------------------

def report_trial(a, record: dict) -> int:
    print(to_json(record) if a.json else format_record(record), flush=True)
    if record["status"] != "ok":
        print(f"lstm-bench: trial {record['trial_id']} failed: {record.get('error')}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_trial(a) -> int:
    from .trial import run_trial
    spec = spec_from_args(a)
    if spec.mode == "profile":
        raise HarnessError("trial --mode profile: use `lstm-bench profile ... --out DIR` (traces need a folder)")
    result = run_trial(spec, data_root=a.data_root, allow_unofficial=a.allow_unofficial_data, download=a.download)
    return report_trial(a, result.record)


def cmd_profile(a) -> int:
    import dataclasses
    from pathlib import Path

    from .store import RunStore
    from .trial import run_trial
    spec = dataclasses.replace(spec_from_args(a), mode="profile")
    out = Path(a.out)
    result = run_trial(spec, data_root=a.data_root, allow_unofficial=a.allow_unofficial_data, download=a.download)
    store = RunStore(out).open()
    try:  # out/profiles/<trial_id>/{trace, kernels.parquet} and out/trials.jsonl: `results`/`report DIR` work on it
        record = store.add(result)
    finally:
        store.close()
    store.consolidate()
    code = report_trial(a, record)
    if code == 0:
        print(f"trace: tensorboard --logdir {out / 'profiles'}; kernels: {out / 'kernels.parquet'}", file=sys.stderr)
    return code


def cmd_check(a) -> int:
    from .parity import TOLERANCE, check, check_impls, tolerance
    from .spec import check_field
    from .steps import resolve_device
    if a.tolerance is not None and not (math.isfinite(a.tolerance) and a.tolerance >= 0):
        raise HarnessError(f"check: --tolerance must be a finite number >= 0, got {a.tolerance}")
    if not 1 <= a.hidden_size <= 1024:
        raise HarnessError(f"check: --hidden-size must be in 1..1024 (a parity check needs no big model), "
                           f"got {a.hidden_size}")
    dtype = check_field("dtype", a.dtype)
    device = resolve_device(a.device)
    if (device.type, dtype) not in TOLERANCE:
        raise HarnessError(f"check: dtype {dtype} needs a CUDA device (TF32 is a tensor-core mode)")
    _, notes = check_impls(device)  # the impls check compares here (compiled: a C++ compiler; graphed: CUDA)
    tol = {i: a.tolerance if a.tolerance is not None else tolerance(device.type, dtype, i)
           for i in ("naive", "lstmcell", "compiled", "graphed")}
    rows = check(device, hidden_size=a.hidden_size, dtype=dtype)
    worst = {}
    for r in rows:
        key = (r["seq"], r["impl"])
        worst[key] = max(worst.get(key, 0.0), r["max_rel_error"])
    if a.json:
        for (seq, impl), err in worst.items():
            print(json.dumps({"seq": seq, "impl": impl, "max_rel_error": err, "device": str(device),
                              "dtype": dtype, "tolerance": tol[impl], "ok": err <= tol[impl]}))
    else:
        print(f"largest relative error against cudnn (logits and every gradient, layers 1-3) on {device}, {dtype}:")
        print(f"  {'seq':<8} {'impl':<9} {'max rel err':>12} {'tolerance':>10}")
        for (seq, impl), err in worst.items():
            print(f"  {seq:<8} {impl:<9} {err:>12.2e} {tol[impl]:>10g}{'' if err <= tol[impl] else '   > tolerance!'}")
        for note in notes:
            print(f"  {note}")
    bad = [k for k, e in worst.items() if e > tol[k[1]]]
    if bad:
        print(f"lstm-bench: {len(bad)} seq/impl pair(s) exceed their tolerance", file=sys.stderr)
        return EXIT_FAILED
    return 0


def load_suite_args(a):
    """The suite of `validate`/`run`: the file, with its --set items applied."""
    from .suites import load_suite, parse_sets
    return load_suite(a.suite, parse_sets(a.set))


def cmd_validate(a) -> int:
    suite = load_suite_args(a)
    sets = f", with --set {', '.join(suite.overrides)}" if suite.overrides else ""
    print(f"{a.suite}: ok, {len(suite.trials)} trials{sets}")
    return 0


def cmd_run(a) -> int:
    from .plan import format_plan
    if a.num_cpus is not None and not 1 <= a.num_cpus <= MAX_NUM_CPUS:
        raise HarnessError(f"run: --num-cpus must be in 1..{MAX_NUM_CPUS}, got {a.num_cpus}")
    suite = load_suite_args(a)
    if a.dry_run:
        print(format_plan(suite))
        return 0
    from .cluster import run_suite
    from .store import read_records
    # Ctrl-C (and SIGTERM, e.g. a cancelled Ray job) stop submitting and keep what finished. A shell starts
    # background jobs with SIGINT ignored; restore the default so Ctrl-C always reaches us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    outcome = run_suite(suite, out_dir=a.out, address=a.address, resume=a.resume, data_root=a.data_root,
                        allow_unofficial=a.allow_unofficial_data, download=a.download,
                        skip_infeasible=a.skip_infeasible, progress=not a.no_progress, num_cpus=a.num_cpus)
    sets = "".join(f" --set {shlex.quote(item)}" for item in a.set)  # a resume needs the same overrides
    resume_cmd = f"lstm-bench run {a.suite}{sets} --resume {outcome.run_dir.name}" + (
        f" --out {a.out}" if a.out != "results" else "") + (f" --address {a.address}" if a.address else "")
    if outcome.interrupted:
        print(f"interrupted: {outcome.ok} ok, {outcome.failed} failed of {outcome.planned}; kept in "
              f"{outcome.run_dir}\nresume with: {resume_cmd}", file=sys.stderr)
        return 130
    if not a.quiet:
        print(format_table(read_records(outcome.run_dir)))
    print(f"{suite.name}: {outcome.planned} planned, {outcome.ok} ok, {outcome.failed} failed"
          f"{f', {outcome.skipped} already ok before resume' if outcome.skipped else ''} -> {outcome.run_dir}")
    if outcome.failed:
        print(f"rerun the failed trials with: {resume_cmd}", file=sys.stderr)
    if a.report:  # the sweep's outcome stands whatever its report does: one that cannot be written is a warning
        try:
            md = write_report([outcome.run_dir], outcome.run_dir / "report", argv=["report", str(outcome.run_dir)])
            print(f"report: {md} (and report.html, tables/*.csv, plots/*.png beside it)")
        except Exception as exc:  # a full disk (HarnessError), or a bug in the report: not the sweep's failure
            print(f"lstm-bench: warning: no report written ({' '.join(str(exc).split()) or type(exc).__name__}); "
                  f"write it later with: lstm-bench report {outcome.run_dir}", file=sys.stderr)
    return 0 if outcome.failed == 0 else EXIT_FAILED


def write_report(run_dirs: list, out, compare=None, argv=None) -> "Path":
    from pathlib import Path
    from .report import build_report
    command = "lstm-bench " + " ".join(shlex.quote(x) for x in (argv or []))
    return build_report([Path(p) for p in run_dirs], Path(out), compare=Path(compare) if compare else None,
                        command=command)


def cmd_report(a) -> int:
    from pathlib import Path
    if a.out:
        out = Path(a.out)
    elif len(a.run_dirs) == 1:
        out = Path(a.run_dirs[0]) / "report"
    else:
        raise HarnessError("report: give --out DIR when reporting on several runs")
    md = write_report(a.run_dirs, out, a.compare, a._argv)
    print(f"report: {md}\n        {out / 'report.html'}\n        {out / 'tables'}/")
    return 0


def cmd_compare(a) -> int:
    from .report.build import compare_command
    return compare_command(a.baseline, a.current, threshold=a.threshold, alpha=a.alpha, fail_on=a.fail_on,
                           cross_hardware=a.cross_hardware, out=a.out, command=" ".join(["lstm-bench", *a._argv]))


def cmd_history(a) -> int:
    from pathlib import Path
    from .report.build import build_history
    out = Path(a.out) if a.out else Path(a.results_dir) / "history"
    print(f"history: {build_history(a.results_dir, out, a.suite, ' '.join(['lstm-bench', *a._argv]))}")
    return 0


def cmd_results(a) -> int:
    from .store import read_records
    df = read_records(a.run_dir)
    if a.json:
        for rec in df.to_dict(orient="records"):
            print(to_json(rec))
    else:
        print(format_table(df))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="lstm-bench", description="Benchmark and profile LSTM variants on CIFAR-10, on Ray.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    t = sub.add_parser("trial", help="run one trial on this machine")
    add_trial_flags(t)
    add_data_flags(t)
    t.add_argument("--json", action="store_true", help="one JSON record per line on stdout")
    t.set_defaults(func=cmd_trial)

    pr = sub.add_parser("profile", help="profile one trial's training steps: TensorBoard trace + kernels.parquet")
    add_trial_flags(pr)
    add_data_flags(pr)
    pr.add_argument("--out", required=True, metavar="DIR",
                    help="writes DIR/profiles/<trial_id>/*.pt.trace.json.gz, DIR/kernels.parquet, DIR/trials.jsonl")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_profile)

    c = sub.add_parser("check", help="do cudnn, naive and lstmcell compute the same function here?")
    c.add_argument("--device", default="cpu")
    c.add_argument("--hidden-size", type=int, default=32)
    c.add_argument("--dtype", default="float32",
                   help="precision checked, set as a trial of that dtype sets it: float32 (strict), tf32 (CUDA), bfloat16")
    c.add_argument("--tolerance", type=float, default=None,
                   help="largest relative error accepted (default per device and dtype: harness.parity.TOLERANCE)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)

    v = sub.add_parser("validate", help="validate a suite file; runs nothing")
    v.add_argument("suite")
    add_set_flag(v)
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="sweep a suite on Ray (embedded local Ray unless --address)")
    r.add_argument("suite")
    add_set_flag(r)
    r.add_argument("--address", default=None, help="HOST:PORT, auto, or ray://HOST:10001 (default: a new local Ray)")
    r.add_argument("--dry-run", action="store_true", help="list the trials and the resources each needs")
    r.add_argument("--resume", metavar="RUN_ID", default=None, help="run only the trials of RUN_ID not already ok")
    r.add_argument("--out", default="results", help="results folder (default: results)")
    r.add_argument("--skip-infeasible", action="store_true",
                   help="record trials needing resources no node has as infeasible and run the rest")
    r.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("--quiet", action="store_true", help="do not print the results table at the end")
    r.add_argument("--report", action="store_true", help="write RUN_DIR/report/ (markdown, HTML, CSV, plots) at the end")
    add_data_flags(r)
    r.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="markdown + HTML report, CSV tables and plots for one or more runs")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--compare", metavar="BASELINE_RUN_DIR", default=None)
    rep.add_argument("--out", default=None, help="output folder (default: RUN_DIR/report for one run)")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser("compare", help="gate a change: per-cell verdicts of CURRENT_RUN against BASELINE_RUN")
    cmp.add_argument("baseline", metavar="BASELINE_RUN")
    cmp.add_argument("current", metavar="CURRENT_RUN")
    cmp.add_argument("--threshold", type=float, default=0.03, help="smallest relative change called (default 0.03)")
    cmp.add_argument("--alpha", type=float, default=0.05, help="false-discovery rate over cells (default 0.05)")
    cmp.add_argument("--fail-on", choices=["regression", "any"], default=None, help="exit 1 on these verdicts")
    cmp.add_argument("--cross-hardware", action="store_true", help="pair cells across hardware fingerprints")
    cmp.add_argument("--out", default=None, metavar="DIR", help="write compare.md, compare.html, compare.csv")
    cmp.set_defaults(func=cmd_compare)

    hist = sub.add_parser("history", help="img/s of each spec over every run under a results folder")
    hist.add_argument("results_dir", metavar="RESULTS_DIR")
    hist.add_argument("--suite", default=None)
    hist.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RESULTS_DIR/history)")
    hist.set_defaults(func=cmd_history)

    __import__("harness.cli_ab").cli_ab.add_parsers(sub, add_set_flag)  # ab, calibrate
    res = sub.add_parser("results", help="print a run's results as a table")
    res.add_argument("run_dir")
    res.add_argument("--json", action="store_true")
    res.set_defaults(func=cmd_results)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args._argv = list(argv) if argv is not None else sys.argv[1:]
        return args.func(args)
    except HarnessError as exc:
        print(f"lstm-bench: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, always
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lstm-bench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless asked for the traceback
        if os.environ.get("LSTM_BENCH_DEBUG"):
            raise
        print(f"lstm-bench: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
              f"(LSTM_BENCH_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
