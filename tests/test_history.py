"""lstm-bench history: every run under a results folder as one table, change points on a planted history."""

from __future__ import annotations

import contextlib
import io
import re

import numpy as np
import pandas as pd
import pytest
from test_compare import record, smoke_specs, write_run

from harness import cli
from harness import stats
from harness.report import change_points, load_history, series_table
from harness.report.history import ALPHA, MIN_SHIFT, cause

RUNS = 20
STEP_AT = 10            # the stepped specs are 25% slower from the 11th run on, where the code changes


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """results/smoke/<run_id>/ x 20 runs of 8 smoke specs, run-to-run scatter ~1%; specs 3 and 4 step down at
    run 10, where the code version changes (one code change moving two lines); spec 5 has one odd run (-15%,
    run 4) and spec 7 an odd last run (-15%); the last run is on a second machine (another fingerprint) too."""
    root = tmp_path_factory.mktemp("hist") / "results"
    specs = smoke_specs()[:8]
    rng = np.random.default_rng(7)
    for i in range(RUNS):
        recs = []
        code = f"c0de{0 if i < STEP_AT else STEP_AT:02d}+git:abc{0 if i < STEP_AT else STEP_AT}"
        for j, s in enumerate(specs):
            slower = float(np.exp(rng.normal(0, 0.01)))
            slower *= (1.25 if (j in (3, 4) and i >= STEP_AT) else 1.15 if (j == 5 and i == 4)
                       or (j == 7 and i == RUNS - 1) else 1.0)
            recs.append(record(s, slower=slower, seed=i, n=60, code_version=code, noisy=(j == 6 and i == 2)))
        write_run(root / "smoke" / f"202611{i + 1:02d}-030000-ab{i:02d}", recs,
                  started=f"2026-11-{i + 1:02d}T03:00:00+00:00")
    other = [record(s, seed=99, n=60, hw_fingerprint="0f1e2d3c4b5a", code_version="c0de10+git:abc10")
             for s in specs[:2]]
    write_run(root / "gpu-box" / "smoke" / "20261130-090000-ffff", other, started="2026-11-30T09:00:00+00:00")
    return root, specs


def test_change_points_method():
    flat = 1000 * np.exp(np.random.default_rng(1).normal(0, 0.02, 36))
    assert change_points(flat) == []
    assert change_points(flat[:24]) == []
    step = np.r_[flat[:12], flat[12:24] * 0.8]
    assert change_points(step) == [12]
    two = np.r_[flat[:12], flat[12:24] * 0.8, flat[24:] * 0.8 * 1.15]
    assert change_points(two) == [12, 24]
    odd = flat[:24].copy()
    odd[5] *= 0.7                                  # one odd run is not a change
    assert change_points(odd) == []
    odd[-2:] *= 0.7                                # nor are two odd last runs (3 a side at least)
    assert change_points(odd) == []
    assert change_points(np.r_[flat[:12], flat[12:24] * 0.97]) == []      # under the 5% minimum shift
    assert change_points(np.r_[flat[:5], flat[5:10] * 0.7]) == []         # too few runs for any p <= 0.05


def test_causes_name_code_machine_or_nothing():
    rows = pd.DataFrame({"run_label": ["a"] * 4 + ["b"] * 4, "hostname": ["h1"] * 8,
                         "ceiling_gflop_per_s": [100.0] * 8})
    assert cause(rows, 4) == "code changed" and cause(rows, 5) == "code changed"   # one run either way
    assert cause(rows, 7) == "unexplained"
    same = rows.assign(run_label="a")
    assert cause(same, 4) == "unexplained"
    assert cause(same.assign(ceiling_gflop_per_s=[100.0] * 4 + [60.0] * 4), 4) == "machine changed"
    assert cause(same.assign(ceiling_gflop_per_s=[100.0] * 4 + [85.0] * 4), 4) == "unexplained"   # probe wander
    assert cause(same.assign(hostname=["h1"] * 4 + ["h2"] * 4), 4) == "machine changed"
    assert cause(rows.assign(hostname=["h1"] * 4 + ["h2"] * 4), 4) == "code changed, machine changed"
    assert cause(same.drop(columns=["hostname", "ceiling_gflop_per_s"]), 4) == "unexplained"   # old records


def _ar1(rng, series: int, runs: int, rho: float = 0.5, sd: float = 0.03) -> np.ndarray:
    """log img/s of flat lines: AR(1) run to run (rho), marginal sd `sd`."""
    x = np.empty((series, runs))
    x[:, 0] = sd * rng.standard_normal(series)
    for t in range(1, runs):
        x[:, t] = rho * x[:, t - 1] + sd * np.sqrt(1 - rho ** 2) * rng.standard_normal(series)
    return x


def _has_change(x: np.ndarray) -> np.ndarray:
    """Whether each line (rows of log values) gets a change point on its own: binary segmentation finds one
    exactly when its first split does (p <= ALPHA and a shift >= MIN_SHIFT)."""
    k, p = stats.change_point_test(x)
    shift = np.array([np.expm1(abs(np.median(r[j:]) - np.median(r[:j]))) for r, j in zip(x, k)])
    return (p <= ALPHA) & (shift >= MIN_SHIFT)


