"""The driver reference, generated from the drivers' code: configuration fields and exported methods.

One source serves ``jumpstarter drivers``, ``jumpstarter drivers NAME`` and the documentation
site's driver page. A field's meaning comes, in this order, from ``field(metadata={"doc": ...})``,
a ``#:`` comment or a string literal beside the field in the class body, or the sentences of the
class docstring that name the field in double backquotes.

>>> power = describe("MockPower")
>>> power.path
'jumpstarter_drivers.power.driver.MockPower'
>>> [method.name for method in power.methods][:3]
['off', 'on', 'read']
>>> print(describe("PySerial").field("baudrate").line())
baudrate: int = 115200
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from dataclasses import MISSING, dataclass
from functools import cache
from typing import Any

from ..core.config import BUILTIN_DRIVERS, DriverRegistry
from ..core.driver import Driver, type_name
from ..core.errors import ConfigurationError
from .drivers import plain

#: Fields every driver has (from :class:`~jumpstarter_drivers.core.driver.Driver`), documented once.
COMMON_FIELDS = tuple(f.name for f in dataclasses.fields(Driver) if f.init)


@dataclass(frozen=True)
class FieldDoc:
    """One configuration field: its name, type, default (``None`` when required) and meaning."""

    name: str
    type: str
    default: str | None
    doc: str

    def line(self) -> str:
        """``name: type = default`` (``(required)`` without a default)."""
        return f"{self.name}: {self.type} = {self.default}" if self.default is not None else (
            f"{self.name}: {self.type} (required)"
        )


@dataclass(frozen=True)
class MethodDoc:
    """One exported method: name, how it is called (unary, streaming, bytestream), signature, docstring."""

    name: str
    kind: str
    signature: str
    doc: str

    @property
    def summary(self) -> str:
        """The docstring's first paragraph on one line."""
        return " ".join(self.doc.split("\n\n")[0].split())


@dataclass(frozen=True)
class DriverDoc:
    """Everything the reference says about one driver class."""

    name: str
    path: str
    client: str
    doc: str
    fields: tuple[FieldDoc, ...]
    methods: tuple[MethodDoc, ...]

    @property
    def summary(self) -> str:
        """The docstring's first sentence or paragraph, on one line."""
        return " ".join(self.doc.split("\n\n")[0].split())

    def field(self, name: str) -> FieldDoc:
        """The field called ``name``."""
        return next(f for f in self.fields if f.name == name)

    def as_dict(self) -> dict[str, Any]:
        """Plain data, for ``--json``."""
        return dataclasses.asdict(self)


def bundled_names() -> list[str]:
    """The short names of the drivers that come with the toolkit (what ``type:`` accepts)."""
    return sorted(BUILTIN_DRIVERS)


def describe(name: str, registry: DriverRegistry | None = None) -> DriverDoc:
    """The reference of the driver ``name`` (a short name or an import path)."""
    cls = (registry or DriverRegistry(entry_points=False)).resolve(name)
    return describe_class(cls, name if name in BUILTIN_DRIVERS else cls.__name__)


@cache
def describe_class(cls: type[Driver], name: str) -> DriverDoc:
    """The reference of the Driver class ``cls``, listed as ``name``."""
    return DriverDoc(
        name=name,
        path=f"{cls.__module__}.{cls.__qualname__}",
        client=_client(cls),
        doc=inspect.getdoc(cls) or "",
        fields=tuple(_fields(cls)),
        methods=tuple(_methods(cls)) if isinstance(inspect.getattr_static(cls, "exported_methods"), classmethod) else (),
    )


def _client(cls: type[Driver]) -> str:
    """The client class path, or what decides it for a driver that chooses per instance (a proxy)."""
    if isinstance(inspect.getattr_static(cls, "client"), classmethod):
        return cls.client()
    return inspect.getdoc(cls.client) or "chosen per instance"


def describe_all() -> list[DriverDoc]:
    """The reference of every bundled driver; a family that fails to import is an error naming it."""
    registry = DriverRegistry(entry_points=False)
    docs = []
    for name in bundled_names():
        try:
            docs.append(describe(name, registry))
        except ConfigurationError as exc:
            raise ConfigurationError(f"driver reference: {name}: {exc}") from None
    return docs


def _fields(cls: type) -> list[FieldDoc]:
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations are shown as written
        hints = {}
    result = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name.startswith("_") or f.name in COMMON_FIELDS:
            continue
        hint = hints.get(f.name, f.type)
        result.append(FieldDoc(f.name, _type_text(hint), _default(f), _field_doc(cls, f)))
    return result


def _type_text(hint: Any) -> str:
    """A field's type as a reader writes it.

    >>> _type_text(int | None)
    'int | None'
    >>> _type_text(dict[str, str])
    'dict[str, str]'
    """
    if isinstance(hint, str):
        return hint
    return type_name(hint).replace("NoneType", "None")


def _default(f: dataclasses.Field) -> str | None:
    if f.default is not MISSING:
        return repr(f.default)
    if f.default_factory is not MISSING:
        return repr(f.default_factory())
    return None


