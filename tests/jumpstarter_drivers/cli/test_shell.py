"""`jumpstarter shell`: CMD runs inside a local or remote lab and its exit status comes back."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from jumpstarter_drivers.cli.process import ServeProcess

from .conftest import PASSPHRASE

PYTHON = sys.executable

USE_LAB = textwrap.dedent(
    """
    import os, sys
    from jumpstarter_drivers.core.access import env
    with env() as client:
        client.power.on()
        print(os.environ["JUMPSTARTER_HOST"], os.environ["JMP_DRIVERS_ALLOW"], sep="\\n")
        print(str(list(client.power.read())[-1]))
    sys.exit(int(sys.argv[1]))
    """
)


def test_shell_returns_the_exit_status_and_sets_the_environment(jumpstarter, lab_file: Path) -> None:
    result = jumpstarter("shell", str(lab_file), "--", PYTHON, "-c", USE_LAB, "3")
    assert result.returncode == 3, result.stderr
    host, allow, reading = result.stdout.splitlines()
    assert host.endswith("/socket") and not Path(host).exists(), "the private socket is gone after the shell"
    allowed = allow.split(",")
    assert "jumpstarter_drivers.power.client.PowerClient" in allowed
    assert "jumpstarter_drivers.pyserial.client.PySerialClient" in allowed
    assert "jumpstarter_driver_power.client.PowerClient" in allowed, "Jumpstarter's own client may run inside too"
    assert reading == "voltage=5.0 V  current=2.0 A  apparent_power=10.0 VA"


def test_shell_allow_option(jumpstarter, lab_file: Path) -> None:
    script = "import os; print(os.environ['JMP_DRIVERS_ALLOW'])"
    result = jumpstarter("shell", "--allow", "UNSAFE", str(lab_file), "--", PYTHON, "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "UNSAFE"


def test_shell_runs_pytest_against_the_lab(jumpstarter, lab_file: Path, tmp_path: Path) -> None:
    tests = tmp_path / "test_bench.py"
    tests.write_text(
        textwrap.dedent(
            """
            import os

            def test_power(client):
                client.power.on()
                assert str(list(client.power.read())[-1]) == "voltage=5.0 V  current=2.0 A  apparent_power=10.0 VA"

            def test_runs_in_the_shell():
                assert os.path.exists(os.environ["JUMPSTARTER_HOST"])
            """
        )
    )
    result = jumpstarter(
        "shell", str(lab_file), "--", PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    failing = jumpstarter(
        "shell", str(lab_file), "--", PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests),
        "-k", "no_such_test", timeout=120,
    )
    assert failing.returncode == 5, "pytest's own 'no tests ran' status comes back unchanged"


def test_shell_without_separator_and_shell_builtin_command(jumpstarter, lab_file: Path) -> None:
    result = jumpstarter("shell", str(lab_file), "sh", "-c", "exit 7")
    assert result.returncode == 7


def test_shell_default_command_is_the_users_shell(jumpstarter, lab_file: Path) -> None:
    result = jumpstarter("shell", str(lab_file), env={"SHELL": "/bin/sh"}, input='echo "in $JUMPSTARTER_HOST"; exit 4\n')
    assert result.returncode == 4
    assert result.stdout.startswith("in /")


def test_command_killed_by_a_signal(jumpstarter, lab_file: Path) -> None:
    result = jumpstarter("shell", str(lab_file), "--", "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM


def test_command_not_found(jumpstarter, lab_file: Path) -> None:
    result = jumpstarter("shell", str(lab_file), "--", "no-such-command-here")
    assert result.returncode == 127
    assert result.stderr.strip().splitlines() == ["Error: command not found: no-such-command-here"]


@contextlib.contextmanager
def shell_running(lab_file: Path, script: str) -> Iterator[subprocess.Popen]:
    """`jumpstarter shell LAB -- python -c SCRIPT` in its own process group, once SCRIPT printed
    ``ready``; the group is killed on the way out should the test fail before it ends."""
    with subprocess.Popen(
        [PYTHON, "-m", "jumpstarter_drivers.cli", "shell", str(lab_file), "--", PYTHON, "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as shell:
        try:
            ready, _, _ = select.select([shell.stdout], [], [], 30)
            assert ready, "the command did not start within 30 s"
            assert shell.stdout.readline() == "ready\n"
            yield shell
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell.pid, signal.SIGKILL)


def test_sigterm_is_passed_on_to_the_command(lab_file: Path) -> None:
    script = (
        "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(9)); print('ready', flush=True); "
        "signal.pause()"
    )
    with shell_running(lab_file, script) as shell:
        shell.send_signal(signal.SIGTERM)
        assert shell.wait(30) == 9, "the command got SIGTERM, handled it, and its status came back"
        assert shell.stderr.read() == ""


def test_shell_against_a_remote_lab_over_tls(
    jumpstarter, lab_file: Path, tls_files: tuple[Path, Path], passphrase_file: Path
) -> None:
    cert, key = tls_files
    options = ["--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
               "--passphrase-file", str(passphrase_file)]
    clean = {"JMP_GRPC_PASSPHRASE": None, "JMP_GRPC_CA": None, "JMP_GRPC_INSECURE": None, "JMP_DRIVERS_ALLOW": None}
    with ServeProcess(lab_file, *options) as lab:
        result = jumpstarter(
            "shell", "--host", lab.address, "--ca", str(cert), "--passphrase-file", str(passphrase_file),
            "--", PYTHON, "-c", "import os; print(os.environ['JMP_GRPC_PASSPHRASE'])" + USE_LAB, "0", env=clean,
        )
        assert result.returncode == 0, result.stderr
        passphrase, host, allow, reading = result.stdout.splitlines()
        assert (host, allow, passphrase) == (lab.address, "jumpstarter_drivers.*", PASSPHRASE)
        assert reading.startswith("voltage=5.0 V")

        refused = jumpstarter("shell", "--host", lab.address, "--ca", str(cert), "--", "true", env=clean)
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1
        assert "missing passphrase" in refused.stderr


def test_shell_usage_errors(jumpstarter, lab_file: Path) -> None:
    bad_option = jumpstarter("shell", "--bogus", str(lab_file))
    assert bad_option.returncode == 2
    assert "No such option '--bogus'" in bad_option.stderr
    local_tls = jumpstarter("shell", "--insecure", str(lab_file), "--", "true")
    assert local_tls.returncode == 1
    assert "are for --host" in local_tls.stderr
    for result in (bad_option, local_tls):
        assert "Traceback" not in result.stderr


def test_shell_with_a_broken_lab(jumpstarter, tmp_path: Path) -> None:
    lab = tmp_path / "lab.yaml"
    lab.write_text("export:\n  power: {type: MockPower, config: {volts: 5}}\n")
    result = jumpstarter("shell", str(lab), "--", "true")
    assert result.returncode == 1
    expected = (
        f"Error: {lab}: export.power.config.volts: MockPower: unknown config field 'volts'; "
        "expected one of: children, description, labels, methods_description"
    )
    assert result.stderr.strip().splitlines() == [expected]


def test_unreachable_remote_lab(jumpstarter, tmp_path: Path) -> None:
    result = jumpstarter("shell", "--host", str(tmp_path / "nothing.sock"), "--", "true")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no exporter socket" in result.stderr
    assert os.path.basename(str(tmp_path / "nothing.sock")) in result.stderr


def test_the_command_gets_the_users_environment(jumpstarter, lab_file: Path) -> None:
    script = "import os; print(os.environ.get('GRPC_VERBOSITY', 'unset'), os.environ['MY_SETTING'])"
    result = jumpstarter("shell", str(lab_file), "--", PYTHON, "-c", script, env={"MY_SETTING": "kept"})
    assert result.stdout.split() == ["unset", "kept"], "the CLI's own quieting of gRPC is not passed on"


def test_ctrl_c_reaches_the_command_and_the_shell_waits_for_it(lab_file: Path) -> None:
    script = (
        "import signal, sys; signal.signal(signal.SIGINT, lambda *_: sys.exit(5)); print('ready', flush=True); "
        "signal.pause()"
    )
    with shell_running(lab_file, script) as shell:
        os.killpg(shell.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        assert shell.wait(30) == 5, "the command handled Ctrl-C; the shell outlived it and returned its status"
        assert shell.stderr.read() == ""


SHOW_LAB = "echo \"$JUMPSTARTER_HOST\"; jumpstarter report"


@pytest.fixture(scope="module")
def served_lab(lab_file: Path) -> Iterator[str]:
    """The address of ``lab_file`` served by ``jumpstarter serve`` on a unix socket."""
    with ServeProcess(lab_file) as lab:
        yield lab.address


def shown_lab(result: subprocess.CompletedProcess) -> tuple[str, str]:
    """The JUMPSTARTER_HOST and `jumpstarter report` printed by :data:`SHOW_LAB`."""
    assert result.returncode == 0, result.stderr
    host, _, report = result.stdout.partition("\n")
    return host, report


def on_path() -> dict[str, str]:
    """PATH with this interpreter's bin directory first, so CMD finds this `jumpstarter`."""
    return {"PATH": f"{Path(PYTHON).parent}{os.pathsep}{os.environ['PATH']}", "JUMPSTARTER_HOST": None}


