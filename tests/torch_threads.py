"""An autouse fixture for test modules that need one torch thread: the spconv comparisons (spconv's
CPU forward is correct only with one thread, docs/sparse_backends.md) and the in-world CLIP tests
(bit-exact resumes). Each test runs with one thread and the count is restored after."""

from __future__ import annotations

import pytest

from scene_kd.cpu_threads import one_torch_thread as one_thread_block


@pytest.fixture(autouse=True)
def one_torch_thread():
    with one_thread_block():
        yield
