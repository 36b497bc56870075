"""The client of a :class:`~jumpstarter_drivers.composite.driver.Composite`: its children by name."""

from __future__ import annotations

from collections.abc import Iterator

from ..core.client import DriverClient


class CompositeClient(DriverClient):
    """Children by attribute (``board.power``), by item (``board["power"]``) or by dotted path.

    ``"power" in board`` tells whether a child (or dotted path) exists.
    """

    def __getitem__(self, path: str) -> DriverClient:
        node: DriverClient = self
        for step in path.split("."):
            if step not in node.children:
                raise KeyError(f"{path!r}: {node.name or 'root'} has no child {step!r}; children: "
                               f"{', '.join(node.children) or 'none'}")
            node = node.children[step]
        return node

    def __contains__(self, path: str) -> bool:
        try:
            self[path]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.children)
