"""Driver commands, generated from the client tree of a lab.

Every node of the tree becomes a click command named after the node, with one subcommand per
child: ``jumpstarter board power on``. What a node offers by itself comes, in this order, from

1. a ``cli()`` method of its client class, returning a click command (a family can add one to
   its client), or
2. a builder registered for its client class or the nearest base class with
   :func:`command_builder` (the bundled families are registered in
   :mod:`jumpstarter_drivers.cli.families`), or
3. nothing: a plain group of the node's children.

>>> import click
>>> @command_builder("example.client.LampClient")
... def lamp(client):
...     return click.Group(help="A lamp.")
>>> builder_for(type("LampClient", (), {"__module__": "example.client"})) is lamp
True
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import click

from ..core.client import CLIENT_LABEL, TOOLKIT_CLIENT_LABEL, DriverClient, UnavailableClient

logger = logging.getLogger(__name__)

#: Builds the click command of one client (without its children; those are added for it).
CommandBuilder = Callable[[DriverClient], click.Command]

_builders: dict[str, CommandBuilder] = {}


def command_builder(client_path: str) -> Callable[[CommandBuilder], CommandBuilder]:
    """Register the function that builds the commands of the client class at ``client_path``.

    Subclasses of that class use it too, unless they have a builder of their own.
    """

    def register(builder: CommandBuilder) -> CommandBuilder:
        _builders[client_path] = builder
        return builder

    return register


def class_path(cls: type) -> str:
    """The import path of a class, as reports and :func:`command_builder` name it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def builder_for(cls: type) -> CommandBuilder | None:
    """The builder registered for ``cls`` or its nearest base class, if any."""
    for base in cls.__mro__:
        builder = _builders.get(class_path(base))
        if builder is not None:
            return builder
    return None


def client_path(client: DriverClient) -> str:
    """The client class a node's report names (ours where both are given)."""
    return client.labels.get(TOOLKIT_CLIENT_LABEL) or client.labels.get(CLIENT_LABEL) or class_path(type(client))


def summary(client: DriverClient) -> str:
    """One line saying what a node is, for help texts."""
    if isinstance(client, UnavailableClient):
        return f"{client_path(client)} (unavailable: {client.reason})"
    if client.description:
        return client.description
    doc = (type(client).__doc__ or "").strip().split("\n\n")[0]
    return plain(" ".join(doc.split())) if doc else client_path(client)


_ROLE = re.compile(r":\w+:`~?(?:[^`]*\.)?([^`.]+)`")


def plain(text: str) -> str:
    """Docstring text without reST roles, for a terminal.

    >>> plain("Client of a :class:`~jumpstarter_drivers.power.driver.PowerInterface` driver.")
    'Client of a PowerInterface driver.'
    """
    return _ROLE.sub(r"\1", text)


def own_command(client: DriverClient) -> click.Command:
    """The command a node offers by itself (see the module docstring for where it comes from)."""
    from . import families  # noqa: F401 - registers the bundled families' builders

    if isinstance(client, UnavailableClient):
        return click.Group(help=summary(client))
    cli = getattr(type(client), "cli", None)
    if callable(cli):
        command = cli(client)
        if not isinstance(command, click.Command):
            raise TypeError(f"{class_path(type(client))}.cli() must return a click command, got {command!r}")
        return command
    builder = builder_for(type(client))
    if builder is not None:
        return builder(client)
    return click.Group(help=summary(client))


def client_command(client: DriverClient, name: str) -> click.Command:
    """The command for ``client`` named ``name``: its own commands plus one subcommand per child.

    A node whose commands cannot be built (a family's ``cli()`` failing) gets an empty group
    saying why, so the rest of the tree stays usable.
    """
    try:
        command = own_command(client)
    except Exception as exc:  # noqa: BLE001 - one family's broken cli() must not take the others down
        logger.warning("no commands for %s (%s): %s", name, client_path(client), exc)
        command = click.Group(help=f"{summary(client)} (commands unavailable: {exc})")
    command.name = name
    if isinstance(command, click.Group):
        for child_name, child in client.children.items():
            if child_name not in command.commands:
                command.add_command(client_command(child, child_name), child_name)
    return command


def method_signature(client: DriverClient, method: str) -> str:
    """How a test calls ``method`` on ``client``: its client method's signature, or ``method(...)``
    when the client class has no method of that name (a generic client, reaching it by ``call()``).

    >>> from jumpstarter_drivers.power.client import PowerClient
    >>> method_signature(PowerClient.__new__(PowerClient), "cycle")
    'cycle(wait: float = 2) -> None'
    """
    from .reference import signature_text

    func = inspect.getattr_static(type(client), method, None)
    if not inspect.isfunction(func):
        return f"{method}(...)"
    return signature_text(method, inspect.signature(func))


def report_lines(client: DriverClient, name: str = "root", depth: int = 0) -> Iterator[str]:
    """The tree under ``client`` as indented lines: each node's name, client class, description
    and methods with their signatures and descriptions."""
    indent = "  " * depth
    head = f"{indent}{printable(name)} ({printable(client_path(client))})"
    yield f"{head}: {printable(client.description)}" if client.description else head
    for method, description in sorted(client.methods_description.items()):
        line = f"{indent}    {printable(method_signature(client, method))}"
        yield f"{line}: {printable(description)}" if description else line
    for child_name, child in client.children.items():
        yield from report_lines(child, child_name, depth + 1)


def report_tree(client: DriverClient, name: str = "root") -> dict[str, Any]:
    """The tree under ``client`` as plain data (``jumpstarter report --json``)."""
    return {
        "name": name,
        "client": client_path(client),
        "description": client.description,
        "labels": dict(client.labels),
        "methods": [
            {"name": method, "signature": method_signature(client, method), "description": description}
            for method, description in sorted(client.methods_description.items())
        ],
        "children": [report_tree(child, child_name) for child_name, child in client.children.items()],
    }


def printable(text: str) -> str:
    r"""``text`` with control characters escaped, so an exporter's report cannot drive the terminal.

    >>> printable("bench\x1b]0;title\x07 supply\n")
    'bench\\x1b]0;title\\x07 supply\\n'
    """
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
