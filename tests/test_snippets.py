"""Every Python snippet of the documentation runs as written, against the built-in virtual lab.

A snippet that defines tests (``def test_...`` or ``class Test...``) runs as a test file with
pytest and the plugin, and all its tests must pass; any other snippet runs as a script with
``JUMPSTARTER_HOST`` pointing at a virtual lab served for it, and must exit 0. Add a page by
adding its glob to :data:`SNIPPET_SOURCES`. A snippet that needs more than the virtual lab (a
lab controller, say) is preceded by ``<!-- runs in tests/PATH.py -->``, and that test file,
which must name the page, runs it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from jumpstarter_drivers import JMP_DRIVERS_ALLOW, JUMPSTARTER_HOST

ROOT = Path(__file__).parents[1]

#: Markdown files whose ```python blocks must run: globs relative to the repository root.
SNIPPET_SOURCES = ("README.md", "examples/README.md", "docs/**/*.md")

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
                   re.MULTILINE | re.DOTALL)
RUNS_IN = re.compile(r"<!--\s*runs in (?P<test>\S+)\s*-->\s*\Z")
DEFINES_TESTS = re.compile(r"^(def test_\w*|class Test\w*)", re.MULTILINE)
SCRIPT_TIMEOUT = 120


@dataclass(frozen=True)
class Snippet:
    """One fenced code block: where it is and what it says."""

    path: Path
    line: int
    language: str
    code: str
    #: The test file that runs this snippet instead of this harness (``<!-- runs in PATH -->``).
    runs_in: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets(root: Path = ROOT, sources: tuple[str, ...] = SNIPPET_SOURCES, language: str = "python") -> list[Snippet]:
    """The fenced ``language`` blocks of every file the ``sources`` globs match, in file order.

    >>> [s.code for s in snippets_in_text("x\\n```python\\nprint(1)\\n```\\n", Path("a.md"))]
    ['print(1)\\n']
    """
    found: list[Snippet] = []
    for pattern in sources:
        for path in sorted(root.glob(pattern)):
            found.extend(s for s in snippets_in_text(path.read_text(), path) if s.language == language)
    return found


def snippets_in_text(text: str, path: Path) -> list[Snippet]:
    """Every fenced block of a markdown text (the language is the info string's first word).

    A block indented in a list item loses that indentation:

    >>> [(s.line, s.language, s.code) for s in snippets_in_text("1. run\\n\\n   ```python\\n   x = 1\\n   ```\\n", Path("a.md"))]
    [(3, 'python', 'x = 1\\n')]
    """
    blocks = []
    for match in FENCE.finditer(text):
        indent = match["indent"]
        body = "".join(line.removeprefix(indent) for line in match["body"].splitlines(keepends=True))
        language = (match["info"].split() or [""])[0].lower()
        claim = RUNS_IN.search(text, 0, match.start())
        runs_in = claim["test"] if claim else None
        blocks.append(Snippet(path, text.count("\n", 0, match.start()) + 1, language, body, runs_in))
    return blocks


PYTHON_SNIPPETS = [s for s in snippets() if s.runs_in is None]
ELSEWHERE = [s for s in snippets() if s.runs_in is not None]


def test_the_documentation_has_python_snippets() -> None:
    """The harness finds the snippets (a broken pattern would make every other test vanish)."""
    assert {s.path.name for s in PYTHON_SNIPPETS} >= {"README.md"}
    assert len([s for s in PYTHON_SNIPPETS if s.path == ROOT / "README.md"]) >= 3


@pytest.mark.parametrize("snippet", ELSEWHERE, ids=lambda s: s.id)
def test_a_snippet_run_elsewhere_is_run_by_the_test_it_names(snippet: Snippet) -> None:
    test = ROOT / snippet.runs_in
    assert test.is_file(), f"{snippet.id}: says it runs in {snippet.runs_in}, which does not exist"
    assert snippet.path.name in test.read_text(), f"{snippet.id}: {snippet.runs_in} does not read {snippet.path.name}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No lab settings leak in from the outer run: a snippet sees what a new user's shell has."""
    for name in (JUMPSTARTER_HOST, JMP_DRIVERS_ALLOW, "JUMPSTARTER_EXPORTER", "JUMPSTARTER_LOG_DIR", "JUMPSTARTER_FLASHER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("snippet", PYTHON_SNIPPETS, ids=lambda s: s.id)
def test_python_snippet_runs_as_written(snippet: Snippet, pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    if DEFINES_TESTS.search(snippet.code):
        pytester.makepyfile(test_snippet=snippet.code)
        result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) >= 1 and set(outcomes) <= {"passed", "seconds"}, (
            f"{snippet.id}: its tests must all pass against the virtual lab\n" + result.stdout.str()
        )
        return
    from jumpstarter_testing import Lab
    from jumpstarter_testing.lab import VIRTUAL_LAB

    script = pytester.path / "snippet.py"
    script.write_text(snippet.code)
    with Lab.start_local(VIRTUAL_LAB) as lab:
        clean_env.setenv(JUMPSTARTER_HOST, lab.address)
        out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                             timeout=SCRIPT_TIMEOUT, cwd=pytester.path)
    assert out.returncode == 0, f"{snippet.id}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
