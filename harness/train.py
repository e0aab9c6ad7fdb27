"""Accuracy trials: train a variant on CIFAR-10 and record the test accuracy after every epoch.

One loop, nanoGPT-style. Per step: set the scheduled LR, forward under autocast, loss (with label
smoothing), backward, clip, step; the loss goes into a per-epoch tensor on the device, so nothing syncs per
step on a GPU (finiteness is checked every CHECK_EVERY_CUDA steps there, every step on the CPU). Per epoch:
evaluate on every test image. Training stops after `epochs`, when the largest target accuracy is reached,
or when the wall-clock time budget (checked after every step) runs out.

Times: `elapsed_s` in the curve, `time_to_target_s` and `train_img_per_s` count training time only
(evaluation excluded, `eval_s` separately; `train_img_per_s` also leaves out the first WARMUP_STEPS steps, as a
train-mode trial leaves out its warm-up); the time budget counts everything since training started.
Determinism: torch.manual_seed(seed) before the model is built, and one CPU torch.Generator(seed) for the
data order and augmentation, so a seed gives a bit-identical curve on the same machine and thread count.
"""

from __future__ import annotations

import math
from time import perf_counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import DeviceData
from .errors import SpecError
from .measure import CpuAccount, available_cores, contention_reason
from .spec import TrainConfig, TrialSpec
from .steps import NonFiniteLoss, PeakMemory, autocast, detect_backend, gemm_fields, make_optimizer, sync
from .variants import build_model

CHECK_EVERY_CUDA = 50      # steps between finiteness checks (each one syncs) on a GPU
ONECYCLE_PCT_START = 0.3   # torch OneCycleLR's defaults: rise over 30% of the steps from lr/25,
ONECYCLE_DIV = 25.0        # then anneal to lr/25/1e4
ONECYCLE_FINAL_DIV = 1e4
MIN_EVAL_BATCH = 500
WARMUP_STEPS = 10          # first steps of training, left out of train_img_per_s (lazy init, allocator growth)


def lr_at(step: int, t: TrainConfig, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based) of t.epochs * steps_per_epoch.

    constant: t.lr after `warmup_epochs` of linear warm-up (lr/w, 2lr/w, ..., lr).
    cosine:   the same warm-up, then cosine from t.lr down to 0 at the end of training.
    onecycle: OneCycleLR's shape: linear rise from lr/25 to lr over warmup_epochs (or 30% of the steps when
              warmup_epochs is 0), then, as OneCycleLR, cosine down to lr/25/1e4 at the last step.
    """
    total = t.epochs * steps_per_epoch
    warmup = min(total, round(t.warmup_epochs * steps_per_epoch))
    if t.schedule == "onecycle":
        peak = max(0, (warmup or round(ONECYCLE_PCT_START * total)) - 1)  # the step that gets t.lr
        lo = t.lr / ONECYCLE_DIV
        if step < peak:
            return lo + (t.lr - lo) * step / peak
        end = lo / ONECYCLE_FINAL_DIV
        p = (step - peak) / max(1, total - 1 - peak)
        return end + (t.lr - end) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    if step < warmup:
        return t.lr * (step + 1) / warmup
    if t.schedule == "cosine":
        peak = max(0, warmup - 1)  # the last warm-up step already has t.lr
        p = (step - peak) / max(1, total - peak)
        return t.lr * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))
    return t.lr


@torch.inference_mode()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int, device: torch.device,
             spec: TrialSpec) -> tuple[float, float, int, int]:
    """(test_loss, test_acc, correct, total) over every test image: the mean cross-entropy without label
    smoothing and the exact top-1 count (integer sums on the device, one sync at the end)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in data.test_batches(batch_size):
        with autocast(spec, device):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    total = data.n_test
    correct = int(correct.item())
    return loss_sum.item() / total, correct / total, correct, total


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def check_finite(losses: torch.Tensor, lo: int, hi: int, epoch: int) -> None:
    """Raise NonFiniteLoss naming the first non-finite loss among the epoch's steps lo..hi-1 (one sync)."""
    window = losses[lo:hi]
    if bool(torch.isfinite(window).all()):
        return
    i = int((~torch.isfinite(window)).nonzero()[0, 0])
    raise NonFiniteLoss(f"non-finite training loss {window[i].item()} in epoch {epoch} at step {lo + i + 1} "
                        f"of {losses.numel()}")


