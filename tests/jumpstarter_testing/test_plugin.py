"""Self-tests of the pytest plugin, each running a small suite with pytester."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers import JMP_DRIVERS_ALLOW, JUMPSTARTER_HOST, Session
from jumpstarter_drivers.power import MockPower

SAMPLE = """
from jumpstarter_testing import JumpstarterTest

class TestSample(JumpstarterTest):
    def test_simple(self, client):
        client.on()
"""

LAB_FILE = """
export:
  board:
    children:
      power: {type: MockPower}
  flasher:
    children:
      power: {ref: board.power}
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No lab settings leak in from the environment of the outer run."""
    for name in (JUMPSTARTER_HOST, JMP_DRIVERS_ALLOW, "JUMPSTARTER_EXPORTER", "JUMPSTARTER_LOG_DIR", "JUMPSTARTER_FLASHER"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def remote() -> Iterator[Path]:
    """A session in this process on a unix socket: a 'remote' exporter for the inner run."""
    with Session(root_device=MockPower(), labels={"board": "mock"}) as session, session.serve_unix() as path:
        yield path


def test_jumpstarter_test_class_uses_jumpstarter_host(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    with Session(root_device=MockPower()) as session:  # noqa: SIM117 - the issue's test, as written
        with session.serve_unix() as path:
            monkeypatch.setenv(JUMPSTARTER_HOST, str(path))
            monkeypatch.setenv(JMP_DRIVERS_ALLOW, "UNSAFE")
            pytester.makepyfile(SAMPLE)
            pytester.runpytest().assert_outcomes(passed=1)


def test_host_and_allow_options_instead_of_environment(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, remote: Path) -> None:
    pytester.makepyfile(SAMPLE)
    pytester.runpytest(f"--jumpstarter-host={remote}", "--jumpstarter-drivers-allow=jumpstarter_drivers.power.*").assert_outcomes(passed=1)
    result = pytester.runpytest(f"--jumpstarter-host={remote}", "--jumpstarter-drivers-allow=other_vendor.*")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ClientNotAllowed: client class jumpstarter_drivers.power.client.PowerClient is not allowed by JMP_DRIVERS_ALLOW='other_vendor.*'*"])


def test_ini_settings(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, remote: Path) -> None:
    pytester.makeini(f"[pytest]\njumpstarter_host = {remote}\njumpstarter_drivers_allow = other_vendor.*\n")
    pytester.makepyfile(SAMPLE)
    pytester.runpytest().assert_outcomes(failed=1)
    clean_env.setenv(JMP_DRIVERS_ALLOW, "UNSAFE")
    pytester.runpytest().assert_outcomes(passed=1)


def test_local_lab_from_exporter_file(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makefile(".yaml", bench=LAB_FILE)
    pytester.makepyfile(
        """
        import os, subprocess, sys
        from jumpstarter_drivers.composite import CompositeClient

        def test_tree(client, session):
            assert isinstance(client, CompositeClient)
            client.board.power.on()
            client.flasher.power.off()
            assert session.local is not None and session.status().name == "LEASE_READY"
            assert [r.labels["jumpstarter.dev/name"] for r in session.report().reports[1:]] == ["board", "power", "flasher", "power"]

        def test_subprocesses_find_the_lab(session):
            code = "from jumpstarter_drivers import env\\nwith env() as c: c.board.power.on(); print('ok')"
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
            assert out.stdout.strip() == "ok", out.stderr
            assert os.environ["JUMPSTARTER_HOST"] == session.address
        """
    )
    pytester.runpytest("--jumpstarter-exporter=bench.yaml").assert_outcomes(passed=2)
    assert JUMPSTARTER_HOST not in os.environ, "the run restores the environment it changed"
    (pytester.path / "bench.yaml").rename(pytester.path / "exporter.yaml")
    pytester.runpytest().assert_outcomes(passed=2)


def test_a_lab_that_fails_to_close_still_restores_the_environment(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        stuck_relay="""
        from dataclasses import dataclass
        from jumpstarter_drivers import Driver

        @dataclass(kw_only=True)
        class StuckRelay(Driver):
            def close(self):
                super().close()
                raise RuntimeError("relay stuck")
        """
    )
    pytester.syspathinsert()
    pytester.makefile(".yaml", exporter="export:\n  power: {type: MockPower}\n  relay: {type: stuck_relay.StuckRelay}\n")
    pytester.makepyfile("def test_on(client):\n    client.power.on()\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "RuntimeError: relay stuck" in result.stderr.str(), "the failing close is reported"
    assert JUMPSTARTER_HOST not in os.environ and JMP_DRIVERS_ALLOW not in os.environ


def test_conftest_registers_driver_short_names(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(demo_flasher=FLASHER_MODULE)
    pytester.syspathinsert()
    pytester.makeconftest(
        """
        def pytest_jumpstarter_register_drivers(registry):
            registry.register("DemoFlasher", "demo_flasher.DemoFlasher")
        """
    )
    pytester.makefile(".yaml", exporter="export:\n  dut:\n    children:\n      flasher: {type: DemoFlasher}\n")
    pytester.makepyfile(test_flash="def test_flash(flasher):\n    assert flasher.flash('a.img') == 'flashed a.img'\n")
    pytester.runpytest().assert_outcomes(passed=1)


def test_builtin_virtual_lab_by_default(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        """
        from jumpstarter_testing.lab import VIRTUAL_LAB

        def test_virtual(session, client):
            assert session.source == str(VIRTUAL_LAB)
            client.power.on()
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_settings_are_fixtures_a_conftest_overrides(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makefile(".yaml", other="export:\n  relay: {type: SyncMockPower}\n")
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def jumpstarter_exporter(pytestconfig):
            return pytestconfig.rootpath / "other.yaml"
        """
    )
    pytester.makepyfile("def test_relay(client):\n    client.relay.on()\n")
    pytester.runpytest().assert_outcomes(passed=1)


FLASHER_MODULE = """
from dataclasses import dataclass
from jumpstarter_drivers import Driver, DriverClient, export

@dataclass(kw_only=True)
class DemoFlasher(Driver):
    @classmethod
    def client(cls):
        return "demo_flasher.DemoFlasherClient"

    @export
    def flash(self, image: str) -> str:
        self.logger.info("flashing %s", image)
        return f"flashed {image}"

class DemoFlasherClient(DriverClient):
    def flash(self, image):
        return self.call("flash", image)
"""


def test_flasher_fixture(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(demo_flasher=FLASHER_MODULE)
    pytester.syspathinsert()
    pytester.makefile(".yaml", one="export:\n  power: {type: MockPower}\n  dut:\n    children:\n      flasher: {type: demo_flasher.DemoFlasher}\n")
    pytester.makefile(".yaml", two="export:\n  a: {type: demo_flasher.DemoFlasher}\n  b: {type: demo_flasher.DemoFlasher}\n")
    pytester.makefile(".yaml", none="export:\n  power: {type: MockPower}\n")
    pytester.makepyfile(test_flash="def test_flash(flasher):\n    assert flasher.flash('os.img') == 'flashed os.img'\n")
    pytester.runpytest("--jumpstarter-exporter=one.yaml").assert_outcomes(passed=1)
    pytester.runpytest("--jumpstarter-exporter=two.yaml", "--jumpstarter-flasher=b").assert_outcomes(passed=1)
    result = pytester.runpytest("--jumpstarter-exporter=two.yaml")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*several flashers (a, b); choose one with --jumpstarter-flasher=NAME*"])
    result = pytester.runpytest("--jumpstarter-exporter=none.yaml", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*has no flasher (no node with a *FlasherClient client class)*"])


FAILING = """
def test_fails(client):
    client.power.on()
    assert False, "board did not boot"

def test_passes(client):
    client.power.off()
"""


def test_failing_test_report_carries_driver_logs_local(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(FAILING)
    logs = pytester.path / "logs"
    result = pytester.runpytest(f"--jumpstarter-log-dir={logs}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- jumpstarter driver logs (call) -*",
            "*INFO    board.power: power on",
            "*- jumpstarter log file -*",
            f"*{logs}/test_failing_test_report_carries_driver_logs_local.py__test_fails.log",
        ]
    )
    assert "power off" not in result.stdout.str(), "a passing test's logs stay out of the report"
    failed_log = (logs / "test_failing_test_report_carries_driver_logs_local.py__test_fails.log").read_text()
    passed_log = (logs / "test_failing_test_report_carries_driver_logs_local.py__test_passes.log").read_text()
    header = r"# test_failing\S+::test_{}\n# board: local lab from \S+virtual_lab.yaml at \S+ \(uuid [0-9a-f-]{{36}}, labels none\)\n"
    stamp = r"\d\d:\d\d:\d\d\.\d{3}"
    failure = rf"{stamp} ERROR   test: failed \(call\) at test_failing\S+\.py:3: AssertionError: board did not boot\nassert False\n"
    assert re.fullmatch(header.format("fails") + rf"{stamp} INFO    board.power: power on\n" + failure, failed_log)
    assert re.fullmatch(header.format("passes") + rf"{stamp} INFO    board.power: power off\n", passed_log)


def test_failing_test_report_carries_driver_logs_remote(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    from jumpstarter_drivers.composite import Composite

    with Session(root_device=Composite(children={"power": MockPower()})) as lab, lab.serve_unix() as path:
        pytester.makepyfile(FAILING)
        result = pytester.runpytest(f"--jumpstarter-host={path}")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*- jumpstarter driver logs (call) -*", "*INFO    power: power on"])
    assert "power off" not in result.stdout.str()


def test_console_output_is_captured(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    """Console lines are named by the node's full path; a prompt (no newline) belongs to the phase
    that saw it and sits in the log file where it arrived, not where the console closed."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def console(client):
            with client.serial.pexpect(timeout=10) as console:
                yield console
                client.power.off()

        def test_console(client, console):
            client.power.on()
            console.expect("Hit any key to stop autoboot")
            console.sendline("")
            console.expect_exact(b"=> ")
            assert False, "no login prompt"
        """
    )
    logs = pytester.path / "logs"
    result = pytester.runpytest(f"--jumpstarter-log-dir={logs}")
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    call = text[text.index("- jumpstarter driver logs (call) -"):]
    assert re.search(r"INFO    console\[board\.serial\]: U-Boot 2023\.01 \(virtual board\)\n", call), text
    assert re.search(r"INFO    console\[board\.serial\]: => \n", call), "the prompt is in the call's section"
    assert "jumpstarter driver logs (teardown)" not in text
    log = (logs / "test_console_output_is_captured.py__test_console.log").read_text()
    assert log.index("console[board.serial]: => \n") < log.index("board.power: power off"), log


EXAMPLES = Path(__file__).parents[2] / "examples"


def test_examples_pass_against_the_virtual_lab(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    for example in EXAMPLES.iterdir():
        if example.suffix == ".py":
            (pytester.path / example.name).write_text(example.read_text())
    collected = pytester.runpytest("--collect-only", "-q").outlines
    expected = sum(1 for line in collected if "::" in line)
    assert expected >= 10, collected
    result = pytester.runpytest("-W", "error")
    result.assert_outcomes(passed=expected)


def test_junit_xml_carries_exporter_identity(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, remote: Path) -> None:
    pytester.makepyfile(SAMPLE)
    pytester.runpytest(f"--jumpstarter-host={remote}", "--junitxml=out.xml").assert_outcomes(passed=1)
    xml = (pytester.path / "out.xml").read_text()
    assert re.search(r'<property name="jumpstarter_exporter_uuid" value="[0-9a-f-]{36}" />', xml), xml
    assert '<property name="jumpstarter_exporter_label:board" value="mock" />' in xml
    assert f'<property name="jumpstarter_exporter_address" value="{remote}" />' in xml


def test_requires_marker(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makefile(".yaml", exporter=LAB_FILE)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.jumpstarter_requires("board.power", "flasher.power")
        def test_has(client):
            client.board.power.on()

        @pytest.mark.jumpstarter_requires("board.power", "board.serial")
        def test_lacks():
            raise AssertionError("must not run")
        """
    )
    result = pytester.runpytest("-rs", "--strict-markers")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*the lab at * has no board.serial node or method (jumpstarter_requires)*"])


