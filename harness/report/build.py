"""The report itself: compute every table, write the CSVs and plots, assemble the document section by section
and render it to report.md and report.html. Also the documents of `lstm-bench compare` (compare.md/.html/.csv,
the same table as the report's compare section) and `lstm-bench history` (a page per suite)."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import HarnessError
from . import gap, headline
from .frame import RunSet, _missing, load_runs, prepare
from .compare import ALPHA, THRESHOLD, Comparison, compare_runs, exit_lines
from .history import ALPHA as H_ALPHA, CEILING_SHIFT as H_CEILING, MIN_RUNS as H_MIN_RUNS, MIN_SHIFT, file_stem, \
    load_history, plot_history, series_table
from .plots import plot_accuracy_curves, plot_kernel_breakdown, plot_speedup_heatmap, plot_throughput
from .render import Doc, fmt_cell, markdown_table
from .tables import (ENV_FIELDS, PIVOT_GROUP, accuracy_table, environment_by_field, environment_table,
                     gflops_table, group_title, kernel_table, layer_scaling_table, problems_table, speedup_table,
                     throughput_cells, throughput_table)

TABLE_NAMES = ("headline", "throughput_cells", "environment", "problems", "throughput", "speedup", "layer_scaling",
               "gflops", "accuracy", "kernels", "gap", "gap_impls", "compare")
# plot name: (function, its input: a table name or None for the records, caption)
PLOTS = {
    "throughput_vs_hidden": (plot_throughput, "throughput_cells",
                             "img/s vs hidden size per impl (log y), every cell: bars median +- IQR/2"),
    "speedup_cudnn_over_naive": (plot_speedup_heatmap, "throughput_cells", "cudnn/naive over seq x hidden size"),
    "accuracy_curves": (plot_accuracy_curves, None, "test accuracy per epoch and over time"),
    "kernel_time_by_category": (plot_kernel_breakdown, "kernels", "kernel time by category per impl"),
    "gap_closed": (gap.plot_gap_closed, "gap", "share of the naive-to-cudnn gap each impl closes"),
}


def compute_tables(runs: RunSet, baseline: RunSet | None = None,
                   comparison: Comparison | None = None) -> dict[str, pd.DataFrame]:
    df = prepare(runs.records)
    tables = {
        "headline": headline.headline_table(df),
        "throughput_cells": throughput_cells(df),
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
        tables["compare"] = (comparison or compare_runs(df, baseline.records)).table
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
    comparison = compare_runs(runs.records, baseline.records) if baseline is not None else None
    tables = compute_tables(runs, baseline, comparison)
    with writing("the report", out_dir):
        (out_dir / "tables").mkdir(parents=True, exist_ok=True)
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        _write_tables(out_dir / "tables", tables)
        report = Report(runs=runs, baseline=baseline, compare=compare, command=command, tables=tables,
                        plots=_write_plots(out_dir / "plots", runs, tables),
                        per_run=environment_table(runs.records, runs.metas), comparison=comparison)
        doc = document(report)
        md_path = out_dir / "report.md"
        md_path.write_text(doc.markdown(), encoding="utf-8")
        (out_dir / "report.html").write_text(doc.html("lstm-bench report: " + ", ".join(runs.metas)),
                                             encoding="utf-8")
    return md_path


@contextlib.contextmanager
def writing(what: str, out_dir: Path):
    """A folder that cannot be written (full, read-only, a file in the way) ends in one line naming it."""
    try:
        yield
    except OSError as exc:
        raise HarnessError(f"cannot write {what} to {out_dir}: {exc.strerror or exc}") from None


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
    comparison: Comparison | None = None


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
    doc.code(r.command or "(not given)")
    doc.p(f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. The answer first, then "
          f"the plots and tables behind it, then problems; the environment is last, collapsed.")


def differing_fields(env: pd.DataFrame) -> pd.DataFrame:
    """The rows of environment_by_field worth a reader's eye: environment fields whose value is not the same
    for every run (or that hold several values within one run, e.g. two hosts). Counts and start times always
    differ between runs and are not hardware or software, so they stay in the collapsed table."""
    rows = env[env["field"].isin(ENV_FIELDS)]
    values = rows.drop(columns="field")
    varies = [len({v for v in row if not _missing(v)}) > 1 or any("; " in str(v) for v in row if not _missing(v))
              for row in values.itertuples(index=False)]
    return rows[varies].reset_index(drop=True)


def _environment(doc: Doc, r: Report):
    doc.h(2, "Environment")
    env = r.tables["environment"]
    differs = differing_fields(env)
    if len(differs):
        doc.p(f"Fields that differ between runs ({len(differs)}): numbers compare only where these agree.")
        doc.table(differs)
    else:
        doc.p("No environment field differs between the runs" if env.shape[1] > 2 else
              "One run: nothing to differ. Its environment is below.")
    inner = Doc()
    inner.p("A row per field, a column per run (several values of one run are joined with '; ').")
    inner.table(env)
    doc.details(f"All {len(env)} fields, every run", inner)


def _compare(doc: Doc, r: Report):
    if r.comparison is not None:
        doc.h(2, f"Compare with baseline {', '.join(r.baseline.metas)}")
        compare_blocks(doc, r.comparison)


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
    doc.p("The plot draws every cell, noisy ones hollow with their spread. The tables: medians of img/s over ok, "
          "non-noisy trials of the same spec (repeats pooled); a blank cell has none (see Problems). Devices "
          "name their hardware (and the thread count on CPU), so different machines are never pooled.")
    _split(doc, r.tables["throughput"], PIVOT_GROUP)


def _speedup(doc: Doc, r: Report):
    doc.h(2, "Speedup of cudnn over naive and lstmcell")
    doc.p("Ratios of the median img/s of matching specs (same seq, patch, hidden, layers, batch, dtype, "
          "bidirectional, mode, device). The heatmap draws every pair, hatched where a side is noisy; the table "
          "holds the non-noisy pairs.")
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


# The answer first (headline, then a comparison when asked for), the plots and tables behind it, then what
# went wrong, and the environment last: a reader looking for "which is fastest" should not scroll past 30
# rows of versions to find it.
SECTIONS = (_header, headline.section, _compare, _throughput, _speedup, gap.section, _layer_scaling, _gflops,
            _accuracy, _kernels, _problems, _environment, _footer)


def document(report: Report) -> Doc:
    doc = Doc()
    for section in SECTIONS:
        section(doc, report)
    return doc


# ---- lstm-bench compare -----------------------------------------------------------------------------------

SHOWN = ["mode", "device", "variant", "baseline_img_per_s", "img_per_s", "ratio", "interval", "p_value", "samples",
         "verdict", "note"]


def _shown(t: pd.DataFrame) -> pd.DataFrame:
    """The compare table as shown: cells with a baseline, the interval as one "[lo, hi]" column, SHOWN columns."""
    t = t[t["verdict"] != "no baseline"]
    interval = ["" if _missing(lo) else f"[{lo:.3f}, {hi:.3f}]" for lo, hi in zip(t["ci_low"], t["ci_high"])]
    return t.assign(interval=interval)[SHOWN].reset_index(drop=True)


def compare_blocks(doc: Doc, c: Comparison):
    """The compare table with its method, counts and code versions: the report's section and compare.md."""
    t = c.table
    doc.p(f"ratio = median img/s per sample (step, or block in older records), current / baseline, with a "
          f"{c.level:.2%} percentile interval from a circular block bootstrap ({c.resamples} resamples): "
          f"Benjamini-Hochberg at alpha {c.alpha:g} over the {c.tested} tested cells selected {c.selected}, and "
          f"intervals are printed at the level that goes with it. regression: upper bound < {1 - c.threshold:g}; "
          f"improvement: lower bound > {1 + c.threshold:g}; else within noise (threshold {c.threshold:g}). Ok "
          f"in the baseline and failed now is a regression; a noisy trial gets no verdict. Cells pair on "
          f"trial_id, threads, TF32 flags" + (" (across hardware)." if c.cross_hardware else
                                             " and hw_fingerprint."))
    counts = ", ".join(f"{n} {v}" for v, n in c.counts().items()) or "none"
    doc.p(f"Verdicts: {counts}. Code: baseline {', '.join(c.code_versions.get('baseline', [])) or '?'}; "
          f"current {', '.join(c.code_versions.get('current', [])) or '?'}.")
    if c.refused:
        doc.p(f"Refused: {c.refused}.")
    if c.baseline_only:
        doc.p(f"{c.baseline_only} baseline train/infer trial(s) have no counterpart in the current run(s).")
    no_base = t["verdict"] == "no baseline"
    if no_base.any():
        doc.p(f"{int(no_base.sum())} current train/infer trial(s) have no baseline: left out below, listed in "
              f"compare.csv.")
    doc.table(_shown(t))


