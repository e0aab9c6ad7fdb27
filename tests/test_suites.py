"""Suite files: the shipped suites load, the grid is the cross product, and every bad input is one SuiteError line."""

from __future__ import annotations

import copy
import hashlib
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import SuiteError
from harness.spec import TrialSpec
from harness.plan import format_plan, trial_resources
from harness.suites import EXCLUDE_FIELDS, TOP_KEYS, Suite, load_suite, parse_suite

SUITES = Path(__file__).resolve().parents[1] / "suites"
SHIPPED = sorted(SUITES.glob("*.yaml"))
EXPECTED_COUNTS = {"smoke": 24, "cudnn-vs-naive": 180, "sequencing": 28, "seed": 2, "seed-cpu": 1,
                   "gpu-full": 192, "accuracy": 4}


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def ids(suite: Suite) -> list[str]:
    return [t.trial_id for t in suite.trials]


# ---------------------------------------------------------------------------------------------------------
# Shipped suites

def test_every_expected_suite_is_shipped():
    assert {p.stem for p in SHIPPED} >= set(EXPECTED_COUNTS)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_suite_loads(path):
    suite = load_suite(path)
    assert suite.name == path.stem
    assert suite.description.strip()
    assert suite.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(suite.trials) == EXPECTED_COUNTS.get(suite.name, len(suite.trials)) >= 1
    assert len(set(ids(suite))) == len(suite.trials)
    for spec in suite.trials:
        assert spec.suite == suite.name
        assert TrialSpec.from_flat(spec.flat()).trial_id == spec.trial_id  # the record round-trips
    assert len(format_plan(suite).splitlines()) >= len(suite.trials) + 2


def test_smoke_is_small_cpu_and_synthetic():
    suite = load_suite(SUITES / "smoke.yaml")
    assert len(suite.trials) >= 12
    assert all(t.device == "cpu" and t.data == "synthetic" and t.threads == 2 for t in suite.trials)
    assert suite.cpus_per_trial == 2
    # one at a time on 2 cores must fit in about two minutes, leaving room for set-up and start-up
    assert len(suite.trials) * suite.time_budget_s <= 60
    assert {t.mode for t in suite.trials} == {"train", "infer"}
    assert {t.variant.impl for t in suite.trials} == {"cudnn", "naive", "lstmcell"}


def test_seed_suites_are_the_tutorial_recipe():
    gpu, cpu = load_suite(SUITES / "seed.yaml"), load_suite(SUITES / "seed-cpu.yaml")
    for spec in gpu.trials + cpu.trials:
        v, tr = spec.variant, spec.train
        assert (v.seq, v.hidden_size, v.num_layers, v.batch_size) == ("pixel", 128, 2, 32)
        assert (tr.optimizer, tr.lr, tr.normalize, tr.augment) == ("adam", 0.001, "half", "none")
        assert spec.mode == "accuracy" and spec.data == "cifar10"
    assert {t.device for t in gpu.trials} == {"cuda"} and {t.train.epochs for t in gpu.trials} == {10}
    assert [(t.device, t.threads, t.train.train_subset, t.train.epochs) for t in cpu.trials] == [("cpu", 2, 5000, 1)]


def test_gpu_full_excludes_lstmcell_pixel():
    suite = load_suite(SUITES / "gpu-full.yaml")
    assert not [t for t in suite.trials if t.variant.impl == "lstmcell" and t.variant.seq == "pixel"]
    assert [t for t in suite.trials if t.variant.impl == "naive" and t.variant.seq == "pixel"]


# ---------------------------------------------------------------------------------------------------------
# The grid

GRID = """\
name: grid
axes:
  hidden_size: [16, 32]
  impl: [cudnn, naive, lstmcell]
fixed: {num_layers: 1, batch_size: 8}
modes: [train, infer]
"""


def test_cross_product_count_and_order(tmp_path):
    suite = load_suite(write(tmp_path, GRID))
    assert len(suite.trials) == 2 * 3 * 2
    got = [(t.variant.hidden_size, t.variant.impl, t.mode) for t in suite.trials]
    assert got[:4] == [(16, "cudnn", "train"), (16, "cudnn", "infer"), (16, "naive", "train"), (16, "naive", "infer")]
    assert got[-1] == (32, "lstmcell", "infer")
    assert all(t.variant.num_layers == 1 and t.device == "cpu" and t.data == "synthetic" for t in suite.trials)
    assert all(t.seed == 0 and t.repeat == 0 and t.threads == 1 for t in suite.trials)
    # no time_budget_s in the file: each trial's mode decides (30 s for train and infer)
    assert all(t.time_budget_s is None and t.budget_s == 30 for t in suite.trials)


