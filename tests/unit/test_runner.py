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
def test_tune_gc_makes_only_full_collections_rarer() -> None:
    """The young generations keep CPython's thresholds; a full collection comes 10 times rarer."""
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS == (700, 10, 100)
