"""harness.report on a small hand-made result set: every number checked against hand computation."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from harness import report
from harness.errors import HarnessError
from harness.store import load_run

GPU = "NVIDIA H100 80GB HBM3"
DEV = f"cuda ({GPU})"
ENV = {"hostname": "gpu-node-1", "node_ip": "10.0.0.5", "cpu_model": "AMD EPYC 9654", "threads": None,
       "gpu_name": GPU, "gpu_driver": "580.65", "cuda_version": "13.0", "cudnn_version": 92400,
       "torch_version": "2.14.1+cu130", "torchvision_version": "0.29.1+cu130", "ray_version": "2.60.0",
       "python_version": "3.11.7", "git_commit": "abc123def456"}


def rec(impl, hidden, img=None, *, iqr=None, mode="train", layers=1, seq="row", patch=None, repeat=0, seed=0,
        status="ok", noisy=False, env=True, **extra) -> dict:
    """One trial record shaped like run_trial's (spec fields, trial_id, environment, measurements)."""
    spec = {"seq": seq, "hidden_size": hidden, "num_layers": layers, "impl": impl, "batch_size": 256,
            "dtype": "float32", "bidirectional": False, "dropout": 0.0, "patch_size": patch, "mode": mode,
            "device": "cuda", "data": "cifar10" if mode == "accuracy" else "synthetic", "seed": seed,
            "threads": None, "repeat": repeat}
    r = dict(spec, time_budget_s=10.0, suite="fixture",
             trial_id=hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12],
             status=status, started_at="2026-01-01T00:00:00+00:00", dataset=spec["data"], duration_s=12.0)
    if env:
        r.update(ENV)
    if status == "ok" and mode in ("train", "infer"):
        iqr = img * 0.02 if iqr is None else iqr
        r.update(img_per_s=img, img_per_s_iqr=iqr, rel_iqr=iqr / img, gflop_per_s=img / 100,
                 lstm_gflop_per_batch=1.0, latency_ms_p50=1.0, noisy=noisy,
                 noise_reasons="IQR 31.0% of median > 5%" if noisy else "", block_img_per_s=[img, img])
    r.update(extra)
    return r


