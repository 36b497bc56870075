"""Configuration files for Jumpstarter's `jmp`: what they hold and what they refuse."""

from __future__ import annotations

import base64
from pathlib import Path

import click
import pytest

from jumpstarter_drivers.controller import CLIENT, EXPORTER
from jumpstarter_drivers.controller.config import Access
from jumpstarter_drivers.controller.jumpstarter_files import default_path, jumpstarter_document, load_export
from jumpstarter_drivers.core.errors import ConfigurationError

TREE = {"power": {"type": "jumpstarter_driver_power.driver.MockPower"}}


def test_an_exporter_document_holds_the_tree_the_ca_and_nothing_jumpstarter_refuses() -> None:
    content = jumpstarter_document(EXPORTER, "board-1", "lab:8082", "tok", b"PEM", export=TREE)
    assert content["kind"] == "ExporterConfig"
    assert content["export"] == TREE
    assert set(content["metadata"]) == {"namespace", "name"}, "jmp refuses other metadata keys"
    assert content["tls"] == {"ca": base64.b64encode(b"PEM").decode(), "insecure": False}
    assert "drivers" not in content


def test_our_tools_read_a_jumpstarter_client_document() -> None:
    content = jumpstarter_document(CLIENT, "ci", "lab:8082", "tok", b"PEM", allow=["jumpstarter_driver_*"])
    access = Access.from_document(content, CLIENT)
    assert (access.endpoints, access.token, access.ca, access.insecure) == (["lab:8082"], "tok", b"PEM", False)


def test_a_plaintext_controller_is_refused_for_jmp() -> None:
    with pytest.raises(ConfigurationError, match="TLS only"):
        jumpstarter_document(CLIENT, "ci", "lab:8082", "tok", None)


def test_the_export_tree_comes_from_an_exporter_file_or_the_mapping_alone(tmp_path: Path) -> None:
    whole, alone = tmp_path / "whole.yaml", tmp_path / "alone.yaml"
    whole.write_text("endpoint: x\nexport:\n  power:\n    type: jumpstarter_driver_power.driver.MockPower\n")
    alone.write_text("power:\n  type: jumpstarter_driver_power.driver.MockPower\n")
    assert load_export(whole) == load_export(alone) == TREE


@pytest.mark.parametrize("text", ["", "- a list\n", "export: 3\n", "power: [unclosed\n"])
def test_an_export_file_without_a_tree_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tree.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match="tree.yaml"):
        load_export(path)


def test_a_missing_export_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the export tree .*nope.yaml"):
        load_export(tmp_path / "nope.yaml")


def test_default_paths_are_where_jmp_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JMP_CLIENT_CONFIG_HOME", str(tmp_path))
    assert default_path(CLIENT, "ci") == tmp_path / "clients" / "ci.yaml"
    assert default_path(EXPORTER, "board-1") == tmp_path / "exporters" / "board-1.yaml"
    monkeypatch.delenv("JMP_CLIENT_CONFIG_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_path(CLIENT, "ci") == tmp_path / "xdg" / "jumpstarter" / "clients" / "ci.yaml"


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + level)}: &{chr(98 + level)} [{', '.join(['*' + chr(97 + level)] * 10)}]\n" for level in range(8)
)


def test_controller_files_refuse_an_alias_bomb_at_once(tmp_path: Path) -> None:
    """Client, exporter and export-tree files load with the same bounds as exporter configurations."""
    from jumpstarter_drivers.controller.cli import exporter_access

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(ConfigurationError, match="alias bomb"):
        load_export(path)
    with pytest.raises(ConfigurationError, match="alias bomb"):
        Access.load(path)
    with pytest.raises(click.ClickException, match="alias bomb"):
        exporter_access(str(path), None, None, None, False)
