"""Linux on the board: boot it once, then run commands and move a file over its console.

``board_state`` asks the lab's boot strategy for a logged-in shell; tests marked with the same
state share the booted board (the strategy checks it instead of booting again).
"""

import pytest

pytestmark = pytest.mark.jumpstarter_state("shell")


def test_linux_runs_commands(board_state, client):
    """Commands return their exit status and output; ``run_check`` raises on a failure."""
    print(board_state.summary())
    assert client.shell.run_check("uname -s").strip() == "Linux"
    assert client.shell.run("false").status == 1


def test_file_round_trip_over_the_console(board_state, client):
    """A file put on the board reads back the same (base64 over the console, checked by SHA-256)."""
    data = bytes(range(256)) * 8
    client.shell.put(data, "/tmp/example.bin")
    assert client.shell.get("/tmp/example.bin") == data
