"""The U-Boot client: what a test calls to use a board's boot loader."""

from __future__ import annotations

import click

from ..core.client import DriverClient


class UBootClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.uboot.driver.UBoot` driver."""

    def reboot_to_console(self) -> None:
        """Power-cycle the board and stop at the U-Boot prompt."""
        self.call("reboot_to_console")

    def run_command(self, command: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run a command at the prompt and return its output (a failure raises ``DriverError``)."""
        return self.call("run_command", command, timeout, check)

    def get_env(self, name: str) -> str | None:
        """An environment variable's value, or ``None`` when not set."""
        return self.call("get_env", name)

    def set_env(self, name: str, value: str | None) -> None:
        """Set an environment variable (``None`` deletes it)."""
        self.call("set_env", name, value)

    def setup_network(self, serverip: str | None = None, tftp_port: int = 69) -> None:
        """Set up the board's network (DHCP or static, as configured)."""
        self.call("setup_network", serverip, tftp_port)

    def cli(self) -> click.Group:
        """``prompt``, ``console``, ``run`` and ``env`` commands (``jumpstarter flasher uboot run 'printenv'``)."""
        group = click.Group(help="U-Boot on the board: reach its prompt, run commands, read and set its environment.")

        @group.command()
        def prompt() -> None:
            """Power-cycle the board and stop at the U-Boot prompt (for `run` and `env`)."""
            self.reboot_to_console()

        @group.command()
        def console() -> None:
            """Power-cycle the board, stop at the U-Boot prompt and attach this terminal to it; Ctrl-] leaves."""
            from ..cli.families import attach_terminal, terminal_fd

            fd = terminal_fd()  # before the reboot, so a missing terminal costs no power cycle
            self.reboot_to_console()
            with self.stream("connect") as stream:
                attach_terminal(stream, fd)

        @group.command()
        @click.argument("command")
        @click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(min=0))
        def run(command: str, timeout: float) -> None:
            """Run COMMAND at the prompt (the board must be at it: see `prompt`) and print its output."""
            click.echo(self.run_command(command, timeout), nl=False)

        @group.command()
        @click.argument("name")
        @click.argument("value", required=False)
        def env(name: str, value: str | None) -> None:
            """Print the variable NAME, or set it to VALUE."""
            if value is None:
                click.echo(self.get_env(name) or "")
            else:
                self.set_env(name, value)

        return group
