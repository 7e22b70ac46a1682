"""The demo's per-round metrics: one line per round on Flower's log, and ``metrics.json`` in the output folder."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.common.logger import log


class RoundLog:
    """Per-round metrics: kept, printed as one line per round, written to ``metrics.json``."""

    def __init__(self, out_dir: Path, cfg: Mapping[str, Any], extra: Callable[[int], dict] | None = None) -> None:
        self.out_dir = out_dir
        self.cfg = dict(cfg)
        self.extra = extra
        self.rounds: list[dict[str, Any]] = []
        self.t0 = self.t_last = time.time()

    def record(self, server_round: int, loss: float, acc: float) -> None:
        now = time.time()
        row = {
            "round": server_round,
            "accuracy": acc,
            "loss": loss,
            "round_time_s": now - self.t_last,
            "elapsed_s": now - self.t0,
        }
        if self.extra is not None and server_round > 0:
            row.update(self.extra(server_round))
        self.t_last = now
        self.rounds.append(row)
        total = int(self.cfg["num-server-rounds"])
        counts = ""
        if "accepted" in row:
            counts = f"  accepted {row['accepted']:>3}  rejected {row['rejected']:>3}"
        log(
            INFO,
            "[flower-chain] round %d/%d  accuracy %.4f  loss %.4f  time %.1fs%s",
            server_round,
            total,
            acc,
            loss,
            row["round_time_s"],
            counts,
        )
        self.save()

    def save(self, **final: Any) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"config": {k: v for k, v in self.cfg.items()}, "rounds": self.rounds, **final}
        tmp = self.out_dir / "metrics.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, default=str))
        tmp.replace(self.out_dir / "metrics.json")
