"""Harness overhead on one trial: `lstm-bench trial`'s model-only throughput (`model_img_per_s`: the training
step on one fixed batch already on the device) against a bare, hand-written PyTorch loop doing the same, at the
same precision, paired in time as `lstm-bench ab` pairs (issue 18).

    .venv/bin/python scripts/bench_vs_bare.py [--rounds 8] [--impl cudnn|naive] [--num-layers 2] \
        [--hidden-size 128] [--batch-size 256] [--device cuda] [--dtype float32|tf32|bfloat16] \
        [--bare-input sequences|images] [--seed 0]

The bare loop is what shared/anchors.md measured: nn.LSTM(96, H, L) + Linear (`--impl naive`: the gate equations
written out by hand in a Python loop over the 32 rows, BareNaiveLSTM, against the harness's `naive` impl) on a
fixed synthetic row-sequence batch, a full Adam step per iteration, warm-up excluded, each iteration timed (CUDA events on GPU), with
the TF32 switches set as the harness sets them for the dtype (float32: both off) and bf16 autocast for
bfloat16. `--bare-input images` feeds it a (B, 3, 32, 32) image batch and turns it into rows inside the step,
as the harness's model does (permute + reshape: a copy), so the two runs of the script separate that copy from
the rest of the gap. Each round runs the bare loop and the harness (the CLI, as a user runs it) each in a fresh
process, back to back, in an order balanced and shuffled over the rounds (stats.balanced_orders: as many
bare-first as harness-first), so drift in the machine's speed (10-20% between 10-second windows on this VM) hits
both alike. Reported: the Hodges-Lehmann ratio harness/bare over the rounds' log-ratios with its exact
signed-rank interval (harness/stats.py; >= 6 rounds for a 95% one), and the outcome against the target
0.97-1.03: "unchanged" when the interval lies inside it (exit 0), else exit 1.

Which statistic of the bare loop. The verdict pairs the harness with the bare loop's throughput over its whole
timed window (images / seconds), the quantity model_img_per_s estimates (the median of blocks of many steps, so
slow steps count). shared/anchors.md's figures are the median of single iterations; that statistic skips the
slow tail and, where step times are skewed (naive b64 on this VM), reads several % higher; each round prints
both, and results/bench-vs-bare-cpu.txt has the measured difference. The ratio against the median-step figure
is printed too, as the anchors' statistic, to show that difference, not to judge the harness by it.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn


class BareNaiveLSTM(nn.Module):
    """The gate equations written out by hand, one Python iteration per time step, the four gates in one
    matmul of [h, x_t] per step: what a user writes for a "naive" LSTM (independent of harness/variants.py).
    Each weight is stored (4H, H + I), as nn.Linear and nn.LSTM (and the harness) store theirs, and used
    transposed. Stored (H + I, 4H) instead, at 982018a, the harness's naive impl came out 2.9% faster than this
    loop, [0.7%, 5.4%] over 30 rounds (results/bench-vs-bare-cpu.txt)."""

    def __init__(self, inputs: int, hidden: int, layers: int):
        super().__init__()
        k = hidden ** -0.5
        self.hidden = hidden
        self.w = nn.ParameterList(nn.Parameter(torch.empty(4 * hidden, hidden + (inputs if n == 0 else hidden))
                                               .uniform_(-k, k)) for n in range(layers))
        self.b = nn.ParameterList(nn.Parameter(torch.empty(4 * hidden).uniform_(-k, k)) for _ in range(layers))

    def forward(self, x):
        for w, b in zip(self.w, self.b):
            h = c = x.new_zeros(x.shape[0], self.hidden)
            outs = []
            for t in range(x.shape[1]):
                i, f, g, o = torch.addmm(b, torch.cat([h, x[:, t]], dim=1), w.t()).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            x = torch.stack(outs, dim=1)
        return x, h  # the outputs and the last layer's final hidden state


def bare_loop(hidden: int, batch: int, device: str, seconds: float = 8.0, dtype: str = "float32",
              images: bool = False, impl: str = "cudnn", layers: int = 2) -> tuple[float, float]:
    """(throughput over the timed window, batch / median iteration time): img/s, see the module doc."""
    import contextlib
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    amp = torch.autocast(device, torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
    core = nn.LSTM(96, hidden, layers, batch_first=True) if impl == "cudnn" else BareNaiveLSTM(96, hidden, layers)
    lstm, head = core.to(device), nn.Linear(hidden, 10).to(device)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.randn(batch, 3, 32, 32, device=device) if images else torch.randn(batch, 32, 96, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        with amp:
            seq = x.permute(0, 2, 1, 3).reshape(batch, 32, 96) if images else x  # rows, as the harness's model
            out, state = lstm(seq)
            # The head reads the final hidden state, as the harness's model does (h_n). For the Python loop that
            # is its last h: the backward then skips the stacked outputs, as the harness's does.
            loss = nn.functional.cross_entropy(head(out[:, -1] if impl == "cudnn" else state), y)
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
    return batch * len(times) / sum(times), batch / statistics.median(times)


def bare_subprocess(hidden: int, batch: int, device: str, seconds: float, dtype: str, images: bool, impl: str,
                    layers: int) -> tuple[float, float]:
    code = (f"import sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); import bench_vs_bare as b; "
            f"print(b.bare_loop({hidden}, {batch}, {device!r}, seconds={seconds}, dtype={dtype!r}, images={images}, "
            f"impl={impl!r}, layers={layers}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    window, median_step = out.stdout.strip().splitlines()[-1].strip("()").split(",")
    return float(window), float(median_step)


def harness_trial(hidden: int, batch: int, device: str, dtype: str, impl: str, layers: int) -> dict:
    cmd = [sys.executable, "-m", "harness.cli", "trial", "--seq", "row", "--hidden-size", str(hidden),
           "--num-layers", str(layers), "--impl", impl, "--mode", "train", "--batch-size", str(batch), "--dtype", dtype,
           "--device", device, "--data", "synthetic", "--time-budget-s", "15" if device == "cpu" else "6", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    from harness import stats
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--impl", default="cudnn", choices=["cudnn", "naive"])
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=["float32", "tf32", "bfloat16"])
    p.add_argument("--bare-input", default="sequences", choices=["sequences", "images"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.num_layers < 1:
        sys.exit("bench_vs_bare: --num-layers must be >= 1")
    if a.rounds < 2:
        sys.exit("bench_vs_bare: --rounds must be >= 2 (>= 6 for a 95% interval)")
    images = a.bare_input == "images"
    seconds = 8.0 if a.device == "cpu" else 3.0
    logs, logs_median_step = [], []
    for r, order in enumerate(stats.balanced_orders(a.rounds, np.random.default_rng(a.seed))):
        args = (a.hidden_size, a.batch_size, a.device)
        if order == "AB":  # A: the bare loop, B: the harness
            bare = bare_subprocess(*args, seconds, a.dtype, images, a.impl, a.num_layers)
            rec = harness_trial(*args, a.dtype, a.impl, a.num_layers)
        else:
            rec = harness_trial(*args, a.dtype, a.impl, a.num_layers)
            bare = bare_subprocess(*args, seconds, a.dtype, images, a.impl, a.num_layers)
        (bare, bare_median_step) = bare
        logs.append(math.log(rec["model_img_per_s"] / bare))
        logs_median_step.append(math.log(rec["model_img_per_s"] / bare_median_step))
        print(f"round {r + 1} {'bare first' if order == 'AB' else 'harness first'}: bare {bare:8,.0f} img/s "
              f"(median step {bare_median_step:8,.0f})   "
              f"harness model-only {rec['model_img_per_s']:8,.0f} img/s (end to end {rec['img_per_s']:,.0f}, "
              f"data {rec['data_ms_per_step']:.2f} ms/step, noisy={rec['noisy']}, backend={rec['backend']})   "
              f"ratio {math.exp(logs[-1]):.3f}", flush=True)
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"row, hidden {a.hidden_size} x {a.num_layers}, {a.impl} impl, train, batch {a.batch_size}, {a.dtype}, {where}, "
          f"torch {torch.__version__}; bare loop fed {a.bare_input}")
    low, high, level = stats.hl_interval(logs)
    ratio, p_value = math.exp(stats.hodges_lehmann(logs)), stats.wilcoxon_p(logs)
    verdict = stats.outcome(math.exp(low), math.exp(high), p_value < stats.ALPHA, threshold=0.03)
    print(f"{a.rounds} rounds: harness model_img_per_s / bare loop = {ratio:.3f} "
          f"[{math.exp(low):.3f}, {math.exp(high):.3f}] ({100 * level:.1f}% interval; Wilcoxon p {p_value:.3f}); "
          f"against the target 0.97-1.03: {verdict}")
    ms_low, ms_high, _ = stats.hl_interval(logs_median_step)
    print(f"against the bare loop's median-step figure (the anchors' statistic, not the verdict's): "
          f"{math.exp(stats.hodges_lehmann(logs_median_step)):.3f} [{math.exp(ms_low):.3f}, {math.exp(ms_high):.3f}]")
    sys.exit(0 if verdict == "unchanged" else 1)


if __name__ == "__main__":
    main()
