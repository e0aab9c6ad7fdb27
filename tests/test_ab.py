"""`lstm-bench ab`: the plan of a session (flags, candidates, cells, rounds), reruns that keep the order balance,
exit codes, bad input in one line with nothing half written, code trees, and small real sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import ab, stats, trees
from harness.errors import HarnessError
from harness.pairs import contamination, trial_argv
from harness.spec import TrialSpec, Variant
from harness.suites import load_suite

ROOT = Path(__file__).resolve().parents[1]
OLD_REF = "7836358"  # main before the pair plan (sample_plan): its trial CLI runs the standard plan


def _spec(**kw):
    return TrialSpec(variant=Variant(seq="row", hidden_size=16, num_layers=1, batch_size=8, impl=kw.pop("impl", "cudnn")),
                     **{"mode": "infer", "threads": 1, **kw})


def test_trial_argv_names_only_what_differs_from_the_defaults():
    argv = trial_argv(_spec(time_budget_s=1.0, sample_plan="pair"))
    assert argv[0] == "trial" and argv[-1] == "--json"
    assert "--hidden-size" in argv and argv[argv.index("--hidden-size") + 1] == "16"
    assert "--sample-plan" in argv and "--dtype" not in argv and "--lr" not in argv  # defaults stay out
    assert "--seq" not in argv  # row is the default: a ref that predates a field still parses the command


def test_candidate_spec_changes_one_field_and_refuses_the_rest():
    base = _spec()
    assert ab.candidate_spec(base, {"impl": "naive"}).variant.impl == "naive"
    for bad in ({"nonsense": 1}, {"impl": ["naive", "cudnn"]}, {"repeat": 2}):
        with pytest.raises(HarnessError):
            ab.candidate_spec(base, bad)
    with pytest.raises(HarnessError, match="impl"):
        ab.candidate_spec(base, {"impl": "warp"})


def test_plan_cells_refuses_what_ab_cannot_pair(tmp_path):
    suite = load_suite(ROOT / "suites" / "gate.yaml")
    cells = ab.plan_cells(suite, {"dtype": "bfloat16"}, pair_plan=True)
    assert len(cells) == 4 and all(c.baseline.sample_plan == "pair" and c.candidate.variant.dtype == "bfloat16"
                                   for c in cells)
    assert all(c.resources.get("timing_slot") == 1 for c in cells)  # exclusive: one pair per node at a time
    acc = tmp_path / "acc.yaml"
    acc.write_text(yaml.safe_dump({"name": "acc", "modes": ["accuracy"], "devices": ["cpu"], "data": "cifar10"}))
    with pytest.raises(HarnessError, match="train and infer only"):
        ab.plan_cells(load_suite(acc), {}, True)


def test_interleaved_jobs_run_round_by_round_in_the_planned_order():
    import random

    import numpy as np
    suite = load_suite(ROOT / "suites" / "gate.yaml")
    cells = ab.plan_cells(suite, {}, True)
    orders = {c.name: stats.balanced_orders(8, np.random.default_rng(1)) for c in cells}
    jobs = ab.interleaved_jobs(cells, {c.name: 4 for c in cells}, {}, orders, lambda n: {}, random.Random(0))
    assert len(jobs) == 16
    assert [j["index"] for j in jobs] == [r for r in range(4) for _ in cells]  # round r before round r + 1
    for c in cells:
        mine = [j for j in jobs if j["cell"] == c.name]
        assert [j["order"] for j in mine] == orders[c.name][:4]
        assert sum(j["order"] == "AB" for j in mine) == 2


def test_exit_codes():
    row = {"verdict": "unchanged"}
    assert ab.exit_code([row], "regression") == 0
    assert ab.exit_code([row, {"verdict": "regression"}], "regression") == 1
    assert ab.exit_code([row, {"verdict": "improvement"}], "regression") == 0
    assert ab.exit_code([row, {"verdict": "improvement"}], "any") == 1
    assert ab.exit_code([row, {"verdict": "inconclusive"}], "regression") == 0
    assert ab.exit_code([row, {"verdict": "inconclusive"}], "any") == 2


def test_contamination_names_bias_not_spread():
    clean = {"status": "ok", "external_cpu_cores": 0.1, "rel_iqr": 0.3}
    assert contamination(clean, free_cores=1.0) == []  # a wide spread is variance, not a reason to rerun
    assert contamination({**clean, "external_cpu_cores": 1.9}, free_cores=1.0)
    assert contamination({**clean, "cgroup_throttled_ms": 50.0, "timed_start": 0.0, "timed_end": 1.0}, 1.0)
    assert contamination({"status": "failed", "error": "boom"}, 1.0) == ["failed: boom"]


def test_archive_key_is_the_code_version_hash_and_unpack_checks_it(tmp_path, monkeypatch):
    from harness.env import tree_hash
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tree = trees.from_ref("HEAD")
    folder = trees.unpack(tree.archive, tree.key)
    assert tree_hash(folder / "harness") == tree.key and (folder / "harness" / "cli.py").is_file()
    assert oct(os.stat(tmp_path / "lstm-bench" / "trees").st_mode & 0o777) == "0o700"
    with pytest.raises(HarnessError, match="does not match"):
        trees.unpack(tree.archive, "0" * 12)
    with pytest.raises(HarnessError, match="unknown git ref"):
        trees.resolve("no-such-ref-anywhere")


# ---- sessions with a stand-in pair function (the real one starts processes) ---------------------------------

def fake_pair(job, baseline_archive, candidate_archive):
    """10% slower candidate on cell 0, same elsewhere; the first attempt of every third pair is contaminated."""
    import random
    rng = random.Random(hash((job["cell"], job["index"], job["attempt"])))
    drift = rng.uniform(0.7, 1.3)  # the machine's speed in this window: hits both sides
    slow = 0.90 if job["cell"].startswith("row/h128x1/cudnn/b64/float32 train") else 1.0
    contaminated = job["index"] % 3 == 0 and job["attempt"] == 0
    fp = job.get("fingerprints", ("hw1", "hw1"))
    side = lambda ips, f, bad: {"status": "ok", "img_per_s": ips, "hw_fingerprint": f,  # noqa: E731
                                "contamination": ["other processes used 1.9 cores; 1 were free"] if bad else []}
    return {**{k: job[k] for k in ("cell", "index", "order", "attempt")}, "node_id": "n",
            "baseline": side(1000 * drift * rng.gauss(1, 0.01), fp[0], contaminated),
            "candidate": side(1000 * drift * slow * rng.gauss(1, 0.01), fp[1], False)}


def fake_pair_two_machines(job, a, b):
    return fake_pair({**job, "fingerprints": ("hw1", "hw2")}, a, b)


@pytest.fixture(scope="module")
def local_ray():
    import ray
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from harness.nodes import connect
    connect(None, num_cpus=2)
    yield
    ray.shutdown()


def _cells():
    return ab.plan_cells(load_suite(ROOT / "suites" / "gate.yaml"), {}, True)


def _head():
    return trees.from_ref("HEAD")


def test_session_reruns_contaminated_pairs_and_keeps_the_balance(local_ray, tmp_path):
    head = _head()
    settings = ab.Settings(pairs=6, step=3, max_pairs=12, seed=5)
    s = ab.run_session(_cells(), {"baseline": head, "candidate": head}, settings, tmp_path, pair_fn=fake_pair)
    planned = stats.balanced_orders(12, __import__("numpy").random.default_rng(0))  # shape only
    assert len(planned) == 12
    for name, pairs in s.pairs.items():
        assert [p["index"] for p in sorted(pairs, key=lambda p: p["index"])] == list(range(len(pairs)))
        assert s.reruns[name] == sum(1 for p in pairs if p["index"] % 3 == 0)  # each contaminated pair rerun once
        ab_n = sum(p["order"] == "AB" for p in pairs)
        assert abs(2 * ab_n - len(pairs)) <= 1 and all(p["attempt"] == (p["index"] % 3 == 0) for p in pairs)
    v = s.verdicts
    assert v["row/h128x1/cudnn/b64/float32 train"].verdict == "regression"
    assert 0.88 < v["row/h128x1/cudnn/b64/float32 train"].ratio < 0.92
    assert all(x.verdict in ("unchanged", "inconclusive") for k, x in v.items() if "cudnn/b64/float32 train" not in k)
    lines = (s.run_dir / "pairs.jsonl").read_text().splitlines()
    assert sum(not json.loads(x)["accepted"] for x in lines) == sum(s.reruns.values())  # rejected pairs kept too
    meta = json.loads((s.run_dir / "run.json").read_text())
    assert meta["status"] == "finished" and meta["hw_fingerprints"] == ["hw1"]
    rows = ab.verdict_rows(s)
    from harness.report.ab import write_report
    md = write_report(s.run_dir, rows, meta).read_text()
    assert md.startswith("# A/B: ") and md.index("| cell") < md.index("## Session")
    assert (s.run_dir / "forest.png").stat().st_size > 1000


def test_a_session_with_reruns_0_reports_contaminated_pairs_lost_and_runs_none_again(local_ray, tmp_path):
    """The suite key `reruns: 0` (Settings.reruns): a contaminated pair is given up at once, counted lost."""
    head = _head()
    s = ab.run_session(_cells()[:2], {"baseline": head, "candidate": head},
                       ab.Settings(pairs=4, max_pairs=4, reruns=0), tmp_path, pair_fn=fake_pair)
    assert s.reruns == {} and s.lost == {c: 2 for c in s.pairs}  # pairs 0 and 3 of each cell: contaminated
    assert all(len(p) == 2 for p in s.pairs.values())


def test_pairs_on_different_hardware_are_refused_and_the_session_recorded_aborted(local_ray, tmp_path):
    head = _head()
    with pytest.raises(HarnessError, match="different hardware"):
        ab.run_session(_cells()[:1], {"baseline": head, "candidate": head}, ab.Settings(pairs=2, max_pairs=2),
                       tmp_path, pair_fn=fake_pair_two_machines)
    (run_dir,) = (tmp_path / "ab").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "aborted" and "different hardware" in meta["error"]


# ---- the command line ------------------------------------------------------------------------------------

def _cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args,message", [
    (["--baseline", "no-such-ref-anywhere"], "unknown git ref"),
    (["--baseline", "HEAD", "--candidate", "HEAD"], "same harness"),
    (["--candidate-set", "impl=cudnn", "--set", "impl=[cudnn]", "--baseline", "HEAD"], "changes no cell"),
    (["--candidate-set", "nonsense=1", "--baseline", "HEAD"], "nonsense"),
    (["--baseline", "HEAD", "--pairs", "1"], "--pairs"),
    ([], "give --baseline"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = _cli("ab", "suites/gate.yaml", *args, "--out", str(tmp_path / "out"))
    assert out.returncode == 2 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()


def test_a_dirty_working_tree_needs_allow_dirty(monkeypatch, capsys, tmp_path):
    from harness.cli import main
    monkeypatch.setattr(trees, "dirty", lambda: ["harness/cli.py"])
    assert main(["ab", "suites/gate.yaml", "--baseline", "HEAD", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-dirty" in err[0] and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_small_real_config_ab(tmp_path):
    """One cell, two pairs, every side a real fresh `lstm-bench trial` process of the shipped tree (several
    cells interleave in the stand-in sessions above: here the processes are the point)."""
    # reruns=0: beside other tests (make test runs them in parallel) every pair is contaminated; the reruns
    # have their own test above
    out = _cli("ab", "suites/gate.yaml", "--set", "impl=[cudnn]", "--set", "hidden_size=16", "--set", "reruns=0",
               "--set", "modes=[infer]", "--candidate-set", "hidden_size=32", "--pairs", "2", "--max-pairs", "2", "--out", str(tmp_path),
               "--num-cpus", "2", "--allow-dirty", env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = (tmp_path / "ab").iterdir()
    pairs = [json.loads(x) for x in (run_dir / "pairs.jsonl").read_text().splitlines()]
    assert {p["cell"] for p in pairs} == {"row/h16x1/cudnn/b64/float32 infer"}
    for p in pairs:
        assert p["baseline"]["hidden_size"] == 16 and p["candidate"]["hidden_size"] == 32
        for side in ("baseline", "candidate"):
            assert p[side]["harness_file"].startswith(str(tmp_path / "cache")), p[side]["harness_file"]
            assert p[side]["sample_plan"] == "pair" and p[side]["timed_blocks"] == 10
    assert "| cell" in (run_dir / "ab.md").read_text()


@pytest.mark.slow
def test_a_small_real_code_ab_against_an_older_ref(tmp_path):
    """The baseline is a ref that predates the pair plan: both sides run the standard plan, each its own tree."""
    if subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD_REF}^{{commit}}"]).returncode != 0:
        pytest.skip(f"{OLD_REF} is not in this clone (shallow?)")
    out = _cli("ab", "suites/gate.yaml", "--set", "impl=[cudnn]", "--set", "modes=[infer]", "--set", "reruns=0",
               "--set", "hidden_size=16", "--baseline", OLD_REF, "--candidate", "HEAD", "--pairs", "2", "--max-pairs", "2",
               "--out", str(tmp_path), "--num-cpus", "2", env={"XDG_CACHE_HOME": str(tmp_path / "cache")},
               timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    (run_dir,) = (tmp_path / "ab").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["trees"]["baseline"]["tree"] != meta["trees"]["candidate"]["tree"]
    for p in map(json.loads, (run_dir / "pairs.jsonl").read_text().splitlines()):
        for side in ("baseline", "candidate"):
            tree = meta["trees"][side]["tree"]
            assert p[side]["harness_file"].startswith(str(tmp_path / "cache" / "lstm-bench" / "trees" / tree))
            assert p[side]["code_version"].startswith(tree)  # the record says which code ran
