"""Jumpstarter 0.9.0's standalone exporter on TCP (what `jmp run --tls-grpc-listener` runs), serving
its own MockPower; run as a script: PORT PASSPHRASE [CERT KEY] (plaintext without CERT and KEY)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import grpc
from jumpstarter.exporter import Exporter
from jumpstarter.exporter.auth import PassphraseInterceptor
from jumpstarter_driver_power.driver import MockPower


async def no_controller() -> grpc.aio.Channel:
    raise RuntimeError("a standalone exporter has no controller")


async def main(port: int, passphrase: str, cert: str | None, key: str | None) -> None:
    credentials = None
    if cert and key:
        credentials = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
    async with Exporter(channel_factory=no_controller, device_factory=MockPower) as exporter:
        await exporter.serve_standalone_tcp(
            "127.0.0.1", port, tls_credentials=credentials, interceptors=[PassphraseInterceptor(passphrase)]
        )


if __name__ == "__main__":
    port, passphrase, *tls = sys.argv[1:]
    anyio.run(main, int(port), passphrase, *(tls or [None, None]))
