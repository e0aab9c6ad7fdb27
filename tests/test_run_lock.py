"""One driver per run directory (harness/runlock.py): a second driver on a live run is refused in one line, of
drivers started at once exactly one gets the run, and a driver's end (even SIGKILL) frees it. Plain processes,
no Ray."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cli
from harness.errors import HarnessError
from harness.runlock import lock_run_dir

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from harness.errors import HarnessError
from harness.runlock import lock_run_dir
go = Path(sys.argv[2])
while not go.exists():  # all start together
    time.sleep(0.001)
try:
    lock = lock_run_dir(Path(sys.argv[1]))
except HarnessError as exc:
    print("refused", exc, flush=True)
    sys.exit(0)
print("got", flush=True)
sys.stdin.read() if sys.argv[3] == "stdin" else time.sleep(float(sys.argv[3]))
"""


def holder(run_dir: Path, go: Path, hold: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(go), hold], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PYTHONPATH": str(ROOT)})


def test_a_second_driver_on_a_live_run_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "r" / "smoke" / "20260101-000000-abcd"
    run_dir.mkdir(parents=True)
    (tmp_path / "go").touch()
    first = holder(run_dir, tmp_path / "go", "stdin")
    assert first.stdout.readline().strip() == "got"
    from harness import cluster
    monkeypatch.setattr("signal.signal", lambda *a: None)  # cmd_run's handlers: not this test process's
    monkeypatch.setattr(cluster, "connect", lambda *a, **k: pytest.fail("a refused driver must not reach Ray"))
    try:
        code = cli.main(["run", str(ROOT / "suites" / "smoke.yaml"), "--resume", run_dir.name,
                         "--out", str(tmp_path / "r"), "--no-progress"])
        err = capsys.readouterr().err.strip().splitlines()
        print(err)
        assert code == cli.EXIT_BAD_INPUT and len(err) == 1
        assert "in use by another driver" in err[0] and f"pid {first.pid}" in err[0]
    finally:
        first.communicate("")  # the first driver ends
    lock_run_dir(run_dir).release()  # and its run can be resumed at once


def test_drivers_started_at_once_exactly_one_runs(tmp_path):
    run_dir, go = tmp_path / "run", tmp_path / "go"
    procs = [holder(run_dir, go, "1.0") for _ in range(3)]
    time.sleep(0.3)  # let them import and spin
    go.touch()
    outs = [p.communicate(timeout=20)[0].strip() for p in procs]
    print(outs)
    assert sorted(o.split()[0] for o in outs) == ["got", "refused", "refused"]


def test_a_killed_driver_frees_its_run(tmp_path):
    (tmp_path / "go").touch()
    p = holder(tmp_path / "run", tmp_path / "go", "stdin")
    assert p.stdout.readline().strip() == "got"
    with pytest.raises(HarnessError, match="in use by another driver"):
        lock_run_dir(tmp_path / "run")
    p.kill()
    p.wait()
    lock_run_dir(tmp_path / "run").release()
