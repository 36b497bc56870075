"""Reaching a session: by address, from the environment, or served in-process for a test.

>>> from jumpstarter_drivers.power import MockPower
>>> with serve(MockPower()) as client:
...     client.on()
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .allocator import keep_frame_buffers
from .client import AllowList, Connection, DriverClient, build_tree, translate
from .driver import Driver
from .errors import ConfigurationError, ExporterUnreachable, TlsMismatch

logger = logging.getLogger(__name__)

JUMPSTARTER_HOST = "JUMPSTARTER_HOST"
JMP_DRIVERS_ALLOW = "JMP_DRIVERS_ALLOW"
JMP_GRPC_INSECURE = "JMP_GRPC_INSECURE"
JMP_GRPC_PASSPHRASE = "JMP_GRPC_PASSPHRASE"
JMP_GRPC_CA = "JMP_GRPC_CA"
JMP_GRPC_PASSPHRASE_FILE = "JMP_GRPC_PASSPHRASE_FILE"
JMP_GRPC_KEEPALIVE = "JMP_GRPC_KEEPALIVE"
#: ``off`` keeps a client on the address it was given when the session offers a direct endpoint.
JMP_DIRECT = "JMP_DIRECT"

#: Every setting of a connection and its environment variable. The ``jumpstarter`` command's
#: option is ``--NAME``; the pytest plugin's is ``--jumpstarter-NAME`` with the ini key
#: ``jumpstarter_NAME`` (dashes as underscores). The passphrase itself has only its variable
#: (a command line is visible to every user of the machine): give a file on the command line.
CONNECTION_SETTINGS = {
    "host": JUMPSTARTER_HOST,
    "ca": JMP_GRPC_CA,
    "insecure": JMP_GRPC_INSECURE,
    "passphrase-file": JMP_GRPC_PASSPHRASE_FILE,
    "keepalive": JMP_GRPC_KEEPALIVE,
}

#: Seconds between keepalive pings, and how long a ping may go unanswered: an exporter that stops
#: answering (frozen, cut off) fails calls, streams and uploads within about twice this.
DEFAULT_KEEPALIVE = 2.0
MAX_MESSAGE = 64 << 20
#: Seconds a session's direct endpoint has to answer before the client stays where it is.
DIRECT_TIMEOUT = 3.0
#: Direct endpoints (with the client certificate offered for them) that did not answer, not tried
#: again by this process; the next lease's certificate gets a try of its own.
_unreachable: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Address:
    """Where a session listens: a unix socket path or a TCP ``host:port``.

    >>> Address.parse("/run/jmp.sock").target
    'unix:///run/jmp.sock'
    >>> Address.parse("lab1:9000").tcp
    True
    """

    text: str
    target: str
    tcp: bool

    @classmethod
    def parse(cls, text: str | os.PathLike) -> Address:
        text = os.fspath(text).strip()
        if not text:
            raise ConfigurationError(f"{JUMPSTARTER_HOST} is empty; give a unix socket path or host:port")
        if text.startswith("unix://"):
            return cls(text, text, False)
        host, sep, port = text.rpartition(":")
        if sep and "/" not in text and port.isdigit() and host:
            if not 0 < int(port) < 65536:
                raise ConfigurationError(f"exporter address {text!r}: port {port} is not in 1..65535")
            return cls(text, text, True)
        return cls(text, f"unix://{os.path.abspath(text)}", False)


def probe(address: Address, timeout: float) -> None:
    """Fail fast with the OS's reason when nothing listens at ``address`` (before gRPC retries)."""
    if address.tcp:
        host, _, port = address.target.rpartition(":")
        target: object = (host.strip("[]"), int(port))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if not host.replace(".", "").isdigit() and ":" not in host:
            family = socket.AF_UNSPEC
    else:
        target, family = address.target.removeprefix("unix://"), socket.AF_UNIX
    try:
        if family == socket.AF_UNSPEC:
            socket.create_connection(target, timeout=timeout).close()  # type: ignore[arg-type]
        else:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(target)
    except FileNotFoundError:
        raise ExporterUnreachable(
            f"no exporter socket at {target}; start the exporter (or `jumpstarter shell`) and point "
            f"{JUMPSTARTER_HOST} at its socket"
        ) from None
    except (ConnectionRefusedError, socket.gaierror, TimeoutError, OSError) as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ExporterUnreachable(
            f"cannot reach the exporter at {address.text}: {reason}; is it running, and is the address right "
            f"({JUMPSTARTER_HOST} or --jumpstarter-host)?"
        ) from None


