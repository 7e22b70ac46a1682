"""Run a Flower App the supported way: ``flwr run`` against a local SuperLink of its own.

flwr 1.42 simulates through ``flwr run APP`` and a *local SuperLink* that the first ``flwr run`` of a
``:local:`` connection starts, detached: it outlives the command and keeps the environment and the
working directory it started with, and a second ``flwr run`` reuses whatever local SuperLink answers
on the fixed port. :class:`LocalSuperLink` gives one a Flower home (``FLWR_HOME``), ports
(``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``, ``FLWR_LOCAL_CONTROL_API_PORT``), a short ``RAY_TMPDIR``
(Ray hangs on Unix socket paths over 107 bytes) and an environment of its own, so it never reuses
another one and is never reused, and it stops that SuperLink and everything it started, by PID, when
the context closes. ``flwr run`` exits 0 even when the ServerApp fails: :meth:`LocalSuperLink.run`
reads the run's final status with ``flwr ls`` and returns it.

Used by ``run.py`` (simulation mode), the tests and the benchmarks. Needs ``psutil`` (the ``demo``
extra); imports neither torch nor flwr (it drives Flower's CLI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_RUN_ID = re.compile(r"Successfully started run (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class RunResult:
    """How one ``flwr run`` ended.

    Attributes
    ----------
    returncode : int
        The exit code of ``flwr run`` (0 even when the ServerApp failed).
    run_id : str
        Flower's run id ("" when the run was never started).
    status : str
        The run's status from ``flwr ls``, e.g. ``finished:completed`` or ``finished:failed``
        ("unknown" when it could not be read).
    log : Path
        Where the output of ``flwr run`` (with ``--stream``: the ServerApp's log) was written.
    """

    returncode: int
    run_id: str
    status: str
    log: Path

    @property
    def ok(self) -> bool:
        """The command succeeded and the run completed."""
        return self.returncode == 0 and self.status == "finished:completed"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def toml_value(v: Any) -> str:
    """One value of a ``--run-config`` / ``--federation-config`` override, in TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))


