"""Leasing the run's board from a lab controller (``--jumpstarter-selector``).

The plugin asks :class:`RunLease` for an address before the first lab test; it leases a board
matching the selector (each pytest-xdist worker its own), says on the terminal what it waits for
and its place in the queue, keeps the lease alive for the run, and releases it at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any

import pytest

from jumpstarter_drivers.core.errors import JumpstarterError

logger = logging.getLogger(__name__)

JMP_SELECTOR = "JMP_SELECTOR"
JMP_CONTROLLER = "JMP_CONTROLLER"
JMP_CLIENT_CONFIG = "JMP_CLIENT_CONFIG"
JMP_LEASE_TIMEOUT = "JMP_LEASE_TIMEOUT"
JMP_LEASE_DURATION = "JMP_LEASE_DURATION"
JMP_LEASE_PRIORITY = "JMP_LEASE_PRIORITY"
DEFAULT_DURATION = "1h"


def add_options(group: Any, parser: pytest.Parser) -> None:
    """The leasing options of the ``jumpstarter`` group, each with an ini twin and an environment fallback."""
    options = (
        (
            "selector", "S", JMP_SELECTOR,
            (
                "lease a board matching this label selector from the controller (e.g. 'board=rpi4,!broken'); "
                "each xdist worker leases its own"
            ),
        ),
        ("controller", "HOST:PORT", JMP_CONTROLLER, "the lab controller (default: the client configuration's)"),
        (
            "client-config", "FILE", JMP_CLIENT_CONFIG,
            "client configuration with the token (`jumpstarter controller token create client NAME -o FILE`)",
        ),
        (
            "lease-timeout", "DURATION", JMP_LEASE_TIMEOUT,
            "wait at most this long for a board (e.g. 10m), then end the run with exit code 4; default: no bound",
        ),
        (
            "lease-duration", "DURATION", JMP_LEASE_DURATION,
            f"longest the run may hold the board (default {DEFAULT_DURATION})",
        ),
        (
            "lease-priority", "N", JMP_LEASE_PRIORITY,
            "-100..100: below 0 lets waiting leases of a higher priority go first; above 0 goes before lower "
            "ones, up to what the client's token allows (token create --max-priority); default 0",
        ),
    )
    for name, metavar, env, text in options:
        dest = "jumpstarter_" + name.replace("-", "_")
        group.addoption(f"--jumpstarter-{name}", dest=dest, metavar=metavar, help=f"{text} (env {env}, ini {dest})")
        parser.addini(dest, f"see --jumpstarter-{name}")


def setting(config: pytest.Config, name: str, env: str) -> str | None:
    """Command line, then environment, then ini file."""
    return config.getoption(name) or os.environ.get(env) or config.getini(name) or None


def lease_settings(config: pytest.Config) -> tuple[Any, dict[str, Any]]:
    """``(access, options)`` for leasing from the controller: the client configuration (with
    ``--jumpstarter-controller`` over its endpoints), and ``duration``, ``wait`` and ``priority`` from
    ``--jumpstarter-lease-duration``, ``-timeout`` and ``-priority``."""
    from jumpstarter_drivers.controller.cli import parse_duration
    from jumpstarter_drivers.controller.config import Access

    path = setting(config, "jumpstarter_client_config", JMP_CLIENT_CONFIG)
    if not path:
        raise JumpstarterError("a client configuration is needed: give --jumpstarter-client-config FILE")
    access = Access.load(path)
    controller = setting(config, "jumpstarter_controller", JMP_CONTROLLER)
    if controller:
        access = dataclasses.replace(access, endpoints=controller.split(","))
    timeout_text = setting(config, "jumpstarter_lease_timeout", JMP_LEASE_TIMEOUT)
    duration_text = setting(config, "jumpstarter_lease_duration", JMP_LEASE_DURATION) or DEFAULT_DURATION
    priority_text = setting(config, "jumpstarter_lease_priority", JMP_LEASE_PRIORITY) or "0"
    try:
        priority = int(priority_text)
    except ValueError:
        raise JumpstarterError(f"--jumpstarter-lease-priority {priority_text!r} is not a whole number") from None
    options = {
        "duration": parse_duration(duration_text),
        "wait": parse_duration(timeout_text) if timeout_text else None,
        "priority": priority,
    }
    return access, options


class RunLease:
    """The lease of this process's run: taken on first use, released by :meth:`close`."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.selector = setting(config, "jumpstarter_selector", JMP_SELECTOR)
        self.lease: Any = None
        self._stack = contextlib.ExitStack()

    def address(self) -> str | None:
        """The local socket reaching the leased board (leasing it now if needed); ``None`` without a selector."""
        if not self.selector:
            return None
        if self.lease is None:
            self.lease = self._take()
        return self.lease.socket

    def _take(self) -> Any:
        from jumpstarter_drivers.controller.client import LeaseTimeout, leased

        try:
            access, options = lease_settings(self.config)
            self.say(f"leasing a board matching {self.selector} from {', '.join(access.endpoints)}")
            lease = self._stack.enter_context(leased(access, self.selector, progress=self.say, **options))
        except LeaseTimeout as exc:
            self._fail(f"jumpstarter: {exc}")
        except (JumpstarterError, OSError, ValueError) as exc:
            self._fail(f"jumpstarter: cannot lease a board matching {self.selector}: {exc}")
        self.say(f"leased {lease.exporter} (lease {lease.name})")
        return lease

    def _fail(self, message: str) -> None:
        self.close()
        from .plugin import MANAGER

        manager = self.config.stash.get(MANAGER, None)
        if manager is not None:
            manager.failure = message  # said once in the terminal summary
        pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)

    def say(self, message: str) -> None:
        """One line on the terminal, past output capturing (an xdist worker writes to its inherited stderr)."""
        worker = getattr(self.config, "workerinput", {}).get("workerid")
        line = f"jumpstarter{f' [{worker}]' if worker else ''}: {message}"
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            if reporter is not None and worker is None:
                reporter.write_line(line)
            else:
                os.write(2, (line + "\n").encode())

    def close(self) -> None:
        """Release the lease (if any)."""
        self._stack.close()
        self.lease = None


LEASE = pytest.StashKey[RunLease]()
