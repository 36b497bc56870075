"""Composite and Proxy drivers.

A :class:`Composite` has no methods of its own; it groups its children (one board's power,
serial and flasher) under one name. A :class:`Proxy` stands for another node of the same tree,
so that node appears twice: the flasher's ``power`` can be the board's ``power``.

>>> from jumpstarter_drivers.power import MockPower
>>> board = Composite(children={"power": MockPower()})
>>> root = Composite(children={"board": board, "flasher": Composite(children={"power": Proxy(ref="board.power")})})
>>> resolve_refs(root)
>>> root.children["flasher"].children["power"].target is board.children["power"]
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.driver import Driver, ExportedMethod
from ..core.errors import ConfigurationError
from .common import REF_LABEL

COMPOSITE_CLIENT = "jumpstarter_drivers.composite.client.CompositeClient"


@dataclass(kw_only=True)
class Composite(Driver):
    """Groups child drivers under one name; calls go to the children."""

    @classmethod
    def client(cls) -> str:
        return COMPOSITE_CLIENT


@dataclass(kw_only=True)
class Proxy(Driver):
    """Forwards every exported method to the node ``ref`` names (a dotted path from the root).

    The proxy is a node of its own (its own uuid in the report) with the target's client class,
    methods and labels, and the label :data:`REF_LABEL` naming ``ref``; its children mirror the target's. Closing or resetting a proxy leaves the
    target alone: the target is closed where it is defined.
    """

    ref: str
    #: The node ``ref`` resolves to, set when the tree is built; not written in an exporter file (code
    #: building a tree may pass the Driver itself).
    target: Driver | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ref or not all(self.ref.split(".")):
            raise ConfigurationError(f"Proxy: ref {self.ref!r} is not a dotted path such as 'board.power'")
        if self.target is not None:
            self.bind(self.target)

    def bind(self, target: Driver) -> None:
        """Point the proxy at ``target`` (following proxies), mirroring the target's children."""
        seen = {id(self)}
        while isinstance(target, Proxy):
            if id(target) in seen:
                raise ConfigurationError(f"Proxy: ref {self.ref!r} leads into a cycle of refs")
            seen.add(id(target))
            if target.target is None:
                raise ConfigurationError(
                    f"Proxy: ref {self.ref!r} points at ref {target.ref!r}, which is not resolved yet"
                )
            target = target.target
        self.target = target
        self.labels = {**target.labels, **self.labels, REF_LABEL: self.ref}
        if self.description is None:
            self.description = target.description
        self.children = {
            name: Proxy(ref=f"{self.ref}.{name}", target=child) for name, child in target.children.items()
        }

    def _bound(self) -> Driver:
        target = self.__dict__.get("target")
        if target is None:
            raise ConfigurationError(
                f"Proxy: ref {self.ref!r} is not resolved; build the tree with "
                "jumpstarter_drivers.core.config or call resolve_refs(root) first"
            )
        return target

    def client(self) -> str:  # type: ignore[override]  # per instance: the target's client
        """The target's client class."""
        return self._bound().client()

    def exported_methods(self) -> dict[str, ExportedMethod]:  # type: ignore[override]
        """The target's methods."""
        return self._bound().exported_methods()

    def describe_methods(self) -> dict[str, str]:
        return self._bound().describe_methods()

    def unsupported_methods(self) -> frozenset[str]:
        return self._bound().unsupported_methods()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        target = self.__dict__.get("target")
        if target is not None and name in target.exported_methods():
            return getattr(target, name)
        raise AttributeError(f"{type(self).__name__} for {self.__dict__.get('ref')!r} has no attribute {name!r}")


def find(root: Driver, path: str) -> Driver:
    """The node at dotted ``path`` below ``root`` (``ConfigurationError`` naming the missing step)."""
    node = root
    walked: list[str] = []
    for step in path.split("."):
        if step not in node.children:
            where = ".".join(walked) or "the root"
            raise ConfigurationError(
                f"ref {path!r}: {where} has no child {step!r}; children: {', '.join(node.children) or 'none'}"
            )
        node = node.children[step]
        walked.append(step)
    return node


def _holds(node: Driver, wanted: Driver) -> bool:
    """Whether ``wanted`` is ``node`` or below it (walked without recursion, each node once)."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current is wanted:
            return True
        if id(current) not in seen:
            seen.add(id(current))
            stack.extend(current.children.values())
    return False


def resolve_refs(root: Driver) -> None:
    """Bind every unbound :class:`Proxy` in the tree to the node its ``ref`` names.

    Refs may chain, and may reach through another ref (``b.power`` where ``b`` is a ref to a
    board): a proxy has children only once bound, so such a ref waits for the others.
    """
    pending = [driver for driver, _, _ in root.walk() if isinstance(driver, Proxy) and driver.target is None]
    while pending:
        progressed = []
        unreachable: ConfigurationError | None = None
        for proxy in pending:
            try:
                target = find(root, proxy.ref)
            except ConfigurationError as exc:  # perhaps below a proxy not bound yet: retried next round
                unreachable = unreachable or exc
                continue
            if target is proxy:
                raise ConfigurationError(f"Proxy: ref {proxy.ref!r} points at itself")
            if isinstance(target, Proxy) and target.target is None:
                continue
            if _holds(target, proxy):
                raise ConfigurationError(
                    f"Proxy: ref {proxy.ref!r} names a node that contains this ref; a ref may name a sibling or "
                    "another branch, never a node above it (it would contain itself)"
                )
            proxy.bind(target)
            progressed.append(proxy)
        if not progressed:
            if unreachable is not None:
                raise unreachable
            refs = ", ".join(repr(p.ref) for p in pending)
            raise ConfigurationError(f"Proxy: refs {refs} point at each other in a cycle; one must name a real driver")
        pending = [p for p in pending if p not in progressed]
