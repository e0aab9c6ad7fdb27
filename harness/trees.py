"""The code of each side of an A/B: a git ref of this repository, or the working tree, as an archive of its
`harness/` package.

Materialised once on the driver (`git archive REF harness`, or the working tree's files for a dirty candidate
with --allow-dirty), shipped to every node through Ray's object store (never assumed on a shared filesystem),
and unpacked there once per node into a private cache keyed by the tree's hash. The hash is env.tree_hash's
(the code_version every record carries), so the driver can tell before running anything that two refs hold the
same harness, and check afterwards that each record ran the tree it was meant to. Installed dependencies are
shared: both sides run with this environment's torch.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .env import PROJECT_ROOT
from .errors import HarnessError

PACKAGE = "harness"


@dataclass(frozen=True)
class CodeTree:
    """One side's code."""
    label: str           # what the user named: a ref, or "working tree"
    commit: str | None   # the ref's full sha (the working tree: HEAD's, marked dirty in `label`)
    key: str             # env.tree_hash of its harness/: the first part of the code_version its records carry
    archive: bytes       # a tar of harness/**
    pair_plan: bool      # its TrialSpec has sample_plan "pair" (refs before it run the standard plan)

    @property
    def short(self) -> str:
        return f"{self.label} ({(self.commit or '')[:12]}, tree {self.key})"


def _git(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HarnessError(f"cannot run git in {PROJECT_ROOT}: {exc}") from None
    if check and out.returncode != 0:
        msg = out.stderr.decode(errors="replace").strip().splitlines()
        raise HarnessError(f"git {' '.join(args)}: {msg[0] if msg else 'failed'}")
    return out


def resolve(ref: str) -> str:
    """The full sha of a commit ref of this repository, or one line naming the unknown ref."""
    if not ref or ref.startswith("-"):
        raise HarnessError(f"unknown git ref {ref!r}")
    out = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    if out.returncode != 0:
        raise HarnessError(f"unknown git ref {ref!r} (not a commit of {PROJECT_ROOT})")
    return out.stdout.decode().strip()


def dirty() -> list[str]:
    """Uncommitted changes under harness/ (untracked files included): what HEAD's archive would not hold."""
    out = _git("status", "--porcelain", "--untracked-files=all", "--", PACKAGE)
    return [line[3:] for line in out.stdout.decode(errors="replace").splitlines() if line.strip()]


def archive_key(archive: bytes) -> str:
    """env.tree_hash of the harness/ inside a tar, computed without unpacking it."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith(PACKAGE + "/") and m.name.endswith(".py"):
                files[m.name[len(PACKAGE) + 1:]] = tar.extractfile(m).read()
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{len(files[rel])}\0".encode())
        h.update(files[rel])
    return h.hexdigest()[:12]


def _has_pair_plan(archive: bytes) -> bool:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        try:
            spec = tar.extractfile(f"{PACKAGE}/spec.py")
        except KeyError:
            return False
        return spec is not None and b'"sample_plan"' in spec.read()


def from_ref(ref: str) -> CodeTree:
    sha = resolve(ref)
    if _git("ls-tree", "-d", sha, PACKAGE).stdout.strip() == b"":
        raise HarnessError(f"git ref {ref!r} ({sha[:12]}) has no {PACKAGE}/ package")
    archive = _git("archive", "--format=tar", sha, PACKAGE).stdout
    return CodeTree(ref, sha, archive_key(archive), archive, _has_pair_plan(archive))


def from_worktree() -> CodeTree:
    """The working tree's harness/ as it is now (tracked and untracked, not ignored)."""
    names = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", PACKAGE).stdout
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(n for n in names.decode().split("\0") if n):
            path = PROJECT_ROOT / name
            if path.is_file():
                tar.add(path, arcname=name, recursive=False)
    archive = buf.getvalue()
    head = resolve("HEAD")
    return CodeTree("working tree", head, archive_key(archive), archive, _has_pair_plan(archive))


def cache_root() -> Path:
    """Where a node keeps unpacked trees: private to this user (0700), not a predictable shared /tmp path."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lstm-bench" / "trees"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(base, 0o700)
    return base


def unpack(archive: bytes, key: str) -> Path:
    """The folder holding this tree's harness/ on this node: unpacked once (into a temporary folder, renamed
    into place, so a concurrent task never sees half a tree), then reused. The archive is checked against its
    key: a tree that does not hash to what the driver computed is refused."""
    root = cache_root()
    dest = root / key
    if (dest / PACKAGE / "__init__.py").is_file():
        return dest
    if archive_key(archive) != key:
        raise HarnessError(f"code archive does not match its tree hash {key}")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")  # no absolute paths, no links out, no devices
    try:
        os.rename(tmp, dest)
    except OSError:  # another task unpacked it first
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return dest