def write_run(path: Path, records: list[dict], planned: int | None = None, kernels: list[dict] | None = None):
    path.mkdir(parents=True)
    (path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {"run_id": path.name, "suite": "fixture", "status": "finished",
            "planned": len(records) if planned is None else planned,
            "started_at": "2026-01-01T00:00:00+00:00", "ended_at": "2026-01-01T01:00:00+00:00"}
    (path / "run.json").write_text(json.dumps(meta))
    if kernels is not None:
        pd.DataFrame(kernels).to_parquet(path / "kernels.parquet", index=False)
    return path


OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
NAIVE_H256_FAILED = rec("naive", 256, status="failed", error=OOM)
INFEASIBLE = rec("cudnn", 1024, status="infeasible", env=False, error="needs {'GPU': 2}; cluster: 1 node")
NOISY = rec("cudnn", 128, 100000.0, repeat=1, noisy=True)

THROUGHPUT = [
    rec("cudnn", 64, 3900.0, repeat=0), rec("cudnn", 64, 4000.0, repeat=1), rec("cudnn", 64, 4500.0, repeat=2),
    rec("naive", 64, 1000.0, iqr=20.0), rec("lstmcell", 64, 800.0, iqr=10.0),
    rec("cudnn", 128, 3000.0, iqr=100.0), NOISY, rec("naive", 128, 600.0), rec("lstmcell", 128, 500.0),
    rec("cudnn", 64, 2500.0, layers=2), rec("cudnn", 64, 2000.0, layers=3),
    rec("cudnn", 64, 20000.0, mode="infer"), rec("naive", 64, 5000.0, mode="infer"),
    rec("cudnn", 64, 7000.0, seq="patch", patch=4),
    NAIVE_H256_FAILED, INFEASIBLE,
]
CURVE = [{"epoch": 1, "train_loss": 1.8, "test_loss": 1.6, "test_acc": 0.41, "elapsed_s": 20.0, "lr": 1e-3},
         {"epoch": 2, "train_loss": 1.4, "test_loss": 1.3, "test_acc": 0.55, "elapsed_s": 40.0, "lr": 1e-3},
         {"epoch": 3, "train_loss": 1.1, "test_loss": 1.1, "test_acc": 0.62, "elapsed_s": 60.0, "lr": 1e-3}]
ACCURACY = rec("cudnn", 128, mode="accuracy", test_acc=0.62, best_test_acc=0.63, epochs_run=3,
               time_to_target_s={"0.5": 40.0, "0.7": None}, curve=CURVE, train_img_per_s=2800.0,
               stopped_by="epochs")
PROF_CUDNN = rec("cudnn", 128, mode="profile", launches_per_step=12, gemm_share=0.3, top_kernel="RNN_blockPersist")
PROF_NAIVE = rec("naive", 128, mode="profile", launches_per_step=390, gemm_share=0.5, top_kernel="sgemm_128x64")


def kernel_rows(trial_id, rows):
    return [{"trial_id": trial_id, "name": n, "category": c, "calls": 10, "self_device_time_us": t,
             "self_cpu_time_us": 5.0, "share_of_step": 0.0, "launches_per_step": lps} for n, c, t, lps in rows]


KERNELS = (kernel_rows(PROF_CUDNN["trial_id"], [("RNN_blockPersist", "cudnn-rnn", 600.0, 4),
                                                ("sgemm_64x64", "gemm", 300.0, 6),
                                                ("add_kernel", "elementwise", 100.0, 2)])
           + kernel_rows(PROF_NAIVE["trial_id"], [("sgemm_128x64", "gemm", 500.0, 130),
                                                  ("sigmoid_kernel", "elementwise", 400.0, 250),
                                                  ("sum_kernel", "reduction", 100.0, 10)]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs: throughput (with a noisy, a failed and an infeasible trial, 2 planned trials missing), and
    accuracy + profile with a kernels.parquet (accuracy joins the other run's throughput)."""
    root = tmp_path_factory.mktemp("runs")
    bench = write_run(root / "bench", THROUGHPUT, planned=len(THROUGHPUT) + 2)
    extra = write_run(root / "extra", [ACCURACY, PROF_CUDNN, PROF_NAIVE], kernels=KERNELS)
    return bench, extra


@pytest.fixture(scope="module")
def records(runs) -> pd.DataFrame:
    return pd.concat([load_run(p) for p in runs], ignore_index=True)


def cell(table: pd.DataFrame, col: str, **keys):
    m = pd.Series(True, index=table.index)
    for k, v in keys.items():
        m &= table[k] == v
    assert m.sum() == 1, f"{keys}: {m.sum()} rows"
    return table.loc[m, col].iloc[0]


def test_throughput_pivot_values(records):
    t = report.throughput_table(records)
    assert list(t.columns) == report.PIVOT_INDEX + ["cudnn", "naive", "lstmcell"]
    row = dict(mode="train", seq="row", device=DEV, num_layers=1)
    assert cell(t, "cudnn", hidden_size=64, **row) == 4000.0      # median of 3900, 4000, 4500
    assert cell(t, "naive", hidden_size=64, **row) == 1000.0
    assert cell(t, "lstmcell", hidden_size=64, **row) == 800.0
    assert cell(t, "cudnn", hidden_size=128, **row) == 3000.0     # the noisy 100000 is not mixed in
    assert cell(t, "naive", hidden_size=128, **row) == 600.0
    assert cell(t, "lstmcell", hidden_size=128, **row) == 500.0
    assert cell(t, "cudnn", hidden_size=64, mode="infer", seq="row", num_layers=1) == 20000.0
    assert cell(t, "cudnn", hidden_size=64, mode="train", seq="patch4", num_layers=1) == 7000.0
    assert cell(t, "cudnn", hidden_size=64, mode="train", seq="row", num_layers=2) == 2500.0
    assert 256 not in set(t["hidden_size"]) and 1024 not in set(t["hidden_size"])   # failed/infeasible: no cell
    assert list(t["mode"]).index("infer") > list(t["mode"]).index("train")         # train rows first
    g = report.gflops_table(records)
    assert cell(g, "cudnn", hidden_size=64, **row) == pytest.approx(40.0)          # median of 39, 40, 45


def test_speedup_is_the_ratio_of_medians(records):
    s = report.speedup_table(records)
    row = dict(mode="train", seq="row", device=DEV, num_layers=1)
    assert cell(s, "cudnn/naive", hidden_size=64, **row) == pytest.approx(4000 / 1000)
    assert cell(s, "cudnn/lstmcell", hidden_size=64, **row) == pytest.approx(4000 / 800)
    assert cell(s, "cudnn/naive", hidden_size=128, **row) == pytest.approx(3000 / 600)
    assert cell(s, "cudnn/lstmcell", hidden_size=128, **row) == pytest.approx(3000 / 500)
    assert cell(s, "cudnn/naive", hidden_size=64, mode="infer", seq="row", num_layers=1) == pytest.approx(4.0)
    assert math.isnan(cell(s, "cudnn/lstmcell", hidden_size=64, mode="infer", seq="row", num_layers=1))
    # cudnn alone (2 and 3 layers, patch4) has nothing to be compared with
    assert set(s["num_layers"]) == {1} and "patch4" not in set(s["seq"])


def test_layer_scaling(records):
    t = report.layer_scaling_table(records)
    assert len(t) == 1
    r = t.iloc[0]
    assert (r["impl"], r["hidden_size"], r["mode"]) == ("cudnn", 64, "train")
    assert (r["layers=1"], r["layers=2"], r["layers=3"]) == (4000.0, 2500.0, 2000.0)
    assert r["deepest/shallowest"] == pytest.approx(0.5)


def test_noisy_failed_and_infeasible_are_listed(records):
    p = report.problems_table(records)
    by_id = p.set_index("trial_id")
    assert by_id.loc[NOISY["trial_id"], "problem"] == "noisy"
    assert by_id.loc[NOISY["trial_id"], "reason"] == "IQR 31.0% of median > 5%"
    assert by_id.loc[NOISY["trial_id"], "img_per_s"] == 100000.0
    assert by_id.loc[NAIVE_H256_FAILED["trial_id"], "problem"] == "failed"
    assert by_id.loc[NAIVE_H256_FAILED["trial_id"], "reason"] == OOM
    assert by_id.loc[INFEASIBLE["trial_id"], "problem"] == "infeasible"
    assert by_id.loc[INFEASIBLE["trial_id"], "device"] == "cuda"          # no environment recorded: no GPU name
    assert len(p) == 3 and list(p["problem"]) == ["failed", "infeasible", "noisy"]


def test_accuracy_next_to_throughput(records):
    a = report.accuracy_table(records)
    assert len(a) == 1
    r = a.iloc[0]
    assert (r["test_acc"], r["best_test_acc"], r["epochs_run"], r["stopped_by"]) == (0.62, 0.63, 3, "epochs")
    assert r["time_to_50%_s"] == 40.0 and math.isnan(r["time_to_70%_s"])
    assert r["train_img_per_s"] == 2800.0
    assert r["throughput_train_img_per_s"] == 3000.0     # train-mode cudnn row h128x1 from the other run
    assert math.isnan(r["throughput_infer_img_per_s"])   # no infer trial of that variant


def test_kernel_breakdown(runs, records):
    kernels = report.load_runs(runs).kernels
    k = report.kernel_table(records, kernels).set_index("impl")
    assert k.loc["cudnn", "share_cudnn-rnn"] == pytest.approx(0.6)
    assert k.loc["cudnn", "share_gemm"] == pytest.approx(0.3)
    assert k.loc["cudnn", "share_elementwise"] == pytest.approx(0.1)
    assert k.loc["cudnn", "share_reduction"] == 0.0
    assert k.loc["naive", "share_gemm"] == pytest.approx(0.5)
    assert k.loc["naive", "share_elementwise"] == pytest.approx(0.4)
    assert k.loc["naive", "share_reduction"] == pytest.approx(0.1)
    assert k.loc["naive", "launches_per_step"] == 390 and k.loc["naive", "top_kernel"] == "sgemm_128x64"
    assert (k.loc["cudnn", "time_source"], k.loc["cudnn", "trials"]) == ("device", 1)
    # without kernels.parquet: the profile records alone
    k2 = report.kernel_table(records, None).set_index("impl")
    assert k2.loc["cudnn", "launches_per_step"] == 12 and "share_gemm" not in k2.columns


def test_environment_one_row_per_run(runs, records):
    meta = report.load_runs(runs).metas
    e = report.environment_table(records, meta).set_index("run_id")
    assert list(e.index) == ["bench", "extra"]
    b = e.loc["bench"]
    assert (b["planned"], b["recorded"], b["ok"], b["failed"], b["infeasible"], b["noisy"], b["missing"]) == \
        (len(THROUGHPUT) + 2, len(THROUGHPUT), len(THROUGHPUT) - 2, 1, 1, 1, 2)
    assert b["gpu_name"] == GPU and b["hostname"] == "gpu-node-1" and b["cudnn_version"] == "92400"
    assert b["git_commit"] == "abc123def456" and b["dataset"] == "synthetic"
    assert e.loc["extra", "dataset"] == "cifar10; synthetic"


def test_verdict_intervals():
    # [median - IQR/2, median + IQR/2]: [2950, 3050] vs [2990, 3090] overlap
    assert report.verdict(3000, 100, 3040, 100) == "within noise"
    assert report.verdict(1000, 20, 1200, 20) == "regression"        # [990, 1010] below [1190, 1210]
    assert report.verdict(800, 10, 700, 10) == "improvement"
    assert report.verdict(1000, 20, 1020, 20) == "within noise"      # touching counts as overlap
    assert report.verdict(1000, None, 1001, float("nan")) == "regression"


def test_compare(runs, records, tmp_path):
    bench, _ = runs
    base_records = [rec("cudnn", 128, 3040.0, iqr=100.0), rec("naive", 64, 1200.0, iqr=20.0),
                    rec("lstmcell", 64, 700.0, iqr=10.0), rec("lstmcell", 128, 520.0, iqr=40.0, seed=1),
                    rec("naive", 256, 300.0), rec("cudnn", 4096, 50.0)]
    base_dir = write_run(tmp_path / "baseline", base_records)
    c = report.compare_table(load_run(bench), load_run(base_dir)).set_index("trial_id")
    r = c.loc[rec("cudnn", 128, 1.0)["trial_id"]]
    assert (r["verdict"], r["matched_by"]) == ("within noise", "trial_id")
    assert r["ratio"] == pytest.approx(3000 / 3040)
    r = c.loc[rec("naive", 64, 1.0)["trial_id"]]
    assert r["verdict"] == "regression" and r["ratio"] == pytest.approx(1000 / 1200)
    assert c.loc[rec("lstmcell", 64, 1.0)["trial_id"], "verdict"] == "improvement"
    r = c.loc[rec("lstmcell", 128, 1.0)["trial_id"]]          # seed differs: matched on the variant fields
    assert (r["matched_by"], r["verdict"]) == ("variant", "within noise")   # [495, 505] vs [500, 540]
    assert r["baseline_trial_id"] == base_records[3]["trial_id"]
    assert c.loc[NAIVE_H256_FAILED["trial_id"], "verdict"] == "not compared: current failed"
    assert c.loc[NOISY["trial_id"], "verdict"] == "no baseline" and bool(c.loc[NOISY["trial_id"], "noisy"])
    assert c.loc[rec("cudnn", 64, 1.0, repeat=2)["trial_id"], "verdict"] == "no baseline"
    unmatched = report.unmatched_baseline(load_run(bench), load_run(base_dir), c.reset_index())
    assert list(unmatched["hidden_size"]) == [4096]


def test_build_report_writes_everything(runs, tmp_path):
    bench, extra = runs
    base_dir = write_run(tmp_path / "baseline", [rec("naive", 64, 1200.0, iqr=20.0)])
    out = tmp_path / "report"
    md = report.build_report([bench, extra], out, compare=base_dir,
                             command="lstm-bench report bench extra --compare baseline")
    assert md == out / "report.md"
    text = md.read_text()
    assert "lstm-bench report bench extra --compare baseline" in text
    assert "bench" in text and "extra" in text and "Baseline: baseline" in text
    assert OOM in text and "IQR 31.0% of median > 5%" in text and "bench: 2" in text   # 2 planned, no record
    assert re.search(r"\| +4,000 \|", text) and "regression" in text
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and OOM in page
    for name in ("throughput_vs_hidden", "speedup_cudnn_over_naive", "accuracy_curves", "kernel_time_by_category"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}.png" in text
    env = pd.read_csv(out / "tables" / "environment.csv", dtype=str).set_index("field")   # a column per run
    assert list(env.columns) == ["bench", "extra"] and (env.loc["missing", "bench"], env.loc["ok", "extra"]) == \
        ("2", "3")
    tables = report.compute_tables(report.load_runs([bench, extra]), report.load_runs([base_dir]))
    assert set(tables) == set(report.TABLE_NAMES)
    for name, table in tables.items():
        text_cols = {c: str for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])
                     and not table[c].dropna().map(lambda v: isinstance(v, bool)).all()}
        back = pd.read_csv(out / "tables" / f"{name}.csv", dtype=text_cols)   # "13.0" stays a version string
        assert list(back.columns) == [str(c) for c in table.columns], name
        assert len(back) == len(table) and len(table) > 0, name
        expected = table.astype(object).where(table.notna(), None).reset_index(drop=True)
        got = back.astype(object).where(back.notna(), None)
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, obj=name)


def test_only_failed_trials_render(tmp_path):
    run = write_run(tmp_path / "broken", [NAIVE_H256_FAILED, INFEASIBLE], planned=5)
    md = report.build_report([run], tmp_path / "out")
    text = md.read_text()
    assert OOM in text and "needs {'GPU': 2}" in text
    assert "broken: 3" in text                               # 3 of the 5 planned trials have no record
    assert "(not given)" in text                             # no command passed
    assert not list((tmp_path / "out" / "plots").glob("*.png"))
    assert "data:image/png" not in (tmp_path / "out" / "report.html").read_text()
    assert pd.read_csv(tmp_path / "out" / "tables" / "throughput.csv").empty


def test_empty_run_and_missing_dir(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"suite": "s", "planned": 4, "status": "interrupted"}))
    text = report.build_report([run], tmp_path / "out").read_text()
    assert "empty: 4" in text and "0 trials" in text
    with pytest.raises(HarnessError):
        report.build_report([tmp_path / "nope"], tmp_path / "out2")


