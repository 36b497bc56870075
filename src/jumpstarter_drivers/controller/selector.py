"""Label selectors in Kubernetes syntax, and the protocol's ``LabelSelector`` message.

Requirements are separated by commas; all must hold:

>>> selector = Selector.parse("board=rpi4, arch in (arm64,riscv64), !broken")
>>> selector.matches({"board": "rpi4", "arch": "arm64"})
True
>>> selector.matches({"board": "rpi4", "arch": "arm64", "broken": "yes"})
False
>>> str(selector)
'board=rpi4,arch in (arm64,riscv64),!broken'
>>> Selector.parse("board in (rpi4")
Traceback (most recent call last):
...
jumpstarter_drivers.controller.selector.SelectorError: selector 'board in (rpi4': at the end: expected ',' or ')' closing the value list of 'board'
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ..core.errors import JumpstarterError

#: A label name: an optional DNS-subdomain prefix and '/', then up to 63 of [A-Za-z0-9-_.], alphanumeric at both ends.
_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
KEY = re.compile(rf"(?:[a-z0-9](?:[-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}")
VALUE = re.compile(rf"(?:{_NAME})?")
_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|[^\s!=(),]+)")


class SelectorError(JumpstarterError, ValueError):
    """A selector that cannot be parsed or converted; the message says where and what was expected."""


class Operator(str, Enum):
    """A requirement's operator, spelled as in ``LabelSelectorRequirement.operator``."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True)
class Requirement:
    """One condition on one label."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator is Operator.EXISTS:
            return self.key in labels
        if self.operator is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        if self.operator is Operator.IN:
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.operator is Operator.EXISTS:
            return self.key
        if self.operator is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if len(self.values) == 1:
            return f"{self.key}{'=' if self.operator is Operator.IN else '!='}{self.values[0]}"
        word = "in" if self.operator is Operator.IN else "notin"
        return f"{self.key} {word} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """All of ``requirements`` (an empty selector matches everything)."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement.matches(labels) for requirement in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse Kubernetes selector syntax: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
        ``k notin (a,b)``, ``k``, ``!k``, separated by commas."""
        return _Parser(text).parse()

    @classmethod
    def from_proto(cls, message: object) -> Selector:
        """From a ``jumpstarter.v1.LabelSelector``: ``match_labels`` become ``key=value``."""
        requirements = [
            _checked(Requirement(key, Operator.IN, (value,)), "match_labels")
            for key, value in sorted(message.match_labels.items())  # type: ignore[attr-defined]
        ]
        for expression in message.match_expressions:  # type: ignore[attr-defined]
            try:
                operator = Operator(expression.operator)
            except ValueError:
                raise SelectorError(
                    f"label selector: operator {expression.operator!r} of key {expression.key!r} is not one of "
                    f"{', '.join(op.value for op in Operator)}"
                ) from None
            requirement = Requirement(expression.key, operator, tuple(expression.values))
            requirements.append(_checked(requirement, "match_expressions"))
        return cls(tuple(requirements))

    def to_proto(self) -> object:
        """A ``jumpstarter.v1.LabelSelector``: single-valued ``=`` in ``match_labels``, the rest as expressions."""
        from jumpstarter_protocol.jumpstarter.v1 import kubernetes_pb2

        message = kubernetes_pb2.LabelSelector()
        for requirement in self.requirements:
            simple = requirement.operator is Operator.IN and len(requirement.values) == 1
            if simple and requirement.key not in message.match_labels:
                message.match_labels[requirement.key] = requirement.values[0]
            else:
                message.match_expressions.add(
                    key=requirement.key, operator=requirement.operator.value, values=requirement.values
                )
        return message


def _checked(requirement: Requirement, where: str) -> Requirement:
    if not KEY.fullmatch(requirement.key):
        raise SelectorError(f"label selector {where}: {requirement.key!r} is not a valid label key")
    for value in requirement.values:
        if not VALUE.fullmatch(value):
            raise SelectorError(
                f"label selector {where}: value {value!r} of {requirement.key!r} is not a valid label value"
            )
    needs_values = requirement.operator in (Operator.IN, Operator.NOT_IN)
    if needs_values != bool(requirement.values):
        has = "needs values" if needs_values else "takes no values"
        raise SelectorError(f"label selector {where}: {requirement.operator.value} on {requirement.key!r} {has}")
    return requirement


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[int, str]] = []
        position = 0
        while position < len(text):
            if text[position:].strip() == "":
                break
            match = _TOKEN.match(text, position)
            assert match is not None  # the last alternative takes any other character
            self.tokens.append((match.start(1), match.group(1)))
            position = match.end()
        self.index = 0

    def fail(self, expected: str) -> SelectorError:
        where = f"at character {self.tokens[self.index][0] + 1}" if self.index < len(self.tokens) else "at the end"
        return SelectorError(f"selector {self.text!r}: {where}: expected {expected}")

    def peek(self) -> str | None:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.index += 1
        return token

    def parse(self) -> Selector:
        if self.peek() is None:
            raise SelectorError(
                "empty selector: give at least one requirement, e.g. board=rpi4, 'arch in (arm64,riscv64)' or !broken"
            )
        requirements = [self.requirement()]
        while self.peek() is not None:
            if self.take() != ",":
                self.index -= 1
                raise self.fail("',' between requirements")
            requirements.append(self.requirement())
        return Selector(tuple(requirements))

    def key(self) -> str:
        token = self.peek()
        if token is None or not KEY.fullmatch(token):
            raise self.fail("a label key (letters, digits, '-', '_', '.', an optional 'prefix/')")
        self.index += 1
        return token

    def value(self, key: str) -> str:
        token = self.peek()
        if token in (",", ")", None):
            return ""  # an empty value is a valid label value
        if not VALUE.fullmatch(token):
            raise self.fail(f"a label value for {key!r} (up to 63 letters, digits, '-', '_', '.')")
        self.index += 1
        return token

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.index += 1
            return Requirement(self.key(), Operator.DOES_NOT_EXIST)
        key = self.key()
        token = self.peek()
        if token in (None, ","):
            return Requirement(key, Operator.EXISTS)
        if token in ("=", "=="):
            self.index += 1
            return Requirement(key, Operator.IN, (self.value(key),))
        if token == "!=":
            self.index += 1
            return Requirement(key, Operator.NOT_IN, (self.value(key),))
        if token in ("in", "notin"):
            self.index += 1
            return Requirement(key, Operator.IN if token == "in" else Operator.NOT_IN, self.values(key))
        raise self.fail(f"=, ==, !=, in or notin after {key!r}, or ',' before the next requirement")

    def values(self, key: str) -> tuple[str, ...]:
        if self.take() != "(":
            self.index -= 1
            raise self.fail(f"'(' opening the value list of {key!r}")
        if self.peek() == ")":
            raise self.fail(f"at least one value for {key!r} in the parentheses")
        values = [self.value(key)]
        while True:
            token = self.take()
            if token == ")":
                return tuple(values)
            if token != ",":
                self.index -= 1
                raise self.fail(f"',' or ')' closing the value list of {key!r}")
            values.append(self.value(key))
