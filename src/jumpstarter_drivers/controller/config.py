"""Client and exporter configuration files for a controller, in Jumpstarter's shape.

A client file (``kind: ClientConfig``) and the controller part of an exporter file
(``kind: ExporterConfig``) hold ``metadata: {namespace, name}``, ``endpoint``, ``token`` and
``tls: {ca, insecure}`` (``ca`` is the PEM certificate, base64-encoded), as Jumpstarter's own
files do. ``endpoint`` may list several replicas separated by commas: calls fail over between them.

>>> access = Access.from_document({"metadata": {"name": "ci"}, "endpoint": "lab:8082", "token": "t"}, "Client")
>>> access.endpoints, access.name, access.namespace
(['lab:8082'], 'ci', 'default')
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..core.config import BoundedSafeLoader
from ..core.errors import ConfigurationError
from . import CLIENT, DEFAULT_NAMESPACE, EXPORTER

if TYPE_CHECKING:
    import grpc

API_VERSION = "jumpstarter.dev/v1alpha1"
#: Environment variable naming a client configuration file.
JMP_CLIENT_CONFIG = "JMP_CLIENT_CONFIG"
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.max_send_message_length", 4 << 20),
    ("grpc.keepalive_time_ms", 5000),
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class Access:
    """How a client or an exporter reaches the controller: endpoints, token, TLS, who it is."""

    kind: str
    name: str
    endpoints: list[str]
    token: str
    namespace: str = DEFAULT_NAMESPACE
    ca: bytes | None = None
    insecure: bool = False
    source: str = "<settings>"

    @classmethod
    def from_document(cls, document: Any, kind: str, source: str = "<settings>") -> Access:
        """From a parsed ClientConfig or ExporterConfig document."""
        if not isinstance(document, Mapping):
            raise ConfigurationError(f"{source}: expected a {kind}Config mapping")
        metadata = document.get("metadata") or {}
        endpoint, token = document.get("endpoint"), document.get("token")
        if not isinstance(endpoint, str) or not endpoint.strip():
            raise ConfigurationError(f"{source}: endpoint: give the controller's HOST:PORT (several: comma-separated)")
        if not isinstance(token, str) or not token.strip():
            raise ConfigurationError(f"{source}: token: missing; `jumpstarter controller token create` issues one")
        tls = document.get("tls") or {}
        ca = None
        if tls.get("ca"):
            try:
                ca = base64.b64decode(str(tls["ca"]), validate=True)
            except binascii.Error:
                raise ConfigurationError(f"{source}: tls.ca: not base64 (a PEM certificate, base64-encoded)") from None
        return cls(
            kind=kind,
            name=str(metadata.get("name") or ""),
            namespace=str(metadata.get("namespace") or DEFAULT_NAMESPACE),
            endpoints=[part.strip() for part in endpoint.split(",") if part.strip()],
            token=token.strip(),
            ca=ca,
            insecure=bool(tls.get("insecure")),
            source=source,
        )

    @classmethod
    def load(cls, path: str | os.PathLike, kind: str = CLIENT) -> Access:
        """From a configuration file."""
        try:
            document = yaml.load(Path(path).read_text(), Loader=BoundedSafeLoader)
        except OSError as exc:
            raise ConfigurationError(f"cannot read the {kind.lower()} configuration {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_document(document, kind, str(path))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata upstream sends: Bearer token, kind, namespace, name."""
        items = [("authorization", f"Bearer {self.token}"), ("jumpstarter-kind", self.kind)]
        items.append(("jumpstarter-namespace", self.namespace))
        if self.name:
            items.append(("jumpstarter-name", self.name))
        return tuple(items)

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        """A ``grpc.aio`` channel to ``endpoint`` (a replica or its router) with this TLS setting."""
        import grpc

        if self.insecure:
            return grpc.aio.insecure_channel(endpoint, options=CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.aio.secure_channel(endpoint, credentials, options=CHANNEL_OPTIONS)


def document(
    kind: str,
    name: str,
    endpoint: str,
    token: str,
    ca: bytes | None,
    insecure: bool,
    namespace: str = DEFAULT_NAMESPACE,
) -> dict[str, Any]:
    """A ClientConfig or ExporterConfig document (an exporter's still needs its ``export:``)."""
    return {
        "apiVersion": API_VERSION,
        "kind": f"{kind}Config",
        "metadata": {"namespace": namespace, "name": name},
        "endpoint": endpoint,
        "tls": {"ca": base64.b64encode(ca).decode() if ca else "", "insecure": insecure},
        "token": token,
        **({"export": {}} if kind == EXPORTER else {"drivers": {"allow": [], "unsafe": False}}),
    }


def write(path: str | os.PathLike, content: dict[str, Any]) -> Path:
    """Write a configuration file readable by its owner only (it holds a token)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        yaml.safe_dump(content, file, sort_keys=False)
    return path
