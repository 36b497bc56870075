"""The README's shared-lab section runs as written: three terminals, then the lease commands."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jumpstarter_drivers.core.processes import stop_process

README = Path(__file__).parents[3] / "README.md"
PORT = 8082  # the README's port


def section_blocks() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text.split("## A shared lab\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.DOTALL)


def first_line(process: subprocess.Popen, timeout: float = 60) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"{process.args} printed nothing within {timeout} s"
    return process.stdout.readline()


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ThreeTerminals:
    """The README's shared lab in ``directory``: start the controller and exporter lines, run the others."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.servers: list[subprocess.Popen] = []

    def start(self, line: str) -> str:
        """Start a server command line; its first line of output."""
        process = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.servers.append(process)
        return first_line(process)

    def run(self, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-ec", script], cwd=self.directory, env=self.env, capture_output=True, text=True, timeout=120,
            check=False,
        )

    def close(self) -> None:
        for server in reversed(self.servers):
            stop_process(server)
            server.stdout.close()


@pytest.fixture
def terminals(tmp_path: Path) -> ThreeTerminals:
    if not _free(PORT):
        pytest.skip(f"port {PORT}, which the README uses, is taken on this machine")
    lab = ThreeTerminals(tmp_path)
    yield lab
    lab.close()


def test_readme_shared_lab_runs_as_written(terminals: ThreeTerminals) -> None:
    (lab_yaml, _), (controller, _), (exporter, _), (client, _), (leases, _) = [
        (body, kind) for kind, body in section_blocks()
    ]
    (terminals.directory / "lab.yaml").write_text(lab_yaml)
    assert terminals.start(controller.strip()).strip() == f"127.0.0.1:{PORT}"
    token_line, serve_line = exporter.strip().splitlines()
    created = terminals.run(token_line)
    assert created.returncode == 0, created.stderr
    terminals.start(serve_line)
    shell = terminals.run(client)
    assert shell.returncode == 0, shell.stderr
    manual = terminals.run(leases)
    assert manual.returncode == 0, manual.stderr
    assert "board-1  online  leased by me" in manual.stdout


def direct_example() -> str:
    """The docs page's exporter line with a direct port."""
    docs = (README.parent / "docs" / "shared-lab.md").read_text()
    (line,) = [body for body in re.findall(r"```sh\n(.*?)```", docs, flags=re.DOTALL) if "--direct" in body]
    return line


def test_the_direct_port_example_runs_as_written(terminals: ThreeTerminals) -> None:
    """The docs' exporter line with --direct, in the README's lab: the leased client moves to the port."""
    port = int(re.search(r"--direct 127\.0\.0\.1:(\d+)", direct_example())[1])
    if not _free(port):
        pytest.skip(f"port {port}, which the docs use, is taken on this machine")
    lab_yaml, controller, exporter, client, _ = [body for _, body in section_blocks()]
    (terminals.directory / "lab.yaml").write_text(lab_yaml)
    terminals.start(controller.strip())
    token_line, _ = exporter.strip().splitlines()
    assert terminals.run(token_line).returncode == 0
    terminals.start(direct_example().strip())
    assert terminals.run(client).returncode == 0
    where = (
        'python -c "import os; from jumpstarter_drivers.core.access import connect; '
        "c = connect(os.environ['JUMPSTARTER_HOST']); c.power.on(); print(c.connection.address)\""
    )
    shell = terminals.run(client.replace("-- jumpstarter power on", f"-- {where}"))
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.splitlines()[-1].startswith(f"127.0.0.1:{port} (direct"), shell.stdout


def test_the_docs_page_shows_only_commands_the_readme_test_runs() -> None:
    docs = (README.parent / "docs" / "shared-lab.md").read_text()
    from .test_groups import roles_example

    tested = {body for _, body in section_blocks()} | {roles_example(), direct_example()}
    shown = re.findall(r"```\w+\n(.*?)```", docs, flags=re.DOTALL)
    assert shown
    assert [body for body in shown if body not in tested] == []