def test_shell_host_option_before_the_command(jumpstarter, served_lab: str) -> None:
    host, report = shown_lab(jumpstarter("shell", "--host", served_lab, "--", "sh", "-c", SHOW_LAB, env=on_path()))
    assert host == served_lab
    assert "bench supply" in report


def test_global_host_option_reaches_shell(jumpstarter, served_lab: str) -> None:
    result = jumpstarter("--host", served_lab, "shell", "--", "sh", "-c", SHOW_LAB, env=on_path())
    host, report = shown_lab(result)
    assert host == served_lab, "sh is the command, not a configuration file"
    assert "bench supply" in report


def test_jumpstarter_host_variable_reaches_shell(jumpstarter, served_lab: str) -> None:
    result = jumpstarter("shell", "sh", "-c", SHOW_LAB, env={**on_path(), "JUMPSTARTER_HOST": served_lab})
    host, report = shown_lab(result)
    assert host == served_lab, "sh is the command, not a configuration file"
    assert "bench supply" in report


def test_exporter_option_and_yaml_argument_serve_that_lab(jumpstarter, lab_file: Path) -> None:
    for args in (("--exporter", str(lab_file), "--"), (str(lab_file), "--"), (str(lab_file),)):
        host, report = shown_lab(jumpstarter("shell", *args, "sh", "-c", SHOW_LAB, env=on_path()))
        assert host.endswith("/socket"), args
        assert "bench supply" in report, args


