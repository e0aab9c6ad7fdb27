"""Add the TF32 switches to CUDA records made before precision was an axis (they ran with PyTorch's defaults:
cuDNN allowed TF32, matmul not), leaving their dtype as recorded:

    .venv/bin/python scripts/annotate_legacy_precision.py results/gpu-h200/gpu-check/20261127-120000-54f4 ...

Rewrites each run's trials.jsonl (atomically) and trials.parquet; records that already carry the fields and CPU
records are left alone. Prints how many records each run had annotated.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.schema import TRIALS  # noqa: E402
from harness.store import RunStore, atomic_write, jsonable, read_jsonl  # noqa: E402

LEGACY = {"tf32_cudnn": True, "tf32_matmul": False}


def annotate(run_dir: Path) -> int:
    records, torn = read_jsonl(run_dir / TRIALS)
    if torn:
        raise SystemExit(f"{run_dir / TRIALS}: {torn} unreadable line(s); not rewriting it")
    n = 0
    for r in records:
        if str(r.get("device", "")).startswith("cuda") and "tf32_cudnn" not in r:
            r.update(LEGACY)
            n += 1
    atomic_write(run_dir / TRIALS, "".join(json.dumps(jsonable(r), separators=(",", ":")) + "\n" for r in records))
    RunStore(run_dir).consolidate()
    return n


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}: {annotate(Path(arg))} CUDA record(s) annotated with {LEGACY}")
