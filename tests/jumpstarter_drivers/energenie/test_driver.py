"""The EnerGenie driver through a real session: a strict HTTP mock and the EG-PMS2-LAN simulator."""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer

from jumpstarter_drivers.core import serve
from jumpstarter_drivers.core.errors import (
    ConfigurationError,
    DriverError,
    DriverMethodNotImplemented,
    DriverTimeout,
)
from jumpstarter_drivers.energenie import EnerGenie, EnerGenieClient, StripUnreachable
from jumpstarter_drivers.energenie.simulator import EnerGenieSimulator

CONTROL_PAGE = "<html><head><title>EnerGenie</title><script>var sockstates = [{}];</script></head></html>"


def pairs(sim: EnerGenieSimulator) -> list[tuple[str, str, str]]:
    """The simulator's exchanges as (method, path, form) for comparison."""
    return [(e.method, e.path, "&".join(f"{k}={v}" for k, v in e.form.items())) for e in sim.exchanges]


# the minimal contract: a strict mock that knows only login and switch -------------------------


def test_default_config_sends_only_login_and_switch(httpserver: HTTPServer, lock_dir: str) -> None:
    for body in ("cte1=1", "cte1=0"):
        httpserver.expect_ordered_request("/login.html", method="POST", data="pw=1").respond_with_data("")
        httpserver.expect_ordered_request("/", method="POST", data=body).respond_with_data("")
    driver = EnerGenie(host=f"127.0.0.1:{httpserver.port}", lock_dir=lock_dir)
    with serve(driver) as client:
        assert isinstance(client, EnerGenieClient)
        client.on()
        client.off()
    httpserver.check_assertions()
    assert len(httpserver.log) == 4
    assert all(r.headers["Content-Type"] == "application/x-www-form-urlencoded" for r, _ in httpserver.log)


def test_strict_mock_fails_on_traffic_it_does_not_expect(httpserver: HTTPServer, lock_dir: str) -> None:
    """The mock really is strict: a logging-out driver trips it (so the test above can fail)."""
    httpserver.expect_ordered_request("/login.html", method="POST", data="pw=1").respond_with_data("")
    httpserver.expect_ordered_request("/", method="POST", data="cte1=1").respond_with_data("")
    with serve(EnerGenie(host=f"127.0.0.1:{httpserver.port}", lock_dir=lock_dir, logout=True)) as client:
        with pytest.raises(DriverError, match=r"GET /login.html failed with HTTP 500.*may stay locked to this host"):
            client.on()
    with pytest.raises(AssertionError):
        httpserver.check_assertions()


def test_a_failed_logout_does_not_hide_the_first_failure(httpserver: HTTPServer, lock_dir: str) -> None:
    httpserver.expect_ordered_request("/login.html", method="POST").respond_with_data("")
    unswitched = CONTROL_PAGE.format("0,0,0,0")
    httpserver.expect_ordered_request("/", method="POST", data="cte2=1").respond_with_data(unswitched)
    httpserver.expect_ordered_request("/login.html", method="GET").respond_with_data("", status=500)
    driver = EnerGenie(host=f"127.0.0.1:{httpserver.port}", slot=2, verify=True, logout=True, lock_dir=lock_dir)
    with serve(driver) as client:
        with pytest.raises(DriverError, match="asked to switch on, but the strip reports the socket off"):
            client.on()
    httpserver.check_assertions()


def test_losing_the_session_mid_operation_is_an_error(httpserver: HTTPServer, lock_dir: str) -> None:
    login_page = "<html><head><title>EnerGenie Web: login</title></head><body>pw</body></html>"
    httpserver.expect_ordered_request("/login.html", method="POST").respond_with_data("")
    httpserver.expect_ordered_request("/", method="POST").respond_with_data(login_page)
    with serve(EnerGenie(host=f"127.0.0.1:{httpserver.port}", lock_dir=lock_dir)) as client:
        with pytest.raises(DriverError, match="POST / answered the login page: the web session ended"):
            client.off()
    httpserver.check_assertions()


