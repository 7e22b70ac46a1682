"""Ledger locations: the one place that splits a ledger URI into scheme and path.

=========================  ===========================================================
``sqlite:///rel/path.db``  scheme ``sqlite``, path ``rel/path.db`` (four slashes: absolute)
``jsonl:///rel/path``      scheme ``jsonl``, path ``rel/path``
``PATH.db`` / ``PATH``     a plain path: scheme ``""``, path ``PATH`` (backend by suffix)
``memory:``                scheme ``memory``, no path
``postgresql://...``       scheme ``postgresql``, no path (a database server)
``SCHEME:...``             a third-party backend: no path known to flower-chain
=========================  ===========================================================

Files that belong to a file-backed ledger live beside it and are named after it
(:meth:`LedgerLocation.sibling`), e.g. the anchoring status file ``<ledger>.anchors.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flower_chain.ledger.errors import LedgerOpenError

FILE_SCHEMES = ("sqlite", "jsonl")
"""Schemes whose URI is ``SCHEME:///PATH`` and whose ledger is one local file."""

ANCHOR_STATUS_SUFFIX = ".anchors.jsonl"
"""Suffix of the anchoring status file written beside a file-backed ledger."""

RUN_ID = "{run_id}"
"""Placeholder in a ledger URI for the id of the run that opens it (one new ledger per ``flwr run``)."""

__all__ = [
    "ANCHOR_STATUS_SUFFIX",
    "FILE_SCHEMES",
    "RUN_ID",
    "LedgerLocation",
    "anchor_status_path",
    "file_uri",
    "parse_ledger_uri",
    "with_run_id",
]


@dataclass(frozen=True)
class LedgerLocation:
    """Where a ledger lives, as parsed from its URI.

    Attributes
    ----------
    uri : str
        The URI as given.
    scheme : str
        ``sqlite``, ``jsonl``, ``memory``, ``postgresql``, a third-party scheme, or ``""`` for a
        plain path.
    path : pathlib.Path or None
        The local file of a file-backed ledger (``sqlite:``, ``jsonl:`` or a plain path), else ``None``.
    """

    uri: str
    scheme: str
    path: Path | None

    @property
    def is_file(self) -> bool:
        """Whether the ledger is a local file (its :attr:`path` is known)."""
        return self.path is not None

    @property
    def directory(self) -> Path | None:
        """The directory holding a file-backed ledger, else ``None``."""
        return None if self.path is None else self.path.parent

    def sibling(self, suffix: str) -> Path | None:
        """The file beside a file-backed ledger named ``<ledger file name><suffix>``; ``None`` otherwise.

        Parameters
        ----------
        suffix : str
            Appended to the ledger's file name, e.g. ``".anchors.jsonl"``.

        Returns
        -------
        pathlib.Path or None
            ``<dir>/<name><suffix>``, or ``None`` for a ledger that is not a local file.
        """
        if self.path is None:
            return None
        return self.path.with_name(self.path.name + suffix)

    @property
    def anchor_status(self) -> Path | None:
        """The anchoring status file ``<ledger>.anchors.jsonl`` of a file-backed ledger, else ``None``."""
        return self.sibling(ANCHOR_STATUS_SUFFIX)


def with_run_id(uri: str, run_id: str) -> str:
    """``uri`` with every ``{run_id}`` replaced by ``run_id`` (unchanged when it has none).

    Examples
    --------
    >>> with_run_id("sqlite:////srv/ledger-{run_id}.db", "42")
    'sqlite:////srv/ledger-42.db'
    """
    return uri.replace(RUN_ID, str(run_id)) if RUN_ID in uri else uri


def parse_ledger_uri(uri: str | Path) -> LedgerLocation:
    """Split a ledger URI into scheme and (for file-backed ledgers) local path.

    Parameters
    ----------
    uri : str or pathlib.Path
        A ledger URI (``sqlite:///ledger.db``, ``jsonl:////abs/ledger.jsonl``, ``memory:``,
        ``postgresql://user@host:5432/db``, ``SCHEME:...``) or a plain path.

    Returns
    -------
    LedgerLocation
        The scheme and, for ``sqlite:``/``jsonl:`` URIs and plain paths, the file's path.

    Raises
    ------
    LedgerOpenError
        A ``sqlite:`` or ``jsonl:`` URI that is not ``SCHEME:///PATH`` with a non-empty path.
    """
    uri = str(uri)
    scheme, sep, rest = uri.partition(":")
    if not sep or len(scheme) <= 1:  # no scheme, or a Windows drive letter: a plain path
        return LedgerLocation(uri, "", Path(uri))
    if scheme in FILE_SCHEMES:
        if not rest.startswith("///") or len(rest) == 3:
            raise LedgerOpenError(
                f"{uri!r}: write {scheme}:///relative/path or {scheme}:////absolute/path (three slashes, then the path)"
            )
        return LedgerLocation(uri, scheme, Path(rest[3:]))
    return LedgerLocation(uri, scheme, None)


def file_uri(scheme: str, path: str | Path) -> str:
    """The URI of a file-backed ledger: ``SCHEME:///PATH`` (an absolute path gives four slashes).

    Parameters
    ----------
    scheme : str
        ``sqlite`` or ``jsonl``.
    path : str or pathlib.Path
        The ledger file.

    Returns
    -------
    str
        A URI that :func:`parse_ledger_uri` maps back to ``path``.

    Raises
    ------
    ValueError
        ``scheme`` is not a file-backed scheme, or ``path`` is empty.
    """
    if scheme not in FILE_SCHEMES:
        raise ValueError(f"{scheme!r} is not a file-backed ledger scheme ({', '.join(FILE_SCHEMES)})")
    if not str(path):
        raise ValueError("a ledger file URI needs a non-empty path")
    return f"{scheme}:///{path}"


def anchor_status_path(uri: str | Path) -> Path | None:
    """The anchoring status file ``<ledger>.anchors.jsonl`` beside a file-backed ledger, else ``None``.

    Parameters
    ----------
    uri : str or pathlib.Path
        A ledger URI or plain path (see :func:`parse_ledger_uri`).

    Returns
    -------
    pathlib.Path or None
        The status file's path, or ``None`` for ``memory:``, PostgreSQL and third-party ledgers.
    """
    return parse_ledger_uri(uri).anchor_status
