"""Exporter configuration: a YAML file describing a driver tree, shaped like Jumpstarter's.

::

    export:
      board:
        description: the board on my desk
        children:
          power:
            type: MockPower          # a short name, or an import path of a Driver class
          storage:
            type: Storage
            config: {root_dir: /srv/images}
      flasher:
        children:
          power: {ref: board.power}  # the same power switch, under a second name

A node is ``type:`` with ``config:`` (keyword arguments), ``description:``,
``methods_description:`` and ``children:``; a node with only ``children:`` is a
:class:`~jumpstarter_drivers.composite.Composite`; ``ref:`` names another node by its dotted path.
Jumpstarter's whole ``ExporterConfig`` document (``apiVersion``, ``kind``, ``metadata``, ...)
is accepted too; its ``export:`` is read, and ``metadata.labels`` label the session.

Short names come from a :class:`DriverRegistry`: the built-in families, the entry point group
``jumpstarter_drivers`` (``ShortName = "package.module:DriverClass"``, or a plugin object
implementing :func:`jumpstarter_register_drivers`), and plugins registered with pluggy.

>>> config = loads("export:\\n  power: {type: MockPower}\\n  again: {ref: power}\\n")
>>> sorted(config.root.children)
['again', 'power']
>>> loads("export:\\n  power: {type: MockPower, config: {volts: 5}}\\n", source="lab.yaml")
Traceback (most recent call last):
...
jumpstarter_drivers.core.errors.ConfigurationError: lab.yaml: export.power.config.volts: MockPower: unknown config field 'volts'; expected one of: children, description, labels, methods_description
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
import os
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import yaml

from .driver import Driver
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .session import Session

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jumpstarter_drivers"
PROJECT = "jumpstarter_drivers"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Short names of the bundled drivers, resolved by import path on first use, so a family that
#: is missing (or fails to import) breaks only the files that name it.
BUILTIN_DRIVERS: dict[str, str] = {
    "Composite": "jumpstarter_drivers.composite.driver.Composite",
    "Proxy": "jumpstarter_drivers.composite.driver.Proxy",
    "MockPower": "jumpstarter_drivers.power.driver.MockPower",
    "SyncMockPower": "jumpstarter_drivers.power.driver.SyncMockPower",
    "EnerGenie": "jumpstarter_drivers.energenie.driver.EnerGenie",
    "PySerial": "jumpstarter_drivers.pyserial.driver.PySerial",
    "Tftp": "jumpstarter_drivers.tftp.driver.Tftp",
    "HttpServer": "jumpstarter_drivers.http.driver.HttpServer",
    "Storage": "jumpstarter_drivers.storage.driver.Storage",
    "BaseFlasher": "jumpstarter_drivers.flashers.driver.BaseFlasher",
    "UBoot": "jumpstarter_drivers.uboot.driver.UBoot",
    "VirtualBoard": "jumpstarter_drivers.virtualboard.driver.VirtualBoard",
    "VirtualBoardPower": "jumpstarter_drivers.virtualboard.driver.VirtualBoardPower",
    "VirtualFlasher": "jumpstarter_drivers.virtualboard.driver.VirtualFlasher",
    "QemuBoard": "jumpstarter_drivers.qemu.driver.QemuBoard",
    "QemuPower": "jumpstarter_drivers.qemu.driver.QemuPower",
    "Shell": "jumpstarter_drivers.shell.driver.Shell",
    "BootStrategy": "jumpstarter_drivers.strategy.driver.BootStrategy",
    "TcpNetwork": "jumpstarter_drivers.network.driver.TcpNetwork",
    "Network": "jumpstarter_drivers.network.driver.Network",
}

#: Jumpstarter's driver import paths that name a driver we have, so its exporter files load as they are.
JUMPSTARTER_DRIVERS: dict[str, str] = {
    "jumpstarter_driver_composite.driver.Composite": "Composite",
    "jumpstarter_driver_composite.driver.Proxy": "Proxy",
    "jumpstarter_driver_power.driver.MockPower": "MockPower",
    "jumpstarter_driver_power.driver.SyncMockPower": "SyncMockPower",
    "jumpstarter_driver_energenie.driver.EnerGenie": "EnerGenie",
    "jumpstarter_driver_pyserial.driver.PySerial": "PySerial",
    "jumpstarter_driver_tftp.driver.Tftp": "Tftp",
    "jumpstarter_driver_http.driver.HttpServer": "HttpServer",
    "jumpstarter_driver_flashers.driver.BaseFlasher": "BaseFlasher",
}

NODE_KEYS = ("type", "config", "description", "methods_description", "children", "ref")
DOCUMENT_KEYS = ("export", "labels")


class DriverSpecs:
    """Hook specifications for driver plugins (pluggy project ``jumpstarter_drivers``)."""

    @hookspec
    def jumpstarter_register_drivers(self, registry: DriverRegistry) -> None:
        """Register short names: ``registry.register("MyPower", "my_pkg.driver.MyPower")``."""


class DriverRegistry:
    """Maps short driver names to Driver classes (given as classes or lazy import paths).

    >>> registry = DriverRegistry()
    >>> registry.resolve("MockPower").__name__
    'MockPower'
    >>> registry.resolve("NoSuchDriver")
    Traceback (most recent call last):
    ...
    jumpstarter_drivers.core.errors.ConfigurationError: no driver named 'NoSuchDriver'; give a Driver class's import path (package.module.Class) or one of: BaseFlasher, ...Composite, ...
    """

    def __init__(self, *, entry_points: bool = True) -> None:
        self._names: dict[str, str | type[Driver]] = dict(BUILTIN_DRIVERS)
        self.plugins = pluggy.PluginManager(PROJECT)
        self.plugins.add_hookspecs(DriverSpecs)
        self._hooked: set[int] = set()
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None if entry_points else {}

    def register(self, name: str, driver: str | type[Driver]) -> None:
        """Register ``name`` for a Driver class or its import path (``pkg.module.Class`` or ``pkg.module:Class``)."""
        if not isinstance(driver, str) and not (isinstance(driver, type) and issubclass(driver, Driver)):
            raise ConfigurationError(f"driver short name {name!r}: {driver!r} is neither a Driver class nor an import path")
        self._names[name] = driver

    def names(self) -> list[str]:
        """The short names known without loading any plugin."""
        return sorted(self._names)

    def resolve(self, name: str) -> type[Driver]:
        """The Driver class for a short name or an import path."""
        name = JUMPSTARTER_DRIVERS.get(name, name)
        if name not in self._names:
            self._load_plugins(name)
        target = self._names.get(name)
        if target is None:
            if "." not in name and ":" not in name:
                raise ConfigurationError(
                    f"no driver named {name!r}; give a Driver class's import path (package.module.Class) "
                    f"or one of: {', '.join(self.names())}"
                )
            target = name
        cls = _import(target, name) if isinstance(target, str) else target
        if not (isinstance(cls, type) and issubclass(cls, Driver)):
            raise ConfigurationError(f"{name!r} is {cls!r}, not a jumpstarter_drivers Driver class")
        self._names[name] = cls
        return cls

    def _entry_point_map(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        return self._entry_points

    def _load_plugins(self, wanted: str) -> None:
        """Look ``wanted`` up in entry points, then ask every plugin; only on a miss, so it stays lazy."""
        entry_points = self._entry_point_map()
        first = [entry_points.pop(wanted)] if wanted in entry_points else []
        for ep in first + list(entry_points.values()):
            entry_points.pop(ep.name, None)
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken third-party package must name itself
                raise ConfigurationError(
                    f"entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP}) fails to load: {exc!r}"
                ) from exc
            if isinstance(loaded, type) and issubclass(loaded, Driver):
                self._names.setdefault(ep.name, loaded)
            elif self.plugins.is_registered(loaded):
                continue
            else:
                self.plugins.register(loaded, name=f"entrypoint:{ep.name}")
            if wanted in self._names:
                break
        self._call_hooks()

    def _call_hooks(self) -> None:
        fresh = [p for p in self.plugins.get_plugins() if id(p) not in self._hooked]
        if not fresh:
            return
        self._hooked.update(id(p) for p in fresh)
        self.plugins.subset_hook_caller("jumpstarter_register_drivers", remove_plugins=[
            p for p in self.plugins.get_plugins() if p not in fresh
        ])(registry=self)


def _import(path: str, name: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"driver {name!r} ({path}) is not installed: {exc}; install the package that provides it"
        ) from None
    except Exception as exc:  # a module that breaks on import must name itself, as a broken entry point does
        raise ConfigurationError(f"driver {name!r} ({path}): module {module_name} fails to import: {exc!r}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"driver {name!r}: module {module_name} has no class {attr!r}") from None


#: The registry used when none is given.
default_registry = DriverRegistry()


@dataclass
class ExporterConfig:
    """A loaded exporter configuration: the driver tree and the session's labels."""

    root: Driver
    labels: dict[str, str] = field(default_factory=dict)
    source: str = "<string>"

    def session(self) -> Session:
        """A :class:`~jumpstarter_drivers.core.session.Session` hosting this tree."""
        from .session import Session

        return Session(root_device=self.root, labels=dict(self.labels))


