"""The pytest plugin (registered through the ``pytest11`` entry point as ``jumpstarter``).

It turns options into a :class:`~jumpstarter_testing.lab.Lab` and hands it out as fixtures:

- ``session``: the lab of this run (a remote exporter, or a local one from an exporter file),
- ``client``: its root client, ``flasher``: the client of its flasher node,
- ``board_state``: the board brought to the state ``@pytest.mark.jumpstarter_state("shell")`` names.

The lab starts when the first test needing it is set up, so runs that never touch it never
connect; a lab that cannot start stops the run once, with one line saying why.
Nothing heavy (gRPC, the session) is imported until then.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from jumpstarter_drivers.core.errors import JumpstarterError

from . import leasing, roles
from .lab import VIRTUAL_LAB
from .reporting import CAPTURED, SKIP_CAPTURED, Board, failure_line, log_line

if TYPE_CHECKING:
    from jumpstarter_drivers.core.client import DriverClient
    from jumpstarter_drivers.core.config import DriverRegistry

    from .lab import Lab

logger = logging.getLogger(__name__)

JUMPSTARTER_HOST = "JUMPSTARTER_HOST"
JMP_DRIVERS_ALLOW = "JMP_DRIVERS_ALLOW"
JUMPSTARTER_EXPORTER = "JUMPSTARTER_EXPORTER"
JUMPSTARTER_LOG_DIR = "JUMPSTARTER_LOG_DIR"
JUMPSTARTER_FLASHER = "JUMPSTARTER_FLASHER"

#: Fixtures whose use means a test needs the lab.
LAB_FIXTURES = frozenset({"session", "client", "flasher", "board_state"})
MARKER = "jumpstarter_requires"
STATE_MARKER = "jumpstarter_state"
#: Loggers whose records a test's report and log file carry.
DRIVER_LOGGER = "driver"  # in-process drivers of a local lab
STREAMED_LOGGER = "exporter:driver"  # a remote exporter's driver logs, re-emitted by log_stream()
CONSOLE_LOGGER = "jumpstarter.console"  # console output captured by serial helpers (extra console=<name>)


# options ---------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("jumpstarter", "jumpstarter: hardware in the loop")
    group.addoption(
        "--jumpstarter-host", action="append", dest="jumpstarter_host", metavar="ADDR",
        help=f"exporter to test against: unix socket path or host:port (env {JUMPSTARTER_HOST}, ini jumpstarter_host). "
        "Give it once per board to run on several boards with pytest-xdist (-n), one board per worker.",
    )
    group.addoption(
        "--jumpstarter-drivers-allow", dest="jumpstarter_drivers_allow", metavar="PATTERNS",
        help=f"client classes the lab may load: comma-separated globs, or UNSAFE (env {JMP_DRIVERS_ALLOW}, "
        "ini jumpstarter_drivers_allow). Default: the bundled drivers for a remote lab, all for a local one.",
    )
    group.addoption(
        "--jumpstarter-exporter", dest="jumpstarter_exporter", metavar="PATH",
        help=f"exporter configuration to run in this process when no host is given (env {JUMPSTARTER_EXPORTER}, "
        "ini jumpstarter_exporter). Default: exporter.yaml at the rootdir if present, else the built-in virtual lab.",
    )
    group.addoption(
        "--jumpstarter-log-dir", dest="jumpstarter_log_dir", metavar="DIR",
        help=f"write each lab test's driver logs and console output to DIR/<test>.log "
        f"(env {JUMPSTARTER_LOG_DIR}, ini jumpstarter_log_dir)",
    )
    group.addoption(
        "--jumpstarter-flasher", dest="jumpstarter_flasher", metavar="NAME",
        help=f"dotted path of the node the flasher fixture uses, when the lab has several "
        f"(env {JUMPSTARTER_FLASHER}, ini jumpstarter_flasher)",
    )
    group.addoption(
        "--jumpstarter-ca", dest="jumpstarter_ca", metavar="FILE",
        help="PEM certificate(s) to trust for a TCP exporter's TLS, e.g. the cert.pem of `jumpstarter tls-cert` "
        "(env JMP_GRPC_CA, ini jumpstarter_ca). Default: the system's CAs.",
    )
    group.addoption(
        "--jumpstarter-insecure", dest="jumpstarter_insecure", action="store_true", default=None,
        help="plaintext TCP, for an exporter served with --insecure (env JMP_GRPC_INSECURE=1, ini jumpstarter_insecure)",
    )
    group.addoption(
        "--jumpstarter-passphrase-file", dest="jumpstarter_passphrase_file", metavar="FILE",
        help="file whose first line is the exporter's passphrase (env JMP_GRPC_PASSPHRASE_FILE, ini "
        "jumpstarter_passphrase_file); the passphrase itself may be given in JMP_GRPC_PASSPHRASE instead",
    )
    group.addoption(
        "--jumpstarter-keepalive", dest="jumpstarter_keepalive", metavar="SECONDS", type=float,
        help="seconds between keepalive pings; an exporter silent that long fails the call (env "
        "JMP_GRPC_KEEPALIVE, ini jumpstarter_keepalive). Default: 10.",
    )
    parser.addini("jumpstarter_host", "exporter addresses, one per line (see --jumpstarter-host)", type="linelist")
    parser.addini("jumpstarter_ca", "CA certificate file, relative to the rootdir (see --jumpstarter-ca)")
    parser.addini("jumpstarter_insecure", "plaintext TCP (see --jumpstarter-insecure)", type="bool", default=None)
    parser.addini(
        "jumpstarter_passphrase_file", "passphrase file, relative to the rootdir (see --jumpstarter-passphrase-file)"
    )
    parser.addini("jumpstarter_keepalive", "keepalive period in seconds (see --jumpstarter-keepalive)")
    parser.addini("jumpstarter_drivers_allow", "client classes the lab may load (see --jumpstarter-drivers-allow)")
    parser.addini("jumpstarter_exporter", "exporter configuration, relative to the rootdir (see --jumpstarter-exporter)")
    parser.addini("jumpstarter_log_dir", "per-test log directory, relative to the rootdir (see --jumpstarter-log-dir)")
    parser.addini("jumpstarter_flasher", "node the flasher fixture uses (see --jumpstarter-flasher)")
    leasing.add_options(group, parser)


def _setting(config: pytest.Config, name: str, env: str) -> str | None:
    """Command line, then environment, then ini file."""
    value = config.getoption(name)
    if value:
        return value
    return os.environ.get(env) or config.getini(name) or None


def _path_setting(config: pytest.Config, name: str, env: str) -> Path | None:
    value = config.getoption(name) or os.environ.get(env)
    if value:
        return Path(value)
    value = config.getini(name)
    return config.rootpath / value if value else None


def connection_options(config: pytest.Config) -> dict[str, Any]:
    """Keyword arguments of :func:`~jumpstarter_drivers.core.access.connect` from the connection
    options: command line, then environment, then ini file (unset ones are left out)."""
    from jumpstarter_drivers.core.access import JMP_GRPC_CA, JMP_GRPC_INSECURE, JMP_GRPC_KEEPALIVE

    options: dict[str, Any] = {}
    ca = _path_setting(config, "jumpstarter_ca", JMP_GRPC_CA)
    if ca is not None:
        options["ca"] = str(ca)
    passphrase_file = _path_setting(config, "jumpstarter_passphrase_file", "JMP_GRPC_PASSPHRASE_FILE")
    if passphrase_file is not None:
        options["passphrase_file"] = str(passphrase_file)
    insecure = config.getoption("jumpstarter_insecure")
    if insecure is None and os.environ.get(JMP_GRPC_INSECURE) is None:
        insecure = config.getini("jumpstarter_insecure")
    if insecure is not None:
        options["insecure"] = bool(insecure)
    keepalive = _setting(config, "jumpstarter_keepalive", JMP_GRPC_KEEPALIVE)
    if keepalive is not None:
        try:
            options["keepalive"] = float(keepalive)
        except ValueError:
            raise pytest.UsageError(f"jumpstarter: keepalive {keepalive!r} is not a number of seconds") from None
    return options


def _exporter(config: pytest.Config) -> Path:
    path = _path_setting(config, "jumpstarter_exporter", JUMPSTARTER_EXPORTER)
    if path is not None:
        return path
    default = config.rootpath / "exporter.yaml"
    return default if default.is_file() else VIRTUAL_LAB


def _hosts(config: pytest.Config) -> list[str]:
    hosts = config.getoption("jumpstarter_host")
    if hosts:
        return hosts
    if os.environ.get(JUMPSTARTER_HOST):
        return [os.environ[JUMPSTARTER_HOST]]
    return list(config.getini("jumpstarter_host"))


def pytest_report_header(config: pytest.Config) -> str:
    """Say which lab the lab fixtures of this run use (it starts only when a test needs it)."""
    selector = leasing.setting(config, "jumpstarter_selector", leasing.JMP_SELECTOR)
    if selector:
        return f"jumpstarter: a board matching {selector}, leased from the lab controller"
    hosts = _hosts(config)
    if hosts:
        return f"jumpstarter: exporter{'s' if len(hosts) > 1 else ''} at {', '.join(hosts)}"
    exporter = _exporter(config)
    if exporter == VIRTUAL_LAB:
        return f"jumpstarter: the built-in virtual lab ({VIRTUAL_LAB.name}), served in this process"
    return f"jumpstarter: local lab from {exporter}, served in this process"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(*requirements): skip unless the lab has these nodes (dotted paths, e.g. 'power', "
        "'board.serial') and methods ('power.read': present, and supported by the node's driver)",
    )
    config.addinivalue_line(
        "markers",
        f"{STATE_MARKER}(state): the board_state fixture brings the board to this state (off, uboot, shell)",
    )
    if not hasattr(config, "workerinput"):
        _check_boards_and_workers(config)
    run_lease = leasing.RunLease(config)
    config.stash[leasing.LEASE] = run_lease
    config.pluginmanager.register(roles, "jumpstarter-roles")
    config.add_cleanup(run_lease.close)  # runs after the lab closed (cleanups run last-added first)
    manager = LabManager(config)
    config.stash[MANAGER] = manager
    config.add_cleanup(manager.close)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, check the labs once here: a worker that stops the run crashes xdist."""
    config = session.config
    if not config.pluginmanager.has_plugin("dsession"):
        return
    from .lab import Lab

    hosts = _hosts(config)
    try:
        for host in hosts:
            allow = _setting(config, "jumpstarter_drivers_allow", JMP_DRIVERS_ALLOW)
            Lab.connect_remote(host, allow, **connection_options(config)).close()
        if not hosts:
            from jumpstarter_drivers.core import config as exporter_config

            exporter_config.load(_exporter(config), registry=_registry(config)).root.close()
    except (JumpstarterError, OSError) as exc:
        raise pytest.UsageError(f"jumpstarter: lab is unusable: {exc}") from None


