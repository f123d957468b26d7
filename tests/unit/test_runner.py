"""The worker process: its garbage collector is tuned for thousands of held watches."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from poller.runner import GC_THRESHOLDS, tune_gc


@pytest.fixture
def _restore_gc() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("_restore_gc")
def test_tune_gc_collects_less_often_than_cpython_by_default() -> None:
    """Every generation is collected less often than with CPython's (700, 10, 10)."""
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert all(ours > default for ours, default in zip(GC_THRESHOLDS, (700, 10, 10), strict=True))
