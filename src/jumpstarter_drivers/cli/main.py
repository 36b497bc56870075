"""The ``jumpstarter`` command line.

``serve`` runs a lab from its exporter YAML until SIGINT or SIGTERM; ``shell`` runs a command
inside a lab (served locally, or a remote one); ``report`` prints a lab's driver tree; every
other command comes from the lab's clients (``jumpstarter power on``), see
:mod:`jumpstarter_drivers.cli.drivers`. Failures print one line on stderr and exit non-zero.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from ..core.errors import JumpstarterError

logger = logging.getLogger("jumpstarter_drivers.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
BUILTIN_ALLOW = "jumpstarter_drivers.*"
CONNECTION_HELP = (
    "Driver commands reach the lab at --host (default: $JUMPSTARTER_HOST, which `jumpstarter shell` sets): "
    "a unix socket path or HOST:PORT. Over TCP the connection uses TLS (trusting --ca, else the system's CAs) "
    "unless --insecure. The passphrase is read from --passphrase-file, or given itself in $JMP_GRPC_PASSPHRASE. "
    "Every connection option has its variable (--ca $JMP_GRPC_CA, --insecure $JMP_GRPC_INSECURE=1, "
    "--passphrase-file $JMP_GRPC_PASSPHRASE_FILE, --keepalive $JMP_GRPC_KEEPALIVE). Client classes are imported "
    f"only when $JMP_DRIVERS_ALLOW allows them (default: {BUILTIN_ALLOW})."
)


class Failure(click.ClickException):
    """A command failed for a reason the user can fix: one line on stderr, non-zero exit."""

    def __init__(self, message: object, exit_code: int = 1) -> None:
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


class _StderrHandler(logging.StreamHandler):
    """The one stderr handler the CLI installs (replaced, not added again, by a second setup)."""


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (driver logs included)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setLevel(level.upper())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())


def read_passphrase(path: str | None) -> str | None:
    """The passphrase in ``path`` (its first line), or ``None`` without a path."""
    if path is None:
        return None
    from ..core.access import read_passphrase_file
    from ..core.session import check_passphrase

    try:
        return check_passphrase(read_passphrase_file(path), f"passphrase in {path}")
    except JumpstarterError as exc:
        raise Failure(exc) from None


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    >>> parse_listen("0.0.0.0:9000")
    ('0.0.0.0', 9000)
    >>> parse_listen("[::1]:0")
    ('[::1]', 0)
    """
    host, sep, port = value.rpartition(":")
    if not (sep and host and port.isdigit() and int(port) < 65536):
        raise Failure(f"--listen {value!r}: expected HOST:PORT, e.g. 0.0.0.0:9000 (port 0 picks a free one)")
    return host, int(port)


def load_lab(path: str) -> Any:
    """The :class:`~jumpstarter_drivers.core.config.ExporterConfig` in ``path`` (errors as one line)."""
    from ..core import config

    try:
        return config.load(path)
    except JumpstarterError as exc:
        raise Failure(exc) from None