# the lab of a run ------------------------------------------------------------------------------


def _registry(config: pytest.Config) -> DriverRegistry:
    """Driver short names: the built-ins, entry points, and what conftests register through the hook."""
    from jumpstarter_drivers.core.config import DriverRegistry

    registry = DriverRegistry()
    config.hook.pytest_jumpstarter_register_drivers(registry=registry)
    return registry


@dataclass(frozen=True)
class LabSettings:
    """What selects a lab: a host to connect to, else an exporter file to run here."""

    host: str | None
    exporter: Path
    allow: str | None
    #: Connection options for a host, as ``(name, value)`` pairs (see :func:`connection_options`).
    connection: tuple[tuple[str, Any], ...] = ()


class LabManager:
    """Starts labs on first use (one per distinct settings), keeps them for the run, closes them."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.labs: dict[LabSettings, Lab] = {}
        self.current: Lab | None = None
        self._streams = contextlib.ExitStack()
        self._environ: dict[str, str | None] = {}
        self._levels: dict[str, int] = {}
        #: Why the lab could not start (the run stopped there), for the terminal summary.
        self.failure: str | None = None
        self._boards: dict[int, Board] = {}

    def board(self, lab: Lab) -> Board:
        """The identity of ``lab`` (asked once per lab)."""
        if id(lab) not in self._boards:
            self._boards[id(lab)] = Board.of(lab)
        return self._boards[id(lab)]

    def describe(self, lab: Lab, description: str) -> None:
        """Name ``lab``'s board in reports and log files (a leased board: its exporter and lease)."""
        self._boards[id(lab)] = dataclasses.replace(self.board(lab), description=description)

    def get(self, settings: LabSettings) -> Lab:
        lab = self.labs.get(settings)
        if lab is None:
            lab = self._start(settings)
            self.labs[settings] = lab
            self.current = lab
            self._export_environment(lab)
            self._subscribe_logs(lab)
            self.config.hook.pytest_jumpstarter_lab_ready(session=lab, client=lab.client)
        return lab

    def _start(self, settings: LabSettings) -> Lab:
        from .lab import Lab

        where = settings.host or str(settings.exporter)
        try:
            if settings.host:
                return Lab.connect_remote(settings.host, settings.allow, **dict(settings.connection))
            return Lab.start_local(settings.exporter, settings.allow, registry=_registry(self.config))
        except (JumpstarterError, OSError) as exc:
            hint = "" if settings.host else " [fix the file, or choose another with --jumpstarter-exporter]"
            self.failure = f"jumpstarter: lab {where} is unusable: {exc}{hint}"
            pytest.exit(self.failure, returncode=pytest.ExitCode.USAGE_ERROR)

    def _export_environment(self, lab: Lab) -> None:
        """Subprocesses of the tests (a ``jmp`` shell, scripts) find the lab through the environment."""
        from jumpstarter_drivers.core.access import CONNECTION_SETTINGS

        values = {JUMPSTARTER_HOST: lab.address, JMP_DRIVERS_ALLOW: str(lab.allow)}
        for name, value in lab.connection.items():
            values[CONNECTION_SETTINGS[name.replace("_", "-")]] = "1" if value is True else "" if value is False else str(value)
        for name, value in values.items():
            self._environ.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _subscribe_logs(self, lab: Lab) -> None:
        for name in (DRIVER_LOGGER, STREAMED_LOGGER, CONSOLE_LOGGER):
            log = logging.getLogger(name)
            if log.level == logging.NOTSET:
                self._levels.setdefault(name, log.level)
                log.setLevel(logging.INFO)
        if lab.local is None:
            self._streams.enter_context(lab.client.log_stream())

    def close(self) -> None:
        """Stop the log streams, close every lab, restore the environment and the loggers' levels;
        each step runs even when an earlier one fails."""
        labs = list(self.labs.values())
        self.labs.clear()
        self._boards.clear()
        self.current = None
        with contextlib.ExitStack() as steps:  # the callbacks run last-registered first
            steps.callback(self._restore)
            for lab in labs:
                steps.callback(lab.close)
            steps.callback(self._streams.close)

    def _restore(self) -> None:
        for name, value in self._environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


