"""The gap-closed report (harness/report/gap.py): gap closed by hand, the spread and precision rules, and
gpu_busy_frac on a small committed trace whose kernel intervals are known."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from harness import report
from harness.report import gap
from test_report import cell, rec, write_run

TRACE = Path(__file__).parent / "data" / "tiny.pt.trace.json"


def test_union_length_counts_overlaps_once():
    assert gap.union_length([]) == 0
    assert gap.union_length([(0, 10), (5, 25), (12, 15), (30, 40)]) == 35
    assert gap.union_length([(30, 40), (0, 10)]) == 20


def test_gpu_busy_frac_of_the_committed_trace():
    # window [1000, 1200): kernels [1000,1030] (two overlapping, one nested) + [1050,1060] + memcpy [1100,1120]
    # + a kernel clipped to [1180,1200]; a kernel before the window and the GPU annotation span do not count
    assert gap.gpu_busy_frac(gap.read_trace(TRACE)) == pytest.approx(80 / 200)


def test_gpu_busy_frac_without_device_work_or_steps_is_none():
    t = gap.read_trace(TRACE)
    cpu_only = {"traceEvents": [e for e in t["traceEvents"] if e["cat"] in ("user_annotation", "cpu_op")]}
    assert gap.gpu_busy_frac(cpu_only) is None
    no_steps = {"traceEvents": [e for e in t["traceEvents"] if e["cat"] != "user_annotation"]}
    assert gap.gpu_busy_frac(no_steps) is None


def gap_records():
    """row/128 train: cudnn 2000, naive 1000, compiled 1500 (half the gap), graphed 2400, lstmcell 900;
    row/512 train: cudnn and naive within each other's spread; infer: no naive."""
    return [
        rec("cudnn", 128, 2000.0, iqr=40.0, ceiling_frac=0.30), rec("naive", 128, 1000.0, iqr=20.0, ceiling_frac=0.15),
        rec("compiled", 128, 1500.0, compile_s=18.0, ceiling_frac=0.22), rec("graphed", 128, 2400.0, capture_s=0.2),
        rec("lstmcell", 128, 900.0),
        rec("cudnn", 512, 1030.0, iqr=60.0), rec("naive", 512, 1000.0, iqr=40.0), rec("compiled", 512, 1100.0),
        rec("cudnn", 128, 9000.0, mode="infer"), rec("compiled", 128, 5000.0, mode="infer"),
    ]


def test_gap_closed_by_hand():
    t = gap.gap_table(pd.DataFrame(gap_records()))
    keys = dict(mode="train", seq="row", hidden_size=128)
    assert cell(t, "gap closed (compiled)", **keys) == pytest.approx(0.5)
    assert cell(t, "gap closed (graphed)", **keys) == pytest.approx(1.4)     # faster than cudnn
    assert cell(t, "gap closed (lstmcell)", **keys) == pytest.approx(-0.1)   # slower than naive
    assert pd.isna(cell(t, "note", **keys))
    assert list(t.columns).index("cudnn") < list(t.columns).index("naive") < list(t.columns).index("compiled")


def test_gap_is_empty_with_a_reason_when_cudnn_and_naive_overlap_or_one_is_missing():
    t = gap.gap_table(pd.DataFrame(gap_records()))
    overlap = dict(mode="train", seq="row", hidden_size=512)
    assert pd.isna(cell(t, "gap closed (compiled)", **overlap))
    assert "within each other's spread" in cell(t, "note", **overlap)
    assert cell(t, "compiled", **overlap) == 1100.0  # the img/s is still shown
    missing = dict(mode="infer", seq="row", hidden_size=128)
    assert pd.isna(cell(t, "gap closed (compiled)", **missing)) and "no naive trial" in cell(t, "note", **missing)


