"""Canonical encoding (CE1) of ledger values: deterministic, versioned, decodable.

Specified in docs/ledger-format.md §2. A value is one of:

======  ==========================================================================
tag     value
======  ==========================================================================
0x00    null
0x01    false
0x02    true
0x03    integer: 8 bytes, big-endian two's complement (-2**63 .. 2**63-1)
0x04    float: 8 bytes, IEEE 754 binary64 big-endian; every NaN is 0x7FF8000000000000
0x05    bytes: 4-byte big-endian length, then the bytes
0x06    text: 4-byte big-endian length, then UTF-8
0x07    list: 4-byte big-endian count, then the items
0x08    map: 4-byte big-endian count, then (key, value) pairs; a key is text
        without its tag (length + UTF-8); keys strictly ascending by their
        UTF-8 bytes (so no duplicates)
======  ==========================================================================

Every value has exactly one encoding and the decoder accepts only that one
(no trailing bytes, no unsorted keys, no non-canonical NaN), so two
implementations agree byte for byte. Domain separation and versioning are
done by the callers, which prefix the encoding with a domain tag such as
``b"flower-chain:entry:v1\\x00"``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from flower_chain.ledger.errors import EncodingError

_NULL, _FALSE, _TRUE, _INT, _FLOAT, _BYTES, _TEXT, _LIST, _MAP = range(9)
_CANONICAL_NAN = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_MAX_DEPTH = 32

Value = Any  # None | bool | int | float | bytes | str | list | dict[str, Value]


def encode(value: Value) -> bytes:
    """Return the canonical encoding of ``value``."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _len(n: int, out: bytearray) -> None:
    if n > 0xFFFFFFFF:
        raise EncodingError("value too long for canonical encoding")
    out += _U32.pack(n)


def _encode(v: Value, out: bytearray, depth: int) -> None:
    """Append the encoding of ``v``: exact built-in types by a direct test of their type, anything else
    (bool, subclasses, other mappings, numpy scalars) by :func:`_encode_general`, with the same bytes."""
    if depth > _MAX_DEPTH:
        raise EncodingError("value nested too deeply")
    t = type(v)
    if t is str:
        b = v.encode("utf-8")
        if len(b) > 0xFFFFFFFF:
            raise EncodingError("value too long for canonical encoding")
        out += _TEXT_TAG + _U32.pack(len(b)) + b
    elif t is bytes:
        if len(v) > 0xFFFFFFFF:
            raise EncodingError("value too long for canonical encoding")
        out += _BYTES_TAG + _U32.pack(len(v)) + v
    elif t is int:
        if not -(2**63) <= v < 2**63:
            raise EncodingError(f"integer {v} outside the signed 64-bit range")
        out += _INT_TAG + _I64.pack(v)
    elif t is float:
        out += _FLOAT_TAG + (_CANONICAL_NAN if v != v else _F64.pack(v))
    elif t is dict:
        _encode_map(v, out, depth)
    else:
        _encode_general(v, out, depth)


_TEXT_TAG, _BYTES_TAG, _INT_TAG, _FLOAT_TAG = (bytes([t]) for t in (_TEXT, _BYTES, _INT, _FLOAT))


#: Map layouts by key tuple (in the map's own order): the encoded header and each key's encoded form, sorted.
#: Ledger maps have a few fixed key sets, each met thousands of times a round; bounded, cleared when full.
_LAYOUTS: dict[tuple[str, ...], tuple[bytes, tuple[tuple[bytes, str], ...]]] = {}
_MAX_LAYOUTS = 1024


def _layout(keys: tuple[Any, ...]) -> tuple[bytes, tuple[tuple[bytes, str], ...]]:
    """(tag and count, ((encoded key, key), ...) in canonical order) of a map with these keys."""
    plain = all(type(k) is str for k in keys)  # only plain text keys are cached: a look-alike of one is no text
    got = _LAYOUTS.get(keys) if plain else None
    if got is not None:
        return got
    items = []
    for k in keys:
        if not isinstance(k, str):
            raise EncodingError(f"map keys must be text, got {type(k).__name__}")
        kb = k.encode("utf-8")
        if len(kb) > 0xFFFFFFFF:
            raise EncodingError("value too long for canonical encoding")
        items.append((kb, k))
    items.sort()
    if len(items) > 0xFFFFFFFF:
        raise EncodingError("value too long for canonical encoding")
    layout = (bytes([_MAP]) + _U32.pack(len(items)), tuple((_U32.pack(len(kb)) + kb, k) for kb, k in items))
    if plain and len(items) <= 64 and sum(len(kb) for kb, _ in items) <= 4096:  # small layouts only: bounded memory
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[keys] = layout
    return layout