def _check_unit(name: str, value: float, low_open: bool):
    ok = math.isfinite(value) and (0 < value < 1 if low_open else 0 <= value < 1)
    if not ok:
        raise HarnessError(f"compare: {name} must be in {'(0, 1)' if low_open else '[0, 1)'}, got {value}")


def compare_command(baseline, current, *, threshold: float = THRESHOLD, alpha: float = ALPHA,
                    fail_on: str | None = None, cross_hardware: bool = False, out=None, command: str = "") -> int:
    """`lstm-bench compare`: prints the table, writes compare.md/.html/.csv into `out`, returns the exit status
    (1: a cell --fail-on fails on, each named on stderr); HarnessError (exit 2) for bad input or no comparison."""
    _check_unit("--threshold", threshold, low_open=False)
    _check_unit("--alpha", alpha, low_open=True)
    base, cur = load_runs([Path(baseline)]), load_runs([Path(current)])
    c = compare_runs(cur.records, base.records, threshold, alpha, cross_hardware)
    doc = Doc()
    doc.h(1, f"lstm-bench compare: {', '.join(cur.metas)} against {', '.join(base.metas)}")
    doc.p(f"Baseline {baseline}, current {current}.")
    doc.code(command or "(not given)")
    compare_blocks(doc, c)
    if out is not None:
        out = Path(out)
        with writing("the comparison", out):
            out.mkdir(parents=True, exist_ok=True)
            (out / "compare.md").write_text(doc.markdown(), encoding="utf-8")
            (out / "compare.html").write_text(doc.html("lstm-bench compare"), encoding="utf-8")
            c.table.to_csv(out / "compare.csv", index=False)
    print(markdown_table(_shown(c.table)))
    print(f"compare: {', '.join(f'{n} {v}' for v, n in c.counts().items())}"
          + (f"; written to {out}/compare.md, compare.html, compare.csv" if out is not None else ""))
    if c.refused:
        raise HarnessError(c.refused)
    lines = exit_lines(c, fail_on)
    for line in lines:
        print(line, file=sys.stderr)
    return 1 if lines else 0