def test_gap_compares_only_within_one_precision():
    """A cuDNN that ran with TF32 (recorded switches on) is not the reference of strict-float32 loops."""
    strict = dict(tf32_cudnn=False, tf32_matmul=False)
    recs = [rec("cudnn", 128, 2000.0, tf32_cudnn=True, tf32_matmul=False), rec("naive", 128, 1000.0, **strict),
            rec("compiled", 128, 1500.0, **strict)]
    t = gap.gap_table(pd.DataFrame(recs))
    assert set(t["precision"]) == {"float32", "float32+tf32-cudnn"}
    assert t["note"].str.contains("no cudnn trial").any() and t["note"].str.contains("no naive trial").any()
    assert gap.precision_label("float32", "cpu", None, None) == "float32"  # no TF32 on a CPU
    assert gap.precision_label("tf32", "cuda", True, True) == "tf32"
    assert gap.precision_label("float32", "cuda", None, None) == "float32 (TF32 unrecorded)"
    assert gap.precision_label("float32", "cuda", False, True) == "float32 (TF32 cudnn off, matmul on)"


def profile_run(root: Path) -> Path:
    """A run: the timing records, and profile trials of cudnn and naive at row/128 with a trace for naive."""
    prof_naive = rec("naive", 128, mode="profile", launches_per_step=2200.0)
    prof_cudnn = rec("cudnn", 128, mode="profile", launches_per_step=345.0)
    prof_naive["profile_dir"] = f"profiles/{prof_naive['trial_id']}"
    run = write_run(root / "gap-run", gap_records() + [prof_naive, prof_cudnn])
    folder = run / prof_naive["profile_dir"]
    folder.mkdir(parents=True)
    (folder / "host_1.123.pt.trace.json.gz").write_bytes(gzip.compress(TRACE.read_bytes()))
    return run


def test_impls_table_joins_ceiling_costs_launches_and_busy_fraction(tmp_path):
    run = profile_run(tmp_path)
    runs = report.load_runs([run])
    df = report.prepare(runs.records)
    t = gap.gap_impls_table(df, gap.busy_fracs(df, runs.metas))
    train = dict(mode="train", seq="row", hidden_size=128)
    assert cell(t, "gap_closed", impl="compiled", **train) == pytest.approx(0.5)
    assert cell(t, "ceiling_frac", impl="compiled", **train) == pytest.approx(0.22)
    assert cell(t, "compile_s", impl="compiled", **train) == 18.0
    assert cell(t, "capture_s", impl="graphed", **train) == pytest.approx(0.2)
    assert cell(t, "launches_per_step", impl="naive", **train) == 2200.0
    assert cell(t, "launches_per_step", impl="cudnn", **train) == 345.0
    assert cell(t, "gpu_busy_frac", impl="naive", **train) == pytest.approx(0.4)
    assert pd.isna(cell(t, "gpu_busy_frac", impl="cudnn", **train))  # no trace kept for it
    # without ceiling_frac in any record the column is left out, not shown empty
    bare = gap.gap_impls_table(pd.DataFrame([rec("cudnn", 64, 2000.0), rec("naive", 64, 1000.0)]))
    assert "ceiling_frac" not in bare.columns and "gpu_busy_frac" not in bare.columns


def test_report_has_the_gap_section_table_and_plot(tmp_path):
    run = profile_run(tmp_path)
    out = tmp_path / "report"
    md = report.build_report([run], out, command="lstm-bench report gap-run").read_text()
    assert "## Closing the gap to cuDNN" in md and "gap closed (compiled)" in md
    assert (out / "plots" / "gap_closed.png").exists()
    csv = pd.read_csv(out / "tables" / "gap.csv")
    assert csv["gap closed (compiled)"].dropna().round(3).tolist() == [0.5]
    assert (out / "tables" / "gap_impls.csv").exists()


def test_no_timing_trials_no_section(tmp_path):
    run = write_run(tmp_path / "empty", [rec("cudnn", 64, mode="profile", launches_per_step=10.0)])
    md = report.build_report([run], tmp_path / "out").read_text()
    assert "Closing the gap" not in md and not (tmp_path / "out" / "plots" / "gap_closed.png").exists()
    assert json.loads(json.dumps(gap.gap_table(pd.DataFrame()).columns.tolist()))[-1] == "note"


def test_all_noisy_says_so(tmp_path):
    run = write_run(tmp_path / "noisy", [rec("cudnn", 64, 2000.0, noisy=True), rec("compiled", 64, 900.0, noisy=True)])
    md = report.build_report([run], tmp_path / "out").read_text()
    assert "## Closing the gap to cuDNN" in md and "No ok, non-noisy train or infer trial" in md