def _encode_map(v: Mapping[Any, Any], out: bytearray, depth: int) -> None:
    head, items = _layout(tuple(v))
    out += head
    for kb, k in items:
        out += kb
        _encode(v[k], out, depth + 1)


def _encode_general(v: Value, out: bytearray, depth: int) -> None:
    if v is None:
        out.append(_NULL)
    elif v is True:
        out.append(_TRUE)
    elif v is False:
        out.append(_FALSE)
    elif isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise EncodingError(f"integer {v} outside the signed 64-bit range")
        out.append(_INT)
        out += _I64.pack(v)
    elif isinstance(v, float):
        out.append(_FLOAT)
        out += _CANONICAL_NAN if math.isnan(v) else _F64.pack(v)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out.append(_BYTES)
        _len(len(b), out)
        out += b
    elif isinstance(v, str):
        b = v.encode("utf-8")
        out.append(_TEXT)
        _len(len(b), out)
        out += b
    elif isinstance(v, (list, tuple)):
        out.append(_LIST)
        _len(len(v), out)
        for item in v:
            _encode(item, out, depth + 1)
    elif isinstance(v, Mapping):
        _encode_map(v, out, depth)
    else:
        # numpy scalars and other number types: accept exact ints and floats only
        if hasattr(v, "item"):
            _encode(v.item(), out, depth)
            return
        raise EncodingError(f"cannot encode a value of type {type(v).__name__}")


def decode(data: bytes) -> Value:
    """Decode a canonical encoding; raise :class:`EncodingError` on anything non-canonical."""
    buf = bytes(data)
    value, pos = _decode(buf, 0, 0)
    if pos != len(buf):
        raise EncodingError(f"{len(buf) - pos} trailing bytes after the value")
    return value


def _read_len(buf: bytes, pos: int) -> tuple[int, int]:
    """(a 4-byte big-endian length at ``pos``, the position after it)."""
    if pos + 4 > len(buf):
        raise EncodingError("truncated value")
    return _U32.unpack_from(buf, pos)[0], pos + 4


def _decode(buf: bytes, pos: int, depth: int) -> tuple[Value, int]:
    """(the value at ``pos``, the position after it): reads ``buf`` in place (``unpack_from``, one slice per
    bytes, text or key), every bound checked before it is read."""
    if depth > _MAX_DEPTH:
        raise EncodingError("value nested too deeply")
    size = len(buf)
    if pos >= size:
        raise EncodingError("truncated value")
    tag = buf[pos]
    pos += 1
    if tag in (_BYTES, _TEXT):
        n, pos = _read_len(buf, pos)
        end = pos + n
        if end > size:
            raise EncodingError("truncated value")
        if tag == _BYTES:
            return buf[pos:end], end
        try:
            return buf[pos:end].decode("utf-8"), end
        except UnicodeDecodeError as e:
            raise EncodingError("text is not valid UTF-8") from e
    if tag == _INT:
        if pos + 8 > size:
            raise EncodingError("truncated value")
        return _I64.unpack_from(buf, pos)[0], pos + 8
    if tag == _MAP:
        n, pos = _read_len(buf, pos)
        result: dict[str, Value] = {}
        prev = b""
        for i in range(n):
            klen, pos = _read_len(buf, pos)
            end = pos + klen
            if end > size:
                raise EncodingError("truncated value")
            kbytes = buf[pos:end]
            if i and kbytes <= prev:
                raise EncodingError("map keys are not strictly ascending")
            prev = kbytes
            try:
                key = kbytes.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EncodingError("map key is not valid UTF-8") from e
            result[key], pos = _decode(buf, end, depth + 1)
        return result, pos
    if tag == _NULL:
        return None, pos
    if tag == _FALSE:
        return False, pos
    if tag == _TRUE:
        return True, pos
    if tag == _FLOAT:
        if pos + 8 > size:
            raise EncodingError("truncated value")
        f = _F64.unpack_from(buf, pos)[0]
        if f != f and buf[pos : pos + 8] != _CANONICAL_NAN:
            raise EncodingError("non-canonical NaN")
        return f, pos + 8
    if tag == _LIST:
        n, pos = _read_len(buf, pos)
        items = []
        for _ in range(n):
            item, pos = _decode(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    raise EncodingError(f"unknown tag 0x{tag:02x}")


def encode_with_domain(domain: bytes, value: Value) -> bytes:
    """``domain || encode(value)``: the form of every hashed or signed ledger object."""
    return domain + encode(value)


def decode_with_domain(domain: bytes, data: bytes) -> Value:
    """Check the domain tag, then decode the rest."""
    if not bytes(data[: len(domain)]) == domain:
        raise EncodingError(f"missing domain tag {domain!r}")
    return decode(bytes(data[len(domain) :]))
