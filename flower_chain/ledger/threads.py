"""Thread pools started on first use and forgotten in a forked child (whose parent's threads do not exist).

Imports neither torch nor flwr.
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor


class LazyPool:
    """A ``ThreadPoolExecutor`` of ``workers`` threads named ``name``, started by the first :meth:`get`."""

    def __init__(self, workers: int, name: str) -> None:
        self.workers, self.name = int(workers), name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        _ALL.add(self)

    def get(self) -> ThreadPoolExecutor:
        """The pool (started now if this is the first call since the process started or forked)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
            return self._pool

    @property
    def started(self) -> bool:
        return self._pool is not None

    def forget(self) -> None:
        """Drop the pool (a forked child: its threads, and a lock held by one of them, are not there)."""
        self._pool = None
        self._lock = threading.Lock()


_ALL: weakref.WeakSet[LazyPool] = weakref.WeakSet()


def _forget_all() -> None:
    for pool in list(_ALL):
        pool.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all)