def test_simulated_change_point_error_rates():
    """400 simulated lines of 20 runs, AR(1) rho 0.5, 3% spread. Flat: a change point in <= 5% (measured
    3.75%; binomial s.e. at 400 ~0.95 points, so 5% is 1.3 s.e. away; 2.0% in a separate 1000-line run); a
    single odd last run (-30%): <= 5% (measured 3.5%); a real 10% step after run 10: found in >= 90%
    (measured 98%, s.e. 0.7 points), at run 10 +- 1 in 99% of those. (A plain permutation, blocks of one
    run, gives 35% of these flat lines p <= 0.05.)"""
    rng = np.random.default_rng(1818)
    flat = _ar1(rng, 400, 20)
    assert _has_change(flat).mean() <= 0.05
    odd = flat.copy()
    odd[:, -1] += np.log(0.7)
    assert _has_change(odd).mean() <= 0.05
    step = _ar1(rng, 400, 20) + np.log(0.9) * (np.arange(20) >= 10)
    found = _has_change(step)
    assert found.mean() >= 0.90
    k, _ = stats.change_point_test(step)
    assert (abs(k[found] - 10) <= 1).mean() >= 0.8


def test_simulated_pages_bh_across_lines():
    """60 pages of 24 flat AR(1) lines: BH across each page keeps pages with any selected line to <= 5%
    (measured 0 of 60); on pages where one code change moves 6 of the 24 lines by 10%, BH selects most of those
    six (measured 91%) and hardly any of the others (1.5%)."""
    rng = np.random.default_rng(2026)
    pages = _ar1(rng, 60 * 24, 20).reshape(60, 24, 20)
    _, p = stats.change_point_test(pages)
    assert np.mean([stats.bh_select(row).any() for row in p]) <= 0.05
    pages[:, :6] += np.log(0.9) * (np.arange(20) >= 10)
    _, p = stats.change_point_test(pages)
    selected = np.array([stats.bh_select(row) for row in p])
    assert selected[:, :6].mean() >= 0.8 and selected[:, 6:].mean() <= 0.02


def test_planted_history(planted):
    root, specs = planted
    h = load_history(root)
    assert len(h.runs) == RUNS + 1 and set(h.runs["suite"]) == {"smoke"}
    assert h.records["run_id"].str.startswith("smoke/").sum() == RUNS * 8
    s = series_table(h.records).set_index(["trial_id", "hw_fingerprint"])
    for j in (3, 4):                               # BH across the page's lines: both found, blamed on the code
        stepped = s.loc[(specs[j].trial_id, "c28925c8e6e6")]
        assert stepped["_change_runs"] == [h.runs["run_id"].iloc[STEP_AT]]
        assert re.search(r"\(c0de10\+git:abc10\): -(19|20|21)%, code changed$", stepped["change_points"]), \
            stepped["change_points"]
    others = s.drop(index=[(specs[j].trial_id, "c28925c8e6e6") for j in (3, 4)])
    assert not others["_change_runs"].map(bool).any(), others["change_points"].dropna()   # odd runs are not
    assert s.loc[(specs[6].trial_id, "c28925c8e6e6"), "noisy_runs"] == 1
    assert (s.loc[(specs[0].trial_id, "0f1e2d3c4b5a"), "runs"], s.loc[(specs[0].trial_id, "c28925c8e6e6"), "runs"]) \
        == (1, RUNS)
    assert set(series_table(h.records)["trial_id"].iloc[:2]) == {specs[3].trial_id, specs[4].trial_id}  # first


def test_history_command_writes_pages(planted, tmp_path):
    root, specs = planted
    rc, out, err = run(["history", str(root), "--out", str(tmp_path / "h")])
    assert rc == 0 and err == "", err
    index = (tmp_path / "h" / "index.md").read_text()
    assert "smoke: 21 runs, 10 lines, 2 with change points: smoke.md" in index
    page = (tmp_path / "h" / "smoke.md").read_text()
    assert "plots/smoke.png" in page and "abc10): -2" in page and "block permutation" in page
    assert "Benjamini-Hochberg" in page and "code changed" in page
    assert (tmp_path / "h" / "plots" / "smoke.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (tmp_path / "h" / "smoke.html").read_text()
    table = pd.read_csv(tmp_path / "h" / "history.csv")
    assert len(table) == RUNS * 8 + 2 and {"run_start", "run_label", "img_per_s", "hw_fingerprint"} <= set(table)
    rc, _, _ = run(["history", str(root), "--suite", "smoke", "--out", str(tmp_path / "h2")])
    assert rc == 0 and (tmp_path / "h2" / "smoke.html").exists()


@pytest.mark.parametrize("argv, message", [
    (["history", "NOPE"], "no such results directory"),
    (["history", "EMPTY"], "no runs"),
    (["history", "ROOT", "--suite", "gpu-full"], "no runs of suite 'gpu-full' (suites: smoke)"),
    (["history", "ROOT", "--out", "AFILE"], "cannot write the history"),
    (["history"], "the following arguments are required"),
])
def test_bad_input_is_one_line(planted, tmp_path, argv, message):
    root, _ = planted
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    paths = {"NOPE": str(tmp_path / "nope"), "EMPTY": str(tmp_path / "empty"), "ROOT": str(root),
             "AFILE": str(tmp_path / "afile" / "sub")}
    rc, _, err = run([paths.get(a, a) for a in argv])
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("lstm-bench: error: ") and message in err, err


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()
