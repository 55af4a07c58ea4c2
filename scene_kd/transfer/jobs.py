"""Run the benchmark's stages as jobs with dependencies, one after another or in worker processes.

A stage of the transfer benchmark is a plain function over directories (`pipeline.py`): it reuses a
finished result, resumes an interrupted one, and depends on other stages only through their files.
So independent stages (the pretraining of every arm and seed, then every finetune) can run side by
side: on 2 cores, two processes of one torch thread each do about twice the work of one process of
two threads (small sparse convolutions scale poorly across threads). Workers are spawned (never
forked from a process that already ran torch), die with the parent (`die_with_parent`), and a job
is started only when the jobs it names in `after` have finished, in the order of the list.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    """One stage: `fn(**kwargs)` (picklable: a module-level function and plain arguments), started
    once every job named in `after` has finished."""

    key: str
    fn: Callable[..., Any]
    kwargs: dict = field(default_factory=dict)
    after: tuple[str, ...] = ()


def _init_worker(parent_pid: int, threads: int) -> None:
    import torch

    from scene_kd.scannet.worker_lifetime import die_with_parent

    die_with_parent(parent_pid)
    torch.set_num_threads(threads)


def run_jobs(jobs: Sequence[Job], workers: int, threads: int,
             on_done: Callable[[Job, Any], None], say: Callable[[str], None] = print) -> None:
    """Run `jobs` and call `on_done(job, result)` in the parent as each finishes. workers <= 1: in
    this process, in list order (which must respect `after`); else in `workers` spawned processes of
    `threads` torch threads each. A job's exception stops the run (running jobs are abandoned, their
    stages resume on the next run) and is raised here."""
    keys = [job.key for job in jobs]
    unknown = {dep for job in jobs for dep in job.after} - set(keys)
    if len(set(keys)) != len(keys) or unknown:
        raise ValueError(f"job list: duplicate keys or unknown dependencies {sorted(unknown)}")
    if workers <= 1:
        for job in jobs:
            on_done(job, job.fn(**job.kwargs))
        return
    pending, running, finished = list(jobs), {}, set()
    started: dict[str, float] = {}
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(), threads))
    try:
        while pending or running:
            ready = [job for job in pending if set(job.after) <= finished][: workers - len(running)]
            if not ready and not running:
                raise ValueError(f"jobs wait on each other: {[job.key for job in pending]}")
            for job in ready:
                pending.remove(job)
                started[job.key] = time.perf_counter()
                running[pool.submit(job.fn, **job.kwargs)] = job
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in _in_list_order(done, running, keys):
                job = running.pop(future)
                result = future.result()
                finished.add(job.key)
                say(f"[{len(finished)}/{len(keys)}] {job.key} ({(time.perf_counter() - started[job.key]) / 60:.1f} min)")
                on_done(job, result)
    except BaseException:
        processes = list((getattr(pool, "_processes", None) or {}).values())  # a private attribute: guarded
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        raise
    pool.shutdown(wait=True)


def _in_list_order(done: set[Future], running: dict[Future, Job], keys: list[str]) -> list[Future]:
    return sorted(done, key=lambda future: keys.index(running[future].key))
