"""What the boot strategy and its client share: the result of a transition."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TransitionResult:
    """Where a transition ended, where it started, how many power-on attempts it took, the seconds
    each step took and the steps in the order they ran (both empty when the board already was in the state).

    >>> TransitionResult("shell", "off", 1, {"shell": 4.0, "uboot": 2.5}, ["uboot", "shell"]).summary()
    'off -> shell in 1 attempt(s): uboot 2.50 s, shell 4.00 s'
    """

    state: str
    previous: str
    attempts: int = 0
    steps: dict[str, float] = field(default_factory=dict)
    path: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs and reports."""
        if not self.steps:
            return f"already {self.state}"
        timings = ", ".join(f"{name} {self.steps[name]:.2f} s" for name in self.path)
        return f"{self.previous} -> {self.state} in {self.attempts} attempt(s): {timings}"
