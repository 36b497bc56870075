"""The driver base class and the decorators that export its methods to clients.

A driver is a keyword-configured dataclass that runs beside the hardware:

>>> from dataclasses import dataclass
>>> @dataclass(kw_only=True)
... class Lamp(Driver):
...     watts: int = 40
...     @export
...     def brightness(self) -> int:
...         return self.watts * 10
>>> Lamp(watts=60).brightness()
600
>>> Lamp(watts="bright")
Traceback (most recent call last):
...
jumpstarter_drivers.core.errors.ConfigurationError: Lamp: config field 'watts' expects int, got 'bright' (str)
"""

from __future__ import annotations

import collections.abc
import enum
import inspect
import logging
import os
import types
import typing
from abc import ABCMeta
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from typing import Any, ClassVar, Literal, Union
from uuid import UUID, uuid4

from .errors import ConfigurationError

GENERIC_CLIENT = "jumpstarter_drivers.core.client.DriverClient"
#: Report label listing a driver's :attr:`Driver.unsupported` methods, comma-separated.
UNSUPPORTED_LABEL = "jumpstarter-toolkit/unsupported"


class MethodKind(enum.Enum):
    """How an exported method is called over the wire."""

    UNARY = "unary"  # DriverCall: one result
    STREAMING = "streaming"  # StreamingDriverCall: a generator, one message per item
    BYTESTREAM = "bytestream"  # RouterService.Stream: an async context manager yielding a byte stream


_EXPORT_ATTR = "__jumpstarter_export__"


def export(func: Callable) -> Callable:
    """Mark a driver method as callable from clients.

    Sync and async functions become unary calls; sync and async generator functions become
    streaming calls. Sync code runs in a worker thread, so a slow driver never stalls others.
    """
    setattr(func, _EXPORT_ATTR, MethodKind.UNARY)
    return func


_GENERATOR_RETURNS = (
    collections.abc.Generator,
    collections.abc.AsyncGenerator,
    collections.abc.Iterator,
    collections.abc.AsyncIterator,
)


def _call_kind(func: Callable, hints: dict[str, Any]) -> MethodKind:
    """Streaming for generator functions, and for abstract ones whose return annotation is a generator."""
    if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
        return MethodKind.STREAMING
    returns = typing.get_origin(hints.get("return")) or hints.get("return")
    if isinstance(returns, type) and issubclass(returns, _GENERATOR_RETURNS):
        return MethodKind.STREAMING
    return MethodKind.UNARY


def exportstream(func: Callable) -> Callable:
    """Mark a method returning an async context manager over a byte stream (a console, say).

    The method may be a plain async generator function; it is wrapped with
    :func:`contextlib.asynccontextmanager` then.
    """
    if inspect.isasyncgenfunction(func):
        func = asynccontextmanager(func)
    setattr(func, _EXPORT_ATTR, MethodKind.BYTESTREAM)
    return func


@dataclass(frozen=True)
class ExportedMethod:
    """What the session needs to know to call one exported method."""

    name: str
    kind: MethodKind
    is_async: bool
    signature: inspect.Signature
    param_types: tuple[tuple[str, Any, inspect.Parameter.kind], ...]
    description: str


def _describe(func: Callable) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def _exported(cls: type) -> dict[str, ExportedMethod]:
    methods: dict[str, ExportedMethod] = {}
    for name in dir(cls):
        func = getattr(cls, name, None)
        # An override of an exported method stays exported, with or without the decorator.
        mark = next(
            (getattr(base.__dict__[name], _EXPORT_ATTR) for base in cls.__mro__
             if hasattr(base.__dict__.get(name), _EXPORT_ATTR)),
            None,
        )
        if mark is None or not callable(func):
            continue
        raw = inspect.unwrap(func)
        try:
            hints = typing.get_type_hints(raw)
        except Exception:  # noqa: BLE001 - unresolvable annotations fall back to "any type"
            hints = {}
        kind = mark if mark is MethodKind.BYTESTREAM else _call_kind(raw, hints)
        signature = inspect.signature(func)
        params = tuple(
            (p.name, hints.get(p.name, Any), p.kind) for p in list(signature.parameters.values())[1:]
        )
        methods[name] = ExportedMethod(
            name=name,
            kind=kind,
            is_async=inspect.iscoroutinefunction(raw) or inspect.isasyncgenfunction(raw),
            signature=signature,
            param_types=params,
            description=_describe(func),
        )
    return methods


