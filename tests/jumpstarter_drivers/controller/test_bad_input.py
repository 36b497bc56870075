"""Bad input to the controller: each a clear gRPC error, nothing else disturbed."""

from __future__ import annotations

import contextlib
import random
import socket

import grpc
import pytest
from google.protobuf import duration_pb2
from jumpstarter_protocol.jumpstarter.client.v1 import client_pb2, client_pb2_grpc
from jumpstarter_protocol.jumpstarter.v1 import jumpstarter_pb2, jumpstarter_pb2_grpc, kubernetes_pb2

from jumpstarter_drivers.controller import tokens
from jumpstarter_drivers.controller.server import HANDSHAKE_TIMEOUT
from jumpstarter_drivers.controller.services import MAX_STREAMS_PER_PEER


class Caller:
    """Raw stubs to one replica with one token."""

    def __init__(self, lab, token: str) -> None:
        self.channel = grpc.secure_channel(
            lab.replicas[0].endpoint, grpc.ssl_channel_credentials(root_certificates=lab.cert.read_bytes())
        )
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.client = client_pb2_grpc.ClientServiceStub(self.channel)
        self.controller = jumpstarter_pb2_grpc.ControllerServiceStub(self.channel)

    def lease(self, selector: str = "board=rpi4", **extra) -> client_pb2.Lease:
        lease = client_pb2.Lease(selector=selector, duration=duration_pb2.Duration(seconds=60), **extra)
        return self.client.CreateLease(client_pb2.CreateLeaseRequest(lease=lease), metadata=self.metadata, timeout=10)

    def refused(self, call, request, code: grpc.StatusCode, text: str) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, metadata=self.metadata, timeout=10)
        assert caught.value.code() == code, caught.value.details()
        assert text in caught.value.details()


@pytest.fixture
def board(lab):
    """The lab with one registered, online exporter ``board-1`` (board=rpi4, arch=arm64)."""
    lab.serve("board-1", {"board": "rpi4", "arch": "arm64"})
    return lab


def test_malformed_selectors_are_invalid_arguments(board) -> None:
    alice = Caller(board, board.token("client", "alice"))
    alice.refused(
        lambda request, **kw: alice.lease("board in (rpi4"), None, grpc.StatusCode.INVALID_ARGUMENT, "at the end"
    )
    selector = kubernetes_pb2.LabelSelector(
        match_expressions=[kubernetes_pb2.LabelSelectorRequirement(key="board", operator="Like", values=["x"])]
    )
    request = jumpstarter_pb2.RequestLeaseRequest(selector=selector, duration=duration_pb2.Duration(seconds=5))
    alice.refused(alice.controller.RequestLease, request, grpc.StatusCode.INVALID_ARGUMENT, "operator 'Like'")


def test_a_selector_nothing_could_match_fails_at_once_naming_the_labels(board) -> None:
    alice = Caller(board, board.token("client", "alice"))
    with pytest.raises(grpc.RpcError) as caught:
        alice.lease("board=imx8")
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the labels that exist: arch=arm64, board=rpi4" in caught.value.details()


def test_someone_elses_lease_and_unknown_leases(board) -> None:
    alice = Caller(board, board.token("client", "alice"))
    bob = Caller(board, board.token("client", "bob"))
    name = alice.lease().name
    lease_id = name.rsplit("/", 1)[-1]
    for call, request in (
        (bob.client.GetLease, client_pb2.GetLeaseRequest(name=name)),
        (bob.client.DeleteLease, client_pb2.DeleteLeaseRequest(name=name)),
        (bob.controller.Dial, jumpstarter_pb2.DialRequest(lease_name=lease_id)),
        (bob.controller.ReleaseLease, jumpstarter_pb2.ReleaseLeaseRequest(name=lease_id)),
    ):
        bob.refused(call, request, grpc.StatusCode.PERMISSION_DENIED, "belongs to another client")
    bob.refused(bob.client.GetLease, client_pb2.GetLeaseRequest(name="nope"), grpc.StatusCode.NOT_FOUND, "no lease")
    bob.refused(
        bob.client.GetLease,
        client_pb2.GetLeaseRequest(name=f"namespaces/other/leases/{lease_id}"),
        grpc.StatusCode.PERMISSION_DENIED,
        "not in your namespace",
    )
    assert alice.client.GetLease(client_pb2.GetLeaseRequest(name=name), metadata=alice.metadata).name == name


