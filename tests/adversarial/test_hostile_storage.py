"""Storage as hostile input (issue 19, item 10): whatever a database or a file hands the read-only
commands, ``ledger verify`` and ``ledger summary`` end with exit 0, 1 or 2, a failure as one line on
stderr (``error:`` or ``NOT VERIFIED``), never a traceback, and allocate a bounded amount of memory.

Hypothesis writes any cell type and value into a copy of an honest ledger: SQLite (any column of any
table, with SQLite's dynamic typing: an INTEGER where a BLOB belongs, a float, text, NULL, sizes such
as 2**31), JSONL (any JSON value in any field of a block line, whole lines of random text, deep
nesting) and PostgreSQL (typed columns: any bytes, text and integers, rows deleted). The CLI runs in
process (the click command built once) so the 2,050 examples of a CI run stay fast
(``FLOWER_CHAIN_HOSTILE_EXAMPLES=2000`` runs that many per backend, as measured for the issue); the process's peak resident
memory must stay bounded throughout, and where a value could be read as a size the command's peak
allocation is measured with :mod:`tracemalloc` (which also sees zeroed pages never touched). Re-signed headers with far-future timestamps, negative counts and height
gaps are separate cases below (a server holding its key can write them).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import resource
import shutil
import sqlite3
import tempfile
import tracemalloc
from pathlib import Path

import pytest
import typer.main
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flower_chain.cli import app
from flower_chain.ledger.block import BlockHeader
from tests.conftest import Federation

MEMORY_LIMIT = 64 * 1024 * 1024  # bytes allocated at peak by one command on a ledger of a few KB
RSS_LIMIT_KB = 512 * 1024  # growth of the process's peak resident memory over the whole property test
RUNNER = CliRunner()
BASE_RSS_KB = [0]  # the process's peak RSS when the honest ledgers were made (set by that fixture)
COMMAND = typer.main.get_command(app)  # built once: typer rebuilds the click group on every invoke
#: Examples per backend: CI's default (900 SQLite, 900 JSONL, 250 PostgreSQL) or the environment's count.
_EXAMPLES = int(os.environ.get("FLOWER_CHAIN_HOSTILE_EXAMPLES", "0") or 0)


def _examples(default: int) -> int:
    return _EXAMPLES or default


SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

SIZES = st.sampled_from([0, 1, 31, 32, 33, 64, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, -1, -(2**63)])
CELL = st.one_of(
    st.none(),
    st.booleans(),
    SIZES,
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=64),
    st.binary(max_size=256),
    st.sampled_from(["\x1b[2K\r\x1b[1;32mVERIFIED", "[bold green]VERIFIED[/]", "\u202e", "\x85\x9b31m"]),
)


def run_cli(*args: str, measure: bool = False) -> tuple[int, str, str, int]:
    """Run the CLI in process: exit code, stdout, stderr and (``measure``) the peak bytes allocated meanwhile
    (:mod:`tracemalloc`, which also sees memory never touched, such as ``bytes(2**31)``'s zeroed pages)."""
    if measure:
        tracemalloc.start()
    try:
        result = RUNNER.invoke(COMMAND, list(args))
        peak = tracemalloc.get_traced_memory()[1] if measure else 0
    finally:
        if measure:
            tracemalloc.stop()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"{args[:2]} raised {type(result.exception).__name__}: {result.exception}"
        ) from result.exception
    return result.exit_code, result.stdout, result.stderr, peak


