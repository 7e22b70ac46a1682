"""The bundled ClientApp (Message API): trains a CNN on its partition of MNIST, Fashion-MNIST or CIFAR-10.

Each node trains on the partition ``context.node_config["partition-id"]`` of
``["num-partitions"]``; dataset and hyper-parameters come from the run config.
With ``secure-aggregation`` in the run config every message goes to the legacy
SecAgg+ ClientApp of :mod:`flower_chain.app.secagg_client` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_chain.app import data as data_mod
from flower_chain.app import model as model_mod
from flower_chain.app.attacks import LABEL_FLIP, make_client_mod
from flower_chain.app.config import resolve


def _setup(msg: Message, context: Context, overrides: Mapping[str, Any] | None):
    cfg = resolve(context.run_config, overrides)
    torch.set_num_threads(1)  # one core per virtual client; simulations run several side by side
    pid = int(context.node_config["partition-id"])
    n = int(context.node_config["num-partitions"])
    part = data_mod.load_partition(
        cfg["dataset"],
        pid,
        n,
        data_dir=cfg["data-dir"],
        partition=cfg["partition"],
        alpha=float(cfg["alpha"]),
        seed=int(cfg["seed"]),
    )
    net = model_mod.Net(part.x_train.shape[1:])
    net.load_state_dict(msg.content.array_records[next(iter(msg.content.array_records))].to_torch_state_dict())
    return cfg, pid, part, net


def _secure_aggregation_router(overrides: Mapping[str, Any] | None):
    """A mod handing every message of a ``secure-aggregation`` run to the legacy SecAgg+ ClientApp.

    One component (``[tool.flwr.app.components]``) serves both paths: the Message-API app below, and
    :func:`flower_chain.app.secagg_client.make_secagg_client_app` (``NumPyClient``, ``mods=[signing_mod,
    secagg_mod]``) when the run config turns secure aggregation on.
    """
    secagg_app: list[ClientApp] = []

    def router(msg: Message, context: Context, call_next) -> Message:
        if not resolve(context.run_config, overrides).get("secure-aggregation"):
            return call_next(msg, context)
        if not secagg_app:
            from flower_chain.app.secagg_client import make_secagg_client_app  # noqa: PLC0415

            secagg_app.append(make_secagg_client_app(overrides))
        return secagg_app[0](msg, context)

    return router


def make_client_app(overrides: Mapping[str, Any] | None = None, mods: Sequence | None = None) -> ClientApp:
    """Build the ClientApp; ``overrides`` win over the run config.

    ``mods`` defaults to the signing mod (replies are signed whenever the server
    runs a LedgerStrategy, and pass through unsigned otherwise), with the
    adversarial behaviour of ``attack``/``attackers`` from the config, if any.
    """
    if mods is None:
        ov = overrides or {}
        mods = [make_client_mod(ov.get("attack"), ov.get("attackers"))]
    app = ClientApp(mods=[_secure_aggregation_router(overrides), *mods])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg, pid, part, net = _setup(msg, context, overrides)
        server_round = int(msg.content["config"].get("server-round", 0)) if "config" in msg.content else 0
        seed = int(cfg["seed"]) * 1_000_003 + pid * 1009 + server_round
        model_mod.seed_everything(seed)
        labels = part.y_train
        if any(rec.get(LABEL_FLIP, False) for rec in msg.content.config_records.values()):
            labels = 9 - labels  # the label-flip attack (all three datasets have 10 classes)
        loss = model_mod.train(
            net,
            part.x_train,
            labels,
            epochs=int(cfg["local-epochs"]),
            batch_size=int(cfg["batch-size"]),
            lr=float(cfg["learning-rate"]),
            seed=seed,
        )
        metrics = MetricRecord({"train_loss": float(loss), "num-examples": len(part.x_train), "partition-id": pid})
        return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _cfg, _pid, part, net = _setup(msg, context, overrides)
        loss, acc = model_mod.test(net, part.x_val, part.y_val)
        metrics = MetricRecord({"eval_loss": float(loss), "eval_acc": float(acc), "num-examples": len(part.x_val)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_client_app()