def test_tokens_missing_revoked_or_of_the_wrong_kind(board) -> None:
    nobody = Caller(board, "")
    nobody.refused(
        nobody.client.ListExporters, client_pb2.ListExportersRequest(), grpc.StatusCode.UNAUTHENTICATED, "no token"
    )
    forged = Caller(board, "jmp_forged")
    forged.refused(
        forged.client.ListExporters, client_pb2.ListExportersRequest(), grpc.StatusCode.UNAUTHENTICATED, "unknown"
    )
    exporter = Caller(board, board.token("exporter", "board-2"))
    exporter.refused(
        exporter.client.ListExporters,
        client_pb2.ListExportersRequest(),
        grpc.StatusCode.PERMISSION_DENIED,
        "this call is for clients, and the token belongs to exporter board-2",
    )
    alice = Caller(board, board.token("client", "alice"))
    alice.refused(
        alice.controller.Register, jumpstarter_pb2.RegisterRequest(), grpc.StatusCode.PERMISSION_DENIED, "for exporters"
    )
    assert alice.client.ListExporters(client_pb2.ListExportersRequest(), metadata=alice.metadata).exporters
    assert board.store(lambda store: tokens.revoke(store, "client", "alice")) == 1
    alice.refused(
        alice.client.ListExporters, client_pb2.ListExportersRequest(), grpc.StatusCode.UNAUTHENTICATED, "revoked"
    )


def test_an_exporter_listens_only_for_its_own_leases(board) -> None:
    alice = Caller(board, board.token("client", "alice"))
    lease_id = alice.lease().name.rsplit("/", 1)[-1]
    board.wait_for(lambda state: "board-1" in state.assignments)
    other = Caller(board, board.token("exporter", "board-2"))
    with pytest.raises(grpc.RpcError) as caught:
        next(other.controller.Listen(jumpstarter_pb2.ListenRequest(lease_name=lease_id), metadata=other.metadata))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_bad_router_token_is_refused(board) -> None:
    caller = Caller(board, "")
    stream = caller.channel.stream_stream("/jumpstarter.v1.RouterService/Stream")
    with pytest.raises(grpc.RpcError) as caught:
        list(stream(iter([b""]), metadata=(("authorization", "Bearer abc.def"),), timeout=10))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_garbage_on_the_port_disturbs_nothing(board) -> None:
    host, port = board.replicas[0].endpoint.rsplit(":", 1)
    noise = random.Random(9)
    # random bytes, plain HTTP, a malformed TLS record, and a TLS record that never completes (stalls the handshake)
    payloads = [
        bytes(noise.getrandbits(8) for _ in range(4096)),
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello",
        b"\x16\x03\x01\x02\x00abc",
    ]
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(payload)
            sock.settimeout(HANDSHAKE_TIMEOUT + 20)  # a stalled handshake is cut after HANDSHAKE_TIMEOUT
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(4096):
                    pass
    alice = Caller(board, board.token("client", "alice"))
    (exporter,) = alice.client.ListExporters(client_pb2.ListExportersRequest(), metadata=alice.metadata).exporters
    assert exporter.online


def test_streams_per_peer_are_bounded(board) -> None:
    exporter = Caller(board, board.token("exporter", "board-9"))
    exporter.controller.Register(jumpstarter_pb2.RegisterRequest(), metadata=exporter.metadata, timeout=10)
    streams = []
    try:
        for _ in range(MAX_STREAMS_PER_PEER):
            stream = exporter.controller.Status(jumpstarter_pb2.StatusRequest(), metadata=exporter.metadata)
            next(stream)
            streams.append(stream)
        with pytest.raises(grpc.RpcError) as caught:
            next(exporter.controller.Status(jumpstarter_pb2.StatusRequest(), metadata=exporter.metadata, timeout=10))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"exporter board-9 has {MAX_STREAMS_PER_PEER} streams open already" in caught.value.details()
    finally:
        for stream in streams:
            stream.cancel()


def test_list_calls_come_in_pages_when_asked(board) -> None:
    for index in range(5):
        board.token("exporter", f"spare-{index}", labels={"board": "spare"})
    alice = Caller(board, board.token("client", "alice"))
    leases = {alice.lease().name for _ in range(3)}

    def every(call, request_type, field: str) -> list[list[str]]:
        pages, token = [], ""
        while True:
            answer = call(request_type(page_size=2, page_token=token), metadata=alice.metadata, timeout=10)
            pages.append([item.name for item in getattr(answer, field)])
            token = answer.next_page_token
            if not token:
                return pages

    pages = every(alice.client.ListExporters, client_pb2.ListExportersRequest, "exporters")
    assert [len(names) for names in pages] == [2, 2, 2]
    paged = [name for names in pages for name in names]
    whole = alice.client.ListExporters(client_pb2.ListExportersRequest(), metadata=alice.metadata).exporters
    assert paged == sorted(item.name for item in whole)
    assert len(set(paged)) == 6
    pages = every(alice.client.ListLeases, client_pb2.ListLeasesRequest, "leases")
    assert {name for names in pages for name in names} == leases
    alice.refused(alice.client.ListExporters, client_pb2.ListExportersRequest(page_token="3"),
                  grpc.StatusCode.INVALID_ARGUMENT, "next_page_token")
    alice.refused(alice.client.ListLeases, client_pb2.ListLeasesRequest(page_size=-1),
                  grpc.StatusCode.INVALID_ARGUMENT, "page_size -1")
