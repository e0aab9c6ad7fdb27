"""Harness overhead on one trial: `lstm-bench trial` against a bare, hand-written PyTorch loop, side by side.

    .venv/bin/python scripts/bench_vs_bare.py [--rounds 3] [--hidden-size 128] [--batch-size 256] [--device cuda]

The bare loop is what shared/anchors.md measured: nn.LSTM(96, H, 2) + Linear on synthetic row-sequence input,
a full Adam step per iteration, warm-up excluded, median of timed iterations (CUDA events on GPU). Both run
in fresh processes of their own (the harness as the CLI, as a user runs it), and their order alternates from
round to round, so drift in the machine's speed (seen here: 10-20% between consecutive 10-second windows on
this VM) hits both alike.
Exit status 1 if the harness's median is not within 10% of the bare loop's.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn


def bare_loop(hidden: int, batch: int, device: str, seconds: float = 8.0) -> float:
    torch.manual_seed(0)
    lstm, head = nn.LSTM(96, hidden, 2, batch_first=True).to(device), nn.Linear(hidden, 10).to(device)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    x, y = torch.randn(batch, 32, 96, device=device), torch.randint(0, 10, (batch,), device=device)

    def step():
        out, _ = lstm(x)
        loss = nn.functional.cross_entropy(head(out[:, -1]), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up
        step()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 10:
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
        else:
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def bare_subprocess(hidden: int, batch: int, device: str, seconds: float) -> float:
    code = (f"import sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); import bench_vs_bare as b; "
            f"print(b.bare_loop({hidden}, {batch}, {device!r}, seconds={seconds}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def harness_trial(hidden: int, batch: int, device: str) -> dict:
    cmd = [sys.executable, "-m", "harness.cli", "trial", "--seq", "row", "--hidden-size", str(hidden),
           "--num-layers", "2", "--impl", "cudnn", "--mode", "train", "--batch-size", str(batch),
           "--device", device, "--data", "synthetic", "--time-budget-s", "15" if device == "cpu" else "6", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = p.parse_args()
    bare, harness = [], []
    seconds = 10.0 if a.device == "cpu" else 3.0
    for r in range(a.rounds):
        if r % 2 == 0:
            bare.append(bare_subprocess(a.hidden_size, a.batch_size, a.device, seconds))
            rec = harness_trial(a.hidden_size, a.batch_size, a.device)
        else:
            rec = harness_trial(a.hidden_size, a.batch_size, a.device)
            bare.append(bare_subprocess(a.hidden_size, a.batch_size, a.device, seconds))
        harness.append(rec["img_per_s"])
        print(f"round {r + 1}: bare {bare[-1]:8,.0f} img/s   harness {harness[-1]:8,.0f} img/s "
              f"(IQR {rec['img_per_s_iqr']:,.0f}, noisy={rec['noisy']}, backend={rec['backend']})", flush=True)
    b, h = statistics.median(bare), statistics.median(harness)
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"row, hidden {a.hidden_size} x 2, cudnn impl, train, batch {a.batch_size}, {where}")
    print(f"median bare loop {b:,.0f} img/s; median harness {h:,.0f} img/s; harness/bare = {h / b:.3f}")
    sys.exit(0 if 0.9 <= h / b <= 1.1 else 1)


if __name__ == "__main__":
    main()
