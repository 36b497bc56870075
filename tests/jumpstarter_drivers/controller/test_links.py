"""Byte links: bytes intact both ways over TLS, and a reader that stops bounds what is held."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl

from jumpstarter_drivers.controller import links
from jumpstarter_drivers.controller.links import Link, handshake


async def _tls_pair(cert, key) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Two ends of a TLS connection on loopback, handshakes done, both non-blocking."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    near = client_context.wrap_socket(client, server_hostname="127.0.0.1", do_handshake_on_connect=False)
    far = server_context.wrap_socket(accepted, server_side=True, do_handshake_on_connect=False)
    for sock in (near, far):
        sock.setblocking(False)
    await asyncio.gather(handshake(near, 10), handshake(far, 10))
    return near, far


def test_bytes_cross_a_tls_splice_intact_both_ways(tls_pair) -> None:
    """local A <-> Link | TLS | Link <-> local B: 6 MiB each way arrive byte for byte."""
    payload_ab, payload_ba = os.urandom(6 << 20), os.urandom(6 << 20)

    async def run() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        tls_near, tls_far = await _tls_pair(*tls_pair)
        a_out, a_in = socket.socketpair()
        b_in, b_out = socket.socketpair()
        links.splice(Link(a_in), Link(tls_near))
        links.splice(Link(tls_far), Link(b_in))
        for sock in (a_out, b_out):
            sock.setblocking(False)

        async def pump(sock: socket.socket, payload: bytes) -> bytes:
            received = bytearray()
            sending = loop.create_task(loop.sock_sendall(sock, payload))
            while len(received) < len(payload):
                received += await loop.sock_recv(sock, 1 << 20)
            await sending
            return bytes(received)

        got_b, got_a = await asyncio.wait_for(asyncio.gather(pump(a_out, payload_ab), pump(b_out, payload_ba)), 60)
        a_out.close()
        b_out.close()
        return got_b, got_a

    got_b, got_a = asyncio.run(run())
    assert hashlib.sha256(got_b).digest() == hashlib.sha256(payload_ba).digest()
    assert hashlib.sha256(got_a).digest() == hashlib.sha256(payload_ab).digest()


def test_a_stalled_reader_stops_the_writer_and_bounds_what_is_held() -> None:
    """Nobody reads B: the link into B holds at most about ``high`` plus one read, and A stops being read."""

    async def run() -> tuple[int, int, bool]:
        loop = asyncio.get_running_loop()
        a_out, a_in = socket.socketpair()
        b_in, b_out = socket.socketpair()
        a, b = Link(a_in, high=256 << 10), Link(b_in, high=256 << 10)
        links.splice(a, b)
        a_out.setblocking(False)
        sent = 0
        chunk = os.urandom(64 << 10)
        try:
            async with asyncio.timeout(3):
                while True:  # until the kernel buffers and the links refuse more
                    await loop.sock_sendall(a_out, chunk)
                    sent += len(chunk)
        except TimeoutError:
            pass
        held, reading = b.unsent, a._reading
        for sock in (a_out, b_out):
            sock.close()
        return sent, held, reading

    sent, held, reading = asyncio.run(run())
    assert sent > 512 << 10  # the kernel took some, the links some, then it stopped
    assert (256 << 10) < held <= (256 << 10) + links.READ_CHUNK  # B filled past high, then A was no longer read
    assert not reading


def test_a_failed_accept_is_logged_and_the_listener_keeps_serving(caplog) -> None:
    """Out of file descriptors for a moment: the next connection is still accepted."""

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        real, failures = loop.sock_accept, [OSError(24, "Too many open files")]

        async def flaky(sock: socket.socket) -> tuple[socket.socket, object]:
            if failures:
                raise failures.pop()
            return await real(sock)

        loop.sock_accept = flaky  # type: ignore[method-assign]
        served: list[object] = []
        accepted = asyncio.Event()

        def serve(connection: socket.socket, peer: object) -> None:
            connection.close()
            served.append(peer)
            accepted.set()

        task = asyncio.create_task(links.accept(listener, serve, "test listener"))
        try:
            client = socket.create_connection(listener.getsockname())
            await asyncio.wait_for(accepted.wait(), 10)
            client.close()
        finally:
            del loop.sock_accept
            task.cancel()
            listener.close()
        return served

    served = asyncio.run(run())
    assert len(served) == 1
    assert any("test listener: cannot accept a connection: [Errno 24]" in r.getMessage() for r in caplog.records)
