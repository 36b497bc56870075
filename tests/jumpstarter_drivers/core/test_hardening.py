"""What a hostile exporter can make a client do, and what a careless one must be told."""

from __future__ import annotations

import contextlib
import sys
import uuid
from pathlib import Path

import pytest

from jumpstarter_drivers import ClientNotAllowed, Session, connect
from jumpstarter_drivers.core.session import CLIENT_LABEL, TOOLKIT_CLIENT_LABEL
from jumpstarter_drivers.power import MockPower


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
