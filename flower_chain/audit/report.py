"""``flower-chain report``: one self-contained HTML file about a round ledger.

Everything shown comes from the ledger (evaluation entries, verdicts, block
times) and, when present, run.py's ``metrics.json`` beside it (ledger time
per round). Plots are matplotlib PNGs embedded as data URIs, so the file
opens without a network.

Text in a ledger (key ids and reasons of updates, metric names, the
federation id) may come from unauthenticated replies: it is shown through
:func:`~flower_chain.ledger.text.safe_label` / ``safe_text`` (bounded, no
control characters or bidi overrides, ``$`` escaped for matplotlib's
mathtext) and, in the HTML, :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import VerificationError
from flower_chain.ledger.inspect import block_rows, summary
from flower_chain.ledger.location import parse_ledger_uri
from flower_chain.ledger.text import safe_label, safe_text
from flower_chain.ledger.verify import verify

TEXT_LIMIT = 200  # characters of one ledger text shown in the HTML


def _html(value: object, limit: int = TEXT_LIMIT) -> str:
    """Ledger text for the HTML: made printable and bounded, then escaped."""
    return html.escape(safe_text(value, limit))


def _labelled(metrics: dict[str, Any]) -> dict[str, Any]:
    return {safe_label(k): v for k, v in metrics.items()}


def collect(ledger: Ledger, metrics_path: Path | None = None) -> dict[str, Any]:
    """The numbers the report shows (also used by tests to compare against the ledger)."""
    rows = list(block_rows(ledger, 1))
    central: dict[int, dict[str, float]] = {}
    federated: dict[int, dict[str, float]] = {}
    verdicts: dict[int, Counter] = defaultdict(Counter)
    participation: dict[str, Counter] = defaultdict(Counter)
    train_times: dict[int, int] = {}
    for r in rows:
        for ev in r.evaluations:
            (central if ev["source"] == "centralized" else federated)[r.round] = _labelled(ev)
        if r.accepted or r.rejected:
            verdicts[r.round]["accepted"] += r.accepted
            for reason, n in r.reasons.items():
                verdicts[r.round][safe_label(reason)] += n
            train_times[r.round] = r.timestamp_ms
            for kid, verdict, _reason in r.clients:
                participation[safe_label(kid) if kid else "(unsigned)"][safe_label(verdict)] += 1
    ledger_time: dict[int, float] = {}
    if metrics_path is not None and metrics_path.is_file():
        for row in json.loads(metrics_path.read_text()).get("rounds", []):
            if "ledger_time_s" in row:
                ledger_time[int(row["round"])] = float(row["ledger_time_s"])
    try:
        rep = verify(ledger, client_signatures=True)
        status = {"verified": True, "text": f"VERIFIED: {rep.blocks} blocks, {rep.entries} entries, "
                                            f"{rep.client_signatures_checked} client signatures checked"}
    except VerificationError as e:
        status = {"verified": False, "text": f"NOT VERIFIED: {safe_text(e, 500)}"}
    rounds = sorted(train_times)
    durations = {r: (train_times[r] - train_times[p]) / 1000 for p, r in zip(rounds, rounds[1:])}
    return {"summary": summary(ledger), "central": central, "federated": federated,
            "verdicts": {k: dict(v) for k, v in sorted(verdicts.items())},
            "participation": {k: dict(v) for k, v in sorted(participation.items())},
            "ledger_time": ledger_time, "round_durations": durations, "status": status}


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

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for source, style in (("central", "o-"), ("federated", "s--")):
        series = data[source]
        xs = sorted(series)
        for metric, axis in (("accuracy", ax[0]), ("loss", ax[1])):
            ys = [series[x].get(metric, series[x].get(f"eval_{metric}")) for x in xs]
            pts = [(x, y) for x, y in zip(xs, ys) if isinstance(y, (int, float))]
            if pts:
                axis.plot([p[0] for p in pts], [p[1] for p in pts], style, label=source)
    for axis, title in ((ax[0], "accuracy"), (ax[1], "loss")):
        axis.set_title(f"{title} per round")
        axis.set_xlabel("round")
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    save("accuracy_loss", fig)

    fig, ax = plt.subplots(figsize=(10, 3.6))
    verdicts = data["verdicts"]
    rounds = sorted(verdicts)
    labels = sorted({k for v in verdicts.values() for k in v}, key=lambda k: (k != "accepted", k))
    bottom = [0] * len(rounds)
    for label in labels:
        vals = [verdicts[r].get(label, 0) for r in rounds]
        ax.bar(rounds, vals, bottom=bottom, label=label, color="tab:green" if label == "accepted" else None)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_title("updates per round: accepted and rejected by reason")
    ax.set_xlabel("round")
    if labels:
        ax.legend(fontsize=8)
    save("verdicts", fig)

    fig, ax = plt.subplots(figsize=(10, 3.6))
    part = data["participation"]
    keys = list(part)
    acc = [part[k].get("accepted", 0) for k in keys]
    rej = [part[k].get("rejected", 0) for k in keys]
    ax.bar(range(len(keys)), acc, label="accepted", color="tab:green")
    ax.bar(range(len(keys)), rej, bottom=acc, label="rejected", color="tab:red")
    ax.set_xticks(range(len(keys)), keys, rotation=60, fontsize=7)  # safe_label'ed in collect()
    ax.set_title("participation per client key")
    ax.legend()
    save("participation", fig)

    fig, ax = plt.subplots(figsize=(10, 3.2))
    if data["ledger_time"]:
        xs = sorted(data["ledger_time"])
        ax.bar(xs, [data["ledger_time"][x] * 1000 for x in xs])
        ax.set_ylabel("ms")
        ax.set_title("ledger time per round (verify + append)")
    else:
        xs = sorted(data["round_durations"])
        ax.bar(xs, [data["round_durations"][x] for x in xs])
        ax.set_ylabel("s")
        ax.set_title("time between train blocks")
    ax.set_xlabel("round")
    save("timing", fig)
    return figs


def _shown(value: Any) -> str:
    """A summary value as text; the keys of a dict (reason codes) as labels."""
    if isinstance(value, dict):
        return ", ".join(f"{safe_label(k)}: {v}" for k, v in value.items())
    return str(value)


def write_report(ledger: Ledger, dest: Path, *, metrics_path: Path | None = None, png_dir: Path | None = None) -> dict:
    """Write the HTML report (and PNGs on request); return the collected numbers."""
    directory = parse_ledger_uri(ledger.uri).directory if metrics_path is None else None
    if directory is not None:  # a file-backed ledger: run.py's metrics.json beside it
        guess = directory / "metrics.json"
        metrics_path = guess if guess.is_file() else None
    data = collect(ledger, metrics_path)
    figs = _figures(data)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        for name, png in figs.items():
            (png_dir / f"{name}.png").write_bytes(png)
    s = data["summary"]
    ok = data["status"]["verified"]
    img = "\n".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}"></figure>'
                    for n, b in figs.items())
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_html(_shown(s[k]), 1000)}</td></tr>" for k in (
        "federation_id", "backend", "strategy", "allowed_keys", "rounds", "blocks", "entries", "accepted", "rejected",
        "reasons", "head_hash", "model_digest"))
    checkpoint = "\n".join(_html(line) for line in s["checkpoint"].split("\n"))
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flower-chain report: {_html(s['federation_id'], 80)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
.status {{ padding: .8em 1em; border-radius: 6px; font-weight: 600; color: white;
           background: {'#2e7d32' if ok else '#c62828'}; }}
table {{ border-collapse: collapse; margin: 1em 0; }} th, td {{ text-align: left; padding: .2em .8em;
border-bottom: 1px solid #ddd; font-family: ui-monospace, monospace; font-size: 90%; }}
pre {{ background: #f4f4f4; padding: 1em; overflow-x: auto; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>flower-chain round ledger</h1>
<p class="status" id="status">{html.escape(data['status']['text'])}</p>
<table id="summary">{rows}</table>
<h2>Signed checkpoint</h2><pre id="checkpoint">{checkpoint}</pre>
<h2>Plots</h2>
{img}
<h2>Data</h2><pre id="data">{html.escape(json.dumps({k: data[k] for k in ('central', 'verdicts', 'participation')},
                                                  indent=1, default=str))}</pre>
</body></html>
"""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(doc)
    return data
