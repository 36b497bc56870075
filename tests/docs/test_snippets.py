"""Every exporter file the documentation shows builds a lab (its Python snippets are run by
tests/test_snippets.py, whose block finder this reuses)."""

from __future__ import annotations

import pytest

from jumpstarter_drivers.core import config

from ..test_snippets import snippets

EXPORTER_SNIPPETS = [s for s in snippets(sources=("docs/**/*.md",), language="yaml") if "export:" in s.code]


def test_the_documentation_has_exporter_snippets() -> None:
    assert any(s.path.name == "lab.md" for s in EXPORTER_SNIPPETS)


@pytest.mark.parametrize("snippet", EXPORTER_SNIPPETS, ids=lambda s: s.id)
def test_exporter_snippet_builds_a_lab(snippet) -> None:
    lab = config.loads(snippet.code, source=snippet.id)
    with lab.session() as session:
        assert session.root_device.children
