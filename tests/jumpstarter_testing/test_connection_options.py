"""Every connection setting has one option, one ini key and one environment variable, and a lab
whose TLS disagrees is named with the real cause."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers import Session
from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.core.access import CONNECTION_SETTINGS
from jumpstarter_drivers.power import MockPower

PASSPHRASE = "correct horse"
TEST = "def test_on(client):\n    client.on()\n"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*CONNECTION_SETTINGS.values(), "JMP_GRPC_PASSPHRASE", "JMP_DRIVERS_ALLOW", "JUMPSTARTER_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def tls_lab(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """``(address, certificate, passphrase file)`` of a TLS exporter with a passphrase."""
    cert, key = write_self_signed(tmp_path / "tls", ["127.0.0.1"])
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    with Session(root_device=MockPower()) as session, session.serve_tcp(
        tls_cert=cert, tls_key=key, passphrase=PASSPHRASE
    ) as port:
        yield f"127.0.0.1:{port}", cert, secret


def test_options(pytester: pytest.Pytester, clean_env, tls_lab) -> None:
    address, cert, secret = tls_lab
    pytester.makepyfile(TEST)
    result = pytester.runpytest(
        f"--jumpstarter-host={address}", f"--jumpstarter-ca={cert}", f"--jumpstarter-passphrase-file={secret}",
        "--jumpstarter-keepalive=5",
    )
    result.assert_outcomes(passed=1)


def test_ini_keys_relative_to_the_rootdir(pytester: pytest.Pytester, clean_env, tls_lab) -> None:
    address, cert, secret = tls_lab
    (pytester.path / "ca.pem").write_bytes(cert.read_bytes())
    (pytester.path / "secret").write_text(secret.read_text())
    pytester.makeini(
        f"[pytest]\njumpstarter_host = {address}\njumpstarter_ca = ca.pem\njumpstarter_passphrase_file = secret\n"
        "jumpstarter_keepalive = 5\n"
    )
    pytester.makepyfile(TEST)
    pytester.runpytest().assert_outcomes(passed=1)


@pytest.mark.parametrize("passphrase_from", ["JMP_GRPC_PASSPHRASE", "JMP_GRPC_PASSPHRASE_FILE"])
def test_environment(pytester: pytest.Pytester, clean_env, tls_lab, passphrase_from: str) -> None:
    address, cert, secret = tls_lab
    clean_env.setenv("JUMPSTARTER_HOST", address)
    clean_env.setenv("JMP_GRPC_CA", str(cert))
    clean_env.setenv(passphrase_from, PASSPHRASE if passphrase_from == "JMP_GRPC_PASSPHRASE" else str(secret))
    pytester.makepyfile(TEST)
    pytester.runpytest().assert_outcomes(passed=1)


def test_an_untrusted_certificate_is_the_reason_the_lab_is_unusable(pytester: pytest.Pytester, clean_env, tls_lab):
    address, _, secret = tls_lab
    pytester.makepyfile(TEST)
    result = pytester.runpytest(f"--jumpstarter-host={address}", f"--jumpstarter-passphrase-file={secret}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*lab 127.0.0.1:* is unusable: *TLS certificate this client does not trust*"])
    assert "did not answer" not in result.stdout.str()


def test_plaintext_against_tls_is_the_reason(pytester: pytest.Pytester, clean_env, tls_lab) -> None:
    address, _, secret = tls_lab
    pytester.makepyfile(TEST)
    result = pytester.runpytest(
        f"--jumpstarter-host={address}", f"--jumpstarter-passphrase-file={secret}", "--jumpstarter-insecure"
    )
    result.stdout.fnmatch_lines(["*is unusable: *serves TLS and this connection is plaintext*"])


def test_help_names_every_option_ini_key_and_variable(pytester: pytest.Pytester) -> None:
    text = " ".join(pytester.runpytest("--help").stdout.str().split())
    for name, variable in CONNECTION_SETTINGS.items():
        assert f"--jumpstarter-{name}" in text
        assert f"env {variable}" in text
        assert f"ini jumpstarter_{name.replace('-', '_')}" in text
    assert "JMP_GRPC_PASSPHRASE instead" in text


def test_readme_table_names_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| ") and "`" in line]
    for name, variable in CONNECTION_SETTINGS.items():
        row = next((r for r in rows if f"`{variable}" in r), None)
        assert row is not None, f"README: no row for {variable}"
        assert f"`--jumpstarter-{name}` / `jumpstarter_{name.replace('-', '_')}`" in row, row
        assert f"`--{name}`" in row, row
