import pytest
import torch

from harness.errors import SpecError
from harness.parity import CHECK_SEQS, impl_errors
from harness.variants import (NaiveLSTM, Variant, build_model, canonical_state, load_canonical_state,
                              lstm_gemm_flops, seq_shape, with_impl)


@pytest.mark.parametrize("seq,patch", CHECK_SEQS)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_impls_agree_outputs_and_gradients(seq, patch, layers):
    v = Variant(seq=seq, patch_size=patch, hidden_size=16, num_layers=layers, batch_size=3)
    errors = impl_errors(v, torch.device("cpu"), batch=3)
    assert set(errors) == {"naive", "lstmcell"}
    for impl, err in errors.items():
        assert err < 1e-5, f"{impl} differs from nn.LSTM by {err:.2e} ({seq}, {layers} layers)"


def test_impls_agree_bidirectional():
    v = Variant(seq="row", hidden_size=16, num_layers=2, bidirectional=True, batch_size=3)
    assert max(impl_errors(v, torch.device("cpu"), batch=3).values()) < 1e-5


def test_parity_check_detects_a_wrong_weight():
    """The comparison itself must be able to fail: perturb one naive weight and the error shows."""
    v = Variant(seq="row", hidden_size=16, num_layers=1, batch_size=3)
    ref = build_model(v)
    state = canonical_state(ref)
    naive = build_model(with_impl(v, "naive"))
    state = {k: (t + 1e-2 if k == "lstm.weight_hh_l0" else t) for k, t in state.items()}
    load_canonical_state(naive, state)
    x = torch.randn(3, 3, 32, 32)
    assert (naive(x) - ref(x)).abs().max() > 1e-4


def test_naive_is_a_loop_of_gate_equations_not_nn_lstm():
    v = Variant(seq="row", hidden_size=16, num_layers=2, impl="naive", batch_size=2)
    model = build_model(v)
    assert isinstance(model.lstm, NaiveLSTM)
    assert not any(isinstance(m, (torch.nn.LSTM, torch.nn.LSTMCell)) for m in model.modules())
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(torch.randn(2, 3, 32, 32))
    counts = {e.key: e.count for e in prof.key_averages()}
    assert "aten::lstm" not in counts and "aten::lstm_cell" not in counts
    assert counts["aten::addmm"] == 32 * 2 + 1  # one stacked-gate GEMM per step per layer, plus the head
    assert counts["aten::sigmoid"] == 3 * 32 * 2


def test_sequencers_give_documented_shapes_and_order():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    for seq, patch in CHECK_SEQS:
        v = Variant(seq=seq, patch_size=patch, hidden_size=8, num_layers=1, batch_size=2)
        s = build_model(v).sequencer(x)
        assert tuple(s.shape) == (2, *seq_shape(seq, patch)), seq
    row = build_model(Variant(seq="row", hidden_size=8, num_layers=1)).sequencer(x)
    assert torch.equal(row[1, 5], x[1, :, 5, :].reshape(-1))  # step 5 = image row 5, channels then columns
    col = build_model(Variant(seq="column", hidden_size=8, num_layers=1)).sequencer(x)
    assert torch.equal(col[0, 7], x[0, :, :, 7].reshape(-1))
    pix = build_model(Variant(seq="pixel", hidden_size=8, num_layers=1)).sequencer(x)
    assert torch.equal(pix[0, 33], x[0, :, 1, 1])  # raster order: pixel 33 = row 1, column 1
    patch = build_model(Variant(seq="patch", patch_size=4, hidden_size=8, num_layers=1)).sequencer(x)
    assert torch.equal(patch[0, 9], x[0, :, 4:8, 4:8].reshape(-1))  # patch 9 = patch row 1, column 1


