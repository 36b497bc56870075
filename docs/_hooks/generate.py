"""MkDocs hook: the reference pages, generated from the code at every build (never checked in).

- ``reference/drivers.md``: every bundled driver's fields and methods
  (:func:`jumpstarter_drivers.cli.reference.markdown`, what ``jumpstarter drivers`` prints);
- ``reference/plugin.md``: the pytest plugin's options, ini keys and fixtures, read from the
  plugin module itself;
- ``reference/cli.md``: ``--help`` of every built-in ``jumpstarter`` command;
- in ``interop.md``, the table of Jumpstarter packages its client needs for our drivers
  (from :mod:`jumpstarter_drivers.core.compat`), where the page says ``<!-- jumpstarter-packages -->``.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import click
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.generate")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated pages to the site."""
    from jumpstarter_drivers.cli.reference import describe_all, markdown

    pages = {
        "reference/drivers.md": markdown(describe_all()),
        "reference/plugin.md": plugin_page(),
        "reference/cli.md": cli_page(),
    }
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


PACKAGES_MARKER = "<!-- jumpstarter-packages -->"


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Fill in the generated parts of hand-written pages."""
    if PACKAGES_MARKER in markdown:
        markdown = markdown.replace(PACKAGES_MARKER, packages_table())
    return markdown


def packages_table() -> str:
    """Our client classes, the Jumpstarter client class a report names for each, and its package."""
    from jumpstarter_drivers.core.compat import jumpstarter_name_for

    rows = ["| Our client | Jumpstarter's client | Package |", "| --- | --- | --- |"]
    ours = sorted({_client_of(name) for name in _bundled()})
    for client in ours:
        theirs = jumpstarter_name_for(client)
        if theirs == client:
            continue
        package = theirs.split(".")[0].replace("_", "-")
        rows.append(f"| `{client}` | `{theirs}` | `{package}` |")
    return "\n".join(rows)


def _bundled() -> list[str]:
    from jumpstarter_drivers.cli.reference import bundled_names

    return bundled_names()


def _client_of(name: str) -> str:
    from jumpstarter_drivers.cli.reference import describe

    return describe(name).client


_ROLE_HTML = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):(?=<code>)")


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """Drop the reST roles docstrings carry (``:class:`X``` renders as ``:class:<code>X</code>``)."""
    return _ROLE_HTML.sub("", html)


class _Recorder:
    """Stands in for pytest's parser and option group: records what ``pytest_addoption`` declares."""

    def __init__(self) -> None:
        self.options: list[tuple[tuple[str, ...], dict[str, Any]]] = []
        self.ini: list[tuple[str, str, dict[str, Any]]] = []

    def getgroup(self, *args: Any, **kwargs: Any) -> _Recorder:
        return self

    def addoption(self, *names: str, **kwargs: Any) -> None:
        self.options.append((names, kwargs))

    def addini(self, name: str, help: str, **kwargs: Any) -> None:
        self.ini.append((name, help, kwargs))


def _cell(text: str) -> str:
    from jumpstarter_drivers.cli.drivers import plain

    return " ".join(plain(text).replace("|", "\\|").split())


def plugin_page() -> str:
    """The plugin's command-line options, ini keys and fixtures, from ``jumpstarter_testing.plugin``."""
    from jumpstarter_testing import plugin

    recorder = _Recorder()
    plugin.pytest_addoption(recorder)
    out = [
        "# pytest plugin",
        "",
        "Generated from `jumpstarter_testing.plugin` when the site is built; `pytest --help` (group",
        "`jumpstarter`) and `pytest --fixtures` say the same. Every option has an ini key (in `pytest.ini`,",
        "`pyproject.toml` or `tox.ini`) and an environment variable; the option wins over the variable, the",
        "variable over the ini key.",
        "",
        "## Options",
        "",
        "| Option | Meaning |",
        "| --- | --- |",
    ]
    for names, kwargs in recorder.options:
        metavar = f" {kwargs['metavar']}" if kwargs.get("metavar") else ""
        flags = ", ".join(f"`{name}{metavar}`" for name in names)
        out.append(f"| {flags} | {_cell(kwargs.get('help', ''))} |")
    out += ["", "## Ini keys", "", "| Key | Meaning |", "| --- | --- |"]
    for name, help_text, kwargs in recorder.ini:
        kind = f" ({kwargs['type']})" if kwargs.get("type") else ""
        out.append(f"| `{name}`{kind} | {_cell(help_text)} |")
    out += ["", "## Fixtures", ""]
    for name, scope, doc in _fixtures(plugin):
        out += [f"### `{name}`", "", f"Scope: {scope}.", "", doc, ""]
    return "\n".join(out) + "\n"


def _fixtures(module: Any) -> list[tuple[str, str, str]]:
    """``(name, scope, docstring)`` of the public fixtures a module defines."""
    found = []
    for attribute, value in vars(module).items():
        marker = getattr(value, "_fixture_function_marker", None) or getattr(value, "_pytestfixturefunction", None)
        if marker is None or attribute.startswith("_"):
            continue
        name = getattr(marker, "name", None) or attribute
        scope = marker.scope if isinstance(marker.scope, str) else "dynamic"
        found.append((name, scope, inspect.getdoc(value) or ""))
    if not found:
        log.warning("no fixtures found in %s: has pytest changed how it marks them?", module.__name__)
    return found


def cli_page() -> str:
    """``--help`` of ``jumpstarter`` and each of its built-in commands."""
    from jumpstarter_drivers.cli.main import main

    root = click.Context(main, info_name="jumpstarter")
    formatter = root.make_formatter()
    main.format_usage(root, formatter)
    main.format_help_text(root, formatter)
    main.format_options(root, formatter)
    main.format_epilog(root, formatter)
    out = [
        "# Command line",
        "",
        "Generated from the `jumpstarter` command when the site is built. Besides these commands, every",
        "node of the lab at `--host` is a command named after it (`jumpstarter power on`,",
        "`jumpstarter board serial pipe`); `jumpstarter --help` inside a lab lists them.",
        "",
        "```text",
        formatter.getvalue().rstrip(),
        "```",
    ]
    for name in sorted(main.commands):
        command = main.commands[name]
        ctx = click.Context(command, info_name=f"jumpstarter {name}", parent=root)
        out += ["", f"## jumpstarter {name}", "", "```text", command.get_help(ctx).rstrip(), "```"]
    return "\n".join(out) + "\n"
