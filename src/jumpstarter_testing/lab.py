"""The lab a test run uses: a remote exporter, or a session started here from an exporter file.

Works without pytest; the plugin's ``session`` fixture is a :class:`Lab`::

    with Lab.start_local(VIRTUAL_LAB) as lab:
        lab.client.power.on()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from jumpstarter_drivers.composite.common import REF_LABEL
from jumpstarter_drivers.core.errors import ConfigurationError

if TYPE_CHECKING:
    from jumpstarter_drivers.core.client import AllowList, DriverClient
    from jumpstarter_drivers.core.config import DriverRegistry
    from jumpstarter_drivers.core.session import Session
    from jumpstarter_drivers.core.status import ExporterStatus

logger = logging.getLogger(__name__)

#: The lab used when neither a host nor an exporter file is given.
VIRTUAL_LAB = Path(__file__).with_name("virtual_lab.yaml")

#: A node is a flasher when its client class (or a base class of it) is named ``*FlasherClient``.
FLASHER_SUFFIX = "FlasherClient"


class Lab:
    """A connected lab: its ``address``, root ``client``, and for a local lab the hosting ``local`` session.

    Build one with :meth:`connect_remote` or :meth:`start_local`; close it when done (or use ``with``).
    """

    def __init__(
        self,
        address: str,
        allow: AllowList,
        local: Session | None = None,
        source: str | None = None,
        connection: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.allow = allow
        #: Connection options given to :func:`~jumpstarter_drivers.core.access.connect` (ca, passphrase_file, ...).
        self.connection = connection or {}
        self.local = local
        self.source = source
        self._stack = contextlib.ExitStack()
        self.client: DriverClient = None  # type: ignore[assignment]  # set by the constructors

    # construction ------------------------------------------------------------------------------

    @classmethod
    def connect_remote(cls, address: str, allow: str | None = None, timeout: float = 5.0, **connection: Any) -> Lab:
        """Connect to the exporter at ``address`` (unix socket path or ``host:port``); ``connection``
        holds :func:`~jumpstarter_drivers.core.access.connect`'s options (``ca``, ``passphrase_file``, ...)."""
        from jumpstarter_drivers.core.client import AllowList

        lab = cls(address, AllowList.parse(allow), connection=connection)
        with contextlib.ExitStack() as failing:
            failing.callback(lab.close)
            lab.client = lab._stack.enter_context(lab._connect(timeout))
            failing.pop_all()
        return lab

    @classmethod
    def start_local(
        cls, exporter: str | os.PathLike, allow: str | None = None, registry: DriverRegistry | None = None
    ) -> Lab:
        """Host the tree of an exporter file in this process, served on a private unix socket.

        Without ``allow`` every client class of the tree may load: the file chose the drivers.
        """
        from jumpstarter_drivers.core import config
        from jumpstarter_drivers.core.client import AllowList

        allowed = AllowList(unsafe=True) if allow is None else AllowList.parse(allow)  # before drivers exist
        loaded = config.load(exporter, registry=registry)
        lab = cls("", allowed, source=loaded.source)
        with contextlib.ExitStack() as failing:
            failing.callback(lab.close)
            lab.local = lab._stack.enter_context(loaded.session())
            lab.address = str(lab._stack.enter_context(lab.local.serve_unix()))
            lab.client = lab._stack.enter_context(lab._connect(5.0))
            failing.pop_all()
        logger.info("local lab from %s serving on %s", loaded.source, lab.address)
        return lab

    def _connect(self, timeout: float) -> DriverClient:
        from jumpstarter_drivers.core import connect

        return connect(self.address, allow=self.allow, timeout=timeout, **self.connection)

    def connect(self, timeout: float = 5.0) -> DriverClient:
        """A new root client on its own connection (close it when done)."""
        return self._connect(timeout)

    def close(self) -> None:
        """Disconnect, and stop a local lab's server and drivers."""
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = f"local from {self.source}" if self.local is not None else "remote"
        return f"<Lab {kind} at {self.address}>"

    # what the lab is ---------------------------------------------------------------------------

    def status(self) -> ExporterStatus:
        """The exporter's status (``GetStatus``)."""
        return self.client.get_status()

    def report(self) -> Any:
        """The exporter's ``GetReportResponse``: uuid, labels and the driver tree."""
        import grpc

        from jumpstarter_drivers.core.client import translate

        connection = self.client.connection
        try:
            return connection.exporter.GetReport(connection.empty(), metadata=connection.metadata, timeout=10)
        except grpc.RpcError as exc:
            raise translate(exc, f"GetReport on {self.address}") from None

    def find(self, path: str) -> DriverClient | None:
        """The client at dotted ``path`` (``"board.power"``), or ``None`` when the lab has no such node."""
        node = self.client
        for step in path.split("."):
            node = node.children.get(step)
            if node is None:
                return None
        return node

    def lacks(self, requirement: str) -> str | None:
        """Why the lab cannot meet ``requirement``, or ``None`` when it can.

        A requirement is a node's dotted path (``"board.serial"``) or a method of a node
        (``"power.read"``): the method must be one the node's client or report offers and
        not one its driver reports unsupported (``EnerGenie`` cannot ``read``).
        """
        if self.find(requirement) is not None:
            return None
        path, _, method = requirement.rpartition(".")
        node = self.find(path) if path else None
        if node is None:
            return f"has no {requirement} node"
        from jumpstarter_drivers.core.client import DriverClient
        from jumpstarter_drivers.core.driver import UNSUPPORTED_LABEL

        if method in node.labels.get(UNSUPPORTED_LABEL, "").split(","):
            return f"cannot {requirement}(): its driver does not support it"
        classes = type(node).__mro__
        client_methods = {name for cls in classes[: classes.index(DriverClient)] for name in vars(cls)}
        if method in node.methods_description or method in client_methods:
            return None
        return f"has no {requirement} node or method"

    def flashers(self) -> dict[str, DriverClient]:
        """Every flasher node by dotted path (see :data:`FLASHER_SUFFIX`)."""
        found: dict[str, DriverClient] = {}

        def visit(node: DriverClient, path: str) -> None:
            if node.labels.get(REF_LABEL):  # a proxy: the flasher it stands for is found where it is defined
                return
            if path and is_flasher(node):
                found[path] = node
            for name, child in node.children.items():
                visit(child, f"{path}.{name}" if path else name)

        visit(self.client, "")
        return found

    def flasher(self, name: str | None = None) -> DriverClient | None:
        """The flasher named ``name``, or the only one; ``None`` when the lab has none.

        Raises :class:`ConfigurationError` when ``name`` is missing or several flashers leave a choice.
        """
        if name:
            node = self.find(name)
            if node is None:
                raise ConfigurationError(
                    f"the lab at {self.address} has no node {name!r} (--jumpstarter-flasher); "
                    f"flashers: {', '.join(self.flashers()) or 'none'}"
                )
            return node
        flashers = self.flashers()
        if len(flashers) > 1:
            raise ConfigurationError(
                f"the lab at {self.address} has several flashers ({', '.join(flashers)}); "
                "choose one with --jumpstarter-flasher=NAME"
            )
        return next(iter(flashers.values()), None)

    @functools.cached_property
    def node_names(self) -> dict[str, str]:
        """Dotted node paths by driver uuid (the root is ``root``), for labelling driver logs and consoles.

        A ``ref:`` node is named by the node it stands for: the virtual lab's ``serial`` is ``board.serial``.
        """
        from jumpstarter_drivers.composite.common import REF_LABEL

        names: dict[str, str] = {}
        refs: dict[str, str] = {}

        def visit(node: DriverClient, path: str) -> None:
            names[str(node.uuid)] = path or "root"
            if REF_LABEL in node.labels:
                refs[str(node.uuid)] = node.labels[REF_LABEL]
            for name, child in node.children.items():
                visit(child, f"{path}.{name}" if path else name)

        visit(self.client, "")
        by_path = {path: uuid for uuid, path in names.items()}
        for uuid, ref in refs.items():
            seen = {uuid}
            while ref in by_path and by_path[ref] in refs and by_path[ref] not in seen:  # a ref to a ref
                seen.add(by_path[ref])
                ref = refs[by_path[ref]]
            names[uuid] = ref
        return names


def is_flasher(node: DriverClient) -> bool:
    """Whether a client is a flasher's: its class, a base, or the class its labels name ends in ``FlasherClient``."""
    from jumpstarter_drivers.core.client import CLIENT_LABEL, TOOLKIT_CLIENT_LABEL

    if any(cls.__name__.endswith(FLASHER_SUFFIX) for cls in type(node).__mro__):
        return True
    named = node.labels.get(TOOLKIT_CLIENT_LABEL) or node.labels.get(CLIENT_LABEL) or ""
    return named.rpartition(".")[2].endswith(FLASHER_SUFFIX)
