"""The one place a pickle is read: CIFAR-10's batch files, through an unpickler that can only rebuild plain
integer numpy arrays (and the dicts, lists and bytes around them). Anything else is a DataError naming the file.
"""

from __future__ import annotations

import io
import pickle

import numpy as np

from .errors import DataError


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

    def __setstate__(self, state) -> None:  # BUILD on the global itself
        raise DataError(f"{self.name}: refusing BUILD on the pickle global numpy.ndarray")


class _Global:
    """What find_class returns for numpy.dtype and _reconstruct: calling it (REDUCE) makes the stand-in; a BUILD
    on it (which on a functools.partial would reset its function and arguments) is refused, and one left in the
    result uncalled is refused by _resolve."""

    __slots__ = ("factory", "name", "what")

    def __init__(self, factory, name: str, what: str):
        self.factory, self.name, self.what = factory, name, what

    def __call__(self, *args):
        return self.factory(self.name, *args)

    def __setstate__(self, state) -> None:
        raise DataError(f"{self.name}: refusing BUILD on the pickle global {self.what}")

    def __repr__(self) -> str:
        return self.what


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
            return _Global(_PickledArray, self.name, f"{module}._reconstruct")
        if (module, name) == ("numpy", "dtype"):
            return _Global(_PickledDtype, self.name, "numpy.dtype")
        if (module, name) == ("numpy", "ndarray"):
            return _NdarrayToken(self.name)
        raise DataError(
            f"{self.name}: refusing pickle global {module}.{name} (CIFAR-10 batches only need numpy arrays)"
        )


_STAND_INS = (_PickledArray, _PickledDtype, _NdarrayToken, _Global)


def _holds_stand_in(value) -> bool:
    """A numpy stand-in in a dict key or set member, at any depth: hashable containers are tuples and frozensets,
    which may nest each other."""
    return isinstance(value, _STAND_INS) or (isinstance(value, (tuple, frozenset))
                                             and any(map(_holds_stand_in, value)))


def _resolve(obj, name: str, seen: dict):
    """obj with every _PickledArray inside dicts, lists and tuples replaced by its array (in place for dicts
    and lists, which may be shared or cyclic). Dtypes, ndarray markers, unbuilt arrays and numpy objects in
    keys or sets are refused: a CIFAR-10 batch holds none."""
    if isinstance(obj, _PickledArray):
        if obj.array is None:
            raise DataError(f"{name}: a numpy array in the pickle was never given its data")
        return obj.array
    if isinstance(obj, (_PickledDtype, _NdarrayToken, _Global)):
        what = {_PickledDtype: "dtype", _NdarrayToken: "ndarray", _Global: f"global {obj!r}"}[type(obj)]
        raise DataError(f"{name}: a bare numpy {what} in the pickle (CIFAR-10 batches hold arrays only)")
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
