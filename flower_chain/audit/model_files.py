"""Model files of an exported model: ``.npz`` and ``.safetensors``, written and read without pickles.

The safetensors file is written here (the package is not a dependency): an 8-byte little-endian
header length, a JSON header of ``name -> {dtype, shape, data_offsets}`` (plus ``__metadata__``,
string values), padded with spaces to 8 bytes, then the raw little-endian bytes. Arrays keep the
ledger's order (by offset), so the file alone re-derives the ledger's array digest. The npz file
is written with fixed zip timestamps, so the same arrays give the same bytes.

The readers never raise anything but :class:`ValueError` on malformed input.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from typing import Any

import numpy as np

from flower_chain.ledger import json_input
from flower_chain.ledger.json_input import JSONInputError

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_ST_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "|i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "|u1",
    "BOOL": "|b1",
}
_NP_TO_ST = {np.dtype(v).str: k for k, v in _ST_DTYPES.items()}


class UnsupportedDtype(ValueError):
    """An array safetensors cannot hold."""


def npz_bytes(named: list[tuple[str, np.ndarray]]) -> bytes:
    """An ``.npz`` of ``named`` in order, with fixed timestamps (the same arrays give the same bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, a in named:
            with zf.open(zipfile.ZipInfo(name + ".npy", date_time=_ZIP_TIME), "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(a, order="C"), allow_pickle=False)
    return buf.getvalue()


def safetensors_bytes(named: list[tuple[str, np.ndarray]], metadata: dict[str, str]) -> bytes:
    """A safetensors file of ``named`` (ledger order by offset); :class:`UnsupportedDtype` for a dtype it lacks."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    chunks, offset = [], 0
    for name, a in named:
        le = a.astype(a.dtype.newbyteorder("<")) if a.dtype.byteorder == ">" else a
        code = _NP_TO_ST.get(le.dtype.str)
        if code is None or name == "__metadata__":
            raise UnsupportedDtype(f"array {name!r} ({a.dtype}) cannot be written as safetensors")
        data = np.asarray(le).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def read_safetensors(data: bytes) -> list[tuple[str, np.ndarray]]:
    """The arrays of a safetensors file in offset order; :class:`ValueError` for anything malformed."""
    if len(data) < 8:
        raise ValueError("shorter than its 8-byte header length")
    n = struct.unpack("<Q", data[:8])[0]
    if n > len(data) - 8:
        raise ValueError("header length beyond the end of the file")
    try:
        header = json_input.loads(data[8 : 8 + n])
    except JSONInputError as e:
        raise ValueError(f"the header {e}") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    body, rows = data[8 + n :], []
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(t, dict) or t.get("dtype") not in _ST_DTYPES:
            raise ValueError(f"tensor {name!r}: unknown dtype")
        shape, offs = t.get("shape"), t.get("data_offsets")
        if (
            not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(type(o) is int for o in offs)
        ):
            raise ValueError(f"tensor {name!r}: bad shape or data_offsets")
        dtype = np.dtype(_ST_DTYPES[t["dtype"]])
        if not 0 <= offs[0] <= offs[1] <= len(body) or offs[1] - offs[0] != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor {name!r}: data_offsets do not match its shape")
        rows.append((offs[0], offs[1], name, np.frombuffer(body[offs[0] : offs[1]], dtype=dtype).reshape(shape)))
    rows.sort(key=lambda r: r[0])
    end = 0
    for begin, stop, name, _ in rows:
        if begin != end:
            raise ValueError(f"tensor {name!r}: a gap or an overlap before it")
        end = stop
    if end != len(body):
        raise ValueError("bytes after the last tensor")
    return [(name, a) for _, _, name, a in rows]


def read_npz(data: bytes) -> list[tuple[str, np.ndarray]]:
    """The arrays of an ``.npz`` in archive order (no pickles); :class:`ValueError` for anything malformed."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:  # stored members only: no decompression bomb
            if any(i.compress_type != zipfile.ZIP_STORED or i.file_size > len(data) for i in zf.infolist()):
                raise ValueError("a compressed or oversized member (this export writes stored members only)")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return [(name, z[name]) for name in z.files]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, NotImplementedError) as e:
        raise ValueError(str(e) or type(e).__name__) from None
