"""The node-ceiling GEMM probe: fields, flag hygiene, CPU precision limits, drift reasons, per-process cache."""

import dataclasses

import pytest
import torch

from harness import ceiling
from harness.ceiling import Probe, ceiling_frac, drifted, probe

CPU = torch.device("cpu")


def test_cpu_probe_fields():
    p = probe(CPU, "float32", threads=1, seconds=0.2)
    assert isinstance(p, Probe)
    assert p.precision == "float32" and p.device == "cpu" and p.n in (1024, 2048)
    assert p.gflop_per_s > 0 and p.spread >= 0
    assert p.repeats >= ceiling.MIN_REPEATS and p.threads == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.gflop_per_s = 1.0


def test_probe_restores_threads():
    before = torch.get_num_threads()
    probe(CPU, "float32", threads=1, seconds=0.05)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("matmul,cudnn", [(False, True), (True, False), (True, True)])
def test_float32_probe_restores_tf32_flags(matmul, cudnn):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    saved_prec = torch.get_float32_matmul_precision()
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        seen = {}
        real_run = ceiling._run

        def spy(*a, **k):
            seen["flags"] = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            return real_run(*a, **k)

        ceiling._run = spy
        try:
            probe(CPU, "float32", threads=1, seconds=0.05)
        finally:
            ceiling._run = real_run
        assert seen["flags"] == (False, False)  # strict fp32 while probing
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (matmul, cudnn)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        torch.set_float32_matmul_precision(saved_prec)


@pytest.mark.parametrize("precision", ["tf32", "bfloat16"])
def test_cpu_rejects_non_float32(precision):
    with pytest.raises(ValueError, match="float32 only"):
        probe(CPU, precision, seconds=0.05)


def test_unknown_precision_and_bad_seconds():
    with pytest.raises(ValueError, match="unknown precision"):
        probe(CPU, "float16", seconds=0.05)
    with pytest.raises(ValueError, match="seconds"):
        probe(CPU, "float32", seconds=0)


def test_probe_node_cpu(monkeypatch):
    monkeypatch.setattr(ceiling, "probe", lambda d, p, threads=None, seconds=1.0: Probe(
        p, d.type, 1024, 50.0, 0.02, 7, threads or 1))
    assert ceiling.probe_node("cpu", 2) == {"float32": {"gflop_per_s": 50.0, "spread": 0.02, "n": 1024}}


def test_drifted_is_two_sided_in_log_terms():
    start = {"float32": {"gflop_per_s": 100.0, "spread": 0.01, "n": 1024}}
    (reason,) = drifted(start, {"float32": {"gflop_per_s": 80.0}}, 0.10)
    assert reason.startswith("float32 ceiling fell 20% between the run's start and end probes (threshold: x1.10 "
                             "either way)")
    assert drifted(start, {"float32": {"gflop_per_s": 95.0}}, 0.10) == []
    (rose,) = drifted(start, {"float32": {"gflop_per_s": 130.0}}, 0.10)  # started contended, ended free
    assert "ceiling rose 30%" in rose
    assert drifted(start, {"float32": {"gflop_per_s": 109.0}}, 0.10) == []
    assert drifted(start, {"float32": {"gflop_per_s": 100 / 1.09}}, 0.10) == []  # the same |log| both ways
    assert drifted(start, {}, 0.10) == []  # missing end probe: nothing to compare
    # the default sits above the 21.8% steady wander measured here (module doc), below a mode switch (-65%)
    assert drifted(start, {"float32": {"gflop_per_s": 100 / 1.218}}) == []
    assert drifted(start, {"float32": {"gflop_per_s": 35.0}}) and drifted(start, {"float32": {"gflop_per_s": 280.0}})


def test_ceiling_frac():
    assert ceiling_frac(25.0, 100.0) == 0.25
    assert ceiling_frac(25.0, {"gflop_per_s": 50.0}) == 0.5
    assert ceiling_frac(None, 100.0) is None
    assert ceiling_frac(25.0, None) is None
    assert ceiling_frac(25.0, 0.0) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_probe_tf32_and_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    dev = torch.device(f"cuda:{torch.cuda.device_count() - 1}")
    strict = probe(dev, "float32", seconds=0.2)
    tf32 = probe(dev, "tf32", seconds=0.2)
    for p in (strict, tf32):
        assert p.device == "cuda" and p.n == ceiling.CUDA_N and p.gflop_per_s > 0 and p.repeats >= 5
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == saved
    node = ceiling.probe_node("cuda", None, seconds=0.2)
    assert set(node) == {"float32", "tf32", "bfloat16"}
    assert node["bfloat16"]["gflop_per_s"] > node["float32"]["gflop_per_s"]