def run_accuracy(spec: TrialSpec, data: DeviceData, device: torch.device) -> dict:
    v, t = spec.variant, spec.train
    steps_per_epoch = data.n_train // v.batch_size  # data.train_epoch drops the last partial batch
    if steps_per_epoch == 0:
        raise SpecError(f"batch size {v.batch_size} is larger than the {data.n_train} training images")
    targets = sorted(t.target_accuracy)
    check_every = CHECK_EVERY_CUDA if device.type == "cuda" else 1
    eval_batch = max(v.batch_size, MIN_EVAL_BATCH)

    mem = PeakMemory(device)
    torch.manual_seed(spec.seed)
    model = build_model(v).to(device)
    opt = make_optimizer(model, spec)
    gen = torch.Generator().manual_seed(spec.seed)  # data order and augmentation
    loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    params = list(model.parameters())

    curve, stopped_by = [], "epochs"
    time_to_target = {str(x): None for x in targets}
    epochs_to_target = {str(x): None for x in targets}
    step = images = 0
    train_s = eval_s = 0.0
    warm_steps = min(WARMUP_STEPS, steps_per_epoch // 2)  # steps_per_epoch >= 1; an epoch of 1 step: none
    warm_s = None                                          # training time of the warm-up steps
    train_peak = eval_peak = None
    lr = lr_at(0, t, steps_per_epoch)
    start = perf_counter()
    others = CpuAccount()  # did other processes compete for the cores? (time-to-accuracy is wall clock)
    for epoch in range(1, t.epochs + 1):
        # ---- train one epoch ----
        model.train()
        losses = torch.zeros(steps_per_epoch, device=device)
        n = checked = 0
        sync(device)
        t0 = perf_counter()
        for x, y in data.train_epoch(v.batch_size, augment=t.augment, generator=gen):
            lr = lr_at(step, t, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            with autocast(spec, device):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            losses[n] = loss.detach()
            n += 1
            step += 1
            if step == warm_steps:
                sync(device)
                warm_s = train_s + perf_counter() - t0
            if n - checked >= check_every:
                check_finite(losses, checked, n, epoch)
                checked = n
            if perf_counter() - start > spec.budget_s:
                stopped_by = "time_budget"
                break
        check_finite(losses, checked, n, epoch)
        train_loss = losses[:n].mean().item()
        sync(device)
        train_s += perf_counter() - t0
        images += n * v.batch_size
        train_peak = _max(train_peak, mem.peak_mb())
        mem.reset()

        # ---- evaluate on the whole test set ----
        t1 = perf_counter()
        test_loss, test_acc, _, _ = evaluate(model, data, eval_batch, device, spec)
        eval_s += perf_counter() - t1
        eval_peak = _max(eval_peak, mem.peak_mb())
        mem.reset()
        curve.append({"epoch": epoch, "steps": n, "train_loss": train_loss, "test_loss": test_loss,
                      "test_acc": test_acc, "elapsed_s": train_s, "lr": lr})
        for x in targets:
            if time_to_target[str(x)] is None and test_acc >= x:
                time_to_target[str(x)], epochs_to_target[str(x)] = train_s, epoch
        if stopped_by == "time_budget":
            break
        if targets and test_acc >= targets[-1]:
            stopped_by = "target"
            break

    # Throughput after the warm-up steps (when training ran past them), as a train-mode trial excludes warm-up.
    if warm_s is not None and step > warm_steps and train_s > warm_s:
        img_per_s = (images - warm_steps * v.batch_size) / (train_s - warm_s)
    else:
        img_per_s = images / train_s
    external, free = others.external_cores(), max(0, available_cores() - torch.get_num_threads())
    steal = others.steal_cores()
    busy = contention_reason(external, free) if device.type == "cpu" else None
    return {
        "test_acc": curve[-1]["test_acc"],
        "test_loss": curve[-1]["test_loss"],
        "best_test_acc": max(c["test_acc"] for c in curve),
        "epochs_run": len(curve),  # epochs started; with stopped_by=time_budget the last one is partial
        "steps_run": step,
        "steps_per_epoch": steps_per_epoch,
        "stopped_by": stopped_by,
        "time_to_target_s": time_to_target,
        "epochs_to_target": epochs_to_target,
        "curve": curve,
        "train_s": train_s,
        "eval_s": eval_s,
        "train_img_per_s": img_per_s,
        # the throughput records' fields, for the same tables
        "img_per_s": img_per_s,
        "img_per_s_iqr": None,
        "noisy": bool(busy),  # accuracy is unaffected; the times and images/s are
        "noise_reasons": busy or "",
        "external_cpu_cores": round(external, 2),
        "steal_cpu_cores": None if steal is None else round(steal, 3),
        "latency_ms_p50": None, "latency_ms_p90": None, "latency_ms_p99": None,
        **gemm_fields(v, spec.mode, img_per_s),
        "peak_mem_mb": train_peak,          # training: model, optimizer state, activations
        "eval_peak_mem_mb": eval_peak,      # evaluation batches (no autograd), apart
        "backend": detect_backend(model, next(data.test_batches(v.batch_size))[0], spec, device),
    }
