"""A throw-away PostgreSQL server from Debian's ``postgresql`` package (shared by the tests and bench/).

``initdb`` into a short temporary directory, ``pg_ctl`` on a free loopback port with the Unix
socket in that directory, password authentication for TCP (so wrong credentials can be tested),
stopped by PID. initdb refuses to run as root: as root the server runs as the ``postgres``
system user (or a ``flowerchain-pg`` user created for it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER, PASSWORD = "fc", "fc-secret"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK):
            return Path(d)
    return None


def why_unavailable() -> str | None:
    """None when a server can be started here, else the reason (for pytest.skip)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (pip install 'psycopg[binary]'; .ci/run does)"
    if find_bin_dir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed (apt-get install postgresql; .ci/run does)"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "flowerchain-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "flowerchain-pg"],
        check=True,
        capture_output=True,
    )
    return "flowerchain-pg"


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; ``uri(db)`` connects as a password superuser.

    Parameters
    ----------
    fsync : bool
        ``False`` only where durability is not what is measured (never in the benchmarks).
    """

    def __init__(self, fsync: bool = True) -> None:
        self.bin = find_bin_dir()
        if self.bin is None:
            raise RuntimeError(why_unavailable())
        self.user = _service_user()
        self.dir = Path(tempfile.mkdtemp(prefix="fcpg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.fsync = fsync
        self.pid: int | None = None
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            pw = pwd.getpwnam(self.user)
            for p in (self.dir, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self._as_user(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                USER,
                "--pwfile",
                str(pwfile),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        self.start()

    def _as_user(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)
        if r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout[-1500:]} {r.stderr[-1500:]}")
        return r

    def start(self) -> None:
        """Start the server (again) on the same port and wait until it accepts connections."""
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync={'on' if self.fsync else 'off'}"
            " -c max_connections=50 -c shared_buffers=64MB"
        )
        self._as_user(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.dir / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split("\n")[0])

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the postmaster by its PID: ``fast`` (SIGINT), ``immediate`` (SIGQUIT) or ``kill`` (SIGKILL)."""
        if self.pid is None:
            return
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "kill": signal.SIGKILL}[mode]
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            self.pid = None
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
        if mode == "kill":  # children of a SIGKILLed postmaster exit on their own; wait for the port
            time.sleep(0.5)
        self.pid = None

    def uri(self, db: str = "postgres", user: str = USER, password: str | None = PASSWORD) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"

    def admin(self):
        import psycopg

        return psycopg.connect(self.uri(), autocommit=True)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping an old one) and return its URI."""
        with self.admin() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
