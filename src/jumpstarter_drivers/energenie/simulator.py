"""A simulator of the EG-PMS2-LAN web UI: a real HTTP server to try the driver without the strip.

It behaves as the strip does towards its clients: one web session bound to the client's IP
(another IP sees the login page until that session logs out or times out), the login page
again on a wrong password (HTTP 200), ``var sockstates = [a,b,c,d];`` and a ``Log Out`` link
on the control page, ``POST /`` with ``cte<N>=`` fields (empty = unchanged), ``GET
/energenie.html`` to read, ``GET /login.html`` to log out, one request at a time.

For tests it records every exchange and how many requests were in flight at once, and can
inject faults: a ``delay`` before each reply, the first ``drop_connections`` connections
closed unanswered, and ``ignore_switch`` (switch requests change nothing).

>>> import requests
>>> with EnerGenieSimulator() as strip:
...     http = requests.Session()
...     _ = http.post(strip.url + "/login.html", data={"pw": "1"}, timeout=5)
...     _ = http.post(strip.url + "/", data={"cte2": "1"}, timeout=5)
...     http.close()
...     strip.states
[False, True, False, False]

Standalone: ``python -m jumpstarter_drivers.energenie.simulator --port 8080 --password 1``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from urllib.parse import parse_qs

from .common import (
    LOGIN_PATH,
    LOGIN_TITLE_MARK,
    PASSWORD_FIELD,
    SOCKETS,
    STATE_PATH,
    SWITCH_PATH,
    base_url,
    switch_field,
)

logger = logging.getLogger(__name__)

#: Seconds an idle web session stays bound to its client's IP (the strip's own is not published).
DEFAULT_SESSION_TIMEOUT = 300.0
#: Largest request body the simulator reads; the strip's forms are a few dozen bytes.
MAX_BODY = 4096


@dataclass(frozen=True)
class Exchange:
    """One request the simulator answered."""

    client: str
    method: str
    path: str
    form: dict[str, str]
    status: int


class EnerGenieSimulator:
    """An EG-PMS2-LAN web UI on ``host:port`` (``port=0`` picks a free one); a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        password: str = "1",
        states: Sequence[bool] = (False,) * SOCKETS,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        delay: float = 0.0,
        drop_connections: int = 0,
        ignore_switch: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(states) != SOCKETS:
            raise ValueError(f"states needs {SOCKETS} values, got {len(states)}")
        self.password = password
        self.session_timeout = session_timeout
        self.delay = delay
        self.ignore_switch = ignore_switch
        self.clock = clock
        self.exchanges: list[Exchange] = []
        self.max_concurrent = 0
        self.dropped = 0
        self._states = [bool(s) for s in states]
        self._drop_left = drop_connections
        self._holder: str | None = None
        self._last_seen = 0.0
        self._active = 0
        self._mutex = threading.Lock()  # guards the counters and the record
        self._device = threading.Lock()  # the strip answers one request at a time
        self._stopping = threading.Event()
        self._server = _Server((host, port), _Handler, self)
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        """``host:port``, as the driver's ``host`` setting takes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return base_url(self.host, self.port)

    def start(self) -> EnerGenieSimulator:
        """Serve in a background thread."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="energenie-simulator", daemon=True
        )
        self._thread.start()
        logger.info("EnerGenie EG-PMS2-LAN simulator listening on %s", self.url)
        return self

    def close(self) -> None:
        """Stop serving; waits for requests in progress (a pending ``delay`` is cut short)."""
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> EnerGenieSimulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # the device's state ----------------------------------------------------------------------

    @property
    def states(self) -> list[bool]:
        """The sockets' states, socket 1 first."""
        with self._device:
            return list(self._states)

    @property
    def session_holder(self) -> str | None:
        """The IP holding the web session, or ``None``."""
        with self._device:
            self._expire()
            return self._holder

    def _expire(self) -> None:
        if self._holder is not None and self.clock() - self._last_seen > self.session_timeout:
            logger.info("web session of %s timed out", self._holder)
            self._holder = None

    # answering -------------------------------------------------------------------------------

    def _take_connection(self) -> bool:
        """Whether to answer a new connection (``False`` drops it: fault injection)."""
        with self._mutex:
            if self._drop_left > 0:
                self._drop_left -= 1
                self.dropped += 1
                return False
            return True

    def _handle(self, request: _Handler) -> None:
        with self._mutex:
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
        in_flight = True
        try:
            with self._device:
                if self.delay and self._stopping.wait(self.delay):
                    return  # shutting down: close without a reply
                client = request.client_address[0]
                path = request.path.split("?", 1)[0]
                form = request.form()
                status, page = self._answer(client, request.command, path, form)
                with self._mutex:
                    self.exchanges.append(Exchange(client, request.command, path, form, status))
                    # The exchange ends before the reply leaves: a client may send its next request
                    # as soon as it has the reply, and that must not count as an overlap.
                    self._active -= 1
                    in_flight = False
            request.reply(status, page)
        finally:
            if in_flight:
                with self._mutex:
                    self._active -= 1

    def _answer(self, client: str, method: str, path: str, form: dict[str, str]) -> tuple[int, str]:
        """Status and page for one request; the caller holds the device lock."""
        self._expire()
        mine = self._holder == client
        if mine:
            self._last_seen = self.clock()
        if path == LOGIN_PATH and method == "GET":
            if mine:
                self._holder = None
                logger.info("%s logged out", client)
            return 200, _login_page()
        if path == LOGIN_PATH and method == "POST":
            if self._holder is not None and not mine:
                logger.info("%s locked out: the web session belongs to %s", client, self._holder)
                return 200, _login_page()
            if form.get(PASSWORD_FIELD) != self.password:
                logger.info("%s gave a wrong password", client)
                return 200, _login_page()
            self._holder, self._last_seen = client, self.clock()
            logger.info("%s logged in", client)
            return 200, _control_page(self._states)
        if path not in (SWITCH_PATH, STATE_PATH) or method not in ("GET", "POST"):
            return 404, _not_found_page()
        if not mine:
            return 200, _login_page()
        if method == "POST":
            self._switch(client, form)
        return 200, _control_page(self._states)

    def _switch(self, client: str, form: dict[str, str]) -> None:
        for index in range(SOCKETS):
            value = form.get(switch_field(index + 1), "")
            if value in ("0", "1") and not self.ignore_switch:
                self._states[index] = value == "1"
        logger.info("%s switched: sockstates %s", client, [int(s) for s in self._states])


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for every handler thread
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], simulator: EnerGenieSimulator):
        self.simulator = simulator
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def verify_request(self, request: object, client_address: object) -> bool:
        return self.simulator._take_connection()

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            logger.info("%s went away before its reply: %s", client_address[0], exc)
        else:
            logger.error("answering %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a client that stops sending mid-request frees its thread after this
    server_version = "EG-PMS2-LAN-simulator"

    def do_GET(self) -> None:
        self.server.simulator._handle(self)

    def do_POST(self) -> None:
        self.server.simulator._handle(self)

    def form(self) -> dict[str, str]:
        """The url-encoded form of a POST (last value of each field)."""
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            return {}
        body = self.rfile.read(length).decode("latin-1")
        return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def reply(self, status: int, page: str) -> None:
        body = page.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.client_address[0], format % args)