def test_exclude_removes_exactly_the_matching_trials(tmp_path):
    base = load_suite(write(tmp_path, GRID + "devices: [cpu, cuda]\n", "a.yaml"))
    assert len(base.trials) == 24
    text = GRID + ("devices: [cpu, cuda]\n"
                   "exclude:\n  - {impl: naive, device: cuda}\n  - {hidden_size: 16, mode: infer}\n")
    suite = load_suite(write(tmp_path, text, "b.yaml"))
    # naive on cuda: 2 hidden x 2 modes = 4; hidden 16 infer: 3 impls x 2 devices = 6; both: 1 -> 9 gone
    assert len(suite.trials) == 24 - 9
    gone = set(ids(base)) - set(ids(suite))
    assert len(gone) == 9 and set(ids(suite)) <= set(ids(base))
    for t in base.trials:
        matches = ((t.variant.impl == "naive" and t.device == "cuda")
                   or (t.variant.hidden_size == 16 and t.mode == "infer"))
        assert (t.trial_id in gone) == matches


def test_sample_plan_is_a_top_level_key_that_leaves_trial_ids_alone(tmp_path):
    standard = load_suite(write(tmp_path, GRID))
    pair = load_suite(write(tmp_path, GRID + "sample_plan: pair\n", "p.yaml"))
    assert {t.sample_plan for t in standard.trials} == {"standard"} and {t.sample_plan for t in pair.trials} == {"pair"}
    assert ids(standard) == ids(pair)  # the same trials, sampled another way
    with pytest.raises(SuiteError, match=r"sample_plan: unknown sample_plan 'quick' \(choose from standard, pair\)"):
        load_suite(write(tmp_path, GRID + "sample_plan: quick\n", "q.yaml"))


def test_reruns_is_a_top_level_key_unset_by_default(tmp_path):
    assert load_suite(write(tmp_path, GRID)).reruns is None  # the sweep's default: cluster.CONTAMINATED_RERUNS
    none = load_suite(write(tmp_path, GRID + "reruns: 0\n", "r.yaml"))
    assert none.reruns == 0 and ids(none) == ids(load_suite(write(tmp_path, GRID)))


def test_repeats_seed_threads_and_resources(tmp_path):
    text = GRID + "devices: [cpu, cuda]\nrepeats: 3\nseed: 7\ncpus_per_trial: 2\ntime_budget_s: 1.5\n"
    suite = load_suite(write(tmp_path, text))
    assert len(suite.trials) == 24 * 3 and len(set(ids(suite))) == 72
    assert [t.repeat for t in suite.trials[:3]] == [0, 1, 2]
    assert all(t.seed == 7 and t.time_budget_s == 1.5 for t in suite.trials)
    mem = {"train": 2048 * 2**20, "infer": 1024 * 2**20}  # each mode's default reservation (memory_mb unset)
    for t in suite.trials:  # timing trials are exclusive by default: they also take their node's timing slot
        if t.device == "cpu":
            assert t.threads == 2 and trial_resources(t, suite.cpus_per_trial) == {
                "CPU": 2, "timing_slot": 1, "memory": mem[t.mode]}
            assert trial_resources(t, suite.cpus_per_trial, "shared", 300) == {"CPU": 2, "memory": 300 * 2**20}
        else:
            assert t.threads is None and trial_resources(t, suite.cpus_per_trial) == {
                "CPU": 1, "GPU": 1, "timing_slot": 1, "memory": mem[t.mode]}
    plan = format_plan(suite)
    assert plan.splitlines()[-1].startswith("72 trials: 36 CPU, 36 GPU")
    assert all(i in plan for i in ids(suite))


def test_trial_ids_are_stable(tmp_path):
    path = write(tmp_path, GRID)
    first = ids(load_suite(path))
    assert ids(load_suite(path)) == first
    assert ids(load_suite(write(tmp_path, GRID + "time_budget_s: 99\n", "t.yaml"))) == first
    assert ids(load_suite(write(tmp_path, GRID.replace("grid", "other"), "n.yaml"))) == first
    changed = ids(load_suite(write(tmp_path, GRID.replace("[16, 32]", "[16, 64]"), "h.yaml")))
    assert changed[:6] == first[:6] and not set(changed[6:]) & set(first)