MANAGER = pytest.StashKey[LabManager]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A leased board is given back as soon as the tests are done (an xdist worker may be stopped right after)."""
    run_lease = session.config.stash.get(leasing.LEASE, None)
    if run_lease is not None and run_lease.lease is not None:
        session.config.stash[MANAGER].close()
        run_lease.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """A lab that could not start is said once, as one ``ERROR:`` line."""
    manager = config.stash.get(MANAGER, None)
    if manager is None or manager.failure is None:
        return
    terminalreporter.write_line(f"ERROR: {manager.failure}", red=True)
    # pytest would print the same message again at exit, as "! _pytest.outcomes.Exit: ... !".
    memo = getattr(terminalreporter, "_keyboardinterrupt_memo", None)
    crash = getattr(memo, "reprcrash", None)
    if crash is not None and manager.failure in crash.message:
        terminalreporter._keyboardinterrupt_memo = None


SUITE_PROPERTIES = "jumpstarter_suite_properties"


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """Under xdist: the JUnit testsuite properties of the worker's board, written by the controller."""
    from _pytest.junitxml import xml_key

    xml = node.config.stash.get(xml_key, None)
    for name, value in getattr(node, "workeroutput", {}).get(SUITE_PROPERTIES, []):
        if xml is not None and (name, value) not in xml.global_properties:
            xml.add_global_property(name, value)