def md_cells(line: str) -> list[str]:
    """The cells of a markdown table line, padding stripped (an escaped pipe stays inside its cell)."""
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_markdown_table_formatting():
    df = pd.DataFrame({"impl": ["cudnn", "a|b"], "img_per_s": [12345.6, 0.5], "cudnn/naive": [4.0, float("nan")]})
    md = report.markdown_table(df).splitlines()
    assert md_cells(md[0]) == ["impl", "img_per_s", "cudnn/naive"]
    assert [re.fullmatch(r":?-{3,}:?", a) is not None for a in md_cells(md[1])] == [True] * 3
    assert [a.endswith(":") for a in md_cells(md[1])] == [False, True, True]     # numbers right-aligned
    assert md_cells(md[2]) == ["cudnn", "12,346", "4.00"]
    assert md_cells(md[3]) == ["a\\|b", "0.5", ""]
    page = report.html_table(pd.DataFrame({"<b>": ["a<b & c"], "img_per_s": [1.5]}))
    assert "&lt;b&gt;" in page and "a&lt;b &amp; c" in page and "<b>" not in page
    assert re.search(r'<td class="[^"]*\bn\b[^"]*" *>1.50</td>', page)                  # numbers right-aligned


def test_parquet_only_run(runs, tmp_path):
    """A run kept only as trials.parquet (nested fields stored as JSON text) gives the same tables."""
    import shutil
    from harness.store import RunStore
    _, extra = runs
    run = tmp_path / "extra"
    shutil.copytree(extra, run)
    RunStore(run).consolidate()
    (run / "trials.jsonl").unlink()
    a = report.accuracy_table(load_run(run))
    assert a.iloc[0]["time_to_50%_s"] == 40.0 and a.iloc[0]["test_acc"] == 0.62
    out = tmp_path / "out"
    report.build_report([run], out)
    assert (out / "plots" / "accuracy_curves.png").exists()


