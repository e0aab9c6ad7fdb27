"""Suites: a YAML file that names a grid of trials.

    name: smoke
    description: what it answers, roughly how long it takes
    axes:    {seq: [row, patch], hidden_size: [64, 128]}   # the sweep is the cross product, in this order
    fixed:   {patch_size: 4, num_layers: 1}                # one value each
    exclude: [{impl: naive, seq: pixel, device: cpu}]      # a trial matching every pair of an entry is skipped
    modes: [train, infer]     devices: [cpu]     data: synthetic
    cpus_per_trial: 1         repeats: 1         seed: 0         time_budget_s: 30   # unset: each mode's own

The whole file is validated, and every trial built, before anything runs: a sweep that fails on trial 97
of 100 an hour in is worse than one that refuses to start. Every problem is a SuiteError whose message is
one line, "<file>: <key path>: <problem>", so the CLI can print it as is. `--set key=value` (apply_overrides)
changes a key for one run; the result is validated as the file is, and its errors name the --set item.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import SpecError, SuiteError
from .spec import RULES, TrainConfig, TrialSpec, Variant, choice, show

VARIANT_FIELDS = tuple(f.name for f in dataclasses.fields(Variant))
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
GRID_FIELDS = VARIANT_FIELDS + TRAIN_FIELDS + ("data",)  # what axes and fixed may set
EXCLUDE_FIELDS = GRID_FIELDS + ("mode", "device")
TOP_KEYS = ("name", "description", "axes", "fixed", "exclude", "modes", "devices", "cpus_per_trial",
            "repeats", "seed", "time_budget_s", "max_budget_s", "sample_plan", "reruns", "placement", "memory_mb",
            "data")
SET_KEYS = TOP_KEYS + tuple(k for k in GRID_FIELDS if k not in TOP_KEYS)  # what --set may name
DEVICE_KIND = choice("cpu", "cuda")  # a suite says which kind; which cuda:N a trial lands on is Ray's business
DEFAULTS = {**dataclasses.asdict(Variant()), **dataclasses.asdict(TrainConfig()),
            "data": TrialSpec.__dataclass_fields__["data"].default}
PLACEMENTS = ("exclusive", "shared")  # one timing trial per node at a time, or packed as the resources allow
PLACEMENT_RULE = dataclasses.replace(choice(*PLACEMENTS), optional=True)
LABEL_FIELDS = {"seq", "patch_size", "hidden_size", "num_layers", "bidirectional", "impl", "batch_size", "dtype"}
RERUNS_RULE = dataclasses.replace(RULES["repeat"], optional=True)  # an integer >= 0
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
    time_budget_s: float | None  # None: each trial's mode decides (TrialSpec.budget_s)
    raw: dict = field(compare=False, hash=False, repr=False)  # the parsed YAML (overrides applied), for the record
    overrides: dict = field(default_factory=dict, compare=False, hash=False)  # --set key: value, in order
    placement: str | None = None  # exclusive or shared; None: each mode's default (plan.placement_of)
    memory_mb: int | None = None  # Ray memory each trial reserves; None: each mode's default (plan.DEFAULT_MEMORY_MB)
    reruns: int | None = None  # reruns of a contaminated timing trial; None: cluster.CONTAMINATED_RERUNS


# ---------------------------------------------------------------------------------------------------------
# Messages

class _Source(str):
    """A suite file's name that knows which key paths hold --set values: an error at one of them names the
    --set item instead of the file."""
    sets: dict  # key path -> "--set key=value"

    def at(self, path: str) -> str:
        hits = [p for p in self.sets if path == p or path.startswith((p + ".", p + "["))]
        return self.sets[max(hits, key=len)] if hits else str(self)


def _err(source: str, path: str, problem: str) -> SuiteError:
    if isinstance(source, _Source):
        source = source.at(path)
    msg = f"{source}: {path}: {problem}" if path else f"{source}: {problem}"
    msg = " ".join(msg.splitlines())  # one line, whatever a file name or a YAML message holds
    if len(msg) > MAX_MESSAGE:  # a 10 kB string value should not make a 10 kB error line
        msg = msg[:MAX_MESSAGE - 3] + "..."
    return SuiteError(msg)


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
    return _closest(key, valid) or f"unknown key (valid keys: {', '.join(valid)})"


def _closest(key: str, valid) -> str | None:
    close = difflib.get_close_matches(key, valid, n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else None


def _check_keys(source: str, mapping: dict, valid, path: str) -> None:
    for key in mapping:
        if not isinstance(key, str):
            raise _err(source, _at(path, show(key)), f"keys must be strings, got {_type(key)}")
        if key not in valid:
            raise _err(source, _at(path, key), _unknown_key(key, valid, path))


# ---------------------------------------------------------------------------------------------------------
# Values

def _checked(source: str, path: str, name: str, value, rule=None):
    """One value of a field, checked by the field's own rule (harness.spec.RULES); a problem names its path."""
    try:
        return (rule or RULES[name])(name, value)
    except SpecError as e:
        raise _err(source, path, str(e)) from None