def test_unreachable_host_fails_the_run_once(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytester.makepyfile(SAMPLE + "\n    def test_two(self, client):\n        pass\n\ndef test_plain():\n    pass\n")
    result = pytester.runpytest(f"--jumpstarter-host={tmp_path}/nobody.sock")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    lines = [line for line in result.outlines if "jumpstarter: lab" in line]
    assert len(lines) == 1, result.outlines
    assert lines[0].startswith(f"ERROR: jumpstarter: lab {tmp_path}/nobody.sock is unusable: no exporter socket at {tmp_path}/nobody.sock")
    assert "point JUMPSTARTER_HOST at its socket" in lines[0]
    assert "Traceback" not in result.stdout.str() and "ExporterUnreachable" not in result.stdout.str()
    assert "_pytest.outcomes.Exit" not in result.stdout.str() + result.stderr.str()
    result = pytester.runpytest("--jumpstarter-host=127.0.0.1:9", "-k", "test_simple")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["*jumpstarter: lab 127.0.0.1:9 is unusable: cannot reach the exporter at 127.0.0.1:9*--jumpstarter-host*"])


def test_lab_untouched_when_no_test_needs_it(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    pytester.runpytest(f"--jumpstarter-host={tmp_path}/nobody.sock").assert_outcomes(passed=1)


def test_broken_exporter_file_fails_the_run_once(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makefile(".yaml", exporter="export:\n  board:\n    children:\n      power: {type: MockPower, config: {slot: 1}}\n")
    pytester.makepyfile(SAMPLE + "\n    def test_two(self, client):\n        pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    text = result.stdout.str()
    assert text.count("jumpstarter: lab") == 1
    expected = (
        "ERROR: jumpstarter: lab *exporter.yaml is unusable: *exporter.yaml: "
        "export.board.children.power.config.slot: MockPower: unknown config field 'slot'*"
    )
    result.stdout.fnmatch_lines([expected])
    assert "Traceback" not in text and "_pytest.outcomes.Exit" not in text


def test_hooks_around_the_lab_and_each_test(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makeconftest(
        """
        events = []

        def pytest_jumpstarter_lab_ready(session, client):
            events.append(("ready", session.address == client.connection.address))

        def pytest_jumpstarter_test_started(item, client):
            events.append(("started", item.name))

        def pytest_jumpstarter_test_finished(item, client, failed, reports):
            events.append(("finished", item.name, failed, sorted(reports)))
            if failed:
                client.power.off()

        def pytest_sessionfinish(session):
            print("EVENTS", events)
        """
    )
    skipped = "\n@pytest.mark.jumpstarter_requires('no_such_node')\ndef test_skipped(client):\n    pass\n"
    pytester.makepyfile("import pytest\n" + FAILING + "\ndef test_plain():\n    pass\n" + skipped)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    assert (
        "EVENTS [('ready', True), ('started', 'test_fails'), "
        "('finished', 'test_fails', True, ['call', 'setup', 'teardown']), ('started', 'test_passes'), "
        "('finished', 'test_passes', False, ['call', 'setup', 'teardown'])]"
    ) in result.stdout.str()


def test_help_and_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        ["jumpstarter: hardware in the loop:", "*--jumpstarter-host=ADDR*", "*--jumpstarter-drivers-allow=PATTERNS*",
         "*--jumpstarter-exporter=PATH*", "*--jumpstarter-log-dir=DIR*", "*--jumpstarter-flasher=NAME*",
         "*jumpstarter_host (linelist):*"]
    )
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(
        ["jumpstarter_exporter [[]session scope[]]*", "*Exporter file of the local lab*",
         "session [[]session scope[]]*", "*The lab of this run*", "client [[]session scope[]]*", "*The root client of the lab*",
         "flasher [[]session scope[]]*", "*The client of the lab's flasher*"]
    )


def test_two_workers_two_boards(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    from jumpstarter_drivers.composite import Composite

    records = pytester.mkdir("records")
    pytester.makepyfile(
        f"""
        import os
        import pytest

        @pytest.mark.parametrize("n", range(8))
        def test_board(n, client, session):
            client.power.on()
            worker = os.environ["PYTEST_XDIST_WORKER"]
            with open(os.path.join({str(records)!r}, f"{{worker}}-{{n}}"), "w") as f:
                f.write(session.address)
        """
    )
    with contextlib.ExitStack() as stack:
        paths = []
        for _ in range(2):
            lab = stack.enter_context(Session(root_device=Composite(children={"power": MockPower()})))
            paths.append(str(stack.enter_context(lab.serve_unix())))
        result = pytester.runpytest("-n", "2", f"--jumpstarter-host={paths[0]}", f"--jumpstarter-host={paths[1]}")
        result.assert_outcomes(passed=8)
        boards: dict[str, set[str]] = {}
        for record in records.iterdir():
            boards.setdefault(record.name.split("-")[0], set()).add(record.read_text())
        assert sorted(boards) == ["gw0", "gw1"]
        assert boards["gw0"] == {paths[0]} and boards["gw1"] == {paths[1]}, boards

        result = pytester.runpytest("-n", "2", f"--jumpstarter-host={paths[0]}")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*jumpstarter: 2 xdist workers but 1 board(s) (*); give one --jumpstarter-host per worker*"])

        result = pytester.runpytest("-n", "2", f"--jumpstarter-host={paths[0]}", f"--jumpstarter-host={records}/gone.sock")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: jumpstarter: lab is unusable: no exporter socket at {records}/gone.sock*"])
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_header_says_which_lab_the_run_uses(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, remote: Path) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    pytester.runpytest().stdout.fnmatch_lines(["jumpstarter: the built-in virtual lab (virtual_lab.yaml)*"])
    pytester.makefile(".yaml", exporter=LAB_FILE)
    pytester.runpytest().stdout.fnmatch_lines([f"jumpstarter: local lab from {pytester.path / 'exporter.yaml'}*"])
    pytester.runpytest(f"--jumpstarter-host={remote}").stdout.fnmatch_lines([f"jumpstarter: exporter at {remote}"])


def test_several_hosts_need_one_worker_each(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, remote: Path) -> None:
    """Two boards without -n would run everything on the first while the header names both: refused."""
    pytester.makepyfile(SAMPLE)
    other = pytester.path / "other.sock"
    result = pytester.runpytest(f"--jumpstarter-host={remote}", f"--jumpstarter-host={other}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        (f"ERROR: jumpstarter: 2 boards ({remote}, {other}) but the run is not distributed, so only the first "
        "would be used; run one board per worker with -n 2 (pytest-xdist), or give one --jumpstarter-host")
    ])
    clean_env.setenv(JUMPSTARTER_HOST, str(remote))
    pytester.makeini(f"[pytest]\njumpstarter_host =\n    {remote}\n    {other}\n")
    pytester.runpytest().assert_outcomes(passed=1)  # the environment's one host wins over the ini's two
    clean_env.delenv(JUMPSTARTER_HOST)
    result = pytester.runpytest("-n", "1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([(f"ERROR: jumpstarter: 2 boards ({remote}, {other}) but 1 xdist worker, so {other} "
                                 "would stay unused; run one board per worker with -n 2, or give fewer boards")])