def _options(keepalive: float) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.keepalive_time_ms", int(keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # without these gRPC sends one ping per 5 minutes while no data flows: a frozen exporter would go unnoticed
        ("grpc.http2.min_time_between_pings_ms", int(keepalive * 1000)),
        ("grpc.http2.min_ping_interval_without_data_ms", int(keepalive * 1000)),
        ("grpc.http2.ping_timeout_ms", int(keepalive * 1000)),
        # a streaming call waits for its messages in the caller's thread instead of handing each
        # one over from gRPC's channel thread: a short streaming call costs about a unary one.
        # So one thread does all the waiting on such a call (initial_metadata(), iterating);
        # cancel() may come from any thread.
        ("SingleThreadedUnaryStream", 1),
    ]


def _channel(address: Address, keepalive: float, insecure: bool, ca: str | None) -> object:
    import grpc

    options = _options(keepalive)
    if not address.tcp:
        credentials = grpc.local_channel_credentials(grpc.LocalConnectionType.UDS)
        return grpc.secure_channel(address.target, credentials, options=options)
    if insecure:
        return grpc.insecure_channel(address.target, options=options)
    ca = ca or os.environ.get(JMP_GRPC_CA)
    root = None
    if ca:
        try:
            root = Path(ca).read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the CA certificate {ca}: {exc.strerror}") from None
    return grpc.secure_channel(address.target, grpc.ssl_channel_credentials(root_certificates=root), options=options)


def connect(
    address: str | os.PathLike,
    *,
    allow: AllowList | str | None = None,
    timeout: float = 5.0,
    keepalive: float | None = None,
    insecure: bool | None = None,
    passphrase: str | None = None,
    ca: str | None = None,
    passphrase_file: str | os.PathLike | None = None,
) -> DriverClient:
    """Connect to the session at ``address`` and return its root client (close it when done).

    ``allow`` is an :class:`AllowList` or its comma-separated form; ``None`` allows the bundled
    drivers. Settings not given come from the environment (:data:`CONNECTION_SETTINGS`); the
    passphrase from ``passphrase``, ``passphrase_file``, ``$JMP_GRPC_PASSPHRASE`` or
    ``$JMP_GRPC_PASSPHRASE_FILE``, first found. Fails with :class:`ExporterUnreachable` within
    ``timeout`` seconds when nobody answers, at once with :class:`TlsMismatch` when TLS disagrees.
    Once connected, an exporter that stops answering (frozen, cut off) fails calls, streams and
    uploads with :class:`ExporterUnreachable` within about ``2 * keepalive`` seconds
    (``keepalive`` from ``$JMP_GRPC_KEEPALIVE``, default 2); a busy exporter is not taken for a
    frozen one, since gRPC's core answers its pings whatever its drivers are doing.
    """
    from .session import check_passphrase

    parsed = Address.parse(address)
    if not isinstance(allow, AllowList):
        allow = AllowList.parse(allow)
    if keepalive is None:
        keepalive = float(os.environ.get(JMP_GRPC_KEEPALIVE) or DEFAULT_KEEPALIVE)
    source = "passphrase"
    if passphrase is None and passphrase_file is not None:
        passphrase, source = read_passphrase_file(passphrase_file), f"passphrase in {passphrase_file}"
    elif passphrase is None and os.environ.get(JMP_GRPC_PASSPHRASE):
        passphrase, source = os.environ[JMP_GRPC_PASSPHRASE], JMP_GRPC_PASSPHRASE
    elif passphrase is None and os.environ.get(JMP_GRPC_PASSPHRASE_FILE):
        path = os.environ[JMP_GRPC_PASSPHRASE_FILE]
        passphrase, source = read_passphrase_file(path), f"passphrase in {path} ({JMP_GRPC_PASSPHRASE_FILE})"
    if passphrase:
        check_passphrase(passphrase, source)
    if insecure is None:
        insecure = os.environ.get(JMP_GRPC_INSECURE, "") in ("1", "true", "yes")
    if passphrase and insecure and parsed.tcp:
        logger.warning(
            "sending the passphrase in plaintext to %s: anyone on the path can read it and call every driver; "
            "serve with TLS and connect without --insecure unless the network is yours alone",
            parsed.text,
        )
    started = time.monotonic()
    probe(parsed, timeout)
    keep_frame_buffers()  # downloads arrive as frame-sized buffers (see allocator)
    channel = _channel(parsed, keepalive, insecure, ca)
    metadata = (("x-jumpstarter-passphrase", passphrase),) if passphrase else ()
    connection = Connection(
        channel, parsed.text, metadata, keepalive, functools.partial(_channel, parsed, keepalive, insecure, ca)
    )
    try:
        report = _first_report(connection, parsed, timeout, insecure, started)
        direct = _direct(report, parsed, keepalive, metadata, timeout)
        if direct is not None:
            connection.close()
            connection, report = direct
        return build_tree(connection, report, allow)
    except BaseException:
        connection.close()
        raise


