"""How many CPU threads torch uses and how long its OpenMP threads spin, for the tools.

Why: a sparse U-Net step runs thousands of small parallel regions. When another process holds one of
the cores, each region waits for the thread that lost its core, and threads that spin-wait (OpenMP's
default is to spin for a while before sleeping) take time from the very thread they wait for.
Measured on 2 cores beside one busy process (benchmarks/cpu_contention.py, docs/performance.md): the
training tools' steps took 3-13x their idle time with the runtime's defaults.

The policy, `SCENE_KD_CPU_THREADS`:
- `auto` (the tools' default): OpenMP threads spin for at most `GOMP_SPINCOUNT=10000` iterations
  (microseconds) before they sleep, set when the tool starts (OpenMP reads it once, when torch loads
  it); and on the CPU the training loop uses one thread per core that other processes leave idle,
  measured from /proc/stat every few seconds and adjusted as they come and go (`CpuThreadFollower`: in
  the shared loop as `CpuThreadsHook`; in evaluation and the demo's 2D-teacher and in-world CLIP loops
  through `follow_cpu_load`), never
  more than torch's own default (one per physical core);
- a number N: N threads (`OMP_NUM_THREADS=N`), the same short spin, no adjustment;
- `keep`: nothing is changed (the runtime's defaults: one thread per core, long spin).
Variables the user set (`OMP_NUM_THREADS`, `OMP_WAIT_POLICY`, `GOMP_SPINCOUNT`) are kept and turn the
adjustment off; `torchrun` with several processes sets `OMP_NUM_THREADS=1` itself. Library code
adjusts nothing unless `SCENE_KD_CPU_THREADS=auto` is in the environment (the tools put it there).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

POLICY_VARIABLE = "SCENE_KD_CPU_THREADS"
SHORT_SPIN = "10000"
FIRST_CHECK_S = 2.0  # a loop's load is first measured over its first seconds, then every CHECK_EVERY_S
CHECK_EVERY_S = 2.0


def read_cpu_times(stat_path: str | os.PathLike = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs together from the first line of /proc/stat; None where absent."""
    try:
        fields = [int(v) for v in Path(stat_path).read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def read_own_cpu_ticks(stat_path: str | os.PathLike = "/proc/self/stat") -> int | None:
    """CPU time of this process (all its threads, user + system) in clock ticks, the unit of /proc/stat."""
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    except (OSError, ValueError, IndexError):
        return None


class OtherProcessesLoad:
    """Logical CPUs kept busy by other processes between two calls of `sample` (all CPUs' busy time
    from /proc/stat less this process's own CPU time)."""

    def __init__(self, read_all: Callable[[], tuple[int, int] | None] = read_cpu_times,
                 read_own: Callable[[], int | None] = read_own_cpu_ticks, cpu_count: int | None = None) -> None:
        self.read_all, self.read_own = read_all, read_own
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self.last = self._read()

    def _read(self) -> tuple[int, int, int] | None:
        times, own = self.read_all(), self.read_own()
        return None if times is None or own is None else (*times, own)

    def sample(self) -> float | None:
        """Busy CPUs of other processes since the last call (or since construction); None where unknown."""
        now, last = self._read(), self.last
        self.last = now
        if now is None or last is None or now[1] <= last[1]:
            return None
        others = max(0, (now[0] - last[0]) - (now[2] - last[2]))
        return others / (now[1] - last[1]) * self.cpu_count


def auto_threads(cores: int, busy: float | None, logical: int) -> int:
    """One thread per core left idle by other processes, at least one. busy: logical CPUs busy with
    other processes (scaled to physical cores; a core counts as busy from 40 % of it)."""
    if busy is None:
        return cores
    busy_cores = int(busy * cores / max(logical, 1) + 0.6)
    return max(1, min(cores, cores - busy_cores))


def policy(environ: Mapping[str, str] | None = None) -> str:
    """`SCENE_KD_CPU_THREADS` checked: "auto", "keep" or a number >= 1 as text (unset: "auto").
    Raises ValueError naming the variable for any other value."""
    environ = os.environ if environ is None else environ
    value = environ.get(POLICY_VARIABLE, "auto").strip().lower() or "auto"
    if value not in ("auto", "keep") and not (value.isdigit() and int(value) >= 1):
        raise ValueError(f"{POLICY_VARIABLE}={environ[POLICY_VARIABLE]!r}: expected auto, keep or a number of "
                         "threads >= 1")
    return value


def cpu_thread_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a tool sets before torch is imported (the user's own are kept)."""
    environ = os.environ if environ is None else environ
    chosen = policy(environ)
    if chosen == "keep":
        return {}
    changes = {POLICY_VARIABLE: chosen}
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        changes["GOMP_SPINCOUNT"] = SHORT_SPIN
    if chosen != "auto":
        changes["OMP_NUM_THREADS"] = chosen
    return changes


def apply_cpu_thread_policy(environ: dict[str, str] | None = None) -> bool:
    """Set the policy's variables in `environ` (default os.environ) if torch is not imported yet;
    returns whether it did. Called first by the tools."""
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return False
    environ.update(cpu_thread_environment(environ))
    return True


def adjusts_threads(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the training loop adjusts its thread count: SCENE_KD_CPU_THREADS=auto in the
    environment and no OMP_NUM_THREADS of the user's."""
    environ = os.environ if environ is None else environ
    return environ.get(POLICY_VARIABLE, "").strip().lower() == "auto" and "OMP_NUM_THREADS" not in environ


class CpuThreadFollower:
    """A CPU loop's torch thread count following other processes' load: `start()` before the loop,
    `tick()` after each step, `stop()` at the end (or `with CpuThreadFollower() as follower:`). The load is
    measured over the first `first_s` seconds, then every `every_s` seconds; the count is one thread per
    core left idle (`auto_threads`), never above the count at the start, which `stop()` restores. A
    one-line note (`announce`) says so the first time it goes down. Disabled (every call a no-op) unless
    `enabled` (default: `adjusts_threads()`, the tools' policy)."""

    def __init__(self, first_s: float = FIRST_CHECK_S, every_s: float = CHECK_EVERY_S, *,
                 enabled: bool | None = None, what: str = "training", load_factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic, cpu_count: int | None = None,
                 announce: Callable[[str], None] | None = print) -> None:
        self.first_s, self.every_s, self.what, self.clock = first_s, every_s, what, clock
        self.enabled = adjusts_threads() if enabled is None else enabled
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self.load_factory = load_factory or OtherProcessesLoad
        self.announce = announce
        self.original: int | None = None

    def start(self) -> CpuThreadFollower:
        if self.enabled:
            import torch

            self.original = torch.get_num_threads()
            self.load = self.load_factory()
            self.next_check = self.clock() + self.first_s
            self.noted = False
        return self

    def tick(self) -> None:
        if self.original is None or self.clock() < self.next_check:
            return
        import torch

        self.next_check = self.clock() + self.every_s
        threads = auto_threads(self.original, self.load.sample(), self.cpu_count)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
            if threads < self.original and not self.noted and self.announce is not None:
                self.noted = True
                self.announce(f"note: other processes keep {self.original - threads} of {self.original} cores busy: "
                              f"{self.what} on {threads} CPU thread(s) while they do (SCENE_KD_CPU_THREADS=N fixes N)")

    def stop(self) -> None:
        if self.original is not None:
            import torch

            torch.set_num_threads(self.original)
            self.original = None

    def __enter__(self) -> CpuThreadFollower:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def follow_cpu_load(device, what: str) -> CpuThreadFollower:
    """The follower of a loop outside the shared trainer (evaluation, the demo's own training loops):
    enabled under the tools' policy when `device` is the CPU; the note from the main process only."""
    import torch

    from scene_kd.engine import distributed as dist_utils

    enabled = adjusts_threads() and torch.device(device).type == "cpu"
    return CpuThreadFollower(enabled=enabled, what=what, announce=print if dist_utils.is_main_process() else None)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, its count restored after (spconv's CPU forward is correct
    only with one thread; the tests that compare with spconv and the Pointcept check use it)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
