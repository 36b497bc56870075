"""TFTP client: start and stop the server beside the board, and put files into its root."""

from __future__ import annotations

import os

from ..core.client import DriverClient
from ..storage.client import StorageClient
from ..storage.common import ProgressCallback


class TftpClient(DriverClient):
    """Client of :class:`~jumpstarter_drivers.tftp.driver.Tftp`; ``storage`` is its root's storage."""

    storage: StorageClient

    def start(self) -> None:
        """Start the TFTP server."""
        self.call("start")

    def stop(self) -> None:
        """Stop the TFTP server."""
        self.call("stop")

    def get_host(self) -> str:
        """The address the server listens on."""
        return self.call_as(str, "get_host")

    def get_port(self) -> int:
        """The UDP port the server is bound to."""
        return self.call_as(int, "get_port")

    def put_file(self, dst: str, src: str | os.PathLike, progress: ProgressCallback | None = None) -> str:
        """Upload ``src`` as ``dst`` in the TFTP root; returns the name a board asks for."""
        self.children["storage"].write_from_path(dst, src, progress)
        return dst
