"""A session hosts a driver tree and serves it over the ``jumpstarter.v1`` gRPC protocol.

>>> from jumpstarter_drivers.power import MockPower
>>> with Session(root_device=MockPower()) as session:
...     with session.serve_unix() as path:
...         path.exists()
True
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import grpc
from google.protobuf import empty_pb2
from jumpstarter_protocol.jumpstarter.v1 import common_pb2, jumpstarter_pb2, jumpstarter_pb2_grpc

from . import loop
from .allocator import keep_frame_buffers
from .codec import decode, encode_into, restore, to_json
from .driver import UNSUPPORTED_LABEL, Driver, ExportedMethod, MethodKind
from .errors import ConfigurationError
from .status import ExporterStatus
from .streams import PipeStream, decode_frame, encode_frame, pipe, pump

logger = logging.getLogger(__name__)

CLIENT_LABEL = "jumpstarter.dev/client"
NAME_LABEL = "jumpstarter.dev/name"
#: Our own client path, for when ``jumpstarter.dev/client`` carries a Jumpstarter-compatible name.
TOOLKIT_CLIENT_LABEL = "jumpstarter-toolkit/client"

ERROR_TYPE_KEY = "x-jmp-error-type"
#: Our own extension: a client that sends this metadata accepts several items per streaming message
#: (a list); the session confirms it in its initial metadata. Other peers get one message per item.
BATCH_KEY = "x-jmp-batch"
#: Our own extension: a client that sends this metadata takes results as JSON text (ints stay ints);
#: the session confirms it (a unary call's trailing metadata; streaming: :data:`JSON_BATCH_UUID`).
#: Other peers get ``google.protobuf.Value`` results.
JSON_KEY = "x-jmp-json"
#: A client that asks for both batches and JSON gets each batch as one JSON list, in a message whose
#: ``uuid`` is this marker (no driver has it), so no separate initial metadata has to confirm it.
JSON_BATCH_UUID = "x-jmp-json-batch"
MAX_BATCH = 4096
MAX_MESSAGE = 64 << 20
#: Log records a LogStream subscriber may have waiting; beyond, records are dropped and counted.
#: A reading subscriber keeps up with a burst of this many (drivers log in bursts: a failed flash).
MAX_LOG_BACKLOG = 10_000
#: Characters of log messages a LogStream subscriber may have waiting (the memory bound when
#: messages are long); beyond, records are dropped and counted.
MAX_LOG_BACKLOG_BYTES = 4 << 20
#: Characters of a log message sent to subscribers; the rest is cut (with a note).
MAX_LOG_MESSAGE = 16 << 10
#: Seconds a peer has from connecting to finishing TLS and HTTP/2 set-up (its first SETTINGS)
#: before it is dropped.
HANDSHAKE_TIMEOUT = 10.0
#: Seconds a connection may carry no call before it is closed (a client reconnects by itself).
IDLE_TIMEOUT = 60.0
#: Connections one server holds at most (less when the fd limit is low: half the soft limit);
#: beyond, new ones are closed at once.
MAX_CONNECTIONS = 512
#: Seconds between two log lines about refused passphrases (the count of the others is kept).
REFUSAL_LOG_INTERVAL = 10.0

SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
)

current_session: contextvars.ContextVar[Session] = contextvars.ContextVar("current_session")


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status a driver exception becomes (as Jumpstarter maps them)."""
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, ConnectionError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, OSError):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.UNKNOWN


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, error_type: str = "") -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.error_type = error_type


@dataclass
class _Resource:
    driver_end: PipeStream
    wire_end: PipeStream
    claimed: asyncio.Event = field(default_factory=asyncio.Event)


