"""The lock a preprocessing run holds on its output directory, so that two runs never write (or
clean up) in one `--out` at once, and whether a process id is alive.

The lock is a file in `--out`, `.preprocess.lock` (or `.preprocess-shard-<i>-of-<n>.lock` for
`--shard i/n`, so the tasks of one array job can share `--out`), holding the owner's pid, host and
start time as JSON. It is held while the owner holds `fcntl.flock` on it, or, where flock is not
available, while the recorded pid is alive on this host. A lock whose owner is dead (killed, even
with kill -9) is stale and taken over by the next run. The file is created under a temporary name
and linked into place (never overwriting a live lock) and removed when the run ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from scene_kd.atomic import temporary_sibling

LOCK_PREFIX = ".preprocess"
LOCK_SUFFIX = ".lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: os.kill said it exists


def lock_name(shard: tuple[int, int]) -> str:
    """`.preprocess.lock` for the whole selection, `.preprocess-shard-<i>-of-<n>.lock` for a shard."""
    index, count = shard
    return (
        f"{LOCK_PREFIX}{LOCK_SUFFIX}"
        if count == 1
        else f"{LOCK_PREFIX}-shard-{index}-of-{count}{LOCK_SUFFIX}"
    )


def _shard_of(name: str) -> tuple[int, int] | None:
    if name == f"{LOCK_PREFIX}{LOCK_SUFFIX}":
        return (0, 1)
    try:
        index, count = name[len(f"{LOCK_PREFIX}-shard-") : -len(LOCK_SUFFIX)].split("-of-")
        return int(index), int(count)
    except ValueError:
        return None


def _try_flock(fd: int) -> bool | None:
    """Take an exclusive flock without waiting: True taken, False held by another process, None
    when this platform or file system has no flock."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 65536).decode("utf-8"))
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder_alive(fd: int, holder: dict) -> bool:
    """Whether the run recorded in a lock file still runs: its flock is held, or (without flock,
    or a pid still alive here) its pid is alive on this host; a pid on another host counts as alive."""
    locked = _try_flock(fd)
    if locked is False:
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False  # an empty or unreadable lock file: its writer died while creating it
    if holder.get("host") != socket.gethostname():
        return locked is None
    return pid != os.getpid() and pid_alive(pid)


def _describe(path: Path, holder: dict) -> str:
    when = holder.get("started")
    started = (
        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    )
    return (
        f"{path}: another preprocessing run (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"started {started}, shard {holder.get('shard', '?')}) is writing to {path.parent}"
    )


class OutputLock:
    """Hold the lock of `out_root` for `shard` (i, n) while in the `with` block.

    Raises OSError naming the lock file and its holder when a live run holds this lock, or another
    lock of `out_root` whose scans may overlap this run's (any lock, unless both are shards of the
    same n). A stale lock (its owner dead) is taken over."""

    def __init__(self, out_root: str | os.PathLike, shard: tuple[int, int] = (0, 1)) -> None:
        self.out_root = Path(out_root)
        self.shard = (int(shard[0]), int(shard[1]))
        self.path = self.out_root / lock_name(self.shard)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock (see the class docstring)."""
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "shard": f"{self.shard[0]}/{self.shard[1]}"}  # fmt: skip
        tmp = temporary_sibling(self.path)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, json.dumps(holder).encode("utf-8"))
            _try_flock(fd)  # nobody else knows this file yet
            self._install(tmp)
            self._fd = fd
            self._refuse_overlapping_runs()
        except BaseException:
            if self._fd is not None:
                self.release()
            else:
                os.close(fd)
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def _install(self, tmp: Path) -> None:
        """Link `tmp` (already flocked by us) to the lock's name, taking over a stale lock."""
        for _ in range(10):
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                pass
            try:
                old = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                continue  # its owner just released it
            try:
                if _holder_alive(old, _read_holder(old)):
                    raise OSError(_describe(self.path, _read_holder(old)) + "; wait for it to finish or "
                                  "use another --out (if no such run exists, delete the lock file)")  # fmt: skip
                if os.fstat(old).st_ino != os.stat(self.path).st_ino:
                    continue  # taken over by another run meanwhile: look again
                os.replace(tmp, self.path)  # stale: its owner is dead
                return
            except FileNotFoundError:
                continue
            finally:
                os.close(old)
        raise OSError(f"{self.path}: could not take the lock (other runs keep taking it)")

    def _refuse_overlapping_runs(self) -> None:
        for entry in os.scandir(self.out_root):
            shard = _shard_of(entry.name) if entry.name.endswith(LOCK_SUFFIX) else None
            if shard is None or entry.name == self.path.name:
                continue
            if shard[1] == self.shard[1] != 1:
                continue  # another shard of the same array job: disjoint scans
            try:
                fd = os.open(entry.path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                holder = _read_holder(fd)
                if _holder_alive(fd, holder):
                    raise OSError(_describe(Path(entry.path), holder) + f", and its scans may overlap "
                                  f"this run's (shard {self.shard[0]}/{self.shard[1]}); wait for it to finish "
                                  "or use another --out")  # fmt: skip
            finally:
                os.close(fd)  # closing drops a flock taken on a stale lock; the file stays

    def release(self) -> None:
        """Remove the lock file and drop the lock."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