# ---- the answer first --------------------------------------------------------------------------------------

def test_headline_numbers():
    """Speedups are geometric means of per-spec ratios of median samples; a cell with only noisy trials
    counts (and is counted), a noisy repeat beside a clean one is left out; ceiling_frac as a percentage."""
    records = [rec("cudnn", 64, 4000.0, ceiling_frac=0.5), rec("naive", 64, 1000.0, ceiling_frac=0.1),
               rec("cudnn", 128, 3000.0, ceiling_frac=0.7), rec("naive", 128, 600.0, noisy=True, ceiling_frac=0.2),
               rec("cudnn", 128, 90000.0, repeat=1, noisy=True),            # diluting nothing: cudnn h128 is clean
               rec("lstmcell", 64, 800.0), rec("cudnn", 64, 8000.0, mode="infer")]
    t = report.headline_table(pd.DataFrame(records))
    assert list(t["mode"]) == ["train", "train"] and set(t["fastest"]) == {"cudnn"}   # infer: one impl, no row
    naive = t.set_index("other").loc["naive"]
    assert naive["speedup"] == pytest.approx(math.sqrt(4000 / 1000 * 3000 / 600))
    assert (naive["min_speedup"], naive["max_speedup"]) == (pytest.approx(4.0), pytest.approx(5.0))
    assert (naive["specs"], naive["faster_in"], naive["noisy_cells"]) == (2, 2, 1)
    assert naive["ci_low"] == pytest.approx(naive["speedup"]) == naive["ci_high"]   # every sample alike
    assert naive["ceiling_pct"] == pytest.approx(60.0) and naive["other_ceiling_pct"] == pytest.approx(15.0)
    lstm = t.set_index("other").loc["lstmcell"]          # one spec in common
    assert lstm["speedup"] == pytest.approx(5.0) and lstm["specs"] == 1 and math.isnan(lstm["other_ceiling_pct"])
    # head to head: an impl that beats every other where they meet is the fastest, whatever its coverage
    faster = records[:5] + [rec("lstmcell", 64, 5000.0)]
    assert set(report.headline_table(pd.DataFrame(faster))["fastest"]) == {"lstmcell"}
    assert report.headline_table(pd.DataFrame([rec("cudnn", 64, 1.0)])).empty