class _Subscriber:
    """One LogStream subscriber's backlog: at most :data:`MAX_LOG_BACKLOG` records holding at most
    :data:`MAX_LOG_BACKLOG_BYTES` characters of messages.

    Records that find the backlog full are dropped and counted; a marker record saying how many
    takes their place once there is room, so the subscriber sees where the gap is. Offering never
    blocks (it runs on the event loop, called by whoever logs).
    """

    def __init__(self, uuid: UUID) -> None:
        self.uuid = str(uuid)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.dropped = 0
        self.characters = 0

    def offer(self, response: jumpstarter_pb2.LogStreamResponse) -> None:
        room = MAX_LOG_BACKLOG - self.queue.qsize()
        if self.dropped and room >= 2:
            self._put(self._marker())
            room -= 1
        if self.dropped or room < 1 or self.characters + len(response.message) > MAX_LOG_BACKLOG_BYTES:
            self.dropped += 1
        else:
            self._put(response)

    def _put(self, response: jumpstarter_pb2.LogStreamResponse) -> None:
        self.characters += len(response.message)
        self.queue.put_nowait(response)

    async def get(self) -> jumpstarter_pb2.LogStreamResponse:
        if self.dropped and self.queue.empty():
            return self._marker()
        response = await self.queue.get()
        self.characters -= len(response.message)
        return response

    def _marker(self) -> jumpstarter_pb2.LogStreamResponse:
        count, self.dropped = self.dropped, 0
        return jumpstarter_pb2.LogStreamResponse(
            uuid=self.uuid,
            severity="WARNING",
            message=f"{count} log records dropped: this log stream was read more slowly than drivers logged",
            source=common_pb2.LOG_SOURCE_SYSTEM,
        )


class _LogHandler(logging.Handler):
    """Forwards records of this session's drivers to every LogStream subscriber."""

    def __init__(self, session: Session) -> None:
        super().__init__(logging.NOTSET)
        self.session = session

    def emit(self, record: logging.LogRecord) -> None:
        uuid = getattr(record, "driver_uuid", None)
        if uuid is None or uuid not in self.session.drivers or not self.session._subscribers:
            return
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - logging's own contract: a bad record must not kill the caller
            self.handleError(record)
            return
        if len(message) > MAX_LOG_MESSAGE:
            message = f"{message[:MAX_LOG_MESSAGE]}... [{len(message) - MAX_LOG_MESSAGE} characters cut]"
        response = jumpstarter_pb2.LogStreamResponse(
            uuid=str(uuid), severity=record.levelname, message=message, source=1
        )
        self.session._publish(response)