def test_a_yaml_file_given_on_the_command_line_wins_over_the_variable(jumpstarter, lab_file: Path) -> None:
    env = {**on_path(), "JUMPSTARTER_HOST": "/nonexistent/outer-lab.sock"}
    host, report = shown_lab(jumpstarter("shell", str(lab_file), "--", "sh", "-c", SHOW_LAB, env=env))
    assert host.endswith("/socket")
    assert "bench supply" in report


def test_without_a_lab_the_command_runs_in_the_virtual_lab(jumpstarter) -> None:
    result = jumpstarter("shell", "--", "jumpstarter", "report", env=on_path())
    assert result.returncode == 0, result.stderr
    assert "flasher (" in result.stdout and "board (" in result.stdout, "the built-in virtual lab's nodes"
    inferred = jumpstarter("shell", "sh", "-c", SHOW_LAB, env=on_path())
    host, report = shown_lab(inferred)
    assert host.endswith("/socket") and "flasher (" in report


def test_shell_without_arguments_runs_the_users_shell_in_the_virtual_lab(jumpstarter) -> None:
    env = {**on_path(), "SHELL": "/bin/sh"}
    result = jumpstarter("shell", env=env, input="jumpstarter report\n")
    assert result.returncode == 0, result.stderr
    assert "flasher (" in result.stdout


def test_shell_refuses_a_missing_yaml_and_a_host_with_a_file(jumpstarter, lab_file: Path, tmp_path: Path) -> None:
    missing = jumpstarter("shell", str(tmp_path / "lab.yaml"), "--", "true")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        (
            f"Error: no exporter configuration {tmp_path / 'lab.yaml'}: no such file; give the path of a lab's YAML, "
            "or put -- before a command"
        )
    ]
    both = jumpstarter("shell", "--host", "/some/lab.sock", str(lab_file), "--", "true")
    assert both.returncode == 2
    assert "give either a lab to reach (--host /some/lab.sock) or one to serve" in both.stderr