def _worker(config: pytest.Config) -> tuple[int, int] | None:
    """``(index, count)`` of this pytest-xdist worker, or ``None`` outside xdist."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return None
    index = int(re.sub(r"\D", "", workerinput["workerid"]) or 0)
    return index, int(workerinput.get("workercount", index + 1))


def pick_host(config: pytest.Config, hosts: list[str]) -> str | None:
    """The board of this process: the only host, or the worker's own one under xdist."""
    if not hosts:
        return None
    worker = _worker(config)
    if worker is None:
        return hosts[0]
    index, count = worker
    if len(hosts) < count:  # workers started with --tx rather than -n: not checked at configure time
        pytest.exit(_too_few_boards(count, hosts), returncode=pytest.ExitCode.USAGE_ERROR)
    return hosts[index]


def _check_boards_and_workers(config: pytest.Config) -> None:
    """Each board has its own worker and each worker its own board; otherwise say what to change."""
    hosts = _hosts(config)
    workers = config.getoption("numprocesses", None)
    distributed = (isinstance(workers, int) and workers > 0) or bool(config.getoption("tx", None))
    boards = f"{len(hosts)} boards ({', '.join(hosts)})"
    if len(hosts) > 1 and not distributed:
        raise pytest.UsageError(
            f"jumpstarter: {boards} but the run is not distributed, so only the first would be used; run one "
            f"board per worker with -n {len(hosts)} (pytest-xdist), or give one --jumpstarter-host"
        )
    if not isinstance(workers, int) or not hosts:
        return
    if len(hosts) < workers:
        raise pytest.UsageError(_too_few_boards(workers, hosts))
    if len(hosts) > workers:
        idle = ", ".join(hosts[workers:])
        raise pytest.UsageError(
            f"jumpstarter: {boards} but {workers} xdist worker{'s' if workers > 1 else ''}, so {idle} would stay "
            f"unused; run one board per worker with -n {len(hosts)}, or give fewer boards"
        )


