"""TFTP client: start and stop the server beside the board, and put files into its root."""

from __future__ import annotations

from ..storage.client import ServedDirectoryClient


class TftpClient(ServedDirectoryClient):
    """Client of :class:`~jumpstarter_drivers.tftp.driver.Tftp`; ``storage`` is its root's storage.

    :meth:`put_file` returns the file's name in the root, which a board asks for as is.
    """
