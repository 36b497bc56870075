"""TFTP: a read-only TFTP server beside the board, for U-Boot and PXE to fetch images."""

from .client import TftpClient
from .driver import Tftp
from .server import TftpServer

__all__ = ["Tftp", "TftpClient", "TftpServer"]
