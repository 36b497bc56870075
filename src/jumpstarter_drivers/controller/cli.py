"""Commands of the shared lab: ``jumpstarter controller``, ``lease``, ``exporters``, and the controller
parts of ``serve`` and ``shell`` (added to the ``jumpstarter`` command by :mod:`jumpstarter_drivers.cli.main`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..core.errors import JumpstarterError
from . import CLIENT, DEFAULT_NAMESPACE, EXPORTER
from .config import JMP_CLIENT_CONFIG, Access

logger = logging.getLogger(__name__)

#: Where Jumpstarter's own tools keep the default client configuration.
DEFAULT_CLIENT_CONFIG = Path("~/.config/jumpstarter/clients/default.yaml")
STATE_FILE = "controller.json"


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "jumpstarter" / "controller"


def _fail(message: object) -> click.ClickException:
    from ..cli.main import Failure

    return Failure(message)


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``2h`` or ``1d``.

    >>> parse_duration("15m"), parse_duration("90")
    (900.0, 90.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise click.BadParameter(f"{text!r}: expected a number of seconds, or a number with s, m, h or d (15m)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        return value if isinstance(value, float) else parse_duration(str(value))


def client_access(path: str | None) -> Access:
    """The client configuration: ``path``, else ``$JMP_CLIENT_CONFIG``, else Jumpstarter's default file."""
    chosen = path or os.environ.get(JMP_CLIENT_CONFIG) or str(DEFAULT_CLIENT_CONFIG.expanduser())
    try:
        return Access.load(chosen, CLIENT)
    except JumpstarterError as exc:
        raise _fail(
            f"{exc} (a client configuration comes from `jumpstarter controller token create client NAME -o FILE`)"
        )


def run_async(coro: Any, timeout: float | None = 60.0) -> Any:
    """Run ``coro`` on the background loop; its errors as one line."""
    from ..core import loop

    try:
        return loop.run(coro, timeout=timeout)
    except JumpstarterError as exc:
        raise _fail(exc) from None


# the controller ----------------------------------------------------------------------------------


