"""The ``jumpstarter`` command: serve a lab from YAML, run commands inside it, drive it by hand.

``jumpstarter serve``, ``jumpstarter shell`` and ``jumpstarter report`` are built in; the other
commands (``jumpstarter power on``, ...) are generated from the clients of the lab's driver tree
(see :mod:`jumpstarter_drivers.cli.drivers`).
"""