def load(path: str | os.PathLike, registry: DriverRegistry | None = None) -> ExporterConfig:
    """Load an exporter configuration file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read exporter configuration {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not a text file: byte {exc.start} is not UTF-8; an exporter configuration is YAML text"
        ) from None
    return loads(text, source=str(path), registry=registry)


#: Most values a YAML document may hold with its aliases expanded (a "billion laughs" document
#: of 1 kB names 10**9), and its deepest nesting.
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 100


class YamlRefused(yaml.YAMLError):
    """A YAML document refused before it is built: a duplicate key, nesting or aliases beyond the bounds."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class BoundedSafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with bounds: nesting depth, values after alias expansion, no
    self-referencing alias, and no duplicate key in a mapping (PyYAML keeps the last silently)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open: set[str] = set()

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None and _count_values(node, {}) > MAX_YAML_VALUES:
            raise YamlRefused(f"aliases expand to more than {MAX_YAML_VALUES} values; refused as an alias bomb", None)
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.AliasEvent):
            if anchor in self._open:
                raise YamlRefused(f"alias *{anchor} refers to itself (a value that contains itself)", event.start_mark)
            return super().compose_node(parent, index)
        if self._depth >= MAX_YAML_DEPTH:
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        self._depth += 1
        if anchor is not None:
            self._open.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(anchor)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, str] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)  # resolved: '1' and '0x1', '~' and 'null' are one key
                    if key in seen:
                        same = f" (the same key as {seen[key]!r})" if seen[key] != key_node.value else ""
                        raise YamlRefused(f"duplicate key {key_node.value!r}{same}; each key may appear once in a "
                                          "mapping", key_node.start_mark)
                    seen[key] = key_node.value
        return super().construct_mapping(node, deep)