def test_patch_size_only_for_patch_and_deduped(tmp_path):
    suite = load_suite(write(tmp_path, "name: p\naxes: {seq: [row, patch], patch_size: [2, 4]}\n"))
    assert [t.variant.label.split("/")[0] for t in suite.trials] == ["row", "patch2", "patch4"]
    assert suite.trials[0].variant.patch_size is None


def test_top_level_data_and_target_accuracy(tmp_path):
    text = "name: acc\ndata: cifar10\nmodes: [accuracy]\nfixed: {target_accuracy: [0.5, 0.7]}\n"
    (spec,) = load_suite(write(tmp_path, text)).trials
    assert spec.data == "cifar10" and spec.train.target_accuracy == (0.5, 0.7)


def test_swept_training_fields_show_in_the_plan(tmp_path):
    suite = load_suite(write(tmp_path, "name: lr\naxes: {lr: [0.001, 0.01]}\n"))
    lines = format_plan(suite).splitlines()
    assert any("lr=0.001" in line for line in lines) and any("lr=0.01" in line for line in lines)


def test_parse_suite_matches_load_suite_and_keeps_input(tmp_path):
    import yaml
    data = yaml.safe_load(GRID)
    before = copy.deepcopy(data)
    assert ids(parse_suite(data, "mem")) == ids(load_suite(write(tmp_path, GRID)))
    assert data == before


# ---------------------------------------------------------------------------------------------------------
# Errors: one line, with the file, the key path and the problem

ERRORS = [
    ("name: x\naxes: {hiden_size: [1]}\n", "axes.hiden_size", "did you mean 'hidden_size'?"),
    ("name: x\naxis: {hidden_size: [1]}\n", "axis", "did you mean 'axes'?"),
    ("name: x\nexclude: [{impll: naive}]\n", "exclude[0].impll", "did you mean 'impl'?"),
    ("name: x\naxes: {hidden_size: []}\n", "axes.hidden_size", "empty axis"),
    ("name: x\naxes: {hidden_size: 64}\n", "axes.hidden_size", "must be a list of values, got int"),
    ("name: x\naxes: {hidden_size: [1, 2, -5]}\n", "axes.hidden_size[2]",
     "hidden_size must be a positive integer, got -5"),
    ("name: x\naxes: {hidden_size: [1, 1]}\n", "axes.hidden_size[1]", "duplicate"),
    ("name: x\naxes: {seq: [row, diagonal]}\n", "axes.seq[1]", "unknown seq 'diagonal'"),
    ("name: x\naxes: {impl: [patch]}\n", "axes.impl[0]", "unknown impl 'patch'"),
    ("name: x\naxes: {patch_size: [3]}\n", "axes.patch_size[0]", "does not divide 32"),
    ("name: x\naxes: {num_layers: [true]}\n", "axes.num_layers[0]", "true/false"),
    ("name: x\nfixed: {lr: 1e-3}\n", "fixed.lr", "write 0.001"),
    ("name: x\nfixed: {lr: .nan}\n", "fixed.lr", "finite"),
    ("name: x\nfixed: {optimizer: adamm}\n", "fixed.optimizer", "unknown optimizer 'adamm'"),
    ("name: x\naxes: {impl: [naive]}\nfixed: {impl: naive}\n", "fixed.impl", "also an axis"),
    ("name: x\naxes: {seq: [row, patch]}\n", "trial {seq: patch, mode: train, device: cpu}",
     "seq patch needs a patch size"),
    ("name: x\nmodes: [accuracy]\n", "trial {mode: accuracy, device: cpu}", "needs data cifar10"),
    ("name: x\nmodes: 3\n", "modes", "must be a list of strings, got int"),
    ("name: x\nmodes: [train, fly]\n", "modes[1]", "unknown mode 'fly'"),
    ("name: x\ndevices: []\n", "devices", "empty list"),
    ("name: x\ndevices: [tpu]\n", "devices[0]", "unknown device 'tpu'"),
    ("name: x\ncpus_per_trial: two\n", "cpus_per_trial", "must be a positive integer, got 'two'"),
    ("name: x\ncpus_per_trial: true\n", "cpus_per_trial", "must be a positive integer, got True"),
    ("name: x\nrepeats: 0\n", "repeats", "must be a positive integer, got 0"),
    ("name: x\nseed: -1\n", "seed", "got -1"),
    ("name: x\nreruns: -1\n", "reruns", "must be an integer >= 0, got -1"),
    ("name: x\nreruns: 1.5\n", "reruns", "1.5"),
    ("name: x\ntime_budget_s: -2\n", "time_budget_s", "must be a positive number, got -2"),
    ("name: x\ndata: imagenet\n", "data", "unknown data 'imagenet'"),
    ("name: x\ndata: cifar10\nfixed: {data: cifar10}\n", "data", "also set under fixed"),
    ("description: no name\n", "name", "missing"),
    ("name: [x]\n", "name", "must be a word"),
    ("name: x\ndescription: 3\n", "description", "must be a string, got int"),
    ("name: x\nhidden_size: 3\n", "hidden_size", "under axes or fixed"),
    ("name: x\naxes: {mode: [train]}\n", "axes.mode", "set 'modes' at the top level"),
    ("name: x\nexclude: {impl: naive}\n", "exclude", "must be a list of mappings"),
    ("name: x\nexclude: [naive]\n", "exclude[0]", "must be a mapping"),
    ("name: x\nexclude: [{}]\n", "exclude[0]", "empty entry"),
    ("name: x\nexclude: [{impl: naiv}]\n", "exclude[0].impl", "unknown impl 'naiv'"),
    ("name: x\nexclude: [{device: gpu}]\n", "exclude[0].device", "unknown device 'gpu'"),
    ("name: x\naxes: {impl: [naive]}\nexclude: [{impl: naive}]\n", "exclude", "no trials left after exclude"),
    ("name: x\naxes: {batch_size: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}\nrepeats: 100000\n", "axes", "limit"),
    ("name: x\n3: y\n", "3", "keys must be strings"),
    ("- name: x\n", "", "top level must be a mapping of keys, got list"),
    ("", "", "got null (the file is empty)"),
    ("name: x\naxes: [1\n", "line 3, column 1", "invalid YAML"),
    ("name: x\n  bad: indent\n", "line 2, column 6", "invalid YAML"),
]


