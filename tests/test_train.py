"""Accuracy trials (harness/train.py): learning, exact evaluation, curves, targets, budgets, NaN, seeds, LR."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import learnable_images
from harness import train as trainmod
from harness.cli import to_json
from harness.data import DeviceData
from harness.spec import TrainConfig, TrialSpec
from harness.train import check_finite, evaluate, lr_at, run_accuracy
from harness.steps import NonFiniteLoss
from harness.trial import run_trial
from harness.variants import Variant

CPU = torch.device("cpu")
TINY = Variant(seq="row", hidden_size=32, num_layers=1, batch_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: these models are tiny, and on a shared 2-core machine two threads can be 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec(epochs=3, seed=0, variant=TINY, time_budget_s=60.0, **train):
    train = {"lr": 3e-3, **train}
    return TrialSpec(variant=variant, mode="accuracy", data="cifar10", seed=seed, time_budget_s=time_budget_s,
                     train=TrainConfig(epochs=epochs, **train))


@pytest.fixture(scope="module")
def tiny_data():
    """320 learnable training images (10 steps of 32) and 100 test images."""
    tx, ty = learnable_images(320, seed=1)
    vx, vy = learnable_images(100, seed=2)
    return DeviceData(tx, ty, vx, vy, device=CPU, source="test")


@pytest.fixture(scope="module")
def capped_data():
    """As tiny_data, but 20 of the 100 test labels are wrong: no model can score above 0.8."""
    tx, ty = learnable_images(320, seed=1)
    vx, vy = learnable_images(100, seed=2)
    vy = vy.copy()
    vy[:20] = (vy[:20] + 1) % 10
    return DeviceData(tx, ty, vx, vy, device=CPU, source="test")


# ---- learning, end to end through run_trial -----------------------------------------------------------

def test_accuracy_trial_learns_the_tiny_dataset(tiny_cifar):
    r = run_trial(spec(epochs=10), data_root=str(tiny_cifar), allow_unofficial=True).record
    assert r["status"] == "ok", r.get("error")
    assert r["dataset"].startswith("unofficial:") and r["mode"] == "accuracy"
    curve = r["curve"]
    assert [c["epoch"] for c in curve] == list(range(1, 11)) and r["epochs_run"] == 10
    assert r["stopped_by"] == "epochs" and r["steps_per_epoch"] == 10 and r["steps_run"] == 100
    assert curve[-1]["train_loss"] < 0.75 * curve[0]["train_loss"]
    assert r["test_acc"] > 0.5 and r["best_test_acc"] >= r["test_acc"]
    assert r["test_acc"] == curve[-1]["test_acc"] and r["test_loss"] == curve[-1]["test_loss"]
    # every test image counted: accuracies are multiples of 1/100
    assert all(round(c["test_acc"] * 100) == pytest.approx(c["test_acc"] * 100) for c in curve)
    # the throughput records' fields are there too
    assert r["img_per_s"] == r["train_img_per_s"] > 0
    # warm-up excluded: the first 5 steps (half of a 10-step epoch) are left out of the images and their time
    assert r["train_img_per_s"] >= 95 * 32 / r["train_s"]
    assert r["eval_peak_mem_mb"] is None or r["eval_peak_mem_mb"] >= 0
    # noisy only for other processes on its cores (make test runs other tests beside it), never for spread
    assert r["noisy"] is bool(r["noise_reasons"])
    assert r["noise_reasons"] == "" or r["noise_reasons"].startswith("other processes used ")
    assert r["img_per_s_iqr"] is None and r["latency_ms_p50"] is None
    assert r["backend"] in ("onednn-rnn", "aten-lstm-cpu") and r["gflop_per_s"] > 0
    assert r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0
    assert json.loads(to_json(r))["curve"][0]["epoch"] == 1


@pytest.mark.parametrize("impl,train", [
    ("cudnn", dict(optimizer="sgd", lr=0.05, schedule="cosine", warmup_epochs=0.5, grad_clip=1.0,
                   label_smoothing=0.1, augment="flip-crop", weight_decay=5e-4)),
    ("naive", dict(optimizer="adamw", schedule="onecycle", augment="flip", weight_decay=0.01)),
])
def test_every_recipe_option_runs(tiny_data, impl, train):
    r = run_accuracy(spec(epochs=2, variant=dataclasses.replace(TINY, impl=impl), **train), tiny_data, CPU)
    assert r["epochs_run"] == 2 and all(math.isfinite(c["train_loss"]) for c in r["curve"])
    if train["schedule"] == "cosine":
        assert r["curve"][-1]["lr"] < 0.05 * 0.1  # last step of a cosine is near 0


@pytest.mark.parametrize("impl", ["cudnn", "naive"])
def test_bfloat16_autocast_trains(tiny_data, impl):
    from harness.errors import DeviceError
    from harness.steps import cpu_bf16_lstm_error
    s = spec(epochs=2, variant=dataclasses.replace(TINY, dtype="bfloat16", impl=impl))
    if impl == "cudnn" and (why := cpu_bf16_lstm_error()):  # this CPU has no oneDNN bf16 LSTM: a one-line error
        with pytest.raises(DeviceError, match="no bf16 LSTM primitive"):
            run_accuracy(s, tiny_data, CPU)
        pytest.skip(why)
    r = run_accuracy(s, tiny_data, CPU)
    assert r["epochs_run"] == 2 and all(math.isfinite(c["test_loss"]) for c in r["curve"])


# ---- evaluation counts exactly -------------------------------------------------------------------------

class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_evaluate_counts_every_image_exactly():
    rng = np.random.default_rng(0)
    n = 103  # not a multiple of the batch size
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    data = DeviceData(images[:8], labels[:8], images, labels, device=CPU)
    logits = [0.0] * 10
    logits[3], logits[5] = 2.0, 1.0  # always predicts 3
    model = FixedLogits(logits)
    model.train()
    s = spec(label_smoothing=0.2)  # the test loss is never smoothed
    loss, acc, correct, total = evaluate(model, data, 10, CPU, s)
    assert total == n and correct == int((labels == 3).sum()) and acc == correct / n
    expected = F.cross_entropy(torch.tensor(logits).expand(n, -1), torch.as_tensor(labels)).item()
    assert loss == pytest.approx(expected, rel=1e-6)
    assert model.training  # evaluate restores the mode it found


# ---- curve, targets, time budget -----------------------------------------------------------------------

def test_curve_and_time_to_target(capped_data):
    r = run_accuracy(spec(epochs=6, target_accuracy=(0.3, 0.999)), capped_data, CPU)
    curve = r["curve"]
    assert len(curve) == r["epochs_run"] == 6 and r["stopped_by"] == "epochs"
    assert [c["epoch"] for c in curve] == [1, 2, 3, 4, 5, 6] and all(c["steps"] == 10 for c in curve)
    elapsed = [c["elapsed_s"] for c in curve]
    assert all(b > a for a, b in zip([0.0] + elapsed, elapsed))
    assert r["train_s"] == elapsed[-1] and r["eval_s"] > 0
    assert set(r["time_to_target_s"]) == {"0.3", "0.999"}
    assert r["time_to_target_s"]["0.999"] is None and r["epochs_to_target"]["0.999"] is None
    first = next(c for c in curve if c["test_acc"] >= 0.3)  # reached (the dataset is learnable to 0.8)
    assert r["time_to_target_s"]["0.3"] == first["elapsed_s"]
    assert r["epochs_to_target"]["0.3"] == first["epoch"]
    assert r["best_test_acc"] <= 0.8


def test_stops_at_the_largest_target(tiny_data):
    r = run_accuracy(spec(epochs=30, lr=1e-2, target_accuracy=(0.2, 0.4)), tiny_data, CPU)
    assert r["stopped_by"] == "target" and r["epochs_run"] < 30
    assert r["test_acc"] >= 0.4 and all(c["test_acc"] < 0.4 for c in r["curve"][:-1])
    assert r["time_to_target_s"]["0.4"] == r["curve"][-1]["elapsed_s"]
    assert r["time_to_target_s"]["0.2"] <= r["time_to_target_s"]["0.4"]


def test_time_budget_cuts_the_run_short(tiny_data, monkeypatch):
    clock = iter(range(10**6))  # a fake clock: one second per reading
    monkeypatch.setattr(trainmod, "perf_counter", lambda: float(next(clock)))
    r = run_accuracy(spec(epochs=50, time_budget_s=26.0), tiny_data, CPU)
    assert r["stopped_by"] == "time_budget" and 1 < r["epochs_run"] < 50
    assert r["curve"][-1]["steps"] < 10 and all(c["steps"] == 10 for c in r["curve"][:-1])
    assert r["steps_run"] == sum(c["steps"] for c in r["curve"])
    assert math.isfinite(r["test_acc"])  # the partial epoch was evaluated too


# ---- non-finite loss -----------------------------------------------------------------------------------

def test_nan_loss_fails_the_trial(tiny_cifar, monkeypatch):
    real_build = trainmod.build_model

    class NaNAfter(nn.Module):  # a real model whose output turns NaN on the 14th forward pass
        def __init__(self, v):
            super().__init__()
            self.inner, self.calls = real_build(v), 0

        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return out * float("nan") if self.calls >= 14 else out

    monkeypatch.setattr(trainmod, "build_model", NaNAfter)
    r = run_trial(spec(epochs=3), data_root=str(tiny_cifar), allow_unofficial=True).record
    assert r["status"] == "failed"
    assert r["error"].startswith("NonFiniteLoss: non-finite training loss nan in epoch 2 at step 3 of 10")
    assert "test_acc" not in r


def test_diverging_learning_rate_fails_the_trial(tiny_cifar):
    # (lr=1e9 is not enough: the LSTM saturates and the loss stays finite, if about 1e10)
    r = run_trial(spec(epochs=2, optimizer="sgd", lr=1e36), data_root=str(tiny_cifar), allow_unofficial=True).record
    assert r["status"] == "failed"
    assert "non-finite training loss inf in epoch 1 at step" in r["error"]


def test_check_finite_names_the_first_bad_step_in_a_window():
    losses = torch.arange(1.0, 101.0)
    check_finite(losses, 0, 100, epoch=1)
    losses[61], losses[80] = float("inf"), float("nan")
    check_finite(losses, 0, 61, epoch=1)  # the window stops before the bad step
    with pytest.raises(NonFiniteLoss, match=r"loss inf in epoch 4 at step 62 of 100"):
        check_finite(losses, 50, 100, epoch=4)


# ---- seeds ---------------------------------------------------------------------------------------------

def test_same_seed_same_curve_different_seed_different_curve(tiny_data):
    def run(seed):
        r = run_accuracy(spec(epochs=3, seed=seed, augment="flip-crop"), tiny_data, CPU)
        return [(c["train_loss"], c["test_loss"], c["test_acc"]) for c in r["curve"]]
    a, b, c = run(0), run(0), run(1)
    assert a == b  # bit-identical
    assert [x[0] for x in a] != [x[0] for x in c]


# ---- learning-rate schedules ---------------------------------------------------------------------------

def trace(steps_per_epoch=10, **kw):
    t = TrainConfig(lr=0.1, epochs=5, **kw)
    return [lr_at(s, t, steps_per_epoch) for s in range(t.epochs * steps_per_epoch)]


def test_constant_schedule_with_warmup():
    assert trace() == [0.1] * 50
    lrs = trace(warmup_epochs=1)
    assert lrs[:10] == pytest.approx([0.01 * k for k in range(1, 11)]) and lrs[10:] == [0.1] * 40


def test_cosine_schedule_decays_to_zero():
    lrs = trace(schedule="cosine")
    assert lrs[0] == 0.1 and lrs[25] == pytest.approx(0.05) and 0 < lrs[-1] < 1e-3
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    lrs = trace(schedule="cosine", warmup_epochs=2)
    assert lrs[:20] == pytest.approx([0.005 * k for k in range(1, 21)])
    assert max(lrs) == lrs[19] == pytest.approx(0.1) and 0 < lrs[-1] < 1e-3
    assert all(b < a for a, b in zip(lrs[19:], lrs[20:]))


def test_onecycle_schedule_matches_torch_onecycle_shape():
    lrs = trace(schedule="onecycle")
    peak = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(0.1 / 25) and peak == 14 and lrs[peak] == pytest.approx(0.1)
    assert all(b > a for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(b < a for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4)
    # the same end points and peak as torch's OneCycleLR (which rises along a cosine, not a line)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    ref = []
    for _ in range(50):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ref.index(max(ref)) == peak
    assert (lrs[0], lrs[peak], lrs[-1]) == pytest.approx((ref[0], ref[peak], ref[-1]))
    assert lrs[peak:] == pytest.approx(ref[peak:], rel=1e-6)  # the cosine decay is the same
    assert trace(schedule="onecycle", warmup_epochs=1).index(0.1) == 9  # warmup_epochs sets the rise