def h2s(text: str, html: bool) -> list[str]:
    pattern = r"<h2>([^<]*)</h2>" if html else r"(?m)^## (.*)$"
    return re.findall(pattern, text)


def test_headline_comes_first_and_environment_last_collapsed(runs, tmp_path):
    bench, extra = runs
    out = tmp_path / "report"
    report.build_report([bench, extra], out)
    for name, is_html in (("report.md", False), ("report.html", True)):
        text = (out / name).read_text()
        heads = h2s(text, is_html)
        assert heads[0].startswith("Headline"), (name, heads)
        assert heads[-1] == "Environment" and heads.index("Environment") > \
            heads.index("Problems: failed, infeasible and noisy trials") > heads.index("Throughput (img/s, median)")
        env = text[text.index("Environment"):]
        assert "<details><summary>All" in env and "</details>" in env   # the full table collapsed
        head = text[:text.index(heads[1])]
        assert "cudnn is fastest" in head and "4.47x naive" in head   # sqrt(4000/1000 * 3000/600): h128's noisy
    # the two runs differ in the dataset alone: only it is shown outside the collapsed table
    md = (out / "report.md").read_text()
    shown = md[md.index("## Environment"):md.index("<details>", md.index("## Environment"))]
    assert "dataset" in shown and "gpu_name" not in shown and "torch_version" not in shown


