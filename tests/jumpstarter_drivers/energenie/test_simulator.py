"""The EG-PMS2-LAN simulator behaves as the strip does towards its web clients."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from jumpstarter_drivers.energenie import EnerGenie
from jumpstarter_drivers.energenie.common import is_login_page, socket_states


def test_wrong_password_answers_the_login_page_with_200(simulator, browser) -> None:
    sim = simulator(password="s3cret")
    status, page = browser(sim).request("POST", "/login.html", {"pw": "1"})
    assert status == 200
    assert re.search(r"<title>[^<]*EnerGenie Web:", page)
    assert is_login_page(page)
    assert sim.session_holder is None


def test_control_page_has_sockstates_and_a_log_out_link(simulator, browser) -> None:
    sim = simulator(states=(True, False, True, False))
    other = browser(sim)
    assert other.login()
    status, page = other.request("GET", "/energenie.html")
    assert status == 200
    assert "var sockstates = [1,0,1,0];" in page
    assert re.search(r'<a href="/login.html">Log Out</a>', page)


def test_one_session_bound_to_one_ip(simulator, browser) -> None:
    sim = simulator()
    first, second = browser(sim, "127.0.0.2"), browser(sim, "127.0.0.3")
    assert first.login()
    assert second.login() is False, "a second IP is locked out"
    assert second.states() is None
    _, page = second.request("POST", "/", {"cte1": "1"})
    assert is_login_page(page) and sim.states[0] is False
    first.logout()
    assert sim.session_holder is None
    assert second.login()
    assert sim.session_holder == "127.0.0.3"


def test_idle_session_times_out(simulator, browser) -> None:
    now = [1000.0]
    sim = simulator(session_timeout=300, clock=lambda: now[0])
    first, second = browser(sim, "127.0.0.2"), browser(sim, "127.0.0.3")
    assert first.login()
    now[0] += 200
    assert first.states() is not None, "using the session keeps it alive"
    now[0] += 200
    assert second.login() is False
    now[0] += 301
    assert second.login()


def test_switch_fields_empty_means_unchanged(simulator, browser) -> None:
    sim = simulator(states=(True, False, True, False))
    other = browser(sim)
    assert other.login()
    _, page = other.request("POST", "/", {"cte1": "", "cte2": "1", "cte3": "0", "cte4": ""})
    assert socket_states(page) == [True, True, False, False]
    assert sim.states == [True, True, False, False]


def test_unknown_page_is_404(simulator, browser) -> None:
    assert browser(simulator()).request("GET", "/setup.html")[0] == 404


def test_overlapping_requests_are_recorded_and_answered_in_turn(simulator, browser) -> None:
    """The overlap counter the serialisation tests rely on does see overlap."""
    sim = simulator(delay=0.5)
    start = threading.Barrier(2)
    statuses: list[int] = []

    def fetch() -> None:
        start.wait(5)
        statuses.append(browser(sim).request("GET", "/energenie.html")[0])

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert statuses == [200, 200]
    assert sim.max_concurrent == 2
    assert len(sim.exchanges) == 2


def test_bad_states_are_refused() -> None:
    from jumpstarter_drivers.energenie.simulator import EnerGenieSimulator

    with pytest.raises(ValueError, match="states needs 4 values"):
        EnerGenieSimulator(states=(True,))


def read_until(stream, pattern: str, timeout: float) -> re.Match:
    """Lines of ``stream`` until one matches ``pattern`` (fails after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    seen = []
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got: {''.join(seen)}")


def test_standalone_simulator_serves_until_ctrl_c(lock_dir: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "jumpstarter_drivers.energenie.simulator", "--port", "0", "--password", "pw"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        url = read_until(process.stderr, r"listening on http://(127\.0\.0\.1:\d+)", 30)
        driver = EnerGenie(host=url.group(1), password="pw", slot=4, verify=True, logout=True, lock_dir=lock_dir)
        driver.on()
        assert driver.state() is True
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
        assert "simulator stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()


def test_standalone_simulator_reports_a_busy_port(simulator) -> None:
    sim = simulator()
    result = subprocess.run(
        [sys.executable, "-m", "jumpstarter_drivers.energenie.simulator", "--port", str(sim.port)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{sim.port}" in result.stderr
