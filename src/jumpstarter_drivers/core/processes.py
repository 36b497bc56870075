"""Child processes that must not outlive their owner."""

from __future__ import annotations

import logging
import subprocess

logger = logging.getLogger(__name__)


def stop_process(process: subprocess.Popen, timeout: float = 10.0, name: str = "") -> int | None:
    """End ``process`` if it still runs: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns its exit status (``None`` only if it survived SIGKILL for ``timeout`` seconds too).

    >>> import sys
    >>> stop_process(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    -15
    """
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %g s of SIGTERM; killing it", name or process.args, timeout)
            process.kill()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.error("%s survived SIGKILL for %g s", name or process.args, timeout)
    return process.returncode
