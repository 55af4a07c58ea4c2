"""The benchmark's job runner (`scene_kd/transfer/jobs.py`): dependencies respected in worker
processes, results delivered in the parent, a failing job stops the run with its error."""

import os
import time
from pathlib import Path

import pytest

from scene_kd.transfer.jobs import Job, run_jobs


def append_line(path: Path, text: str, delay: float = 0.0, require: Path | None = None) -> tuple[str, int]:
    """Append `text` to `path` after `delay` s; refuses to run before `require` exists (a dependency)."""
    time.sleep(delay)
    if require is not None and not require.exists():
        raise RuntimeError(f"{require} missing: ran before its dependency")
    with open(path, "a") as f:
        f.write(text + "\n")
    return text, os.getpid()


def fail(message: str) -> None:
    raise ValueError(message)


def diamond(tmp_path: Path) -> list[Job]:
    """a (slow) and b side by side; c after both; d after c."""
    log = tmp_path / "log.txt"
    return [Job("a", append_line, {"path": log, "text": "a", "delay": 1.0}),
            Job("b", append_line, {"path": log, "text": "b"}),
            Job("c", append_line, {"path": log, "text": "c", "require": tmp_path / "a.done"}, after=("a", "b")),
            Job("d", append_line, {"path": log, "text": "d"}, after=("c",))]


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_run_after_their_dependencies(tmp_path, workers):
    results = {}

    def on_done(job, result):
        results[job.key] = result
        if job.key == "a":
            (tmp_path / "a.done").touch()  # written by the parent once a is finished: c needs it

    run_jobs(diamond(tmp_path), workers=workers, threads=1, on_done=on_done, say=lambda line: None)
    assert {key: text for key, (text, _) in results.items()} == {"a": "a", "b": "b", "c": "c", "d": "d"}
    lines = (tmp_path / "log.txt").read_text().split()
    assert sorted(lines) == ["a", "b", "c", "d"] and lines.index("c") > max(lines.index("a"), lines.index("b"))
    assert lines[-1] == "d"
    pids = {pid for _, pid in results.values()}
    if workers == 1:
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids and lines[:2] == ["b", "a"]  # b did not wait for the slow a


def test_failing_job_raises_in_the_parent(tmp_path):
    jobs = [Job("bad", fail, {"message": "stage broke"}),
            Job("later", append_line, {"path": tmp_path / "log.txt", "text": "x"}, after=("bad",))]
    with pytest.raises(ValueError, match="stage broke"):
        run_jobs(jobs, workers=2, threads=1, on_done=lambda job, result: None, say=lambda line: None)
    assert not (tmp_path / "log.txt").exists()


def test_unknown_dependency_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dependencies"):
        run_jobs([Job("a", fail, {"message": "x"}, after=("nothing",))], workers=2, threads=1,
                 on_done=lambda job, result: None)
