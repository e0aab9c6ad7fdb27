"""CIFAR-10 (official python format) discovery, verification and loading.

A copy is either a `cifar-10-batches-py/` folder or the `cifar-10-python.tar.gz` that contains it.
Every copy is md5-checked against the official release; anything else is "unofficial" and is only
used with explicit permission, tagged with a content hash so results record which copy they came from.
Batches are pickles, so they are read with an unpickler that can only rebuild numpy arrays.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError
from harness.unpickle import _one_line, restricted_load  # noqa: F401  (restricted_load: tests use it here)

SEARCH_ENV = "CIFAR10_ROOT"
BATCHES_DIR = "cifar-10-batches-py"
TARBALL = "cifar-10-python.tar.gz"
DATA_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
META_FILE = "batches.meta"
LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# md5 of the official release (same table as torchvision.datasets.CIFAR10).
OFFICIAL_MD5: dict[str, str] = {
    TARBALL: "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    META_FILE: "5ff9c542aee3614f3951f8cda6e48888",
}

_HINT = "pass --data-root DIR (or set CIFAR10_ROOT) to point at a copy, or --download to fetch the official one"


@dataclass(frozen=True)
class Cifar10Arrays:
    """The whole dataset in memory. Arrays may be shared through the load cache: do not modify them."""

    train_images: np.ndarray  # uint8 (N, 3, 32, 32), C-contiguous
    train_labels: np.ndarray  # int64 (N,)
    test_images: np.ndarray  # uint8 (M, 3, 32, 32), C-contiguous
    test_labels: np.ndarray  # int64 (M,)
    source: str  # "official", "unofficial:<sha256[:12]>" or "synthetic"
    root: str  # the folder or tarball it was read from


# --------------------------------------------------------------------------- finding a copy


def candidate_roots(data_root: str | None) -> list[Path]:
    """Places to look, most specific first (duplicates removed)."""
    roots = []
    if data_root:
        roots.append(Path(data_root))
    if os.environ.get(SEARCH_ENV):
        roots.append(Path(os.environ[SEARCH_ENV]))
    roots.append(Path("data"))
    # The project sits next to a shared/ folder in the workspace; look there both relative to this
    # checkout and relative to the working directory (a copied checkout may run from elsewhere).
    roots.append(Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10")
    roots.append(Path("..") / "shared" / "datasets" / "cifar10")
    seen, unique = set(), []
    for root in roots:
        key = os.path.abspath(root)
        if key not in seen:
            seen.add(key)
            unique.append(root)
    return unique


def _copy_in(root: Path) -> Path | None:
    """The batches folder or tarball that `root` holds (or is), else None. An extracted folder wins
    over a tarball next to it: it is faster to read."""
    if root.is_file() and root.name.endswith(".tar.gz"):
        return root
    if (root / "data_batch_1").is_file():
        return root
    if (root / BATCHES_DIR).is_dir():
        return root / BATCHES_DIR
    if (root / TARBALL).is_file():
        return root / TARBALL
    return None


def find_cifar10(data_root: str | None = None) -> Path:
    """The first usable copy in candidate_roots() order: a batches folder or a tarball path."""
    if data_root:
        # An explicit choice must not silently fall back to some other copy.
        found = _copy_in(Path(data_root))
        if found is None:
            raise DataError(f"--data-root {data_root}: no CIFAR-10 there (expected {BATCHES_DIR}/ or {TARBALL})")
        return found
    roots = candidate_roots(None)
    for root in roots:
        found = _copy_in(root)
        if found is not None:
            return found
    looked = ", ".join(str(r) for r in roots)
    raise DataError(f"CIFAR-10 not found (looked in {looked}); {_HINT}")


# --------------------------------------------------------------------------- loading

_CACHE: dict[tuple, Cifar10Arrays] = {}


def clear_cache() -> None:
    """Forget loaded datasets (tests; or to free ~180 MB)."""
    _CACHE.clear()


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read_folder(folder: Path) -> dict[str, bytes]:
    files = {}
    for name in (*DATA_FILES, META_FILE):
        path = folder / name
        try:
            files[name] = path.read_bytes()
        except FileNotFoundError:
            if name == META_FILE:  # not needed to load; its absence only means "not the official release"
                continue
            raise DataError(f"{path}: missing CIFAR-10 batch file") from None
        except OSError as err:
            raise DataError(f"{path}: cannot read ({_one_line(err)})") from None
    return files


def _read_tarball(path: Path) -> tuple[bytes, dict[str, bytes]]:
    """(tarball bytes, member name -> bytes) without extracting anything to disk."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({_one_line(err)})") from None
    files = {}
    try:
        # Stream mode ("r|gz") decompresses once, front to back; random access would re-inflate.
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r|gz") as tar:
            for member in tar:
                name = posixpath.basename(member.name)
                if member.isfile() and name in OFFICIAL_MD5:
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{path}: corrupt or truncated CIFAR-10 tarball ({_one_line(err)})") from None
    for name in DATA_FILES:
        if name not in files:
            raise DataError(f"{path}: missing member {BATCHES_DIR}/{name}")
    return raw, files