class DriverMeta(ABCMeta):
    """Checks a driver's keyword configuration before the dataclass sees it."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if args:
            raise ConfigurationError(
                f"{cls.__name__}: drivers are configured by keyword only, got {len(args)} positional "
                f"argument(s); write {cls.__name__}(name=value, ...)"
            )
        check_config(cls, kwargs)
        return super().__call__(**kwargs)


@cache
def _config_fields(cls: type) -> dict[str, Any]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a driver with unresolvable hints still gets the unknown-field check
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in fields(cls) if f.init}


def check_config(cls: type, kwargs: dict[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for unknown, mistyped or missing config fields."""
    known = _config_fields(cls)
    for name, value in kwargs.items():
        if name not in known:
            raise ConfigurationError(
                f"{cls.__name__}: unknown config field '{name}'; expected one of: {', '.join(sorted(known))}"
            )
        expected = known[name]
        if not conforms(value, expected):
            raise ConfigurationError(
                f"{cls.__name__}: config field '{name}' expects {type_name(expected)}, "
                f"got {value!r} ({type(value).__name__})"
            )
    missing = [
        f.name
        for f in fields(cls)
        if f.init and f.default is MISSING and f.default_factory is MISSING and f.name not in kwargs
    ]
    if missing:
        raise ConfigurationError(f"{cls.__name__}: missing required config field(s): {', '.join(missing)}")
    children = kwargs.get("children", {})
    for name, expected in getattr(cls, "required_children", {}).items():
        child = children.get(name)
        if child is None:
            raise ConfigurationError(
                f"{cls.__name__}: missing required child '{name}' (expected {type_name(expected)}); "
                f"add it under children: {name}"
            )
        if not isinstance(child, expected):
            raise ConfigurationError(
                f"{cls.__name__}: child '{name}' must be {type_name(expected)}, got {type(child).__name__}"
            )


def type_name(tp: Any) -> str:
    """A readable name for a type annotation, for error messages."""
    if isinstance(tp, type):
        return tp.__name__
    if isinstance(tp, tuple):
        return " or ".join(type_name(t) for t in tp)
    return str(tp).replace("typing.", "")


def conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` is acceptable for annotation ``tp`` (config checking, not a full type checker)."""
    if tp is Any or tp is object:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return conforms(value, typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return any(conforms(value, arg) for arg in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin is ClassVar:
        return True
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (os.PathLike,) or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        return isinstance(value, (str, os.PathLike))
    if origin in (list, tuple, set, frozenset) or origin is typing.Sequence:
        if not isinstance(value, (list, tuple, set, frozenset)):
            return False
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return all(conforms(v, args[0]) for v in value) if len(args) == 1 else True
    if origin in (dict, typing.Mapping) or origin is typing.MutableMapping:
        if not isinstance(value, dict):
            return False
        args = typing.get_args(tp)
        return not args or all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
    if origin is not None:
        return isinstance(value, origin) if isinstance(origin, type) else True
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


@dataclass(kw_only=True)
class Driver(metaclass=DriverMeta):
    """Base of every driver: a dataclass configured by keyword, hosted by a :class:`Session`.

    Subclasses are ``@dataclass(kw_only=True)``, mark client-callable methods with
    :func:`export` or :func:`exportstream`, and name their client class in :meth:`client`.
    ``required_children`` maps child names a driver cannot work without to the driver type
    each must be; a missing one fails construction with :class:`ConfigurationError`.
    """

    required_children: ClassVar[dict[str, type | tuple[type, ...]]] = {}
    #: Exported methods of the interface this driver cannot do (they raise NotImplementedError);
    #: the report names them (label :data:`UNSUPPORTED_LABEL`), so a test can skip instead of fail.
    unsupported: ClassVar[frozenset[str]] = frozenset()

    children: dict[str, Driver] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    methods_description: dict[str, str] = field(default_factory=dict)

    uuid: UUID = field(default_factory=uuid4, init=False)
    logger: logging.LoggerAdapter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.logger = logging.LoggerAdapter(
            logging.getLogger(f"driver.{type(self).__name__}"), {"driver_uuid": self.uuid}
        )
        for name, child in self.children.items():
            if not isinstance(child, Driver):
                raise ConfigurationError(
                    f"{type(self).__name__}: child '{name}' must be a Driver, got {type(child).__name__}"
                )

    @classmethod
    def client(cls) -> str:
        """Import path of the client class that drives this driver from a test."""
        return GENERIC_CLIENT

    @classmethod
    def exported_methods(cls) -> dict[str, ExportedMethod]:
        """The methods a client may call, by name."""
        return _exported_cached(cls)

    def describe_methods(self) -> dict[str, str]:
        """Method descriptions for the report: the configured ones over the docstrings."""
        described = {name: m.description for name, m in self.exported_methods().items() if m.description}
        return described | self.methods_description

    def unsupported_methods(self) -> frozenset[str]:
        """Exported methods this driver cannot do (:attr:`unsupported`)."""
        return self.unsupported

    def close(self) -> None:
        """Release what the driver holds; reaches the whole tree (children first)."""
        for child in self.children.values():
            child.close()

    def reset(self) -> None:
        """Bring the driver back to its initial state; reaches the whole tree."""
        for child in self.children.values():
            child.reset()

    def walk(self, name: str | None = None, parent: Driver | None = None) -> Iterator[tuple[Driver, Driver | None, str | None]]:
        """Yield ``(driver, parent, name)`` for the tree, parents before children."""
        yield self, parent, name
        for child_name, child in self.children.items():
            yield from child.walk(child_name, self)


_exported_cached = cache(_exported)
