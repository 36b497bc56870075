"""The documentation site: it builds with warnings as errors, its reference pages are generated from
the code, and its pages render in a real browser (headless Chromium)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import yaml

from jumpstarter_drivers.cli.reference import describe_all
from jumpstarter_drivers.core.config import BUILTIN_DRIVERS

from .conftest import ROOT

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium (Debian package chromium) is not installed")


def nav_pages() -> list[str]:
    """Every page the site's navigation lists (docs-relative .md paths)."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages: list[str] = []

    def walk(items: list) -> None:
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                walk(value)
            else:
                pages.append(value)

    walk(config["nav"])
    return pages


def built(site: Path, page: str) -> Path:
    """The HTML file of a docs page (``lab.md`` -> ``lab/index.html``)."""
    stem = page.removesuffix(".md")
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


def test_every_page_is_built(site: Path) -> None:
    for page in nav_pages():
        assert built(site, page).is_file(), page


def test_driver_reference_is_generated_from_the_code(site: Path) -> None:
    html = built(site, "reference/drivers.md").read_text()
    for doc in describe_all():
        assert f'id="{doc.name.lower()}"' in html, doc.name
        for field in doc.fields:
            assert f"<code>{field.name}</code>" in html, (doc.name, field.name)
    assert set(BUILTIN_DRIVERS) == {doc.name for doc in describe_all()}
    assert not (ROOT / "docs" / "reference" / "drivers.md").exists(), "generated at build time, never checked in"


def test_plugin_reference_lists_options_and_fixtures(site: Path) -> None:
    html = built(site, "reference/plugin.md").read_text()
    for option in ("--jumpstarter-host", "--jumpstarter-exporter", "--jumpstarter-drivers-allow"):
        assert option in html
    for fixture in ("client", "flasher", "session"):
        assert f'<h3 id="{fixture}"><code>{fixture}</code>' in html, fixture


def test_interop_page_names_the_jumpstarter_packages(site: Path) -> None:
    html = built(site, "interop.md").read_text()
    for package in ("jumpstarter-driver-power", "jumpstarter-driver-pyserial", "jumpstarter-driver-flashers"):
        assert f"<code>{package}</code>" in html
    assert "jumpstarter-packages" not in html, "the marker was replaced by the generated table"


def test_cli_reference_has_every_builtin_command(site: Path) -> None:
    from jumpstarter_drivers.cli.main import main

    html = built(site, "reference/cli.md").read_text()
    for name in main.commands:
        assert f'<h2 id="jumpstarter-{name}">jumpstarter {name}<' in html, name


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile, no network chatter of its own."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, timeout=120, check=False)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the (filtered) scanline bytes of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, idat, width, height = 8, b"", 0, 0
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    return width, height, zlib.decompress(idat)


@needs_chromium
@pytest.mark.parametrize("page", ["index.md", "getting-started.md", "reference/drivers.md", "troubleshooting.md"])
def test_pages_render_in_chromium(site: Path, tmp_path: Path, page: str) -> None:
    url = built(site, page).as_uri()
    dom = chromium("--dump-dom", url, profile=tmp_path / "dom-profile")
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")
    html = dom.stdout.decode()
    title, heading = {
        "index.md": ("jumpstarter-toolkit", "jumpstarter-toolkit"),
        "getting-started.md": ("Getting started", "Getting started"),
        "reference/drivers.md": ("Drivers", "Driver reference"),
        "troubleshooting.md": ("Troubleshooting", "Troubleshooting"),
    }[page]
    assert f"<title>{title}" in html
    assert f">{heading}<" in html.split("<h1", 1)[1].split("</h1>", 1)[0] + "<"
    shot = tmp_path / "page.png"
    taken = chromium(f"--screenshot={shot}", "--window-size=1024,768", url, profile=tmp_path / "shot-profile")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr.decode(errors="replace")
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1024, 768)
    assert len(set(pixels)) > 32, "the screenshot is blank: the page did not render"


def test_no_rest_roles_leak_into_pages(site: Path) -> None:
    for page in nav_pages():
        html = built(site, page).read_text()
        assert ":class:" not in html and ":func:" not in html and ":meth:" not in html, page
