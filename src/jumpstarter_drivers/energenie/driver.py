"""The EnerGenie EG-PMS2-LAN power strip driver: one socket of the strip as a power switch.

With the default configuration an ``on()`` sends exactly two requests, ``POST /login.html``
(``pw=1``) and ``POST /`` (``cte1=1``); logging out and reading the state back are opt-in.

The strip is plain HTTP on the lab network, so its replies are not trusted: each request, from
connecting to the last byte of the reply, must finish within ``timeout`` seconds, a reply may
hold at most :data:`MAX_REPLY_BYTES`, and a reply that is neither the strip's control page, its
login page nor empty is refused as not coming from an EG-PMS2-LAN.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlencode

from ..core.driver import export
from ..core.errors import ConfigurationError, DriverError, DriverTimeout
from ..power.common import PowerReading
from ..power.driver import PowerInterface
from .common import (
    LOGIN_PATH,
    PASSWORD_FIELD,
    SOCKETS,
    STATE_PATH,
    SWITCH_PATH,
    StripUnreachable,
    base_url,
    is_login_page,
    parse_host,
    socket_states,
    switch_field,
)
from .lock import default_lock_dir, lock_path_for, strip_lock

T = TypeVar("T")

#: Upper bound of ``retries``: the strip is slow, so more would hold a test for minutes.
MAX_RETRIES = 10
#: First pause before a retry, in seconds; it doubles on each further retry, up to BACKOFF_MAX.
BACKOFF = 0.25
BACKOFF_MAX = 4.0
#: Largest reply taken from the strip; its pages are a few kB.
MAX_REPLY_BYTES = 64 << 10


class _Reply(NamedTuple):
    status: int
    reason: str
    text: str


class _NotTheStrip(Exception):
    """A reply no EG-PMS2-LAN gives (too large, not HTTP); never retried."""


@dataclass(kw_only=True)
class EnerGenie(PowerInterface):
    """One socket (``slot``) of an EnerGenie EG-PMS2-LAN network power strip, over its web UI.

    ``host`` may carry ``:port``; ``slot`` is 1..4 (a digit string such as ``"1"`` is taken too, as
    Jumpstarter's exporter files write it). ``timeout`` bounds each request, from connecting to the
    last byte of the reply; a request that fails on the network (refused, reset, timed out) is tried
    ``retries`` more times with a doubling pause. A refused password, or a reply that is not the
    strip's (see the module docstring), is never retried. ``logout`` logs out after each
    operation so the strip's one web session is free for others; ``verify`` reads the socket
    state back after switching. Operations on one strip are serialised across threads
    and processes with a lock file in ``lock_dir``, waited for at most ``lock_timeout`` seconds.
    """

    host: str
    #: The strip's web UI password (the factory setting is ``1``), posted to its login page.
    password: str = "1"
    slot: int | str = 1
    timeout: float = 5.0
    retries: int = 2
    logout: bool = False
    verify: bool = False
    lock_timeout: float = 60.0
    lock_dir: str | None = None

    _closing: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        slot = self.slot.strip() if isinstance(self.slot, str) else self.slot
        if isinstance(slot, str) and slot.isdigit():
            slot = int(slot)  # Jumpstarter's exporter files write slot: "1"
        if not isinstance(slot, int) or not 1 <= slot <= SOCKETS:
            raise ConfigurationError(
                f"{name}: config field 'slot' is {self.slot!r}; the strip has sockets 1..{SOCKETS}"
            )
        self.slot = self._slot = slot
        if self.timeout <= 0:
            raise ConfigurationError(f"{name}: config field 'timeout' is {self.timeout}; give seconds > 0")
        if not 0 <= self.retries <= MAX_RETRIES:
            raise ConfigurationError(
                f"{name}: config field 'retries' is {self.retries}; give a count from 0 to {MAX_RETRIES}"
            )
        if self.lock_timeout <= 0:
            raise ConfigurationError(
                f"{name}: config field 'lock_timeout' is {self.lock_timeout}; give seconds > 0"
            )
        self._address = parse_host(self.host, name)
        self._url = base_url(*self._address)
        lock_dir = Path(self.lock_dir) if self.lock_dir else default_lock_dir()
        self.lock_path = lock_path_for(*self._address, lock_dir)

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.energenie.client.EnerGenieClient"

    def close(self) -> None:
        """Stop waiting between retries; an operation in progress fails soon after."""
        self._closing.set()
        super().close()

    # exported --------------------------------------------------------------------------------

    @export
    def on(self) -> None:
        """Switch the slot's socket on."""
        self._switch(True)

    @export
    def off(self) -> None:
        """Switch the slot's socket off."""
        self._switch(False)

    @export
    def state(self) -> bool:
        """Whether the slot's socket is on, as the strip reports it."""
        with self._operation():
            return self._read_states()[self._slot - 1]

    unsupported = frozenset({"read"})

    @export
    def read(self) -> Generator[PowerReading, None, None]:
        """Not available: the EG-PMS2-LAN measures neither voltage nor current."""
        raise NotImplementedError(
            f"{self._where}: the EG-PMS2-LAN cannot measure voltage or current, so read() is not available; "
            "use `state` (state() from Python) to learn whether the socket is on"
        )
        yield  # a generator function, so read() is a streaming call as the power interface says

    # the protocol ----------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"EnerGenie {self.host} slot {self._slot}"

    def _switch(self, on: bool) -> None:
        with self._operation():
            reply = self._request("POST", SWITCH_PATH, {switch_field(self._slot): "1" if on else "0"})
            states = self._states(reply, f"POST {SWITCH_PATH}")
            if self.verify:
                self._compare(on, states if states is not None else self._read_states())
        self.logger.info("slot %d switched %s", self._slot, "on" if on else "off")

    def _compare(self, on: bool, states: list[bool]) -> None:
        if states[self._slot - 1] != on:
            raise DriverError(
                f"{self._where}: asked to switch {'on' if on else 'off'}, but the strip reports the socket "
                f"{'on' if states[self._slot - 1] else 'off'} (sockstates {[int(s) for s in states]}); "
                "check the strip and its wiring"
            )

    def _read_states(self) -> list[bool]:
        """The sockets' states from the control page."""
        states = self._states(self._request("GET", STATE_PATH), f"GET {STATE_PATH}")
        if states is None:
            raise DriverError(
                f"{self._where}: GET {STATE_PATH} has no 'sockstates' array; is {self._url} an EG-PMS2-LAN?"
            )
        return states

    def _states(self, reply: _Reply, what: str) -> list[bool] | None:
        """The states in ``reply`` if it has them; an error if it is the login page (session gone)."""
        if is_login_page(reply.text):
            raise DriverError(
                f"{self._where}: {what} answered the login page: the web session ended (another client "
                "logged in, or it timed out), so the request may not have taken effect"
            )
        return self._control_states(reply, what)

    def _control_states(self, reply: _Reply, what: str) -> list[bool] | None:
        """The states of a control page; ``None`` for an empty reply; an error for any other page."""
        states = socket_states(reply.text)
        if states is None and reply.text.strip():
            raise DriverError(
                f"{self._where}: {what} answered {len(reply.text)} characters that are neither the EG-PMS2-LAN "
                f"control page nor its login page (starting {reply.text[:40]!r}); is {self._url} the strip?"
            )
        return states

    @contextmanager
    def _operation(self) -> Iterator[None]:
        """Lock the strip and log in; log out afterwards when configured."""
        with strip_lock(self.lock_path, self.lock_timeout, self._where):
            done = False
            try:
                self._login()
                yield
                done = True
            finally:
                if self.logout:
                    self._logout(raise_errors=done)

    def _login(self) -> None:
        what = f"POST {LOGIN_PATH}"
        reply = self._request("POST", LOGIN_PATH, {PASSWORD_FIELD: self.password})
        if is_login_page(reply.text):
            raise DriverError(
                f"{self._where}: the strip refused the login: the password was refused (check 'password' in "
                "the exporter config; the factory default is 1), or another client holds the strip's only "
                "web session (log it out, or wait for its session to time out)"
            )
        self._control_states(reply, what)

    def _logout(self, raise_errors: bool) -> None:
        try:
            self._request("GET", LOGIN_PATH)
        except DriverError as exc:
            if raise_errors:
                raise DriverError(f"{exc}; the strip may stay locked to this host until its session times out") from exc
            self.logger.warning("logging out after a failure failed too: %s", exc)

    def _request(self, method: str, path: str, form: dict[str, str] | None = None) -> _Reply:
        """One request, retried on network failures; any reply but 2xx is an error."""
        what = f"{method} {path}"
        reply = self._retrying(what, lambda: self._exchange(method, path, form))
        if not 200 <= reply.status < 300:
            raise DriverError(
                f"{self._where}: {what} failed with HTTP {reply.status} {reply.reason}; "
                f"is {self._url} an EG-PMS2-LAN web UI?"
            )
        self.logger.debug("%s -> HTTP %d", what, reply.status)
        return reply

    def _exchange(self, method: str, path: str, form: dict[str, str] | None) -> _Reply:
        """Send one request and read its whole reply, within ``timeout`` and :data:`MAX_REPLY_BYTES`."""
        connection = _StripConnection(*self._address, time.monotonic() + self.timeout)
        try:
            headers = {} if form is None else {"Content-Type": "application/x-www-form-urlencoded"}
            try:
                connection.request(method, path, body=None if form is None else urlencode(form), headers=headers)
            except BrokenPipeError:
                self.logger.debug("%s %s: the strip closed before taking the whole request", method, path)
                # It may have answered already (or closed unanswered): what it sent says which.
            response = connection.getresponse()
            return _Reply(response.status, response.reason, response.read().decode("utf-8", "replace"))
        finally:
            connection.close()

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()``, tried again up to ``retries`` times after a network failure."""
        tries = 1
        while True:
            try:
                return attempt()
            except OSError as exc:
                if tries > self.retries or self._closing.is_set():
                    raise self._network_error(what, exc, tries) from exc
                pause = min(BACKOFF * 2 ** (tries - 1), BACKOFF_MAX)
                self.logger.warning(
                    "%s failed (%s); retry %d of %d in %.2f s", what, _root_cause(exc), tries, self.retries, pause
                )
                self._closing.wait(pause)
                tries += 1
            except (http.client.HTTPException, _NotTheStrip) as exc:
                raise DriverError(
                    f"{self._where}: {what} got a reply no EG-PMS2-LAN gives ({exc or type(exc).__name__}); "
                    f"is {self._url} the strip?"
                ) from exc

    def _network_error(self, what: str, exc: Exception, tries: int) -> DriverError:
        attempts = f"{tries} attempt{'s' if tries > 1 else ''}"
        if isinstance(exc, TimeoutError):
            return DriverTimeout(
                f"{self._where}: {what} got no answer within timeout={self.timeout:g} s ({attempts}); is the strip "
                f"at {self._url} powered and on this network? raise 'timeout' if it is just slow"
            )
        return StripUnreachable(
            f"{self._where}: cannot reach the strip at {self._url} for {what} ({attempts}): "
            f"{_root_cause(exc)}; check 'host' (and its :port), and that the strip is powered and on the network"
        )


class _StripConnection(http.client.HTTPConnection):
    """An HTTP connection whose whole exchange ends by ``deadline`` and reads at most MAX_REPLY_BYTES."""

    def __init__(self, host: str, port: int, deadline: float) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self.deadline = deadline

    def connect(self) -> None:
        super().connect()
        self.sock = _BoundedSocket(self.sock, self.deadline)


class _BoundedSocket:
    """What :mod:`http.client` uses of a socket (``sendall``, ``makefile``, ``close``), bounded.

    As with a real socket, the connection stays open until it and every reader made of it are closed.
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.budget = MAX_REPLY_BYTES
        self.readers = 0
        self.closed = False

    def _time_left(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the strip did not complete its reply in time")
        self.sock.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._time_left()
        self.sock.sendall(data)

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        self.readers += 1
        return io.BufferedReader(_BoundedReader(self))

    def close(self) -> None:
        self.closed = True
        self._release()

    def _release(self) -> None:
        if self.closed and not self.readers:
            self.sock.close()


class _BoundedReader(io.RawIOBase):
    def __init__(self, owner: _BoundedSocket) -> None:
        self.owner = owner

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.owner.readers -= 1
            self.owner._release()
        super().close()

    def readinto(self, buffer: Any) -> int:
        owner = self.owner
        if owner.budget <= 0:
            raise _NotTheStrip(f"a reply larger than {MAX_REPLY_BYTES} bytes")
        owner._time_left()
        count = owner.sock.recv_into(memoryview(buffer)[: owner.budget])
        owner.budget -= count
        return count


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a network error (``[Errno 111] Connection refused``, say)."""
    inner = exc
    while (deeper := inner.__cause__ or inner.__context__) is not None:
        inner = deeper
    return str(inner) or type(inner).__name__