# ---- lstm-bench history -----------------------------------------------------------------------------------

def build_history(results_dir, out_dir, suite: str | None = None, command: str | None = None) -> Path:
    """A page per suite (markdown, HTML with the plot embedded, PNG) and index.md/.html linking them, plus
    history.csv (every run's train/infer trials as one table). Returns index.md's path."""
    h = load_history(results_dir, suite)
    out_dir = Path(out_dir)
    with writing("the history", out_dir):
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        index = Doc()
        index.h(1, f"lstm-bench history of {results_dir}")
        index.code(command or "(not given)")
        if h.skipped:
            index.p("Runs that could not be read: " + "; ".join(h.skipped))
        lines = []
        for name, runs in h.runs.groupby("suite", sort=True):
            recs = h.records[h.records["suite"] == name]
            series = series_table(recs)
            stem = file_stem(name)
            note = plot_history(recs, series, runs, out_dir / "plots" / f"{stem}.png")
            page = Doc()
            page.h(1, f"History of suite {name}: {len(runs)} runs")
            page.p(f"img/s of each spec over runs in start order (x: start time and code_version), a line per hardware "
                   f"fingerprint, noisy runs hollow and left out of the change-point search. Change points "
                   f"(dashed red): binary segmentation of log img/s; a line's best split (the largest rank-sum "
                   f"statistic, {H_MIN_RUNS}+ runs a side) is tested by a block permutation (blocks of 2-3 runs, so "
                   f"run-to-run correlation stays in the null), Benjamini-Hochberg at {H_ALPHA:g} across this page's "
                   f"lines, and kept when the medians either side differ by >= {MIN_SHIFT:.0%}; each is labelled code "
                   f"changed, machine changed (hostname, or the GEMM ceiling by > {H_CEILING:.0%}) or unexplained. "
                   f"It cannot see a change with fewer than {H_MIN_RUNS} runs on a side, nor in lines of fewer than "
                   f"~14 runs (harness/report/history.py says more).")
            if note is not None:
                page.img(out_dir / "plots" / f"{stem}.png", f"plots/{stem}.png",
                         "img/s over runs" + (f"; {note}" if note else ""))
            page.table(series.drop(columns="_change_runs"))
            page.h(2, "Runs")
            page.table(runs.drop(columns="suite"))
            (out_dir / f"{stem}.md").write_text(page.markdown(), encoding="utf-8")
            (out_dir / f"{stem}.html").write_text(page.html(f"history: {name}"), encoding="utf-8")
            changed = int(series["_change_runs"].map(bool).sum())
            lines.append(f"{name}: {len(runs)} runs, {len(series)} lines, {changed} with change points: {stem}.md, "
                         f"{stem}.html")
        index.items(lines)
        nested = [c for c in h.records.columns if any(isinstance(v, (list, dict)) for v in h.records[c])]
        h.records.drop(columns=nested).to_csv(out_dir / "history.csv", index=False)
        (out_dir / "index.md").write_text(index.markdown(), encoding="utf-8")
        (out_dir / "index.html").write_text(index.html("lstm-bench history"), encoding="utf-8")
    return out_dir / "index.md"
