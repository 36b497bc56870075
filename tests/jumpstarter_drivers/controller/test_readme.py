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


def test_readme_shared_lab_runs_as_written(tmp_path: Path) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", PORT))
        except OSError:
            pytest.skip(f"port {PORT}, which the README uses, is taken on this machine")
    (lab_yaml, _), (controller, _), (exporter, _), (client, _), (leases, _) = [
        (body, kind) for kind, body in section_blocks()
    ]
    (tmp_path / "lab.yaml").write_text(lab_yaml)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def start(line: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def run(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-ec", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    servers: list[subprocess.Popen] = []
    try:
        servers.append(start(controller.strip()))
        assert first_line(servers[0]).strip() == f"127.0.0.1:{PORT}"
        token_line, serve_line = exporter.strip().splitlines()
        created = run(token_line)
        assert created.returncode == 0, created.stderr
        servers.append(start(serve_line))
        first_line(servers[1])
        shell = run(client)
        assert shell.returncode == 0, shell.stderr
        manual = run(leases)
        assert manual.returncode == 0, manual.stderr
        assert "board-1  online  leased by me" in manual.stdout
    finally:
        for server in reversed(servers):
            stop_process(server)
            server.stdout.close()


def test_the_docs_page_shows_only_commands_the_readme_test_runs() -> None:
    docs = (README.parent / "docs" / "shared-lab.md").read_text()
    from .test_groups import roles_example

    tested = {body for _, body in section_blocks()} | {roles_example()}
    shown = re.findall(r"```\w+\n(.*?)```", docs, flags=re.DOTALL)
    assert shown
    assert [body for body in shown if body not in tested] == []
