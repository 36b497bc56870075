"""The U-Boot driver: a board's boot loader, reached through its serial console and power switch."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from ..core.driver import Driver, export, exportstream
from ..core.errors import ConfigurationError
from .common import DEFAULT_FAIL_PATTERNS
from .console import Expecter, UBootConsole, call_maybe_async


def connect_live(serial: Driver) -> contextlib.AbstractAsyncContextManager[Any]:
    """The serial driver's byte stream without the history a console keeps between clients
    (:meth:`~jumpstarter_drivers.pyserial.driver.PySerial.connect_live`); other drivers have none."""
    from ..composite.driver import Proxy

    while isinstance(serial, Proxy) and serial.target is not None:  # a ref: the driver it names
        serial = serial.target
    live = getattr(serial, "connect_live", None)
    return live() if callable(live) else serial.connect()


@dataclass(kw_only=True)
class UBoot(Driver):
    """U-Boot on a board: power-cycle into its prompt, run commands, read and set its environment.

    Standalone it needs children ``serial`` (a driver exporting the byte stream ``connect``) and
    ``power``; inside a flasher it uses the flasher's. ``boot_timeout`` bounds the wait from
    power-on to the prompt; ``fail_patterns`` end any wait at once (a panic, say). The network is
    set up by ``dhcp`` or, with ``network: static``, from ``ipaddr``/``netmask``/``gatewayip``;
    ``serverip`` (when given) always names the TFTP server.
    """

    #: U-Boot's command prompt, matched as plain text (not a regular expression).
    prompt: str = "=> "
    #: A regular expression matching the autoboot countdown's message; when it appears, ``interrupt`` is sent.
    autoboot_pattern: str = r"Hit any key to stop autoboot|Press .* to stop|autoboot in"
    #: What is sent once to stop the autoboot countdown (a space; some boards want another key).
    interrupt: str = " "
    boot_timeout: float = 60.0
    #: Seconds the board stays off during a power cycle.
    power_off_time: float = 1.0
    fail_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_FAIL_PATTERNS))
    #: How U-Boot gets its address before a TFTP load: ``dhcp`` (with ``autoload`` off), or ``static``
    #: from ``ipaddr``, ``netmask`` and ``gatewayip`` (``ipaddr`` then required).
    network: Literal["dhcp", "static"] = "dhcp"
    ipaddr: str | None = None
    serverip: str | None = None
    netmask: str | None = None
    gatewayip: str | None = None

    _serial: Driver | None = field(default=None, init=False, repr=False)
    _power: Driver | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        given = {"serial", "power"} & set(self.children)
        if given and given != {"serial", "power"}:
            missing = ({"serial", "power"} - given).pop()
            raise ConfigurationError(f"UBoot: missing required child '{missing}'; give both serial and power, or neither inside a flasher")
        if self.network == "static" and not self.ipaddr:
            raise ConfigurationError("UBoot: config field 'ipaddr' is required with network: static")
        if self.boot_timeout <= 0:
            raise ConfigurationError(f"UBoot: config field 'boot_timeout' must be positive, got {self.boot_timeout}")

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.uboot.client.UBootClient"

    def bind(self, serial: Driver, power: Driver) -> None:
        """Use another driver's serial console and power switch (a flasher's)."""
        self._serial, self._power = serial, power

    def parts(self) -> tuple[Driver, Driver]:
        serial = self.children.get("serial") or self._serial
        power = self.children.get("power") or self._power
        if serial is None or power is None:
            raise ConfigurationError("UBoot: has no serial and power; give it children serial and power")
        return serial, power

    @contextlib.asynccontextmanager
    async def console(self, log: Callable[[str], None] | None = None) -> AsyncIterator[UBootConsole]:
        """Open the serial console as a :class:`UBootConsole` for the duration of the block."""
        serial, _ = self.parts()
        # Only what the board prints from now on: an old prompt in the console's history would be taken for a new one.
        async with connect_live(serial) as stream:
            expecter = Expecter(stream, tuple(self.fail_patterns), log=log)
            yield UBootConsole(expecter, self.prompt, self.autoboot_pattern, self.interrupt)

    async def power_cycle(self) -> None:
        """Switch the board off, wait ``power_off_time``, switch it on."""
        _, power = self.parts()
        await call_maybe_async(power.off)
        await anyio.sleep(self.power_off_time)  # the board needs time without power, not a sync
        await call_maybe_async(power.on)

    async def boot_to_prompt(self, console: UBootConsole) -> None:
        """Power-cycle the board and stop autoboot at the prompt, within ``boot_timeout``."""
        console.step("power cycle")
        console.expecter.buffer = ""
        await self.power_cycle()
        await console.interrupt_autoboot(self.boot_timeout)

    async def setup_network_on(self, console: UBootConsole, serverip: str | None = None, tftp_port: int = 69) -> None:
        """Configure the network as this driver's config says (``serverip`` overrides when set)."""
        await console.setup_network(
            self.network, self.ipaddr, serverip or self.serverip, self.netmask, self.gatewayip, tftp_port
        )

    @exportstream
    async def connect(self) -> AsyncIterator[Any]:
        """The board's serial console as a byte stream (what `jumpstarter uboot console` attaches to)."""
        serial, _ = self.parts()
        async with serial.connect() as stream:
            yield stream

    @export
    async def reboot_to_console(self) -> None:
        """Power-cycle the board and stop at the U-Boot prompt."""
        async with self.console() as console:
            await self.boot_to_prompt(console)

    @export
    async def run_command(self, command: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run a command at the U-Boot prompt; its output. A non-zero exit status raises unless ``check`` is false."""
        async with self.console() as console:
            console.step(command)
            _, output = await console.run(command, timeout, check)
            return output

    @export
    async def get_env(self, name: str) -> str | None:
        """An environment variable's value, or ``None`` when it is not set."""
        async with self.console() as console:
            console.step(f"printenv {name}")
            return await console.get_env(name)

    @export
    async def set_env(self, name: str, value: str | None) -> None:
        """Set an environment variable (``None`` deletes it)."""
        async with self.console() as console:
            console.step(f"setenv {name}")
            await console.set_env(name, value)

    @export
    async def setup_network(self, serverip: str | None = None, tftp_port: int = 69) -> None:
        """DHCP or static addresses, as configured; ``serverip``/``tftp_port`` name the TFTP server."""
        async with self.console() as console:
            await self.setup_network_on(console, serverip, tftp_port)