class FakeRay:
    """Stands in for ray's remote/wait/get/cancel in probe_nodes: records each probe task's options; the refs
    named in `late` never finish."""

    def __init__(self, late=()):
        self.submitted, self.cancelled, self.waits, self.late = {}, [], [], set(late)

    def remote(self, fn):
        fake = self

        class Task:
            def options(self, **kw):
                node = kw["scheduling_strategy"].node_id
                return type("Opt", (), {"remote": lambda _, *a: fake.submitted.setdefault(node, kw) and node})()
        return Task()

    def wait(self, refs, num_returns=1, timeout=None, **_):
        self.waits.append(timeout)
        return [r for r in refs if r not in self.late], [r for r in refs if r in self.late]

    def get(self, ref, timeout=None):
        if ref in self.late:
            raise TimeoutError(ref)
        return {"cpu": {"float32": {"gflop_per_s": 1.0, "spread": 0.0, "n": 1024}}}

    def cancel(self, ref, force=False):
        self.cancelled.append(ref)


def test_a_zero_cpu_head_gets_no_probe_and_late_probes_are_cancelled(monkeypatch):
    import ray

    from harness import nodes
    ID = {k: c * 56 for k, c in zip(("head", "zero", "gpu", "busy"), "abcd")}  # node ids are 28 bytes, hex
    fake = FakeRay(late={ID["busy"]})
    for name in ("remote", "wait", "get", "cancel"):
        monkeypatch.setattr(ray, name, getattr(fake, name))
    cluster = [{"node_id": ID["head"], "node_ip": "h", "resources": {"memory": 1e9}},  # a 0-CPU head: no CPU key
               {"node_id": ID["zero"], "node_ip": "z", "resources": {"CPU": 0.0}},
               {"node_id": ID["gpu"], "node_ip": "g", "resources": {"CPU": 8.0, "GPU": 1.0}},
               {"node_id": ID["busy"], "node_ip": "b", "resources": {"CPU": 2.0}}]
    out = nodes.probe_nodes(cluster, threads=2, seconds=0.1, timeout_s=7)
    assert set(fake.submitted) == {ID["gpu"], ID["busy"]}  # nothing pinned where no task can start
    assert fake.submitted[ID["gpu"]]["num_gpus"] == 1 and fake.submitted[ID["busy"]]["num_cpus"] == 2
    assert set(out) == {ID["gpu"]} and fake.cancelled == [ID["busy"]]  # the unfinished probe is stopped, not left queued
    assert fake.waits[:1] == [7]  # one shared timeout for all nodes, not one per node


def test_a_trials_ceiling_is_its_own_probe_not_the_nodes(monkeypatch):
    """Issue 18: ceiling_frac divides by a probe made in the trial's process after its windows (its load mode);
    the sweep's start probe of the node is kept beside it, not used."""
    from harness import trial
    from harness.spec import TrialSpec, Variant
    calls = []

    def fake(device, precision, *, threads=None, seconds=1.0):
        calls.append((precision, threads, seconds))
        return Probe(precision, "cpu", 1024, 50.0, 0.01, 5, threads or 1)

    monkeypatch.setattr(ceiling, "probe", fake)
    spec = TrialSpec(Variant(hidden_size=8, num_layers=1, batch_size=8), mode="infer")
    got = trial.ceiling_fields(spec, CPU, 25.0, {"float32": {"gflop_per_s": 150.0}})  # the node, probed when free
    assert got == {"ceiling_gflop_per_s": 50.0, "ceiling_frac": 0.5, "node_ceiling_gflop_per_s": 150.0}
    assert calls == [("float32", torch.get_num_threads(), trial.TRIAL_PROBE_S)]
    assert trial.ceiling_fields(spec, CPU, 25.0, None)["node_ceiling_gflop_per_s"] is None  # a lone trial
    bf16 = TrialSpec(Variant(hidden_size=8, num_layers=1, batch_size=8, dtype="bfloat16"), mode="infer")
    assert set(trial.ceiling_fields(bf16, CPU, 25.0, None).values()) == {None} and len(calls) == 2  # no probe
