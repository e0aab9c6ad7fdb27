"""Corrupt trials.jsonl lines and unwritable report folders, through the store's own files and the CLI: lines that
are not records (a non-string trial_id, bytes that are not UTF-8, a torn tail) are counted and skipped by
results, report, compare, --resume and scripts/gap_table.py; a report or history that cannot be written ends in
one line; `run --report` whose report fails keeps the sweep's exit status. No Ray."""

import errno
import importlib.util
import json
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest

from harness import cli
from harness.errors import HarnessError
from harness.store import RunStore, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "results" / "baselines" / "smoke-cpu" / "20261129-042952-9503"
BAD_LINES = [b'{"trial_id": [1, 2], "status": "ok"}', b'{"trial_id": {"a": 1}, "status": "ok"}',
             b'{"trial_id": 7, "status": "ok"}', b'{"trial_id": null}', b'{"trial_id": ""}',
             b'{"trial_id": "x\xff\xfe", "status": "ok"}', b"[1, 2]"]
TORN = b'{"trial_id": "abc", "error": "caf\xc3'  # cut inside a two-byte UTF-8 character


def corrupt_run(tmp_path: Path, n: int = 3) -> Path:
    """The first n records of the smoke baseline, with every kind of bad line among them and a torn tail."""
    run = tmp_path / "smoke" / "corrupt"
    run.mkdir(parents=True)
    shutil.copy(BASELINE / "run.json", run / "run.json")
    good = (BASELINE / "trials.jsonl").read_bytes().splitlines()[:n]
    (run / "trials.jsonl").write_bytes(b"\n".join(good[:1] + BAD_LINES + good[1:]) + b"\n" + TORN)
    return run


def test_lines_that_are_not_records_are_counted_and_skipped(tmp_path):
    records, bad = read_jsonl(corrupt_run(tmp_path) / "trials.jsonl")
    assert len(records) == 3 and bad == len(BAD_LINES) + 1
    assert all(isinstance(r["trial_id"], str) for r in records)


def test_results_report_and_compare_skip_bad_lines(tmp_path, capsys, monkeypatch):
    run = corrupt_run(tmp_path)
    assert cli.main(["results", str(run)]) == 0
    assert cli.main(["compare", str(BASELINE), str(run)]) == 0
    monkeypatch.setattr("harness.report.build._write_plots", lambda *a: {})  # the plots are not what is tested
    assert cli.main(["report", str(run), "--out", str(tmp_path / "rep")]) == 0
    assert "internal error" not in capsys.readouterr().err


def test_resume_after_a_tail_torn_inside_a_utf8_character(tmp_path):
    run = corrupt_run(tmp_path)
    store = RunStore(run).open()  # was a UnicodeDecodeError: the text-mode read of the last byte
    store.append({"trial_id": "new", "status": "ok"})
    store.close()
    records, bad = read_jsonl(run / "trials.jsonl")
    assert [r["trial_id"] for r in records][-1] == "new" and len(records) == 4 and bad == len(BAD_LINES) + 1


def test_gap_table_skips_torn_lines_and_takes_the_latest_record(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gap_table", ROOT / "scripts" / "gap_table.py")
    gap_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gap_table)
    rows = [{"trial_id": f"{m}-{i}", "hidden_size": 64, "mode": m, "impl": i, "status": "ok", "noisy": False,
             "img_per_s": v, "compile_s": 2.0 if i == "compiled" else None}
            for m in ("train", "infer") for i, v in (("cudnn", 300), ("naive", 100), ("lstmcell", 90), ("compiled", 200))]
    rows.append({**rows[3], "img_per_s": 150})  # a later record of the same trial wins
    rows.append({**rows[0], "status": "failed", "img_per_s": None})  # a later failure never replaces an ok record
    (tmp_path / "trials.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + TORN)
    gap_table.main(tmp_path)
    out, err = capsys.readouterr()
    print(out)
    assert "| 64 | train | 300 | 100 | 90 | 150 | 0.25 | 2.0 |" in out and "skipped 1" in err


@pytest.mark.parametrize("command", ["report", "history"])
def test_a_full_report_folder_ends_in_one_line(tmp_path, capsys, monkeypatch, command):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.setattr("harness.report.build._write_plots", lambda *a: {})
    monkeypatch.setattr("harness.report.build.plot_history", lambda *a: None)
    run = corrupt_run(tmp_path)
    target = str(run) if command == "report" else str(tmp_path)
    code = cli.main([command, target, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_BAD_INPUT and len(err) == 1, err
    assert f"cannot write the {command}" in err[0] and "No space left on device" in err[0]


def test_run_report_that_cannot_be_written_is_a_warning_not_a_failed_sweep(tmp_path, capsys, monkeypatch):
    from harness import cluster
    run = corrupt_run(tmp_path)
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # cmd_run's handlers: not this test process's
    monkeypatch.setattr(cluster, "run_suite", lambda *a, **k: cluster.RunOutcome(run, planned=3, ok=3, failed=0,
                                                                               skipped=0))

    def full(*a, **k):
        raise HarnessError(f"cannot write the report to {run / 'report'}: No space left on device")
    monkeypatch.setattr(cli, "write_report", full)
    code = cli.main(["run", str(ROOT / "suites" / "smoke.yaml"), "--out", str(tmp_path), "--quiet", "--report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0 and len(err) == 1 and "warning: no report written" in err[0] and "No space left" in err[0]
