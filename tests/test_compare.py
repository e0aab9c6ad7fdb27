"""lstm-bench compare: pairing by the comparability rule, bootstrap intervals, Benjamini-Hochberg verdicts, exit
codes, and the report's compare section. Runs are the smoke suite's real specs (harness.suites builds them, so
trial_ids are the real ones) with outcome and environment fields shaped like a real smoke run's trials.jsonl
line; every record is checked against the schema, so no field here is invented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness import cli
from harness.report import compare_runs
from harness.report.compare import bh_count, exit_lines, log_ratio_draws
from harness.schema import check_record
from harness.store import load_run
from harness.suites import load_suite, parse_sets

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "suites" / "smoke.yaml"
# environment of a real smoke run on this project's CPU machine (results/baselines/smoke-cpu), as recorded
ENV = {"dataset": "synthetic", "tf32_cudnn": False, "tf32_matmul": False, "hostname": "vm", "cpu_model": "AMD EPYC",
       "cpu_count": 2, "cpu_physical_cores": 2, "smt": False, "mem_gb": 23.5, "cuda_version": "13.0",
       "cudnn_version": 92400, "torch_version": "2.14.1+cu130", "torchvision_version": "0.29.1+cu130",
       "ray_version": "2.60.0", "python_version": "3.11.7", "git_commit": "4a1c740f5298-dirty",
       "code_version": "7bf0df1cab77+git:4a1c740f5298-dirty", "node_ip": "127.0.0.1", "gpu_name": None,
       "gpu_uuid": None, "gpu_driver": None, "gpu_memory_gb": None, "hw_fingerprint": "c28925c8e6e6",
       "worker_pid": 14263,
       "backend": "onednn-rnn"}
STEP_MS = {"cudnn": 6.0, "naive": 30.0, "lstmcell": 45.0}


def smoke_specs(threads: int | None = None):
    sets = [f"cpus_per_trial={threads}"] if threads else []
    return load_suite(SMOKE, parse_sets(sets)).trials


def step_times(n: int, base_ms: float, spread: float, rng, phi: float = 0.5) -> np.ndarray:
    """n step times around base_ms, log-normal with AR(1) dependence between consecutive steps."""
    e = np.empty(n)
    e[0] = rng.standard_normal()
    for i in range(1, n):
        e[i] = phi * e[i - 1] + np.sqrt(1 - phi ** 2) * rng.standard_normal()
    return base_ms * np.exp(spread * e)


def record(spec, *, slower: float = 1.0, spread: float = 0.01, n: int = 120, seed: int = 0, status: str = "ok",
           noisy: bool = False, blocks_only: bool = False, **env) -> dict:
    """A trial record as run_trial writes it: spec fields from the spec, outcome and environment like a real
    smoke record. slower: step times multiplied by it (1.1: 10% slower)."""
    r = dict(spec.flat(), status=status, started_at="2026-11-29T03:46:44+00:00", duration_s=17.1, **ENV)
    r.update(env)
    if status != "ok":
        r.update(error="RuntimeError: boom", error_detail="Traceback: ...")
        return r
    rng = np.random.default_rng([seed, int(spec.trial_id, 16) % 2 ** 32])
    base = STEP_MS[spec.variant.impl] * (spec.variant.hidden_size / 64) * (1.3 if spec.mode == "train" else 0.5)
    ms = step_times(n, base * slower, spread, rng)
    blocks = [float(spec.variant.batch_size * 1000 / b.mean()) for b in np.array_split(ms, max(5, n // 20))]
    q1, med, q3 = np.percentile(blocks, [25, 50, 75])
    r.update(img_per_s=float(med), img_per_s_iqr=float(q3 - q1), rel_iqr=float((q3 - q1) / med),
             latency_ms_p50=float(np.median(ms)), noisy=noisy, noise_reasons="IQR 31.0% of median > 5%" if noisy
             else "", external_cpu_cores=0.0, timed_blocks=len(blocks), timed_steps=n, warmup_steps=40,
             block_img_per_s=blocks, step_ms=None if blocks_only else [float(x) for x in ms])
    if blocks_only:     # a record from before step_ms, hw_fingerprint and the TF32 flags
        for k in ("step_ms", "hw_fingerprint", "tf32_cudnn", "tf32_matmul"):
            r.pop(k)
    return r


def write_run(path: Path, records: list[dict], started: str = "2026-11-29T03:46:18+00:00", check=True) -> Path:
    """A run directory of these records; built records are checked against the schema (real ones need not be:
    they may carry fields of a newer schema than this checkout's)."""
    path.mkdir(parents=True)
    for r in records if check else []:
        assert check_record(r) == [], check_record(r)
    (path / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {"run_id": path.name, "suite": "smoke", "status": "finished", "planned": len(records),
            "started_at": started, "ended_at": started}
    (path / "run.json").write_text(json.dumps(meta))
    return path


def smoke_run(path: Path, threads=None, overrides: dict | None = None, **kw) -> Path:
    """The 24 smoke trials; overrides: trial_id -> record() keyword arguments for that cell."""
    overrides = overrides or {}
    return write_run(path, [record(s, **{**kw, **overrides.get(s.trial_id, {})}) for s in smoke_specs(threads)])


def compare(tmp_path, *argv) -> tuple[int, str, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["compare", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return smoke_run(tmp_path_factory.mktemp("runs") / "base", seed=1)


def test_identical_distributions_pass(base, tmp_path):
    cur = smoke_run(tmp_path / "cur", seed=2)
    rc, out, err = compare(tmp_path, base, cur, "--fail-on", "any")
    assert rc == 0 and err == "", err
    c = compare_runs(load_run(cur), load_run(base))
    assert (c.table["verdict"] == "within noise").all() and c.tested == 24 and c.refused is None
    assert c.table["ratio"].between(0.98, 1.02).all()
    assert (c.table["ci_low"] < c.table["ratio"]).all() and (c.table["ratio"] < c.table["ci_high"]).all()
    assert c.table["samples"].eq("step_ms").all() and c.resamples == 9600 and c.level == pytest.approx(1 - 0.05 / 24)


def test_ten_percent_slower_copy_exits_1_and_names_its_cells(base, tmp_path):
    cur = smoke_run(tmp_path / "cur", seed=2, slower=1.1)
    rc, out, err = compare(tmp_path, base, cur, "--fail-on", "regression", "--out", tmp_path / "report")
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 24, err
    variants = set(compare_runs(load_run(cur), load_run(base)).table["variant"])
    assert all(line.startswith("regression: ") and "ratio 0.9" in line for line in lines)
    assert {v for v in variants if any(v in line for line in lines)} == variants
    for name in ("compare.md", "compare.html", "compare.csv"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    md = (tmp_path / "report" / "compare.md").read_text()
    assert "24 regression" in md and "Benjamini-Hochberg" in md and "[0.9" in md
    csv = pd.read_csv(tmp_path / "report" / "compare.csv")
    assert (csv["verdict"] == "regression").all() and (csv["ci_high"] < 0.97).all()


def test_one_slowed_cell_of_24_is_caught(base, tmp_path):
    spec = smoke_specs()[7]
    cur = smoke_run(tmp_path / "cur", seed=2, overrides={spec.trial_id: {"slower": 1.1}})
    rc, _, err = compare(tmp_path, base, cur, "--fail-on", "regression")
    assert rc == 1 and len(err.splitlines()) == 1 and spec.trial_id in err
    c = compare_runs(load_run(cur), load_run(base))
    assert c.selected == 1 and c.counts() == {"within noise": 23, "regression": 1}
    rc, _, err = compare(tmp_path, cur, base, "--fail-on", "any")           # the other way: an improvement
    assert rc == 1 and err.startswith("improvement: ") and spec.trial_id in err
    assert compare(tmp_path, base, cur)[0] == 0                              # no --fail-on: report only


def test_false_verdicts_at_threshold_0_stay_under_5_percent_per_cell():
    """Baseline and current drawn from one distribution, 100 seeds, 8 cells (real smoke specs), threshold 0:
    any regression or improvement is false."""
    specs = smoke_specs()[:8]
    false = np.zeros(len(specs))
    for seed in range(100):
        cur = pd.DataFrame([record(s, seed=2 * seed, n=60, spread=0.05) for s in specs]).assign(run_id="cur")
        base = pd.DataFrame([record(s, seed=2 * seed + 1, n=60, spread=0.05) for s in specs]).assign(run_id="b")
        c = compare_runs(cur, base, threshold=0.0).table.set_index("trial_id")
        false += [c.loc[s.trial_id, "verdict"] != "within noise" for s in specs]
    print(f"\nfalse verdicts per cell over 100 seeds: {false.astype(int).tolist()}")
    assert (false / 100 <= 0.05).all(), false


def test_bootstrap_interval_covers_per_cell():
    """Without the multiple-cell adjustment (one cell), the 95% block-bootstrap interval of two samples of one
    autocorrelated distribution misses 1 in at most ~5% of 200 seeds."""
    misses = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        a, b = step_times(80, 10.0, 0.05, rng), step_times(80, 10.0, 0.05, rng)
        lo, hi = np.exp(np.quantile(log_ratio_draws(a, b, 2000, seed), [0.025, 0.975]))
        misses += not lo <= 1 <= hi
    print(f"\n95% interval missed the true ratio in {misses} of 200 seeds")
    assert misses <= 14


def test_bh_count():
    assert bh_count(np.array([0.001, 0.02, 0.04, 0.5]), 0.05) == 2     # 0.04 > 3 * 0.05 / 4? no: 0.0375
    assert bh_count(np.array([0.01, 0.02, 0.03, 0.04]), 0.05) == 4
    assert bh_count(np.array([0.5, 0.9]), 0.05) == 0 and bh_count(np.array([]), 0.05) == 0


def test_noisy_cell_gets_no_verdict_and_failure_is_a_regression(base, tmp_path):
    specs = smoke_specs()
    noisy, failed = specs[2].trial_id, specs[3].trial_id
    cur = smoke_run(tmp_path / "cur", seed=2, overrides={noisy: {"noisy": True, "slower": 1.5},
                                                         failed: {"status": "failed"}})
    c = compare_runs(load_run(cur), load_run(base)).table.set_index("trial_id")
    assert c.loc[noisy, "verdict"] == "no verdict (noisy)" and "IQR 31.0%" in c.loc[noisy, "note"]
    assert c.loc[noisy, "ratio"] == pytest.approx(1 / 1.5, rel=0.03) and pd.isna(c.loc[noisy, "ci_low"])
    assert c.loc[failed, "verdict"] == "regression" and c.loc[failed, "note"] == "ok in the baseline, failed now"
    rc, _, err = compare(tmp_path, base, cur, "--fail-on", "regression")
    assert rc == 1 and err.splitlines() == [line for line in err.splitlines() if failed in line]
    rc, _, err = compare(tmp_path, cur, base, "--fail-on", "regression")   # failed before, ok now: no verdict
    assert rc == 0 and err == ""


def test_thread_counts_differ_refused(base, tmp_path):
    one = smoke_run(tmp_path / "one", threads=1, seed=2)
    rc, out, err = compare(tmp_path, base, one, "--fail-on", "regression")
    assert rc == 2 and err.splitlines() == ["lstm-bench: error: no comparable cells: threads differs (2 vs 1)"]


def test_fingerprints_differ_refused_unless_cross_hardware(base, tmp_path):
    other = smoke_run(tmp_path / "other", seed=2, slower=1.1, hw_fingerprint="0f1e2d3c4b5a")
    rc, _, err = compare(tmp_path, base, other, "--fail-on", "regression")
    assert rc == 2 and err.splitlines() == [
        "lstm-bench: error: no comparable cells: hw_fingerprint differs (c28925c8e6e6 vs 0f1e2d3c4b5a); "
        "--cross-hardware compares across hardware"]
    rc, out, err = compare(tmp_path, base, other, "--fail-on", "regression", "--cross-hardware")
    assert rc == 1 and len(err.splitlines()) == 24
    assert all(line.startswith("regression (cross-hardware): ") for line in err.splitlines())
    c = compare_runs(load_run(other), load_run(base), cross_hardware=True)
    assert (c.table["verdict"] == "regression (cross-hardware)").all()


def test_old_records_compare_on_blocks(tmp_path):
    """Records without step_ms, hw_fingerprint or TF32 flags (older runs): per-block samples, spec + threads."""
    old = smoke_run(tmp_path / "old", seed=1, n=200, blocks_only=True)
    old2 = smoke_run(tmp_path / "old2", seed=2, n=200, blocks_only=True, slower=1.2)
    c = compare_runs(load_run(old2), load_run(old))
    assert c.table["samples"].eq("block_img_per_s").all() and c.table["n_current"].eq(10).all()
    assert (c.table["verdict"] == "regression").all()
    new = smoke_run(tmp_path / "new", seed=2)                  # an old baseline never matches a new record
    rc, _, err = compare(tmp_path, old, new, "--fail-on", "regression")
    assert rc == 2 and "hw_fingerprint differs (missing vs c28925c8e6e6)" in err and "tf32_cudnn differs" in err


@pytest.mark.parametrize("argv, message", [
    (["MISSING", "BASE"], "nope: no such run directory"),
    (["BASE", "MISSING"], "nope: no such run directory"),
    (["BASE", "BASE", "--threshold", "-0.1"], "--threshold must be in [0, 1)"),
    (["BASE", "BASE", "--threshold", "nan"], "--threshold must be in [0, 1)"),
    (["BASE", "BASE", "--alpha", "0"], "--alpha must be in (0, 1)"),
    (["BASE", "BASE", "--fail-on", "everything"], "invalid choice"),
    (["BASE", "BASE", "--out", "AFILE"], "cannot write"),
    (["BASE", "EMPTY"], "no comparable cells: the current run has no train/infer trials"),
    (["BASE"], "the following arguments are required"),
])
def test_bad_input_is_one_line_exit_2(base, tmp_path, argv, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    paths = {"BASE": str(base), "MISSING": str(tmp_path / "nope"), "AFILE": str(tmp_path / "afile" / "sub"),
             "EMPTY": str(tmp_path / "empty")}
    rc, _, err = compare(tmp_path, *[paths.get(a, a) for a in argv])
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("lstm-bench: error: ") and message in err, err


def test_report_compare_shows_the_intervals(base, tmp_path):
    from harness.report import build_report
    cur = smoke_run(tmp_path / "cur", seed=2, slower=1.1)
    md = build_report([cur], tmp_path / "rep", compare=base, command="lstm-bench report cur --compare base")
    text = md.read_text()
    assert "## Compare with baseline base" in text and "24 regression" in text and "[0.9" in text
    table = pd.read_csv(tmp_path / "rep" / "tables" / "compare.csv")
    assert (table["verdict"] == "regression").all() and table["ci_high"].lt(0.97).all()


def test_workflow_gates_on_an_ab_against_the_base_ref():
    """The CI gate pairs the change with its base in time (lstm-bench ab), never runs a fork's code on the
    persistent self-hosted runner, and uploads the A/B report either way."""
    wf = yaml.safe_load((ROOT / "scripts" / "ci" / "benchmark-gate.yml").read_text())
    (job,) = wf["jobs"].values()
    assert "self-hosted" in job["runs-on"]
    assert "head.repo.full_name == github.repository" in job["if"] and "labels" in job["if"]
    assert set(wf[True]) == {"pull_request", "workflow_dispatch"} and "pull_request_target" not in wf[True]
    (gate,) = [s for s in job["steps"] if "lstm-bench ab" in s.get("run", "")]
    assert "suites/gate.yaml" in gate["run"] and "--baseline" in gate["run"] and "--fail-on regression" in gate["run"]
    assert "--allow-dirty" not in gate["run"]
    (checkout,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout")]
    assert checkout["with"]["fetch-depth"] == 0  # the base ref must be in the clone
    upload = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert len(upload) == 1 and upload[0].get("if") == "always()"
    assert job["steps"].index(upload[0]) > job["steps"].index(gate)


def test_committed_baseline_is_a_smoke_run():
    (run,) = [p for p in (ROOT / "results" / "baselines" / "smoke-cpu").iterdir() if p.is_dir()]
    df = load_run(run)
    assert len(df) == 24 and set(df["trial_id"]) == {s.trial_id for s in smoke_specs()}
    assert df["step_ms"].map(len).gt(0).all() and df["hw_fingerprint"].notna().all()
    make = (ROOT / "Makefile").read_text()
    assert "bench-gate:" in make and "lstm-bench ab suites/gate.yaml" in make


def test_real_baseline_against_itself_and_a_slower_copy(tmp_path):
    """The committed smoke run (real records): against itself every tested cell is within noise; a copy whose
    steps all take 10% longer is a regression in every cell the harness did not flag noisy."""
    (run,) = [p for p in (ROOT / "results" / "baselines" / "smoke-cpu").iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    for r in records:
        r.update(step_ms=[x * 1.1 for x in r["step_ms"]], block_img_per_s=[x / 1.1 for x in r["block_img_per_s"]],
                 img_per_s=r["img_per_s"] / 1.1)
    slower = write_run(tmp_path / "slower", records, check=False)
    c = compare_runs(load_run(run), load_run(run))
    clean = ~c.table["noisy"]
    assert clean.sum() >= 3 and (c.table.loc[clean, "verdict"] == "within noise").all()
    assert (c.table.loc[~clean, "verdict"] == "no verdict (noisy)").all()
    rc, _, err = compare(tmp_path, run, slower, "--fail-on", "regression")
    assert rc == 1 and len(err.splitlines()) == clean.sum()
    named = {re.search(r"\(([0-9a-f]{12})\): ratio 0\.9", line).group(1) for line in err.splitlines()}
    assert named == set(c.table.loc[clean, "trial_id"])


def test_exit_lines_name_cells(base, tmp_path):
    cur = smoke_run(tmp_path / "cur", seed=2, slower=1.1)
    c = compare_runs(load_run(cur), load_run(base))
    assert len(exit_lines(c, "regression")) == 24 and exit_lines(c, None) == []


def test_any_compare_or_history_argv_is_a_result_or_one_error_line(base, tmp_path_factory, monkeypatch):
    """Property, as tests/test_cli_properties.py states it for the other subcommands: whatever argv, `compare`
    and `history` exit 0 (no error line), 1 (compare --fail-on: one line per flagged cell), or non-zero with
    exactly one `lstm-bench: error:` line; never a traceback."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    root = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(root)              # "" and "." name this folder: history writes its default out below it
    slower = smoke_run(root / "results" / "smoke" / "slower", seed=3, slower=1.1)
    (root / "afile").write_text("x")
    (root / "empty").mkdir()
    (root / "torn").mkdir()
    (root / "torn" / "trials.jsonl").write_text('{"trial_id": "x", "status": "ok"}\n{"trial_')
    paths = [str(base), str(slower), str(root / "results"), str(root / "afile"), str(root / "empty"),
             str(root / "torn"), str(root / "nope"), "", "-", "a\nb", "\udcff"]
    values = ["0", "0.03", "-1", "1", "nan", "inf", "x", "", "0.5", "1e-9", "regression", "any", "none", "smoke"]
    flags = ["--threshold", "--alpha", "--fail-on", "--cross-hardware", "--out", "--suite", "--bogus", "--"]

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(command=st.sampled_from(["compare", "history"]), positional=st.lists(st.sampled_from(paths), max_size=3),
           options=st.lists(st.tuples(st.sampled_from(flags), st.sampled_from(values + paths[:6])), max_size=3))
    def prop(command, positional, options):
        argv = [command, *positional]
        for flag, value in options:
            argv += [flag] if flag == "--cross-hardware" else [flag, str(root / "out") if flag == "--out" else value]
        rc, out, err = compare_argv(argv)
        lines = err.splitlines()
        assert "Traceback" not in out + err, (argv, err)
        if rc == 0:
            assert not any(line.startswith("lstm-bench:") for line in lines), (argv, err)
        elif rc == 1 and command == "compare" and "--fail-on" in argv:
            assert lines and all(line.startswith(("regression", "improvement")) for line in lines), (argv, err)
        else:
            assert len(lines) == 1 and lines[0].startswith("lstm-bench: error: "), (argv, rc, err)

    prop()


def compare_argv(argv):
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()
