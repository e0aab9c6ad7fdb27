"""harness.cifar: finding, verifying and safely loading CIFAR-10 in the official python format."""

import hashlib
import os
import pickle
import re
import struct
import sys
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest

from harness import cifar
from cifar_files import write_cifar10_folder, write_cifar10_tarball
from harness.errors import DataError

SHARED_TARBALL_CANDIDATES = [
    Path("/work/shared/datasets/cifar10/cifar-10-python.tar.gz"),
    Path(cifar.__file__).resolve().parents[1].parent / "shared/datasets/cifar10/cifar-10-python.tar.gz",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No cached datasets and no $CIFAR10_ROOT leak between tests."""
    cifar.clear_cache()
    monkeypatch.delenv(cifar.SEARCH_ENV, raising=False)
    yield
    cifar.clear_cache()


def make_arrays(seed=0, n_train=300, n_test=100):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, n_test),
    )


@pytest.fixture
def small():
    return make_arrays()


@pytest.fixture
def folder_copy(tmp_path, small):
    """tmp_path/ds/cifar-10-batches-py with 5 x 60 train + 100 test images; returns (root, batches dir)."""
    root = tmp_path / "ds"
    return root, write_cifar10_folder(root, *small)


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def expected_source(files: list[bytes]) -> str:
    sha = hashlib.sha256()
    for data in files:
        sha.update(data)
    return "unofficial:" + sha.hexdigest()[:12]


def dump_batch(obj) -> bytes:
    # protocol 4 writes numpy arrays with the same three globals as the official files
    return pickle.dumps(obj, protocol=4)


# --------------------------------------------------------------------------- round trips


def test_folder_round_trip_exact(folder_copy, small):
    root, batches = folder_copy
    tr_x, tr_y, te_x, te_y = small
    assert sorted(p.name for p in batches.iterdir()) == sorted([*cifar.DATA_FILES, cifar.META_FILE])

    got = cifar.load_cifar10(str(root), allow_unofficial=True)
    assert got.train_images.dtype == np.uint8 and got.train_images.shape == (300, 3, 32, 32)
    assert got.test_images.dtype == np.uint8 and got.test_images.shape == (100, 3, 32, 32)
    assert got.train_labels.dtype == np.int64 and got.test_labels.dtype == np.int64
    assert got.train_images.flags["C_CONTIGUOUS"] and got.test_images.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got.train_images, tr_x)
    np.testing.assert_array_equal(got.train_labels, tr_y)
    np.testing.assert_array_equal(got.test_images, te_x)
    np.testing.assert_array_equal(got.test_labels, te_y)
    assert got.root == str(batches.resolve())
    assert got.source == expected_source([(batches / n).read_bytes() for n in cifar.DATA_FILES])

    cifar.clear_cache()  # stable across a real reread, not just via the cache
    assert cifar.load_cifar10(str(root), allow_unofficial=True).source == got.source


def test_written_batches_match_official_layout(folder_copy, small):
    _, batches = folder_copy
    raw = pickle.loads((batches / "data_batch_1").read_bytes(), encoding="bytes")
    assert set(raw) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (60, 3072)
    assert raw[b"labels"] == [int(y) for y in small[1][:60]]
    # R plane, then G, then B, row-major -- the official pixel order
    np.testing.assert_array_equal(raw[b"data"][0, :1024], small[0][0, 0].ravel())
    meta = pickle.loads((batches / "batches.meta").read_bytes(), encoding="bytes")
    assert meta[b"label_names"][0] == b"airplane" and len(meta[b"label_names"]) == 10


def test_unofficial_refused_without_permission(folder_copy):
    root, batches = folder_copy
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(root))
    msg = one_line_error(excinfo)
    assert "--allow-unofficial-data" in msg and "official CIFAR-10 md5" in msg
    assert str(batches.resolve() / "data_batch_1") in msg

    # Once loaded with permission (and cached), a caller without permission is still refused.
    cifar.load_cifar10(str(root), allow_unofficial=True)
    with pytest.raises(DataError, match="--allow-unofficial-data"):
        cifar.load_cifar10(str(root))


def test_tarball_loads_same_arrays(tmp_path, folder_copy, small):
    root, _ = folder_copy
    tar = write_cifar10_tarball(tmp_path / "tar", *small)
    assert tar.name == "cifar-10-python.tar.gz"
    with tarfile.open(tar) as tf:
        assert sorted(tf.getnames()) == sorted(f"cifar-10-batches-py/{n}" for n in [*cifar.DATA_FILES, cifar.META_FILE])

    from_folder = cifar.load_cifar10(str(root), allow_unofficial=True)
    from_tar = cifar.load_cifar10(str(tmp_path / "tar"), allow_unofficial=True)
    assert from_tar.root == str(tar.resolve())
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(from_tar, field), getattr(from_folder, field))
    assert from_tar.source == from_folder.source  # hash is over the batch bytes, not the container

    with pytest.raises(DataError, match="--allow-unofficial-data") as excinfo:
        cifar.load_cifar10(str(tmp_path / "tar"))
    assert str(tar.resolve()) in one_line_error(excinfo)


def test_official_md5_gives_official_source(monkeypatch, folder_copy, tmp_path, small):
    root, batches = folder_copy
    for name in (*cifar.DATA_FILES, cifar.META_FILE):
        monkeypatch.setitem(cifar.OFFICIAL_MD5, name, hashlib.md5((batches / name).read_bytes()).hexdigest())
    got = cifar.load_cifar10(str(root))  # no permission needed
    assert got.source == "official"

    # one file off by a byte -> unofficial again
    data = bytearray((batches / "test_batch").read_bytes())
    data[-20] ^= 1
    (batches / "test_batch").write_bytes(bytes(data))
    os.utime(batches / "test_batch", ns=(1, 1))
    with pytest.raises(DataError, match="test_batch.*--allow-unofficial-data"):
        cifar.load_cifar10(str(root))


def test_official_tarball_md5(monkeypatch, tmp_path, small):
    tar = write_cifar10_tarball(tmp_path, *small)
    monkeypatch.setitem(cifar.OFFICIAL_MD5, cifar.TARBALL, hashlib.md5(tar.read_bytes()).hexdigest())
    assert cifar.load_cifar10(str(tmp_path)).source == "official"


def test_cache_returns_same_object_until_files_change(folder_copy):
    root, batches = folder_copy
    first = cifar.load_cifar10(str(root), allow_unofficial=True)
    assert cifar.load_cifar10(str(root), allow_unofficial=True) is first
    other = make_arrays(seed=1)
    write_cifar10_folder(root, *other)
    os.utime(batches / "data_batch_1", ns=(1, 1))  # mtime changes even on coarse-clock filesystems
    again = cifar.load_cifar10(str(root), allow_unofficial=True)
    assert again is not first and again.source != first.source
    np.testing.assert_array_equal(again.train_images, other[0])


# --------------------------------------------------------------------------- hostile and broken files


def global_call_pickle(module: str, name: str, arg: str) -> bytes:
    """Protocol-2 pickle of `module.name(arg)`: GLOBAL, BINUNICODE, TUPLE1, REDUCE, STOP."""
    a = arg.encode()
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X" + struct.pack("<I", len(a)) + a + b"\x85R."


class PopenPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import subprocess

        return (subprocess.Popen, (["touch", str(self.marker)],))


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.Popen"])
def test_hostile_pickle_is_refused(folder_copy, tmp_path, kind):
    root, batches = folder_copy
    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = global_call_pickle("os", "system", f"touch {marker}")
    elif kind == "builtins.eval":
        payload = global_call_pickle("builtins", "eval", f"open({str(marker)!r}, 'w').close()")
    else:
        payload = pickle.dumps({"data": PopenPayload(marker)}, protocol=4)
    (batches / "data_batch_2").write_bytes(payload)

    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(root), allow_unofficial=True)
    msg = one_line_error(excinfo)
    assert f"refusing pickle global {kind}" in msg
    assert str(batches.resolve() / "data_batch_2") in msg
    assert not marker.exists()


def test_hostile_payload_is_real(tmp_path):
    """Guard against a vacuous test above: the same bytes do run code under plain pickle."""
    marker = tmp_path / "ran"
    pickle.loads(global_call_pickle("os", "system", f"touch {marker}"))
    assert marker.exists()


def test_restricted_load_allows_only_numpy_globals():
    data = dump_batch({b"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2]})
    out = cifar.restricted_load(data, "x")
    assert set(out) == {"data", "labels"} and out["data"].shape == (2, 3072)
    for module, name in [("numpy", "load"), ("numpy.core.multiarray", "scalar"), ("_codecs", "encode")]:
        with pytest.raises(DataError, match=f"x: refusing pickle global {module}.{name}"):
            cifar.restricted_load(global_call_pickle(module, name, "a"), "x")
    with pytest.raises(DataError, match="expected a pickled dict"):
        cifar.restricted_load(pickle.dumps([1, 2]), "x")


def test_truncated_batch_file(folder_copy):
    root, batches = folder_copy
    data = (batches / "data_batch_3").read_bytes()
    (batches / "data_batch_3").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(root), allow_unofficial=True)
    msg = one_line_error(excinfo)
    assert str(batches.resolve() / "data_batch_3") in msg and "truncated" in msg


@pytest.mark.parametrize("missing", ["data_batch_5", "test_batch"])
def test_missing_batch_file(folder_copy, missing):
    root, batches = folder_copy
    (batches / missing).unlink()
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(root), allow_unofficial=True)
    assert str(batches.resolve() / missing) in one_line_error(excinfo)


def test_fewer_train_batches_is_an_incomplete_copy(tmp_path, small):
    write_cifar10_folder(tmp_path, *small, n_train_batches=4)
    with pytest.raises(DataError, match="data_batch_5: missing"):
        cifar.load_cifar10(str(tmp_path), allow_unofficial=True)


def test_garbage_and_truncated_tarballs(tmp_path, small):
    garbage = tmp_path / "g" / cifar.TARBALL
    garbage.parent.mkdir()
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(garbage.parent), allow_unofficial=True)
    assert str(garbage.resolve()) in one_line_error(excinfo)

    tar = write_cifar10_tarball(tmp_path / "t", *small)
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(tar.parent), allow_unofficial=True)
    assert str(tar.resolve()) in one_line_error(excinfo)


def test_tarball_missing_member(tmp_path, small):
    tar = write_cifar10_tarball(tmp_path / "full", *small)
    partial = tmp_path / "partial" / cifar.TARBALL
    partial.parent.mkdir()
    with tarfile.open(tar) as src, tarfile.open(partial, "w:gz") as dst:
        for member in src.getmembers():
            if not member.name.endswith("test_batch"):
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(DataError, match="missing member cifar-10-batches-py/test_batch") as excinfo:
        cifar.load_cifar10(str(partial), allow_unofficial=True)
    assert str(partial.resolve()) in one_line_error(excinfo)


@pytest.mark.parametrize(
    "batch, problem",
    [
        ({b"data": np.zeros((10, 3000), np.uint8), b"labels": [0] * 10}, "uint8 \\(N, 3072\\)"),
        ({b"data": np.zeros((10, 3072), np.float32), b"labels": [0] * 10}, "uint8 \\(N, 3072\\)"),
        ({b"labels": [0] * 10}, "'data' must be"),
        ({b"data": np.zeros((10, 3072), np.uint8), b"labels": [0] * 9}, "'labels' must be 10 integers"),
        ({b"data": np.zeros((10, 3072), np.uint8), b"labels": ["a"] * 10}, "'labels' must be 10 integers"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}, "labels outside 0..9"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 3]}, "labels outside 0..9"),
    ],
)
def test_bad_batch_contents(folder_copy, batch, problem):
    root, batches = folder_copy
    (batches / "data_batch_4").write_bytes(dump_batch(batch))
    with pytest.raises(DataError, match=problem) as excinfo:
        cifar.load_cifar10(str(root), allow_unofficial=True)
    assert str(batches.resolve() / "data_batch_4") in one_line_error(excinfo)


# --------------------------------------------------------------------------- finding a copy


def test_search_order(monkeypatch, tmp_path, small):
    explicit = write_cifar10_folder(tmp_path / "explicit", *small)
    env = write_cifar10_tarball(tmp_path / "env", *small)
    cwd = tmp_path / "cwd"
    in_cwd = write_cifar10_folder(cwd / "data", *small)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv(cifar.SEARCH_ENV, str(tmp_path / "env"))

    roots = cifar.candidate_roots(str(tmp_path / "explicit"))
    assert roots[:3] == [tmp_path / "explicit", tmp_path / "env", Path("data")]
    assert Path(cifar.__file__).resolve().parents[1].parent / "shared/datasets/cifar10" in roots
    assert Path("../shared/datasets/cifar10") in roots

    assert cifar.find_cifar10(str(tmp_path / "explicit")) == explicit
    assert cifar.find_cifar10() == env
    monkeypatch.delenv(cifar.SEARCH_ENV)
    assert cifar.find_cifar10().resolve() == in_cwd.resolve()
    # the batches folder itself and a tarball path are accepted as data_root too
    assert cifar.find_cifar10(str(explicit)) == explicit
    assert cifar.find_cifar10(str(env)) == env


def test_folder_preferred_over_tarball_in_same_root(tmp_path, small):
    tar = write_cifar10_tarball(tmp_path, *small)
    folder = write_cifar10_folder(tmp_path, *small)
    assert tar.exists() and cifar.find_cifar10(str(tmp_path)) == folder


@pytest.mark.parametrize("what", ["empty", "nonexistent"])
def test_explicit_root_without_data_does_not_fall_through(monkeypatch, tmp_path, small, what):
    write_cifar10_folder(tmp_path / "env", *small)
    monkeypatch.setenv(cifar.SEARCH_ENV, str(tmp_path / "env"))
    target = tmp_path / what
    if what == "empty":
        target.mkdir()
    with pytest.raises(DataError) as excinfo:
        cifar.find_cifar10(str(target))
    assert str(target) in one_line_error(excinfo)
    with pytest.raises(DataError, match=re.escape(str(target))):
        cifar.load_cifar10(str(target), allow_unofficial=True)


def test_nothing_anywhere(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cifar, "candidate_roots", lambda data_root: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(DataError) as excinfo:
        cifar.find_cifar10()
    msg = one_line_error(excinfo)
    assert str(tmp_path / "a") in msg and str(tmp_path / "b") in msg
    assert "--data-root" in msg and "--download" in msg


# --------------------------------------------------------------------------- download and synthetic


def fake_torchvision(monkeypatch, cifar10_class):
    tv = types.ModuleType("torchvision")
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = cifar10_class
    tv.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)


def test_download_failure_is_a_data_error(monkeypatch, tmp_path):
    def offline(root, train, download):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz:\n<urlopen error no network>")

    fake_torchvision(monkeypatch, offline)
    with pytest.raises(DataError) as excinfo:
        cifar.load_cifar10(str(tmp_path / "dl"), download=True)
    msg = one_line_error(excinfo)
    assert "downloading CIFAR-10" in msg and str(tmp_path / "dl") in msg and "no network" in msg


def test_download_fetches_only_when_missing(monkeypatch, tmp_path, small):
    calls = []

    def fetch(root, train, download):
        calls.append(root)
        write_cifar10_tarball(Path(root), *small)

    fake_torchvision(monkeypatch, fetch)
    monkeypatch.chdir(tmp_path)
    got = cifar.load_cifar10(download=True, allow_unofficial=True)  # default root is ./data
    assert calls == ["data"] and got.root == str((tmp_path / "data" / cifar.TARBALL).resolve())
    cifar.load_cifar10(download=True, allow_unofficial=True)
    assert calls == ["data"]  # present now: not fetched again


# --------------------------------------------------------------------------- the shared (lossy) copy


def test_shared_copy():
    tarball = next((p for p in SHARED_TARBALL_CANDIDATES if p.is_file()), None)
    if tarball is None:
        pytest.skip("shared CIFAR-10 copy not present")
    with pytest.raises(DataError, match="--allow-unofficial-data") as excinfo:
        cifar.load_cifar10(str(tarball.parent))
    assert str(tarball.resolve()) in one_line_error(excinfo)

    got = cifar.load_cifar10(str(tarball.parent), allow_unofficial=True)
    assert got.source.startswith("unofficial:") and len(got.source) == len("unofficial:") + 12
    assert got.train_images.shape == (50000, 3, 32, 32) and got.train_images.dtype == np.uint8
    assert got.test_images.shape == (10000, 3, 32, 32) and got.test_images.dtype == np.uint8
    assert got.train_labels.shape == (50000,) and got.train_labels.dtype == np.int64
    assert got.test_labels.shape == (10000,) and got.test_labels.dtype == np.int64
    assert got.train_images.flags["C_CONTIGUOUS"]
    assert np.bincount(got.train_labels, minlength=10).tolist() == [5000] * 10
    assert np.bincount(got.test_labels, minlength=10).tolist() == [1000] * 10
    # real images, not noise: neighbouring pixels are strongly correlated
    img = got.train_images[:100].astype(np.float32)
    assert np.corrcoef(img[..., :-1].ravel(), img[..., 1:].ravel())[0, 1] > 0.8