@click.group(invoke_without_command=True)
@click.option("--listen", default="0.0.0.0:8082", show_default=True, metavar="HOST:PORT", help="Where to serve.")
@click.option(
    "--etcd",
    "etcd",
    multiple=True,
    metavar="HOST:PORT",
    help="An etcd member (repeat for a cluster). "
    "Default: a private etcd started as a child, with its data in the state directory.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help=f"Private etcd data, TLS pair, endpoint file (default: {default_state_dir()}).",
)
@click.option("--tls-cert", metavar="FILE", help="PEM certificate (default: a self-signed one in the state directory).")
@click.option("--tls-key", metavar="FILE", help="PEM private key of --tls-cert.")
@click.option("--insecure", is_flag=True, help="Serve plaintext (only on a network you trust, or in tests).")
@click.option("--advertise", metavar="HOST:PORT", help="Address clients and exporters reach this replica at.")
@click.option(
    "--relay-listen",
    metavar="HOST:PORT",
    help="Where the router's relay port listens (default: the --listen host, a free port).",
)
@click.option("--no-relay", is_flag=True, help="No relay port: every tunnel is a RouterService.Stream call.")
@click.option("--reconcile-every", type=float, hidden=True, help="Poll instead of watching (benchmark baseline).")
@click.option(
    "--log-level",
    type=click.Choice(("DEBUG", "INFO", "WARNING", "ERROR"), case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.pass_context
def controller(
    ctx: click.Context,
    listen: str,
    etcd: tuple[str, ...],
    state_dir: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    insecure: bool,
    advertise: str | None,
    relay_listen: str | None,
    no_relay: bool,
    reconcile_every: float | None,
    log_level: str,
) -> None:
    """Run a lab controller replica until SIGINT or SIGTERM (or manage its tokens: `controller token`).

    Prints the endpoint (HOST:PORT) and the state directory on stdout. Replicas given the same
    --etcd serve one lab together.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..cli.main import check_bindable, parse_listen, setup_logging, signals_caught
    from .etcd_process import PrivateEtcd
    from .server import ControllerServer, ControllerSettings, ensure_tls

    setup_logging(log_level)
    if bool(tls_cert) != bool(tls_key):
        raise _fail("--tls-cert and --tls-key go together")
    state = Path(state_dir) if state_dir else default_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    host, port = parse_listen(listen)
    check_bindable(host, port)
    if relay_listen and no_relay:
        raise _fail("give --relay-listen or --no-relay, not both")
    if relay_listen:
        relay_host, _, relay_port = relay_listen.rpartition(":")
        if not (relay_host and relay_port.isdigit() and int(relay_port) < 65536):
            raise _fail(f"--relay-listen {relay_listen!r}: expected HOST:PORT, e.g. 0.0.0.0:8083 (port 0: a free one)")
        check_bindable(relay_host, int(relay_port))
    with contextlib.ExitStack() as stack, signals_caught(signal.SIGINT, signal.SIGTERM) as stop:
        endpoints = list(etcd)
        if not endpoints:
            try:
                endpoints = [stack.enter_context(PrivateEtcd(state)).endpoint]
            except JumpstarterError as exc:
                raise _fail(exc) from None
        if not insecure and not tls_cert:
            names = [socket.gethostname(), "localhost", "127.0.0.1"]
            try:
                tls_cert, tls_key = (str(path) for path in ensure_tls(state, names))
            except JumpstarterError as exc:
                raise _fail(exc) from None
        settings = ControllerSettings(
            etcd=endpoints,
            listen=listen,
            tls_cert=tls_cert,
            tls_key=tls_key,
            insecure=insecure,
            advertise=advertise,
            relay=not no_relay,
            relay_listen=relay_listen,
            reconcile_every=reconcile_every,
        )
        replica = ControllerServer(settings)
        run_async(replica.start())
        stack.callback(run_async, replica.stop())
        info = {
            "endpoint": replica.endpoint,
            "relay_port": replica.router.relay_port or None,
            "etcd": endpoints,
            "insecure": insecure,
            "ca": tls_cert,
        }
        (state / STATE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        click.echo(replica.endpoint)
        click.echo(f"state directory: {state}")
        relay = f", router relay on port {replica.router.relay_port}" if replica.router.relay_port else ""
        logger.info("serving on %s%s; stop with Ctrl-C or SIGTERM", replica.endpoint, relay)
        stop.wait_until(stop.received.is_set)
        logger.info("stopping")


@controller.group()
def token() -> None:
    """Issue and revoke the tokens clients and exporters use."""


def _store_endpoints(etcd: tuple[str, ...], state_dir: str | None) -> tuple[list[str], dict[str, Any]]:
    state = Path(state_dir) if state_dir else default_state_dir()
    info: dict[str, Any] = {}
    try:
        info = json.loads((state / STATE_FILE).read_text())
    except (OSError, ValueError):
        if not etcd:
            raise _fail(
                f"no running controller's state in {state} (start `jumpstarter controller` first), or give --etcd"
            ) from None
    return list(etcd) or list(info.get("etcd", [])), info


async def _with_store(endpoints: list[str], action: Any) -> Any:
    from .store import Store

    async with Store(endpoints) as store:
        return await action(store)


def _state_options(func: Any) -> Any:
    func = click.option("--state-dir", type=click.Path(file_okay=False), help="The controller's state directory.")(func)
    return click.option(
        "--etcd",
        multiple=True,
        metavar="HOST:PORT",
        help="The controller's etcd (default: from the state directory of a running controller).",
    )(func)


@token.command("create")
@click.argument("kind", type=click.Choice(("client", "exporter"), case_sensitive=False))
@click.argument("name")
@_state_options
@click.option("--namespace", default=DEFAULT_NAMESPACE, show_default=True)
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="An exporter's label (repeatable).")
@click.option("--max-priority", type=click.IntRange(0, 100), default=0, show_default=True,
              help="The highest lease priority this client may ask for (0: lowering only).")
@click.option("--endpoint", help="Controller endpoint(s) written in the file (default: the running controller's).")
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(dir_okay=False),
    help="CA certificate (PEM) written in the file (default: the running controller's).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write a configuration file (else print the token)."
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(("token", "config", "jumpstarter")),
    help="token: print the token alone (default without -o); config: our configuration file (default with -o; "
    "several endpoints and plaintext allowed); jumpstarter: a configuration file Jumpstarter's jmp reads too "
    "(TLS, one endpoint), written to -o or else where jmp looks for NAME.",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="PATTERN",
    help="Client file: driver client classes the client may import (glob, e.g. 'jumpstarter_driver_*'; repeatable).",
)
@click.option("--unsafe", is_flag=True, help="Client file: the client may import any driver client class.")
@click.option(
    "--export",
    "export_file",
    type=click.Path(dir_okay=False),
    help="Exporter file: the driver tree it serves, from a YAML file (an exporter file or its export: mapping).",
)
def token_create(
    kind: str,
    name: str,
    etcd: tuple[str, ...],
    state_dir: str | None,
    namespace: str,
    labels: tuple[str, ...],
    max_priority: int,
    endpoint: str | None,
    ca_file: str | None,
    output: str | None,
    file_format: str | None,
    allow: tuple[str, ...],
    unsafe: bool,
    export_file: str | None,
) -> None:
    """Issue a token for client or exporter NAME: print it, or write a configuration file (-o, --format)."""
    if max_priority and kind.lower() != "client":
        raise _fail("--max-priority is a client's: an exporter's leases are not its own to rank")
    pairs = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise _fail(f"--label {label!r}: expected KEY=VALUE")
        pairs[key] = value
    endpoints, info = _store_endpoints(etcd, state_dir)
    from . import config as config_files
    from . import tokens

    file_format = file_format or ("token" if output is None else "config")
    if file_format == "token":
        if output is not None:
            raise _fail(
                "--format token prints the token; -o writes a configuration file (--format config or jumpstarter)"
            )
        click.echo(run_async(_with_store(endpoints, lambda store: tokens.issue(store, kind, name, namespace, pairs, max_priority))))
        return
    if ca_file:
        info = {**info, "ca": ca_file, "insecure": False}
    content = _config_content(info, kind, name, namespace, endpoint, file_format, allow, unsafe, export_file)
    issued = run_async(_with_store(endpoints, lambda store: tokens.issue(store, kind, name, namespace, pairs, max_priority)))
    content["token"] = issued
    if output is None:
        from .jumpstarter_files import default_path

        output = str(default_path(tokens.kind_of(kind), name))
    click.echo(config_files.write(output, content))


def _config_content(
    info: dict[str, Any],
    kind: str,
    name: str,
    namespace: str,
    endpoint: str | None,
    file_format: str,
    allow: tuple[str, ...],
    unsafe: bool,
    export_file: str | None,
) -> dict[str, Any]:
    """The configuration file ``token create`` writes, without its token yet (checked before issuing one)."""
    from . import config as config_files
    from . import tokens
    from .jumpstarter_files import jumpstarter_document, load_export

    kind_name = tokens.kind_of(kind)
    target = endpoint or info.get("endpoint")
    if not target:
        raise _fail("give --endpoint: the controller endpoint clients and exporters use")
    ca_path = info.get("ca")
    try:
        ca = Path(ca_path).read_bytes() if ca_path and not info.get("insecure") else None
    except OSError as exc:
        raise _fail(f"cannot read the CA certificate {ca_path}: {exc.strerror}") from None
    try:
        export = load_export(export_file) if export_file else None
        if file_format == "jumpstarter":
            return jumpstarter_document(
                kind_name, name, target, "", ca, namespace, allow=list(allow), unsafe=unsafe, export=export
            )
    except JumpstarterError as exc:
        raise _fail(exc) from None
    content = config_files.document(kind_name, name, target, "", ca, bool(info.get("insecure")), namespace)
    if kind_name == EXPORTER and export:
        content["export"] = export
    if kind_name == CLIENT and (allow or unsafe):
        content["drivers"] = {"allow": list(allow), "unsafe": unsafe}
    return content


@token.command("revoke")
@click.argument("kind", type=click.Choice(("client", "exporter"), case_sensitive=False))
@click.argument("name")
@_state_options
@click.option("--namespace", default=DEFAULT_NAMESPACE, show_default=True)
def token_revoke(kind: str, name: str, etcd: tuple[str, ...], state_dir: str | None, namespace: str) -> None:
    """Revoke every token of client or exporter NAME (refused from their next call on)."""
    from . import tokens

    endpoints, _ = _store_endpoints(etcd, state_dir)
    count = run_async(_with_store(endpoints, lambda store: tokens.revoke(store, kind, name, namespace)))
    if not count:
        raise _fail(f"{kind} {name} has no token in namespace {namespace}")
    click.echo(f"revoked {count} token(s) of {kind} {name}")


# leases ------------------------------------------------------------------------------------------

client_config_option = click.option(
    "--client-config",
    metavar="FILE",
    help=f"Client configuration (default: ${JMP_CLIENT_CONFIG}, else {DEFAULT_CLIENT_CONFIG}).",
)


async def _client_call(access: Access, action: Any) -> Any:
    from .client import ControllerClient

    client = ControllerClient(access)
    try:
        return await action(client)
    finally:
        await client.close()


@click.group()
def lease() -> None:
    """Create, list and release leases of the controller's boards."""


@lease.command("create")
@click.option("--selector", "-l", required=True, help="Label selector, e.g. 'board=rpi4,!broken'.")
@click.option("--duration", type=Duration(), required=True, help="How long the lease lasts once it starts (15m).")
@click.option("--wait", type=Duration(), help="Wait at most this long for a board (default: return at once).")
@client_config_option
def lease_create(selector: str, duration: float, wait: float | None, client_config: str | None) -> None:
    """Ask for a board; print the lease name (it holds the board until released or DURATION ends)."""
    from .client import LeaseTimeout, short

    access = client_access(client_config)

    async def create(client: Any) -> Any:
        created = await client.create_lease(selector, duration, keepalive=0)
        if wait is None:
            return created
        try:
            return await client.wait_ready(created.name, wait, lambda message: click.echo(message, err=True))
        except LeaseTimeout:
            await client.release(created.name)
            raise

    created = run_async(_client_call(access, create), timeout=None if wait is None else wait + 60)
    click.echo(short(created.name))


@lease.command("list")
@click.option("--all", "show_all", is_flag=True, help="Ended leases too.")
@client_config_option
def lease_list(show_all: bool, client_config: str | None) -> None:
    """The namespace's leases: name, client, exporter or queue place, selector, times."""
    from .client import condition, short

    found = run_async(_client_call(client_access(client_config), lambda client: client.leases(not show_all)))
    for item in found:
        kind, status, message = condition(item)
        state = "active" if kind == "Ready" and status == "True" else ("ended" if kind == "Ready" else "waiting")
        where = short(item.exporter) if item.exporter else message
        click.echo(
            f"{short(item.name)}  {short(item.client)}  {state}  {item.selector or short(item.exporter_name)}  {where}"
        )


@lease.command("release")
@click.argument("name")
@client_config_option
def lease_release(name: str, client_config: str | None) -> None:
    """End lease NAME now."""
    run_async(_client_call(client_access(client_config), lambda client: client.release(name)))
    click.echo(f"released {name}")


# availability ------------------------------------------------------------------------------------


def availability(exporters: list[Any], leases: list[Any]) -> dict[str, Any]:
    """What ``jumpstarter exporters`` shows, as data: each exporter, and the queue per selector."""
    from .client import condition, short

    holders = {}
    queue: Counter[str] = Counter()
    for item in leases:
        kind, status, _ = condition(item)
        if kind == "Ready" and status == "True":
            holders[short(item.exporter)] = {
                "lease": short(item.name),
                "client": short(item.client),
                "since": item.effective_begin_time.ToDatetime().isoformat() + "Z",
            }
        elif kind == "Pending":
            queue[item.selector or f"exporter {short(item.exporter_name)}"] += 1
    rows = []
    for exporter in exporters:
        name = short(exporter.name)
        rows.append(
            {
                "name": name,
                "labels": dict(exporter.labels),
                "online": exporter.online,
                "status": exporter.status,
                "leased": holders.get(name),
            }
        )
    return {"exporters": rows, "queue": dict(sorted(queue.items()))}


@click.command("exporters")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--selector", "-l", default="", help="Only exporters matching this label selector.")
@client_config_option
def exporters(as_json: bool, selector: str, client_config: str | None) -> None:
    """Every exporter: labels, online or offline, free or leased by whom since when; waiting leases per selector."""
    access = client_access(client_config)

    async def gather(client: Any) -> dict[str, Any]:
        return availability(await client.exporters(selector), await client.leases(True))

    view = run_async(_client_call(access, gather))
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    for row in view["exporters"]:
        labels = ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items()))
        held = row["leased"]
        state = f"leased by {held['client']} since {held['since']} ({held['lease']})" if held else "free"
        click.echo(f"{row['name']}  {'online' if row['online'] else 'offline'}  {state}  {labels}")
    for wanted, count in view["queue"].items():
        click.echo(f"waiting: {count} for {wanted}")


