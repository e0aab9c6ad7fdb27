"""The report itself: compute every table, write the CSVs and plots, assemble the document section by section
and render it to report.md and report.html."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import HarnessError
from . import gap
from .frame import RunSet, _missing, load_runs, prepare
from .plots import plot_accuracy_curves, plot_kernel_breakdown, plot_speedup_heatmap, plot_throughput
from .render import Doc, fmt_cell
from .tables import (PIVOT_GROUP, accuracy_table, compare_table, environment_by_field, environment_table,
                     gflops_table, group_title, kernel_table, layer_scaling_table, problems_table, speedup_table,
                     throughput_table, unmatched_baseline)

TABLE_NAMES = ("environment", "problems", "throughput", "speedup", "layer_scaling", "gflops", "accuracy",
               "kernels", "gap", "gap_impls", "compare")
# plot name: (function, its input: a table name or None for the records, caption)
PLOTS = {
    "throughput_vs_hidden": (plot_throughput, "throughput", "img/s vs hidden size per impl (log y)"),
    "speedup_cudnn_over_naive": (plot_speedup_heatmap, "speedup", "cudnn/naive over seq x hidden size"),
    "accuracy_curves": (plot_accuracy_curves, None, "test accuracy per epoch and over time"),
    "kernel_time_by_category": (plot_kernel_breakdown, "kernels", "kernel time by category per impl"),
    "gap_closed": (gap.plot_gap_closed, "gap", "share of the naive-to-cudnn gap each impl closes"),
}


def compute_tables(runs: RunSet, baseline: RunSet | None = None) -> dict[str, pd.DataFrame]:
    df = prepare(runs.records)
    tables = {
        "environment": environment_by_field(environment_table(df, runs.metas)),
        "problems": problems_table(df),
        "throughput": throughput_table(df),
        "speedup": speedup_table(df),
        "layer_scaling": layer_scaling_table(df),
        "gflops": gflops_table(df),
        "accuracy": accuracy_table(df),
        "kernels": kernel_table(df, runs.kernels),
        "gap": gap.gap_table(df),
        "gap_impls": gap.gap_impls_table(df, gap.busy_fracs(df, runs.metas)),
    }
    if baseline is not None:
        tables["compare"] = compare_table(df, baseline.records)
    return tables


def build_report(run_dirs, out_dir, compare=None, command: str | None = None) -> Path:
    """Write report.md, report.html, tables/*.csv and plots/*.png for the runs into out_dir; returns the
    report.md path. `compare`: a baseline run directory; `command`: the command line, named in the header."""
    run_dirs = [Path(p) for p in run_dirs]
    if not run_dirs:
        raise HarnessError("report: no run directories given")
    out_dir = Path(out_dir)
    runs = load_runs(run_dirs)
    baseline = load_runs([Path(compare)]) if compare is not None else None
    tables = compute_tables(runs, baseline)
    try:
        (out_dir / "tables").mkdir(parents=True, exist_ok=True)
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"cannot write the report to {out_dir}: {exc.strerror or exc}") from None
    _write_tables(out_dir / "tables", tables)
    report = Report(runs=runs, baseline=baseline, compare=compare, command=command, tables=tables,
                    plots=_write_plots(out_dir / "plots", runs, tables),
                    per_run=environment_table(runs.records, runs.metas))
    doc = document(report)
    md_path = out_dir / "report.md"
    md_path.write_text(doc.markdown(), encoding="utf-8")
    (out_dir / "report.html").write_text(doc.html("lstm-bench report: " + ", ".join(runs.metas)),
                                         encoding="utf-8")
    return md_path


def _write_tables(folder: Path, tables: dict[str, pd.DataFrame]):
    for name, t in tables.items():
        t.to_csv(folder / f"{name}.csv", index=False)
    stale = folder / "compare.csv"
    if "compare" not in tables and stale.exists():
        stale.unlink()


def _write_plots(folder: Path, runs: RunSet, tables: dict) -> dict[str, tuple[Path, str]]:
    """Draw every plot that has data: name -> (PNG path, caption); a stale PNG of a plot without data goes."""
    plots = {}
    for name, (fn, source, caption) in PLOTS.items():
        path = folder / f"{name}.png"
        path.unlink(missing_ok=True)
        note = fn(runs.records if source is None else tables[source], path)
        if note is not None and path.exists():
            plots[name] = (path, caption + (f"; {note}" if note else ""))
    return plots


# ---- the document, section by section ---------------------------------------------------------------------

@dataclass
class Report:
    """What the sections draw on: the runs, the optional baseline, every table, the plots that were drawn,
    and environment_table's row per run (counts for the run list and the missing trials)."""
    runs: RunSet
    baseline: RunSet | None
    compare: object
    command: str | None
    tables: dict
    plots: dict
    per_run: pd.DataFrame


def _plot(doc: Doc, r: Report, name: str):
    if name in r.plots:
        path, caption = r.plots[name]
        doc.img(path, f"plots/{name}.png", caption)


def _split(doc: Doc, table: pd.DataFrame, by: list[str]):
    """One sub-table per distinct value of `by` (those columns dropped from it), under a small heading."""
    if table.empty:
        doc.table(table)
        return
    for key, g in table.groupby(by, dropna=False, sort=False):
        doc.h(4, group_title(dict(zip(by, key))))
        doc.table(g.drop(columns=by).reset_index(drop=True))


def _has_missing(row) -> bool:
    return not _missing(row["missing"]) and bool(row["missing"])


def _run_line(row, meta: dict) -> str:
    counts = f"{row['recorded']} trials: {row['ok']} ok ({row['noisy']} noisy), {row['failed']} failed, " \
             f"{row['infeasible']} infeasible"
    if _has_missing(row):
        counts += f", {int(row['missing'])} of {int(row['planned'])} planned have no record"
    return f"{row['run_id']} (suite {fmt_cell('suite', row['suite']) or '?'}, {meta.get('path', '')}): {counts}"


def _header(doc: Doc, r: Report):
    doc.h(1, "lstm-bench report")
    doc.p("Runs:")
    doc.items([_run_line(row, r.runs.metas.get(row["run_id"], {})) for _, row in r.per_run.iterrows()])
    if r.baseline is not None:
        doc.p(f"Baseline: {', '.join(r.baseline.metas)} ({r.compare})")
    doc.p("Command:")
    doc.code(r.command or "(not given)")
    doc.p(f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. Throughput cells are "
          f"medians of img/s over ok, non-noisy trials of the same spec (repeats pooled); noisy, failed and "
          f"infeasible trials are listed under Problems and never mixed in. Devices name their hardware (and "
          f"the thread count on CPU), so different machines are never pooled.")


def _environment(doc: Doc, r: Report):
    doc.h(2, "Environment")
    doc.p("A row per field, a column per run (several values of one run are joined with '; ').")
    doc.table(r.tables["environment"])


def _compare(doc: Doc, r: Report):
    if "compare" not in r.tables:
        return
    cmp = r.tables["compare"]
    doc.h(2, f"Compare with baseline {', '.join(r.baseline.metas)}")
    counts = cmp["verdict"].value_counts()
    doc.p("ratio = img/s current / baseline. A regression or improvement is called only when the intervals "
          "[median - IQR/2, median + IQR/2] of the two trials do not overlap; otherwise within noise. "
          "Verdicts: " + (", ".join(f"{n} {v}" for v, n in counts.items()) or "none") + ".")
    unmatched = unmatched_baseline(r.runs.records, r.baseline.records, cmp)
    if len(unmatched):
        doc.p(f"{len(unmatched)} baseline train/infer trial(s) have no counterpart in the current run(s).")
    no_base = cmp["verdict"] == "no baseline"
    if no_base.any():
        doc.p(f"{int(no_base.sum())} current train/infer trial(s) have no baseline: left out below, listed in "
              f"tables/compare.csv.")
    doc.table(cmp[~no_base].reset_index(drop=True))


def _problems(doc: Doc, r: Report):
    doc.h(2, "Problems: failed, infeasible and noisy trials")
    missing = [f"{row['run_id']}: {int(row['missing'])}" for _, row in r.per_run.iterrows() if _has_missing(row)]
    if missing:
        doc.p("Planned trials with no record (interrupted or lost; `lstm-bench run SUITE --resume RUN_ID` reruns "
              "them): " + ", ".join(missing) + ".")
    bad_lines = [f"{rid}: {m['unreadable_lines']}" for rid, m in r.runs.metas.items() if m.get("unreadable_lines")]
    if bad_lines:
        doc.p("Unreadable (torn) lines skipped in trials.jsonl: " + ", ".join(bad_lines))
    doc.table(r.tables["problems"])


def _throughput(doc: Doc, r: Report):
    doc.h(2, "Throughput (img/s, median)")
    _plot(doc, r, "throughput_vs_hidden")
    doc.p("A blank cell: no ok, non-noisy trial of that spec (see Problems).")
    _split(doc, r.tables["throughput"], PIVOT_GROUP)


def _speedup(doc: Doc, r: Report):
    doc.h(2, "Speedup of cudnn over naive and lstmcell")
    doc.p("Ratios of the median img/s of matching specs (same seq, patch, hidden, layers, batch, dtype, "
          "bidirectional, mode, device).")
    _plot(doc, r, "speedup_cudnn_over_naive")
    doc.table(r.tables["speedup"])


def _layer_scaling(doc: Doc, r: Report):
    doc.h(2, "Scaling with num_layers (img/s)")
    doc.table(r.tables["layer_scaling"])


def _gflops(doc: Doc, r: Report):
    doc.h(2, "Achieved GFLOP/s (LSTM GEMMs, median)")
    _split(doc, r.tables["gflops"], PIVOT_GROUP)


def _accuracy(doc: Doc, r: Report):
    doc.h(2, "Accuracy and time to accuracy")
    _plot(doc, r, "accuracy_curves")
    doc.table(r.tables["accuracy"])


def _kernels(doc: Doc, r: Report):
    doc.h(2, "Kernel breakdown (profile trials)")
    _plot(doc, r, "kernel_time_by_category")
    if r.runs.kernels.empty and not r.tables["kernels"].empty:
        doc.p("No kernels.parquet: launches and top kernel from the profile records only.")
    doc.table(r.tables["kernels"])


def _footer(doc: Doc, r: Report):
    doc.p("Every table is also in tables/<name>.csv: " + ", ".join(f"{n}.csv" for n in r.tables) + ".")


SECTIONS = (_header, _environment, _compare, _problems, _throughput, _speedup, gap.section, _layer_scaling,
            _gflops, _accuracy, _kernels, _footer)


def document(report: Report) -> Doc:
    doc = Doc()
    for section in SECTIONS:
        section(doc, report)
    return doc