def noisy_only_records():
    return [rec("cudnn", 64, 4000.0), rec("naive", 64, 1000.0), rec("cudnn", 128, 3000.0, noisy=True, iqr=900.0),
            rec("naive", 128, 600.0)]


def test_noisy_cells_are_plotted():
    cells = report.throughput_cells(pd.DataFrame(noisy_only_records()))
    assert len(cells) == 4 and list(cells["noisy"]) == [False, False, True, False]
    assert report.throughput_table(pd.DataFrame(noisy_only_records()))["cudnn"].isna().sum() == 1  # tables: blank
    fig = report.throughput_figure(cells)
    assert (fig.drawn, fig.noisy) == (4, 1)
    (ax,) = fig.axes
    noisy = [ln for ln in ax.lines if ln.get_gid() == "noisy" and ln.get_marker() == "o"]   # not its caps
    assert len(noisy) == 1 and list(noisy[0].get_xdata()) == [128.0] and list(noisy[0].get_ydata()) == [3000.0]
    assert noisy[0].get_markerfacecolor() == "white"                       # hollow
    # the error bar spans median +- IQR/2
    segments = [seg for c in ax.collections for seg in c.get_segments() if seg[0][0] == 128.0 and seg[1][0] == 128.0]
    assert any(sorted((seg[0][1], seg[1][1])) == [2550.0, 3450.0] for seg in segments), segments


