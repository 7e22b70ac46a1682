"""``flower-chain report``: one self-contained HTML file about a round ledger, in the order an auditor reads it.

1. **Status** (:mod:`flower_chain.audit.status`): VERIFIED / NOT VERIFIED and AUDITED / NOT AUDITED from
   the strongest checks asked for, with what was checked and what was not. Green only with a pinned
   server key; a ledger that does not verify is red with the reason.
2. **Training**: federated metrics (each client computed and signed its own; the server aggregated
   them, which the audit re-derives) and centralized ones (computed by the server alone: its unchecked
   claim), labelled by who computed them.
3. **Verdicts** per round, train and evaluate replies.
4. **Clients** by the names their keys were created with (``--keys``), else by key id.
5. **Timing** (round 1 includes start-up), and a collapsed appendix with the summary and checkpoint.

Round axes have integer ticks, each verdict has one colour everywhere (:func:`verdict_colour`), an
empty plot says "no data". Plots are matplotlib PNGs embedded as data URIs: the file opens without a
network. Ledger text (key ids, reasons, metric names, names) may come from unauthenticated replies:
it goes through :func:`~flower_chain.ledger.text.safe_label` / ``safe_text`` and :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from flower_chain.audit.report_tables import BANNER as BANNER  # re-exported
from flower_chain.audit.report_tables import TEXT_LIMIT as TEXT_LIMIT  # re-exported
from flower_chain.audit.report_tables import _clients_table, _counts, _html, _shown, _status_html, _training_table
from flower_chain.audit.status import Status, ledger_status
from flower_chain.ledger import json_input
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.entries import REASONS, UpdateEntry
from flower_chain.ledger.inspect import block_rows, entries_of, summary
from flower_chain.ledger.location import parse_ledger_uri
from flower_chain.ledger.text import safe_label
from flower_chain.ledger.writer import read_genesis

MAX_CLIENT_BARS = 40  # clients in the participation plot (the table lists all)
ACCEPTED_COLOUR = "#2e7d32"
_REASON_COLOURS = [
    "#c62828",
    "#ef6c00",
    "#6a1b9a",
    "#1565c0",
    "#ad1457",
    "#4e342e",
    "#00838f",
    "#9e9d24",
    "#5d4037",
    "#283593",
    "#d84315",
    "#37474f",
    "#8e24aa",
    "#f9a825",
]
SOURCES = {
    "federated": ("federated (clients, signed; aggregate re-derived by audit)", "-", "o"),
    "central": ("centralized (server only: unchecked claim)", "--", "s"),
}


def verdict_colour(label: str) -> str:
    """The one colour of a verdict in every plot: green for accepted, a fixed colour per reason code."""
    if label == "accepted":
        return ACCEPTED_COLOUR
    return _REASON_COLOURS[REASONS.index(label) % len(_REASON_COLOURS)] if label in REASONS else "#9e9e9e"


def _labelled(metrics: dict[str, Any]) -> dict[str, Any]:
    return {safe_label(k): v for k, v in metrics.items() if k not in ("source", "num_replies")}


def _client(e: UpdateEntry, names: dict[str, str]) -> str:
    """A client's label, never one of another kind: ``name (key id…)`` for a keyring key, the key id when it
    has a key id's form (16 hex digits), ``unsigned (node N)`` without a key, else ``key <recorded text>``."""
    if not e.key_id:
        return safe_label(f"unsigned (node {e.node_id})")
    if e.key_id in names:
        return safe_label(f"{names[e.key_id]} ({e.key_id[:8]})")
    if len(e.key_id) == 16 and all(c in "0123456789abcdef" for c in e.key_id):
        return e.key_id
    return safe_label("key " + e.key_id)  # recorded text of an unauthenticated reply cannot pass for another client


def _verdict(e: UpdateEntry) -> str:
    return "accepted" if e.verdict == "accepted" else safe_label(e.reason)


def _walk(ledger: Ledger, names: dict[str, str]) -> dict[str, Any]:
    """Metrics, verdicts, clients and block times from every block."""
    central: dict[int, dict] = {}
    federated: dict[int, dict] = {}
    verdicts: dict[str, dict[int, Counter]] = {"train": defaultdict(Counter), "evaluate": defaultdict(Counter)}
    clients: dict[str, dict[str, Counter]] = defaultdict(lambda: {"train": Counter(), "evaluate": Counter()})
    last_ms: dict[int, int] = {}
    for r in block_rows(ledger, 1):
        for ev in r.evaluations:
            (central if ev["source"] == "centralized" else federated)[r.round] = _labelled(ev)
        if r.accepted or r.rejected:
            last_ms[r.round] = r.timestamp_ms
    for block in ledger.blocks(1):
        for e in entries_of(ledger, block.header):
            if isinstance(e, UpdateEntry) and e.kind in verdicts:
                verdicts[e.kind][e.round][_verdict(e)] += 1
                clients[_client(e, names)][e.kind][_verdict(e)] += 1
    return {"central": central, "federated": federated, "verdicts": verdicts, "clients": clients, "last_ms": last_ms}


