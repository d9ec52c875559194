"""Run an app with uvicorn on a background thread: for tests, benchmarks and notebooks.

with ServerThread(app) as server:          # 127.0.0.1, a free port
    client = openai.OpenAI(base_url=server.url, api_key="EMPTY")
"""

from __future__ import annotations

import socket
import threading
import time

from lmdistill.errors import UserError


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to (host, port) (port 0: any free port), not yet listening; a busy port or an
    unknown host becomes a UserError."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535 (0: any free port), got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


def format_url(host: str, port: int) -> str:
    """The OpenAI base URL for a bound address: http://HOST:PORT/v1 (IPv6 hosts in brackets)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class ServerThread:
    """Serve `app` with uvicorn on a daemon thread; a context manager that starts and stops it.

    Args:
        app: an ASGI app (e.g. from `create_app`); its lifespan runs on start and on stop.
        host: the address to bind; loopback by default.
        port: the port; 0 picks a free one (read it back from `.port`).
        log_level: uvicorn's log level.
        startup_timeout: seconds to wait for the server to come up.
    """

    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_level: str = "warning",
        startup_timeout: float = 30.0,
    ):
        self.app = app
        self.requested_host = host
        self.requested_port = port
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self._sock: socket.socket | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._address: tuple[str, int] | None = None

    @property
    def host(self) -> str:
        if self._address is None:
            raise RuntimeError("the server is not started")
        return self._address[0]

    @property
    def port(self) -> int:
        if self._address is None:
            raise RuntimeError("the server is not started")
        return self._address[1]

    @property
    def base_url(self) -> str:
        """http://HOST:PORT (no /v1)."""
        return self.url[: -len("/v1")]

    @property
    def url(self) -> str:
        """The OpenAI base URL: http://HOST:PORT/v1."""
        return format_url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and bool(self._server.started)

    def start(self) -> ServerThread:
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("the server is already started")
        self._sock = bind_socket(self.requested_host, self.requested_port)
        self._address = tuple(self._sock.getsockname()[:2])  # type: ignore[assignment]
        config = uvicorn.Config(
            self.app, log_level=self.log_level, lifespan="on", timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="lmdistill-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start on {self.requested_host}:{self.requested_port}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask uvicorn to exit, wait for the thread (and the app's shutdown) to finish."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        self._thread = None
        self._server = None
        self._sock = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