def _login_page() -> str:
    return (
        f"<html><head><title>{LOGIN_TITLE_MARK} login</title></head><body>\n"
        f'<form method="post" action="{LOGIN_PATH}">Password: <input type="password" name="{PASSWORD_FIELD}">'
        '<input type="submit" value="Enter"></form>\n</body></html>\n'
    )


def _control_page(states: Sequence[bool]) -> str:
    rows = "".join(
        f'<tr><td>Socket {n}</td><td id="s{n}">{"ON" if on else "OFF"}</td>'
        f'<td><button name="{switch_field(n)}" value="{0 if on else 1}">{"Off" if on else "On"}</button></td></tr>\n'
        for n, on in enumerate(states, start=1)
    )
    return (
        "<html><head><title>EnerGenie EG-PMS2-LAN</title>\n"
        f"<script>var sockstates = [{','.join(str(int(s)) for s in states)}];</script></head><body>\n"
        f'<form method="post" action="{SWITCH_PATH}"><table>\n{rows}</table></form>\n'
        f'<a href="{LOGIN_PATH}">Log Out</a>\n</body></html>\n'
    )


def _not_found_page() -> str:
    return "<html><head><title>404</title></head><body>Not found</body></html>\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m jumpstarter_drivers.energenie.simulator",
        description="Simulate an EnerGenie EG-PMS2-LAN power strip's web UI.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on, 0 for any free one (default 8080)")
    parser.add_argument("--password", default="1", help="the strip's password (default 1, as from the factory)")
    parser.add_argument(
        "--session-timeout", type=float, default=DEFAULT_SESSION_TIMEOUT,
        help=f"seconds an idle web session keeps others out (default {DEFAULT_SESSION_TIMEOUT:g})",
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before each reply (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        simulator = EnerGenieSimulator(
            args.host, args.port, password=args.password, session_timeout=args.session_timeout, delay=args.delay
        )
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s; pick another --port or --host", args.host, args.port, exc.strerror)
        return 2
    with simulator:
        logger.info("try it: EnerGenie(host=%r, password=%r); Ctrl-C stops", simulator.address, args.password)
        stop.wait()
    logger.info("simulator stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
