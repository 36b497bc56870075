"""The EG-PMS2-LAN web protocol as both sides see it: paths, form fields, page parsing.

The driver parses the strip's replies with these helpers; the simulator builds replies that
they parse, so both agree on one reading of the device.

>>> socket_states('<script>var sockstates = [1,0,0,1];</script>')
[True, False, False, True]
>>> is_login_page('<html><head><title>EnerGenie Web: login</title></head></html>')
True
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..core.errors import ConfigurationError, DriverError

#: Sockets on one strip; slots are numbered 1..SOCKETS.
SOCKETS = 4
#: The strip's web UI port.
DEFAULT_PORT = 80

LOGIN_PATH = "/login.html"  # POST pw=... logs in; GET logs out
SWITCH_PATH = "/"  # POST cte<N>=1|0 switches socket N
STATE_PATH = "/energenie.html"  # GET: the control page with sockstates
PASSWORD_FIELD = "pw"
LOGIN_TITLE_MARK = "EnerGenie Web:"

_SOCKSTATES = re.compile(r"var\s+sockstates\s*=\s*\[([^\]]*)\]")
_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class StripUnreachable(DriverError, ConnectionError):
    """The power strip did not accept or answer a connection."""


def switch_field(slot: int) -> str:
    """The form field that switches socket ``slot``.

    >>> switch_field(3)
    'cte3'
    """
    return f"cte{slot}"


def socket_states(page: str) -> list[bool] | None:
    """The sockets' states (``True`` = on) from a page's ``sockstates`` array, or ``None``."""
    match = _SOCKSTATES.search(page)
    if match is None:
        return None
    values = [v.strip() for v in match.group(1).split(",")]
    if len(values) != SOCKETS or any(v not in ("0", "1") for v in values):
        return None
    return [v == "1" for v in values]


def is_login_page(page: str) -> bool:
    """Whether ``page`` is the strip's login page (what it answers a refused or missing login)."""
    title = _TITLE.search(page)
    return title is not None and LOGIN_TITLE_MARK in title.group(1) and _SOCKSTATES.search(page) is None


def parse_host(text: str, owner: str = "EnerGenie") -> tuple[str, int]:
    """Split a ``host`` or ``host:port`` setting (IPv6 in brackets) into host and port.

    >>> parse_host("192.168.0.10")
    ('192.168.0.10', 80)
    >>> parse_host("[::1]:8080")
    ('::1', 8080)
    >>> parse_host("http://strip")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jumpstarter_drivers.core.errors.ConfigurationError: EnerGenie: config field 'host' is 'http://strip'; give ...
    """
    problem = (
        f"{owner}: config field 'host' is {text!r}; give a host name or address, optionally with :port "
        "(e.g. 192.168.0.10 or 192.168.0.10:8080), without a scheme or path"
    )
    if not text.strip() or "/" in text or "@" in text:
        raise ConfigurationError(problem)
    bare = text.strip()
    if bare.count(":") > 1 and not bare.startswith("["):
        bare = f"[{bare}]"  # a bare IPv6 address without a port
    try:
        parts = urlsplit(f"//{bare}")
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigurationError(problem) from None
    if not host or port == 0:
        raise ConfigurationError(problem)
    return host, DEFAULT_PORT if port is None else port


def base_url(host: str, port: int) -> str:
    """``http://host:port`` with an IPv6 address in brackets.

    >>> base_url("::1", 8080)
    'http://[::1]:8080'
    """
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