def _too_few_boards(workers: int, hosts: list[str]) -> str:
    return (
        f"jumpstarter: {workers} xdist workers but {len(hosts)} board(s) ({', '.join(hosts)}); give one "
        "--jumpstarter-host per worker so no board is shared, or run fewer workers (-n)"
    )


# settings fixtures: override any of them in a conftest.py -----------------------------------------


@pytest.fixture(scope="session")
def jumpstarter_hosts(pytestconfig: pytest.Config) -> list[str]:
    """Exporter addresses of this run (``--jumpstarter-host``, ``JUMPSTARTER_HOST``, ini); empty: run a local lab."""
    return _hosts(pytestconfig)


@pytest.fixture(scope="session")
def jumpstarter_exporter(pytestconfig: pytest.Config) -> Path:
    """Exporter file of the local lab: ``--jumpstarter-exporter``, else ./exporter.yaml at the rootdir, else the virtual lab."""
    return _exporter(pytestconfig)


@pytest.fixture(scope="session")
def jumpstarter_drivers_allow(pytestconfig: pytest.Config) -> str | None:
    """Client classes the lab may load (``--jumpstarter-drivers-allow``, ``JMP_DRIVERS_ALLOW``, ini); ``None``: default."""
    return _setting(pytestconfig, "jumpstarter_drivers_allow", JMP_DRIVERS_ALLOW)


