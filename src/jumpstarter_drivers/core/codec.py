"""Values on the wire: Python objects to ``google.protobuf.Value`` and back.

The wire keeps Jumpstarter's rules (the JSON form of the value; every number is a double),
and types are restored at the edges from annotations. Between our own client and session,
negotiated per call like batching, results travel as JSON text instead, so an ``int`` stays an
``int`` (:func:`to_json`):

>>> restore(decode(encode(3)), int)
3
>>> decode(encode(3))
3.0
>>> restore({"voltage": 5.0, "current": 2.0}, dict[str, float])
{'voltage': 5.0, 'current': 2.0}
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import os
import types
import typing
from pathlib import PurePath
from typing import Any, Literal, Union
from uuid import UUID

from google.protobuf import struct_pb2

from .errors import DriverInvalidArgument

Value = struct_pb2.Value


def to_jsonable(obj: Any) -> Any:
    """The JSON form of ``obj``: dataclasses and models become objects, UUIDs and times strings."""
    if obj is None or isinstance(obj, (bool, str, int, float)):
        return obj.value if isinstance(obj, enum.Enum) else obj
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, (UUID, PurePath)):
        return str(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DriverInvalidArgument(
                "bytes on the wire must be UTF-8 text; send binary data through a byte stream or resource"
            ) from exc
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise DriverInvalidArgument(f"cannot send a {type(obj).__name__} over the wire: {obj!r}")


def _fill(value: Value, obj: Any) -> None:
    if obj is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif obj is True or obj is False:
        value.bool_value = obj
    elif isinstance(obj, str):
        value.string_value = obj
    elif isinstance(obj, (int, float)):
        value.number_value = obj
    elif isinstance(obj, dict):
        fields = value.struct_value.fields
        for k, v in obj.items():
            _fill(fields[k], v)
        if not obj:
            value.struct_value.SetInParent()
    else:
        values = value.list_value.values
        for v in obj:
            _fill(values.add(), v)
        if not obj:
            value.list_value.SetInParent()


def encode(obj: Any) -> Value:
    """Encode a Python value as a protobuf ``Value``."""
    value = Value()
    _fill(value, to_jsonable(obj))
    return value


def encode_into(target: Any, obj: Any) -> None:
    """Encode ``obj`` into an existing ``Value`` field (a message's ``result`` or a repeated ``add()``)."""
    _fill(target, to_jsonable(obj))


def to_json(obj: Any) -> str:
    """The JSON text of ``obj``: what our own peers exchange, keeping ints apart from floats.

    >>> from_json(to_json({"count": 5, "volts": 5.0, "big": 2**60}))
    {'count': 5, 'volts': 5.0, 'big': 1152921504606846976}
    """
    return json.dumps(to_jsonable(obj), separators=(",", ":"))


def from_json(text: str) -> Any:
    """Decode :func:`to_json`'s text."""
    return json.loads(text)


def decode(value: Value) -> Any:
    """Decode a protobuf ``Value`` to plain Python (numbers are floats, as on the wire)."""
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: decode(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [decode(v) for v in value.list_value.values]
    return None


def restore(obj: Any, tp: Any) -> Any:
    """Give a decoded value back the type of annotation ``tp``; ``ValueError`` when it cannot fit."""
    if tp is Any or tp is object:
        return obj
    if tp is None or tp is type(None):
        if obj is not None:
            raise ValueError(f"expected null, got {obj!r}")
        return None
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return restore(obj, typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if obj is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return restore(obj, arg)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{obj!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if obj not in typing.get_args(tp):
            raise ValueError(f"expected one of {typing.get_args(tp)}, got {obj!r}")
        return obj
    if tp is int:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj) or obj != int(obj):
            raise ValueError(f"expected an integer, got {obj!r}")
        return int(obj)
    if tp is float:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)):
            raise ValueError(f"expected a number, got {obj!r}")
        return float(obj)
    if tp is bool:
        if not isinstance(obj, bool):
            raise ValueError(f"expected true or false, got {obj!r}")
        return obj
    if tp is str:
        if not isinstance(obj, str):
            raise ValueError(f"expected a string, got {obj!r}")
        return obj
    if tp is bytes:
        if not isinstance(obj, str):
            raise ValueError(f"expected text for bytes, got {obj!r}")
        return obj.encode("utf-8")
    if origin in (list, set, frozenset, tuple) or tp in (list, tuple, set):
        if not isinstance(obj, list):
            raise ValueError(f"expected a list, got {obj!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(obj):
                raise ValueError(f"expected {len(args)} items, got {len(obj)}")
            return tuple(restore(v, a) for v, a in zip(obj, args, strict=True))
        item = args[0] if args else Any
        return (origin or tp)(restore(v, item) for v in obj)
    if origin is dict or tp is dict or origin is typing.Mapping:
        if not isinstance(obj, dict):
            raise ValueError(f"expected an object, got {obj!r}")
        args = typing.get_args(tp)
        vt = args[1] if args else Any
        return {k: restore(v, vt) for k, v in obj.items()}
    if isinstance(tp, type):
        if isinstance(obj, tp):
            return obj
        if issubclass(tp, enum.Enum):
            return tp(obj)
        if issubclass(tp, (UUID, PurePath)):
            return tp(obj)
        if tp is datetime.datetime:
            return datetime.datetime.fromisoformat(obj)
        if dataclasses.is_dataclass(tp):
            if not isinstance(obj, dict):
                raise ValueError(f"expected an object for {tp.__name__}, got {obj!r}")
            hints = typing.get_type_hints(tp)
            known = {f.name for f in dataclasses.fields(tp) if f.init}
            return tp(**{k: restore(v, hints.get(k, Any)) for k, v in obj.items() if k in known})
        if hasattr(tp, "model_validate"):
            return tp.model_validate(obj)
    return obj