@pytest.mark.parametrize("kwargs,message", [
    ({"seq": "diagonal"}, "unknown seq 'diagonal'"),
    ({"impl": "fast"}, "unknown impl 'fast'"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"hidden_size": -3}, "hidden_size must be a positive integer"),
    ({"num_layers": 1.5}, "num_layers must be a positive integer"),
    ({"seq": "patch", "patch_size": 5}, "patch size 5 does not divide 32"),
    ({"seq": "patch"}, "seq patch needs a patch size"),
    ({"seq": "row", "patch_size": 4}, "only meaningful with seq patch"),
    ({"dtype": "float16"}, "unknown dtype"),
    ({"dropout": 1.0}, "dropout must be in [0, 1)"),
])
def test_bad_variants_are_refused_with_one_line(kwargs, message):
    with pytest.raises(SpecError) as err:
        Variant(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_variant_is_frozen_and_hashable():
    v = Variant()
    assert hash(v) == hash(Variant()) and {v: 1}[Variant()] == 1
    with pytest.raises(Exception):
        v.hidden_size = 5


def test_gemm_flops_by_hand():
    # 1 layer, B=2, T=32, I=96, H=8: 2 * B * T * 4H * (I + H) = 2 * 2 * 32 * 32 * 104
    v = Variant(seq="row", hidden_size=8, num_layers=1, batch_size=2)
    assert lstm_gemm_flops(v, "infer") == 2 * 2 * 32 * 32 * 104
    assert lstm_gemm_flops(v, "train") == 3 * 2 * 2 * 32 * 32 * 104
    # second layer's input is H (x2 directions when bidirectional)
    v2 = Variant(seq="row", hidden_size=8, num_layers=2, batch_size=2, bidirectional=True)
    assert lstm_gemm_flops(v2, "infer") == 2 * (2 * 2 * 32 * 32 * 104) + 2 * (2 * 2 * 32 * 32 * (16 + 8))


# ---------------------------------------------------------------------------------------------------------
# The spec: one rule per field (harness.spec.RULES), used by the dataclasses, the suites and the CLI


def test_every_spec_field_has_a_rule_help_and_unit():
    import dataclasses
    from harness.spec import RULES, TrainConfig, TrialSpec
    for cls in (Variant, TrainConfig, TrialSpec):
        for f in dataclasses.fields(cls):
            assert set(f.metadata) == {"help", "unit"} and f.metadata["help"] and f.metadata["unit"], f.name
            assert "\n" not in f.metadata["help"], f.name
            assert f.name in RULES or f.name in ("variant", "train", "suite"), f.name


@pytest.mark.parametrize("name,value,message", [
    ("hidden_size", True, "hidden_size must not be true/false, got True"),
    ("hidden_size", 70000, "hidden_size 70000 is beyond what this harness sweeps (at most 65536)"),
    ("lr", float("nan"), "lr must be a finite number, got nan"),
    ("lr", "1e-3", "lr must be a number, got the string '1e-3' (YAML reads it as text: write 0.001)"),
    ("lr", 0, "lr must be a positive number, got 0"),
    ("weight_decay", -1, "weight_decay must be a number >= 0, got -1"),
    ("label_smoothing", 1, "label_smoothing must be in [0, 1), got 1"),
    ("target_accuracy", 0.5, "target_accuracy must be a list of fractions, got 0.5"),
    ("target_accuracy", [0.5, 1.5], "target_accuracy values are fractions in (0, 1], got 1.5"),
    ("seed", 2 ** 32, "seed must be an integer in [0, 2**32), got 4294967296"),
    ("threads", 2000, "threads 2000 is more than this harness allows (1024)"),
    ("device", "gpu", "unknown device 'gpu' (cpu, cuda or cuda:N)"),
    ("data", "imagenet", "unknown data 'imagenet' (choose from cifar10, synthetic)"),
    ("time_budget_s", -2, "time_budget_s must be a positive number, got -2"),
    ("patch_size", 16, "patch size 16 gives 4 steps; choose from 2, 4, 8"),
    ("bidirectional", 1, "bidirectional must be true or false, got 1"),
])
def test_one_rule_one_message(name, value, message):
    from harness.spec import check_field
    with pytest.raises(SpecError) as err:
        check_field(name, value)
    assert str(err.value) == message


def test_rules_normalize_and_accept_unset():
    from harness.spec import TrainConfig, TrialSpec, check_field
    assert check_field("target_accuracy", [0.5, 0.7]) == (0.5, 0.7)
    assert TrainConfig(target_accuracy=[0.5]).target_accuracy == (0.5,)  # hashable again
    assert check_field("patch_size", None) is None and check_field("time_budget_s", None) is None
    with pytest.raises(SpecError, match="mode accuracy needs data cifar10"):
        TrialSpec(Variant(), mode="accuracy")


def test_budget_is_per_mode_unless_given():
    import math
    from harness.spec import DEFAULT_TIMING_BUDGET_S, TrialSpec
    for mode in ("train", "infer", "profile"):
        assert TrialSpec(Variant(), mode=mode).budget_s == DEFAULT_TIMING_BUDGET_S == 30.0
    acc = TrialSpec(Variant(), mode="accuracy", data="cifar10")
    assert acc.budget_s == math.inf and acc.flat()["time_budget_s"] is None  # JSON holds no inf
    given = TrialSpec(Variant(), mode="accuracy", data="cifar10", time_budget_s=60)
    assert given.budget_s == 60.0 and given.trial_id == acc.trial_id  # the budget is not the trial's identity


def test_trial_ids_are_the_ones_results_already_hold():
    """trial_id hashes the same fields to the same value as before the spec moved to harness.spec."""
    from harness.spec import TrainConfig, TrialSpec
    assert TrialSpec(Variant()).trial_id == "4968bccaa6cf"
    spec = TrialSpec(Variant(seq="patch", patch_size=4, dropout=0), mode="accuracy", data="cifar10",
                     time_budget_s=5, train=TrainConfig(lr=1, target_accuracy=(0.5, 1)))
    assert spec.trial_id == "bf99f05868cd"