@dataclass
class Session:
    """Hosts ``root_device`` and serves it; use as a context manager.

    Without lease machinery the session is ready for calls from the start
    (``ExporterStatus.LEASE_READY``); :meth:`update_status` moves it, and calls are refused
    with ``FAILED_PRECONDITION`` (``ExporterNotReady`` on the client) in states that forbid them.
    """

    root_device: Driver
    labels: dict[str, str] = field(default_factory=dict)
    uuid: UUID = field(default_factory=uuid4)
    #: Seconds a client's resource stream may wait for a driver call to use it.
    resource_timeout: float = 30.0
    #: Awaited after a client's ``EndSession``: an exporter serving a controller's lease becomes AVAILABLE there.
    on_end_session: Callable[[], Awaitable[None]] | None = None
    #: Bounds on connections that have not (yet) sent a call; see :data:`HANDSHAKE_TIMEOUT` and the others.
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    max_connections: int | None = None
    #: Other ways to reach this session, told in ``GetReport`` (an exporter's direct port, for its lease holder).
    alternative_endpoints: list[jumpstarter_pb2.Endpoint] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.root_device, Driver):
            raise ConfigurationError(
                f"Session: root_device must be a Driver, got {type(self.root_device).__name__}"
            )
        if self.max_connections is None:
            self.max_connections = connection_bound()
        self.drivers: dict[UUID, Driver] = {}
        self._tree: list[tuple[Driver, Driver | None, str | None]] = []
        for driver, parent, name in self.root_device.walk():
            if driver.uuid in self.drivers:
                continue
            self.drivers[driver.uuid] = driver
            self._tree.append((driver, parent, name))
        self._methods: dict[UUID, dict[str, ExportedMethod]] = {
            uuid: driver.exported_methods() for uuid, driver in self.drivers.items()
        }
        self.status = ExporterStatus.LEASE_READY
        self.previous_status = ExporterStatus.UNSPECIFIED
        self.status_message = ""
        self.status_version = 1
        self._subscribers: set[_Subscriber] = set()
        self._resources: dict[UUID, _Resource] = {}
        self._handler = _LogHandler(self)
        self._servers: list[grpc.aio.Server] = []
        self._closed = False

    # lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> Session:
        driver_logger = logging.getLogger("driver")
        if driver_logger.level == logging.NOTSET:
            driver_logger.setLevel(logging.INFO)
        driver_logger.addHandler(self._handler)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and close every driver of the tree."""
        if self._closed:
            return
        self._closed = True
        logging.getLogger("driver").removeHandler(self._handler)
        self.root_device.close()

    def update_status(self, status: ExporterStatus, message: str = "") -> None:
        """Move the session to ``status``; clients see it through ``GetStatus``."""
        if status != self.status:
            self.previous_status, self.status = self.status, ExporterStatus(status)
            self.status_version += 1
        self.status_message = message

    # serving ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve_unix(self, path: str | os.PathLike | None = None, *, passphrase: str | None = None) -> Iterator[Path]:
        """Serve on a unix socket and yield its path.

        Without ``path`` the socket lives in a fresh directory only this user can enter. The
        socket is mode 0600 whatever the umask: it is bound in a private directory, made the
        user's alone, and only then moved to ``path`` (replacing a stale socket there). With
        ``passphrase``, calls without it are refused (as over TCP).
        """
        interceptors = _passphrase_interceptors(passphrase)
        target = None if path is None else Path(path)
        private_dir = Path(tempfile.mkdtemp(prefix="jmp-", dir=None if target is None else target.parent))
        try:
            private_dir.chmod(0o700)  # exactly: a umask like 0o277 would leave even its owner out
            bound = private_dir / "socket"
            with self.serve_address(f"unix://{bound}", interceptors=interceptors):
                bound.chmod(0o600)
                if target is None:
                    yield bound
                    return
                os.replace(bound, target)
                inode = target.stat().st_ino
                try:
                    yield target
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        if target.stat().st_ino == inode:  # not a socket a later exporter put there
                            target.unlink()
        finally:
            shutil.rmtree(private_dir, ignore_errors=True)

    @contextlib.contextmanager
    def serve_tcp(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_cert: str | os.PathLike | None = None,
        tls_key: str | os.PathLike | None = None,
        insecure: bool = False,
        passphrase: str | None = None,
    ) -> Iterator[int]:
        """Serve on TCP and yield the bound port: TLS with ``tls_cert``/``tls_key``, or plaintext
        only when ``insecure`` says so. With ``passphrase``, calls without it are refused.

        A setup that lets whoever reaches the port call every driver is logged as a warning.
        """
        credentials = None
        if not insecure:
            if not (tls_cert and tls_key):
                raise ConfigurationError(
                    "serving over TCP needs a TLS certificate and key (tls_cert, tls_key), or insecure=True "
                    "to serve plaintext on a trusted network"
                )
            credentials = server_credentials(tls_cert, tls_key)
        interceptors = _passphrase_interceptors(passphrase)
        with self.serve_address(f"{host}:{port}", credentials, interceptors) as bound:
            _warn_if_weak(f"{host}:{bound}", tls=not insecure, passphrase=bool(passphrase))
            yield bound

    @contextlib.contextmanager
    def serve_address(
        self, address: str, credentials: grpc.ServerCredentials | None = None, interceptors: tuple = ()
    ) -> Iterator[int]:
        """Serve on a gRPC address (``unix://PATH`` or ``HOST:PORT``); yield the bound port (0 for unix)."""
        server, port = loop.run(self._start(address, credentials, interceptors))
        try:
            yield port
        finally:
            loop.run(self._stop(server))

    async def _start(
        self, address: str, credentials: grpc.ServerCredentials | None, interceptors: tuple
    ) -> tuple[grpc.aio.Server, int]:
        _hold_grpc_aio()
        keep_frame_buffers()  # uploads arrive as frame-sized buffers on this loop (see allocator)
        bounds = (
            ("grpc.server_handshake_timeout_ms", int(self.handshake_timeout * 1000)),
            ("grpc.max_connection_idle_ms", int(self.idle_timeout * 1000)),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
        )
        server = grpc.aio.server(options=SERVER_OPTIONS + bounds, interceptors=interceptors or None)
        jumpstarter_pb2_grpc.add_ExporterServiceServicer_to_server(_ExporterService(self), server)
        server.add_generic_rpc_handlers((_router_handler(_RouterService(self)),))
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        await server.start()
        self._servers.append(server)
        logger.debug("serving session %s on %s", self.uuid, address)
        return server, port

    async def _stop(self, server: grpc.aio.Server) -> None:
        await server.stop(grace=0.5)
        self._servers.remove(server)

    # report, logs and resources -------------------------------------------------------------

    def report(self) -> jumpstarter_pb2.GetReportResponse:
        """The ``GetReport`` answer: the driver tree, parents before children."""
        from .compat import jumpstarter_name_for

        response = jumpstarter_pb2.GetReportResponse(
            uuid=str(self.uuid), labels=self.labels, alternative_endpoints=self.alternative_endpoints
        )
        for driver, parent, name in self._tree:
            ours = driver.client()
            labels = dict(driver.labels)
            labels[CLIENT_LABEL] = jumpstarter_name_for(ours)
            labels[TOOLKIT_CLIENT_LABEL] = ours
            if unsupported := driver.unsupported_methods():
                labels[UNSUPPORTED_LABEL] = ",".join(sorted(unsupported))
            if name is not None:
                labels[NAME_LABEL] = name
            report = response.reports.add(
                uuid=str(driver.uuid), labels=labels, methods_description=driver.describe_methods()
            )
            if parent is not None:
                report.parent_uuid = str(parent.uuid)
            if driver.description:
                report.description = driver.description
        return response

    def _publish(self, response: jumpstarter_pb2.LogStreamResponse) -> None:
        event_loop = loop.get_loop()
        for subscriber in tuple(self._subscribers):
            if loop.in_loop_thread():
                subscriber.offer(response)
            else:
                event_loop.call_soon_threadsafe(subscriber.offer, response)

    def new_resource(self) -> UUID:
        """Create a resource pipe for a client stream; the driver end is claimed by :meth:`open_resource`."""
        driver_end, wire_end = pipe()
        uuid = uuid4()
        self._resources[uuid] = _Resource(driver_end, wire_end)
        return uuid

    @contextlib.asynccontextmanager
    async def open_resource(self, handle: dict[str, Any]) -> AsyncIterator[PipeStream]:
        """The byte stream behind a resource handle a client passed as a call argument."""
        if not isinstance(handle, dict) or handle.get("kind") != "client_stream":
            raise ValueError(f"not a client stream resource handle: {handle!r}")
        try:
            resource = self._resources[UUID(str(handle.get("uuid")))]
        except (KeyError, ValueError) as exc:
            raise ValueError(f"unknown resource {handle.get('uuid')!r}; open it with the client first") from exc
        if resource.claimed.is_set():
            raise ValueError(f"resource {handle['uuid']} is already in use by another call")
        resource.claimed.set()
        try:
            yield resource.driver_end
        finally:
            await resource.driver_end.aclose()

    # dispatch helpers ------------------------------------------------------------------------

    def lookup(self, uuid: str, name: str, kind: MethodKind) -> tuple[Driver, ExportedMethod]:
        try:
            key = UUID(uuid)
            driver = self.drivers[key]
        except (ValueError, KeyError):
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"no driver with uuid {uuid!r} in this session") from None
        method = self._methods[key].get(name)
        cls = type(driver).__name__
        if method is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"{cls} has no exported method {name!r}")
        if method.kind is not kind:
            hint = {
                MethodKind.UNARY: "call()",
                MethodKind.STREAMING: "streamingcall()",
                MethodKind.BYTESTREAM: "stream()",
            }[method.kind]
            raise _Abort(
                grpc.StatusCode.NOT_FOUND, f"{cls}.{name} is a {method.kind.value} method; use {hint} for it"
            )
        return driver, method

    def prepare(self, request: Any, kind: MethodKind) -> tuple[Driver, ExportedMethod, list[Any]]:
        """Check a driver call request: status, driver, method and arguments."""
        self.check_ready()
        driver, method = self.lookup(request.uuid, request.method, kind)
        return driver, method, self.arguments(driver, method, request.args)

    def check_ready(self) -> None:
        if not self.status.allows_calls:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"exporter status is {self.status.name}; driver calls are accepted in LEASE_READY, "
                "BEFORE_LEASE_HOOK and AFTER_LEASE_HOOK",
            )

    @staticmethod
    def arguments(driver: Driver, method: ExportedMethod, values: Any) -> list[Any]:
        raw = [decode(v) for v in values]
        positional = [p for p in method.param_types if p[2] in (p[2].POSITIONAL_ONLY, p[2].POSITIONAL_OR_KEYWORD)]
        variadic = next((p for p in method.param_types if p[2] is p[2].VAR_POSITIONAL), None)
        where = f"{type(driver).__name__}.{method.name}()"
        required = [p for p in positional if method.signature.parameters[p[0]].default is method.signature.empty]
        if len(raw) < len(required) or (variadic is None and len(raw) > len(positional)):
            names = ", ".join(p[0] for p in positional) or "no arguments"
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where} takes {len(required)}..{len(positional)} argument(s) ({names}), got {len(raw)}"
                if len(required) != len(positional)
                else f"{where} takes {len(positional)} argument(s) ({names}), got {len(raw)}",
            )
        args = []
        for index, value in enumerate(raw):
            name, tp, _ = positional[index] if index < len(positional) else variadic
            try:
                args.append(restore(value, tp))
            except (ValueError, TypeError) as exc:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: argument '{name}': {exc}") from None
        return args


