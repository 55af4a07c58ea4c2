"""The fixture both spconv test modules use: spconv's CPU forward is correct only with one torch
thread (docs/sparse_backends.md), so each of their tests runs with one and restores the count."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
