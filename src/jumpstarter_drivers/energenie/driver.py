"""The EnerGenie EG-PMS2-LAN power strip driver: one socket of the strip as a power switch.

With the default configuration an ``on()`` sends exactly two requests, ``POST /login.html``
(``pw=1``) and ``POST /`` (``cte1=1``); logging out and reading the state back are opt-in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import requests

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


@dataclass(kw_only=True)
class EnerGenie(PowerInterface):
    """One socket (``slot``) of an EnerGenie EG-PMS2-LAN network power strip, over its web UI.

    ``host`` may carry ``:port``; ``slot`` is 1..4 (a digit string such as ``"1"`` is taken too, as
    Jumpstarter's exporter files write it). ``timeout`` bounds connecting and each read of every request;
    a request that fails on the network (refused, reset, timed out) is tried ``retries`` more
    times with a doubling pause. A refused password is never retried. ``logout`` logs out after
    each operation so the strip's one web session is free for others; ``verify`` reads the
    socket state back after switching. Operations on one strip are serialised across threads
    and processes with a lock file in ``lock_dir``, waited for at most ``lock_timeout`` seconds.
    """

    host: str
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
        with self._operation() as http:
            return self._read_states(http)[self._slot - 1]

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
        with self._operation() as http:
            reply = self._request(http, "POST", SWITCH_PATH, {switch_field(self._slot): "1" if on else "0"})
            states = self._states(reply, f"POST {SWITCH_PATH}")
            if self.verify:
                self._compare(on, states if states is not None else self._read_states(http))
        self.logger.info("slot %d switched %s", self._slot, "on" if on else "off")

    def _compare(self, on: bool, states: list[bool]) -> None:
        if states[self._slot - 1] != on:
            raise DriverError(
                f"{self._where}: asked to switch {'on' if on else 'off'}, but the strip reports the socket "
                f"{'on' if states[self._slot - 1] else 'off'} (sockstates {[int(s) for s in states]}); "
                "check the strip and its wiring"
            )

    def _read_states(self, http: requests.Session) -> list[bool]:
        """The sockets' states from the control page."""
        states = self._states(self._request(http, "GET", STATE_PATH), f"GET {STATE_PATH}")
        if states is None:
            raise DriverError(
                f"{self._where}: GET {STATE_PATH} has no 'sockstates' array; is {self._url} an EG-PMS2-LAN?"
            )
        return states

    def _states(self, reply: requests.Response, what: str) -> list[bool] | None:
        """The states in ``reply`` if it has them; an error if it is the login page (session gone)."""
        if is_login_page(reply.text):
            raise DriverError(
                f"{self._where}: {what} answered the login page: the web session ended (another client "
                "logged in, or it timed out), so the request may not have taken effect"
            )
        return socket_states(reply.text)

    @contextmanager
    def _operation(self) -> Iterator[requests.Session]:
        """Lock the strip, log in, yield the HTTP session; log out afterwards when configured."""
        with strip_lock(self.lock_path, self.lock_timeout, self._where), requests.Session() as http:
            http.trust_env = False  # a LAN device: never through a proxy from the environment
            done = False
            try:
                self._login(http)
                yield http
                done = True
            finally:
                if self.logout:
                    self._logout(http, raise_errors=done)

    def _login(self, http: requests.Session) -> None:
        reply = self._request(http, "POST", LOGIN_PATH, {PASSWORD_FIELD: self.password})
        if is_login_page(reply.text):
            raise DriverError(
                f"{self._where}: the strip refused the login: the password was refused (check 'password' in "
                "the exporter config; the factory default is 1), or another client holds the strip's only "
                "web session (log it out, or wait for its session to time out)"
            )

    def _logout(self, http: requests.Session, raise_errors: bool) -> None:
        try:
            self._request(http, "GET", LOGIN_PATH)
        except DriverError as exc:
            if raise_errors:
                raise DriverError(f"{exc}; the strip may stay locked to this host until its session times out") from exc
            self.logger.warning("logging out after a failure failed too: %s", exc)

    def _request(
        self, http: requests.Session, method: str, path: str, form: dict[str, str] | None = None
    ) -> requests.Response:
        """One request, retried on network failures; any reply but 2xx is an error."""
        what = f"{method} {path}"
        reply = self._retrying(what, lambda: http.request(
            method, self._url + path, data=form, timeout=(self.timeout, self.timeout), allow_redirects=False
        ))
        if not 200 <= reply.status_code < 300:
            raise DriverError(
                f"{self._where}: {what} failed with HTTP {reply.status_code} {reply.reason}; "
                f"is {self._url} an EG-PMS2-LAN web UI?"
            )
        self.logger.debug("%s -> HTTP %d", what, reply.status_code)
        return reply

    def _retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """``attempt()``, tried again up to ``retries`` times after a network failure."""
        tries = 1
        while True:
            try:
                return attempt()
            except (requests.ConnectionError, requests.Timeout) as exc:
                if tries > self.retries or self._closing.is_set():
                    raise self._network_error(what, exc, tries) from exc
                pause = min(BACKOFF * 2 ** (tries - 1), BACKOFF_MAX)
                self.logger.warning(
                    "%s failed (%s); retry %d of %d in %.2f s", what, _root_cause(exc), tries, self.retries, pause
                )
                self._closing.wait(pause)
                tries += 1
            except requests.RequestException as exc:
                raise DriverError(f"{self._where}: {what} failed: {exc}") from exc

    def _network_error(self, what: str, exc: Exception, tries: int) -> DriverError:
        attempts = f"{tries} attempt{'s' if tries > 1 else ''}"
        if isinstance(exc, requests.Timeout):
            return DriverTimeout(
                f"{self._where}: {what} got no answer within timeout={self.timeout:g} s ({attempts}); is the strip "
                f"at {self._url} powered and on this network? raise 'timeout' if it is just slow"
            )
        return StripUnreachable(
            f"{self._where}: cannot reach the strip at {self._url} for {what} ({attempts}): "
            f"{_root_cause(exc)}; check 'host' (and its :port), and that the strip is powered and on the network"
        )


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error (``[Errno 111] Connection refused``, say)."""
    inner = exc
    while (deeper := inner.__cause__ or inner.__context__) is not None:
        inner = deeper
    return str(inner) or type(inner).__name__
