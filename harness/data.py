"""CIFAR-10 held once on the trial's device as uint8, normalized and augmented there in whole batches
(after airbench: no per-image Python, no DataLoader in the hot path).

Why: the tutorial's torchvision DataLoader (ToTensor + Normalize, batch 32, no workers) delivers about
10,000 images/s, which caps cuDNN training at about 11% of its speed on an H200; a uint8 tensor resident on
the GPU and normalized there delivers about 4,000,000 images/s (shared/anchors.md).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NORMALIZATION = {"cifar": (CIFAR_MEAN, CIFAR_STD), "half": ((0.5,) * 3, (0.5,) * 3)}


class DeviceData:
    """Train and test images as uint8 tensors on `device`; batches come out normalized float32."""

    def __init__(self, train_images, train_labels, test_images, test_labels, *, device: torch.device,
                 normalize: str = "cifar", source: str = "synthetic", train_subset: int | None = None):
        def put(a, dtype):
            t = torch.as_tensor(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
            return t.to(device=device, dtype=dtype)

        if train_subset is not None:  # a fixed, class-agnostic prefix of the (already shuffled) training set
            train_images, train_labels = train_images[:train_subset], train_labels[:train_subset]
        self.device = device
        self.source = source
        self.train_x, self.train_y = put(train_images, torch.uint8), put(train_labels, torch.long)
        self.test_x, self.test_y = put(test_images, torch.uint8), put(test_labels, torch.long)
        mean, std = NORMALIZATION[normalize]
        # x / 255 then (x - mean) / std, folded into one multiply-add per element
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, 3, 1, 1)
        self.shift = (-torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, 3, 1, 1)

    @property
    def n_train(self) -> int:
        return self.train_x.shape[0]

    @property
    def n_test(self) -> int:
        return self.test_x.shape[0]

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x_uint8.float(), self.scale)

    def train_epoch(self, batch_size: int, *, augment: str = "none", generator: torch.Generator | None = None,
                    drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the training set in a random order, augmented on the device."""
        order = to_device(torch.randperm(self.n_train, device="cpu", generator=generator), self.device)
        stop = self.n_train - (self.n_train % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            x = self.normalize(self.train_x[idx])
            yield augment_batch(x, augment, generator), self.train_y[idx]

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every test image exactly once, in order (the last batch may be short)."""
        for start in range(0, self.n_test, batch_size):
            yield self.normalize(self.test_x[start:start + batch_size]), self.test_y[start:start + batch_size]

    def endless(self, batch_size: int, *, augment: str = "none", generator: torch.Generator | None = None):
        """Training batches forever (epoch after epoch), for throughput timing."""
        if self.n_train < batch_size:
            raise ValueError(f"batch size {batch_size} is larger than the {self.n_train} training images")
        while True:
            yield from self.train_epoch(batch_size, augment=augment, generator=generator)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Random draws are made on the CPU (so a seed fixes them on any device); on CUDA they go over from pinned
    memory without blocking, so the GPU's queue never drains waiting for them."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator | None = None,
                  pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and/or random crop after `pad` pixels of reflect padding, for a whole batch at
    once: the random draws come from `generator` on the CPU (so a seed fixes them on any device)."""
    if augment == "none":
        return x
    b = x.shape[0]
    flip = to_device(torch.rand(b, generator=generator), x.device) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    if augment == "flip-crop":
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = to_device(torch.randint(0, 2 * pad + 1, (b,), generator=generator), x.device)
        dx = to_device(torch.randint(0, 2 * pad + 1, (b,), generator=generator), x.device)
        ar = torch.arange(32, device=x.device)
        rows = (dy.view(b, 1) + ar).view(b, 1, 32, 1)
        cols = (dx.view(b, 1) + ar).view(b, 1, 1, 32)
        x = padded[torch.arange(b, device=x.device).view(b, 1, 1, 1),
                   torch.arange(3, device=x.device).view(1, 3, 1, 1), rows, cols]
    return x


def synthetic_arrays(n_train: int, n_test: int, seed: int = 0):
    """Random uint8 images and labels of CIFAR-10's shape (throughput only: never reports an accuracy)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n_train, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n_train,), generator=g),
            torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n_test,), generator=g))