FAILED_FLASH = """
def test_flash_fails(flasher, client, tmp_path):
    image = tmp_path / "image.raw"
    image.write_bytes(b"x" * 4096)
    client.board.set_faults(panic_on="tftpboot")
    with client.serial.pexpect(timeout=10) as console:
        client.power.cycle(wait=0.1)
        console.expect("Hit any key to stop autoboot")
    flasher.flash(image, method="uboot")
"""


@pytest.mark.parametrize("where", ["local", "remote"])
def test_each_record_once_and_the_reason_in_the_log_file(
    pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, where: str
) -> None:
    """A failed flash: every driver and console line once in the report and once in the log file,
    and the log file ends with why the test failed."""
    from jumpstarter_drivers.cli.process import ServeProcess
    from jumpstarter_testing.lab import VIRTUAL_LAB

    pytester.makepyfile(FAILED_FLASH)
    # Under CI (CI or BUILD_NUMBER set) pytest's short summary repeats the whole exception; the
    # count below is of the plugin's records, so the summary is left as it is on a terminal.
    for name in ("CI", "BUILD_NUMBER"):
        clean_env.delenv(name, raising=False)
    logs = pytester.path / "logs"
    with contextlib.ExitStack() as stack:
        options = [f"--jumpstarter-log-dir={logs}"]
        if where == "remote":
            options.append(f"--jumpstarter-host={stack.enter_context(ServeProcess(VIRTUAL_LAB)).address}")
        result = pytester.runpytest(*options)
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    log = (logs / "test_each_record_once_and_the_reason_in_the_log_file.py__test_flash_fails.log").read_text()
    for line in ("flasher: step: load", "console[board.serial]: Hit any key to stop autoboot"):
        assert text.count(line) == 1, f"{line!r} {text.count(line)} times in the report:\n{text}"
        assert log.count(line) == 1, f"{line!r} {log.count(line)} times in the log file:\n{log}"
    assert text.count("Synchronous Abort handler, esr") == 1, "the console tail once, in the exception"
    assert "Captured log" not in text, "pytest's own copy of the same records is left out"
    assert re.search(r"ERROR   test: failed \(call\) at test_each\w+\.py:8: jumpstarter_drivers\.core\.errors\."
                     r"DriverError: step 'tftpboot \.flash-chunk-00000' failed: the board failed", log), log
    assert "--- console tail ---" in log and log.rstrip().endswith("### ERROR ### Please RESET the board ###"), log