def test_http_error_status_is_an_error(httpserver: HTTPServer, lock_dir: str) -> None:
    httpserver.expect_ordered_request("/login.html", method="POST").respond_with_data("")
    httpserver.expect_ordered_request("/", method="POST").respond_with_data("busy", status=503)
    with serve(EnerGenie(host=f"127.0.0.1:{httpserver.port}", lock_dir=lock_dir)) as client:
        with pytest.raises(DriverError, match=r"POST / failed with HTTP 503"):
            client.on()
    httpserver.check_assertions()


def test_verify_reads_state_back_when_the_switch_reply_has_none(httpserver: HTTPServer, lock_dir: str) -> None:
    httpserver.expect_ordered_request("/login.html", method="POST", data="pw=secret").respond_with_data("")
    httpserver.expect_ordered_request("/", method="POST", data="cte4=1").respond_with_data("")
    httpserver.expect_ordered_request("/energenie.html", method="GET").respond_with_data(CONTROL_PAGE.format("0,0,0,1"))
    driver = EnerGenie(host=f"127.0.0.1:{httpserver.port}", password="secret", slot=4, verify=True, lock_dir=lock_dir)
    with serve(driver) as client:
        client.on()
    httpserver.check_assertions()


# against the simulator -----------------------------------------------------------------------


def test_on_off_and_state(simulator, lock_dir: str) -> None:
    sim = simulator()
    with serve(EnerGenie(host=sim.address, slot=3, lock_dir=lock_dir)) as client:
        assert client.state() is False
        client.on()
        assert sim.states == [False, False, True, False]
        assert client.state() is True
        client.off()
        assert sim.states == [False, False, False, False]
        assert client.state() is False
    assert pairs(sim)[:2] == [("POST", "/login.html", "pw=1"), ("GET", "/energenie.html", "")]
    assert ("POST", "/", "cte3=1") in pairs(sim)


def test_without_logout_the_session_stays_bound_to_this_host(simulator, browser, lock_dir: str) -> None:
    sim = simulator()
    with serve(EnerGenie(host=sim.address, lock_dir=lock_dir)) as client:
        client.on()
    assert sim.session_holder == "127.0.0.1"
    assert browser(sim).login() is False


def test_logout_frees_the_session_for_others(simulator, browser, lock_dir: str) -> None:
    sim = simulator()
    with serve(EnerGenie(host=sim.address, logout=True, lock_dir=lock_dir)) as client:
        client.on()
        assert sim.session_holder is None
        assert client.state() is True
        assert sim.session_holder is None
    assert pairs(sim)[-1] == ("GET", "/login.html", "")
    other = browser(sim)
    assert other.login() is True
    assert other.states() == [True, False, False, False]


def test_a_session_held_by_another_ip_is_reported(simulator, browser, lock_dir: str) -> None:
    sim = simulator()
    assert browser(sim).login() is True
    with serve(EnerGenie(host=sim.address, lock_dir=lock_dir)) as client:
        with pytest.raises(DriverError, match="another client holds the strip's only web session"):
            client.on()
    assert sim.states == [False] * 4


def test_verify_passes_from_the_switch_reply(simulator, lock_dir: str) -> None:
    sim = simulator()
    with serve(EnerGenie(host=sim.address, slot=2, verify=True, lock_dir=lock_dir)) as client:
        client.on()
        client.off()
    assert [p for p in pairs(sim) if p[1] != "/login.html"] == [("POST", "/", "cte2=1"), ("POST", "/", "cte2=0")]


def test_verify_fails_when_the_socket_did_not_switch(simulator, lock_dir: str) -> None:
    sim = simulator(ignore_switch=True)
    with serve(EnerGenie(host=sim.address, slot=2, verify=True, logout=True, lock_dir=lock_dir)) as client:
        with pytest.raises(DriverError, match=r"asked to switch on, but the strip reports the socket off"):
            client.on()
    assert pairs(sim)[-1] == ("GET", "/login.html", ""), "logged out after the failure too"
    assert sim.session_holder is None


