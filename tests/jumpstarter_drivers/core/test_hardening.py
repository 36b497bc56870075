"""What a hostile exporter can make a client do, and what a careless one must be told."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from jumpstarter_drivers import ClientNotAllowed, ConfigurationError, Session, connect
from jumpstarter_drivers.core.session import CLIENT_LABEL, TOOLKIT_CLIENT_LABEL
from jumpstarter_drivers.power import MockPower

from .sample_drivers import Sample


class HostileSession(Session):
    """A real session whose report names the client classes it is given, not its drivers' own."""

    def __init__(self, labels: dict[str, str]) -> None:
        super().__init__(root_device=MockPower())
        self.forged = labels

    def report(self):
        response = super().report()
        response.reports[0].labels.update(self.forged)
        return response


def marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module that leaves a file behind when imported; its name and that file."""
    name = f"jmp_marker_{uuid.uuid4().hex[:8]}"
    flag = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(f"open({str(flag)!r}, 'w').close()\nclass Client: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, flag


@contextlib.contextmanager
def root_of(labels: dict[str, str], allow: str | None):
    with HostileSession(labels) as session, session.serve_unix() as path, connect(path, allow=allow) as client:
        yield client


def test_the_label_checked_is_the_label_imported(tmp_path, monkeypatch):
    name, flag = marker_module(tmp_path, monkeypatch)
    labels = {CLIENT_LABEL: "jumpstarter_driver_power.client.PowerClient", TOOLKIT_CLIENT_LABEL: f"{name}.Client"}
    allow = "jumpstarter_driver_power.*,jumpstarter_drivers.power.client.PowerClient"
    with root_of(labels, allow) as client, pytest.raises(ClientNotAllowed, match=rf"{name}\.Client is not allowed"):
        client.on()
    assert not flag.exists(), "a module the allow list does not name was imported"
    assert name not in sys.modules


def test_a_jumpstarter_name_still_admits_our_class_through_the_fixed_table():
    labels = {CLIENT_LABEL: "jumpstarter_driver_power.client.PowerClient", TOOLKIT_CLIENT_LABEL: ""}
    with root_of(labels, "jumpstarter_driver_power.*") as client:
        assert type(client).__name__ == "PowerClient"
        client.on()


def test_a_dunder_module_is_never_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "jumpstarter_drivers.cli.__main__", raising=False)
    labels = {TOOLKIT_CLIENT_LABEL: "jumpstarter_drivers.cli.__main__.main"}
    # the default allow list: jumpstarter_drivers.*
    with root_of(labels, None) as client, pytest.raises(ClientNotAllowed, match=r"__main__.*not a client class"):
        client.on()
    assert "jumpstarter_drivers.cli.__main__" not in sys.modules


def test_an_allowed_name_that_is_not_a_client_class_is_refused():
    labels = {TOOLKIT_CLIENT_LABEL: "jumpstarter_drivers.cli.main.Failure"}
    refused = r"jumpstarter_drivers\.cli\.main\.Failure is not a client class"
    with root_of(labels, None) as client, pytest.raises(ClientNotAllowed, match=refused):
        client.on()


# a careless configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", ["pässword", "tab\there", "line\nbreak"])
def test_a_passphrase_that_metadata_cannot_carry_is_refused_on_both_sides(passphrase, monkeypatch):
    with Session(root_device=MockPower()) as session:
        with pytest.raises(ConfigurationError, match="printable ASCII"), session.serve_unix(passphrase=passphrase):
            pass
        with session.serve_unix() as path:
            with pytest.raises(ConfigurationError, match="passphrase .*printable ASCII"):
                connect(path, passphrase=passphrase)
            monkeypatch.setenv("JMP_GRPC_PASSPHRASE", passphrase)
            with pytest.raises(ConfigurationError, match="JMP_GRPC_PASSPHRASE .*printable ASCII"):
                connect(path)


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("given", [True, False])
def test_unix_socket_is_the_users_alone_whatever_the_umask(given, tmp_path):
    with Session(root_device=MockPower()) as session, umask(0):
        with session.serve_unix(tmp_path / "lab.sock" if given else None) as path:
            assert path.stat().st_mode & 0o777 == 0o600
            if not given:
                assert path.parent.stat().st_mode & 0o777 == 0o700
            with connect(path) as client:
                client.on()
        assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_stale_socket_at_the_given_path_is_replaced(tmp_path):
    path = tmp_path / "lab.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    with Session(root_device=MockPower()) as session, session.serve_unix(path), connect(path) as client:
        client.on()


def test_weak_tcp_setups_are_said_at_start(tmp_path, caplog):
    from jumpstarter_drivers.cli.certs import write_self_signed

    cert, key = write_self_signed(tmp_path, ["127.0.0.1"])
    caplog.set_level(logging.WARNING)
    with Session(root_device=MockPower()) as session:
        with session.serve_tcp(tls_cert=cert, tls_key=key) as port:
            pass
        assert f"127.0.0.1:{port}: TLS without a passphrase" in caplog.text
        caplog.clear()
        with session.serve_tcp(tls_cert=cert, tls_key=key, passphrase="s3cret"):
            pass
        assert not caplog.records
        with session.serve_tcp(insecure=True) as port:
            pass
        assert f"127.0.0.1:{port}: plaintext without a passphrase" in caplog.text
        caplog.clear()
        with session.serve_tcp(insecure=True, passphrase="s3cret") as port:
            connect(f"127.0.0.1:{port}", insecure=True, passphrase="s3cret").close()
        messages = [r.getMessage() for r in caplog.records]
        assert any(f"127.0.0.1:{port}: plaintext: the passphrase crosses the network" in m for m in messages)
        assert any("sending the passphrase in plaintext" in m for m in messages), messages


# what a slow client can do to the exporter -----------------------------------------------------------


@pytest.mark.parametrize("size", ["many records", "long records"])
def test_a_subscriber_that_does_not_read_loses_records_counted_and_never_blocks_the_exporter(size: str):
    from jumpstarter_drivers.core.session import MAX_LOG_BACKLOG, MAX_LOG_BACKLOG_BYTES, MAX_LOG_MESSAGE

    # Either bound alone is passed: three times the records, or three times the characters.
    flood, text = (3 * MAX_LOG_BACKLOG, "flood") if size == "many records" else (
        3 * MAX_LOG_BACKLOG_BYTES // MAX_LOG_MESSAGE, "flood" + "x" * (MAX_LOG_MESSAGE - 16)
    )
    with Session(root_device=Sample()) as session, session.serve_unix() as path, connect(path) as client:
        connection = client.connection
        stalled = connection.exporter.LogStream(connection.empty(), metadata=connection.metadata, timeout=60)
        stalled.initial_metadata()  # subscribed; from here on nothing is read until the flood is over
        client.call("log", text, flood)
        client.call("log", "after", 1)  # the exporter still answers
        delivered: list[int] = []
        dropped = 0
        for record in stalled:
            marker = re.fullmatch(r"(\d+) log records dropped: .*", record.message)
            if marker:
                dropped += int(marker[1])
            elif record.message.startswith("flood"):
                delivered.append(int(record.message.rsplit(" ", 1)[1]))
            if len(delivered) + dropped >= flood:
                break
        stalled.cancel()
    assert dropped > 0, "nothing was dropped: the backlog is not bounded"
    assert len(delivered) + dropped == flood
    assert delivered == sorted(delivered)


def test_a_huge_log_message_is_cut_for_subscribers():
    from jumpstarter_drivers.core.session import MAX_LOG_MESSAGE

    with Session(root_device=Sample()) as session, session.serve_unix() as path, connect(path) as client:
        connection = client.connection
        stream = connection.exporter.LogStream(connection.empty(), metadata=connection.metadata, timeout=30)
        stream.initial_metadata()
        client.call("log", "x" * (4 * MAX_LOG_MESSAGE), 1)
        record = next(stream)
        stream.cancel()
    assert record.message == "x" * MAX_LOG_MESSAGE + f"... [{3 * MAX_LOG_MESSAGE + 2} characters cut]"


# what a hostile exporter's report can do to a client ------------------------------------------------


class DeepSession(Session):
    """A real session whose report claims a chain of ``depth`` drivers, each the child of the one before."""

    def __init__(self, depth: int) -> None:
        super().__init__(root_device=MockPower())
        self.depth = depth

    def report(self):
        response = super().report()
        template = response.reports[0]
        parent = template.uuid
        for level in range(self.depth):
            child = response.reports.add(uuid=str(uuid.uuid4()), parent_uuid=parent, labels=template.labels)
            child.labels["jumpstarter.dev/name"] = f"level{level}"
            parent = child.uuid
        return response


def test_a_driver_tree_deeper_than_the_bound_is_a_clear_error():
    from jumpstarter_drivers import DriverError
    from jumpstarter_drivers.core.client import MAX_TREE_DEPTH

    refused = pytest.raises(DriverError, match=rf"deeper than {MAX_TREE_DEPTH} levels")
    with DeepSession(5000) as session, session.serve_unix() as path, refused:
        connect(path)
    with DeepSession(MAX_TREE_DEPTH - 1) as session, session.serve_unix() as path, connect(path) as client:
        assert len(list(client.walk())) == MAX_TREE_DEPTH


def test_report_escapes_terminal_control_sequences_from_the_exporter():
    evil = "\x1b[2J\x1b]0;owned\x07bench\rsupply\nnext"
    labels = {"jumpstarter.dev/name": "x\x1b[31m"}
    with HostileSession(labels) as session, session.serve_unix() as path:
        report = session.report
        session.report = lambda: _with_descriptions(report(), evil)  # type: ignore[method-assign]
        result = subprocess.run(
            [sys.executable, "-m", "jumpstarter_drivers.cli", "--host", str(path), "report"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.stdout), repr(result.stdout)
    assert r"\x1b[2J\x1b]0;owned\x07bench\rsupply\nnext" in result.stdout
    assert result.stdout.count(r": \x1b[2J\x1b]0;owned") == 2  # the description and the method's


def _with_descriptions(response, text: str):
    response.reports[0].description = text
    response.reports[0].methods_description["on"] = text
    return response


# the bounds SECURITY.md states ------------------------------------------------------------------------


def test_security_md_states_the_bounds_the_code_keeps():
    from jumpstarter_drivers.core import client, session

    text = (Path(__file__).parents[3] / "SECURITY.md").read_text()
    stated = dict(re.findall(r"`([A-Z_]+)`[^|\n]*\|\s*(\d+)", text))  # table rows: "... (`NAME` ...) | 10 s |"
    stated |= {name: value for value, name in re.findall(r"(\d+) (?:s|levels) \(`([A-Z_]+)`\)", text)}
    assert set(stated) == {
        "HANDSHAKE_TIMEOUT", "IDLE_TIMEOUT", "MAX_CONNECTIONS", "MAX_LOG_BACKLOG", "MAX_LOG_BACKLOG_BYTES",
        "MAX_LOG_MESSAGE",
        "REFUSAL_LOG_INTERVAL", "MAX_TREE_DEPTH",
    }, stated
    for name, value in stated.items():
        module = session if hasattr(session, name) else client
        assert float(getattr(module, name)) == float(value), name
