"""Installing into one's own project: `python -m build` makes a wheel and an sdist from a checkout,
and the wheel, installed in a clean virtual environment, runs the example suite there.

Every step is a child process with a timeout, so the test is bounded (about a minute with pip's
cache warm; it needs PyPI, or pip's configured index, for the build backend and dependencies).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from .conftest import ROOT


def run(command: list[str], cwd: Path, timeout: float) -> str:
    """Run ``command`` without this environment's virtualenv or lab settings; its output, or a failure."""
    env = {
        k: v for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith(("JUMPSTARTER_", "JMP_"))
    }
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def checkout_copy(destination: Path) -> Path:
    """The files git tracks (as they are in the work tree), copied to ``destination``: a clean checkout."""
    tracked = run(["git", "ls-files", "-z"], ROOT, 60).split("\0")
    for name in filter(None, tracked):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def test_wheel_installs_in_a_clean_venv_and_runs_the_examples(tmp_path: Path) -> None:
    source = checkout_copy(tmp_path / "checkout")
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)], tmp_path, 600)
    wheels = list(dist.glob("jumpstarter_toolkit-*.whl"))
    sdists = list(dist.glob("jumpstarter_toolkit-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(wheels[0])], tmp_path, 600)

    project = tmp_path / "my-project"
    shutil.copytree(ROOT / "examples", project / "tests")
    where = run([python, "-c", "import jumpstarter_testing; print(jumpstarter_testing.__file__)"], project, 60)
    assert where.startswith(str(env_dir)), f"the toolkit came from {where}, not the clean venv"
    output = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project, 600)
    assert " passed" in output and "failed" not in output, output
    assert (env_dir / "bin" / "jumpstarter").exists(), "the command line is installed too"
