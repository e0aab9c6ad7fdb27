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
from harness.report import change_points, load_history, series_table

RUNS = 10
STEP_AT = 6             # the stepped spec is 25% slower from the 7th run on


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """results/smoke/<run_id>/ x 10 runs of 8 smoke specs, run-to-run scatter ~1%; spec 3 steps down at run 6;
    spec 5 has one odd run (-15%, run 4); the last run is on a second machine (another fingerprint) too."""
    root = tmp_path_factory.mktemp("hist") / "results"
    specs = smoke_specs()[:8]
    rng = np.random.default_rng(7)
    for i in range(RUNS):
        recs = []
        for j, s in enumerate(specs):
            slower = float(np.exp(rng.normal(0, 0.01)))
            slower *= 1.25 if (j == 3 and i >= STEP_AT) else 1.15 if (j == 5 and i == 4) else 1.0
            recs.append(record(s, slower=slower, seed=i, n=60, code_version=f"c0de{i:02d}+git:abc{i}",
                               noisy=(j == 6 and i == 2)))
        write_run(root / "smoke" / f"2026112{i % 10}-0{i}0000-ab{i:02d}", recs,
                  started=f"2026-11-{20 + i}T03:00:00+00:00")
    other = [record(s, seed=99, n=60, hw_fingerprint="0f1e2d3c4b5a", code_version="c0de09+git:abc9")
             for s in specs[:2]]
    write_run(root / "gpu-box" / "smoke" / "20261130-090000-ffff", other, started="2026-11-30T09:00:00+00:00")
    return root, specs


def test_change_points_method():
    flat = 1000 * np.exp(np.random.default_rng(1).normal(0, 0.02, 12))
    assert change_points(flat) == []
    step = np.r_[flat[:6], flat[6:] * 0.8]
    assert change_points(step) == [6]
    two = np.r_[flat[:4], flat[4:8] * 0.8, flat[8:] * 0.8 * 1.15]
    assert change_points(two) == [4, 8]
    odd = flat.copy()
    odd[5] *= 0.7                                  # one odd run is not a change
    assert change_points(odd) == []
    assert change_points(np.r_[flat[:6], flat[6:] * 0.97]) == []          # under the 5% minimum shift


def test_planted_history(planted):
    root, specs = planted
    h = load_history(root)
    assert len(h.runs) == RUNS + 1 and set(h.runs["suite"]) == {"smoke"}
    assert h.records["run_id"].str.startswith("smoke/").sum() == RUNS * 8
    s = series_table(h.records).set_index(["trial_id", "hw_fingerprint"])
    stepped = s.loc[(specs[3].trial_id, "c28925c8e6e6")]
    assert stepped["_change_runs"] == [h.runs["run_id"].iloc[STEP_AT]]
    assert re.search(r"\(c0de06\+git:abc6\): -(19|20|21)%$", stepped["change_points"]), stepped["change_points"]
    others = s.drop(index=(specs[3].trial_id, "c28925c8e6e6"))
    assert not others["_change_runs"].map(bool).any(), others["change_points"].dropna()
    assert s.loc[(specs[6].trial_id, "c28925c8e6e6"), "noisy_runs"] == 1
    assert (s.loc[(specs[0].trial_id, "0f1e2d3c4b5a"), "runs"], s.loc[(specs[0].trial_id, "c28925c8e6e6"), "runs"]) \
        == (1, RUNS)
    assert series_table(h.records)["trial_id"].iloc[0] == specs[3].trial_id       # changed lines first


def test_history_command_writes_pages(planted, tmp_path):
    root, specs = planted
    rc, out, err = run(["history", str(root), "--out", str(tmp_path / "h")])
    assert rc == 0 and err == "", err
    index = (tmp_path / "h" / "index.md").read_text()
    assert "smoke: 11 runs, 10 lines, 1 with change points: smoke.md" in index
    page = (tmp_path / "h" / "smoke.md").read_text()
    assert "plots/smoke.png" in page and "abc6): -2" in page and "permutation test" in page
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
