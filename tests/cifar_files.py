"""Writing CIFAR-10 in the official python format, for the tests' own small datasets (never shipped in the
package: the harness only reads these files)."""

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from harness.cifar import BATCHES_DIR, LABEL_NAMES, META_FILE, TARBALL


class _Py2StylePickler(pickle._Pickler):
    """Protocol 2 with bytes written as Python 2 strings, as in the official batches. The stock
    pickler would write bytes as _codecs.encode(...) calls, a global the official files never use."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_bytes


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _batch_files(train_images, train_labels, test_images, test_labels, n_train_batches: int) -> dict[str, bytes]:
    # n_train_batches < 5 writes an incomplete copy (data_batch_1..n), which loaders must reject.
    def batch(images, labels, label: str, prefix: str) -> bytes:
        images = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), 3072)
        return _dumps({
            b"batch_label": label.encode(),
            b"labels": [int(y) for y in labels],
            b"data": images,
            b"filenames": [f"{prefix}_{i:05d}.png".encode() for i in range(len(images))],
        })

    files = {}
    splits = np.array_split(np.arange(len(train_images)), n_train_batches)
    for i, idx in enumerate(splits, start=1):
        files[f"data_batch_{i}"] = batch(
            np.asarray(train_images)[idx], np.asarray(train_labels)[idx], f"training batch {i} of {n_train_batches}", f"train{i}"
        )
    files["test_batch"] = batch(test_images, test_labels, "testing batch 1 of 1", "test")
    files[META_FILE] = _dumps({
        b"num_cases_per_batch": len(splits[0]),
        b"label_names": [n.encode() for n in LABEL_NAMES],
        b"num_vis": 3072,
    })
    return files


def write_cifar10_folder(
    folder: Path, train_images, train_labels, test_images, test_labels, n_train_batches: int = 5
) -> Path:
    """Write folder/cifar-10-batches-py/ in the official format; returns the batches folder."""
    out = Path(folder) / BATCHES_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, data in _batch_files(train_images, train_labels, test_images, test_labels, n_train_batches).items():
        (out / name).write_bytes(data)
    return out


def write_cifar10_tarball(
    folder: Path, train_images, train_labels, test_images, test_labels, n_train_batches: int = 5
) -> Path:
    """Write folder/cifar-10-python.tar.gz with the same content as write_cifar10_folder; returns it."""
    out = Path(folder) / TARBALL
    out.parent.mkdir(parents=True, exist_ok=True)
    files = _batch_files(train_images, train_labels, test_images, test_labels, n_train_batches)
    with tarfile.open(out, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{BATCHES_DIR}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out
