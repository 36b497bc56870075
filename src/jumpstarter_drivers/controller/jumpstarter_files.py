"""Client and exporter configuration files that Jumpstarter 0.9.0's own tools (``jmp``) read as they are.

Our tools read the same files (:class:`~jumpstarter_drivers.controller.config.Access`), so one file
serves both. What Jumpstarter's tools need beyond :func:`~jumpstarter_drivers.controller.config.document`:

- TLS always: ``jmp`` opens only TLS channels (``tls.insecure`` there means "TLS without checking
  the certificate", not plaintext), so a plaintext controller cannot serve them;
- one endpoint: ``jmp`` hands ``endpoint`` to gRPC as one target, so a comma-separated replica list
  does not work there;
- a client's ``drivers.allow``: the client classes ``jmp`` may import for an exporter's drivers
  (glob patterns, e.g. ``jumpstarter_driver_*``); nothing is allowed unless listed or ``unsafe``;
- an exporter's ``export``: the driver tree ``jmp run`` serves;
- no keys Jumpstarter does not know in ``metadata`` (it refuses them): an exporter's selector labels
  live in the controller's record (``token create --label``), not in the file.

>>> doc = jumpstarter_document("Client", "ci", "lab:8082", "t", b"PEM", allow=["jumpstarter_driver_*"])
>>> doc["kind"], doc["endpoint"], doc["drivers"]
('ClientConfig', 'lab:8082', {'allow': ['jumpstarter_driver_*'], 'unsafe': False})
>>> jumpstarter_document("Client", "ci", "a:1,b:2", "t", b"PEM")
Traceback (most recent call last):
...
jumpstarter_drivers.core.errors.ConfigurationError: Jumpstarter's tools take one controller endpoint, not 'a:1,b:2': give --endpoint HOST:PORT
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..core.config import BoundedSafeLoader
from ..core.errors import ConfigurationError
from . import CLIENT, DEFAULT_NAMESPACE, EXPORTER
from .config import document

#: Environment variable that moves Jumpstarter's configuration directory (as ``jmp`` reads it).
JMP_CLIENT_CONFIG_HOME = "JMP_CLIENT_CONFIG_HOME"


def config_home() -> Path:
    """Jumpstarter's configuration directory: ``$JMP_CLIENT_CONFIG_HOME``, else ``$XDG_CONFIG_HOME/jumpstarter``."""
    if os.environ.get(JMP_CLIENT_CONFIG_HOME):
        return Path(os.environ[JMP_CLIENT_CONFIG_HOME])
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "jumpstarter"


def default_path(kind: str, name: str) -> Path:
    """Where ``jmp`` looks for client or exporter ``name`` by alias (``--client NAME``, ``--exporter NAME``)."""
    folder = "clients" if kind == CLIENT else "exporters"
    return config_home() / folder / f"{name}.yaml"


def load_export(path: str | os.PathLike) -> dict[str, Any]:
    """An exporter's driver tree from a YAML file: a whole exporter file (its ``export:``) or the mapping alone."""
    try:
        content = yaml.load(Path(path).read_text(), Loader=BoundedSafeLoader)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the export tree {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(content, Mapping) and "export" in content:
        content = content["export"]
    nodes = content.values() if isinstance(content, Mapping) else ()
    if not nodes or not all(isinstance(node, Mapping) for node in nodes):
        raise ConfigurationError(
            f"{path}: expected a driver tree (name: {{type: ..., config: ...}}) or an exporter file with export:"
        )
    return dict(content)


def jumpstarter_document(
    kind: str,
    name: str,
    endpoint: str,
    token: str,
    ca: bytes | None,
    namespace: str = DEFAULT_NAMESPACE,
    allow: list[str] | None = None,
    unsafe: bool = False,
    export: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ClientConfig or ExporterConfig document both ``jmp`` and our tools read (TLS, one endpoint)."""
    if "," in endpoint:
        raise ConfigurationError(
            f"Jumpstarter's tools take one controller endpoint, not {endpoint!r}: give --endpoint HOST:PORT"
        )
    if ca is None:
        raise ConfigurationError(
            "Jumpstarter's tools speak TLS only and this controller serves plaintext: run `jumpstarter controller` "
            "without --insecure"
        )
    content = document(kind, name, endpoint, token, ca, False, namespace)
    if kind == EXPORTER:
        content["export"] = dict(export or {})
    else:
        content["drivers"] = {"allow": list(allow or []), "unsafe": bool(unsafe)}
    return content
