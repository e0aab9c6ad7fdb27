"""One driver per run directory: an exclusive, non-blocking flock on RUN_DIR/driver.lock, held for the driver's
life. A second driver on a live run (a `--resume` while the first runs, a retried `ray job submit`) is refused in
one line; of two started at once exactly one gets it. The kernel drops the lock when its holder ends, however it
ends (SIGKILL included), so a dead driver's run can be resumed at once: there is no stale-lock clean-up. The
descriptor is not inherited by child processes (an embedded Ray's GCS and raylet are the driver's children and
outlive it by a moment; they must not hold the lock).

NFS: Linux emulates flock on NFS with a whole-file POSIX byte-range lock, so it holds across clients when the
server's lock manager does (NFSv4, or NFSv3 with lockd/NLM). On a mount with `nolock` or `local_lock=flock|all`
the lock is local to one client: two drivers on two machines sharing such a results folder are not kept apart.
An NFSv4 client cut off from its server past the lease time can lose the lock while its driver still runs.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from .errors import HarnessError

LOCK_NAME = "driver.lock"


class RunLock:
    """The lock of one run directory; `release()` (or the process's end) lets the next driver in."""

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self.path, self._fd = Path(run_dir), Path(run_dir) / LOCK_NAME, fd

    def release(self, remove_if_unused: bool = False) -> None:
        """Drop the lock. remove_if_unused: a new run that wrote nothing (Ray unreachable, a bad dataset) leaves
        no folder behind. The lock file is never removed otherwise: a driver that opened it before the unlink
        would lock a file the next driver no longer sees."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if remove_if_unused:
            try:
                if os.listdir(self.run_dir) == [LOCK_NAME]:
                    os.unlink(self.path)
                    os.rmdir(self.run_dir)
            except OSError:
                pass
        os.close(fd)  # closing the last descriptor of the open file drops the flock

    def __del__(self):  # a Plan dropped without release() (a test) does not keep its run locked
        self.release()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def lock_run_dir(run_dir: Path) -> RunLock:
    """Take RUN_DIR's driver lock (creating RUN_DIR), or raise HarnessError naming the driver that holds it."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # non-inheritable (PEP 446 and CLOEXEC)
    except OSError as exc:
        raise HarnessError(f"cannot lock run directory {run_dir}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise HarnessError(f"run directory {run_dir} is in use by another driver ({holder}): wait for it to "
                               f"end (or stop it) before resuming this run") from None
        raise HarnessError(f"cannot lock run directory {run_dir}: {exc.strerror or exc}") from None
    try:  # who holds it, for the refusal the next driver prints (informational: the flock is the lock)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0)
    except OSError:
        pass
    return RunLock(run_dir, fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