@pytest.mark.parametrize("text,key_path,problem", ERRORS, ids=[f"{i}-{e[1] or 'top'}" for i, e in enumerate(ERRORS)])
def test_error_is_one_line_with_file_path_and_problem(tmp_path, text, key_path, problem):
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    msg = str(info.value)
    assert "\n" not in msg and len(msg.splitlines()) == 1
    assert msg.startswith(f"{path}: "), msg
    assert f": {key_path}: " in msg if key_path else True, msg
    assert problem in msg, msg


def test_missing_file_directory_and_bad_bytes(tmp_path):
    with pytest.raises(SuiteError, match=r"nope\.yaml: no such suite file$"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(SuiteError, match="is a directory"):
        load_suite(tmp_path)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SuiteError, match=r"bin\.yaml: not UTF-8"):
        load_suite(bad)
    ctrl = write(tmp_path, "name: x\x07\n", "ctrl.yaml")
    with pytest.raises(SuiteError) as info:
        load_suite(ctrl)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{ctrl}: invalid YAML")


def test_long_values_do_not_make_long_messages(tmp_path):
    with pytest.raises(SuiteError) as info:
        load_suite(write(tmp_path, "name: x\naxes: {seq: [" + "z" * 5000 + "]}\n"))
    assert len(str(info.value)) <= 400 and "axes.seq[0]" in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Property: whatever a mutated suite holds, the answer is a Suite or one SuiteError line

BASE = {
    "name": "fuzz", "description": "a valid suite to mutate",
    "axes": {"seq": ["row", "patch"], "patch_size": [4], "impl": ["cudnn", "naive"]},
    "fixed": {"hidden_size": 16, "num_layers": 1, "lr": 0.01, "target_accuracy": [0.5]},
    "exclude": [{"impl": "naive", "seq": "patch", "device": "cpu"}],
    "modes": ["train", "infer"], "devices": ["cpu"], "cpus_per_trial": 1, "repeats": 1, "seed": 0,
    "time_budget_s": 5, "data": "synthetic",
}
PLAUSIBLE = ["row", "column", "pixel", "patch", "cnn", "cudnn", "naive", "lstmcell", "float32", "bfloat16",
             "train", "infer", "accuracy", "profile", "cpu", "cuda", "cuda:0", "cifar10", "synthetic", "adam",
             "onecycle", "flip-crop", "half", 0, 1, 2, 3, 4, 8, 16, -1, 0.5, 1.0, 1e-3, "1e-3", "", True, False,
             None, [], {}, [0.5, 0.9], [2, 4], ["row"]]