def _direct_channel(endpoint: Any, keepalive: float) -> Any:
    import grpc

    credentials = grpc.ssl_channel_credentials(
        root_certificates=endpoint.certificate.encode(),
        private_key=endpoint.client_private_key.encode(),
        certificate_chain=endpoint.client_certificate.encode(),
    )
    return grpc.secure_channel(endpoint.endpoint, credentials, options=_options(keepalive))


def _direct(
    report: Any, address: Address, keepalive: float, metadata: tuple, timeout: float
) -> tuple[Connection, Any] | None:
    """A connection through the first of the session's alternative endpoints that answers as the same
    session (an exporter's direct port, offered to its lease holder), and its report; ``None``: stay.

    Such an endpoint comes with the certificate to trust for it and a client certificate; one that
    does not answer within :data:`DIRECT_TIMEOUT` costs a warning once per process and certificate.
    """
    import grpc

    endpoints = list(report.alternative_endpoints)
    if not endpoints or os.environ.get(JMP_DIRECT, "").lower() in ("off", "0", "no", "false"):
        return None
    for endpoint in endpoints:
        where = endpoint.endpoint
        offer = (where, endpoint.client_certificate)
        if offer in _unreachable or not endpoint.certificate or not endpoint.client_certificate:
            continue
        try:
            if not Address.parse(where).tcp:
                continue
            factory = functools.partial(_direct_channel, endpoint, keepalive)
            connection = Connection(factory(), f"{where} (direct; leased at {address.text})", metadata, keepalive,
                                    factory)
        except (ConfigurationError, ValueError) as exc:
            logger.warning("ignoring the session's direct endpoint %r: %s", where, exc)
            continue
        try:
            answer = connection.exporter.GetReport(
                connection.empty(), metadata=metadata, timeout=min(timeout, DIRECT_TIMEOUT)
            )
        except grpc.RpcError as exc:
            connection.close()
            _unreachable.add(offer)
            logger.warning(
                "the exporter's direct endpoint %s does not answer (%s); staying on %s (a firewall? set %s=off "
                "to stop trying)", where, exc.details() or exc.code().name, address.text, JMP_DIRECT,
            )
            continue
        if answer.uuid != report.uuid:
            connection.close()
            logger.warning("the direct endpoint %s answers for another session; staying on %s", where, address.text)
            continue
        logger.debug("reaching the session at %s directly through %s", address.text, where)
        return connection, answer
    return None