def connection_bound() -> int:
    """:data:`MAX_CONNECTIONS`, or half the soft fd limit when that is less (drivers need fds too)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else max(1, min(MAX_CONNECTIONS, soft // 2))


_aio_anchor: list[grpc.aio.Server] = []


def _hold_grpc_aio() -> None:
    """Keep grpc.aio initialised on the background loop for the life of the process.

    grpc.aio shuts its poller down when its last server goes away and starts it again with the
    next one; a session per test would pay for that each time and race the poller's teardown.
    """
    if not _aio_anchor:
        _aio_anchor.append(grpc.aio.server())
        loop.at_shutdown(_release_grpc_aio)


async def _release_grpc_aio() -> None:
    while _aio_anchor:
        await _aio_anchor.pop().stop(None)


def server_credentials(cert: str | os.PathLike, key: str | os.PathLike) -> grpc.ServerCredentials:
    """TLS credentials from PEM files; unreadable files fail with a ConfigurationError naming them."""
    pems = []
    for what, path in (("certificate", cert), ("key", key)):
        try:
            pems.append(Path(path).read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(pems[1], pems[0])])


def check_passphrase(passphrase: str, source: str = "passphrase") -> str:
    """``passphrase`` unchanged, or a ConfigurationError when gRPC metadata cannot carry it.

    >>> check_passphrase("correct horse")
    'correct horse'
    """
    if not passphrase or not all(" " <= c <= "~" for c in passphrase):
        raise ConfigurationError(
            f"the {source} must be printable ASCII (letters, digits, punctuation, spaces) and not empty: "
            "gRPC metadata carries nothing else; choose another passphrase"
        )
    return passphrase


def _passphrase_interceptors(passphrase: str | None) -> tuple[grpc.aio.ServerInterceptor, ...]:
    return (PassphraseInterceptor(passphrase),) if passphrase is not None else ()


def _warn_if_weak(address: str, *, tls: bool, passphrase: bool) -> None:
    """Say at start when whoever reaches ``address`` may call every driver, or read the passphrase."""
    if tls and passphrase:
        return
    if tls:
        reason = "TLS without a passphrase: anyone who can reach the port can call every driver"
    elif passphrase:
        reason = (
            "plaintext: the passphrase crosses the network readable by anyone on the path, who can then call every "
            "driver"
        )
    else:
        reason = "plaintext without a passphrase: anyone who can reach the port can call every driver and read all"
    logger.warning("serving on %s: %s; give a passphrase and TLS unless the network is yours alone", address, reason)


class RefusalLog:
    """Logs refused calls as warnings, at most one line per :data:`REFUSAL_LOG_INTERVAL` seconds;
    the next line says how many refusals went unlogged meanwhile."""

    def __init__(self) -> None:
        self._quiet_until = 0.0
        self._unlogged = 0

    def __call__(self, peer: str, reason: str) -> None:
        now = time.monotonic()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last such line)" if self._unlogged else ""
        self._unlogged = 0
        self._quiet_until = now + REFUSAL_LOG_INTERVAL
        logger.warning("refused a call from %s: %s%s", peer, reason, more)


class PassphraseInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose ``x-jumpstarter-passphrase`` metadata is missing or wrong (constant time),
    and logs the refusals (rate-limited)."""

    KEY = "x-jumpstarter-passphrase"

    def __init__(self, passphrase: str) -> None:
        self._expected = check_passphrase(passphrase).encode()
        self._log = RefusalLog()

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        given = dict(details.invocation_metadata or ()).get(self.KEY, "")
        if hmac.compare_digest(str(given).encode(), self._expected):
            return await continuation(details)
        message = "missing passphrase" if not given else "wrong passphrase"
        return _refusal(details.method, message, self._log)


