"""The compiled (torch.compile of the naive step) and graphed (the naive step in a CUDA graph) impls: same
function as cudnn, compile time out of the timed window, a recompile inside it flags the trial, and the
refusals (graphed off CUDA or outside train/infer, compiled without a C++ compiler) are one line, exit 2."""

from __future__ import annotations

import json
import time

import pytest
import torch

from conftest import cuda
from harness.cli import main
from harness.errors import DeviceError, SpecError
from harness.graphed import CompileWatch, Prepared, require_compiler
from harness.measure import measure
from harness.parity import COMPILED_TOLERANCE, TOLERANCE, check, check_impls, impl_errors
from harness.spec import TrialSpec
from harness.variants import CompiledLSTM, NaiveLSTM, Variant, build_model, canonical_state, with_impl

CPU = torch.device("cpu")
FAST = dict(min_steps=5, blocks=4, warmup_min_s=0.1)  # tests only: a smaller sample plan


@pytest.mark.parametrize("seq,patch,layers", [("row", None, 2), ("patch", 8, 1)])
def test_compiled_matches_cudnn(seq, patch, layers):
    v = Variant(seq=seq, patch_size=patch, hidden_size=16, num_layers=layers, batch_size=3)
    errors = impl_errors(v, CPU, batch=3, impls=("naive", "compiled"))
    assert errors["compiled"] < COMPILED_TOLERANCE[("cpu", "float32")], errors


def test_compiled_has_nn_lstm_parameters_and_compiles_its_own_step():
    v = Variant(seq="row", hidden_size=8, num_layers=2, batch_size=2)
    naive, compiled = build_model(with_impl(v, "naive")), build_model(with_impl(v, "compiled"))
    assert isinstance(compiled.lstm, CompiledLSTM) and isinstance(compiled.lstm, NaiveLSTM)
    assert canonical_state(compiled).keys() == canonical_state(naive).keys()
    other = build_model(with_impl(v, "compiled"))
    # each model its own code object: one trial's shapes never reach another trial's compiled step
    assert compiled.lstm.cell_fn is not other.lstm.cell_fn


def test_check_runs_compiled_on_row_column_and_patch_not_pixel():
    impls, notes = check_impls(CPU)
    assert "compiled" in impls and "graphed" not in impls
    assert any("compiled: checked on row, column, patch" in n for n in notes)
    rows = check(CPU, hidden_size=8, layers=(1,), seqs=(("row", None), ("pixel", None)))
    assert {(r["seq"], r["impl"]) for r in rows} == {("row", "naive"), ("row", "lstmcell"), ("row", "compiled"),
                                                     ("pixel", "naive"), ("pixel", "lstmcell")}
    assert all(r["max_rel_error"] < COMPILED_TOLERANCE[("cpu", "float32")] for r in rows)


def test_compile_time_is_recorded_and_kept_out_of_the_timed_window():
    from harness.trial import load_data, run_throughput
    spec = TrialSpec(Variant(seq="row", hidden_size=16, num_layers=2, impl="compiled", batch_size=32),
                     time_budget_s=1.0, seed=3)
    compiles = []

    def on_end(args):
        compiles.append(time.time())
    from torch._dynamo.callback import callback_handler
    callback_handler.register_end_callback(on_end)
    try:
        fields = run_throughput(spec, load_data(spec, CPU), CPU, **FAST)
    finally:
        callback_handler.remove_end_callback(on_end)
    assert fields["backend"] == "compiled:inductor"
    assert fields["compile_s"] > 0 and fields["recompiles"] == 0
    assert compiles and max(compiles) < fields["timed_start"]  # every compile ended before the clock started
    assert max(fields["step_ms"]) < 1000 * fields["compile_s"]  # no timed step paid for a compile
    assert "recompile" not in fields["noise_reasons"]


