"""What one trial is: a variant, a mode, a device, the data and the training recipe. Frozen and hashable;
`trial_id` is a stable hash of its normalized fields, so the same trial has the same id in every run.

Every field is declared once, here: its default and type (the dataclass field), its meaning and unit (field
metadata "help" and "unit") and its rule (RULES: field name -> Rule). The dataclasses check themselves with
RULES, the suite loader checks each axis, fixed and exclude value with RULES, and the CLI's trial flags are
generated from these fields. Every problem is a SpecError whose message is one line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import SpecError

SEQS = ("row", "column", "pixel", "patch", "cnn")
IMPLS = ("cudnn", "naive", "lstmcell", "compiled", "graphed")  # see Variant.impl's help
GRAPHED_MODES = ("train", "infer")  # impl graphed runs on CUDA, in these modes only
DTYPES = ("float32", "tf32", "bfloat16")  # strict fp32, TF32 tensor cores (CUDA only), bf16 autocast
PATCH_SIZES = (2, 4, 8)
LIMITS = {"hidden_size": 65536, "num_layers": 64, "batch_size": 1 << 20}  # sanity bounds, not targets
CNN_CHANNELS = 64  # conv stem: 3 -> 32 -> 64, pool, 64, pool => 64 x 8 x 8; the 8 rows become 8 steps of 512
MODES = ("train", "infer", "accuracy", "profile")
DATA = ("cifar10", "synthetic")
SAMPLE_PLANS = ("standard", "pair")  # measure.py: the full plan, or `ab`'s short fixed one (spends time on pairs)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTS = ("none", "flip", "flip-crop")
NORMALIZE = ("cifar", "half")  # per-channel CIFAR-10 mean/std, or the tutorial's Normalize(0.5, 0.5)
MAX_THREADS = 1024
DEFAULT_TIMING_BUDGET_S = 30.0  # the time budget of a train, infer or profile trial that names none
MAX_BUDGET_FACTOR = 4.0         # unset max_budget_s: a timing trial may stretch to 4x its budget for the floor


# ---------------------------------------------------------------------------------------------------------
# Rules: one per field. A rule returns the value (normalized: a list of fractions becomes a tuple) or raises
# SpecError with a one-line message that names the field.

def show(value) -> str:
    """repr, cut to 60 characters: a 10 kB value should not make a 10 kB error line."""
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:  # finite, and (for a huge int) a float can hold it
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _numeric_text(value: str) -> bool:
    try:
        float(value)
        return True
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Rule:
    type: type                             # str, int, float or bool: the type of a value (and of its CLI flag)
    check: Callable[[str, Any], Any]       # (name, value) -> value, or SpecError
    choices: tuple = ()                    # a str field: its valid values
    optional: bool = False                 # None is valid (not set)
    many: str = ""                         # a list field: what its items are ("fractions")

    def __call__(self, name: str, value):
        if value is None and self.optional:
            return None
        if not self.many:
            return self._one(name, value)
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{name} must be a list of {self.many}, got {show(value)}")
        return tuple(self._one(name, v) for v in value)

    def _one(self, name: str, value):
        # Python calls True an int; a suite that says `hidden_size: true` has made a mistake.
        if isinstance(value, bool) and self.type is not bool:
            raise SpecError(f"{name} must not be true/false, got {value!r}")
        if self.type in (int, float) and isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{name} must be a finite number, got {value!r}")  # .nan passes `<= 0` checks
        if self.type in (int, float) and isinstance(value, str) and _numeric_text(value):
            # PyYAML reads 1e-3 as a string (YAML 1.1 wants 1.0e-3): say so rather than "got '1e-3'".
            number = float(value)
            if self.type is int and number.is_integer():
                number = int(number)
            hint = f" (YAML reads it as text: write {number!r})" if math.isfinite(number) else ""
            raise SpecError(f"{name} must be a number, got the string {show(value)}{hint}")
        return self.check(name, value)


def choice(*choices: str) -> Rule:
    def check(name, value):
        if not isinstance(value, str) or value not in choices:
            raise SpecError(f"unknown {name} {show(value)} (choose from {', '.join(choices)})")
        return value
    return Rule(str, check, choices=choices)


def _ranged(kind: type, what: str, ok: Callable, limit: int | None = None, over: str = "", **kw) -> Rule:
    """A number of `kind` for which ok(value) holds ("<name> <what>, got <value>"), at most `limit`."""
    def check(name, value):
        if not (_is_int(value) if kind is int else _is_number(value)) or not ok(value):
            raise SpecError(f"{name} {what}, got {show(value)}")
        if limit is not None and value > limit:
            raise SpecError(f"{name} {show(value)} {over.format(limit)}")
        return value
    return Rule(kind, check, **kw)


def _count(limit: int | None = None, over: str = "is beyond what this harness sweeps (at most {})", **kw) -> Rule:
    return _ranged(int, "must be a positive integer", lambda v: v > 0, limit, over, **kw)


def _flag(name, value):
    if not isinstance(value, bool):
        raise SpecError(f"{name} must be true or false, got {show(value)}")
    return value


def _patch_size(name, value):
    if not _is_int(value) or value <= 0 or 32 % value:
        raise SpecError(f"patch size {show(value)} does not divide 32 (choose from 2, 4, 8)")
    if value not in PATCH_SIZES:
        raise SpecError(f"patch size {value} gives {(32 // value) ** 2} steps; choose from 2, 4, 8")
    return value


def _device(name, value):
    if not isinstance(value, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", value):
        raise SpecError(f"unknown device {show(value)} (cpu, cuda or cuda:N)")
    return value


POSITIVE = _ranged(float, "must be a positive number", lambda v: v > 0)
NON_NEGATIVE = _ranged(float, "must be a number >= 0", lambda v: v >= 0)
BELOW_ONE = _ranged(float, "must be in [0, 1)", lambda v: 0 <= v < 1)

RULES: dict[str, Rule] = {
    # Variant
    "seq": choice(*SEQS), "impl": choice(*IMPLS), "dtype": choice(*DTYPES),
    **{name: _count(LIMITS[name]) for name in ("hidden_size", "num_layers", "batch_size")},
    "bidirectional": Rule(bool, _flag), "dropout": BELOW_ONE, "patch_size": Rule(int, _patch_size, optional=True),
    # TrainConfig
    "optimizer": choice(*OPTIMIZERS), "schedule": choice(*SCHEDULES), "augment": choice(*AUGMENTS),
    "normalize": choice(*NORMALIZE), "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE,
    "grad_clip": dataclasses.replace(POSITIVE, optional=True), "label_smoothing": BELOW_ONE, "epochs": _count(),
    "target_accuracy": _ranged(float, "values are fractions in (0, 1]", lambda v: 0 < v <= 1, many="fractions"),
    "train_subset": _count(optional=True),
    # TrialSpec
    "mode": choice(*MODES), "device": Rule(str, _device), "data": choice(*DATA),
    "seed": _ranged(int, "must be an integer in [0, 2**32)", lambda v: 0 <= v < 2 ** 32),
    "threads": _count(MAX_THREADS, "is more than this harness allows ({})", optional=True),
    "time_budget_s": Rule(float, lambda name, v: float(POSITIVE.check(name, v)), optional=True),  # not in trial_id
    "max_budget_s": Rule(float, lambda name, v: float(POSITIVE.check(name, v)), optional=True),   # nor this
    "repeat": _ranged(int, "must be an integer >= 0", lambda v: v >= 0),
    "sample_plan": choice(*SAMPLE_PLANS),  # not in trial_id: the same trial, timed for a pair
}


def check_field(name: str, value):
    """One value of one field on its own: the value normalized, or SpecError."""
    return RULES[name](name, value)


def _check_fields(obj) -> None:
    for f in dataclasses.fields(obj):
        if f.name in RULES:
            value = getattr(obj, f.name)
            checked = check_field(f.name, value)
            if checked is not value:
                object.__setattr__(obj, f.name, checked)


def _field(default=dataclasses.MISSING, help: str = "", unit: str = "", **kw):
    return field(default=default, metadata={"help": help, "unit": unit}, **kw)


# ---------------------------------------------------------------------------------------------------------
# The specs

@dataclass(frozen=True)
class Variant:
    """What is measured: how an image becomes a sequence, the LSTM's size and the code that runs it."""
    seq: str = _field("row", "how a 3x32x32 image becomes a sequence: rows, columns, pixels, k x k patches or "
                             "a conv stem's rows", "name")
    hidden_size: int = _field(128, "hidden units per layer and direction", "units")
    num_layers: int = _field(2, "stacked LSTM layers", "layers")
    impl: str = _field("cudnn", "code that runs the recurrence: nn.LSTM (cuDNN/ATen), a Python loop of the gate "
                                "equations, a Python loop of nn.LSTMCell, the gate loop with its step through "
                                "torch.compile (compiled), or the gate loop's whole step in a CUDA graph (graphed)",
                       "name")
    batch_size: int = _field(256, "images per step", "images")
    dtype: str = _field("float32", "compute dtype (bfloat16 = autocast, weights stay float32)", "name")
    bidirectional: bool = _field(False, "run every layer in both directions", "flag")
    dropout: float = _field(0.0, "dropout between stacked LSTM layers while training", "fraction")
    patch_size: int | None = _field(None, "side k of the k x k patches (seq patch only)", "pixels")

    def __post_init__(self):
        _check_fields(self)
        if self.seq == "patch" and self.patch_size is None:
            raise SpecError("seq patch needs a patch size (2, 4 or 8)")
        if self.seq != "patch" and self.patch_size is not None:
            raise SpecError(f"patch_size is only meaningful with seq patch, not seq {self.seq!r}")

    @property
    def steps(self) -> int:
        return seq_shape(self.seq, self.patch_size)[0]

    @property
    def features(self) -> int:
        return seq_shape(self.seq, self.patch_size)[1]

    @property
    def label(self) -> str:
        seq = seq_label(self.seq, self.patch_size)
        bi = "-bi" if self.bidirectional else ""
        return f"{seq}/h{self.hidden_size}x{self.num_layers}{bi}/{self.impl}/b{self.batch_size}/{self.dtype}"


