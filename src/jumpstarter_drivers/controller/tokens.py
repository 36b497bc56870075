"""Tokens the controller issues to clients and exporters, and who a call comes from.

A token is shown once when issued; etcd keeps only its SHA-256 digest with the holder's kind, name
and namespace. It is shaped like a compact JWT (three base64url parts) because Jumpstarter's ``jmp``
decodes the middle part of its token to look for an expiry; the first two parts only describe the
holder, the third is 32 random bytes, and the whole string is what is checked, so editing the
description makes an unknown token. Calls carry it as upstream does: gRPC metadata
``authorization: Bearer <token>``, ``jumpstarter-kind``, ``jumpstarter-namespace`` and
``jumpstarter-name``. Every call reads etcd, so a revoked token is refused on its next call.

>>> digest("abc") == digest("abc") != digest("abd")
True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from ..core.errors import JumpstarterError
from . import CLIENT, DEFAULT_NAMESPACE, EXPORTER
from .priority import HIGHEST

if TYPE_CHECKING:
    from .store import Store

KINDS = (CLIENT, EXPORTER)
#: Names of clients, exporters and namespaces: what Kubernetes allows for an object name.
NAME = re.compile(r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?")
#: ``iss`` of the tokens this controller issues.
ISSUER = "jumpstarter-toolkit-controller"


class Refused(JumpstarterError):
    """A call the controller refuses, with the gRPC status it answers."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Identity:
    """Who made a call: a client or an exporter, by name, in a namespace."""

    kind: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    #: Highest lease priority this client may ask for (:mod:`.priority`).
    max_priority: int = 0

    def __str__(self) -> str:
        return f"{self.kind.lower()} {self.name}"


def digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_shaped(claims: dict[str, object]) -> str:
    """A new token: ``claims`` readable by anyone in JWT form, then 32 random bytes (no expiry claim).

    >>> token = jwt_shaped({"sub": "client:default:ci"})
    >>> header, claims, secret = token.split(".")
    >>> json.loads(base64.urlsafe_b64decode(claims + "==")), len(base64.urlsafe_b64decode(secret + "=="))
    ({'sub': 'client:default:ci'}, 32)
    """
    header = json.dumps({"alg": "none", "typ": "JWT"}, separators=(",", ":")).encode()
    body = json.dumps(claims, separators=(",", ":")).encode()
    return ".".join((_segment(header), _segment(body), _segment(secrets.token_bytes(32))))


def check_name(name: str, what: str) -> str:
    """``name`` if it is a valid object name, else a ConfigurationError-like refusal naming ``what``."""
    if not NAME.fullmatch(name or ""):
        raise JumpstarterError(
            f"{what} {name!r} is not a valid name: lower-case letters, digits, '-' and '.', starting and ending "
            "with a letter or digit"
        )
    return name


def kind_of(text: str) -> str:
    """``Client`` or ``Exporter`` from any spelling (``client``, ``EXPORTER``)."""
    for kind in KINDS:
        if text.lower() == kind.lower():
            return kind
    raise JumpstarterError(f"kind {text!r}: expected client or exporter")


async def issue(
    store: Store,
    kind: str,
    name: str,
    namespace: str = DEFAULT_NAMESPACE,
    labels: dict[str, str] | None = None,
    max_priority: int = 0,
) -> str:
    """A new token for ``kind`` ``name`` (the only time it is seen in clear). An exporter's ``labels``
    go into its record, as an administrator's labels; a client's ``max_priority`` (0..100) is the
    highest lease priority it may ask for."""
    kind = kind_of(kind)
    check_name(name, f"{kind.lower()} name")
    check_name(namespace, "namespace")
    if max_priority and (kind != CLIENT or not 0 <= max_priority <= HIGHEST):
        raise JumpstarterError(f"max priority {max_priority}: a client's token may allow 0 to {HIGHEST}")
    issued = time.time()
    token = jwt_shaped({"iss": ISSUER, "sub": f"{kind.lower()}:{namespace}:{name}", "iat": int(issued)})
    record = {"kind": kind, "name": name, "namespace": namespace, "issued": issued}
    if max_priority:
        record["max_priority"] = max_priority
    await store.add_token(digest(token), record)
    if kind == EXPORTER and labels:
        await store.update_exporter(name, lambda value: {**value, "name": name, "admin_labels": dict(labels)})
    return token


async def rotate(store: Store, metadata: Iterable[tuple[str, str | bytes]], kind: str) -> str:
    """A new token for the holder of the call's token, which stops working (``jmp auth rotate``)."""
    identity = await identify(store, metadata, kind)
    old, _ = bearer(metadata)
    token = await issue(store, identity.kind, identity.name, identity.namespace, max_priority=identity.max_priority)
    await store.remove_token(digest(old))
    return token


async def revoke(store: Store, kind: str, name: str, namespace: str = DEFAULT_NAMESPACE) -> int:
    """Revoke every token of ``kind`` ``name``; the number revoked."""
    kind = kind_of(kind)
    count = 0
    for record in await store.tokens():
        value = record.value
        if (value.get("kind"), value.get("name"), value.get("namespace")) == (kind, name, namespace):
            await store.remove_token(record.name)
            count += 1
    return count


def bearer(metadata: Iterable[tuple[str, str | bytes]]) -> tuple[str, dict[str, str]]:
    """The Bearer token and the other metadata of a call (keys lower-cased)."""
    values = {
        key.lower(): value if isinstance(value, str) else value.decode(errors="replace") for key, value in metadata
    }
    scheme, _, token = values.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            "no token: send 'authorization: Bearer <token>' metadata (a token from `jumpstarter controller token "
            "create`)",
        )
    return token.strip(), values


async def identify(store: Store, metadata: Iterable[tuple[str, str | bytes]], kind: str) -> Identity:
    """The identity behind a call's token, which must belong to a ``kind`` (Client or Exporter)."""
    token, values = bearer(metadata)
    record = await store.token(digest(token))
    if record is None:
        raise Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown or revoked token")
    identity = Identity(
        record["kind"], record["name"], record.get("namespace", DEFAULT_NAMESPACE), int(record.get("max_priority", 0))
    )
    if identity.kind != kind:
        raise Refused(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this call is for {kind.lower()}s, and the token belongs to {identity}",
        )
    claimed = {
        "jumpstarter-kind": identity.kind,
        "jumpstarter-name": identity.name,
        "jumpstarter-namespace": identity.namespace,
    }
    for key, expected in claimed.items():
        given = values.get(key)
        if given is not None and not hmac.compare_digest(given.lower(), expected.lower()):
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED, f"metadata {key}: {given!r} does not match the token's {expected!r}"
            )
    return identity
