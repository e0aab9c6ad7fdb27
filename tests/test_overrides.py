"""`lstm-bench run/validate SUITE --set key=value`: a value is YAML, an axis or a list sweeps, a top-level key is
replaced, another field is fixed; validated as the file is, every problem one line naming the --set item."""

from __future__ import annotations

import copy
import hashlib
import shlex
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.errors import SuiteError
from harness.suites import SET_KEYS, load_suite, parse_sets, parse_suite

PLAUSIBLE = ["row", "patch", "naive", "turbo", "train", "accuracy", "cpu", "cuda", "cifar10", "synthetic", "adam", 0,
             1, 2, 4, 8, 16, -1, 0.5, 1.0, "1e-3", "", True, False, None, [], {}, [0.5, 0.9], [2, 4], ["row"], [[0.5]]]

SUITE = """\
name: base
axes:
  hidden_size: [16, 32]
  impl: [cudnn, naive]
fixed: {num_layers: 1, batch_size: 8}
modes: [train, infer]
cpus_per_trial: 1
time_budget_s: 2
"""


@pytest.fixture
def path(tmp_path) -> Path:
    p = tmp_path / "base.yaml"
    p.write_text(SUITE)
    return p


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(capsys, argv, expected: str) -> str:
    rc, _, err = cli(capsys, *argv)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    return err.strip().removeprefix("lstm-bench: error: ")


def test_list_value_replaces_an_axis(path, capsys):
    suite = load_suite(path, parse_sets(["hidden_size=[64,128,256]"]))
    assert [t.variant.hidden_size for t in suite.trials][::4] == [64, 128, 256]
    assert len(suite.trials) == 3 * 2 * 2
    assert suite.overrides == {"hidden_size": [64, 128, 256]}
    assert suite.raw["axes"]["hidden_size"] == [64, 128, 256]
    assert suite.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # of the file, whatever the overrides
    rc, out, _ = cli(capsys, "validate", str(path), "--set", "hidden_size=[64,128,256]")
    assert rc == 0 and out.startswith(f"{path}: ok, 12 trials")


def test_scalar_on_an_axis_is_a_one_value_axis(path, capsys):
    suite = load_suite(path, {"impl": "naive"})
    assert {t.variant.impl for t in suite.trials} == {"naive"} and len(suite.trials) == 2 * 2
    assert suite.raw["axes"]["impl"] == ["naive"]
    rc, out, _ = cli(capsys, "run", str(path), "--dry-run", "--set", "impl=naive")
    assert rc == 0 and "--set impl=naive" in out and out.splitlines()[-1].startswith("4 trials")


@pytest.mark.parametrize("item,check", [
    ("cpus_per_trial=2", lambda s: s.cpus_per_trial == 2 and {t.threads for t in s.trials} == {2}),
    ("time_budget_s=0.5", lambda s: s.time_budget_s == 0.5 and {t.budget_s for t in s.trials} == {0.5}),
    ("time_budget_s=null", lambda s: s.time_budget_s is None and {t.budget_s for t in s.trials} == {30.0}),
    ("modes=[infer]", lambda s: {t.mode for t in s.trials} == {"infer"}),
    ("modes=infer", lambda s: {t.mode for t in s.trials} == {"infer"}),
    ("repeats=2", lambda s: {t.repeat for t in s.trials} == {0, 1}),
    ("seed=7", lambda s: {t.seed for t in s.trials} == {7}),
    ("name=other", lambda s: s.name == "other" and {t.suite for t in s.trials} == {"other"}),
])
def test_top_level_key_is_replaced(path, item, check):
    assert check(load_suite(path, parse_sets([item])))


def test_other_fields_are_fixed_or_swept(path):
    suite = load_suite(path, parse_sets(["lr=0.01", "num_layers=2", "target_accuracy=[0.5, 0.7]"]))
    got = {(t.train.lr, t.variant.num_layers, t.train.target_accuracy) for t in suite.trials}
    assert got == {(0.01, 2, (0.5, 0.7))}
    assert suite.raw["fixed"] == {"num_layers": 2, "batch_size": 8, "lr": 0.01, "target_accuracy": [0.5, 0.7]}
    swept = load_suite(path, parse_sets(["num_layers=[1, 2]", "lr=[0.1, 0.01]"]))
    assert len(swept.trials) == 8 * 2 * 2 and "num_layers" not in swept.raw["fixed"]
    assert {(t.variant.num_layers, t.train.lr) for t in swept.trials} == {(1, 0.1), (1, 0.01), (2, 0.1), (2, 0.01)}


def test_accuracy_by_overrides_alone(path):
    suite = load_suite(path, parse_sets(["modes=[accuracy]", "data=cifar10", "time_budget_s=null"]))
    assert {(t.mode, t.data, t.budget_s) for t in suite.trials} == {("accuracy", "cifar10", float("inf"))}


