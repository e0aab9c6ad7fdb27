"""CIFAR-10 (official python format) discovery, verification and loading.

A copy is either a `cifar-10-batches-py/` folder or the `cifar-10-python.tar.gz` that contains it.
Every copy is md5-checked against the official release; anything else is "unofficial" and is only
used with explicit permission, tagged with a content hash so results record which copy they came from.
Batches are pickles, so they are read with an unpickler that can only rebuild numpy arrays.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import posixpath
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError

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


# --------------------------------------------------------------------------- safe unpickling

# The official (Python 2) batches name exactly three globals -- checked with pickletools.genops on the shared
# copy -- and numpy >= 2 writes _reconstruct under numpy._core. None of them reaches the pickle as itself:
# each maps to a stand-in below, so numpy never sees a dtype or array state that came from the file.
#
# Why: numpy.dtype(...) followed by BUILD can set a dtype's flags (drop an object dtype's "holds references"
# flags), after which ndarray.__setstate__ makes an object array from raw bytes: pointers the file chose.
# A later check (the loader wants uint8) would refuse it, but the array would exist first. Here a dtype is
# refused when it is constructed unless it is a plain integer type, its BUILD state must be that of a plain
# integer dtype (no fields, subarray, flags or metadata), and arrays are made by np.frombuffer from bytes
# whose length matches shape x itemsize.
_INT_TYPESTRS = frozenset(f"{k}{n}" for k in "iu" for n in (1, 2, 4, 8))
_BYTE_ORDERS = frozenset("<>|=")
_MAX_NDIM = 32


class _NdarrayToken:
    """What the pickle's `numpy.ndarray` global becomes: a marker _reconstruct checks; calling it (a pickle
    calling ndarray(shape, dtype, buffer) itself) is refused."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return "numpy.ndarray"

    def __call__(self, *args, **kwargs):
        raise DataError(f"{self.name}: refusing a call of numpy.ndarray in a pickle (arrays come only from "
                        "numpy's _reconstruct)")


def _short(value) -> str:
    """A short, one-line description of a pickled value for an error message (never a 30 MB repr)."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value[:10]) + (", ..." if len(value) > 10 else "") + ")"
    if isinstance(value, (str, bytes)):
        return repr(value) if len(value) <= 20 else f"<{type(value).__name__} of length {len(value)}>"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)[:24]
    return f"<{type(value).__name__}>"


def _as_text(value, what: str, name: str) -> str:
    if isinstance(value, bytes):  # Python 2 str, read with encoding="bytes"
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            value = None
    if not isinstance(value, str) or len(value) > 16:
        raise DataError(f"{name}: refusing numpy {what} {_short(value)} in a pickle (CIFAR-10 batches hold "
                        "plain integer arrays only)")
    return value


def _is_flag(value) -> bool:
    return isinstance(value, (bool, int)) and value in (0, 1)


class _PickledDtype:
    """A numpy.dtype(...) call in the pickle: holds a plain integer dtype, refused otherwise. Its BUILD
    (__setstate__) accepts only the state numpy writes for such a dtype and may change just its byte order."""

    __slots__ = ("dtype", "name", "built")

    def __init__(self, name: str, obj=None, align=False, copy=False, *extra):
        typestr = _as_text(obj, "dtype", name)
        if extra or not (_is_flag(align) and _is_flag(copy)) or align:
            raise DataError(f"{name}: refusing numpy dtype({typestr!r}, align={_short(align)}, copy={_short(copy)}"
                            f"{', ...' if extra else ''}) in a pickle (CIFAR-10 batches hold plain integer arrays only)")
        core = typestr[1:] if typestr[:1] in _BYTE_ORDERS else typestr
        if core not in _INT_TYPESTRS:
            raise DataError(f"{name}: refusing numpy dtype {typestr!r} in a pickle (a CIFAR-10 batch holds a uint8 "
                            f"(N, 3072) array; only plain integer dtypes {'/'.join(sorted(_INT_TYPESTRS))} are allowed)")
        self.dtype = np.dtype(typestr)
        self.name = name
        self.built = False

    def __setstate__(self, state) -> None:
        # numpy writes (3, byteorder, subarray, names, fields, elsize, alignment, flags) for a plain dtype;
        # version 4 appends metadata.
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4) and not self.built
              and all(x is None for x in state[2:5]) and (len(state) == 8 or state[8] is None))
        if ok:
            order = _as_text(state[1], "dtype byte order", self.name)
            elsize, alignment, flags = state[5:8]
            ok = (order in _BYTE_ORDERS and all(type(x) is int for x in (elsize, alignment, flags))
                  and elsize in (-1, self.dtype.itemsize) and alignment in (-1, self.dtype.alignment) and flags == 0)
        if not ok:
            raise DataError(f"{self.name}: refusing numpy dtype state {_short(state)} for {self.dtype.str!r} in a "
                            "pickle (only a plain integer dtype's state: no fields, subarray or flags)")
        if order in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(order)
        self.built = True


class _PickledArray:
    """A numpy _reconstruct(ndarray, ...) call in the pickle; its BUILD makes the array with np.frombuffer."""

    __slots__ = ("array", "name")

    def __init__(self, name: str, subtype=None, shape=None, typecode=None, *extra):
        if not isinstance(subtype, _NdarrayToken) or extra:
            raise DataError(f"{name}: refusing numpy _reconstruct of {_short(subtype)} in a pickle (CIFAR-10 "
                            "batches hold plain numpy arrays only)")
        self.array = None
        self.name = name

    def __setstate__(self, state) -> None:
        # numpy writes (1, shape, dtype, is_fortran, raw bytes); very old pickles leave out the version.
        if isinstance(state, tuple) and len(state) == 4:
            state = (1, *state)
        ok = isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and self.array is None
        if ok:
            _, shape, dtype, fortran, raw = state
            ok = (isinstance(shape, tuple) and len(shape) <= _MAX_NDIM
                  and all(type(n) is int and n >= 0 for n in shape)
                  and isinstance(dtype, _PickledDtype) and _is_flag(fortran) and isinstance(raw, bytes))
        if not ok:
            raise DataError(f"{self.name}: refusing numpy array state {_short(state)} in a pickle (expected "
                            "(1, shape, integer dtype, fortran flag, raw bytes))")
        count = 1
        for n in shape:
            count *= n
        if count * dtype.dtype.itemsize != len(raw):
            raise DataError(f"{self.name}: numpy array of shape {shape} and dtype {dtype.dtype.str} needs "
                            f"{count * dtype.dtype.itemsize} bytes, the pickle holds {len(raw)}")
        flat = np.frombuffer(raw, dtype=dtype.dtype, count=count)
        self.array = flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild plain integer numpy arrays and plain containers, and nothing else, so a
    hostile batch file cannot run code (pickle.load would call any global it names) nor make numpy build an
    array from raw pointers. The numpy globals become the stand-ins above; restricted_load swaps each
    _PickledArray for its array."""

    def __init__(self, file, name: str, **kwargs):
        super().__init__(file, **kwargs)
        self.name = name

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return functools.partial(_PickledArray, self.name)
        if (module, name) == ("numpy", "dtype"):
            return functools.partial(_PickledDtype, self.name)
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayToken(self.name)
        raise DataError(
            f"{self.name}: refusing pickle global {module}.{name} (CIFAR-10 batches only need numpy arrays)"
        )