def _values(source: str, raw, path: str, name: str, rule=None) -> list:
    """An axis (or modes, devices): a non-empty list of distinct, individually valid values."""
    if not isinstance(raw, list):
        hint = " (put a single value under fixed)" if path.startswith("axes") else ""
        raise _err(source, path, f"must be a list of {'values' if rule is None else 'strings'}, got {_type(raw)}{hint}")
    if not raw:
        raise _err(source, path, "empty axis" if rule is None else "empty list")
    out = []
    for i, value in enumerate(raw):
        value = _checked(source, f"{path}[{i}]", name, value, rule)
        if value in out:
            raise _err(source, f"{path}[{i}]", f"duplicate value {show(raw[i])}")
        out.append(value)
    return out


def _count(source: str, data: dict, key: str) -> int:  # cpus_per_trial, repeats
    value = data.get(key, 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _err(source, key, f"must be a positive integer, got {show(value)}")
    return value


def _mapping(source: str, data: dict, key: str) -> dict:
    value = data.get(key, {})
    if value is None:  # `fixed:` with nothing under it
        return {}
    if not isinstance(value, dict):
        raise _err(source, key, f"must be a mapping of field: value, got {_type(value)}")
    return value


# ---------------------------------------------------------------------------------------------------------
# The suite

def parse_suite(data: dict, source: str = "<suite>", overrides: dict | None = None) -> Suite:
    """Validate a parsed suite (with --set overrides applied) and build its trials. Raises SuiteError, and
    nothing else, for any input."""
    try:
        merged, where = apply_overrides(data, source, overrides or {})
        suite = _parse(merged, where)
        try:
            canonical = json.dumps(data, sort_keys=True, default=str)
        except TypeError:  # keys of mixed types that an override replaced
            canonical = json.dumps(data, default=str)
        return dataclasses.replace(suite, path=source, sha256=hashlib.sha256(canonical.encode()).hexdigest(),
                                   overrides=dict(overrides or {}))
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
        raise _err(source, "name", f"must be a word of letters, digits, '.', '_' or '-', got {show(name)}")
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
        fixed[k] = _checked(source, f"fixed.{k}", k, v)
    if "data" in data:  # top-level data is shorthand for fixed.data
        if "data" in axes or "data" in fixed:
            raise _err(source, "data", f"also set under {'axes' if 'data' in axes else 'fixed'}")
        fixed["data"] = _checked(source, "data", "data", data["data"])

    modes = _values(source, data.get("modes", ["train"]), "modes", "mode", RULES["mode"])
    devices = _values(source, data.get("devices", ["cpu"]), "devices", "device", DEVICE_KIND)
    cpus = _count(source, data, "cpus_per_trial")
    _checked(source, "cpus_per_trial", "cpus_per_trial", cpus, RULES["threads"])  # it becomes each CPU trial's
    repeats = _count(source, data, "repeats")
    seed = _checked(source, "seed", "seed", data.get("seed", 0))
    budget = _checked(source, "time_budget_s", "time_budget_s", data.get("time_budget_s"))  # None: per mode
    max_budget = _checked(source, "max_budget_s", "max_budget_s", data.get("max_budget_s"))  # None: 4x budget
    sample_plan = _checked(source, "sample_plan", "sample_plan", data.get("sample_plan", "standard"))
    placement = _checked(source, "placement", "placement", data.get("placement"), PLACEMENT_RULE)
    reruns = _checked(source, "reruns", "reruns", data.get("reruns"), RERUNS_RULE)
    memory_mb = _checked(source, "memory_mb", "memory_mb", data.get("memory_mb"), RULES["train_subset"])
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
                                     max_budget_s=max_budget, sample_plan=sample_plan, repeat=repeat, train=train,
                                     suite=name)
                    specs.setdefault(spec.trial_id, spec)
            except SpecError as e:
                shown = {**dict(zip(axes, combo)), "mode": mode, "device": device}
                trial = ", ".join(f"{k}: {v if isinstance(v, str) else show(v)}" for k, v in shown.items())
                raise _err(source, f"trial {{{trial}}}", str(e)) from None
    if not specs:
        raise _err(source, "exclude", "no trials left after exclude")

    return Suite(name=name, description=description, path=str(source), sha256="", trials=tuple(specs.values()),
                 cpus_per_trial=cpus, time_budget_s=budget, placement=placement, memory_mb=memory_mb,
                 reruns=reruns, raw=data)


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
        # a typo here would silently exclude nothing, so values are checked like axis values
        out.append({k: _checked(source, f"{path}.{k}", k, v, DEVICE_KIND if k == "device" else None)
                    for k, v in entry.items()})
    return out


