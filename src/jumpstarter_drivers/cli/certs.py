"""A self-signed TLS certificate for ``jumpstarter serve --listen`` on a lab network.

Clients trust it by being given the certificate itself as their CA (``JMP_GRPC_CA``).
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from pathlib import Path

from ..core.errors import ConfigurationError

logger = logging.getLogger(__name__)


def subject_alt_names(hosts: list[str]) -> str:
    """The ``subjectAltName`` value naming ``hosts`` (IP addresses and DNS names).

    >>> subject_alt_names(["127.0.0.1", "lab1"])
    'IP:127.0.0.1,DNS:lab1'
    """
    names = []
    for host in hosts:
        try:
            names.append(f"IP:{ipaddress.ip_address(host)}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def write_self_signed(directory: str | Path, hosts: list[str], days: int = 365) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (EC P-256, valid for ``hosts``) into ``directory``.

    Returns ``(certificate, key)``; the key file is readable by its owner only.
    """
    if not hosts:
        raise ConfigurationError("a certificate needs at least one host name or IP address clients use")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigurationError("the openssl command is needed to make a certificate; install openssl")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-days", str(days), "-subj", f"/CN={hosts[0]}", "-addext", f"subjectAltName={subject_alt_names(hosts)}",
        "-keyout", str(key), "-out", str(cert),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit code {result.returncode}"
        raise ConfigurationError(f"openssl could not make a certificate in {directory}: {reason}")
    key.chmod(0o600)
    logger.info("wrote %s and %s for %s", cert, key, ", ".join(hosts))
    return cert, key
