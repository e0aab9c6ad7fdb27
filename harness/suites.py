"""Suites: a YAML file that names a grid of trials.

    name: smoke
    description: what it answers, roughly how long it takes
    axes:    {seq: [row, patch], hidden_size: [64, 128]}   # the sweep is the cross product, in this order
    fixed:   {patch_size: 4, num_layers: 1}                # one value each
    exclude: [{impl: naive, seq: pixel, device: cpu}]      # a trial matching every pair of an entry is skipped
    modes: [train, infer]     devices: [cpu]     data: synthetic
    cpus_per_trial: 1         repeats: 1         seed: 0         time_budget_s: 30

The whole file is validated, and every trial built, before anything runs: a sweep that fails on trial 97
of 100 an hour in is worse than one that refuses to start. Every problem is a SuiteError whose message is
one line, "<file>: <key path>: <problem>", so the CLI can print it as is.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import SpecError, SuiteError
from .spec import DATA, MODES, TrainConfig, TrialSpec
from .variants import PATCH_SIZES, Variant

VARIANT_FIELDS = tuple(f.name for f in dataclasses.fields(Variant))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
GRID_FIELDS = VARIANT_FIELDS + TRAIN_FIELDS + ("data",)  # what axes and fixed may set
EXCLUDE_FIELDS = GRID_FIELDS + ("mode", "device")
TOP_KEYS = ("name", "description", "axes", "fixed", "exclude", "modes", "devices", "cpus_per_trial",
            "repeats", "seed", "time_budget_s", "data")
DEVICES = ("cpu", "cuda")  # a suite says which kind; which cuda:N a trial lands on is Ray's business
DEFAULTS = {**dataclasses.asdict(Variant()), **dataclasses.asdict(TrainConfig()), "data": "synthetic"}
LABEL_FIELDS = {"seq", "patch_size", "hidden_size", "num_layers", "bidirectional", "impl", "batch_size", "dtype"}
MAX_TRIALS = 100_000  # a typo like repeats: 100000000 should be an error, not an hour of building specs
MAX_MESSAGE = 400


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    path: str
    sha256: str  # of the file's bytes (parse_suite alone: of the data's canonical JSON)
    trials: tuple[TrialSpec, ...]
    cpus_per_trial: int
    time_budget_s: float
    raw: dict = field(compare=False, hash=False, repr=False)  # the parsed YAML, for the run record


# ---------------------------------------------------------------------------------------------------------
# Messages

def _err(source: str, path: str, problem: str) -> SuiteError:
    msg = f"{source}: {path}: {problem}" if path else f"{source}: {problem}"
    msg = " ".join(msg.splitlines())  # one line, whatever a file name or a YAML message holds
    if len(msg) > MAX_MESSAGE:  # a 10 kB string value should not make a 10 kB error line
        msg = msg[:MAX_MESSAGE - 3] + "..."
    return SuiteError(msg)


def _show(value) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _type(value) -> str:
    return {type(None): "null", dict: "mapping", str: "string"}.get(type(value), type(value).__name__)


def _at(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_key(key: str, valid, path: str) -> str:
    if path == "" and key in GRID_FIELDS:
        return f"unknown top-level key (put {key!r} under axes or fixed)"
    if path != "" and (key in TOP_KEYS or key + "s" in TOP_KEYS):
        top = key if key in TOP_KEYS else key + "s"
        return f"not a per-trial field (set {top!r} at the top level)"
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (valid keys: {', '.join(valid)})"


def _check_keys(source: str, mapping: dict, valid, path: str) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise _err(source, _at(path, _show(key)), f"keys must be strings, got {_type(key)}")
        if key not in valid:
            raise _err(source, _at(path, key), _unknown_key(key, valid, path))


# ---------------------------------------------------------------------------------------------------------
# Values

def _numeric_text(value) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


def _field_value(name: str, value):
    """Check one value of a grid field on its own (the other fields at their defaults); return it normalized.
    Raises SpecError with the variant/spec's own message."""
    # Python calls True an int; a suite that says `hidden_size: true` has made a mistake.
    if isinstance(value, bool) and name != "bidirectional":
        raise SpecError(f"{name} must not be true/false, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):  # lr: .nan would pass `lr <= 0` checks
        raise SpecError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, str) and not isinstance(DEFAULTS[name], str) and _numeric_text(value):
        # PyYAML reads 1e-3 as a string (YAML 1.1 wants 1.0e-3): say so rather than "got '1e-3'".
        raise SpecError(f"{name} must be a number, got the string {value!r} (write 0.001 or 1.0e-3, not 1e-3)")
    if name == "data":
        if value not in DATA:
            raise SpecError(f"unknown data {_show(value)} (choose from {', '.join(DATA)})")
        return value
    if name == "target_accuracy":
        if not isinstance(value, list) or any(isinstance(t, bool) for t in value):
            raise SpecError(f"target_accuracy must be a list of fractions, got {_show(value)}")
        value = tuple(value)
    if name == "patch_size" and value is None:
        return None  # fine for every seq but patch; the combination check catches that one
    if name in VARIANT_FIELDS:
        # patch_size is only valid beside seq patch, and seq patch only beside a patch size.
        if name == "patch_size":
            Variant(seq="patch", patch_size=value)
        elif name == "seq" and value == "patch":
            Variant(seq="patch", patch_size=PATCH_SIZES[0])
        else:
            Variant(**{name: value})
    else:
        TrainConfig(**{name: value})
    return value


