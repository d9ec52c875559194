"""Shared setup for the hint tests: one intra-op thread (the tensors are tiny)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Waking the intra-op thread pool for each tiny op costs more than the op on a small shared VM.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