def _batch_arrays(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_load(data, name)
    images, labels = batch.get("data"), batch.get("labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{name}: 'data' must be a uint8 (N, 3072) array, got {desc}")
    try:
        labels = np.asarray(labels)
    except Exception:
        labels = np.asarray(None)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise DataError(f"{name}: 'labels' must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{name}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _download(root: Path) -> None:
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(root=str(root), train=True, download=True)
    except Exception as err:
        raise DataError(f"downloading CIFAR-10 into {root} failed ({_one_line(err)})") from None


def _read_copy(where: Path) -> tuple[dict[str, bytes], Path | None, str]:
    """(file name -> bytes, the path that is not official or None, prefix naming files in errors)."""
    if where.is_file():
        raw, files = _read_tarball(where)
        # A re-packed tarball of the official files is still official data.
        official = _md5(raw) == OFFICIAL_MD5[TARBALL] or all(
            _md5(files.get(n, b"")) == OFFICIAL_MD5[n] for n in (*DATA_FILES, META_FILE)
        )
        return files, None if official else where, f"{where}:{BATCHES_DIR}/"
    files = _read_folder(where)
    mismatched = [n for n in (*DATA_FILES, META_FILE) if _md5(files.get(n, b"")) != OFFICIAL_MD5[n]]
    return files, where / mismatched[0] if mismatched else None, f"{where}{os.sep}"


def load_cifar10(
    data_root: str | None = None, *, allow_unofficial: bool = False, download: bool = False
) -> Cifar10Arrays:
    """Find, verify and load CIFAR-10. Unofficial copies (md5 mismatch) need allow_unofficial=True."""
    if download:
        # --download means "make sure there is a copy in data_root (or ./data)": fetch only if there is none.
        root = Path(data_root or "data")
        if _copy_in(root) is None:
            _download(root)
        data_root = str(root)
    where = find_cifar10(data_root).resolve()

    # Cache on path + file stats: a replaced or re-downloaded copy is reread, an unchanged one is not.
    stat_paths = [where] if where.is_file() else [where / n for n in (*DATA_FILES, META_FILE)]
    key = (str(where), tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else None for p in stat_paths))
    arrays = _CACHE.get(key)
    if arrays is None:
        files, not_official, prefix = _read_copy(where)
        if not_official is None:
            source = "official"
        else:
            sha = hashlib.sha256()
            for name in DATA_FILES:
                sha.update(files[name])
            source = f"unofficial:{sha.hexdigest()[:12]}"
            # Refuse before unpickling anything we were not allowed to use.
            if not allow_unofficial:
                raise _unofficial_error(not_official, source)
        train = [_batch_arrays(files[n], prefix + n) for n in DATA_FILES[:5]]
        test = [_batch_arrays(files["test_batch"], prefix + "test_batch")]
        arrays = Cifar10Arrays(
            # concatenate copies into fresh C-contiguous arrays that do not pin the pickled bytes
            train_images=np.concatenate([x for x, _ in train]),
            train_labels=np.concatenate([y for _, y in train]),
            test_images=np.concatenate([x for x, _ in test]),
            test_labels=np.concatenate([y for _, y in test]),
            source=source,
            root=str(where),
        )
        _CACHE[key] = arrays
    if arrays.source != "official" and not allow_unofficial:
        raise _unofficial_error(where, arrays.source)
    return arrays


def _unofficial_error(path: Path, source: str) -> DataError:
    return DataError(
        f"{path}: does not match the official CIFAR-10 md5 ({source.replace(':', ' copy ')}); "
        "pass --allow-unofficial-data to use it"
    )