def test_which_board_ran_each_test(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    """Under xdist the JUnit testsuite keeps every board's identity, each testcase names its board,
    and each per-test log starts with a header naming the board."""
    from jumpstarter_drivers.composite import Composite

    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_board(n, client):
            client.power.on()
        """
    )
    logs = pytester.path / "logs"
    with contextlib.ExitStack() as stack:
        labs, paths = [], []
        for name in ("one", "two"):
            lab = stack.enter_context(Session(root_device=Composite(children={"power": MockPower()}), labels={"board": name}))
            labs.append(lab)
            paths.append(str(stack.enter_context(lab.serve_unix())))
        hosts = [f"--jumpstarter-host={path}" for path in paths]
        result = pytester.runpytest("-n", "2", *hosts, "--junitxml=out.xml", f"--jumpstarter-log-dir={logs}")
    result.assert_outcomes(passed=4)
    xml = (pytester.path / "out.xml").read_text()
    suite = xml[:xml.index("<testcase")]
    for lab, path, name in zip(labs, paths, ("one", "two"), strict=True):
        assert f'<property name="jumpstarter_exporter_address" value="{path}" />' in suite, xml
        assert f'<property name="jumpstarter_exporter_uuid" value="{lab.uuid}" />' in suite, xml
        assert f'<property name="jumpstarter_exporter_label:board" value="{name}" />' in suite, xml
    cases = re.findall(r"<testcase .*?</testcase>", xml, re.DOTALL)
    assert len(cases) == 4
    for case in cases:
        boards = re.findall(r'<property name="jumpstarter_exporter_address" value="([^"]+)" />', case)
        assert len(boards) == 1 and boards[0] in paths, case
    for log in logs.iterdir():
        header = log.read_text().splitlines()[:2]
        assert re.fullmatch(r"# test_which_board_ran_each_test\.py::test_board\[\d\]", header[0]), header
        board = re.fullmatch(r"# board: exporter at (\S+) \(uuid ([0-9a-f-]{36}), labels board=(one|two)\), worker gw[01]",
                             header[1])
        assert board and board[1] in paths, header


def test_requires_a_method_the_driver_supports(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``jumpstarter_requires("power.read")`` skips with the reason on an EnerGenie, which cannot measure."""
    from jumpstarter_drivers.energenie.simulator import EnerGenieSimulator

    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.jumpstarter_requires("power.read")
        def test_reads(client):
            assert list(client.power.read())

        @pytest.mark.jumpstarter_requires("power.on", "power.state")
        def test_switches(client):
            client.power.on()
            assert client.power.state()

        @pytest.mark.jumpstarter_requires("power.levitate")
        def test_levitates(client):
            raise AssertionError("must not run")

        @pytest.mark.jumpstarter_requires("power.close")
        def test_closes(client):
            raise AssertionError("close() is the client's, not a driver method")
        """
    )
    sim = EnerGenieSimulator().start()
    try:
        pytester.makefile(".yaml", strip=f"export:\n  power:\n    type: EnerGenie\n    config: {{host: '{sim.address}', "
                                         f"lock_dir: '{tmp_path}'}}\n")
        result = pytester.runpytest("-rs", "--jumpstarter-exporter=strip.yaml")
    finally:
        sim.close()
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines_random([
        "SKIPPED*the lab at * cannot power.read(): its driver does not support it (jumpstarter_requires)",
        "SKIPPED*the lab at * has no power.levitate node or method (jumpstarter_requires)",
        "SKIPPED*the lab at * has no power.close node or method (jumpstarter_requires)",
    ])
    result = pytester.runpytest("-rs", "-k", "reads or levitates")  # the virtual lab's power measures
    result.assert_outcomes(passed=1, skipped=1)
BOARD_STATE_SUITE = """
import pytest

@pytest.mark.jumpstarter_state("shell")
def test_first(board_state, client):
    assert board_state.path == ["uboot", "shell"]
    assert client.shell.run_check("echo one") == "one\\n"

@pytest.mark.jumpstarter_state("shell")
def test_reuses_the_booted_board(board_state, client):
    assert board_state.steps == {} and board_state.state == "shell"
    client.board.power.off()

@pytest.mark.parametrize("board_state", ["shell"], indirect=True)
def test_boots_again_after_the_board_was_switched_off(board_state):
    assert board_state.path == ["uboot", "shell"]

def test_without_a_state(board_state):
    pass
"""


def test_board_state_fixture_boots_once_and_records_steps(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(BOARD_STATE_SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", "--junitxml=junit.xml")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*board_state needs @pytest.mark.jumpstarter_state('STATE')*"])
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count('name="jumpstarter_step_shell_s"') == 2


def test_a_conftest_client_fixture_of_its_own_starts_no_lab(pytester: pytest.Pytester, clean_env: pytest.MonkeyPatch) -> None:
    """A project's own ``client`` fixture (not built on ours) is not a lab test; one built on ours is."""
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def client():
            return "an HTTP client of the project's own"
        """
    )
    pytester.makepyfile(
        test_own="""
        import os

        def test_own(client):
            assert client == "an HTTP client of the project's own"
            assert "JUMPSTARTER_HOST" not in os.environ, "a lab was started for a fixture that is not ours"
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def client(client):
            return client.power
        """
    )
    pytester.makepyfile(
        test_own="""
        import os

        def test_built_on_ours(client):
            client.on()
            assert os.environ["JUMPSTARTER_HOST"]
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