def _values(source: str, raw, path: str, name: str):
    """An axis: a non-empty list of distinct, individually valid values."""
    if not isinstance(raw, list):
        hint = " (put a single value under fixed)" if path.startswith("axes") else ""
        raise _err(source, path, f"must be a list of values, got {_type(raw)}{hint}")
    if not raw:
        raise _err(source, path, "empty axis")
    out = []
    for i, value in enumerate(raw):
        try:
            value = _field_value(name, value)
        except SpecError as e:
            raise _err(source, f"{path}[{i}]", str(e)) from None
        if value in out:
            raise _err(source, f"{path}[{i}]", f"duplicate value {_show(raw[i])}")
        out.append(value)
    return out


def _choices(source: str, data: dict, key: str, choices, default) -> list[str]:
    raw = data.get(key, default)
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        got = _type(raw) if not isinstance(raw, list) else "a list holding " + ", ".join(
            sorted({_type(v) for v in raw if not isinstance(v, str)}))
        raise _err(source, key, f"must be a list of strings, got {got}")
    if not raw:
        raise _err(source, key, "empty list")
    for i, v in enumerate(raw):
        if v not in choices:
            raise _err(source, f"{key}[{i}]", f"unknown {key[:-1]} {_show(v)} (choose from {', '.join(choices)})")
        if v in raw[:i]:
            raise _err(source, f"{key}[{i}]", f"duplicate value {v!r}")
    return list(raw)


def _int(source: str, data: dict, key: str, default: int, low: int, high: int | None = None) -> int:
    value = data.get(key, default)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value < high)
    if not ok:
        what = "a positive integer" if low == 1 and high is None else f"an integer in [{low}, {high})"
        raise _err(source, key, f"must be {what}, got {_show(value)}")
    return value


def _positive_number(source: str, data: dict, key: str, default: float) -> float:
    value = data.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value <= 0):
        hint = " (write 100.0 or 1.0e2, not 1e2)" if isinstance(value, str) and _numeric_text(value) else ""
        raise _err(source, key, f"must be a positive number, got {_show(value)}{hint}")
    return float(value)


def _mapping(source: str, data: dict, key: str) -> dict:
    value = data.get(key, {})
    if value is None:  # `fixed:` with nothing under it
        return {}
    if not isinstance(value, dict):
        raise _err(source, key, f"must be a mapping of field: value, got {_type(value)}")
    return value


# ---------------------------------------------------------------------------------------------------------
# The suite

def parse_suite(data: dict, source: str = "<suite>") -> Suite:
    """Validate a parsed suite and build its trials. Raises SuiteError, and nothing else, for any input."""
    try:
        return _parse(data, source)
    except SuiteError:
        raise
    except Exception as e:  # a safety net: every problem we know of has its own message above
        raise _err(source, "", f"cannot use this suite ({type(e).__name__}: {e})") from e


