"""Boot strategies: bring a board from off to U-Boot or a logged-in Linux shell by name."""

from .client import BootStrategyClient
from .common import TransitionResult
from .driver import BootStrategy

__all__ = ["BootStrategy", "BootStrategyClient", "TransitionResult"]