def test_smoke_report_plots_all_24_cells(tmp_path):
    run = Path(__file__).resolve().parents[1] / "results/baselines/smoke-cpu/20261129-042952-9503"
    md = report.build_report([run], tmp_path / "out").read_text()
    assert "24 cells drawn, 15 noisy" in md
    cells = pd.read_csv(tmp_path / "out" / "tables" / "throughput_cells.csv")
    assert len(cells) == 24 and int(cells["noisy"].sum()) == 15


def _chromium():
    import importlib.util
    spec = importlib.util.spec_from_file_location("report_screenshot", Path(__file__).resolve().parents[1]
                                                  / "scripts" / "report_screenshot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if mod.find_browser() is None:
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium; make test installs none)")
    return mod


MEASURE = """<script>window.addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.top, r.bottom, r.width]; };
  document.body.setAttribute("data-layout", JSON.stringify({
    headline: box(document.querySelector("h2 ~ table")), plot: box(document.querySelector("figure img")),
    h2: [...document.querySelectorAll("h2")].map(h => h.textContent)}));
});</script></body>"""


def test_report_renders_in_chromium(tmp_path):
    """The smoke baseline's report in a real browser at 1400 x 900: the headline table and the throughput plot
    with all its cells lie on the first screen, and the screenshot is a real picture of it."""
    shot = _chromium()
    run = Path(__file__).resolve().parents[1] / "results/baselines/smoke-cpu/20261129-042952-9503"
    report.build_report([run], tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    png = shot.screenshot(page, tmp_path / "report.png", (1400, 900))
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and (int.from_bytes(head[16:20], "big"),
                                                  int.from_bytes(head[20:24], "big")) == (1400, 900)
    assert png.stat().st_size > 50_000                  # a rendered page with a plot, not a blank screen
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace("</body>", MEASURE))
    dom = shot.dump_dom(measured, (1400, 900))
    layout = json.loads(re.search(r'data-layout="([^"]*)"', dom).group(1).replace("&quot;", '"'))
    assert layout["h2"][0].startswith("Headline") and layout["h2"][-1] == "Environment"
    assert 0 < layout["headline"][0] < layout["headline"][1] <= 900, layout
    assert layout["plot"][1] <= 900 and layout["plot"][2] > 1000, layout   # whole, and not a thumbnail
