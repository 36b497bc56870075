"""Clients: the test side of a driver, rebuilt from a session's report.

The tree of clients mirrors the driver tree. Each node's class comes from the report's
``jumpstarter.dev/client`` label, imported only when ``JMP_DRIVERS_ALLOW`` allows it.
Calls are synchronous and go straight to a gRPC channel; failures come back as the
exceptions of :mod:`jumpstarter_drivers.core.errors`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any
from uuid import UUID

from .codec import decode, encode_into, from_json, restore
from .compat import toolkit_name_for
from .driver import GENERIC_CLIENT
from .errors import (
    ClientNotAllowed,
    ConfigurationError,
    DriverError,
    DriverInvalidArgument,
    DriverMethodNotImplemented,
    DriverTimeout,
    ExporterNotReady,
    ExporterUnreachable,
    Unauthenticated,
)
from .status import ExporterStatus
from .streams import (
    FRAME_DATA,
    FRAME_GOAWAY,
    FRAME_RST_STREAM,
    MAX_FRAME,
    Frame,
    decode_frame,
    encode_frame,
    pieces,
)

logger = logging.getLogger(__name__)
driver_log = logging.getLogger("exporter:driver")
#: Open log streams by exporter address (see DriverClient.log_stream).
_log_streams: dict[str, int] = {}
_log_streams_lock = threading.Lock()

CLIENT_LABEL = "jumpstarter.dev/client"
NAME_LABEL = "jumpstarter.dev/name"
TOOLKIT_CLIENT_LABEL = "jumpstarter-toolkit/client"
ERROR_TYPE_KEY = "x-jmp-error-type"
BATCH_KEY = "x-jmp-batch"
JSON_KEY = "x-jmp-json"
JSON_BATCH_UUID = "x-jmp-json-batch"

#: Levels of driver tree a client rebuilds from a report; a deeper tree (or a cycle) is refused.
MAX_TREE_DEPTH = 64

_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+$")


@dataclass(frozen=True)
class AllowList:
    """Which client classes may be imported: glob patterns over class paths, or everything.

    >>> AllowList.parse("jumpstarter_drivers.*").allows("jumpstarter_drivers.power.client.PowerClient")
    True
    >>> AllowList.parse("UNSAFE").unsafe
    True
    """

    patterns: tuple[str, ...] = ()
    unsafe: bool = False

    @classmethod
    def parse(cls, value: str | None, source: str = "JMP_DRIVERS_ALLOW") -> AllowList:
        """Parse the comma-separated form; ``None`` (unset) allows the bundled drivers only."""
        if value is None:
            return cls(("jumpstarter_drivers.*",))
        entries = [entry.strip() for entry in value.split(",")]
        if not value.strip() or any(not e for e in entries):
            raise ConfigurationError(
                f"{source}={value!r} has an empty entry; give comma-separated glob patterns of client "
                "class paths, e.g. 'jumpstarter_drivers.*', or UNSAFE to allow every class"
            )
        bad = [e for e in entries if e != "UNSAFE" and not _PATTERN.match(e)]
        if bad:
            raise ConfigurationError(
                f"{source}: {bad[0]!r} is not a glob over a class path (letters, digits, '_', '.', '*', '?', "
                "'[...]'); e.g. 'jumpstarter_drivers.*' or UNSAFE"
            )
        return cls(tuple(e for e in entries if e != "UNSAFE"), "UNSAFE" in entries)

    def allows(self, *paths: str) -> bool:
        return self.unsafe or any(fnmatchcase(p, pat) for p in paths for pat in self.patterns)

    def __str__(self) -> str:
        return ",".join(self.patterns + (("UNSAFE",) if self.unsafe else ()))


def translate(exc: Any, where: str = "") -> Exception:
    """The toolkit exception for a ``grpc.RpcError`` (the driver's message kept intact)."""
    import grpc

    code = exc.code()
    details = exc.details() or ""
    trailing = dict(exc.trailing_metadata() or ())
    from_driver = ERROR_TYPE_KEY in trailing
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return DriverInvalidArgument(details)
    if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
        return DriverMethodNotImplemented(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return ExporterNotReady(details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and from_driver:
        return DriverTimeout(details)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(
            f"{where}: the exporter refused our credentials: {details}; check JMP_GRPC_PASSPHRASE and the TLS settings"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not from_driver:
        return ExporterUnreachable(f"{where}: the exporter went away or stopped answering ({code.name}: {details})")
    if code == grpc.StatusCode.CANCELLED and not from_driver:
        return ExporterUnreachable(f"{where}: the call was cancelled ({details})")
    return DriverError(details or code.name)


@dataclass
class Connection:
    """A gRPC channel to one session and the stubs on it; shared by a whole client tree."""

    channel: Any
    address: str
    metadata: tuple[tuple[str, str], ...] = ()
    #: Seconds within which a peer that stopped answering is noticed (see ``connect(keepalive=)``).
    keepalive: float = 10.0
    #: Opens another channel to the same peer, for :meth:`answers`; ``None``: assume it answers.
    new_channel: Callable[[], Any] | None = None
    _closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        from google.protobuf import empty_pb2
        from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc

        self.pb = jumpstarter_pb2
        self.empty = empty_pb2.Empty
        self.exporter = jumpstarter_pb2_grpc.ExporterServiceStub(self.channel)
        self.stream = self.channel.stream_stream(
            "/jumpstarter.v1.RouterService/Stream", request_serializer=encode_frame, response_deserializer=decode_frame
        )
        #: Driver calls ask for JSON results (types kept) and, when streaming, for batches.
        self.call_metadata = self.metadata + ((JSON_KEY, "1"),)
        self.streaming_metadata = self.call_metadata + ((BATCH_KEY, "1"),)

    def answers(self, timeout: float) -> bool:
        """Whether the peer completes a new connection within ``timeout`` s.

        The connection is set up by gRPC's core on both sides, so a peer whose Python is busy
        still answers; a frozen or unreachable one does not.
        """
        import grpc

        if self.new_channel is None:
            return True
        channel = self.new_channel()
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            channel.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.channel.close()

    def abandon(self) -> None:
        """Give up on a peer found frozen: its calls fail now, the channel closes in the background.

        Closing waits for gRPC's writes to the peer, which a frozen peer never takes; the closing
        thread ends when the peer goes away or wakes up.
        """
        if not self._closed:
            self._closed = True
            threading.Thread(target=self.channel.close, name="jumpstarter-abandon", daemon=True).start()


class DriverClient:
    """The generic client: calls, streaming calls, byte streams and logs of one driver.

    Children are reachable by attribute (``client.power``) and through ``children``.
    """

    def __init__(
        self,
        *,
        uuid: UUID,
        labels: dict[str, str],
        connection: Connection,
        children: dict[str, DriverClient],
        description: str | None = None,
        methods_description: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.uuid = uuid
        self.labels = labels
        self.connection = connection
        self.children = children
        self.description = description
        self.methods_description = methods_description or {}
        self.name = name
        self._uuid = str(uuid)

    def __getattr__(self, name: str) -> DriverClient:
        children = self.__dict__.get("children", {})
        if name in children:
            return children[name]
        raise AttributeError(
            f"{type(self).__name__} {self.__dict__.get('name') or 'root'!r} has no attribute or child {name!r}"
            + (f"; children: {', '.join(children)}" if children else "")
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name or 'root'} {self._uuid}>"

    def __enter__(self) -> DriverClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection behind this client tree."""
        self.connection.close()

    # calls -----------------------------------------------------------------------------------

    def _where(self, method: str) -> str:
        return f"{self.name or 'root'}.{method}() on {self.connection.address}"

    def call(self, method: str, *args: Any) -> Any:
        """Call an exported unary method; the result is plain JSON data (see :meth:`call_as`).

        From our own exporters the result keeps the JSON types the driver returned (``5`` stays
        an ``int``); Jumpstarter's send every number as a float (``5.0``).
        """
        import grpc

        request = self.connection.pb.DriverCallRequest(uuid=self._uuid, method=method)
        for arg in args:
            encode_into(request.args.add(), arg)
        try:
            response, call = self.connection.exporter.DriverCall.with_call(
                request, metadata=self.connection.call_metadata
            )
        except grpc.RpcError as exc:
            raise translate(exc, self._where(method)) from None
        if (JSON_KEY, "1") in (call.trailing_metadata() or ()):
            return from_json(response.result.string_value)
        return decode(response.result)

    def call_as(self, result_type: Any, method: str, *args: Any) -> Any:
        """Call ``method`` and restore its result to ``result_type`` (``int``, a dataclass, ...)."""
        return restore(self.call(method, *args), result_type)

    def streamingcall(self, method: str, *args: Any) -> Iterator[Any]:
        """Call an exported generator method; yields each item as it arrives."""
        import grpc

        request = self.connection.pb.StreamingDriverCallRequest(uuid=self._uuid, method=method)
        for arg in args:
            encode_into(request.args.add(), arg)
        responses = self.connection.exporter.StreamingDriverCall(request, metadata=self.connection.streaming_metadata)
        batched = None
        try:
            for response in responses:
                if response.uuid == JSON_BATCH_UUID:  # our session: a batch as JSON (see session.JSON_BATCH_UUID)
                    yield from from_json(response.result.string_value)
                    continue
                if batched is None:
                    batched = dict(responses.initial_metadata()).get(BATCH_KEY) == "1"
                if batched:
                    yield from (decode(value) for value in response.result.list_value.values)
                else:
                    yield decode(response.result)
        except grpc.RpcError as exc:
            raise translate(exc, self._where(method)) from None
        finally:
            responses.cancel()

    @contextlib.contextmanager
    def stream(self, method: str = "connect", *, raise_on_eof: bool = False) -> Iterator[ByteStream]:
        """Open the driver's exported byte stream ``method`` (a console, say).

        At its end the stream's ``receive()`` returns ``b""``; with ``raise_on_eof`` it raises
        ``anyio.EndOfStream`` instead, as Jumpstarter's streams do (see :class:`ByteStream`).
        """
        request = {"kind": "driver", "uuid": self._uuid, "method": method}
        with ByteStream.open(self.connection, request, self._where(method), raise_on_eof) as stream:
            yield stream

    @contextlib.contextmanager
    def resource(
        self, content_encoding: str | None = None, *, raise_on_eof: bool = False
    ) -> Iterator[tuple[dict[str, Any], ByteStream]]:
        """Open a resource stream; yields ``(handle, stream)``: pass the handle to a driver call.

        The stream ends as :meth:`stream`'s does (``b""``, or ``anyio.EndOfStream`` with ``raise_on_eof``).
        """
        request = {"kind": "resource", "uuid": self._uuid, "x_jmp_content_encoding": content_encoding}
        with ByteStream.open(self.connection, request, self._where("resource"), raise_on_eof) as stream:
            handle = json.loads(stream.initial_metadata["resource"])
            yield handle, stream

    @contextlib.contextmanager
    def log_stream(self, join: bool = False) -> Iterator[None]:
        """Re-emit the exporter's driver logs on the logger ``exporter:driver`` while inside.

        Returns once the exporter has the subscription, so nothing logged afterwards is missed.
        With ``join``, a stream from the same exporter already open in this process (the pytest
        plugin's, say) is used instead of a second one, so each record is emitted once.
        """
        address = self.connection.address
        with _log_streams_lock:
            joined = join and _log_streams.get(address, 0) > 0
            if not joined:
                _log_streams[address] = _log_streams.get(address, 0) + 1
        if joined:
            yield
            return
        try:
            with self._subscribe_logs():
                yield
        finally:
            with _log_streams_lock:
                _log_streams[address] -= 1
                if not _log_streams[address]:
                    del _log_streams[address]

    @contextlib.contextmanager
    def _subscribe_logs(self) -> Iterator[None]:
        import grpc

        call = self.connection.exporter.LogStream(self.connection.empty(), metadata=self.connection.metadata)
        subscribed = threading.Event()

        def pump() -> None:
            try:
                call.initial_metadata()
                subscribed.set()
                for record in call:
                    level = logging.getLevelName(record.severity)
                    driver_log.log(
                        level if isinstance(level, int) else logging.INFO,
                        record.message,
                        extra={"driver_uuid": record.uuid},
                    )
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    logger.warning("log stream from %s ended: %s", self.connection.address, exc.details())
            finally:
                subscribed.set()

        thread = threading.Thread(target=pump, name="jumpstarter-log-stream", daemon=True)
        thread.start()
        subscribed.wait(1.0)  # our sessions confirm at once; some peers send nothing until the first record
        try:
            yield
        finally:
            call.cancel()
            thread.join(5)

    # session-level calls ---------------------------------------------------------------------

    def _session_call(self, rpc: str, request: Any) -> Any:
        """A session-level RPC (not addressed to a driver), bounded at 10 s."""
        import grpc

        try:
            return getattr(self.connection.exporter, rpc)(request, metadata=self.connection.metadata, timeout=10)
        except grpc.RpcError as exc:
            raise translate(exc, self._where(rpc)) from None

    def get_status(self) -> ExporterStatus:
        """The session's status (``GetStatus``)."""
        return ExporterStatus(self._session_call("GetStatus", self.connection.pb.GetStatusRequest()).status)

    def end_session(self) -> bool:
        """Tell the exporter this client is done (``EndSession``)."""
        return self._session_call("EndSession", self.connection.pb.EndSessionRequest()).success

    def walk(self) -> Iterator[DriverClient]:
        """This client and every descendant, parents first."""
        yield self
        for child in self.children.values():
            yield from child.walk()


class UnavailableClient(DriverClient):
    """Stands for a node whose client class may not or cannot be imported; using it raises."""

    def __init__(self, *, reason: Exception, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise self.reason

    call = streamingcall = stream = resource = call_as = _refuse

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("children", {}):
            return self.children[name]
        raise self.__dict__["reason"]


class _Chunks:
    """Byte chunks handed from one thread to another, bounded in bytes (one chunk may overshoot)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Condition()
        self.items: deque[Any] = deque()
        self.size = 0
        self.closed = False
        #: When the consumer last took something (a stalled consumer is how a frozen peer shows).
        self.taken_at = time.monotonic()

    def put(self, item: Any, size: int, timeout: float | None) -> bool:
        """Queue ``item`` once fewer than ``limit`` bytes wait; ``False`` when no room came in ``timeout`` s."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.closed or self.size < self.limit, timeout):
                return False
            if not self.closed:
                if not self.items:
                    self.taken_at = time.monotonic()
                self.items.append(item)
                self.size += size
                self.lock.notify_all()
            return True

    def close(self) -> None:
        """Wake everyone; what is queued stays readable, nothing more is accepted."""
        with self.lock:
            self.closed = True
            self.lock.notify_all()


class ByteStream:
    """The client end of a ``RouterService.Stream``: a blocking byte stream with timeouts.

    ``send`` queues bytes (waiting while 4 MiB are unsent); small writes queued together travel
    in one frame. ``receive`` returns the next bytes, and at the end of the stream ``b""``, as a
    socket does; ``for chunk in stream:`` stops there. A stream opened with
    ``raise_on_eof=True`` raises ``anyio.EndOfStream`` at the end instead, as Jumpstarter's
    streams do, so code ported from Jumpstarter that waits for that exception ends too.
    A peer that stops answering (frozen, cut off) fails the stream with
    :class:`ExporterUnreachable` within the connection's keepalive bound, uploads included.
    """

    #: Unsent and unread bytes each direction holds before the writer waits.
    LIMIT = 4 << 20

    def __init__(self, connection: Connection, request: dict[str, Any], where: str, raise_on_eof: bool = False) -> None:
        self.where = where
        self.raise_on_eof = raise_on_eof
        self._connection = connection
        self._outbox = _Chunks(self.LIMIT)
        self._inbox = _Chunks(self.LIMIT)
        metadata = connection.metadata + (("request", json.dumps(request)),)
        self._call = connection.stream(self._requests(), metadata=metadata)
        self._eof_sent = False
        self._error: Exception | None = None
        self._buffer = b""
        self.initial_metadata: dict[str, str] = {}

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, connection: Connection, request: dict[str, Any], where: str, raise_on_eof: bool = False
    ) -> Iterator[ByteStream]:
        import grpc

        stream = cls(connection, request, where, raise_on_eof)
        try:
            try:
                stream.initial_metadata = dict(stream._call.initial_metadata())
            except grpc.RpcError as exc:
                raise translate(exc, where) from None
            if stream._call.done() and stream._call.code() != grpc.StatusCode.OK:
                raise translate(stream._call, where)
            reader = threading.Thread(target=stream._read, name="jumpstarter-stream-reader", daemon=True)
            reader.start()
            try:
                yield stream
            finally:
                stream.close()
                stream._inbox.close()  # nobody reads any more: what still arrives is dropped
                reader.join(0.2)  # a driver that ends its side promptly closes cleanly
                stream._call.cancel()
                reader.join(5)
        finally:
            stream._call.cancel()
            stream._outbox.close()

    def _requests(self) -> Iterator[Frame]:
        """What gRPC sends: queued bytes joined into frames of up to 1 MiB, then GOAWAY, then the end."""
        outbox = self._outbox
        while True:
            with outbox.lock:
                outbox.lock.wait_for(lambda: outbox.items or outbox.closed)
                if not outbox.items:
                    return
                first = outbox.items.popleft()
                if isinstance(first, Frame):
                    frame = first
                else:
                    parts = [first]
                    size = len(first)
                    while outbox.items and isinstance(outbox.items[0], bytes):
                        if size + len(outbox.items[0]) > MAX_FRAME:
                            break
                        parts.append(outbox.items.popleft())
                        size += len(parts[-1])
                    frame = Frame(parts[0] if len(parts) == 1 else b"".join(parts))
                outbox.size -= len(frame.payload)
                outbox.taken_at = time.monotonic()
                outbox.lock.notify_all()
            yield frame

    def _read(self) -> None:
        import grpc

        inbox = self._inbox
        try:
            for frame in self._call:
                if frame.frame_type == FRAME_DATA and frame.payload:
                    for piece in pieces(frame.payload):
                        inbox.put(piece, len(piece), None)  # dropped once the stream is closed
                elif frame.frame_type in (FRAME_GOAWAY, FRAME_RST_STREAM):
                    break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._error = translate(exc, self.where)
        finally:
            inbox.close()

    def _put(self, item: bytes | Frame, timeout: float | None) -> None:
        """Queue an outgoing frame; waits while the driver is slow, fails once the call is over.

        While nothing is taken for a keepalive period, the exporter is probed on a fresh
        connection: a frozen exporter also stops the gRPC keepalive of a connection whose
        writes are stuck, so an upload would otherwise wait for ever.
        """
        size = len(item.payload) if isinstance(item, Frame) else len(item)
        deadline = None if timeout is None else time.monotonic() + timeout
        bound = self._connection.keepalive
        while True:
            if self._call.done():
                raise self._error or self._ended()
            if self._outbox.put(item, size, min(0.1, bound)):
                if self._outbox.closed:
                    raise self._ended()
                return
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise TimeoutError(f"{self.where}: the driver took no data for {timeout} s")
            if now - self._outbox.taken_at > bound:
                if not self._connection.answers(bound):
                    self._connection.abandon()
                    self._error = ExporterUnreachable(
                        f"{self.where}: the exporter stopped answering (nothing taken for {now - self._outbox.taken_at:.1f} s "
                        f"and no new connection within {bound:g} s); is it frozen or cut off?"
                    )
                    raise self._error
                self._outbox.taken_at = time.monotonic()

    def _ended(self) -> Exception:
        return ExporterUnreachable(f"{self.where}: the stream is closed")

    def send(self, data: bytes, timeout: float | None = None) -> None:
        """Send bytes; ``TimeoutError`` if the driver takes none of them for ``timeout`` seconds."""
        if self._eof_sent:
            raise ValueError(f"{self.where}: cannot send after send_eof()")
        if isinstance(data, bytes) and len(data) <= MAX_FRAME:
            if data:
                self._put(data, timeout)
            return
        view = memoryview(data)
        for start in range(0, len(view), MAX_FRAME):
            self._put(bytes(view[start : start + MAX_FRAME]), timeout)

    def send_eof(self) -> None:
        """Tell the driver no more bytes will come from this side."""
        if not self._eof_sent:
            self._eof_sent = True
            self._put(Frame(frame_type=FRAME_GOAWAY), 5.0)

    def receive(self, timeout: float | None = None) -> bytes:
        """The next bytes; at the end ``b""`` (or ``anyio.EndOfStream`` with ``raise_on_eof``).

        ``TimeoutError`` when nothing arrives within ``timeout`` seconds; the exporter's failure
        (:class:`ExporterUnreachable`, say) when the stream broke.
        """
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        inbox = self._inbox
        with inbox.lock:
            if not inbox.lock.wait_for(lambda: inbox.items or inbox.closed, timeout):
                raise TimeoutError(f"{self.where}: no data within {timeout} s")
            if inbox.items:
                data = inbox.items.popleft()
                inbox.size -= len(data)
                inbox.lock.notify_all()
                return data
        if self._error is not None:
            raise self._error
        if self.raise_on_eof:
            import anyio

            raise anyio.EndOfStream
        return b""

    def read_exactly(self, size: int, timeout: float | None = None) -> bytes:
        """Exactly ``size`` bytes (``EOFError`` if the stream ends first)."""
        chunks, have = [], 0
        while have < size:
            data = self._receive_or_end(timeout)
            if not data:
                raise EOFError(f"{self.where}: stream ended after {have} of {size} bytes")
            chunks.append(data)
            have += len(data)
        joined = b"".join(chunks)
        self._buffer = joined[size:]
        return joined[:size]

    def _receive_or_end(self, timeout: float | None = None) -> bytes:
        """:meth:`receive`, with ``b""`` at the end whatever ``raise_on_eof`` says."""
        import anyio

        try:
            return self.receive(timeout)
        except anyio.EndOfStream:
            return b""

    def __iter__(self) -> Iterator[bytes]:
        """Every chunk until the end of the stream."""
        while data := self._receive_or_end():
            yield data

    def close(self) -> None:
        """Half-close, so the driver sees the end of what was sent, then end the request stream."""
        with contextlib.suppress(Exception):
            self.send_eof()
        self._outbox.close()


# building the tree -------------------------------------------------------------------------


def client_class(labels: dict[str, str], allow: AllowList) -> type[DriverClient] | Exception:
    """The client class a report's labels name, or the error that stands in for it.

    The path checked against ``allow`` is the path imported. A Jumpstarter client name admits
    ours only through the fixed table of :mod:`.compat`, never through another label. Modules
    with a dunder part (``pkg.__main__``) are never imported: they act on import.
    """
    theirs = labels.get(CLIENT_LABEL, GENERIC_CLIENT)
    mapped = toolkit_name_for(theirs)
    ours = labels.get(TOOLKIT_CLIENT_LABEL) or mapped
    if ours == GENERIC_CLIENT:
        return DriverClient
    checked = (ours, theirs) if ours == mapped != theirs else (ours,)
    if not allow.allows(*checked):
        return ClientNotAllowed(
            f"client class {ours} is not allowed by JMP_DRIVERS_ALLOW={str(allow)!r}; set JMP_DRIVERS_ALLOW "
            f"(or --jumpstarter-drivers-allow) to a pattern matching it, e.g. '{ours.split('.')[0]}.*', or UNSAFE"
        )
    module_name, _, class_name = ours.rpartition(".")
    not_a_client = ClientNotAllowed(
        f"{ours} is not a client class (a jumpstarter_drivers DriverClient subclass); the exporter's report "
        "names something else, refused"
    )
    if not module_name or any(part.startswith("__") for part in ours.split(".")):
        return not_a_client
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        return ClientNotAllowed(f"client class {ours} cannot be imported ({exc}); install the package that provides it")
    if not (isinstance(cls, type) and issubclass(cls, DriverClient)):
        return not_a_client
    return cls


def build_tree(connection: Connection, report: Any, allow: AllowList) -> DriverClient:
    """Rebuild the client tree from a ``GetReportResponse``; returns the root."""
    reports = list(report.reports)
    children_of: dict[str, list[Any]] = {r.uuid: [] for r in reports}
    roots = []
    for r in reports:
        if r.parent_uuid and r.parent_uuid in children_of:
            children_of[r.parent_uuid].append(r)
        else:
            roots.append(r)
    if not roots:
        raise DriverError(f"the exporter at {connection.address} reported no drivers")

    def build(r: Any, depth: int = 1) -> DriverClient:
        if depth > MAX_TREE_DEPTH:
            raise DriverError(
                f"the exporter at {connection.address} reported a driver tree deeper than {MAX_TREE_DEPTH} levels "
                "(or a driver that is its own ancestor); refused: such a tree is a broken or hostile report"
            )
        labels = dict(r.labels)
        children = {c.labels.get(NAME_LABEL, c.uuid): build(c, depth + 1) for c in children_of[r.uuid]}
        common = dict(
            uuid=UUID(r.uuid),
            labels=labels,
            connection=connection,
            children=children,
            description=r.description or None,
            methods_description=dict(r.methods_description),
            name=labels.get(NAME_LABEL),
        )
        cls = client_class(labels, allow)
        if isinstance(cls, Exception):
            return UnavailableClient(reason=cls, **common)
        return cls(**common)

    return build(roots[0])
