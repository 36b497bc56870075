"""``python -m jumpstarter_drivers.cli``: the ``jumpstarter`` command."""

from .main import main

main(prog_name="jumpstarter")