def test_wrong_password_is_refused_and_not_retried(simulator, lock_dir: str) -> None:
    sim = simulator(password="s3cret")
    with serve(EnerGenie(host=sim.address, password="wrong", retries=3, lock_dir=lock_dir)) as client:
        with pytest.raises(DriverError, match="the password was refused"):
            client.on()
    assert pairs(sim) == [("POST", "/login.html", "pw=wrong")]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"slot": 0}, "'slot' is 0; the strip has sockets 1..4"),
        ({"slot": 5}, "'slot' is 5; the strip has sockets 1..4"),
        ({"retries": -1}, "'retries' is -1"),
        ({"retries": 11}, "'retries' is 11"),
        ({"timeout": 0}, "'timeout' is 0"),
        ({"host": "http://10.0.0.9"}, "without a scheme or path"),
        ({"host": "strip:99999"}, "'host' is 'strip:99999'"),
        ({"slot": "one"}, "'slot' is 'one'"),
        ({"slot": 2.0}, "'slot' expects int | str, got 2.0"),
    ],
)
def test_bad_config_fails_at_construction(config: dict, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        EnerGenie(**({"host": "192.0.2.7"} | config))


def test_slot_may_be_a_digit_string_as_in_jumpstarter_exporter_files() -> None:
    assert EnerGenie(host="192.0.2.7", slot="3").slot == 3


def test_host_may_carry_a_port() -> None:
    assert EnerGenie(host="192.0.2.7:8080").lock_path.name == "192.0.2.7_8080.lock"
    assert EnerGenie(host="192.0.2.7").lock_path.name == "192.0.2.7_80.lock"


def test_ipv6_host_with_port(simulator, lock_dir: str) -> None:
    try:
        sim = simulator(host="::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with serve(EnerGenie(host=sim.address, slot=4, verify=True, lock_dir=lock_dir)) as client:
        client.on()
        assert client.state() is True
    assert sim.address.startswith("[::1]:")
    assert sim.session_holder == "::1"


def test_dead_host_fails_fast_with_a_clear_error(closed_port: int, lock_dir: str) -> None:
    with serve(EnerGenie(host=f"127.0.0.1:{closed_port}", lock_dir=lock_dir)) as client:
        refused = rf"cannot reach the strip at http://127.0.0.1:{closed_port} .*\(3 attempts\): .*Connection refused"
        with pytest.raises(DriverError, match=refused):
            client.on()
    with pytest.raises(StripUnreachable) as raised:
        EnerGenie(host=f"127.0.0.1:{closed_port}", retries=0, lock_dir=lock_dir).off()
    assert isinstance(raised.value, ConnectionError)


def test_a_silent_strip_times_out(simulator, lock_dir: str) -> None:
    sim = simulator(delay=30)
    with serve(EnerGenie(host=sim.address, timeout=0.2, retries=1, lock_dir=lock_dir)) as client:
        with pytest.raises(DriverTimeout, match=r"POST /login.html got no answer within timeout=0.2 s \(2 attempts\)"):
            client.on()


def test_dropped_connections_are_retried(simulator, lock_dir: str) -> None:
    sim = simulator(drop_connections=2)
    with serve(EnerGenie(host=sim.address, retries=2, lock_dir=lock_dir)) as client:
        client.on()
    assert sim.dropped == 2
    assert sim.states[0] is True


def test_retries_are_bounded(simulator, lock_dir: str) -> None:
    sim = simulator(drop_connections=3)
    with serve(EnerGenie(host=sim.address, retries=2, lock_dir=lock_dir)) as client:
        with pytest.raises(DriverError, match=r"\(3 attempts\): Remote end closed connection without response"):
            client.on()
    assert sim.dropped == 3
    assert sim.exchanges == []


def test_read_is_not_implemented(simulator, lock_dir: str) -> None:
    sim = simulator()
    with serve(EnerGenie(host=sim.address, lock_dir=lock_dir)) as client:
        with pytest.raises(DriverMethodNotImplemented, match="cannot measure voltage or current"):
            list(client.read())
    assert sim.exchanges == []


def test_the_read_error_names_a_command_the_cli_has(simulator, lock_dir: str) -> None:
    """The error for read() points at state(); ``jumpstarter power state`` is that command."""
    from click.testing import CliRunner
    from jumpstarter_drivers.cli.main import main
    from jumpstarter_drivers.composite import Composite
    from jumpstarter_drivers.core.session import Session

    sim = simulator()
    root = Composite(children={"power": EnerGenie(host=sim.address, slot=2, lock_dir=lock_dir)})
    with Session(root_device=root) as session, session.serve_unix() as path:
        def jumpstarter(*args: str):
            return CliRunner().invoke(main, ["--host", str(path), "power", *args])

        result = jumpstarter("read")
        assert result.exit_code != 0
        assert "use `state` (state() from Python)" in " ".join(result.output.split()), result.output
        result = jumpstarter("state")
        assert (result.exit_code, result.output) == (0, "off\n"), result.output
        assert jumpstarter("on").exit_code == 0
        assert jumpstarter("state").output == "on\n"
        assert "Whether the slot's socket is on" in jumpstarter("--help").output


# serialisation -------------------------------------------------------------------------------


def assert_operations_never_interleave(sim: EnerGenieSimulator, operations: int) -> None:
    assert sim.max_concurrent == 1
    paths = [e.path for e in sim.exchanges]
    assert paths == ["/login.html", "/"] * operations, paths


def test_threads_take_turns(simulator, lock_dir: str) -> None:
    sim = simulator(delay=0.05)
    with serve(EnerGenie(host=sim.address, lock_dir=lock_dir)) as client:
        start = threading.Barrier(4)
        errors: list[BaseException] = []

        def switch(on: bool) -> None:
            start.wait(5)
            try:
                client.on() if on else client.off()
            except Exception as exc:  # noqa: BLE001 - handed to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=switch, args=(n % 2 == 0,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
    assert_operations_never_interleave(sim, 4)


SWITCHER = """
import sys
from jumpstarter_drivers.energenie import EnerGenie
driver = EnerGenie(host=sys.argv[1], lock_dir=sys.argv[2], slot=int(sys.argv[3]))
print("ready", flush=True)
sys.stdin.readline()
driver.on()
print("done", flush=True)
"""


def read_line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no line from process {process.pid} within {timeout} s"
    return process.stdout.readline().strip()


def test_processes_take_turns(simulator, lock_dir: str) -> None:
    sim = simulator(delay=0.1)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SWITCHER, sim.address, lock_dir, str(slot)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for slot in (1, 2, 3)
    ]
    try:
        for p in processes:
            assert read_line(p, 30) == "ready"
        for p in processes:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in processes:
            assert read_line(p, 30) == "done"
            assert p.wait(10) == 0
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            p.stdin.close()
            p.stdout.close()
    assert sim.states == [True, True, True, False]
    assert_operations_never_interleave(sim, 3)


def test_a_strip_held_by_another_process_times_out(simulator, lock_dir: str) -> None:
    sim = simulator()
    driver = EnerGenie(host=sim.address, lock_dir=lock_dir, lock_timeout=0.2)
    driver.lock_path.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
         "sys.stdin.readline()", str(driver.lock_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert read_line(holder, 30) == "held"
        with pytest.raises(DriverTimeout, match=rf"another process kept the strip busy .*held by process {holder.pid}"):
            driver.on()
        assert sim.exchanges == []
    finally:
        holder.stdin.close()
        holder.wait(10)
        holder.stdout.close()
    driver.on()
    assert sim.states[0] is True


def test_lock_is_taken_with_flock_on_the_lock_file(simulator, lock_dir: str) -> None:
    """While an operation runs, its lock file is flock-ed (what other processes wait on)."""
    sim = simulator(delay=0.3)
    driver = EnerGenie(host=sim.address, lock_dir=lock_dir)
    worker = threading.Thread(target=driver.on)
    worker.start()
    deadline = time.monotonic() + 10
    while not sim.max_concurrent and time.monotonic() < deadline:
        time.sleep(0.01)
    fd = os.open(driver.lock_path, os.O_RDWR)
    try:
        assert sim.max_concurrent, "the driver sent no request within 10 s"
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        worker.join(30)
    assert not worker.is_alive() and sim.states[0] is True, "the locked operation did not complete"
    assert Path(driver.lock_path).read_text().strip() == str(os.getpid())


def test_a_jumpstarter_exporter_file_drives_the_simulator(simulator, lock_dir: str) -> None:
    """Jumpstarter's documented EnerGenie config (driver path, slot as a string) loads and works as is."""
    from jumpstarter_drivers.core.config import loads

    sim = simulator(password="password")
    config = loads(
        "export:\n"
        "  power:\n"
        "    type: jumpstarter_driver_energenie.driver.EnerGenie\n"
        "    config:\n"
        f'      host: "{sim.address}"\n'
        '      password: "password"\n'
        '      slot: "2"\n'
        f'      lock_dir: "{lock_dir}"\n'
    )
    with serve(config.root) as client:
        assert isinstance(client.power, EnerGenieClient)
        client.power.on()
        assert client.power.state() is True
    assert sim.states == [False, True, False, False]


# the lock file in a shared temp dir -------------------------------------------------------------


def test_a_planted_symlink_lock_file_is_refused_and_its_target_untouched(simulator, tmp_path: Path) -> None:
    sim = simulator()
    victim = tmp_path / "victim"
    victim.write_text("root's data\n")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    driver = EnerGenie(host=sim.address, lock_dir=str(lock_dir))
    driver.lock_path.symlink_to(victim)
    with pytest.raises(DriverError, match=r"lock file .* is a symbolic link; remove it"):
        driver.on()
    assert victim.read_text() == "root's data\n"
    assert sim.exchanges == []


def test_a_hard_linked_lock_file_is_refused(simulator, tmp_path: Path) -> None:
    sim = simulator()
    victim = tmp_path / "victim"
    victim.write_text("data\n")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    driver = EnerGenie(host=sim.address, lock_dir=str(lock_dir))
    os.link(victim, driver.lock_path)
    with pytest.raises(DriverError, match=r"not a plain file of this user with a single link .*2 links"):
        driver.on()
    assert victim.read_text() == "data\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's directory needs root")
def test_a_default_lock_dir_planted_by_another_user_is_refused(
    simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With XDG_RUNTIME_DIR unset the lock dir lives in the (world-writable) temp dir."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(shared))
    planted = shared / f"jumpstarter-drivers-{os.getuid()}"
    (planted / "energenie").mkdir(parents=True)
    os.chown(planted, 65534, 65534)
    sim = simulator()
    driver = EnerGenie(host=sim.address)
    assert driver.lock_path.parent == planted / "energenie"
    with pytest.raises(DriverError, match=rf"lies in {planted}, which another user can change \(uid 65534"):
        driver.on()
    assert not driver.lock_path.exists()


def test_a_lock_dir_writable_by_others_is_refused(simulator, tmp_path: Path) -> None:
    sim = simulator()
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    lock_dir.chmod(0o777)
    with pytest.raises(DriverError, match=r"lock directory .*locks is writable by other users \(mode 0777\)"):
        EnerGenie(host=sim.address, lock_dir=str(lock_dir)).on()


def test_a_new_default_lock_dir_is_private(simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(shared))
    old_umask = os.umask(0)
    try:
        sim = simulator()
        driver = EnerGenie(host=sim.address)
        driver.on()
    finally:
        os.umask(old_umask)
    for folder in (driver.lock_path.parent, driver.lock_path.parent.parent):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    assert driver.lock_path.stat().st_mode & 0o777 == 0o600
    assert sim.states[0] is True


# replies a strip on the lab network should not be trusted with ----------------------------------


def endless(connection: socket.socket) -> int:
    """A 200 whose body never ends (up to 128 MiB, or until the driver hangs up)."""
    sent, chunk = 0, b"x" * (64 << 10)
    with contextlib.suppress(OSError):
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n")
        while sent < 128 << 20:
            connection.sendall(chunk)
            sent += len(chunk)
    return sent


def dripping(head: bytes) -> Callable[[socket.socket], int]:
    """Send ``head``, then one byte every 0.05 s (300 at most, 15 s): each read finishes well within a timeout."""

    def reply(connection: socket.socket) -> int:
        dripped = 0
        with contextlib.suppress(OSError):
            connection.sendall(head)
            while dripped < 300 and not select.select([connection], [], [], 0.05)[0]:
                connection.sendall(b"x")
                dripped += 1
        return dripped

    return reply


def test_an_endless_reply_is_cut_at_max_reply_bytes(raw_strip, lock_dir: str) -> None:
    strip = raw_strip(endless)
    with pytest.raises(DriverError, match=r"POST /login.html got a reply no EG-PMS2-LAN gives \(a reply larger than "):
        EnerGenie(host=strip.address, lock_dir=lock_dir).on()
    strip.close()
    assert len(strip.sent) == 1, "refused without a retry"
    assert strip.sent[0] < 32 << 20, f"{strip.sent[0]} bytes were taken (socket buffers hold a few MiB at most)"


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nX-Drip: ", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"],
    ids=["headers", "body"],
)
def test_a_dripping_strip_is_cut_at_its_timeout(raw_strip, lock_dir: str, head: bytes) -> None:
    """A byte every 0.05 s never trips a per-read timeout; the whole request has timeout=1 s."""
    strip = raw_strip(dripping(head))
    with pytest.raises(DriverTimeout, match=r"POST /login.html got no answer within timeout=1 s \(1 attempt\)"):
        EnerGenie(host=strip.address, timeout=1, retries=0, lock_dir=lock_dir).on()
    strip.close()
    assert strip.sent and strip.sent[0] < 150, f"the driver waited for {strip.sent[0]} bytes at 20 a second"