# serve and shell through the controller ----------------------------------------------------------


def exporter_access(
    exporter_file: str, controller: str | None, token_file: str | None, ca: str | None, insecure: bool
) -> Access:
    """How ``jumpstarter serve`` reaches the controller: the exporter file's endpoint, token and TLS,
    overridden by the options."""
    import yaml

    from ..core.config import BoundedSafeLoader

    try:
        document = yaml.load(Path(exporter_file).read_text(), Loader=BoundedSafeLoader) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise _fail(f"cannot read {exporter_file}: {exc}") from None
    document = dict(document) if isinstance(document, dict) else {}
    if controller:
        document["endpoint"] = controller
    if token_file:
        try:
            document["token"] = Path(token_file).read_text().strip()
        except OSError as exc:
            raise _fail(f"cannot read the token file {token_file}: {exc.strerror}") from None
    tls = dict(document.get("tls") or {})
    if ca:
        try:
            import base64

            tls["ca"] = base64.b64encode(Path(ca).read_bytes()).decode()
        except OSError as exc:
            raise _fail(f"cannot read the CA certificate {ca}: {exc.strerror}") from None
    if insecure:
        tls["insecure"] = True
    document["tls"] = tls
    try:
        return Access.from_document(document, EXPORTER, exporter_file)
    except JumpstarterError as exc:
        raise _fail(exc) from None