def assert_contract(uri: str, measure: bool = False) -> None:
    """verify and summary: exit 0/1/2, a failure as one stderr line, no traceback, bounded memory (the peak
    allocation under ``MEMORY_LIMIT`` when ``measure``; the process's peak RSS growth always)."""
    for command in ("verify", "summary"):
        code, _out, err, peak = run_cli("ledger", command, uri, measure=measure)
        assert code in (0, 1, 2), (command, code, err)
        assert "Traceback" not in err
        if code:
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith(("error:", "NOT VERIFIED")), (command, err)
        assert peak < MEMORY_LIMIT, f"{command} allocated {peak} bytes at peak"
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - BASE_RSS_KB[0]
        assert grown < RSS_LIMIT_KB, f"peak resident memory grew by {grown} KiB"


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    d = tmp_path_factory.mktemp("honest")
    BASE_RSS_KB[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {}
    for backend, suffix in (("sqlite", "db"), ("jsonl", "jsonl")):
        f = Federation(f"{backend}:///{d}/ledger.{suffix}")
        f.add_round(1, n=2, rejected=1)
        f.ledger.close()
        out[backend] = (d / f"ledger.{suffix}", f)
    return out


def _size_like(value: object) -> bool:
    """Whether an example's value could be read as a size (then its allocations are measured too)."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**16


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="fc-hostile-"))


SQLITE_CELLS = {
    "blocks": ("height", "header", "signature", "checkpoint"),
    "entries": ("idx", "height", "data"),
    "nodes": ("level", "idx", "hash"),
    "meta": ("key", "value"),
    "blobs": ("digest", "data"),
}


@settings(max_examples=_examples(900), **SETTINGS)
@given(
    table=st.sampled_from(sorted(SQLITE_CELLS)),
    column=st.integers(0, 3),
    row=st.integers(0, 50),
    value=CELL,
    delete=st.booleans(),
)
def test_sqlite_any_cell_keeps_the_exit_code_contract(honest, table, column, row, value, delete):
    d = _scratch()
    try:
        path = d / "t.db"
        shutil.copy(honest["sqlite"][0], path)
        cols = SQLITE_CELLS[table]
        col = cols[column % len(cols)]
        db = sqlite3.connect(path)
        db.execute("PRAGMA synchronous=OFF")  # a scratch copy: no fsync per example
        rowids = [r for (r,) in db.execute(f"SELECT rowid FROM {table} ORDER BY rowid")] if table != "nodes" else []
        try:
            if table == "nodes":
                keys = db.execute("SELECT level, idx FROM nodes ORDER BY level, idx").fetchall()
                where, params = "level = ? AND idx = ?", keys[row % len(keys)]
            elif rowids:
                where, params = "rowid = ?", (rowids[row % len(rowids)],)
            else:
                where, params = "1 = 1", ()
            if delete and table in ("blocks", "entries", "nodes"):
                db.execute(f"DELETE FROM {table} WHERE {where}", params)
            else:
                db.execute(f"UPDATE {table} SET {col} = ? WHERE {where}", (value, *params))
            db.commit()
        except (sqlite3.IntegrityError, OverflowError):  # a NOT NULL or key constraint, an int beyond 64 bits
            return
        finally:
            db.close()
        assert_contract(f"sqlite:///{path}", measure=_size_like(value))
    finally:
        shutil.rmtree(d, ignore_errors=True)


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
JSONL_FIELDS = ("height", "header", "signature", "checkpoint", "entries", "view", "extra")


@settings(max_examples=_examples(900), **SETTINGS)
@given(
    line=st.integers(0, 10),
    field=st.sampled_from(JSONL_FIELDS),
    value=st.one_of(CELL.filter(lambda v: not isinstance(v, bytes)), JSON_VALUE),
    how=st.sampled_from(["field", "line", "nest", "entry"]),
    depth=st.integers(1, 200_000),
    text=st.text(max_size=80),
)
def test_jsonl_any_value_keeps_the_exit_code_contract(honest, line, field, value, how, depth, text):
    d = _scratch()
    try:
        lines = honest["jsonl"][0].read_text().splitlines()
        i = 1 + line % (len(lines) - 1)
        if how == "field":
            rec = json.loads(lines[i])
            rec[field] = value
            lines[i] = json.dumps(rec)
        elif how == "entry":
            rec = json.loads(lines[i])
            rec["entries"] = [base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()] + rec["entries"]
            lines[i] = json.dumps(rec)
        elif how == "nest":
            lines[i] = "[" * depth + "]" * depth
        else:
            lines[i] = text
        path = d / "t.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        assert_contract(f"jsonl:///{path}", measure=_size_like(value))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _resign(f: Federation, path: Path, at: int, changes: dict) -> None:
    """Replace block ``at`` of an SQLite ledger with its header changed and re-signed by the server's key
    (what a server holding its key can write)."""
    db = sqlite3.connect(path)
    (raw,) = db.execute("SELECT header FROM blocks WHERE height = ?", (at,)).fetchone()
    from flower_chain.ledger.block import BLOCK_DOMAIN
    from flower_chain.ledger.encoding import encode_with_domain

    h = BlockHeader.from_bytes(bytes(raw))
    fields = {**dataclasses.asdict(h), **changes}
    data = encode_with_domain(BLOCK_DOMAIN, fields)
    db.execute("UPDATE blocks SET header = ?, signature = ? WHERE height = ?", (data, f.server_key.sign(data), at))
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "changes",
    [
        {"timestamp_ms": 2**62},
        {"timestamp_ms": -1},
        {"timestamp_ms": 10**17},
        {"round": -3},
        {"entry_count": 2**40},
        {"log_size": -1},
        {"height": 2**63 - 1},
        {"prev_hash": b"\x00" * 5},
        {"model_after": b"x" * 40},
    ],
)
def test_a_resigned_header_with_values_out_of_range_is_one_line(honest, tmp_path, changes):
    path = tmp_path / "t.db"
    shutil.copy(honest["sqlite"][0], path)
    _resign(honest["sqlite"][1], path, 1, changes)
    assert_contract(f"sqlite:///{path}")
    for command in ("blocks", "export"):
        code, _out, err, _peak = run_cli("ledger", command, f"sqlite:///{path}")
        assert code == 1 and len(err.strip().splitlines()) == 1, (command, err)


def test_an_integer_where_a_header_belongs_is_not_allocated(honest, tmp_path):
    """``bytes(2**31)`` of an INTEGER cell allocated 2 GiB before anything was checked."""
    path = tmp_path / "t.db"
    shutil.copy(honest["sqlite"][0], path)
    db = sqlite3.connect(path)
    db.execute("UPDATE blocks SET header = ? WHERE height = 1", (2**31,))
    db.commit()
    db.close()
    code, _out, err, peak = run_cli("ledger", "verify", f"sqlite:///{path}")
    assert code == 1 and "not binary data" in err and peak < MEMORY_LIMIT


@pytest.mark.parametrize("height", [-5, 7, 2_000_000_000])
def test_a_height_gap_is_one_line_in_every_command(honest, tmp_path, height):
    path = tmp_path / "t.db"
    shutil.copy(honest["sqlite"][0], path)
    db = sqlite3.connect(path)
    db.execute("UPDATE blocks SET height = ? WHERE height = 0", (height,))
    db.commit()
    db.close()
    for command in ("verify", "summary", "blocks", "checkpoint"):
        code, _out, err, _peak = run_cli("ledger", command, f"sqlite:///{path}")
        assert code == 1 and "block" in err and len(err.strip().splitlines()) == 1, (command, code, err)


PG_CELLS = [
    ("fc_blocks", "header", "bytes"),
    ("fc_blocks", "signature", "bytes"),
    ("fc_blocks", "checkpoint", "text"),
    ("fc_blocks", "height", "int"),
    ("fc_entries", "data", "bytes"),
    ("fc_nodes", "hash", "bytes"),
    ("fc_head", "block_count", "int"),
    ("fc_head", "head_hash", "bytes"),
]


@pytest.fixture(scope="module")
def pg_honest(postgres_server):
    uri = postgres_server.create_database("hostile_storage")
    f = Federation(uri)
    for r in (1, 2):
        f.add_round(r, n=3, rejected=1)
    f.ledger.close()
    return uri


@settings(max_examples=_examples(250), **SETTINGS)
@given(cell=st.sampled_from(PG_CELLS), row=st.integers(0, 20), data=st.data())
def test_postgres_any_typed_value_keeps_the_exit_code_contract(pg_honest, cell, row, data):
    import psycopg

    table, column, kind = cell
    value = data.draw(
        {
            "bytes": st.binary(max_size=200),
            "text": st.text(max_size=200).map(lambda s: s.replace("\x00", "")),
            "int": SIZES | st.integers(-(2**63), 2**63 - 1),
        }[kind]
    )
    with psycopg.connect(pg_honest, autocommit=True) as conn:
        keys = conn.execute(f"SELECT ctid FROM {table} ORDER BY ctid").fetchall()
        (ctid,) = keys[row % len(keys)]
        (old,) = conn.execute(f"SELECT {column} FROM {table} WHERE ctid = %s", (ctid,)).fetchone()
        try:
            cur = conn.execute(f"UPDATE {table} SET {column} = %s WHERE ctid = %s RETURNING ctid", (value, ctid))
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
            return
        (new_ctid,) = cur.fetchone()
        try:
            assert_contract(pg_honest, measure=_size_like(value))
        finally:
            conn.execute(f"UPDATE {table} SET {column} = %s WHERE ctid = %s", (old, new_ctid))