def load_suite(path: str | Path, overrides: dict | None = None) -> Suite:
    """Read, parse and validate a suite file, with `overrides` (--set key: value) applied as apply_overrides
    says. Raises SuiteError, and nothing else, for any file. The sha256 is of the file's bytes, whatever
    the overrides; the Suite carries them in `overrides`."""
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
    suite = parse_suite(_yaml(source, text), source, overrides)
    return dataclasses.replace(suite, sha256=hashlib.sha256(blob).hexdigest())


def _yaml(source: str, text: str):
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _err(source, where, f"invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:  # e.g. a control character (ReaderError): no problem_mark
        raise _err(source, "", f"invalid YAML: {e}") from None
    except Exception as e:  # RecursionError on absurdly deep nesting, a 5000-digit integer, ...
        raise _err(source, "", f"invalid YAML ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------------------
# --set key=value

def parse_sets(items: list[str]) -> dict:
    """`--set key=value` items as {key: value}, each value read as YAML (`hidden_size=[64,128]` is a list);
    a later item for a key wins. Keys are checked by apply_overrides."""
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise _err(f"--set {item}", "", "expected KEY=VALUE (e.g. --set hidden_size=[64,128])")
        out[key.strip()] = _yaml(f"--set {item}", text)
    return out


def _item(key, value) -> str:
    """An override as one would type it."""
    try:
        text = value if isinstance(value, str) else yaml.safe_dump(
            value, default_flow_style=True, width=1 << 20).strip().removesuffix("\n...")
    except yaml.YAMLError:  # not YAML (only through the API)
        text = repr(value)
    return "--set " + shlex.quote(f"{key}={text}")


def apply_overrides(data, source: str, overrides: dict) -> tuple:
    """(data with the overrides applied, a source whose errors at a key path a --set item set name the item).
    Per key: a field that is an axis, or a field given a list of values (for target_accuracy a list of
    lists), becomes that axis (one value: a one-value axis); else a top-level key is replaced (`modes=infer`
    means [infer]), and any other field is fixed. The caller's data is not changed."""
    if not isinstance(overrides, dict):
        raise _err(source, "", f"overrides must be a mapping of key: value, got {_type(overrides)}")
    where, merged = _Source(source), dict(data) if isinstance(data, dict) else data
    where.sets = {}
    for key, value in overrides.items():
        item = _item(key, value)
        if not isinstance(key, str):
            raise _err(item, "", f"keys must be strings, got {_type(key)}")
        if key not in SET_KEYS:
            raise _err(item, "", _closest(key, SET_KEYS) or "unknown key (not a suite key or a trial field)")
        path = _put(merged, key, value) if isinstance(merged, dict) else None
        if path is not None:  # None: the file's own error comes first
            where.sets[path] = item
    return merged, where


def _put(data: dict, key: str, value) -> str | None:
    """Set one override in data, copying what it changes; returns the value's key path."""
    axes, fixed = ({} if data.get(k) is None else data[k] for k in ("axes", "fixed"))
    if not isinstance(axes, dict) or not isinstance(fixed, dict):
        return None
    many = key in RULES and RULES[key].many
    listed = isinstance(value, list) and (not many or bool(value) and all(isinstance(v, list) for v in value))
    if key in GRID_FIELDS and (key in axes or listed):
        data["axes"] = {**axes, key: value if listed else [value]}
        if key in fixed:
            data["fixed"] = {k: v for k, v in fixed.items() if k != key}
        if key == "data":
            data.pop("data", None)
        return f"axes.{key}"
    if key in TOP_KEYS and key not in fixed:
        data[key] = [value] if key in ("modes", "devices") and isinstance(value, str) else value
        return key
    data["fixed"] = {**fixed, key: value}
    return f"fixed.{key}"