_STAND_INS = (_PickledArray, _PickledDtype, _NdarrayToken)


def _holds_stand_in(value) -> bool:
    """A numpy stand-in in a dict key or set member (reachable only through tuples: keys must be hashable)."""
    return isinstance(value, _STAND_INS) or (isinstance(value, tuple) and any(map(_holds_stand_in, value)))


def _resolve(obj, name: str, seen: dict):
    """obj with every _PickledArray inside dicts, lists and tuples replaced by its array (in place for dicts
    and lists, which may be shared or cyclic). Dtypes, ndarray markers, unbuilt arrays and numpy objects in
    keys or sets are refused: a CIFAR-10 batch holds none."""
    if isinstance(obj, _PickledArray):
        if obj.array is None:
            raise DataError(f"{name}: a numpy array in the pickle was never given its data")
        return obj.array
    if isinstance(obj, (_PickledDtype, _NdarrayToken)):
        raise DataError(f"{name}: a bare numpy {'dtype' if isinstance(obj, _PickledDtype) else 'ndarray'} in "
                        "the pickle (CIFAR-10 batches hold arrays only)")
    if isinstance(obj, (dict, list)):
        if id(obj) not in seen:
            seen[id(obj)] = obj
            if isinstance(obj, dict):
                if any(map(_holds_stand_in, obj)):
                    raise DataError(f"{name}: a numpy object as a dict key in the pickle")
                for k, v in obj.items():
                    obj[k] = _resolve(v, name, seen)
            else:
                obj[:] = [_resolve(v, name, seen) for v in obj]
        return obj
    if isinstance(obj, tuple):
        return tuple(_resolve(v, name, seen) for v in obj)
    if isinstance(obj, (set, frozenset)) and any(map(_holds_stand_in, obj)):
        raise DataError(f"{name}: a numpy object inside a set in the pickle")
    return obj


def restricted_load(data: bytes, name: str) -> dict:
    """Unpickle one batch/meta file with str keys; any parse failure is a DataError naming `name`."""
    try:
        # encoding="bytes": the official pickles are Python 2 str, i.e. raw bytes (keys and pixels).
        obj = RestrictedUnpickler(io.BytesIO(data), name, encoding="bytes").load()
        obj = _resolve(obj, name, {})
    except DataError:
        raise
    except Exception as err:  # truncated or garbage input shows up as many exception types
        raise DataError(f"{name}: corrupt or truncated CIFAR-10 pickle ({_one_line(err)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


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
