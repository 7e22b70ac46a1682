"""Pause Python's cyclic garbage collector while a round's replies are judged and recorded.

A 10,000-reply round holds every reply's records in memory; each object the judge allocates can trigger
a collection, and the oldest generation's passes walk all of those replies again and again (a third of
the ledger's time in ``bench/bench_scale10k.py``). What the judge and recorder allocate is freed by
reference counting as soon as the round ends; collection resumes then. The pause nests: whoever found
the collector enabled turns it back on. The collector is process-wide: for the round's length (judging, the
block's append with its witness and anchor listeners) other threads run without cyclic collection too, and an
application that turns the collector off from another thread during a round finds it on again afterwards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the ``with`` block; restore it as it was (enabled or not)."""
    was_enabled = gc.isenabled()
    try:
        gc.disable()
        yield
    finally:
        if was_enabled:
            gc.enable()
