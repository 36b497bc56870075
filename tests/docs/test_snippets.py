"""Every code snippet of the documentation runs as written, against the built-in virtual lab.

Python blocks that define ``test_`` functions run under pytest (with this package's plugin, so
``client`` and ``flasher`` come from the virtual lab); other Python blocks run as scripts; YAML
blocks with an ``export:`` section are exporter files and must build a lab.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jumpstarter_drivers.core import config

from .conftest import ROOT

FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def snippets(language: str) -> list[pytest.param]:
    """The ``language`` blocks of docs/**/*.md, each with an id naming its file and line."""
    found = []
    for path in sorted((ROOT / "docs").rglob("*.md")):
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                found.append(pytest.param(match.group(2), id=f"{path.relative_to(ROOT)}:{line}"))
    return found


def clean_env() -> dict[str, str]:
    """This environment without a lab address, so snippets use the built-in virtual lab."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("JUMPSTARTER_", "JMP_"))}


@pytest.mark.parametrize("code", snippets("python"))
def test_python_snippet_runs(code: str, tmp_path: Path) -> None:
    if re.search(r"^def test_", code, re.MULTILINE):
        (tmp_path / "test_snippet.py").write_text(code)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                   "--rootdir", str(tmp_path), str(tmp_path / "test_snippet.py")]
    else:
        command = [sys.executable, "-c", code]
    result = subprocess.run(
        command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, f"snippet failed:\n{code}\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("text", [p for p in snippets("yaml") if "export:" in p.values[0]])
def test_exporter_snippet_builds_a_lab(text: str) -> None:
    lab = config.loads(text, source="docs snippet")
    with lab.session() as session:
        assert session.root_device.children
