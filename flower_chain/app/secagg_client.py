"""The bundled ClientApp under SecAgg+ (``secure-aggregation = true``): a legacy ``NumPyClient`` with two mods.

Flower's ``examples/flower-secure-aggregation`` with flower-chain's swap: ``mods=[signing_mod, secagg_mod]``
instead of ``[secaggplus_mod]``. Each node trains the demo's CNN on its partition; ``secagg_mod`` masks the
update, signs every stage reply and checks the server's commitment before it reveals any share.

Two run-config keys exist for tests and demonstrations of dropouts (both empty by default):

``secagg-drop``
    ``"STAGE:PARTITION ..."`` (e.g. ``"setup:1 masked-input:3"``): that partition's node fails that
    SecAgg+ stage in every round. At ``masked-input`` it trains and masks its update, then the reply is
    lost (the node raises instead of sending it); at ``setup`` or ``share-keys`` it fails before answering.
``secagg-plaintext-dir``
    A directory where each node saves the plaintext model it trained (``round<R>-partition<P>.npz``), so a
    test can check that nothing the server stored equals or correlates with it. Test-only: never set it
    in a real federation (it writes the very updates SecAgg+ keeps from the server to the node's disk).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient

from flower_chain.app import data as data_mod
from flower_chain.app import model as model_mod
from flower_chain.app.config import resolve
from flower_chain.app.keys import demo_key_path, demo_keys
from flower_chain.app.keys import demo_signing_mod as signing_mod
from flower_chain.clients.secagg import RECORD, make_secagg_mod
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.keys import load_public, raw_public
from flower_chain.ledger.secagg import MASKED, SETUP, SHARE_KEYS, UNMASK

DROP_STAGES = (SETUP, SHARE_KEYS, MASKED, UNMASK)


class SimulatedDropout(RuntimeError):
    """A node told by ``secagg-drop`` to fail a stage."""


def parse_drops(text: str) -> dict[int, str]:
    """``"setup:1 masked-input:3"`` -> ``{1: "setup", 3: "masked-input"}``.

    Raises
    ------
    ValueError
        An item that is not ``STAGE:PARTITION`` with a known stage and a non-negative partition, or a
        partition named twice.
    """
    out: dict[int, str] = {}
    for item in str(text or "").replace(",", " ").split():
        stage, _, part = item.rpartition(":")
        if stage not in DROP_STAGES or not part.isdigit():
            raise ValueError(f"secagg-drop item {item!r}: write STAGE:PARTITION, STAGE one of {', '.join(DROP_STAGES)}")
        if int(part) in out:
            raise ValueError(f"secagg-drop names partition {part} twice")
        out[int(part)] = stage
    return out


def _stage(msg: Message) -> str:
    rec = msg.content.config_records.get(RECORD)
    try:
        return str(decode(rec["request"])["stage"]) if rec is not None else ""
    except Exception:  # noqa: BLE001 - an unreadable request is secagg_mod's to refuse, not this mod's
        return ""


def make_dropout_mod(overrides: Mapping[str, Any] | None = None):
    """A mod failing the stage ``secagg-drop`` names for this node's partition (outermost: before signing)."""

    def dropout_mod(msg: Message, context: Context, call_next) -> Message:
        drops = parse_drops(resolve(context.run_config, overrides).get("secagg-drop", ""))
        stage, pid = _stage(msg), int(context.node_config.get("partition-id", -1))
        if not stage or drops.get(pid) != stage:
            return call_next(msg, context)
        if stage == MASKED:
            call_next(msg, context)  # trained, masked and signed: the reply is then lost
        raise SimulatedDropout(f"partition {pid} drops out in SecAgg+ stage {stage} (run config secagg-drop)")

    return dropout_mod


@functools.lru_cache(maxsize=64)
def _secagg_mod_for(key_file: str, server_pub: str):
    server = raw_public(load_public(server_pub)) if server_pub else None
    return make_secagg_mod(key_file, server_key=server)


def demo_secagg_mod(msg: Message, context: Context, call_next) -> Message:
    """``secagg_mod`` with the demo's key location; pins ``server/server.pub`` of the demo keys when present.

    The node then reveals shares only against checkpoints signed by the server key it was given
    (``flower-chain keys init`` writes it), not the first key a server shows it.
    """
    keys = demo_keys(context)
    pub = Path(keys[0]).parent / "server" / "server.pub" if keys else None
    return _secagg_mod_for(str(demo_key_path(context)), str(pub) if pub and pub.is_file() else "")(
        msg, context, call_next
    )


class TorchClient(NumPyClient):
    """The demo's CNN on one partition, as a legacy ``NumPyClient`` (arrays in ``state_dict`` order)."""

    def __init__(self, context: Context, overrides: Mapping[str, Any] | None = None) -> None:
        self.cfg = resolve(context.run_config, overrides)
        self.pid = int(context.node_config["partition-id"])
        n = int(context.node_config["num-partitions"])
        self.part = data_mod.load_partition(
            self.cfg["dataset"],
            self.pid,
            n,
            data_dir=self.cfg["data-dir"],
            partition=self.cfg["partition"],
            alpha=float(self.cfg["alpha"]),
            seed=int(self.cfg["seed"]),
        )
        torch.set_num_threads(1)  # one core per virtual client; simulations run several side by side
        self.net = model_mod.Net(self.part.x_train.shape[1:])
        self.names = list(self.net.state_dict())

    def _load(self, parameters: list[np.ndarray]) -> None:
        model_mod.set_weights(self.net, dict(zip(self.names, parameters)))

    def fit(self, parameters, config):
        self._load(parameters)
        server_round = int(config.get("server-round", 0))
        seed = int(self.cfg["seed"]) * 1_000_003 + self.pid * 1009 + server_round
        model_mod.seed_everything(seed)
        loss = model_mod.train(
            self.net,
            self.part.x_train,
            self.part.y_train,
            epochs=int(self.cfg["local-epochs"]),
            batch_size=int(self.cfg["batch-size"]),
            lr=float(config.get("lr", self.cfg["learning-rate"])),
            seed=seed,
        )
        weights = [v.detach().cpu().numpy().copy() for v in self.net.state_dict().values()]
        dump = str(self.cfg.get("secagg-plaintext-dir") or "")
        if dump:  # test-only (module docstring): the plaintext the server must never hold
            Path(dump).mkdir(parents=True, exist_ok=True)
            np.savez(
                Path(dump) / f"round{server_round}-partition{self.pid}.npz",
                **{f"base.{k}": np.asarray(p) for k, p in zip(self.names, parameters)},
                **{f"model.{k}": w for k, w in zip(self.names, weights)},
            )
        # no metrics: Flower's FitRes fields travel beside the masked vector in the clear (the loss would too)
        del loss
        return weights, len(self.part.x_train), {}

    def evaluate(self, parameters, config):
        self._load(parameters)
        loss, acc = model_mod.test(self.net, self.part.x_val, self.part.y_val)
        return float(loss), len(self.part.x_val), {"eval_acc": float(acc)}


def make_secagg_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """The legacy ClientApp: ``mods=[dropout_mod, signing_mod, secagg_mod]`` (the first does nothing by default)."""

    def client_fn(context: Context):
        return TorchClient(context, overrides).to_client()

    return ClientApp(client_fn=client_fn, mods=[make_dropout_mod(overrides), signing_mod, demo_secagg_mod])