class Signals:
    """Signals caught while inside :func:`signals_caught`, and a way for the main thread to wait for them.

    A process-directed signal may be delivered to any thread (a gRPC thread, say); Python runs
    its handler only once the main thread executes again. So the main thread waits in
    ``select()`` on the signal wakeup descriptor, which every delivery writes to, instead of
    blocking on a lock that nothing would interrupt.
    """

    #: Longest the main thread sleeps between checks, should a wakeup byte arrive before its handler ran.
    RECHECK = 0.5

    def __init__(self) -> None:
        self.received = threading.Event()
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` is true, checking after every signal (``self.received.is_set``, say)."""
        while not done():
            select.select([self._reader], [], [], self.RECHECK)
            with contextlib.suppress(BlockingIOError):
                self._reader.recv(4096)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


@contextlib.contextmanager
def signals_caught(*signums: int, on_signal: Callable[[int], None] | None = None) -> Iterator[Signals]:
    """While inside, ``signums`` set ``received`` of the yielded :class:`Signals` (and call ``on_signal``)
    instead of their default action."""
    signals = Signals()

    def handler(signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            signals.received.set()
        if on_signal is not None:
            on_signal(signum)

    previous = {signum: signal.signal(signum, handler) for signum in signums}
    previous_wakeup = signal.set_wakeup_fd(signals._writer.fileno(), warn_on_full_buffer=False)
    try:
        yield signals
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for signum, old in previous.items():
            signal.signal(signum, old)
        signals.close()


def connection_options(host_envvar: str | None) -> Callable[[Callable], Callable]:
    """``--host``, ``--ca``, ``--insecure``, ``--passphrase-file`` and ``--keepalive``: how a client reaches a lab
    (each with its variable, see :data:`~jumpstarter_drivers.core.access.CONNECTION_SETTINGS`)."""

    def decorate(func: Callable) -> Callable:
        for option in reversed(
            (
                click.option(
                    "--host",
                    envvar=host_envvar,
                    metavar="ADDR",
                    help="The lab's address: a unix socket path or HOST:PORT"
                    + (f" (default: ${host_envvar})." if host_envvar else "."),
                ),
                click.option(
                    "--ca",
                    envvar="JMP_GRPC_CA",
                    type=click.Path(dir_okay=False),
                    help="PEM certificate(s) to trust for the lab's TLS, e.g. the cert.pem of `jumpstarter tls-cert` "
                    "(env JMP_GRPC_CA; default: the system's CAs).",
                ),
                click.option(
                    "--insecure",
                    envvar="JMP_GRPC_INSECURE",
                    is_flag=True,
                    help="Plaintext TCP, for a lab served with --insecure (env JMP_GRPC_INSECURE=1).",
                ),
                click.option(
                    "--passphrase-file",
                    envvar="JMP_GRPC_PASSPHRASE_FILE",
                    type=click.Path(dir_okay=False),
                    help="File whose first line is the lab's passphrase (env JMP_GRPC_PASSPHRASE_FILE; the "
                    "passphrase itself may be given in JMP_GRPC_PASSPHRASE instead).",
                ),
                click.option(
                    "--keepalive",
                    envvar="JMP_GRPC_KEEPALIVE",
                    type=click.FloatRange(min=0.1),
                    metavar="SECONDS",
                    help="Seconds between keepalive pings; a lab silent that long fails the call (env "
                    "JMP_GRPC_KEEPALIVE; default: 10).",
                ),
            )
        ):
            func = option(func)
        return func

    return decorate


def connect_lab(
    host: str,
    ca: str | None,
    insecure: bool,
    passphrase: str | None,
    timeout: float = 5.0,
    keepalive: float | None = None,
) -> Any:
    """The root client of the lab at ``host`` (connection failures as one line)."""
    from ..core.access import JMP_DRIVERS_ALLOW, connect

    try:
        return connect(
            host,
            allow=os.environ.get(JMP_DRIVERS_ALLOW),
            ca=ca,
            insecure=True if insecure else None,
            passphrase=passphrase,
            timeout=timeout,
            keepalive=keepalive,
        )
    except JumpstarterError as exc:
        raise Failure(exc) from None


LAB = "jumpstarter.lab"


def lab_client(ctx: click.Context, timeout: float = 5.0) -> Any:
    """The root client of the lab the top-level options name, connected once per invocation and
    closed with the context."""
    root = ctx.find_root()
    if LAB not in root.meta:
        params = root.params
        host = params.get("host") or os.environ.get("JUMPSTARTER_HOST")
        if not host:
            raise click.UsageError(
                "no lab to talk to: run inside `jumpstarter shell`, set JUMPSTARTER_HOST, or give --host", ctx
            )
        client = connect_lab(
            host,
            params.get("ca"),
            bool(params.get("insecure")),
            read_passphrase(params.get("passphrase_file")),
            timeout,
            params.get("keepalive"),
        )
        root.call_on_close(client.close)
        root.meta[LAB] = client
    return root.meta[LAB]


class LabGroup(click.Group):
    """The top-level group: built-in commands, then the commands of the lab's clients."""

    def lab_group(self, ctx: click.Context, quiet: bool = False) -> click.Group | None:
        from .drivers import client_command

        try:
            client = lab_client(ctx, timeout=2.0 if quiet else 5.0)
        except click.ClickException as exc:
            if quiet:
                logger.debug("driver commands not listed: %s", exc.format_message())
                return None
            raise
        command = client_command(client, "jumpstarter")
        return command if isinstance(command, click.Group) else None

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        lab = self.lab_group(ctx, quiet=True)
        if lab is not None:
            names += [name for name in lab.list_commands(ctx) if name not in names]
        return names

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        builtin = super().list_commands(ctx)
        rows = {"Commands": [], "Lab commands": []}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                section = "Commands" if name in builtin else "Lab commands"
                rows[section].append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        for section, items in rows.items():
            if items:
                with formatter.section(section):
                    formatter.write_dl(items)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        lab = self.lab_group(ctx, quiet=ctx.resilient_parsing)
        return lab.get_command(ctx, cmd_name) if lab is not None else None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            stdout_closed()
        except (JumpstarterError, OSError) as exc:  # a driver's error, a missing file
            raise Failure(exc) from None


def stdout_closed() -> None:
    """Exit quietly because the reader of stdout went away (``jumpstarter report | head``), with the
    status a shell reports for a command killed by SIGPIPE, as other Unix tools end."""
    # What is still buffered for stdout goes nowhere, not into a second error at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise SystemExit(128 + signal.SIGPIPE)


@click.group(cls=LabGroup, epilog=CONNECTION_HELP)
@connection_options("JUMPSTARTER_HOST")
@click.version_option(package_name="jumpstarter-toolkit", prog_name="jumpstarter")
@click.pass_context
def main(
    ctx: click.Context,
    host: str | None,
    ca: str | None,
    insecure: bool,
    passphrase_file: str | None,
    keepalive: float | None,
) -> None:
    """Serve labs of drivers, run commands inside them, and drive their hardware by hand.

    Besides the commands below, each driver of the lab at --host is a command named after it:
    `jumpstarter power on`, `jumpstarter board serial pipe`, ...
    """
    quiet_grpc(ctx)


GRPC_VERBOSITY = "GRPC_VERBOSITY"
_silenced = False


def quiet_grpc(ctx: click.Context) -> None:
    """Keep gRPC's C core from writing its own multi-line logs on stderr (errors are reported by us)
    for this invocation. ``GRPC_VERBOSITY`` set by the user wins, e.g. ``GRPC_VERBOSITY=debug``."""
    global _silenced
    if os.environ.get(GRPC_VERBOSITY):
        return
    os.environ[GRPC_VERBOSITY] = "NONE"
    _silenced = True

    def restore() -> None:
        global _silenced
        os.environ.pop(GRPC_VERBOSITY, None)
        _silenced = False

    ctx.call_on_close(restore)


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment for a child, with ``extra``, without what :func:`quiet_grpc` set."""
    env = {**os.environ, **extra}
    if _silenced:
        env.pop(GRPC_VERBOSITY, None)
    return env


@main.command()
@click.argument("exporter", metavar="EXPORTER.yaml")
@click.option("--unix", "unix_path", metavar="PATH", help="Serve on this unix socket (default: a private one).")
@click.option("--listen", metavar="HOST:PORT", help="Serve on TCP (port 0 picks a free one); needs TLS or --insecure.")
@click.option("--tls-cert", metavar="FILE", help="PEM certificate for --listen (see `jumpstarter tls-cert`).")
@click.option("--tls-key", metavar="FILE", help="PEM private key of --tls-cert.")
@click.option("--insecure", is_flag=True, help="Serve --listen in plaintext (only on a network you trust).")
@click.option("--passphrase-file", metavar="FILE", help="Refuse clients without the passphrase on its first line.")
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO", show_default=True,
    help="Log to stderr from this level on (driver logs included).",
)
@click.option("--controller", metavar="HOST:PORT", help="Register with this lab controller and serve its leases "
              "(default endpoint, token and TLS: the exporter file's endpoint, token and tls).")
@click.option("--token-file", metavar="FILE", help="The exporter's controller token (default: the file's token).")
@click.option("--controller-ca", metavar="FILE", help="PEM certificate to trust for the controller's TLS.")
@click.option("--controller-insecure", is_flag=True, help="Reach the controller in plaintext.")
@click.option("--direct", metavar="HOST:PORT", help="With --controller: also let each lease's holder reach this "
              "exporter directly here (mutual TLS, certificates made per lease), bypassing the router.")
@click.option("--direct-address", metavar="HOST", help="The host name or address clients dial for --direct "
              "(default: its HOST).")
def serve(
    exporter: str,
    unix_path: str | None,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    passphrase_file: str | None,
    log_level: str,
    controller: str | None,
    token_file: str | None,
    controller_ca: str | None,
    controller_insecure: bool,
    direct: str | None,
    direct_address: str | None,
) -> None:
    """Run the lab described by EXPORTER.yaml until SIGINT or SIGTERM.

    Prints the address it serves on (a socket path or HOST:PORT) on stdout, logs to stderr, and on
    a signal closes every driver and exits 0. With --controller (or --token-file) it registers
    with a lab controller and serves the clients that lease it, through the controller's router
    (and with --direct, on a port of its own as well).
    """
    access = None
    direct_port = None
    if (direct or direct_address) and not (controller or token_file):
        raise Failure("--direct serves a lab controller's leases: give --controller (or --token-file) too")
    if direct_address and not direct:
        raise Failure("--direct-address names the host of --direct HOST:PORT: give --direct too")
    if direct:
        from ..controller.direct import parse_direct

        try:
            direct_port = parse_direct(direct, direct_address)
        except JumpstarterError as exc:
            raise Failure(exc) from None
        check_bindable(direct_port[0], direct_port[1])
    if controller or token_file:
        from ..controller.cli import exporter_access

        if listen:
            raise Failure("serve through --controller or on --listen, not both")
        access = exporter_access(exporter, controller, token_file, controller_ca, controller_insecure)
    if unix_path and listen:
        raise Failure("give either --unix PATH or --listen HOST:PORT, not both")
    if bool(tls_cert) != bool(tls_key):
        raise Failure("--tls-cert and --tls-key go together: give the certificate and its private key")
    if not listen and (tls_cert or insecure):
        raise Failure(
            "--tls-cert, --tls-key and --insecure apply to --listen HOST:PORT; "
            "a unix socket is guarded by its directory's permissions"
        )
    if listen and tls_cert and insecure:
        raise Failure("give either --tls-cert/--tls-key or --insecure, not both")
    if listen and not (tls_cert or insecure):
        raise Failure(
            "--listen needs --tls-cert and --tls-key (see `jumpstarter tls-cert`), or --insecure to serve "
            "plaintext on a network you trust"
        )
    setup_logging(log_level)
    passphrase = read_passphrase(passphrase_file)
    if unix_path:
        check_unix_path(unix_path)
    if listen:
        check_bindable(*parse_listen(listen))
    if tls_cert and tls_key:
        check_pem(tls_cert, "certificate", "CERTIFICATE")
        check_pem(tls_key, "key", "PRIVATE KEY")
    with signals_caught(signal.SIGINT, signal.SIGTERM) as stop:
        lab = load_lab(exporter)
        try:
            with lab.session() as session, serving(session, unix_path, listen, tls_cert, tls_key, passphrase) as address:
                logger.info("serving %s on %s; stop with Ctrl-C or SIGTERM", exporter, address)
                click.echo(address)
                with contextlib.ExitStack() as agent:
                    if access is not None:
                        from ..controller.cli import registered

                        agent.enter_context(registered(session, address, access, direct_port))
                    stop.wait_until(stop.received.is_set)
                logger.info("stopping")
        except (JumpstarterError, OSError) as exc:
            if tls_cert and "Failed to bind" in str(exc):
                # The address was free a moment ago (check_bindable): gRPC refused the TLS pair.
                raise Failure(
                    f"cannot serve TLS on {listen}: gRPC refused the certificate and key; check that {tls_key} "
                    f"is the private key of {tls_cert}"
                ) from None
            raise Failure(exc) from None
    logger.info("stopped")


def check_pem(path: str, what: str, label: str) -> None:
    """Fail with one line unless ``path`` is a readable PEM file holding a ``label`` block."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise Failure(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
    if not re.search(rf"-----BEGIN [A-Z ]*{label}-----", text):
        raise Failure(f"the TLS {what} {path} is not a PEM file with a {label} block")


def check_unix_path(path: str) -> None:
    """Fail with one line when ``path`` is a live exporter's socket or not a socket at all
    (a stale socket left by a killed exporter is fine: it is replaced)."""
    target = Path(path)
    if not (target.exists() or target.is_symlink()):
        return
    if not target.is_socket():
        raise Failure(f"--unix {path}: the path exists and is not a socket; choose another path")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
        except OSError:
            return
    raise Failure(f"--unix {path}: another process serves on this socket; stop it or choose another path")


def check_bindable(host: str, port: int) -> None:
    """Fail with the OS's reason when ``host:port`` cannot be listened on (a port in use, say)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise Failure(f"cannot listen on {host}:{port}: {exc.strerror}") from None


@contextlib.contextmanager
def serving(
    session: Any,
    unix_path: str | None,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    passphrase: str | None,
) -> Iterator[str]:
    """Serve ``session`` as ``jumpstarter serve`` was told to; yield the address clients use."""
    if listen:
        host, port = parse_listen(listen)
        with session.serve_tcp(
            host, port, tls_cert=tls_cert, tls_key=tls_key, insecure=not tls_cert, passphrase=passphrase
        ) as bound:
            yield f"{host}:{bound}"
    else:
        with session.serve_unix(unix_path, passphrase=passphrase) as path:
            yield str(path)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@connection_options(None)
@click.option(
    "--exporter",
    "exporter_file",
    metavar="FILE",
    help="Serve the lab described by this exporter configuration for CMD (like giving EXPORTER.yaml first).",
)
@click.option(
    "--allow",
    metavar="PATTERNS",
    help="JMP_DRIVERS_ALLOW for the command (default: the lab's own client classes for a local lab, "
    f"else $JMP_DRIVERS_ALLOW or {BUILTIN_ALLOW}).",
)
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="WARNING", show_default=True,
    help="Log to stderr from this level on (driver logs of a local lab included).",
)
@click.option("--selector", "-l", help="Lease a board matching this label selector from the lab controller.")
@click.option("--duration", default="30m", show_default=True, help="How long the --selector lease may last.")
@click.option("--wait", help="Wait at most this long for a board (default: as long as it takes).")
@click.option(
    "--client-config", metavar="FILE", help="Client configuration for --selector (default: $JMP_CLIENT_CONFIG)."
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[EXPORTER.yaml] [--] [CMD]...")
@click.pass_context
def shell(
    ctx: click.Context,
    host: str | None,
    ca: str | None,
    insecure: bool,
    passphrase_file: str | None,
    keepalive: float | None,
    exporter_file: str | None,
    allow: str | None,
    log_level: str,
    selector: str | None,
    duration: str,
    wait: str | None,
    client_config: str | None,
    args: tuple[str, ...],
) -> None:
    """Run CMD (default: $SHELL) inside a lab and exit with its exit status.

    \b
    The lab is, in this order:
    1. the lab at --host (of `shell` or of `jumpstarter` itself),
    2. the lab described by --exporter FILE, or by the first argument when it is a .yaml or .yml
       file, served on a private unix socket while CMD runs,
    3. the lab at $JUMPSTARTER_HOST,
    4. otherwise the built-in virtual lab.

    CMD gets JUMPSTARTER_HOST and JMP_DRIVERS_ALLOW (and JMP_GRPC_* for a remote lab), so
    `jumpstarter shell lab.yaml -- pytest` runs the tests against that lab.
    """
    setup_logging(log_level)
    if args and args[0].startswith("-") and args[0] != "-" and args[0] != "--":
        raise click.NoSuchOption(args[0])
    root = ctx.find_root().params
    root_sources = {name: ctx.find_root().get_parameter_source(name) for name in root}
    exporter, command = exporter_argument(exporter_file, args)
    host = host or command_line_host(ctx)
    if selector:
        if host or exporter:
            raise click.UsageError("give either --selector (a board leased from the controller) or a lab, not both")
        from ..controller.cli import client_access, lease_environment, parse_duration

        access = client_access(client_config)
        bound = parse_duration(wait) if wait else None
        try:
            with lease_environment(access, selector, parse_duration(duration), bound) as lease:
                env = {"JUMPSTARTER_HOST": lease.socket, "JMP_DRIVERS_ALLOW": allow or os.environ.get(
                    "JMP_DRIVERS_ALLOW") or BUILTIN_ALLOW, "JMP_LEASE": lease.name, "JMP_EXPORTER": lease.exporter}
                code = run_inside(command, env)
        except JumpstarterError as exc:
            raise Failure(exc) from None
        raise SystemExit(code)
    if host and exporter:
        raise click.UsageError(f"give either a lab to reach (--host {host}) or one to serve ({exporter}), not both")
    host = host or (None if exporter else os.environ.get("JUMPSTARTER_HOST"))
    ca = ca or root.get("ca")
    insecure = insecure or bool(root.get("insecure"))
    passphrase_file = passphrase_file or root.get("passphrase_file")
    keepalive = keepalive or root.get("keepalive")
    if host:
        env = remote_env(host, ca, insecure, read_passphrase(passphrase_file), allow, keepalive)
        raise SystemExit(run_inside(command, env))
    given = [
        f"--{name.replace('_', '-')}"
        for name in ("ca", "insecure", "passphrase_file", "keepalive")
        if click.core.ParameterSource.COMMANDLINE in (ctx.get_parameter_source(name), root_sources.get(name))
    ]
    if given:
        raise Failure(f"{', '.join(given)}: connection options are for --host; a local lab is served on a unix socket")
    if exporter is None:
        from jumpstarter_testing.lab import VIRTUAL_LAB

        logger.info("no lab given (--host, EXPORTER.yaml or $JUMPSTARTER_HOST): serving the built-in virtual lab")
        exporter = str(VIRTUAL_LAB)
    lab = load_lab(exporter)
    try:
        with lab.session() as session, session.serve_unix() as path:
            env = {"JUMPSTARTER_HOST": str(path), "JMP_DRIVERS_ALLOW": allow or lab_allow(session)}
            code = run_inside(command, env)
    except (JumpstarterError, OSError) as exc:
        raise Failure(exc) from None
    raise SystemExit(code)


YAML_SUFFIXES = (".yaml", ".yml")


def exporter_argument(option: str | None, args: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """The exporter file ``shell`` was given (by ``--exporter`` or as its first argument) and CMD.

    The first argument is an exporter file only when it names a .yaml or .yml file; a name like
    that which is no file is an error rather than a command to run.

    >>> exporter_argument(None, ("--", "jumpstarter", "report"))
    (None, ['jumpstarter', 'report'])
    >>> exporter_argument("lab.yaml", ("sh", "-c", "true"))
    ('lab.yaml', ['sh', '-c', 'true'])
    """
    if option is not None:
        return option, without_separator(args)
    if args and args[0].endswith(YAML_SUFFIXES):
        if not Path(args[0]).is_file():
            raise Failure(
                f"no exporter configuration {args[0]}: no such file; give the path of a lab's YAML, "
                "or put -- before a command"
            )
        return args[0], without_separator(args[1:])
    return None, without_separator(args)


def command_line_host(ctx: click.Context) -> str | None:
    """The top-level ``--host`` when it was given on the command line (not taken from $JUMPSTARTER_HOST)."""
    root = ctx.find_root()
    if root.get_parameter_source("host") is click.core.ParameterSource.COMMANDLINE:
        return root.params.get("host")
    return None


def without_separator(args: tuple[str, ...]) -> list[str]:
    """CMD without the ``--`` that separates it from the options (click leaves it there).

    >>> without_separator(("--", "pytest", "--", "x"))
    ['pytest', '--', 'x']
    """
    return list(args[1:] if args[:1] == ("--",) else args)


def lab_allow(session: Any) -> str:
    """JMP_DRIVERS_ALLOW naming exactly the client classes of a session's drivers (ours and Jumpstarter's)."""
    from ..core.compat import jumpstarter_name_for

    names: list[str] = []
    for driver in session.drivers.values():
        ours = driver.client()
        for name in (ours, jumpstarter_name_for(ours)):
            if name not in names:
                names.append(name)
    return ",".join(names)


def remote_env(
    host: str, ca: str | None, insecure: bool, passphrase: str | None, allow: str | None, keepalive: float | None = None
) -> dict[str, str]:
    """The environment for a command run against the lab at ``host``, once it answered."""
    from ..core.access import JMP_DRIVERS_ALLOW

    env = {"JUMPSTARTER_HOST": host, "JMP_DRIVERS_ALLOW": allow or os.environ.get(JMP_DRIVERS_ALLOW) or BUILTIN_ALLOW}
    if ca:
        env["JMP_GRPC_CA"] = str(Path(ca).resolve())
    if insecure:
        env["JMP_GRPC_INSECURE"] = "1"
    if passphrase:
        env["JMP_GRPC_PASSPHRASE"] = passphrase
    if keepalive:
        env["JMP_GRPC_KEEPALIVE"] = f"{keepalive:g}"
    connect_lab(host, ca, insecure, passphrase, keepalive=keepalive).close()
    return env


def run_inside(command: list[str], env: dict[str, str]) -> int:
    """Run ``command`` with ``env`` added; its exit status (128+N when killed by signal N).

    SIGTERM and SIGHUP are passed on to it; SIGINT is left to it (a terminal sends it to both).
    """
    if not command:
        command = [os.environ.get("SHELL") or "/bin/sh"]
    logger.debug("running %s with %s", command, env)
    try:
        process = subprocess.Popen(command, env=child_environment(env))
    except FileNotFoundError:
        raise Failure(f"command not found: {command[0]}", exit_code=127) from None
    except PermissionError:
        raise Failure(f"command not executable: {command[0]}", exit_code=126) from None

    def forward(signum: int) -> None:
        if signum not in (signal.SIGINT, signal.SIGCHLD) and process.poll() is None:
            process.send_signal(signum)

    # SIGCHLD only wakes the wait when the command ends; other signals are passed on, then waited out.
    with signals_caught(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, on_signal=forward) as caught:
        caught.wait_until(lambda: process.poll() is not None)
        code = process.wait()
    return 128 - code if code < 0 else code


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON (names, clients, labels, methods).")
@click.pass_context
def report(ctx: click.Context, as_json: bool) -> None:
    """Print the lab's driver tree: names, client classes, descriptions and method signatures."""
    from .drivers import report_lines, report_tree

    if as_json:
        click.echo(json.dumps(report_tree(lab_client(ctx)), indent=2))
        return
    for line in report_lines(lab_client(ctx)):
        click.echo(line)


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the reference as JSON.")
def drivers(name: str | None, as_json: bool) -> None:
    """List the bundled drivers, or show one: its configuration fields and exported methods.

    NAME is what an exporter file's `type:` says (`jumpstarter drivers PySerial`) or a driver
    class's import path.
    """
    from .reference import bundled_names, describe, describe_all, terminal, text_lines

    try:
        if name is None:
            docs = describe_all()
            if as_json:
                click.echo(json.dumps([doc.as_dict() for doc in docs], indent=2))
                return
            width = max(len(n) for n in bundled_names())
            for doc in docs:
                click.echo(f"{doc.name:<{width}}  {terminal(doc.summary)}")
            return
        doc = describe(name)
    except JumpstarterError as exc:
        raise Failure(exc) from None
    click.echo(json.dumps(doc.as_dict(), indent=2) if as_json else "\n".join(text_lines(doc)))


@main.command()
@click.argument("spec", metavar="LOCAL:NODE:PORT")
@click.pass_context
def forward(ctx: click.Context, spec: str) -> None:
    """Forward 127.0.0.1:LOCAL to PORT of the board through NODE (a TcpNetwork or Network node)
    until interrupted; LOCAL 0 picks a free port (printed)."""
    from ..network.client import forward_target, parse_forward

    try:
        local, node_path, port = parse_forward(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="LOCAL:NODE:PORT") from None
    node = lab_client(ctx)
    for name in node_path.split("."):
        if name not in node.children:
            raise click.BadParameter(f"the lab has no node {node_path!r} ({name!r} is not among: "
                                     f"{', '.join(node.children) or 'none'})", param_hint="LOCAL:NODE:PORT")
        node = node.children[name]
    target = forward_target(node, port)
    with target.forward(port, local) as (host, bound), signals_caught(signal.SIGINT, signal.SIGTERM) as caught:
        click.echo(f"forwarding {host}:{bound} to {node_path} port {port}; Ctrl-C stops", err=False)
        sys.stdout.flush()
        caught.wait_until(caught.received.is_set)


@main.command("tls-cert")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A host name or IP address clients use (repeatable; default: this machine's name, localhost, 127.0.0.1).",
)
@click.option("--days", default=365, show_default=True, type=click.IntRange(min=1), help="Validity.")
def tls_cert(directory: str, hosts: tuple[str, ...], days: int) -> None:
    """Write a self-signed cert.pem and key.pem into DIRECTORY for `serve --listen`.

    Give clients cert.pem as their CA (--ca or JMP_GRPC_CA).
    """
    from .certs import write_self_signed

    names = list(hosts) or [socket.gethostname(), "localhost", "127.0.0.1"]
    try:
        cert, key = write_self_signed(directory, names, days)
    except (JumpstarterError, OSError) as exc:
        raise Failure(exc) from None
    click.echo(f"{cert}\n{key}")


def _add_lab_commands() -> None:
    """The shared lab's commands live in :mod:`jumpstarter_drivers.controller.cli`."""
    from ..controller import cli as lab_cli

    for command in (lab_cli.controller, lab_cli.lease, lab_cli.exporters):
        main.add_command(command)


_add_lab_commands()