KEYS = list(TOP_KEYS) + list(EXCLUDE_FIELDS)
# a fresh copy each draw: mutating a shared [] from PLAUSIBLE would change later examples
plausible = st.sampled_from(PLAUSIBLE).map(copy.deepcopy)
scalars = st.one_of(plausible, st.none(), st.booleans(), st.integers(-5, 2 ** 70),
                    st.floats(), st.text(max_size=6))
junk = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=5), st.integers(), st.none()), inner,
                    max_size=3)),
    max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _typo(draw, word: str) -> str:
    i = draw(st.integers(0, len(word)))
    op = draw(st.sampled_from(["drop", "double", "swap", "insert"]))
    if op == "drop" and word:
        return word[:i] + word[i + 1:]
    if op == "double" and i < len(word):
        return word[:i] + word[i] + word[i:]
    if op == "swap" and i + 1 < len(word):
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + draw(st.sampled_from("aeisx_")) + word[i:]


def mutate(draw, doc):
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(_paths(doc))))
        op = draw(st.sampled_from(["drop", "typo", "replace", "plausible", "empty", "add", "wrap", "dup"]))
        if not path:  # the root: add a key, or replace the whole thing now and then
            if op == "replace":
                doc = draw(junk)
            elif isinstance(doc, dict):
                doc[draw(st.sampled_from(KEYS))] = draw(junk)
            continue
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key, value = path[-1], parent[path[-1]]
        if op == "drop":
            del parent[key]
        elif op == "typo" and isinstance(parent, dict) and isinstance(key, str):
            parent[_typo(draw, key)] = parent.pop(key)
        elif op == "replace":
            parent[key] = draw(junk)
        elif op == "plausible":
            parent[key] = draw(plausible)
        elif op == "empty":
            parent[key] = draw(st.sampled_from([[], {}, None, ""]))
        elif op == "add" and isinstance(value, dict):
            value[draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=5)))] = draw(junk)
        elif op == "add" and isinstance(value, list):
            value.append(draw(st.one_of(plausible, junk)))
        elif op == "wrap":
            parent[key] = [value]
        elif op == "dup" and isinstance(value, list) and value:
            value.append(copy.deepcopy(value[0]))
    return doc


def test_base_suite_for_the_property_is_valid():
    suite = parse_suite(copy.deepcopy(BASE), "fuzz.yaml")
    assert len(suite.trials) == 6  # row x 2 impls x 2 modes, patch4 x cudnn x 2 modes


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_suite_is_a_suite_or_one_line_suite_error(data):
    doc = mutate(data.draw, copy.deepcopy(BASE))
    try:
        suite = parse_suite(doc, "fuzz.yaml")
    except SuiteError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg.splitlines()) == 1 and msg.startswith("fuzz.yaml: ")
        # the catch-all is a safety net: every mutation here should meet a specific check first
        assert "cannot use this suite" not in msg, msg
        # a bad single value is reported at its key; only true combination problems name a trial
        if ": trial {" in msg:
            assert "needs a patch size" in msg or "needs data cifar10" in msg, msg
    else:
        assert isinstance(suite, Suite) and len(suite.trials) >= 1
        assert len({t.trial_id for t in suite.trials}) == len(suite.trials)
        assert all(isinstance(t, TrialSpec) and t.suite == suite.name for t in suite.trials)


YAMLISH = st.lists(st.sampled_from(list("name: x\n[]{},-?&*!|>'\"#%@`\t 0123456789abc.") + ["axes", "seq", "name"]),
                   max_size=60).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(YAMLISH, st.text(max_size=40)))
def test_any_file_text_is_a_suite_or_one_line_suite_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_suite(path)
        except SuiteError as e:
            assert "\n" not in str(e) and str(e).startswith(f"{path}: ")
