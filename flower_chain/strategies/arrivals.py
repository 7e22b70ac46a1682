"""Replies as they arrive: a Grid that shows the strategy every reply the moment Flower pulls it.

Flower's ``Strategy.start`` waits in ``grid.send_and_receive`` until the last reply of a round is in,
and only then calls ``aggregate_train``: a server that judges there parses, hashes and verifies every
reply after the slowest client, on the round's critical path. :class:`ArrivalGrid` wraps the grid a
:class:`~flower_chain.strategies.LedgerStrategy` is started with and runs the wrapped grid's own
``send_and_receive`` loop — its pull interval and its timeout unchanged — with itself as ``self``, so
every batch that loop pulls passes through :meth:`ArrivalGrid.pull_messages`, which hands it to a
callback (the strategy starts each reply's parse, digest and signature check on its worker threads)
and returns it unchanged. What the round records and aggregates does not change: the replies are
judged, in the order Flower returns them, when the round's replies are complete, as before.

Only Flower's own grids (:class:`~flwr.superlink.grid.inmemory_grid.InMemoryGrid`, the simulation's,
and ``HttpGrid``, a deployment's) are run so, and only when their loop, read from its source, uses
``self`` for nothing but ``push_messages``, ``pull_messages`` and ``pull_interval`` (a Flower release
that changes that is not run with the wrapper as ``self``); any other grid's ``send_and_receive`` is called as it is (no
early start: its replies are worked on when the round is judged). A callback that raises is logged
and the replies go on as pulled: the early work is an optimization, never a condition. The wrapped
strategy's ``configure_*`` receive this wrapper as their ``grid`` (an ``isinstance`` check against
Flower's grid classes sees an ``ArrivalGrid``; :attr:`ArrivalGrid.wrapped` is the original).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import textwrap
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger(__name__)

#: Flower's grids whose ``send_and_receive`` pulls through ``self.pull_messages`` (module, class).
FLOWER_GRIDS = (
    ("flwr.superlink.grid.inmemory_grid", "InMemoryGrid"),
    ("flwr.superlink.grid.http_grid", "HttpGrid"),
)


#: What a loop run with the wrapper as ``self`` may read of it (each delegated or the wrapper's own).
LOOP_READS = frozenset({"push_messages", "pull_messages", "pull_interval"})


def pulls_through_self(loop: Callable[..., Any]) -> bool:
    """Whether ``loop`` (a grid's ``send_and_receive``) may run with the wrapper as ``self``: it calls
    ``self.pull_messages``, and ``self`` appears nowhere but in reads of :data:`LOOP_READS` (no assignment, no
    ``setattr``, no ``vars(self)``, no other method), and it uses no ``super``. ``False`` when its source cannot
    be read."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(loop)))
    except (OSError, TypeError, SyntaxError):
        return False
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    pulls = False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Name):
            continue
        if node.id in ("super", "__class__"):
            return False
        if node.id != "self":
            continue
        use = parents.get(node)
        if not (
            isinstance(use, ast.Attribute)
            and use.value is node
            and use.attr in LOOP_READS
            and isinstance(use.ctx, ast.Load)
        ):
            return False
        pulls = pulls or use.attr == "pull_messages"
    return pulls


@cache
def _flower_loops() -> tuple[Callable[..., Any], ...]:
    loops = []
    for module, name in FLOWER_GRIDS:
        try:
            loop = getattr(importlib.import_module(module), name).send_and_receive
        except (ImportError, AttributeError):  # another Flower version: that grid is not known here
            continue
        if pulls_through_self(loop):
            loops.append(loop)
    return tuple(loops)


class ArrivalGrid(Grid):
    """``grid`` with every reply its ``send_and_receive`` pulls shown to ``on_replies`` first.

    Parameters
    ----------
    grid : Grid
        The grid the strategy was started with; everything else is delegated to it.
    on_replies : callable
        Called with each batch of replies as it is pulled (a list of Messages, never empty); it must
        not change them and should return quickly (it runs inside the pull loop).
    """

    def __init__(self, grid: Grid, on_replies: Callable[[list[Message]], None]) -> None:
        self._grid = grid
        self._on_replies = on_replies

    @property
    def wrapped(self) -> Grid:
        """The grid this one delegates to."""
        return self._grid

    def __getattr__(self, name: str) -> Any:  # a wrapped loop reads its own settings (e.g. pull_interval)
        if name.startswith("__") or name in ("_grid", "_on_replies"):
            raise AttributeError(name)
        return getattr(self._grid, name)

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        got = list(self._grid.pull_messages(message_ids))
        if got:
            try:
                self._on_replies(got)
            except Exception:  # noqa: BLE001 - pulled (and confirmed) replies are never lost to the early work
                log.warning("flower-chain: work on %d pulled replies could not start early", len(got), exc_info=True)
        return got

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        loop = type(self._grid).send_and_receive
        if loop in _flower_loops():  # Flower's own loop, pulling through this grid
            return loop(self, messages, timeout=timeout)
        return self._grid.send_and_receive(messages, timeout=timeout)
