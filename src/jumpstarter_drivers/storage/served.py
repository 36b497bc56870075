"""A storage directory served to the board: the common part of the TFTP and HTTP drivers.

A :class:`ServedDirectory` driver serves ``root_dir`` on ``host``:``port`` with a
:class:`DirectoryServer` (the protocol part, which works without a session) and keeps a
``storage`` child on the same root, so tests and other drivers put files where the server finds
them. A protocol family subclasses both and names itself in messages:

>>> import tempfile
>>> from jumpstarter_drivers.tftp import Tftp
>>> tftp = Tftp(root_dir=tempfile.mkdtemp())
>>> tftp.server.root == tftp.children["storage"].root
True
>>> tftp.start()
>>> tftp.get_port() > 0
True
>>> tftp.close()
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..core.driver import Driver, export
from ..core.errors import ConfigurationError, DriverError
from .driver import Storage, resolve_inside


class PeerQuota:
    """What peers hold of a server (transfers, connections): ``limit`` at once, ``per_host`` from one address.

    >>> quota = PeerQuota("TFTP", limit=3, per_host=2, unit="transfers", log=logging.getLogger("doc"))
    >>> quota.admit("a", "10.0.0.1"), quota.admit("b", "10.0.0.1")
    (None, None)
    >>> quota.admit("c", "10.0.0.1")
    '2 transfers from 10.0.0.1 in progress (max_transfers_per_host)'
    >>> quota.release("a"); quota.admit("c", "10.0.0.1") is None, len(quota), quota.refused
    (True, 2, 1)
    """

    def __init__(
        self, protocol: str, limit: int, per_host: int, unit: str, log: logging.Logger | logging.LoggerAdapter
    ) -> None:
        self.protocol, self.limit, self.per_host, self.unit, self.log = protocol, limit, per_host, unit, log
        self.holders: dict[object, str] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._full = False
        #: Requests refused because a bound was reached.
        self.refused = 0

    def __len__(self) -> int:
        return len(self.holders)

    def admit(self, holder: object, host: str) -> str | None:
        """Count ``holder`` as held by ``host``; ``None``, or why not (the first refusal in a row is a warning)."""
        with self._lock:
            total, mine = len(self.holders), self._counts.get(host, 0)
            if total < self.limit and mine < self.per_host:
                self.holders[holder] = host
                self._counts[host] = mine + 1
                self._full = False
                return None
            self.refused += 1
            first, self._full = not self._full, True
        if total >= self.limit:
            reason = f"{total} {self.unit} in progress (max_{self.unit})"
        else:
            reason = f"{mine} {self.unit} from {host} in progress (max_{self.unit}_per_host)"
        (self.log.warning if first else self.log.debug)(
            "%s: refused a request from %s: %s", self.protocol, host, reason
        )
        return reason

    def release(self, holder: object) -> None:
        """Forget ``holder`` (nothing happens for one that was never admitted)."""
        with self._lock:
            host = self.holders.pop(holder, None)
            if host is None:
                return
            if self._counts[host] > 1:
                self._counts[host] -= 1
            else:
                del self._counts[host]

    def snapshot(self) -> list[Any]:
        """The holders now."""
        with self._lock:
            return list(self.holders)


def is_servable(path: Path) -> bool:
    """Whether ``path`` (a name a peer asked for, resolved) is a regular file; a name the system refuses
    (longer than a file name may be, say) is none, as a missing one."""
    try:
        return path.is_file()
    except OSError:
        return False


@dataclass
class DirectoryServer(ABC):
    """Serves files under ``root`` on ``host``:``port`` (0 picks a free port) from threads of its own.

    ``resolve`` maps a requested name to a path inside ``root`` or raises ``ValueError``
    (default: :func:`~jumpstarter_drivers.storage.driver.resolve_inside`); ``log`` defaults to
    the logger of the subclass's module.
    """

    root: str | os.PathLike
    host: str = "127.0.0.1"
    port: int = 0
    resolve: Callable[[str], Path] | None = None
    log: logging.Logger | logging.LoggerAdapter | None = None

    def __post_init__(self) -> None:
        if self.log is None:
            self.log = logging.getLogger(type(self).__module__)
        if self.resolve is None:
            root = Path(os.path.realpath(self.root))
            self.resolve = lambda name: resolve_inside(root, name, self.log)

    @property
    @abstractmethod
    def running(self) -> bool:
        """Whether the server is serving."""

    @property
    @abstractmethod
    def bound_port(self) -> int:
        """The port the server listens on (0 when stopped)."""

    @abstractmethod
    def start(self) -> None:
        """Bind and start serving; ``OSError`` when the address cannot be bound."""

    @abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and end the transfers in progress, waiting at most ``timeout`` seconds."""


