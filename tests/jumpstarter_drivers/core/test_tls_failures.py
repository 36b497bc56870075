"""A TLS or passphrase mismatch is named with its real cause at once, never as "did not answer"."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers import Session, TlsMismatch, Unauthenticated, connect
from jumpstarter_drivers.cli.certs import write_self_signed
from jumpstarter_drivers.power import MockPower

PASSPHRASE = "s3cret"
#: Long enough that a failure found by waiting it out cannot pass for one named at once.
PATIENT = 60.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("tls")
    return {
        "loopback": write_self_signed(root / "loopback", ["127.0.0.1"]),
        "elsewhere": write_self_signed(root / "elsewhere", ["lab.example.invalid"]),
    }


@pytest.fixture(scope="module")
def served_session() -> Iterator[Session]:
    with Session(root_device=MockPower()) as served:
        yield served


@pytest.fixture(scope="module")
def tls_port(served_session: Session, certs) -> Iterator[int]:
    cert, key = certs["loopback"]
    with served_session.serve_tcp(tls_cert=cert, tls_key=key, passphrase=PASSPHRASE) as port:
        yield port


def test_an_untrusted_certificate_is_named(tls_port, certs):
    with pytest.raises(TlsMismatch, match=r"certificate .*not trust.*self.signed.*--ca.*JMP_GRPC_CA"):
        connect(f"127.0.0.1:{tls_port}", passphrase=PASSPHRASE, timeout=PATIENT)
    other_ca = str(certs["elsewhere"][0])
    with pytest.raises(TlsMismatch, match=r"certificate .*not trust"):
        connect(f"127.0.0.1:{tls_port}", ca=other_ca, passphrase=PASSPHRASE, timeout=PATIENT)


def test_a_certificate_for_another_host_is_named(served_session, certs):
    cert, key = certs["elsewhere"]
    named = pytest.raises(TlsMismatch, match=r"certificate does not name 127\.0\.0\.1.*tls-cert --host")
    with served_session.serve_tcp(tls_cert=cert, tls_key=key, passphrase=PASSPHRASE) as port, named:
        connect(f"127.0.0.1:{port}", ca=str(cert), passphrase=PASSPHRASE, timeout=PATIENT)


def test_plaintext_against_tls_is_named(tls_port, certs):
    with pytest.raises(TlsMismatch, match=r"serves TLS.*plaintext.*--insecure"):
        connect(f"127.0.0.1:{tls_port}", insecure=True, passphrase=PASSPHRASE, timeout=PATIENT)


def test_tls_against_plaintext_is_named(served_session, certs):
    named = pytest.raises(TlsMismatch, match=r"answers in plaintext.*--insecure")
    with served_session.serve_tcp(insecure=True, passphrase=PASSPHRASE) as port, named:
        connect(f"127.0.0.1:{port}", ca=str(certs["loopback"][0]), passphrase=PASSPHRASE, timeout=PATIENT)


def test_a_wrong_passphrase_is_named_and_logged_by_the_exporter_rate_limited(tls_port, certs, caplog):
    caplog.set_level(logging.WARNING, logger="jumpstarter_drivers.core.served_session")
    for _ in range(20):
        with pytest.raises(Unauthenticated, match="wrong passphrase"):
            connect(f"127.0.0.1:{tls_port}", ca=str(certs["loopback"][0]), passphrase="guess", timeout=PATIENT)
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and "wrong passphrase" in refusals[0] and "127.0.0.1" in refusals[0], refusals
    assert len(refusals) < 5, refusals


def test_the_right_settings_still_connect(tls_port, certs):
    with connect(f"127.0.0.1:{tls_port}", ca=str(certs["loopback"][0]), passphrase=PASSPHRASE) as client:
        client.on()


def test_jumpstarter_report_names_an_untrusted_certificate(tls_port):
    result = subprocess.run(
        [sys.executable, "-m", "jumpstarter_drivers.cli", "--host", f"127.0.0.1:{tls_port}", "report"],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "did not answer" not in result.stderr
    assert "not trust" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
