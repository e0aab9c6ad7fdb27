"""CUDA checks: skipped cleanly without a GPU; run by scripts/gpu-check.sh on a GPU host."""
import pytest
import torch

from harness.parity import CHECK_SEQS, check, impl_errors
from harness.spec import TrialSpec
from harness.trial import run_trial
from harness.variants import Variant

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


@pytest.mark.parametrize("seq,patch", CHECK_SEQS)
def test_impls_agree_on_cuda(seq, patch):
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for layers in (1, 3):
            v = Variant(seq=seq, patch_size=patch, hidden_size=32, num_layers=layers, batch_size=4)
            for impl, err in impl_errors(v, CUDA).items():
                assert err < 1e-4, f"{impl} vs cuDNN: {err:.2e} ({seq}, {layers} layers)"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def test_check_runs_on_cuda():
    rows = check(CUDA, hidden_size=16, layers=(2,))
    assert rows and max(r["max_rel_error"] for r in rows) < 1e-4


@pytest.mark.parametrize("impl,backend", [("cudnn", "cudnn"), ("naive", "python-loop:aten-ops"),
                                          ("lstmcell", "python-loop:fused-lstm-cell")])
def test_cuda_trial_records_gpu_and_backend(impl, backend):
    spec = TrialSpec(variant=Variant(seq="row", hidden_size=128, num_layers=2, impl=impl, batch_size=256),
                     mode="train", device="cuda", time_budget_s=3)
    r = run_trial(spec).record
    assert r["status"] == "ok", r.get("error")
    assert r["backend"] == backend and r["gpu_name"] and r["cuda_version"]
    assert r["img_per_s"] > 0 and r["peak_mem_mb"] > 0
    assert r["latency_ms_p50"] <= r["latency_ms_p99"]


def test_bf16_autocast_trial_on_cuda():
    spec = TrialSpec(variant=Variant(seq="patch", patch_size=4, hidden_size=256, num_layers=2, dtype="bfloat16"),
                     mode="infer", device="cuda", time_budget_s=2)
    r = run_trial(spec).record
    assert r["status"] == "ok" and r["backend"] == "cudnn", r.get("error")


def test_cuda_out_of_memory_is_a_failed_record_not_a_crash():
    spec = TrialSpec(variant=Variant(seq="pixel", hidden_size=16384, num_layers=1, impl="cudnn", batch_size=65536),
                     mode="train", device="cuda", time_budget_s=2)
    r = run_trial(spec).record
    assert r["status"] == "failed" and "memory" in r["error"].lower()


@pytest.mark.parametrize("dtype,tf32", [("float32", False), ("tf32", True)])
def test_the_trial_sets_tf32_itself_from_its_dtype(monkeypatch, dtype, tf32):
    """PyTorch's defaults let cuDNN use TF32 while matmul may not; a float32 trial turns both off inside the
    trial (seen from inside its step), a tf32 trial both on, and the record says which ran."""
    import harness.trial as trialmod
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False  # PyTorch's defaults
    seen = []
    real = trialmod.train_step_fn

    def spying(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped():
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
            return step()
        return wrapped

    monkeypatch.setattr(trialmod, "train_step_fn", spying)
    spec = TrialSpec(variant=Variant(seq="row", hidden_size=64, num_layers=1, batch_size=64, dtype=dtype),
                     mode="train", device="cuda", time_budget_s=1.0)
    r = run_trial(spec).record
    assert r["status"] == "ok", r.get("error")
    assert seen and set(seen) == {(tf32, tf32)}
    assert (r["tf32_cudnn"], r["tf32_matmul"]) == (tf32, tf32)