def _parse(data, source: str) -> Suite:
    if not isinstance(data, dict):
        empty = " (the file is empty)" if data is None else ""
        raise _err(source, "", f"the top level must be a mapping of keys, got {_type(data)}{empty}")
    _check_keys(source, data, TOP_KEYS, "")

    if "name" not in data:
        raise _err(source, "name", "missing (every suite needs a name)")
    name = data["name"]
    # The name ends up in result paths and Ray trial names: keep it to a plain word.
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._-" for c in name) \
            or not name[0].isalnum() or not name.isascii():
        raise _err(source, "name", f"must be a word of letters, digits, '.', '_' or '-', got {_show(name)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _err(source, "description", f"must be a string, got {_type(description)}")

    axes_raw, fixed_raw = _mapping(source, data, "axes"), _mapping(source, data, "fixed")
    _check_keys(source, axes_raw, GRID_FIELDS, "axes")
    _check_keys(source, fixed_raw, GRID_FIELDS, "fixed")
    axes = {k: _values(source, v, f"axes.{k}", k) for k, v in axes_raw.items()}
    fixed = {}
    for k, v in fixed_raw.items():
        if k in axes:
            raise _err(source, f"fixed.{k}", "also an axis (a field is either fixed or swept)")
        try:
            fixed[k] = _field_value(k, v)
        except SpecError as e:
            raise _err(source, f"fixed.{k}", str(e)) from None
    if "data" in data:  # top-level data is shorthand for fixed.data
        if "data" in axes or "data" in fixed:
            raise _err(source, "data", f"also set under {'axes' if 'data' in axes else 'fixed'}")
        try:
            fixed["data"] = _field_value("data", data["data"])
        except SpecError as e:
            raise _err(source, "data", str(e)) from None

    modes = _choices(source, data, "modes", MODES, ["train"])
    devices = _choices(source, data, "devices", DEVICES, ["cpu"])
    cpus = _int(source, data, "cpus_per_trial", 1, 1)
    repeats = _int(source, data, "repeats", 1, 1)
    seed = _int(source, data, "seed", 0, 0, 2 ** 32)  # what numpy and torch both accept
    budget = _positive_number(source, data, "time_budget_s", 30.0)
    excludes = _excludes(source, data)

    total = math.prod(len(v) for v in axes.values()) * len(modes) * len(devices) * repeats
    if total > MAX_TRIALS:
        raise _err(source, "axes", f"{total} trials before exclude; the limit is {MAX_TRIALS}")

    base = {**DEFAULTS, **fixed}
    specs: dict[str, TrialSpec] = {}
    for combo in itertools.product(*axes.values()):
        values = {**base, **dict(zip(axes, combo))}
        if values["seq"] != "patch":
            # patch_size means nothing for other seqs; the duplicate trials this makes are dropped below.
            values["patch_size"] = None
        for mode, device in itertools.product(modes, devices):
            row = {**values, "mode": mode, "device": device}
            if any(all(row[k] == v for k, v in entry.items()) for entry in excludes):
                continue
            try:
                variant = Variant(**{k: values[k] for k in VARIANT_FIELDS})
                train = TrainConfig(**{k: values[k] for k in TRAIN_FIELDS})
                for repeat in range(repeats):
                    spec = TrialSpec(variant=variant, mode=mode, device=device, data=values["data"], seed=seed,
                                     threads=cpus if device == "cpu" else None, time_budget_s=budget,
                                     repeat=repeat, train=train, suite=name)
                    specs.setdefault(spec.trial_id, spec)
            except SpecError as e:
                shown = {**dict(zip(axes, combo)), "mode": mode, "device": device}
                trial = ", ".join(f"{k}: {v if isinstance(v, str) else _show(v)}" for k, v in shown.items())
                raise _err(source, f"trial {{{trial}}}", str(e)) from None
    if not specs:
        raise _err(source, "exclude", "no trials left after exclude")

    canonical = json.dumps(data, sort_keys=True, default=str).encode()
    return Suite(name=name, description=description, path=source, sha256=hashlib.sha256(canonical).hexdigest(),
                 trials=tuple(specs.values()), cpus_per_trial=cpus, time_budget_s=budget, raw=data)


def _excludes(source: str, data: dict) -> list[dict]:
    raw = data.get("exclude", [])
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _err(source, "exclude", f"must be a list of mappings, got {_type(raw)}")
    out = []
    for i, entry in enumerate(raw):
        path = f"exclude[{i}]"
        if not isinstance(entry, dict):
            raise _err(source, path, f"must be a mapping of field: value, got {_type(entry)}")
        if not entry:
            raise _err(source, path, "empty entry (it would exclude every trial)")
        _check_keys(source, entry, EXCLUDE_FIELDS, path)
        checked = {}
        for k, v in entry.items():
            choices = {"mode": MODES, "device": DEVICES}.get(k)
            if choices is not None:
                if not isinstance(v, str) or v not in choices:
                    raise _err(source, f"{path}.{k}", f"unknown {k} {_show(v)} (choose from {', '.join(choices)})")
                checked[k] = v
                continue
            try:  # a typo here would silently exclude nothing, so values are checked like axis values
                checked[k] = _field_value(k, v)
            except SpecError as e:
                raise _err(source, f"{path}.{k}", str(e)) from None
        out.append(checked)
    return out


def load_suite(path: str | Path) -> Suite:
    """Read, parse and validate a suite file. Raises SuiteError, and nothing else, for any file."""
    source = str(path)
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise _err(source, "", "no such suite file") from None
    except IsADirectoryError:
        raise _err(source, "", "is a directory, not a suite file") from None
    except (OSError, ValueError) as e:  # permissions, a NUL in the path, ...
        raise _err(source, "", f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _err(source, "", f"not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _err(source, where, f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:  # e.g. a control character (ReaderError): no problem_mark
        raise _err(source, "", f"invalid YAML: {e}") from None
    except Exception as e:  # RecursionError on absurdly deep nesting, a 5000-digit integer, ...
        raise _err(source, "", f"invalid YAML ({type(e).__name__}: {e})") from None
    suite = parse_suite(data, source)
    return dataclasses.replace(suite, sha256=hashlib.sha256(blob).hexdigest())


# ---------------------------------------------------------------------------------------------------------
# Scheduling and the dry-run plan

def trial_resources(spec: TrialSpec, cpus_per_trial: int) -> dict:
    """Ray resources for one trial: a CPU trial gets its threads' worth of cores; a GPU trial one GPU and the
    one core that feeds it."""
    if spec.device.startswith("cuda"):
        return {"CPU": 1, "GPU": 1}
    return {"CPU": cpus_per_trial}


def format_plan(suite: Suite) -> str:
    """What `lstm-bench run SUITE --dry-run` prints: one line per trial, then the totals."""
    # Swept fields the label does not show (lr, dropout, ...) get their own column, or two trials would
    # look identical in the plan.
    axes = suite.raw.get("axes") or {}
    extra_fields = [k for k in axes if k not in LABEL_FIELDS and k != "data"]
    show_repeat = any(s.repeat for s in suite.trials)
    header = ["#", "trial_id", "label", "mode", "device", "data", "resources"]
    header += ["repeat"] if show_repeat else []
    header += ["swept"] if extra_fields else []
    rows = []
    for i, spec in enumerate(suite.trials, 1):
        res = " ".join(f"{k}={v}" for k, v in trial_resources(spec, suite.cpus_per_trial).items())
        row = [str(i), spec.trial_id, spec.variant.label, spec.mode, spec.device, spec.data, res]
        row += [str(spec.repeat)] if show_repeat else []
        if extra_fields:
            flat = spec.flat()
            row.append(" ".join(f"{k}={flat[k]}" for k in extra_fields))
        rows.append(row)
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    lines = [f"suite {suite.name} ({suite.path}, sha256 {suite.sha256[:12]})"]
    if suite.description:
        lines.append("  " + " ".join(suite.description.split()))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    n_gpu = sum(1 for s in suite.trials if s.device.startswith("cuda"))
    n = len(suite.trials)
    lines.append(f"{n} trials: {n - n_gpu} CPU, {n_gpu} GPU; time budget {suite.time_budget_s:g} s per trial, "
                 f"{n * suite.time_budget_s:g} s if run one at a time")
    return "\n".join(lines)