def collect(
    ledger: Ledger,
    metrics_path: Path | None = None,
    *,
    status: Status | None = None,
    names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The numbers the report shows (also used by tests to compare against the ledger).

    ``verdicts`` and ``participation`` count train replies (round -> verdict -> n, client -> verdict -> n);
    ``evaluate_verdicts`` and ``clients`` add the evaluate replies.
    """
    names = names or {}
    status = status if status is not None else ledger_status(ledger)
    w = _walk(ledger, names)
    ledger_time: dict[int, float] = {}
    if metrics_path is not None and metrics_path.is_file():
        try:
            for row in json_input.loads(metrics_path.read_bytes()).get("rounds", []):
                if "ledger_time_s" in row:
                    ledger_time[int(row["round"])] = float(row["ledger_time_s"])
        except (ValueError, TypeError, AttributeError, KeyError):
            ledger_time = {}  # a metrics file that is not run.py's: the block times are shown instead
    start = read_genesis(ledger).created_ms
    durations, prev = {}, start
    for rnd in sorted(w["last_ms"]):
        durations[rnd] = max(0.0, (w["last_ms"][rnd] - prev) / 1000)
        prev = w["last_ms"][rnd]
    clients = {k: {kind: dict(c) for kind, c in v.items()} for k, v in sorted(w["clients"].items())}
    return {
        "summary": summary(ledger),
        "status": status.to_dict(),
        "central": w["central"],
        "federated": w["federated"],
        "verdicts": {r: dict(c) for r, c in sorted(w["verdicts"]["train"].items())},
        "evaluate_verdicts": {r: dict(c) for r, c in sorted(w["verdicts"]["evaluate"].items())},
        "participation": {k: v["train"] for k, v in clients.items() if v["train"]},
        "clients": clients,
        "ledger_time": ledger_time,
        "round_durations": durations,
    }


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes, color="#57606a")
    ax.set_xticks([])
    ax.set_yticks([])


def _round_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")


def _training_figure(plt, data: dict[str, Any]):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for axis, kind in zip(axes, ("acc", "loss")):
        lines = 0
        for source, (label, style, marker) in SOURCES.items():
            series = data[source]
            for metric in sorted({m for v in series.values() for m in v if kind in m.lower()}):
                pts = [
                    (r, series[r][metric])
                    for r in sorted(series)
                    if isinstance(series[r].get(metric), (int, float)) and not isinstance(series[r][metric], bool)
                ]
                if pts:
                    axis.plot(
                        [p[0] for p in pts],
                        [p[1] for p in pts],
                        linestyle=style,
                        marker=marker,
                        label=f"{metric}: {label}",
                    )
                    lines += 1
        title = "accuracy" if kind == "acc" else "loss"
        axis.set_title(f"{title} per round")
        if lines:
            _round_axis(axis)
            axis.legend(fontsize=7)
        else:
            _no_data(axis, f"no {title} metric recorded")
    return fig


def _stacked(ax, per_round: dict[int, dict[str, int]], title: str, keys: list[str] | None = None) -> None:
    xs = keys if keys is not None else sorted(per_round)
    labels = sorted({k for v in per_round.values() for k in v}, key=lambda k: (k != "accepted", k))
    ax.set_title(title)
    if not labels:
        _no_data(ax, "no replies recorded")
        return
    pos = list(range(len(xs))) if keys is not None else xs
    bottom = [0] * len(xs)
    for label in labels:
        vals = [per_round[x].get(label, 0) for x in xs]
        ax.bar(pos, vals, bottom=bottom, label=label, color=verdict_colour(label))
        bottom = [b + v for b, v in zip(bottom, vals)]
    if keys is None:
        _round_axis(ax)
    else:
        ax.set_xticks(
            pos, xs, rotation=30 if len(xs) > 6 else 0, fontsize=7, ha="right" if len(xs) > 6 else "center"
        )  # labels made safe in collect()
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)


def _figures(data: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figs: dict[str, bytes] = {}

    def save(name: str, fig) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        figs[name] = buf.getvalue()

    save("training", _training_figure(plt, data))
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    _stacked(ax[0], data["verdicts"], "train replies per round, by verdict")
    _stacked(ax[1], data["evaluate_verdicts"], "evaluate replies per round, by verdict")
    save("verdicts", fig)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    part = data["participation"]
    shown = sorted(part, key=lambda k: (-sum(n for v, n in part[k].items() if v != "accepted"), k))[:MAX_CLIENT_BARS]
    _stacked(
        ax,
        part,
        "train replies per client, by verdict"
        + (
            f" ({len(shown)} of {len(part)} clients: the most rejected; all in the table)"
            if len(shown) < len(part)
            else ""
        ),
        keys=sorted(shown),
    )
    save("clients", fig)
    fig, ax = plt.subplots(figsize=(10, 3.2))
    series, unit, title = (
        (data["ledger_time"], "ms", "ledger time per round (verify + append)")
        if data["ledger_time"]
        else (data["round_durations"], "s", "round duration from block times (round 1 includes start-up)")
    )
    ax.set_title(title)
    if series:
        xs = sorted(series)
        ax.bar(xs, [series[x] * (1000 if unit == "ms" else 1) for x in xs], color="#8250df")
        ax.set_ylabel(unit)
        _round_axis(ax)
    else:
        _no_data(ax, "no train round recorded")
    save("timing", fig)
    return figs


def write_report(
    ledger: Ledger,
    dest: Path,
    *,
    metrics_path: Path | None = None,
    png_dir: Path | None = None,
    status: Status | None = None,
    names: dict[str, str] | None = None,
) -> dict:
    """Write the HTML report (and PNGs on request); return the collected numbers.

    ``status`` is the outcome of the checks the user asked for (default: verify without a pinned key);
    ``names`` maps key ids to the names they were created with.
    """
    directory = parse_ledger_uri(ledger.uri).directory if metrics_path is None else None
    if directory is not None:  # a file-backed ledger: run.py's metrics.json beside it
        guess = directory / "metrics.json"
        metrics_path = guess if guess.is_file() else None
    data = collect(ledger, metrics_path, status=status, names=names)
    figs = _figures(data)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        for name, png in figs.items():
            (png_dir / f"{name}.png").write_bytes(png)
    img = {
        n: f'<figure><img alt="{n}" id="fig-{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}"></figure>'
        for n, b in figs.items()
    }
    doc = _document(data, img)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(doc)
    return data


def _document(data: dict, img: dict[str, str]) -> str:
    """The report's HTML page from the collected numbers and the figures' ``<figure>`` elements."""
    s = data["summary"]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{_html(_shown(s[k]), 1000)}</td></tr>"
        for k in (
            "federation_id",
            "backend",
            "strategy",
            "allowed_keys",
            "rounds",
            "blocks",
            "entries",
            "head_hash",
            "model_digest",
        )
    )
    total = {kind: Counter() for kind in ("train", "evaluate")}
    for kind, key in (("train", "verdicts"), ("evaluate", "evaluate_verdicts")):
        for c in data[key].values():
            total[kind].update(c)
    checkpoint = "\n".join(_html(line) for line in s["checkpoint"].split("\n"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flower-chain report: {_html(s["federation_id"], 80)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
.status {{ padding: .7em 1em; border-radius: 6px; font-weight: 600; color: white; margin: .4em 0; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ text-align: left; padding: .2em .8em;
border-bottom: 1px solid #ddd; font-size: 90%; }} .nodata {{ color: #57606a; }}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }} img {{ max-width: 100%; }} figure {{ margin: 0; }}
</style></head><body>
<h1>flower-chain round ledger: {_html(s["federation_id"], 80)}</h1>
{_status_html(data["status"])}
<h2>Training</h2>
<p>Federated metrics are computed by each client on its own data and signed; the server aggregates them
(the audit re-derives the aggregate). Centralized metrics are computed by the server alone: its claim, not
checked by anyone.</p>
{img["training"]}
{_training_table(data)}
<h2>Verdicts</h2>
<p id="verdict-totals">train replies: {_counts(total["train"])}; evaluate replies: {_counts(total["evaluate"])}</p>
{img["verdicts"]}
<h2>Clients</h2>
{img["clients"]}
{_clients_table(data)}
<h2>Timing</h2>
{img["timing"]}
<details id="appendix"><summary>Appendix: ledger summary and signed checkpoint</summary>
<table id="summary">{rows}</table>
<pre id="checkpoint">{checkpoint}</pre></details>
</body></html>
"""
