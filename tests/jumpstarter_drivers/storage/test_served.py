"""What the TFTP and HTTP drivers share (ServedDirectory): the storage child, the port, start/stop/close."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from jumpstarter_drivers.core import ConfigurationError, DriverError, serve
from jumpstarter_drivers.http import HttpServer, HttpServerClient
from jumpstarter_drivers.power import MockPower
from jumpstarter_drivers.storage import Storage
from jumpstarter_drivers.storage.client import ServedDirectoryClient
from jumpstarter_drivers.storage.served import ServedDirectory
from jumpstarter_drivers.tftp import Tftp, TftpClient


@pytest.fixture(params=[(Tftp, TftpClient), (HttpServer, HttpServerClient)], ids=["tftp", "http"])
def kind(request: pytest.FixtureRequest) -> tuple[type[ServedDirectory], type[ServedDirectoryClient]]:
    """A served-directory driver class and its client class."""
    return request.param


def _socket(driver: type[ServedDirectory]) -> socket.socket:
    """An IPv4 socket of the driver's transport."""
    return socket.socket(socket.AF_INET, socket.SOCK_DGRAM if driver.transport == "udp" else socket.SOCK_STREAM)


def test_storage_child_is_created_on_the_root_or_checked(kind: tuple, tmp_path: Path) -> None:
    driver_class, _ = kind
    root = tmp_path / "new" / "root"
    created = driver_class(root_dir=str(root))
    assert root.is_dir() and created.children["storage"].root == root.resolve()
    assert created.server.root == created.storage.root

    shared = Storage(root_dir=str(root))
    assert driver_class(root_dir=str(root), children={"storage": shared}).storage is shared
    with pytest.raises(ConfigurationError, match=rf"{driver_class.__name__}: child 'storage' is rooted at"):
        driver_class(root_dir=str(root), children={"storage": Storage(root_dir=str(tmp_path / "other"))})
    with pytest.raises(ConfigurationError, match="child 'storage' must be Storage, got MockPower"):
        driver_class(root_dir=str(root), children={"storage": MockPower()})
    with pytest.raises(ConfigurationError, match="port 70000 is not in 0..65535"):
        driver_class(root_dir=str(root), port=70000)


@pytest.mark.parametrize("host", ["no-such-host.invalid", "999.1.1.1"])
def test_a_host_that_does_not_resolve_is_a_configuration_error(kind: tuple, tmp_path: Path, host: str) -> None:
    driver_class, _ = kind
    with pytest.raises(ConfigurationError, match=rf"{driver_class.__name__}: host {host!r} does not resolve"):
        driver_class(root_dir=str(tmp_path), host=host)


def test_bind_failure_is_raised_by_start(kind: tuple, tmp_path: Path) -> None:
    driver_class, _ = kind
    with _socket(driver_class) as taken:
        taken.bind(("127.0.0.1", 0))
        if driver_class.transport == "tcp":
            taken.listen()
        port = taken.getsockname()[1]
        driver = driver_class(root_dir=str(tmp_path), port=port)
        expected = f"{driver_class.protocol} server cannot bind 127.0.0.1:{port}/{driver_class.transport}: Address"
        with pytest.raises(DriverError, match=f"{expected} already in use; free that port"):
            driver.start()
        with (
            serve(driver_class(root_dir=str(tmp_path), port=port)) as client,
            pytest.raises(DriverError, match="in use"),
        ):
            client.start()
    driver.start()  # the port is free now
    try:
        assert driver.get_port() == port
    finally:
        driver.close()


def test_client_starts_stops_and_close_releases_the_port(kind: tuple, tmp_path: Path) -> None:
    driver_class, client_class = kind
    driver = driver_class(root_dir=str(tmp_path))
    with serve(driver) as client:
        assert type(client) is client_class
        assert client.get_port() == 0 and client.get_host() == "127.0.0.1"
        client.start()
        client.start()  # already running: no error
        port = client.get_port()
        assert port > 0 and driver.server.running
        client.stop()
        assert not driver.server.running and client.get_port() == 0
        client.start()
        port = client.get_port()
        assert driver.server.running
    assert not driver.server.running
    with _socket(driver_class) as sock:
        sock.bind(("127.0.0.1", port))  # released by close()