def read_passphrase_file(path: str | os.PathLike) -> str:
    """The passphrase on the first line of ``path`` (surrounding blanks removed)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read the passphrase file {os.fspath(path)}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    passphrase = lines[0].strip() if lines else ""
    if not passphrase:
        raise ConfigurationError(
            f"the passphrase file {os.fspath(path)} is empty; put the shared passphrase on its first line"
        )
    return passphrase


def _first_report(connection: Connection, address: Address, timeout: float, insecure: bool, started: float) -> object:
    """The session's report within ``timeout`` s of ``started``; a TLS mismatch is named at once, anything
    else is waited out."""
    import grpc

    def remaining() -> float:
        return max(started + timeout - time.monotonic(), 0.1)

    request = connection.empty()
    try:
        try:
            return connection.exporter.GetReport(request, metadata=connection.metadata, timeout=remaining())
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            mismatch = tls_mismatch(address, exc.details() or "", insecure, min(remaining(), 5.0))
            if mismatch is not None:
                raise mismatch from None
        # Not a TLS mismatch (a busy exporter closed the connection, say): let gRPC retry until the deadline.
        return connection.exporter.GetReport(
            request, metadata=connection.metadata, timeout=remaining(), wait_for_ready=True
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise ExporterUnreachable(
                f"the exporter at {address.text} did not answer within {timeout:g} s; is it running (and not "
                f"frozen), and is the address right ({JUMPSTARTER_HOST} or --jumpstarter-host)?"
            ) from None
        raise translate(exc, f"GetReport on {address.text}") from None


def tls_mismatch(address: Address, details: str, insecure: bool, timeout: float) -> TlsMismatch | None:
    """The TLS disagreement behind a failed first call (gRPC's ``details``), or ``None`` when it is not one."""
    if not address.tcp:
        return None
    host = address.target.rpartition(":")[0].strip("[]")
    trust = "give its certificate (cert.pem of `jumpstarter tls-cert`) or its CA with --ca or JMP_GRPC_CA"
    if insecure:
        if _speaks_tls(address, timeout):
            return TlsMismatch(
                f"the exporter at {address.text} serves TLS and this connection is plaintext (--insecure or "
                f"JMP_GRPC_INSECURE=1); connect without it, and {trust}"
            )
        return None
    verify = re.search(r"CERTIFICATE_VERIFY_FAILED(?::\s*([^:]+))?", details)
    if verify:
        reason = (verify[1] or "verification failed").strip()
        return TlsMismatch(
            f"the exporter at {address.text} presented a TLS certificate this client does not trust ({reason}); {trust}"
        )
    if "Hostname Verification" in details or "No match found for server name" in details:
        return TlsMismatch(
            f"the exporter's TLS certificate does not name {host}; connect to a name or address it was made for, "
            f"or make one that holds {host} (jumpstarter tls-cert --host {host})"
        )
    if "WRONG_VERSION_NUMBER" in details:
        return TlsMismatch(
            f"the exporter at {address.text} answers in plaintext, not TLS; if it was served with --insecure on a "
            "network you trust, connect with --insecure (JMP_GRPC_INSECURE=1)"
        )
    return None


def _speaks_tls(address: Address, timeout: float) -> bool:
    """Whether the peer at ``address`` completes a TLS handshake (its certificate is not checked)."""
    host, _, port = address.target.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host.strip("[]")),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def env(**kwargs: object) -> contextlib.AbstractContextManager[DriverClient]:
    """Context manager yielding the root client of the session at ``$JUMPSTARTER_HOST``.

    The allow-list comes from ``$JMP_DRIVERS_ALLOW``; keyword arguments go to :func:`connect`.
    """
    host = os.environ.get(JUMPSTARTER_HOST)
    if not host:
        raise ConfigurationError(
            f"{JUMPSTARTER_HOST} is not set; run inside `jumpstarter shell`, or set it to the exporter's "
            "unix socket path or host:port"
        )
    kwargs.setdefault("allow", os.environ.get(JMP_DRIVERS_ALLOW))
    return connect(host, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def serve(root_device: Driver) -> Iterator[DriverClient]:
    """Serve ``root_device`` in a real session on a private unix socket; yield its root client.

    Every client class is allowed: the test chose the drivers itself.
    """
    from .session import Session

    with Session(root_device=root_device) as session, session.serve_unix() as path:
        with connect(path, allow=AllowList(unsafe=True)) as client:
            yield client