@dataclass(kw_only=True)
class ServedDirectory(Driver):
    """Serves ``root_dir`` on ``host``:``port`` (port 0 picks a free one) between :meth:`start` and :meth:`stop`.

    The ``storage`` child (created on the same root when not given) puts files where the server
    finds them. Subclasses build their server in :meth:`make_server` and set ``protocol`` and
    ``transport``, which messages name.
    """

    root_dir: str
    host: str = "127.0.0.1"
    port: int = 0

    #: The protocol and the socket type, as messages name them (``"TFTP"``, ``"udp"``).
    protocol: ClassVar[str]
    transport: ClassVar[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(
                f"{type(self).__name__}: port {self.port} is not in 0..65535 (0 picks a free port)"
            )
        if self.host:  # '' is every address, as for socket.bind
            try:
                socket.getaddrinfo(self.host, self.port, proto=socket.IPPROTO_UDP if self.transport == "udp" else 0)
            except (OSError, UnicodeError) as exc:
                raise ConfigurationError(
                    f"{type(self).__name__}: host {self.host!r} does not resolve ({getattr(exc, 'strerror', None) or exc}); "
                    "give an address of this machine (or 0.0.0.0 for all)"
                ) from None
        self.storage = self._storage_child()
        self.server = self.make_server()

    def _storage_child(self) -> Storage:
        """The configured ``storage`` child (checked: a Storage on ``root_dir``), or a new one."""
        storage = self.children.get("storage")
        name = type(self).__name__
        if storage is None:
            storage = self.children["storage"] = Storage(root_dir=self.root_dir)
        elif not isinstance(storage, Storage):
            raise ConfigurationError(f"{name}: child 'storage' must be Storage, got {type(storage).__name__}")
        elif storage.root != Storage.real_root(self.root_dir):
            raise ConfigurationError(
                f"{name}: child 'storage' is rooted at {storage.root}, not at root_dir {self.root_dir!r}; "
                "give both the same directory"
            )
        return storage

    def check_bounds(self, *fields: str) -> None:
        """A :class:`ConfigurationError` naming the first of ``fields`` (a server's limits) that is not > 0."""
        for name in fields:
            if getattr(self, name) <= 0:
                raise ConfigurationError(
                    f"{type(self).__name__}: config field {name!r} is {getattr(self, name)}; give a bound > 0"
                )

    @abstractmethod
    def make_server(self) -> DirectoryServer:
        """The (stopped) server of ``self.storage.root``, resolving names with ``self.storage.resolve``."""

    @export
    def start(self) -> None:
        """Start serving; an error names the address when it cannot be bound."""
        if self.server.running:
            self.logger.info("%s server already running on %s:%d", self.protocol, self.host, self.server.bound_port)
            return
        try:
            self.server.start()
        except OSError as exc:
            raise DriverError(
                f"{self.protocol} server cannot bind {self.host}:{self.port}/{self.transport}: "
                f"{exc.strerror or exc}; free that port or configure another (0 picks a free one)"
            ) from None

    @export
    def stop(self) -> None:
        """Stop serving; transfers in progress are cut (waiting at most a few seconds for them)."""
        self.server.stop()

    @export
    def get_host(self) -> str:
        """The address the server listens on."""
        return self.host

    @export
    def get_port(self) -> int:
        """The port the server is bound to (the configured one before :meth:`start`)."""
        return self.server.bound_port or self.port

    def close(self) -> None:
        """Stop the server, then close the children."""
        try:
            self.server.stop()
        finally:
            super().close()
