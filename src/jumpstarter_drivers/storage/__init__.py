"""Storage: files in one directory on the exporter, moved with constant memory."""

from .client import StorageClient
from .common import FileStat, ProgressBar, ProgressLog
from .driver import Storage, resolve_inside

__all__ = ["FileStat", "ProgressBar", "ProgressLog", "Storage", "StorageClient", "resolve_inside"]
