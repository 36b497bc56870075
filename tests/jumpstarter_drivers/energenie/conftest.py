"""Fixtures for the EnerGenie tests: simulators, a private lock dir, a browser from another IP."""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from tests.helpers.net import free_port

from jumpstarter_drivers.energenie.common import is_login_page, socket_states
from jumpstarter_drivers.energenie.simulator import EnerGenieSimulator


@pytest.fixture
def lock_dir(tmp_path: Path) -> str:
    """A lock dir of this test's own, so tests never wait on each other's strips."""
    return str(tmp_path / "locks")


@pytest.fixture
def simulator() -> Iterator[Callable[..., EnerGenieSimulator]]:
    """Factory of started simulators (keyword arguments as for EnerGenieSimulator); all closed at the end."""
    started: list[EnerGenieSimulator] = []

    def start(**kwargs: object) -> EnerGenieSimulator:
        sim = EnerGenieSimulator(**kwargs).start()  # type: ignore[arg-type]
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.close()


class Browser:
    """The strip's web UI used from another loopback IP (127.0.0.2), as a person at a browser would."""

    def __init__(self, sim: EnerGenieSimulator, source_ip: str) -> None:
        self.sim = sim
        self.source_ip = source_ip

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        connection = http.client.HTTPConnection(
            self.sim.host, self.sim.port, timeout=5, source_address=(self.source_ip, 0)
        )
        try:
            body = urlencode(form) if form is not None else None
            headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
            connection.request(method, path, body=body, headers=headers)
            reply = connection.getresponse()
            return reply.status, reply.read().decode()
        finally:
            connection.close()

    def login(self, password: str = "1") -> bool:
        """Whether the strip let us in (its control page came back)."""
        status, page = self.request("POST", "/login.html", {"pw": password})
        assert status == 200
        return not is_login_page(page) and socket_states(page) is not None

    def states(self) -> list[bool] | None:
        return socket_states(self.request("GET", "/energenie.html")[1])

    def logout(self) -> None:
        self.request("GET", "/login.html")


@pytest.fixture
def browser() -> Callable[[EnerGenieSimulator], Browser]:
    """``browser(sim)``: the simulator's web UI seen from 127.0.0.2."""

    def make(sim: EnerGenieSimulator, source_ip: str = "127.0.0.2") -> Browser:
        return Browser(sim, source_ip)

    return make


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    return free_port()


class RawStrip:
    """A TCP server on 127.0.0.1 that reads each request's head and answers with ``reply(connection)``.

    ``reply`` returns how many bytes it sent; :attr:`sent` collects them per connection.
    """

    def __init__(self, reply: Callable[[socket.socket], int]) -> None:
        self.reply = reply
        self.sent: list[int] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="raw-strip", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(10)
                self._read_request(connection)
                self.sent.append(self.reply(connection))

    @staticmethod
    def _read_request(connection: socket.socket) -> None:
        """Read the request's head and its Content-Length body, so nothing unread is left behind."""
        data = b""
        while b"\r\n\r\n" not in data and (chunk := connection.recv(4096)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(match.group(1)) if match else 0
        while len(body) < length and (chunk := connection.recv(4096)):
            body += chunk

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        self.listener.close()


@pytest.fixture
def raw_strip() -> Iterator[Callable[[Callable[[socket.socket], int]], RawStrip]]:
    """``raw_strip(reply)``: a started :class:`RawStrip`; closed at the end."""
    started: list[RawStrip] = []

    def start(reply: Callable[[socket.socket], int]) -> RawStrip:
        started.append(RawStrip(reply))
        return started[-1]

    yield start
    for strip in started:
        strip.close()