def _refusal(method: str, message: str, log: RefusalLog) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        log(context.peer(), f"{message} for {method}")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{message} (metadata x-jumpstarter-passphrase)")

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(request, context)
        yield

    if method.endswith(("/StreamingDriverCall", "/LogStream")):
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    if method.endswith("/Stream"):
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a task group's single failure is the failure
    if isinstance(exc, _Abort):
        code, details, error_type = exc.code, exc.details, exc.error_type
    else:
        code, details, error_type = status_code_for(exc), str(exc) or type(exc).__name__, type(exc).__name__
    context.set_trailing_metadata(((ERROR_TYPE_KEY, error_type or "protocol"),))
    await context.abort(code, details)


async def _call_driver(driver: Driver, method: ExportedMethod, args: list[Any]) -> Any:
    func = getattr(driver, method.name)
    if method.is_async:
        return await func(*args)
    return await loop.run_blocking(driver, lambda: func(*args))


class _ExporterService(jumpstarter_pb2_grpc.ExporterServiceServicer):
    def __init__(self, session: Session) -> None:
        self.session = session

    async def GetReport(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext) -> Any:
        return self.session.report()

    async def DriverCall(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        session = self.session
        try:
            driver, method, args = session.prepare(request, MethodKind.UNARY)
            token = current_session.set(session)
            try:
                result = await _call_driver(driver, method, args)
            finally:
                current_session.reset(token)
            response = jumpstarter_pb2.DriverCallResponse(uuid=request.uuid)
            if _asks(context, JSON_KEY):
                response.result.string_value = to_json(result)
                context.set_trailing_metadata(((JSON_KEY, "1"),))
            else:
                encode_into(response.result, result)
            return response
        except Exception as exc:  # noqa: BLE001 - every driver failure becomes a gRPC status
            _log_failure(request, exc)
            await _abort(context, exc)

    async def StreamingDriverCall(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        session = self.session
        try:
            driver, method, args = session.prepare(request, MethodKind.STREAMING)
            token = current_session.set(session)
            items = getattr(driver, method.name)(*args)
            try:
                source = _iterate(driver, method, items)
                if _asks(context, BATCH_KEY) and _asks(context, JSON_KEY):
                    async for batch in _batches(source):
                        response = jumpstarter_pb2.StreamingDriverCallResponse(uuid=JSON_BATCH_UUID)
                        response.result.string_value = to_json(batch)
                        yield response
                elif _asks(context, BATCH_KEY):
                    await context.send_initial_metadata(((BATCH_KEY, "1"),))
                    async for batch in _batches(source):
                        yield _streaming_response(request.uuid, batch)
                else:
                    async for item in source:
                        yield _streaming_response(request.uuid, item)
            finally:
                current_session.reset(token)
                close = getattr(items, "aclose", None)
                if close is not None:
                    await close()
                else:
                    items.close()
        except Exception as exc:  # noqa: BLE001 - every driver failure becomes a gRPC status
            _log_failure(request, exc)
            await _abort(context, exc)

    async def LogStream(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext) -> Any:
        subscriber = _Subscriber(self.session.root_device.uuid)
        self.session._subscribers.add(subscriber)
        try:
            await context.send_initial_metadata(())
            while True:
                yield await subscriber.get()
        finally:
            self.session._subscribers.discard(subscriber)

    async def GetStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        s = self.session
        return jumpstarter_pb2.GetStatusResponse(
            status=int(s.status),
            message=s.status_message,
            status_version=s.status_version,
            previous_status=int(s.previous_status),
        )

    async def EndSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # The client is done: what it chose for its session (a flasher's bundle, ...) ends with it.
        try:
            await anyio.to_thread.run_sync(self.session.root_device.reset)
        except Exception as exc:  # noqa: BLE001 - reported to the client as a status
            await _abort(context, exc)
        if self.session.on_end_session is not None:
            await self.session.on_end_session()
        return jumpstarter_pb2.EndSessionResponse(success=True, message="session ended")

    async def Reset(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            await loop.run_blocking(self.session.root_device, self.session.root_device.reset)
        except Exception as exc:  # noqa: BLE001 - reported to the client as a status
            await _abort(context, exc)
        return jumpstarter_pb2.ResetResponse()


async def _iterate(driver: Driver, method: ExportedMethod, items: Any) -> AsyncIterator[Any]:
    """The items of a sync or async generator; each step of a sync one runs in a worker thread."""
    if method.is_async:
        async for item in items:
            yield item
    else:
        done = object()
        while (item := await loop.run_blocking(driver, lambda: next(items, done))) is not done:
            yield item


async def _batches(source: AsyncIterator[Any]) -> AsyncIterator[list[Any]]:
    """Group the items already waiting into one list; a slow source still yields each item at once."""
    queue: asyncio.Queue = asyncio.Queue(MAX_BATCH)
    end = object()

    async def produce() -> None:
        try:
            async for item in source:
                await queue.put((item, None))
            await queue.put((end, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it after the items
            await queue.put((end, exc))

    producer = asyncio.create_task(produce())
    try:
        while True:
            batch: list[Any] = []
            item, error = await queue.get()
            while item is not end:
                batch.append(item)
                if len(batch) >= MAX_BATCH or queue.empty():
                    break
                item, error = queue.get_nowait()
            if batch:
                yield batch
            if item is end:
                if error is not None:
                    raise error
                return
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer


async def _expire_unclaimed(resource: _Resource, timeout: float) -> None:
    """End a resource stream that no driver call claims in time, so an unused one cannot live for ever."""
    with anyio.move_on_after(timeout):
        await resource.claimed.wait()
        return
    raise _Abort(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"no driver call used this resource within {timeout:g} s; pass its handle to a call after opening it",
    )


def _streaming_response(uuid: str, item: Any) -> Any:
    response = jumpstarter_pb2.StreamingDriverCallResponse(uuid=uuid)
    encode_into(response.result, item)
    return response


def _asks(context: grpc.aio.ServicerContext, key: str) -> bool:
    """Whether the client's metadata asks for our extension ``key``."""
    return any(k == key and v == "1" for k, v in context.invocation_metadata() or ())


def _log_failure(request: Any, exc: BaseException) -> None:
    if isinstance(exc, _Abort):
        logger.debug("refused %s on %s: %s", request.method, request.uuid, exc.details)
    else:
        logger.info("driver call %s on %s failed: %r", request.method, request.uuid, exc)


def _router_handler(service: _RouterService) -> grpc.GenericRpcHandler:
    """``RouterService.Stream`` with frames coded by hand (see :func:`streams.encode_frame`)."""
    return grpc.method_handlers_generic_handler(
        "jumpstarter.v1.RouterService",
        {
            "Stream": grpc.stream_stream_rpc_method_handler(
                service.Stream, request_deserializer=decode_frame, response_serializer=encode_frame
            )
        },
    )


class _RouterService:
    def __init__(self, session: Session) -> None:
        self.session = session

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        session = self.session
        metadata = dict(context.invocation_metadata() or ())
        try:
            request = json.loads(metadata["request"])
            if not isinstance(request, dict):
                raise ValueError("not a JSON object")
            kind = request.get("kind")
        except (KeyError, ValueError) as exc:
            await _abort(context, _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad 'request' metadata: {exc}"))
            return
        try:
            if kind == "driver":
                session.check_ready()
                driver, method = session.lookup(str(request.get("uuid")), str(request.get("method")), MethodKind.BYTESTREAM)
                token = current_session.set(session)
                try:
                    async with getattr(driver, method.name)() as stream:
                        await context.send_initial_metadata(())
                        await pump(stream, context)
                finally:
                    current_session.reset(token)
            elif kind == "resource":
                uuid = session.new_resource()
                resource = session._resources[uuid]
                handle = {
                    "kind": "client_stream",
                    "uuid": str(uuid),
                    "x_jmp_content_encoding": request.get("x_jmp_content_encoding"),
                }
                await context.send_initial_metadata((("resource", json.dumps(handle)),))
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_expire_unclaimed, resource, session.resource_timeout)
                        await pump(resource.wire_end, context)
                        tg.cancel_scope.cancel()
                except BaseException:
                    # The client went away or the stream failed: the driver must not take what
                    # arrived so far for the whole upload.
                    with anyio.CancelScope(shield=True):
                        await resource.wire_end.abort()
                    raise
                finally:
                    await resource.wire_end.aclose()
                    del session._resources[uuid]
            else:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown stream kind {kind!r}; expected driver or resource")
        except Exception as exc:  # noqa: BLE001 - every failure becomes a gRPC status
            logger.debug("stream %r failed: %r", request, exc)
            await _abort(context, exc)
