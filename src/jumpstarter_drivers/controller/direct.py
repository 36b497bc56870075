"""The exporter's direct port: a leased client reaches the session without the router.

Through the router a driver call crosses three forwarding processes (the client's lease holder,
the router, the exporter's end). An exporter started with ``--direct HOST:PORT`` also listens
there, and while a lease holds it, its ``GetReport`` answer carries one
``alternative_endpoints`` entry (as in Jumpstarter's protocol) made for that lease:

- ``endpoint``: where to connect;
- ``certificate``: the port's certificate (made when the exporter starts), to trust for it alone;
- ``client_certificate`` and ``client_private_key``: made for this lease, a certificate the port
  accepts while the lease lasts and never again.

Only the lease holder reads that answer (it comes through the lease's own router tunnel). The
client then opens a mutual-TLS gRPC channel to the port (``core.access.connect`` does it on its
own; ``JMP_DIRECT=off`` keeps it on the router), and its calls cross one forwarding step, the exporter's, on their way to the session's
unix socket. When the lease ends, new handshakes are refused and the lease's connections cut.

Bounds (SECURITY.md): at most :data:`MAX_CONNECTIONS` connections at once (more are closed
before TLS); no lease: every connection is closed before TLS; TLS must finish within
:data:`HANDSHAKE_TIMEOUT` with this lease's client certificate; a connection buffers at most
:data:`~.links.WRITE_HIGH` bytes towards a peer that does not read; TCP keepalive cuts a peer
whose host vanished within about 25 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import shutil
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2

from ..core.errors import ConfigurationError
from . import links
from .links import Link
from .relay import keep_alive

logger = logging.getLogger(__name__)

#: Connections to the direct port at once (a client's channel takes one or two).
MAX_CONNECTIONS = 64
#: Seconds a connection may take to finish TLS.
HANDSHAKE_TIMEOUT = 10.0
#: Days the port's and a lease's certificates are valid (the lease ends them sooner).
VALID_DAYS = 30
#: The common name of the port's certificate (its other names are the advertised host's).
SERVER_NAME = "jumpstarter-exporter"


def parse_direct(listen: str, address: str | None = None) -> tuple[str, int, str]:
    """``(bind host, port, advertised host)`` from ``--direct HOST:PORT`` and ``--direct-address HOST``."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigurationError(f"--direct {listen!r}: give HOST:PORT (port 0 picks a free one), e.g. 0.0.0.0:7100")
    advertised = address or host
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(advertised).is_unspecified:
            raise ConfigurationError(
                f"--direct {listen}: clients cannot dial {advertised}; give --direct-address with the host name or "
                "address clients reach this exporter at"
            )
    return host, int(port), advertised


def _certificate(common_name: str, names: list[str]) -> tuple[bytes, bytes]:
    """A new P-256 key and a certificate for it signed by itself: ``(certificate PEM, key PEM)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    if alternatives:
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@dataclass
class _Grant:
    """What one lease may use: the context that accepts its certificate, and its connections."""

    lease: str
    context: ssl.SSLContext
    links: set[Link]


class DirectPort:
    """The direct port of one exporter, serving the session on the unix socket ``socket_path``."""

    def __init__(self, socket_path: str, host: str, port: int, advertised: str) -> None:
        self.socket_path = socket_path
        self.host, self.port, self.advertised = host, port, advertised
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._grant: _Grant | None = None
        self._connections: set[asyncio.Task] = set()
        self._files: Path | None = None
        self._certificate = b""
        #: Connections spliced to the session so far (tests and benchmarks read it).
        self.served = 0

    @property
    def lease(self) -> str | None:
        """The lease the port is open to."""
        return None if self._grant is None else self._grant.lease

    @property
    def endpoint(self) -> str:
        host = f"[{self.advertised}]" if ":" in self.advertised else self.advertised
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Make the port's certificate and listen (the port is known from here on)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(128)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            raise ConfigurationError(f"--direct {self.host}:{self.port}: cannot listen: {exc.strerror}") from None
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._certificate, key = _certificate(SERVER_NAME, [SERVER_NAME, self.advertised])
        self._files = Path(tempfile.mkdtemp(prefix="jmp-direct-"))  # mode 0700: the key is this user's alone
        (self._files / "key.pem").write_bytes(key)
        (self._files / "key.pem").chmod(0o600)
        (self._files / "cert.pem").write_bytes(self._certificate)
        self._accepting = asyncio.create_task(links.accept(listener, self._accepted, "direct port"))
        logger.info("serving leased clients directly on port %s (advertised as %s)", self.port, self.endpoint)

    def grant(self, lease: str) -> jumpstarter_pb2.Endpoint:
        """Open the port to ``lease`` (ending any earlier grant); the endpoint its holder is told."""
        self.revoke()
        assert self._files is not None, "start() first"
        client_certificate, client_key = _certificate(f"lease {lease}", [])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._files / "cert.pem", self._files / "key.pem")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_certificate.decode())
        context.set_alpn_protocols(["h2"])  # gRPC clients insist on it
        endpoint = jumpstarter_pb2.Endpoint(
            endpoint=self.endpoint,
            certificate=self._certificate.decode(),
            client_certificate=client_certificate.decode(),
            client_private_key=client_key.decode(),
        )
        self._grant = _Grant(lease, context, set())
        return endpoint

    def revoke(self) -> None:
        """Close the port to the current lease: no new handshake, its connections cut."""
        grant, self._grant = self._grant, None
        if grant is not None:
            for link in list(grant.links):
                link.abort()
            logger.info("direct port closed to lease %s", grant.lease)

    def _accepted(self, connection: socket.socket, peer: object) -> None:
        grant = self._grant
        if grant is None or len(self._connections) >= MAX_CONNECTIONS:
            connection.close()  # before TLS: no lease to serve, or too many at once
            return
        task = asyncio.create_task(self._serve(connection, peer, grant))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, connection: socket.socket, peer: object, grant: _Grant) -> None:
        connection.setblocking(False)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        keep_alive(connection)
        secured = grant.context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        try:
            await links.handshake(secured, HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            logger.info("direct port: refused %s: %s", peer, exc or "no TLS within the timeout")
            secured.close()
            return
        if self._grant is not grant:
            secured.close()  # the lease ended during the handshake
            return
        session = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        session.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(session, self.socket_path)
        except OSError as exc:
            logger.error("direct port: cannot reach the session at %s: %s", self.socket_path, exc)
            session.close()
            secured.close()
            return
        if self._grant is not grant:
            session.close()  # the lease ended while the session's socket was being reached
            secured.close()
            return
        near, far = Link(session), Link(secured)
        grant.links.update((near, far))
        self.served += 1
        links.splice(near, far)
        try:
            await asyncio.gather(near.closed.wait(), far.closed.wait())
        finally:
            grant.links.difference_update((near, far))
            near.abort()
            far.abort()

    async def stop(self) -> None:
        """Stop listening and cut every connection."""
        self.revoke()
        if self._listener is not None:
            self._listener.close()
        for task in [self._accepting, *self._connections]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._files is not None:
            shutil.rmtree(self._files, ignore_errors=True)