@pytest.fixture(scope="session")
def jumpstarter_flasher_name(pytestconfig: pytest.Config) -> str | None:
    """Dotted path of the flasher node (``--jumpstarter-flasher``); ``None``: the lab's only flasher."""
    return _setting(pytestconfig, "jumpstarter_flasher", JUMPSTARTER_FLASHER)


# the lab fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def session(
    pytestconfig: pytest.Config,
    jumpstarter_hosts: list[str],
    jumpstarter_exporter: Path,
    jumpstarter_drivers_allow: str | None,
    record_testsuite_property: Any,
) -> Lab:
    """The lab of this run (a :class:`jumpstarter_testing.Lab`): ``address``, ``status()``, ``report()``.

    A remote exporter when a host is given, else a local lab from the exporter file, served on a
    private unix socket for the whole run (``session.local`` is its Session). Its address is put
    in ``JUMPSTARTER_HOST`` for subprocesses; the exporter's address, uuid and labels go to the
    JUnit XML's testsuite properties (from every board under xdist), and each test that uses the
    lab records the address of its board as a testcase property.
    """
    run_lease = pytestconfig.stash[leasing.LEASE]
    leased = run_lease.address()
    settings = LabSettings(
        leased or pick_host(pytestconfig, jumpstarter_hosts),
        jumpstarter_exporter,
        jumpstarter_drivers_allow,
        () if leased else tuple(sorted(connection_options(pytestconfig).items())),
    )
    manager = pytestconfig.stash[MANAGER]
    lab = manager.get(settings)
    properties = manager.board(lab).suite_properties()
    if run_lease.lease is not None:
        lease = run_lease.lease
        properties += [("jumpstarter_lease", lease.name), ("jumpstarter_leased_exporter", lease.exporter)]
        where = f"exporter {lease.exporter} leased from the controller (lease {lease.name}) at {lab.address}"
        manager.describe(lab, where)
    workeroutput = getattr(pytestconfig, "workeroutput", None)
    if workeroutput is not None:  # xdist writes the JUnit file in the controller: see pytest_testnodedown
        workeroutput.setdefault(SUITE_PROPERTIES, []).extend(properties)
    for name, value in properties:
        record_testsuite_property(name, value)
    return lab


@pytest.fixture(scope="session")
def client(session: Lab) -> DriverClient:
    """The root client of the lab (children by name: ``client.power.on()``); shared by the run."""
    return session.client


@pytest.fixture(scope="session")
def flasher(session: Lab, jumpstarter_flasher_name: str | None) -> DriverClient:
    """The client of the lab's flasher: the only node whose client class is a ``*FlasherClient``,
    or the one ``--jumpstarter-flasher`` names. Skips the test when the lab has no flasher.
    """
    try:
        node = session.flasher(jumpstarter_flasher_name)
    except JumpstarterError as exc:
        pytest.fail(str(exc), pytrace=False)
    if node is None:
        pytest.skip(f"the lab at {session.address} has no flasher (no node with a *FlasherClient client class)")
    return node


