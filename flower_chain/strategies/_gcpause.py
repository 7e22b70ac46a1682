"""Pause Python's cyclic garbage collector while a round's replies are judged and recorded.

A 10,000-reply round holds every reply's records in memory; each object the judge allocates can trigger
a collection, and the oldest generation's passes walk all of those replies again and again (a third of
the ledger's time in ``bench/bench_scale10k.py``). What the judge and recorder allocate is freed by
reference counting as soon as the round ends; collection resumes then. The pause nests and is
idempotent across threads: whoever found the collector enabled turns it back on.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the ``with`` block; restore it as it was (enabled or not)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