@pytest.mark.parametrize(
    "body",
    [
        random.Random(15).randbytes(2000),
        b"<html><head><title>Router admin</title></head><body>Welcome</body></html>",
    ],
    ids=["binary", "another-device"],
)
def test_a_reply_that_is_not_the_strip_is_refused(httpserver: HTTPServer, lock_dir: str, body: bytes) -> None:
    httpserver.expect_ordered_request("/login.html", method="POST").respond_with_data(body)
    with pytest.raises(DriverError, match=r"POST /login.html answered \d+ characters that are neither the EG-PMS2-LAN"):
        EnerGenie(host=f"127.0.0.1:{httpserver.port}", lock_dir=lock_dir).on()
    assert len(httpserver.log) == 1, "nothing was switched after a reply that is not the strip's"


def test_a_reply_that_is_not_http_is_refused_without_retries(raw_strip, lock_dir: str) -> None:
    strip = raw_strip(lambda connection: connection.send(b"SSH-2.0-OpenSSH_9.6\r\n"))
    with pytest.raises(DriverError, match=r"POST /login.html got a reply no EG-PMS2-LAN gives \(.*SSH-2.0"):
        EnerGenie(host=strip.address, retries=2, lock_dir=lock_dir).on()
    strip.close()
    assert len(strip.sent) == 1


def test_a_lock_dir_that_cannot_be_created_is_a_driver_error(simulator, tmp_path: Path) -> None:
    sim = simulator()
    (tmp_path / "file").write_text("not a directory\n")
    with pytest.raises(DriverError, match=r"cannot create lock directory .*/file/locks: Not a directory; set 'lock_dir'"):
        EnerGenie(host=sim.address, lock_dir=str(tmp_path / "file" / "locks")).on()
    assert sim.exchanges == []
