"""Review 6: loops that keep state on ``self`` (it would land on the wrapper) or break with the wrapper as ``self``
are not run with the wrapper (``pulls_through_self``); Flower's own loops are."""

from __future__ import annotations

import time

import pytest

from flower_chain.strategies.arrivals import pulls_through_self


def loop_for_target(self, messages, *, timeout=None):
    ids = set(self.push_messages(messages))
    ret = []
    for self._last in self.pull_messages(ids):  # noqa: B020 - state on self through a for target
        ret.append(self._last)
    return ret


def loop_with_target(self, messages, *, timeout=None):
    with self.lock() as self._held:  # state on self through a with target
        return list(self.pull_messages(self.push_messages(messages)))


def loop_comprehension_target(self, messages, *, timeout=None):
    ids = self.push_messages(messages)
    return [m for self._cursor in [ids] for m in self.pull_messages(self._cursor)]


def loop_vars(self, messages, *, timeout=None):
    vars(self)["_ids"] = set(self.push_messages(messages))
    return list(self.pull_messages(self._ids))


def loop_object_setattr(self, messages, *, timeout=None):
    object.__setattr__(self, "_ids", set(self.push_messages(messages)))
    return list(self.pull_messages(self._ids))


def loop_dunder_setattr(self, messages, *, timeout=None):
    self.__setattr__("_ids", set(self.push_messages(messages)))
    return list(self.pull_messages(self._ids))


def loop_dict_update(self, messages, *, timeout=None):
    self.__dict__.update(_ids=set(self.push_messages(messages)))
    return list(self.pull_messages(self._ids))


@pytest.mark.parametrize(
    "loop",
    [
        loop_for_target,
        loop_with_target,
        loop_comprehension_target,
        loop_vars,
        loop_object_setattr,
        loop_dunder_setattr,
        loop_dict_update,
    ],
)
def test_a_loop_that_keeps_state_on_self_is_refused(loop):
    assert not pulls_through_self(loop), f"{loop.__name__} keeps state on self yet passes"


class _Base:
    def push_messages(self, messages):
        return [1]


class _Grid(_Base):
    def send_and_receive(self, messages, *, timeout=None):
        ids = super().push_messages(messages)  # zero-argument super(): TypeError when self is the wrapper
        time.sleep(0)
        return list(self.pull_messages(ids))


def test_a_loop_that_uses_zero_argument_super_is_refused():
    assert not pulls_through_self(_Grid.send_and_receive)


def test_flowers_own_loops_are_run_with_the_wrapper():
    from flwr.superlink.grid.http_grid import HttpGrid
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    assert pulls_through_self(InMemoryGrid.send_and_receive) and pulls_through_self(HttpGrid.send_and_receive)
