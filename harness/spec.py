"""What one trial is: a variant, a mode, a device, the data and the training recipe. Frozen and hashable;
`trial_id` is a stable hash of its normalized fields, so the same trial has the same id in every run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

from .errors import SpecError
from .variants import Variant

MODES = ("train", "infer", "accuracy", "profile")
DATA = ("cifar10", "synthetic")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTS = ("none", "flip", "flip-crop")
NORMALIZE = ("cifar", "half")
MAX_THREADS = 1024  # per-channel CIFAR-10 mean/std, or the tutorial's Normalize(0.5, 0.5)


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. Throughput trials use the optimizer, lr and augmentation; accuracy trials all."""
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    augment: str = "none"
    normalize: str = "cifar"
    epochs: int = 1
    target_accuracy: tuple[float, ...] = ()
    train_subset: int | None = None

    def __post_init__(self):
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("augment", self.augment, AUGMENTS)
        _one_of("normalize", self.normalize, NORMALIZE)
        _positive("lr", self.lr, number=True)
        _positive("epochs", self.epochs)
        for name in ("weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            if not _number(value) or value < 0:
                raise SpecError(f"{name} must be a number >= 0, got {value!r}")
        if self.grad_clip is not None:
            _positive("grad_clip", self.grad_clip, number=True)
        if not _number(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise SpecError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.train_subset is not None:
            _positive("train_subset", self.train_subset)
        if not isinstance(self.target_accuracy, tuple):
            raise SpecError(f"target_accuracy must be a list of fractions, got {self.target_accuracy!r}")
        for t in self.target_accuracy:
            if not _number(t) or not 0 < t <= 1:
                raise SpecError(f"target_accuracy values are fractions in (0, 1], got {t!r}")


@dataclass(frozen=True)
class TrialSpec:
    variant: Variant
    mode: str = "train"
    device: str = "cpu"              # cpu, cuda, cuda:N
    data: str = "synthetic"          # cifar10 or synthetic
    seed: int = 0
    threads: int | None = None       # torch threads on CPU (None: torch's default)
    time_budget_s: float = 30.0      # for timing; accuracy runs stop at epochs or this budget
    repeat: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    suite: str | None = None

    def __post_init__(self):
        _one_of("mode", self.mode, MODES)
        _one_of("data", self.data, DATA)
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device):
            raise SpecError(f"unknown device {self.device!r} (cpu, cuda or cuda:N)")
        if self.threads is not None:
            _positive("threads", self.threads)
            if self.threads > MAX_THREADS:
                raise SpecError(f"threads {self.threads} is more than this harness allows ({MAX_THREADS})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise SpecError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        _positive("time_budget_s", self.time_budget_s, number=True)
        if self.mode == "accuracy" and self.data == "synthetic":
            raise SpecError("mode accuracy needs data cifar10: synthetic data has no accuracy")

    def identity(self) -> dict:
        """The fields that make two trials the same trial (the time budget and suite name do not)."""
        d = dataclasses.asdict(self)
        d.pop("time_budget_s")
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
                                                 "repeat", "suite")})
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
        if "target_accuracy" in train:
            train["target_accuracy"] = tuple(train["target_accuracy"] or ())
        return cls(variant=Variant(**{k: v for k, v in d.items() if k in vf}),
                   train=TrainConfig(**train), **{k: v for k, v in d.items() if k in sf})


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(name, value, choices):
    if value not in choices:
        raise SpecError(f"unknown {name} {value!r} (choose from {', '.join(choices)})")


def _positive(name, value, number=False):
    types = (int, float) if number else (int,)
    if isinstance(value, bool) or not isinstance(value, types) or not math.isfinite(value) or value <= 0:
        raise SpecError(f"{name} must be a positive {'number' if number else 'integer'}, got {value!r}")
