"""Shared fixtures: a small dataset in the real CIFAR-10 python format, written by the tests themselves."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Ray on Linux swaps a node IP of 127.0.0.1 for the interface address unless this is set before it starts;
# with it, embedded and test clusters stay on loopback (tests send traffic to 127.0.0.1 only).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def learnable_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is easy to learn: class k has a bright band at rows 3k..3k+2, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 80, (n, 3, 32, 32), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, :, 3 * k:3 * k + 3, :] = 230
    return images, labels.astype(np.int64)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A few hundred learnable images in the official format (5 train batches of 64, a test batch of 100)."""
    from cifar_files import write_cifar10_folder
    root = tmp_path_factory.mktemp("cifar")
    tx, ty = learnable_images(320, seed=1)
    vx, vy = learnable_images(100, seed=2)
    write_cifar10_folder(root, tx, ty, vx, vy)
    return root


def sweep_executions(records: list[dict]):
    """(latest record per trial, ok executions per trial, executions per host). An execution is one run of a
    trial (trial_id, started_at, worker, node); the driver may append a record of the same execution again
    (re-recorded noisy when a node's end-of-run ceiling probe drifted), which is not a second run."""
    from collections import Counter
    latest = {r["trial_id"]: r for r in records}
    runs = {(r["trial_id"], r.get("started_at"), r.get("worker_pid"), r.get("node_ip")): r for r in records}
    ok = Counter(k[0] for k, r in runs.items() if r["status"] == "ok")
    hosts = Counter(k[3] for k in runs)
    return latest, ok, hosts


def sweep_counts(run_dir: Path, planned: int) -> dict:
    """planned / ok / failed / lost / duplicates / torn of a run directory, printed for the test log.
    ok: trials with an ok record; failed: trials whose latest record is not ok; lost: planned trials with no
    record at all; duplicates: extra ok executions of one trial (not re-recordings of one execution); torn:
    unreadable lines in trials.jsonl."""
    from harness.store import read_jsonl
    records, torn = read_jsonl(run_dir / "trials.jsonl")
    latest, ok, _ = sweep_executions(records)
    c = {"planned": planned, "ok": len(ok), "failed": sum(r["status"] != "ok" for r in latest.values()),
         "lost": planned - len(latest), "duplicates": sum(n - 1 for n in ok.values()), "torn": torn}
    print(f"\n{run_dir.name}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    return c


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs tests in parallel (pytest-xdist, --dist loadgroup) and keeps each `xdist_group` on one
    worker: the netns tests share fixed namespace names and addresses. xdist does it by renaming the grouped
    items, which pytest 9.2 silently stopped allowing (2026-12-07: the netns tests then ran on two workers at
    once and all five failed). Refuse to run rather than let them collide."""
    if not getattr(config.option, "loadgroup", False):
        return
    broken = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if broken:
        raise pytest.UsageError(f"pytest-xdist could not group {broken[0]} (and {len(broken) - 1} more): this "
                                f"pytest {pytest.__version__} breaks --dist loadgroup; install the pinned one "
                                "(pip install -e '.[test]')")
    # Longest first (the grouped tests, then those marked slow, then the rest), as a scheduler that must
    # finish a batch soonest would: xdist hands out work in collection order (popitem(last=False) in its
    # loadscope scheduler), and the netns group runs its five tests one after another on one worker (322 s in
    # all in the 8 min 21 s `make test` at 6633780). Collected where their files fall, after most others, the
    # long ones could start last and end the run alone.
    items.sort(key=lambda i: (not i.get_closest_marker("xdist_group"), not i.get_closest_marker("slow")))
