"""Boot strategies: a board's way from off to a usable state, as a small state machine.

The states are ordered (``off`` -> ``uboot`` -> ``shell``); each state after ``off`` has a step
that reaches it from the one before. :meth:`BootStrategy.transition` walks there from the last
state it can confirm the board is in: asking for the state the board is in checks it (U-Boot
answers, the shell answers) and does nothing more. A step is bounded by ``step_timeout``; a
transient failure (a timeout, a lost TFTP packet, a board that booted past U-Boot) powers the
board off and starts again from ``off``, at most ``retries`` more times; a panic (the
``fail_patterns`` of U-Boot and the shell) fails at once, with the console tail. Each step's
duration is logged and returned.

A subclass adds states by extending :attr:`BootStrategy.STATES` and writing ``step_<state>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import anyio

from ..composite.driver import Proxy
from ..core.driver import Driver, export
from ..core.errors import ConfigurationError
from ..flashers.driver import BaseFlasher
from ..shell.driver import Shell
from ..uboot.common import ConsoleError, ConsoleTimeout
from ..uboot.console import call_maybe_async
from ..uboot.driver import UBoot
from .common import TransitionResult

UNKNOWN = "unknown"


def real(driver: Driver) -> Driver:
    """The driver a :class:`Proxy` stands for (or ``driver`` itself)."""
    while isinstance(driver, Proxy):
        driver = driver._bound()
    return driver


@dataclass(kw_only=True)
class BootStrategy(Driver):
    """Brings a board to ``off``, ``uboot`` (its boot loader's prompt) or ``shell`` (Linux, logged in).

    Children: ``flasher`` (its power, serial and U-Boot reach the prompt; its bundle's kernel,
    initramfs and DTB are the Linux booted) and ``shell`` (the :class:`~jumpstarter_drivers.shell.driver.Shell`
    on the board's console, which checks and uses the shell).
    """

    required_children: ClassVar[dict[str, type | tuple[type, ...]]] = {"flasher": Driver, "shell": Driver}
    STATES: ClassVar[tuple[str, ...]] = ("off", "uboot", "shell")

    #: Power cycles after a transient failure (a timeout, a lost packet) before a transition gives up.
    retries: int = 2
    #: Seconds a step (reaching U-Boot, booting Linux and logging in) may take.
    step_timeout: float = 600.0
    #: Seconds the check that the board still is in its state (U-Boot or the shell answers) may take.
    check_timeout: float = 10.0

    _state: str = field(default=UNKNOWN, init=False, repr=False)
    _lock: anyio.Lock = field(default_factory=anyio.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retries < 0:
            raise ConfigurationError(f"{type(self).__name__}: config field 'retries' must be >= 0, got {self.retries}")
        if self.step_timeout <= 0:
            raise ConfigurationError(
                f"{type(self).__name__}: config field 'step_timeout' must be positive, got {self.step_timeout}")

    @classmethod
    def client(cls) -> str:
        return "jumpstarter_drivers.strategy.client.BootStrategyClient"

    # the parts --------------------------------------------------------------------------------

    @property
    def flasher(self) -> BaseFlasher:
        flasher = real(self.children["flasher"])
        if not isinstance(flasher, BaseFlasher):
            raise ConfigurationError(f"{type(self).__name__}: child 'flasher' must be a flasher, got "
                                     f"{type(flasher).__name__}")
        return flasher

    @property
    def shell(self) -> Shell:
        shell = real(self.children["shell"])
        if not isinstance(shell, Shell):
            raise ConfigurationError(f"{type(self).__name__}: child 'shell' must be Shell, got {type(shell).__name__}")
        return shell

    @property
    def uboot(self) -> UBoot:
        return self.flasher.children["uboot"]

    # the state machine ------------------------------------------------------------------------

    @export
    def get_state(self) -> str:
        """The state the last transition left the board in (``unknown`` before the first)."""
        return self._state

    @export
    async def transition(self, state: str) -> TransitionResult:
        """Bring the board to ``state``; doing nothing but a check when it is there already."""
        if state not in self.STATES:
            raise ValueError(f"unknown state {state!r}; the states are: {', '.join(self.STATES)}")
        async with self._lock:
            previous = self._state
            if state == "off":
                await self.step_off()
                return TransitionResult(state, previous)
            start = await self._confirmed(state)
            if start == state:
                self.logger.info("already in state %s", state)
                return TransitionResult(state, previous)
            steps: dict[str, float] = {}
            for attempt in range(1, self.retries + 2):
                try:
                    await self._walk(start, state, steps)
                except ConsoleError as exc:
                    self._state = UNKNOWN
                    if not exc.transient or attempt > self.retries:
                        await self._power_off_quietly()
                        raise
                    self.logger.warning("transition to %s: power-cycling and trying again (%d of %d) after: %s",
                                        state, attempt + 1, self.retries + 1, exc)
                    start = "off"
                    continue
                result = TransitionResult(state, previous, attempt, steps, list(steps))
                self.logger.info("transition: %s", result.summary())
                return result
        raise AssertionError("unreachable")

    async def _confirmed(self, wanted: str) -> str:
        """The furthest state on the way to ``wanted`` the board is confirmed to be in (``off`` at worst)."""
        order = self.STATES.index
        if self._state not in self.STATES or self._state == "off" or order(self._state) > order(wanted):
            return "off"
        try:
            with anyio.fail_after(self.check_timeout + 5):
                await getattr(self, f"check_{self._state}")()
        except (ConsoleError, TimeoutError) as exc:
            self.logger.info("the board is no longer in state %s (%s); starting from off", self._state, exc)
            self._state = UNKNOWN
            return "off"
        return self._state

    async def _walk(self, start: str, state: str, steps: dict[str, float]) -> None:
        """Run the steps after ``start`` up to ``state``, each bounded by ``step_timeout``."""
        for name in self.STATES[self.STATES.index(start) + 1 : self.STATES.index(state) + 1]:
            began = time.monotonic()
            self.logger.info("step: %s", name)
            try:
                with anyio.fail_after(self.step_timeout):
                    await getattr(self, f"step_{name}")()
            except TimeoutError:
                raise ConsoleTimeout(name, f"the step did not finish within {self.step_timeout:g} s") from None
            finally:
                steps[name] = steps.get(name, 0.0) + time.monotonic() - began
            self._state = name
            self.logger.info("reached state %s in %.2f s", name, steps[name])

    async def _power_off_quietly(self) -> None:
        try:
            await self.step_off()
        except Exception as exc:  # noqa: BLE001 - the failed transition's own error matters more; say so
            self.logger.warning("could not power the board off after a failed transition: %s", exc)

    # the steps and checks -----------------------------------------------------------------------

    async def step_off(self) -> None:
        """Switch the board off."""
        await call_maybe_async(self.flasher.children["power"].off)
        self._state = "off"

    async def step_uboot(self) -> None:
        """Power-cycle and stop at U-Boot's prompt."""
        async with self.uboot.console() as console:
            await self.uboot.boot_to_prompt(console)

    async def check_uboot(self) -> None:
        """U-Boot answers a command."""
        async with self.uboot.console() as console:
            await console.sync(self.check_timeout)

    async def step_shell(self) -> None:
        """From U-Boot: load and boot the flasher bundle's Linux, then log in with the shell's settings."""
        steps: dict[str, float] = {}
        async with self.uboot.console() as console:
            await self.flasher.boot_linux(console, steps)
            await self.shell.log_in(self.shell.shell_console(console.expecter))
        self.logger.info("Linux booted: %s", ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))

    async def check_shell(self) -> None:
        """The shell answers a command."""
        async with self.shell.session(self.check_timeout):
            self.logger.debug("the shell answers")