@pytest.fixture
def board_state(request: pytest.FixtureRequest, session: Lab) -> Any:
    """The board in the state the test asks for, by ``@pytest.mark.jumpstarter_state("shell")`` or by
    indirect parametrisation; the value is the transition's result (its steps' seconds are also
    JUnit properties ``jumpstarter_step_<state>_s``).

    The lab's boot strategy (the node whose client is a ``BootStrategyClient``) checks the board
    before acting, so tests asking for the state the board is in reuse it without a reboot; a test
    that broke it (powered it off, say) makes the next one boot it again. Skips when the lab has
    no boot strategy.
    """
    from jumpstarter_drivers.strategy.client import BootStrategyClient

    marker = request.node.get_closest_marker(STATE_MARKER)
    state = getattr(request, "param", None) or (marker.args[0] if marker and marker.args else None)
    if not state:
        pytest.fail(f"board_state needs @pytest.mark.{STATE_MARKER}('STATE') or indirect parametrisation",
                    pytrace=False)
    strategies = [node for node in session.client.walk() if isinstance(node, BootStrategyClient)]
    if not strategies:
        pytest.skip(f"the lab at {session.address} has no boot strategy (a BootStrategy node)")
    result = strategies[0].transition(state)
    logger.info("board state %s: %s", state, result.summary())
    for name in result.path:  # what record_property does, without its warning under junit_family xunit2
        request.node.user_properties.append((f"jumpstarter_step_{name}_s", round(result.steps[name], 3)))
    return result


def _uses_lab(item: pytest.Item) -> bool:
    """A test uses the lab when it is marked, or when one of its fixtures named like ours is ours
    (a conftest's own ``client`` fixture, not built on ours, does not start a lab)."""
    if item.get_closest_marker(MARKER) is not None:
        return True
    names = LAB_FIXTURES.intersection(getattr(item, "fixturenames", ()))
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return bool(names)
    return any(_is_ours(name, info.name2fixturedefs.get(name, ())) for name in names)


def _is_ours(name: str, definitions: Sequence[Any]) -> bool:
    """Whether the fixture ``name`` in effect is this plugin's, or an override that requests it."""
    for definition in reversed(definitions):
        if getattr(definition.func, "__module__", None) == __name__:
            return True
        if name not in definition.argnames:
            return False
    return False


@pytest.fixture(autouse=True)
def _jumpstarter_test(request: pytest.FixtureRequest) -> None:
    """Starts the lab for tests that use it, applies ``jumpstarter_requires``, calls the start hook."""
    item = request.node
    if not _uses_lab(item):
        return
    lab: Lab = request.getfixturevalue("session")
    requirements = [n for m in item.iter_markers(MARKER) for n in m.args]
    lacking = [reason for reason in map(lab.lacks, requirements) if reason is not None]
    if lacking:
        pytest.skip(f"the lab at {lab.address} {'; '.join(lacking)} (jumpstarter_requires)")
    item.stash[USED_LAB] = lab  # from here on the finished hook is called too
    item.user_properties.append(("jumpstarter_exporter_address", lab.address))
    item.config.hook.pytest_jumpstarter_test_started(item=item, client=lab.client)


USED_LAB = pytest.StashKey["Lab"]()


# reporting: driver logs and console output of each test ------------------------------------------


