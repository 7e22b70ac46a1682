"""Run a Starlette app with uvicorn in a background thread (tests, benchmarks, an embedded witness)."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ServerThread:
    """``with ServerThread(app) as url:`` serves ``app`` on 127.0.0.1 and stops it on exit.

    Parameters
    ----------
    app : ASGI application
    host : str
        Address to bind (loopback by default).
    port : int, optional
        Port (a free one by default).
    start_timeout : float
        Seconds to wait for the server to accept connections.
    """

    def __init__(
        self, app: Starlette, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 10.0
    ) -> None:
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        self.config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", lifespan="off", access_log=False
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