def test_a_recompile_inside_the_timed_window_flags_the_trial():
    """A step whose input changes shape mid-measurement (after warm-up): dynamo recompiles inside measure()'s
    timed window, and the trial's fields say so."""
    fn = torch.compile(lambda x: torch.sigmoid(x) * 2.0 + 1.0, backend="inductor", dynamic=False)
    calls = {"n": 0}
    switch_at = 40

    def step():
        calls["n"] += 1
        time.sleep(0.005)  # a steady step: the warm-up settles after ten 1-step blocks, before the switch
        fn(torch.ones(8 if calls["n"] < switch_at else 16))

    with CompileWatch() as watch:
        step()  # the first compile, before the clock (as prepare() does)
        m = measure(step, batch_size=8, device=CPU, threads=1, block_s=0.05, settle=1.0, warmup_min_s=0.0,
                    budget_s=60.0, blocks=10, warmup_block_s=0.005)
        assert m.warmup_steps < switch_at < m.warmup_steps + len(m.step_times_s) + 1
        fields = Prepared(None, "compiled", watch=watch, extra={"compile_s": 1.0}).fields(
            {"noisy": False, "noise_reasons": ""}, m)
    assert fields["recompiles"] == 1 and fields["noisy"] is True
    assert "1 recompile(s) of the compiled step inside the timed window" in fields["noise_reasons"]
    assert len(watch.events) == 2 and watch.within(0.0, m.timed_start) == 1


def test_graphed_is_refused_off_cuda_and_outside_train_and_infer():
    with pytest.raises(SpecError, match="impl graphed captures a CUDA graph.*device cpu"):
        TrialSpec(Variant(impl="graphed"), device="cpu")
    for mode in ("profile", "accuracy"):
        with pytest.raises(SpecError, match=f"mode {mode}"):
            TrialSpec(Variant(impl="graphed"), device="cuda", mode=mode, data="cifar10")


def test_graphed_on_cpu_is_one_line_exit_2(capsys):
    rc = main(["trial", "--impl", "graphed", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "impl graphed captures a CUDA graph" in err and "exclude {impl: graphed, device: cpu}" in err


def test_a_suite_names_the_graphed_conflict(tmp_path):
    from harness.errors import SuiteError
    from harness.suites import load_suite
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\naxes:\n  impl: [cudnn, graphed]\nmodes: [train]\ndevices: [cpu]\n")
    with pytest.raises(SuiteError, match="graphed"):
        load_suite(path)


def test_compiled_without_a_compiler_is_one_line_exit_2(capsys):
    # config.patch, not monkeypatch: undoing a monkeypatch on inductor's config module leaves cpp.cxx missing
    # for every later test in the process
    from torch._inductor import config
    with config.patch({"cpp.cxx": (None, "no-such-cxx-for-lstm-bench")}):
        with pytest.raises(DeviceError, match="needs a C\\+\\+ compiler"):
            require_compiler()
        rc = main(["trial", "--impl", "compiled", "--hidden-size", "8", "--num-layers", "1", "--batch-size", "16",
                   "--time-budget-s", "1"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "no-such-cxx-for-lstm-bench" in err, err
        impls, notes = check_impls(CPU)
        assert "compiled" not in impls and any(n.startswith("compiled: skipped") for n in notes)
    assert config.cpp.cxx != (None, "no-such-cxx-for-lstm-bench")


# ---- CUDA only ------------------------------------------------------------------------------------------

@cuda
@pytest.mark.parametrize("impl", ["compiled", "graphed"])
def test_cuda_impls_match_cudnn(impl):
    v = Variant(seq="row", hidden_size=16, num_layers=2, batch_size=4)
    err = impl_errors(v, torch.device("cuda"), impls=(impl,))[impl]
    bound = (COMPILED_TOLERANCE if impl == "compiled" else TOLERANCE)[("cuda", "float32")]
    assert err < bound, err


@cuda
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_graphed_trial_captures_once_and_replays(mode):
    from harness.trial import load_data, run_throughput
    dev = torch.device("cuda")
    spec = TrialSpec(Variant(seq="row", hidden_size=32, num_layers=2, impl="graphed", batch_size=64),
                     mode=mode, device="cuda", time_budget_s=1.0)
    fields = run_throughput(spec, load_data(spec, dev), dev, **FAST)
    assert fields["backend"] == "graphed:cuda-graph" and fields["capture_s"] > 0 and fields["img_per_s"] > 0
    assert json.dumps(fields["capture_s"])
