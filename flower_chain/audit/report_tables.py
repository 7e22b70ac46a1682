"""The HTML pieces of the audit report page: status banner, training and client tables, escaped ledger text."""

from __future__ import annotations

import html
from typing import Any

from flower_chain.audit.status import AMBER, GREEN
from flower_chain.ledger.text import safe_label, safe_text

TEXT_LIMIT = 200  # characters of one ledger text shown in the HTML
BANNER = {GREEN: "#2e7d32", AMBER: "#b26a00"}


def _html(value: object, limit: int = TEXT_LIMIT) -> str:
    """Ledger text for the HTML: made printable and bounded, then escaped."""
    return html.escape(safe_text(value, limit))


def _shown(value: Any) -> str:
    """A summary value as text; the keys of a dict (reason codes) as labels."""
    if isinstance(value, dict):
        return ", ".join(f"{safe_label(k)}: {v}" for k, v in value.items())
    return str(value)


def _counts(c: dict[str, int]) -> str:
    ok = c.get("accepted", 0)
    rest = ", ".join(f"{_html(k, 40)} {n}" for k, n in sorted(c.items()) if k != "accepted")
    return f"{ok} accepted" + (f", {sum(n for k, n in c.items() if k != 'accepted')} rejected ({rest})" if rest else "")


def _status_html(st: dict[str, Any]) -> str:
    colour = BANNER.get(st["level"], "#c62828")
    audit_colour = {True: "#2e7d32", False: "#c62828", None: "#57606a"}[st["audited"]]
    reason = f": {_html(st['reason'], 500)}" if st["reason"] else ""
    checked = "".join(f"<li>{_html(c, 400)}</li>" for c in st["checked"])
    missing = "".join(f"<li>{_html(c, 400)}</li>" for c in st["not_checked"])
    return (
        f'<section id="status-section"><p class="status" id="status" style="background:{colour}">'
        f"{html.escape(st['headline'])}{reason}</p>"
        f'<p class="status" id="audit-status" style="background:{audit_colour}">'
        f"{html.escape(st['audit_headline'])}: {_html(st['audit_text'], 500)}</p>"
        + (f'<h3>Checked</h3><ul id="checked">{checked}</ul>' if checked else "")
        + (f'<h3>Not checked</h3><ul id="not-checked">{missing}</ul>' if missing else "")
        + "</section>"
    )


def _training_table(data: dict[str, Any]) -> str:
    cols = [(src, m) for src in ("federated", "central") for m in sorted({k for v in data[src].values() for k in v})]
    if not cols:
        return '<p class="nodata">no data: no evaluation recorded</p>'
    head = "".join(
        f"<th>{_html(m, 40)}<br><small>{'federated' if s == 'federated' else 'centralized (server)'}</small></th>"
        for s, m in cols
    )
    rows = ""
    for r in sorted(set(data["federated"]) | set(data["central"])):
        cells = "".join(f"<td>{_html(_num(data[s].get(r, {}).get(m)), 40)}</td>" for s, m in cols)
        rows += f"<tr><td>{r}</td>{cells}</tr>"
    return f'<table id="training"><tr><th>round</th>{head}</tr>{rows}</table>'


def _num(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _clients_table(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_html(k, 60)}</td><td>{_counts(v['train'])}</td><td>{_counts(v['evaluate'])}</td></tr>"
        for k, v in data["clients"].items()
    )
    return (
        (f'<table id="clients"><tr><th>client</th><th>train replies</th><th>evaluate replies</th></tr>{rows}</table>')
        if rows
        else '<p class="nodata">no data: no client reply recorded</p>'
    )