def _count_values(node: Any, counted: dict[int, int]) -> int:
    """Values under ``node`` with aliases expanded (a shared node counts once per use); ``counted``
    memoises per node, so the work is linear in the file however far the aliases expand."""
    if id(node) not in counted:
        size = 1
        if isinstance(node, yaml.SequenceNode):
            size += sum(_count_values(child, counted) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            size += sum(_count_values(key, counted) + _count_values(value, counted) for key, value in node.value)
        counted[id(node)] = size
    return counted[id(node)]


def yaml_error(source: str, exc: yaml.YAMLError) -> ConfigurationError:
    """A :class:`ConfigurationError` naming ``source``, the line and column, and the problem."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
    problem = getattr(exc, "problem", None) or exc
    if isinstance(exc, YamlRefused):
        return ConfigurationError(f"{source}:{where} {problem}")
    return ConfigurationError(f"{source}:{where} not valid YAML: {problem}")


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a few hundred characters, for error messages.

    >>> short_repr(list(range(1000)))
    '[0, 1, 2, 3, 4, 5, ...]'
    """
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 200


@functools.cache
def _yaml_loader() -> type:
    """A bounded safe loader where only ``true``/``false`` are booleans (YAML 1.2), so ``on:`` stays a method name."""

    class Loader(BoundedSafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    return Loader


def loads(text: str, source: str = "<string>", registry: DriverRegistry | None = None) -> ExporterConfig:
    """Load an exporter configuration from YAML text; ``source`` names it in errors.

    Only ``true`` and ``false`` are booleans, as in YAML 1.2: ``on``, ``off``, ``yes`` and ``no`` are strings.
    """
    try:
        document = yaml.load(text, Loader=_yaml_loader())  # a bounded SafeLoader subclass
    except yaml.YAMLError as exc:
        raise yaml_error(source, exc) from None
    return from_document(document, source=source, registry=registry)


def from_document(
    document: Any, source: str = "<string>", registry: DriverRegistry | None = None
) -> ExporterConfig:
    """Build the tree from an already parsed document (a mapping with ``export:``)."""
    from ..composite.driver import Composite, resolve_refs

    registry = registry or default_registry
    if not isinstance(document, Mapping):
        raise ConfigurationError(
            f"{source}: expected a mapping with a top-level 'export:' of driver nodes, got {_kind(document)}"
        )
    full_form = "apiVersion" in document or "kind" in document
    if full_form and document.get("kind", "ExporterConfig") != "ExporterConfig":
        raise ConfigurationError(f"{source}: kind: expected ExporterConfig, got {document.get('kind')!r}")
    if not full_form:
        unknown = [k for k in document if k not in DOCUMENT_KEYS]
        if unknown:
            raise ConfigurationError(
                f"{source}: {unknown[0]}: unknown top-level key; expected {' and '.join(DOCUMENT_KEYS)} "
                "(or Jumpstarter's full ExporterConfig with apiVersion and kind)"
            )
    export = document.get("export")
    if not isinstance(export, Mapping) or not export:
        raise ConfigurationError(
            f"{source}: export: expected a mapping of names to driver nodes, got {_kind(export)}"
        )
    if full_form:
        metadata = document.get("metadata") or {}
        labels = metadata.get("labels", {}) if isinstance(metadata, Mapping) else {}
        where = "metadata.labels"
    else:
        labels = document.get("labels", {})
        where = "labels"
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ConfigurationError(f"{source}: {where}: expected a mapping of strings to strings, got {short_repr(labels)}")
    builder = _Builder(source, registry)
    root = Composite(children=builder.children(export, "export"))
    try:
        resolve_refs(root)
    except ConfigurationError as exc:
        _close_built([root])
        raise ConfigurationError(f"{source}: {builder.where_ref(exc)}{exc}") from None
    return ExporterConfig(root=root, labels=dict(labels), source=source)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {short_repr(value)}"


def _close_built(drivers: Iterable[Driver]) -> None:
    """Close the drivers built before a later part of the file failed (their ptys, temporary
    directories, ...); that failure is the error to report, so a failing close is only logged."""
    for driver in drivers:
        try:
            driver.close()
        except Exception:
            logger.warning("closing %s after a configuration error failed", type(driver).__name__, exc_info=True)


_FIELD = re.compile(r"(config field|child) '([^']+)'|(config field)\(s\): (\w+)")


class _Builder:
    def __init__(self, source: str, registry: DriverRegistry) -> None:
        self.source = source
        self.registry = registry
        self.refs: dict[str, str] = {}

    def fail(self, path: str, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.source}: {path}: {message}")

    def where_ref(self, exc: ConfigurationError) -> str:
        text = str(exc)
        for ref, path in self.refs.items():
            if repr(ref) in text:
                return f"{path}.ref: "
        return ""

    def children(self, nodes: Any, path: str) -> dict[str, Driver]:
        if not isinstance(nodes, Mapping):
            raise self.fail(path, f"expected a mapping of names to driver nodes, got {_kind(nodes)}")
        built: dict[str, Driver] = {}
        try:
            for name, node in nodes.items():
                if not isinstance(name, str) or not name or "." in name:
                    raise self.fail(f"{path}.{name}", "node names must be non-empty strings without '.'")
                built[name] = self.node(node, f"{path}.{name}")
        except BaseException:
            _close_built(built.values())
            raise
        return built

    def node(self, node: Any, path: str) -> Driver:
        from ..composite.driver import Proxy

        if not isinstance(node, Mapping):
            raise self.fail(path, f"expected a driver node (a mapping with type:, children: or ref:), got {_kind(node)}")
        unknown = [k for k in node if k not in NODE_KEYS]
        if unknown:
            raise self.fail(f"{path}.{unknown[0]}", f"unknown key; a node has {', '.join(NODE_KEYS)}")
        if "ref" in node:
            others = [k for k in node if k != "ref"]
            if others:
                raise self.fail(f"{path}.{others[0]}", "a ref: node has nothing else; configure the node it names")
            ref = node["ref"]
            if not isinstance(ref, str):
                raise self.fail(f"{path}.ref", f"expected a dotted path such as 'board.power', got {_kind(ref)}")
            self.refs[ref] = path
            try:
                return Proxy(ref=ref)
            except ConfigurationError as exc:
                raise self.fail(f"{path}.ref", str(exc)) from None
        description = node.get("description")
        if description is not None and not isinstance(description, str):
            raise self.fail(f"{path}.description", f"expected a string, got {_kind(description)}")
        methods_description = node.get("methods_description") or {}
        if not isinstance(methods_description, Mapping):
            raise self.fail(f"{path}.methods_description", f"expected a mapping of method names to text, got {_kind(methods_description)}")
        children = self.children(node.get("children") or {}, f"{path}.children")
        common = {"description": description, "methods_description": dict(methods_description), "children": children}
        try:
            return self.driver(node, path, common)
        except BaseException:
            _close_built(children.values())
            raise

    def driver(self, node: Mapping, path: str, common: dict[str, Any]) -> Driver:
        """The driver of a node with ``type:`` (or the composite of one with only children)."""
        from ..composite.driver import Composite

        if "type" not in node:
            if "config" in node:
                raise self.fail(f"{path}.config", "config: needs a type: naming the driver it configures")
            if not common["children"]:
                raise self.fail(path, "expected type: (a driver), children: (a composite) or ref: (another node)")
            return Composite(**common)
        type_name = node["type"]
        if not isinstance(type_name, str) or not type_name:
            raise self.fail(f"{path}.type", f"expected a driver short name or import path, got {_kind(type_name)}")
        config = node.get("config") or {}
        if not isinstance(config, Mapping):
            raise self.fail(f"{path}.config", f"expected a mapping of keyword arguments, got {_kind(config)}")
        clash = [k for k in config if k in common]
        if clash:
            raise self.fail(f"{path}.config.{clash[0]}", f"set {clash[0]}: on the node, not inside config:")
        try:
            cls = self.registry.resolve(type_name)
        except ConfigurationError as exc:
            raise self.fail(f"{path}.type", str(exc)) from None
        try:
            return cls(**common, **config)
        except ConfigurationError as exc:
            match = _FIELD.search(str(exc))
            where = path
            if match:
                kind, name = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
                where = f"{path}.config.{name}" if kind == "config field" else f"{path}.children.{name}"
            raise self.fail(where, str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise self.fail(f"{path}.config", f"{cls.__name__}: {exc}") from None