def seq_label(seq, patch_size=None) -> str:
    """row, column, pixel, patch4, cnn: the sequencing strategy as every label, table and report shows it."""
    if not isinstance(seq, str):
        return "?"
    if seq == "patch":
        try:
            return f"patch{int(patch_size)}"
        except (TypeError, ValueError):  # None, NaN, pd.NA: a record without its patch size
            return "patch"
    return seq


def seq_shape(seq: str, patch_size: int | None = None) -> tuple[int, int]:
    """(steps, features per step) of a sequencing strategy."""
    if seq in ("row", "column"):
        return 32, 96
    if seq == "pixel":
        return 1024, 3
    if seq == "patch":
        return (32 // patch_size) ** 2, 3 * patch_size * patch_size
    if seq == "cnn":
        return 8, CNN_CHANNELS * 8
    raise SpecError(f"unknown seq {seq!r}")


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Throughput trials use the optimizer, lr and augmentation; accuracy trials all."""
    optimizer: str = _field("adam", "optimizer", "name")
    lr: float = _field(1e-3, "peak learning rate", "1")
    weight_decay: float = _field(0.0, "weight decay (decoupled for adamw)", "1")
    schedule: str = _field("constant", "learning-rate schedule over the epochs", "name")
    warmup_epochs: float = _field(0.0, "linear learning-rate warm-up before the schedule", "epochs")
    grad_clip: float | None = _field(None, "clip the gradients' global L2 norm to this (unset: no clipping)",
                                     "norm")
    label_smoothing: float = _field(0.0, "label smoothing of the cross-entropy loss", "fraction")
    augment: str = _field("none", "training augmentation: none, random flips, or flips and padded crops", "name")
    normalize: str = _field("cifar", "input normalization: CIFAR-10 mean/std, or the tutorial's 0.5/0.5", "name")
    epochs: int = _field(1, "training epochs of an accuracy trial", "epochs")
    target_accuracy: tuple[float, ...] = _field((), "test accuracies to time; training stops at the largest",
                                                "fraction")
    train_subset: int | None = _field(None, "train on the first N training images (unset: all 50000)", "images")

    def __post_init__(self):
        _check_fields(self)


@dataclass(frozen=True)
class TrialSpec:
    variant: Variant = _field(help="the model measured", unit="Variant")
    mode: str = _field("train", "what is measured: train or infer throughput, accuracy after training, or a "
                                "profile of training steps", "name")
    device: str = _field("cpu", "where it runs: cpu, cuda or cuda:N", "name")
    data: str = _field("synthetic", "the images: CIFAR-10, or random inputs of the same shape", "name")
    seed: int = _field(0, "seed of weights, data order and synthetic inputs", "integer")
    threads: int | None = _field(None, "torch threads on CPU (unset: torch's default)", "threads")
    time_budget_s: float | None = _field(None, f"time budget of the trial (unset: {DEFAULT_TIMING_BUDGET_S:g} s "
                                               f"for timing modes, none for accuracy: it stops at its epochs)", "s")
    max_budget_s: float | None = _field(None, f"how far a timing trial may stretch its budget to finish its "
                                              f"sample plan (a fixed count of blocks, at least 50 steps; unset: "
                                              f"{MAX_BUDGET_FACTOR:g}x the budget); the hang deadline derives "
                                              f"from it", "s")
    repeat: int = _field(0, "which repetition of the same trial this is", "index")
    sample_plan: str = _field("standard", "how a timing trial samples: standard (warm-up, a fixed count of blocks "
                                          "by mode and device filling the budget, then the model alone and the "
                                          "data alone) or pair (`lstm-bench ab`: a "
                                          "short warm-up and a fixed count of blocks of the end-to-end step only)",
                              "name")
    train: TrainConfig = _field(help="the training recipe", unit="TrainConfig", default_factory=TrainConfig)
    suite: str | None = _field(None, "name of the suite the trial belongs to", "name")

    def __post_init__(self):
        _check_fields(self)
        if self.mode == "accuracy" and self.data == "synthetic":
            raise SpecError("mode accuracy needs data cifar10: synthetic data has no accuracy")
        if self.variant.dtype == "tf32" and not self.device.startswith("cuda"):
            raise SpecError(f"dtype tf32 needs a CUDA device, not {self.device} (TF32 is a tensor-core mode; "
                            f"exclude the pair dtype tf32 x device cpu)")
        if self.variant.impl == "graphed" and (not self.device.startswith("cuda") or self.mode not in GRAPHED_MODES):
            pair = ("device", "cpu") if not self.device.startswith("cuda") else ("mode", self.mode)
            raise SpecError(f"impl graphed captures a CUDA graph: it needs a CUDA device and mode train or infer, "
                            f"not {pair[0]} {pair[1]} (in a suite, exclude {{impl: graphed, {pair[0]}: {pair[1]}}})")
        if self.max_budget_s is not None and self.max_budget_s < self.budget_s:
            raise SpecError(f"max_budget_s {self.max_budget_s:g} is below the time budget {self.budget_s:g}")

    @property
    def budget_s(self) -> float:
        """The effective time budget: as given, else the mode's (accuracy: none beyond its epochs)."""
        if self.time_budget_s is not None:
            return float(self.time_budget_s)
        return math.inf if self.mode == "accuracy" else DEFAULT_TIMING_BUDGET_S

    @property
    def max_budget(self) -> float:
        """The most a trial may take to finish its sample plan: as given, else MAX_BUDGET_FACTOR x the budget."""
        return float(self.max_budget_s) if self.max_budget_s is not None else MAX_BUDGET_FACTOR * self.budget_s

    def identity(self) -> dict:
        """The fields that make two trials the same trial (the time budget and suite name do not)."""
        d = dataclasses.asdict(self)
        d.pop("time_budget_s")
        d.pop("max_budget_s")
        d.pop("sample_plan")
        d.pop("suite")
        d["device"] = "cuda" if self.device.startswith("cuda") else "cpu"
        d["train"]["target_accuracy"] = list(self.train.target_accuracy)
        return d

    @property
    def trial_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def flat(self) -> dict:
        """Spec as flat record fields (variant fields, mode, device, ..., training recipe)."""
        d = dataclasses.asdict(self.variant)
        d.update({k: getattr(self, k) for k in ("mode", "device", "data", "seed", "threads", "time_budget_s",
                                                 "max_budget_s", "repeat", "sample_plan", "suite")})
        d.update(dataclasses.asdict(self.train))
        d["target_accuracy"] = list(self.train.target_accuracy)
        d["trial_id"] = self.trial_id
        return d

    @classmethod
    def from_flat(cls, d: dict) -> "TrialSpec":
        """Inverse of flat(): build a spec from a dict of field names (unknown keys are an error)."""
        vf = {f.name for f in dataclasses.fields(Variant)}
        tf = {f.name for f in dataclasses.fields(TrainConfig)}
        sf = {f.name for f in dataclasses.fields(cls)} - {"variant", "train"}
        unknown = set(d) - vf - tf - sf - {"trial_id"}
        if unknown:
            raise SpecError(f"unknown trial field(s): {', '.join(sorted(unknown))}")
        train = {k: v for k, v in d.items() if k in tf}
        if "target_accuracy" in train:  # a record's list (or None, or an array read back from parquet)
            train["target_accuracy"] = tuple(train["target_accuracy"] if train["target_accuracy"] is not None else ())
        return cls(variant=Variant(**{k: v for k, v in d.items() if k in vf}), train=TrainConfig(**train),
                   **{k: v for k, v in d.items() if k in sf})
