"""Reports over one or more run directories: markdown, a self-contained HTML page, CSV tables and PNG plots.

    build_report([run_dir, ...], out_dir, compare=baseline_dir, command="lstm-bench report ...")

writes into out_dir:
    report.md        the answer first (headline), then plots and tables, problems, the environment last
                     (collapsed in a <details>, the fields that differ between runs shown above it)
    report.html      one file: the same, as HTML, the plots embedded as base64 data URIs
    tables/<name>.csv every table, exactly as compute_tables returns it
    plots/<name>.png the plots that had data (a plot without data is skipped, and a stale PNG removed)

The package, each module importing only those before it:
    frame   load_runs (a RunSet: records, kernels, run metadata), prepare (normalized records), sorting
    tables  the table functions below
    plots   the four plots (matplotlib Figure, Agg; no pyplot)
    headline the report's first section: per device, mode and precision the fastest impl, its speedup over
            each other impl with a bootstrap interval, % of the node's GEMM ceiling
    render  fmt_cell, the display frame, markdown_table / html_table (pandas), Doc and its block kinds
    gap     closing the gap to cuDNN: gap_table, gap_impls_table, gpu_busy_frac (from traces), its plot and section
    build   compute_tables, build_report and the document, one function per section

Every table function is a pure function of a DataFrame of trial records (as `results.load_run` returns, or
several runs concatenated), so it can be called and checked on its own. What they compute:

  headline_table     the answer: see headline.py.
  throughput_cells   every spec x impl with an ok trial, noisy ones included and flagged, with its IQR: what
                     the throughput plot draws (hollow markers for noisy cells, bars of median +- IQR/2).
  throughput_table   median img_per_s of ok, non-noisy train/infer trials, one column per impl. Rows are
                     keyed by mode, seq label (patch -> "patch4"), device label, batch_size, dtype,
                     bidirectional, num_layers, hidden_size: num_layers is part of the row index (one table,
                     one CSV), and the markdown splits it into one sub-table per
                     (mode, seq, device, batch, dtype, bidirectional). Repeats and seeds of one spec are
                     pooled into the median; noisy trials never are (they are listed in problems_table).
  speedup_table      cudnn / naive and cudnn / lstmcell: ratios of those medians for matching specs.
  layer_scaling_table img_per_s against num_layers per impl (rows with at least two layer counts).
  gflops_table       as throughput_table, of gflop_per_s.
  accuracy_table     one row per ok accuracy trial, next to the train- and infer-mode throughput of the same
                     variant (seq, hidden, layers, impl, batch, dtype, bidirectional, hardware; threads ignored).
  kernel_table       per profiled variant and impl: time share by category (from kernels.parquet), launches
                     per step, top kernel.
  environment_table  one row per run: counts, hosts, CPU, GPU, versions, commit, dataset. The report shows
                     (and tables/environment.csv holds) it transposed by environment_by_field: a row per
                     field, a column per run, values as text.
  problems_table     failed, infeasible and noisy trials with their error or noise reasons.
  compare_table      current vs a baseline run per trial spec, with a verdict (see `verdict`): the earlier
                     half-IQR overlap rule. The report and `lstm-bench compare` use compare.compare_runs
                     (bootstrap intervals, Benjamini-Hochberg, the comparability rule); history.py reads every
                     run under a results folder (`lstm-bench history`).

Device labels name the hardware, so runs from different machines are never pooled: "cuda (NVIDIA H100 80GB
HBM3)", "cpu (AMD EPYC, 2 threads)" (on CPU the torch thread count is part of the device).
Nothing here imports torch.
"""

from .build import (PLOTS, SECTIONS, TABLE_NAMES, build_history, build_report, compare_command, compute_tables,
                    document)
from .compare import Comparison, compare_runs
from .history import History, change_points, load_history, series_table
from .frame import FIELDS, INT_KEYS, NUMERIC, RunSet, load_runs, prepare, seq_label
from .gap import gap_impls_table, gap_table, gpu_busy_frac, plot_gap_closed
from .headline import headline_table
from .plots import plot_accuracy_curves, plot_kernel_breakdown, plot_speedup_heatmap, plot_throughput, throughput_figure
from .render import BLOCKS, Doc, display_frame, fmt_cell, html_table, markdown_table
from .tables import (CATEGORIES, FALLBACK_KEYS, JOIN_KEYS, KERNEL_KEYS, PIVOT_GROUP, PIVOT_INDEX, accuracy_table,
                     compare_table, environment_by_field, environment_table, gflops_table, kernel_table,
                     layer_scaling_table, problems_table, speedup_table, throughput_cells, throughput_table,
                     unmatched_baseline, verdict)

__all__ = [
    "build_report", "compute_tables", "document", "TABLE_NAMES", "PLOTS", "SECTIONS",
    "RunSet", "load_runs", "prepare", "seq_label", "FIELDS", "NUMERIC", "INT_KEYS",
    "headline_table", "throughput_cells", "throughput_figure",
    "throughput_table", "gflops_table", "speedup_table", "layer_scaling_table", "accuracy_table", "kernel_table",
    "environment_table", "environment_by_field", "problems_table", "compare_table", "verdict",
    "unmatched_baseline", "PIVOT_GROUP", "PIVOT_INDEX", "JOIN_KEYS", "FALLBACK_KEYS", "KERNEL_KEYS", "CATEGORIES",
    "plot_throughput", "plot_speedup_heatmap", "plot_accuracy_curves", "plot_kernel_breakdown",
    "gap_table", "gap_impls_table", "gpu_busy_frac", "plot_gap_closed",
    "fmt_cell", "display_frame", "markdown_table", "html_table", "Doc", "BLOCKS",
    "compare_runs", "Comparison", "compare_command", "load_history", "History", "change_points", "series_table",
    "build_history",
]
