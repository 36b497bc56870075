"""`jumpstarter serve` and a careless configuration: refused at start, or said loudly in the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from jumpstarter_drivers.cli.process import ServeProcess

from .conftest import PASSPHRASE


def test_a_non_ascii_passphrase_is_refused_at_start(jumpstarter, lab_file: Path, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("pässword\n")
    result = jumpstarter("serve", str(lab_file), "--passphrase-file", str(secret), timeout=30)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        (
            f"Error: the passphrase in {secret} must be printable ASCII (letters, digits, punctuation, spaces) and not "
            "empty: gRPC metadata carries nothing else; choose another passphrase"
        )
    ]
    result = jumpstarter("--host", "127.0.0.1:1", "--passphrase-file", str(secret), "report", timeout=30)
    assert result.returncode != 0 and "must be printable ASCII" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("options", "warning"),
    [
        (["--insecure"], "plaintext without a passphrase"),
        (["--insecure", "--passphrase-file", "{passphrase}"], "plaintext: the passphrase crosses the network"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}"], "TLS without a passphrase"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--passphrase-file", "{passphrase}"], None),
    ],
)
def test_weak_setups_are_warned_about_at_start(
    options: list[str], warning: str | None, lab_file: Path, tls_files: tuple[Path, Path], passphrase_file: Path
) -> None:
    cert, key = tls_files
    filled = [o.format(cert=cert, key=key, passphrase=passphrase_file) for o in options]
    with ServeProcess(lab_file, "--listen", "127.0.0.1:0", *filled) as lab:
        lab.stop()
        log = lab.log()
    weak = [line for line in log.splitlines() if " WARNING " in line and f"serving on {lab.address}" in line]
    if warning is None:
        assert weak == [], log
    else:
        assert len(weak) == 1 and warning in weak[0], log
    assert PASSPHRASE not in log


def test_every_connection_option_has_its_variable(
    jumpstarter, lab_file: Path, tls_files: tuple[Path, Path], passphrase_file: Path
) -> None:
    from jumpstarter_drivers.core.access import CONNECTION_SETTINGS

    cert, key = tls_files
    options = ["--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    with ServeProcess(lab_file, *options, "--passphrase-file", str(passphrase_file)) as lab:
        env = {"JUMPSTARTER_HOST": lab.address, "JMP_GRPC_CA": str(cert), "JMP_GRPC_KEEPALIVE": "5",
               "JMP_GRPC_PASSPHRASE_FILE": str(passphrase_file), "JMP_GRPC_PASSPHRASE": None}
        result = jumpstarter("report", env=env)
        assert result.returncode == 0, result.stderr
        assert "power" in result.stdout
    text = " ".join(jumpstarter("--help").stdout.split())
    for name, variable in CONNECTION_SETTINGS.items():
        assert f"--{name}" in text and variable in text
    assert "(default: $JMP_GRPC_PASSPHRASE)" not in text