def _field_doc(cls: type, f: dataclasses.Field) -> str:
    """The field's meaning: its metadata, else the nearest class in the MRO that says something about it."""
    if f.metadata.get("doc"):
        return str(f.metadata["doc"])
    for base in cls.__mro__:
        if f.name in inspect.get_annotations(base):
            said = _attribute_docs(base).get(f.name) or _sentences_naming(inspect.getdoc(base) or "", f.name)
            if said:
                return said
    return ""


@cache
def _attribute_docs(cls: type) -> dict[str, str]:
    """``#:`` comments above, and string literals below, the annotated fields of ``cls``'s body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for i, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comments = []
        row = node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#:"):
            comments.insert(0, lines[row].strip()[2:].strip())
            row -= 1
        after = body[i + 1] if i + 1 < len(body) else None
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            comments.append(inspect.cleandoc(after.value.value))
        if comments:
            docs[node.target.id] = " ".join(" ".join(comments).split())
    return docs


_SENTENCE_END = re.compile(r"(?<=[.;:])\s+(?=[A-Z`(])")


def _sentences_naming(doc: str, name: str) -> str:
    """The sentences of ``doc`` that name ``name`` in double backquotes.

    >>> _sentences_naming("A console. ``url`` is a device path. With ``check_present`` it is opened.", "url")
    '``url`` is a device path.'
    """
    text = " ".join(doc.split())
    marker = f"``{name}``"
    return " ".join(s for s in _SENTENCE_END.split(text) if marker in s)


def _methods(cls: type[Driver]) -> list[MethodDoc]:
    result = []
    for name, method in sorted(cls.exported_methods().items()):
        doc = inspect.getdoc(getattr(cls, name)) or ""
        result.append(MethodDoc(name, method.kind.value, signature_text(name, method.signature), doc))
    return result


def signature_text(name: str, signature: inspect.Signature) -> str:
    """``name(arg: type = default) -> type`` without ``self``, annotations as written in the code.

    >>> def cycle(self, wait: float = 2.0) -> None: ...
    >>> signature_text("cycle", inspect.signature(cycle))
    'cycle(wait: float = 2.0) -> None'
    """
    parts: list[str] = []
    star = False
    for p in signature.parameters.values():
        if p.name in ("self", "cls") and not parts and not star:
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        if p.kind is p.VAR_POSITIONAL:
            star = True
        elif p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = prefix + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    returns = signature.return_annotation
    tail = f" -> {_annotation(returns)}" if returns is not signature.empty else ""
    return f"{name}({', '.join(parts)}){tail}"


def _annotation(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else _type_text(annotation)


def terminal(text: str) -> str:
    """Docstring text for a terminal: no reST roles, single backquotes.

    >>> terminal("Its child ``serial``, a :class:`~jumpstarter_drivers.pyserial.driver.PySerial`.")
    'Its child `serial`, a PySerial.'
    """
    return plain(text).replace("``", "`")


def text_lines(doc: DriverDoc) -> list[str]:
    """``jumpstarter drivers NAME``: the driver's reference as terminal text."""
    lines = [f"{doc.name} ({doc.path})", f"client: {doc.client}", "", *terminal(doc.doc).splitlines()]
    lines += ["", "Configuration fields" + ("" if doc.fields else ": none of its own")]
    for f in doc.fields:
        lines.append(f"  {f.line()}")
        lines += [f"      {line}" for line in textwrap.wrap(terminal(f.doc), 90)]
    lines += [
        f"  (and the fields every driver has: {', '.join(COMMON_FIELDS)})",
        "",
        "Methods" + ("" if doc.methods else ": none"),
    ]
    for m in doc.methods:
        lines.append(f"  {m.signature}" + (f"  [{m.kind}]" if m.kind != "unary" else ""))
        lines += [f"      {line}" for line in textwrap.wrap(terminal(m.summary), 90)]
    return lines


def markdown(docs: list[DriverDoc]) -> str:
    """The driver reference page of the documentation site."""
    out = [
        "# Driver reference",
        "",
        "Generated from the drivers' code when the site is built; `jumpstarter drivers NAME` prints the same.",
        "Every driver also takes the fields " + ", ".join(f"`{n}`" for n in COMMON_FIELDS)
        + " (see [Describing a lab](../lab.md)).",
        "",
        "| Driver | What it is |",
        "| --- | --- |",
    ]
    out += [f"| [`{d.name}`](#{d.name.lower()}) | {_cell(d.summary)} |" for d in docs]
    for d in docs:
        out += ["", f"## {d.name}", "", f"`type: {d.name}` (`{d.path}`), client `{d.client}`.", "", plain(d.doc), ""]
        if d.fields:
            out += ["### Configuration", "", "| Field | Type | Default | Meaning |", "| --- | --- | --- | --- |"]
            for f in d.fields:
                default = f"`{f.default}`" if f.default is not None else "required"
                out.append(f"| `{f.name}` | `{_cell(f.type)}` | {_cell(default)} | {_cell(f.doc)} |")
            out.append("")
        if d.methods:
            out += ["### Methods", ""]
            for m in d.methods:
                kind = "" if m.kind == "unary" else f" ({m.kind})"
                out += [f"- `{m.signature}`{kind}: {_cell(m.summary)}"]
            out.append("")
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return plain(text).replace("|", "\\|").replace("\n", " ")
