"""Make a worker process die with the process that started it.

A worker pool's processes outlive a parent killed with SIGKILL (no cleanup runs in the parent), and
would go on writing into the output directory and then hang on a result queue nobody reads.
`die_with_parent(parent_pid)`, run as the pool's initializer, prevents that: on Linux the kernel
sends the worker SIGKILL when its parent dies (`prctl(PR_SET_PDEATHSIG)`), and on every platform a
daemon thread checks once a second that the parent is still the same process and exits if not
(the fallback, and the guard for a parent that died before the initializer ran).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_SECONDS = 1.0


def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parent_gone(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if _parent_gone(parent_pid):
            os._exit(1)  # no cleanup: the parent that would read our results is gone


def die_with_parent(parent_pid: int) -> None:
    """Initializer of a worker started by process `parent_pid`: exit when that process dies.

    Exits at once when the parent is already gone (its pid is then no longer our parent pid)."""
    _set_parent_death_signal()
    if _parent_gone(parent_pid):
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="die-with-parent", daemon=True).start()