def config_arg(values: Mapping[str, Any]) -> str:
    """``key=value key=value`` as ``flwr run --run-config`` takes it."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


def stop_process_trees(pids: list[int], grace: float = 10.0) -> int:
    """SIGTERM each process, its process group and every descendant; SIGKILL what is left after ``grace``.

    Descendants are collected before anything is signalled (Flower's SuperLink, SuperExec and
    ServerApp/ClientApp processes run in sessions of their own). Returns how many processes were found.
    """
    import psutil  # noqa: PLC0415 - the demo extra

    family: dict[int, psutil.Process] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family[root.pid] = root
            family.update((c.pid, c) for c in root.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for proc in family.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(list(family.values()), timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(family)


class LocalSuperLink:
    """A local SuperLink of one's own for ``flwr run``, stopped by PID when the context closes.

    Parameters
    ----------
    env : Mapping[str, str], optional
        Extra environment for ``flwr run`` and so for the SuperLink it starts, the ServerApp and the
        simulated ClientApps (they inherit it); it cannot change ``FLWR_HOME``, the two ports or
        ``RAY_TMPDIR``.
    base_env : Mapping[str, str], optional
        The environment ``env`` is added to (default: this process's).
    home : Path, optional
        The Flower home (``FLWR_HOME``). Default: a new short temporary directory, removed on stop.
    cwd : Path, optional
        Working directory of ``flwr run`` and so of the SuperLink (relative paths inside the apps
        resolve against it). Default: the current directory.
    log_dir : Path, optional
        Where each run's log goes unless :meth:`run` is given one. Default: a new temporary directory,
        kept after the stop so the logs can be read.

    Examples
    --------
    >>> with LocalSuperLink() as link:                                   # doctest: +SKIP
    ...     result = link.run("path/to/app", num_supernodes=3, run_config={"num-server-rounds": 2})
    ...     assert result.ok, result.log.read_text()
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        home: Path | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self._own_home = home is None
        # Short paths: Ray's session sockets live under RAY_TMPDIR and must stay under 107 bytes.
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="fc-flwr-", dir="/tmp"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="fc-ray-", dir="/tmp"))
        self.http_port, self.control_port = free_port(), free_port()
        while self.control_port == self.http_port:
            self.control_port = free_port()
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self.env = {
            **(os.environ if base_env is None else base_env),
            "FLWR_HOME": str(self.home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "RAY_TMPDIR": str(self.ray_tmp),
            "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # silences Ray's FutureWarning on CPU-only nodes
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
        }
        own = {
            k: self.env[k]
            for k in ("FLWR_HOME", "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT", "RAY_TMPDIR")
        }
        self.env.update(env or {})
        self.env.update(own)  # never overridden: they are what makes this SuperLink this object's own
        self._runs: list[subprocess.Popen] = []
        self._stopped = False

    # --- running ------------------------------------------------------------------------------------

    def run(
        self,
        app: str | Path,
        *,
        num_supernodes: int,
        run_config: Mapping[str, Any] | None = None,
        federation_config: Mapping[str, Any] | None = None,
        log: Path | None = None,
        tee: IO[str] | None = None,
        timeout: float | None = None,
    ) -> RunResult:
        """``flwr run APP --stream`` on this SuperLink with ``num_supernodes`` simulated nodes.

        Parameters
        ----------
        app : str or Path
            The Flower App directory (its pyproject.toml has ``[tool.flwr.app]``).
        num_supernodes : int
            Simulated SuperNodes of the run.
        run_config : Mapping, optional
            ``--run-config`` overrides of the app's ``[tool.flwr.app.config]``.
        federation_config : Mapping, optional
            Further ``--federation-config`` values (``client-resources-num-cpus``, ``verbose`` ...).
        log : Path, optional
            Where the streamed output goes (default: ``run-<n>.log`` in ``log_dir``).
        tee : IO[str], optional
            Also copy each output line there (e.g. ``sys.stdout`` for a verbose run).
        timeout : float, optional
            Seconds before the run is stopped and :class:`TimeoutError` raised.
        """
        if self._stopped:
            raise RuntimeError("this LocalSuperLink was stopped; make a new one")
        if not self._runs and (_listening(self.http_port) or _listening(self.control_port)):
            raise RuntimeError(
                f"port {self.http_port} or {self.control_port} was taken since it was chosen; make a new LocalSuperLink"
            )
        fed = {
            "num-supernodes": int(num_supernodes),
            "client-resources-num-cpus": 1,
            "client-resources-num-gpus": 0.0,
            **(federation_config or {}),
        }
        cmd = ["flwr", "run", str(app), "local", "--stream", "--federation-config", config_arg(fed)]
        if run_config:
            cmd += ["--run-config", config_arg(run_config)]
        if log is None:
            if self._log_dir is None:
                self._log_dir = Path(tempfile.mkdtemp(prefix="fc-flwr-logs-"))
            log = self._log_dir / f"run-{len(self._runs) + 1}.log"
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        found: list[str] = []
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
            self._runs.append(proc)

            def copy() -> None:  # on a thread: the caller's thread stays free for signals and the deadline
                assert proc.stdout is not None
                for line in proc.stdout:  # ends when flwr run exits (with --stream: when the run finishes)
                    line = _ANSI.sub("", line)
                    out.write(line)
                    out.flush()
                    if tee is not None:
                        tee.write(line)
                        tee.flush()
                    if not found and (m := _RUN_ID.search(line)):
                        found.append(m.group(1))

            reader = threading.Thread(target=copy, daemon=True)
            reader.start()
            try:
                while True:  # a bounded wait: Ctrl-C (delivered to any thread) is acted on within 0.5 s
                    try:
                        rc = proc.wait(timeout=0.5)
                        break
                    except subprocess.TimeoutExpired:
                        if deadline is not None and time.monotonic() > deadline:
                            raise TimeoutError(
                                f"flwr run {app} did not finish within {timeout:.0f}s; log in {log}"
                            ) from None
            finally:  # interrupted or timed out: stop flwr run, and let the reader finish before the log closes
                if proc.poll() is None:
                    stop_process_trees([proc.pid], grace=2)
                reader.join(timeout=10)
        run_id = found[0] if found else ""
        return RunResult(rc, run_id, self.status(run_id) if run_id else "not-started", log)

    def status(self, run_id: str) -> str:
        """The run's status as ``flwr ls`` reports it (``finished:completed``, ``finished:failed`` ...)."""
        try:
            r = subprocess.run(
                ["flwr", "ls", "local", "--run-id", str(run_id), "--format", "json"],
                env=self.env,
                cwd=self.cwd,
                capture_output=True,
                text=True,
                timeout=60,
            )
            runs = json.loads(r.stdout)["runs"]
            return str(runs[0]["status"])
        except (ValueError, KeyError, IndexError, TypeError, OSError, subprocess.SubprocessError):
            return "unknown"

    # --- stopping -----------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        """PIDs of the SuperLink processes this object's ``flwr run`` started (found by their Flower home)."""
        import psutil  # noqa: PLC0415

        home = str(self.home) + os.sep
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = p.info.get("cmdline") or []
            if any(part.endswith("flower-superlink") for part in cmdline) and any(
                part.startswith(home) for part in cmdline
            ):  # its --log-file / --database: our FLWR_HOME
                found.append(p.info["pid"])
        return found

    def stop(self) -> int:
        """Stop the SuperLink and every process it or ``flwr run`` started; remove temporary folders."""
        if self._stopped:
            return 0
        self._stopped = True
        blocked = {signal.SIGINT, signal.SIGTERM}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # a second Ctrl-C must not cut the stop short
        try:
            n = stop_process_trees([*self.pids(), *(p.pid for p in self._runs if p.poll() is None)])
            for p in self._runs:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
            superlink_log = self.home / "local-superlink" / "superlink.log"
            if self._own_home and superlink_log.exists() and self._log_dir is not None:
                shutil.copy(superlink_log, self._log_dir / "superlink.log")  # kept: flwr run's errors point to it
            shutil.rmtree(self.ray_tmp, ignore_errors=True)
            if self._own_home:
                shutil.rmtree(self.home, ignore_errors=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        return n

    def __enter__(self) -> LocalSuperLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