class LogCapture(logging.Handler):
    """Collects the driver log and console records of one test, from the lab's log source only."""

    def __init__(self, manager: LabManager) -> None:
        super().__init__(logging.DEBUG)
        self.manager = manager
        #: The records, for the report's sections.
        self.lines: list[str] = []
        #: The records and why phases failed, for the log file.
        self.file_lines: list[str] = []
        self._arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        lab = self.manager.current
        if lab is None:
            return
        if record.name.startswith(CONSOLE_LOGGER):
            node = lab.node_names.get(str(getattr(record, "driver_uuid", "")))
            source = f"console[{node or getattr(record, 'console', record.name.rpartition('.')[2])}]"
        elif record.name == STREAMED_LOGGER:
            if lab.local is not None:  # a copy of what the local lab's drivers logged here directly
                setattr(record, CAPTURED, True)
                return
            source = self._node(lab, record)
        else:
            if lab.local is None or getattr(record, "driver_uuid", None) not in lab.local.drivers:
                return
            source = self._node(lab, record)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - logging's contract: a bad record must not fail the test
            self.handleError(record)
            return
        setattr(record, CAPTURED, True)
        line = log_line(record.created, record.levelname, source, message)
        self.lines.append(line)
        self.file_lines.append(line)
        self._arrived.set()

    @staticmethod
    def _node(lab: Lab, record: logging.LogRecord) -> str:
        return lab.node_names.get(str(getattr(record, "driver_uuid", "")), "driver")

    def settle(self, quiet: float = 0.1, limit: float = 1.0) -> None:
        """Let records still on their way from a remote exporter arrive (until ``quiet`` s pass without one)."""
        lab = self.manager.current
        if lab is None or lab.local is not None:
            return
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self._arrived.clear()
            if not self._arrived.wait(quiet):
                return

    @contextlib.contextmanager
    def attached(self) -> Iterator[LogCapture]:
        loggers = [logging.getLogger(name) for name in (DRIVER_LOGGER, STREAMED_LOGGER, CONSOLE_LOGGER)]
        for log in loggers:
            log.addHandler(self)
        try:
            yield self
        finally:
            for log in loggers:
                log.removeHandler(self)


CAPTURE = pytest.StashKey[LogCapture]()
REPORTS = pytest.StashKey[dict]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    capture = LogCapture(item.config.stash[MANAGER])
    item.stash[CAPTURE] = capture
    item.stash[REPORTS] = {}
    logging_plugin = item.config.pluginmanager.get_plugin("logging-plugin")
    report_handler = getattr(logging_plugin, "report_handler", None)  # pytest's "Captured log" sections
    if report_handler is not None:
        report_handler.addFilter(SKIP_CAPTURED)
    with capture.attached():
        yield


def log_file_for(log_dir: Path, nodeid: str) -> Path:
    """The per-test log file: the node id made into a file name.

    >>> log_file_for(Path("logs"), "tests/test_board.py::TestBoot::test_login[uart]").name
    'tests_test_board.py__TestBoot__test_login_uart_.log'
    """
    return log_dir / (re.sub(r"[^\w.-]", "_", nodeid.replace("::", "__")) + ".log")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    if USED_LAB in item.stash:
        from jumpstarter_drivers.pyserial.common import flush_consoles

        flush_consoles()  # a prompt the board printed belongs to the phase that saw it
    outcome = yield
    report = outcome.get_result()
    capture = item.stash.get(CAPTURE, None)
    lab = item.stash.get(USED_LAB, None)
    if capture is None or lab is None:
        return
    item.stash[REPORTS][report.when] = report
    if report.failed:
        capture.settle()
        if capture.lines:
            report.sections.append((f"jumpstarter driver logs ({report.when})", "\n".join(capture.lines)))
        capture.file_lines.append(failure_line(item, report, call))
    if report.when != "teardown":
        return
    log_dir = _path_setting(item.config, "jumpstarter_log_dir", JUMPSTARTER_LOG_DIR)
    if log_dir is not None:
        capture.settle()
        path = log_file_for(log_dir, item.nodeid)
        path.parent.mkdir(parents=True, exist_ok=True)
        worker = getattr(item.config, "workerinput", {}).get("workerid")
        header = item.config.stash[MANAGER].board(lab).header(item.nodeid, worker)
        path.write_text("".join(line + "\n" for line in [*header, *capture.file_lines]))
        item.user_properties.append(("jumpstarter_log", str(path)))
        report.user_properties.append(("jumpstarter_log", str(path)))
        for phase in item.stash[REPORTS].values():
            phase.sections.append(("jumpstarter log file", str(path)))
    reports = item.stash[REPORTS]
    item.config.hook.pytest_jumpstarter_test_finished(
        item=item, client=lab.client, failed=any(r.failed for r in reports.values()), reports=dict(reports)
    )