def test_the_same_trials_as_the_edited_file(path, tmp_path):
    """An override is the file edited: same trials, same ids (only the sha256 and overrides differ)."""
    data = yaml.safe_load(SUITE)
    data["axes"]["hidden_size"], data["time_budget_s"], data["fixed"]["lr"] = [64], 5, 0.1
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(data))
    over = load_suite(path, parse_sets(["hidden_size=64", "time_budget_s=5", "lr=0.1"]))
    assert over.trials == load_suite(edited).trials


def test_overrides_do_not_change_the_callers_data_or_equality(path):
    data = yaml.safe_load(SUITE)
    before = copy.deepcopy(data)
    parse_suite(data, "mem", {"hidden_size": [8], "lr": 0.1, "modes": ["infer"]})
    assert data == before
    plain, with_none = load_suite(path), load_suite(path, {})
    assert plain == with_none and hash(plain) == hash(with_none) and plain.overrides == {}


def test_a_later_set_wins():
    assert parse_sets(["seed=1", "seed=2", "lr=1.0e-2"]) == {"seed": 2, "lr": 0.01}


def test_bad_key_is_one_line_naming_the_closest_key(path, capsys):
    msg = one_line(capsys, ["validate", str(path), "--set", "cpus_per_trail=1"],
                   "--set cpus_per_trail=1: unknown key (did you mean 'cpus_per_trial'?)")
    assert msg == "--set cpus_per_trail=1: unknown key (did you mean 'cpus_per_trial'?)"
    one_line(capsys, ["run", str(path), "--dry-run", "--set", "hiden_size=[1]"], "did you mean 'hidden_size'?")
    one_line(capsys, ["validate", str(path), "--set", "zzzzzz=1"], "--set zzzzzz=1: unknown key")


@pytest.mark.parametrize("item,file_text,problem", [
    ("hidden_size=-5", "  hidden_size: [-5]\n", "axes.hidden_size[0]: hidden_size must be a positive integer, got -5"),
    ("impl=[naive, turbo]", "  impl: [naive, turbo]\n", "axes.impl[1]: unknown impl 'turbo'"),
    ("time_budget_s=-2", "time_budget_s: -2\n", "time_budget_s: time_budget_s must be a positive number, got -2"),
    ("modes=[fly]", "modes: [fly]\n", "modes[0]: unknown mode 'fly'"),
])
def test_bad_value_reads_like_the_same_value_in_the_file(path, tmp_path, capsys, item, file_text, problem):
    msg = one_line(capsys, ["validate", str(path), "--set", item], problem)
    # the same value written in the file: the same problem at the same key path, with the file named instead
    lines = SUITE.splitlines(keepends=True)
    key = file_text.strip().split(":")[0]
    text = "".join(file_text if line.strip().startswith(key + ":") else line for line in lines)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SuiteError) as info:
        load_suite(bad)
    in_file = str(info.value)
    assert in_file.startswith(f"{bad}: {problem}")
    assert msg == "--set " + shlex.quote(item) + in_file.removeprefix(str(bad)), (msg, in_file)


def test_lr_written_1e_3_gets_the_same_hint(path, capsys):
    one_line(capsys, ["validate", str(path), "--set", "lr=1e-3"], "fixed.lr: lr must be a number, got the string "
                                                                  "'1e-3' (YAML reads it as text: write 0.001)")


def test_problem_the_file_has_still_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.replace("impl: [cudnn, naive]", "impl: [cudnn, nave]"))
    one_line(capsys, ["validate", str(bad), "--set", "hidden_size=64"], f"{bad}: axes.impl[1]: unknown impl 'nave'")


@pytest.mark.parametrize("item,expected", [
    ("hidden_size", "--set hidden_size: expected KEY=VALUE"),
    ("=64", "--set =64: expected KEY=VALUE"),
    ("hidden_size=[64,", "--set hidden_size=[64,: line 1, column"),
])
def test_malformed_item_is_one_line(path, capsys, item, expected):
    one_line(capsys, ["validate", str(path), "--set", item], expected)
    one_line(capsys, ["run", str(path), "--dry-run", "--set", item], expected)


# ---------------------------------------------------------------------------------------------------------
# Property: whatever the overrides hold, the answer is a Suite or one SuiteError line naming a --set item


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(list(SET_KEYS) + ["mode", "hiden_size", "axis"]), st.text(max_size=4)),
                       st.recursive(st.one_of(st.sampled_from(PLAUSIBLE).map(copy.deepcopy), st.none(),
                                              st.integers(-3, 2 ** 40), st.floats(), st.text(max_size=5)),
                                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                        st.sampled_from(list(SET_KEYS)), inner, max_size=2), max_leaves=6),
                       max_size=3))
def test_any_overrides_give_a_suite_or_one_line(overrides):
    data = yaml.safe_load(SUITE)
    try:
        suite = parse_suite(data, "f.yaml", overrides)
    except SuiteError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(("--set ", "f.yaml: ")), msg
        assert "cannot use this suite" not in msg, msg
    else:
        assert suite.trials and suite.overrides == overrides