@contextlib.contextmanager
def registered(
    session: Any, socket_path: str, access: Access, direct: tuple[str, int, str] | None = None
) -> Iterator[Any]:
    """Keep ``session`` registered with the controller (in the background) while inside; ``direct``:
    ``(host, port, advertised host)`` of the exporter's direct port (:mod:`.direct`)."""
    import asyncio

    from ..core import loop
    from .direct import DirectPort
    from .exporter import ExporterAgent

    port = None if direct is None else DirectPort(socket_path, *direct)
    agent = ExporterAgent(session, socket_path, access, port)

    async def start() -> asyncio.Task:
        return asyncio.create_task(agent.run(), name="exporter-agent")

    async def stop(task: asyncio.Task) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    if port is not None:
        loop.run(port.start())
    try:
        task = loop.run(start())
        try:
            yield agent
        finally:
            loop.run(stop(task), timeout=15)
    finally:
        if port is not None:
            loop.run(port.stop(), timeout=15)


def lease_environment(access: Access, selector: str, duration: float, wait: float | None) -> Any:
    """A context manager leasing a board for ``jumpstarter shell --selector`` (progress on stderr)."""
    from .client import leased

    def progress(message: str) -> None:
        click.echo(f"jumpstarter: {message}", err=True)

    return leased(access, selector, duration, wait=wait, progress=progress)
