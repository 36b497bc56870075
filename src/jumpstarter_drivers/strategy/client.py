"""The boot strategy client: bring the board to a state by name.

>>> client.board.strategy.transition("shell")   # doctest: +SKIP
TransitionResult(state='shell', previous='unknown', attempts=1, steps={'uboot': 2.1, 'shell': 3.4})
"""

from __future__ import annotations

from ..core.client import DriverClient
from .common import TransitionResult


class BootStrategyClient(DriverClient):
    """Client of a :class:`~jumpstarter_drivers.strategy.driver.BootStrategy`."""

    def transition(self, state: str) -> TransitionResult:
        """Bring the board to ``state`` (``off``, ``uboot``, ``shell``); a no-op but a check when it is there."""
        return self.call_as(TransitionResult, "transition", state)

    def get_state(self) -> str:
        """The state the last transition left the board in (``unknown`` before the first)."""
        return self.call("get_state")
