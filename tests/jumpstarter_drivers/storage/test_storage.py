"""Storage through a real session: every export, traversal refusal, cleanup, large files."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from pathlib import Path

import pytest

from jumpstarter_drivers.core import ConfigurationError, DriverError, DriverInvalidArgument, serve
from jumpstarter_drivers.storage import FileStat, ProgressBar, Storage, StorageClient


@pytest.fixture
def client(root: Path) -> StorageClient:
    with serve(Storage(root_dir=str(root))) as client:
        assert isinstance(client, StorageClient)
        yield client


def test_bytes_round_trip_binary(client: StorageClient, root: Path) -> None:
    payload = b"\x00" * 1024 + bytes(range(256))
    assert client.write_bytes("boot/kernel", payload) == len(payload)
    assert (root / "boot" / "kernel").read_bytes() == payload
    assert client.read_bytes("boot/kernel") == payload


def test_write_bytes_refuses_text_that_is_not_base64(client: StorageClient) -> None:
    with pytest.raises(DriverInvalidArgument, match="base64"):
        client.call("write_bytes", "a", "not base64!")


def test_exists_stat_list_hash_delete(client: StorageClient, root: Path) -> None:
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "deep").write_bytes(b"deep")
    (root / "top").write_bytes(b"0123456789")
    assert client.exists("top") and client.exists("dir/sub") and not client.exists("missing")

    stat = client.stat("top")
    assert stat == FileStat(size=10, mtime=(root / "top").stat().st_mtime, is_dir=False)
    assert client.stat("dir").is_dir

    assert client.list() == ["dir", "top"]
    assert client.list("dir") == ["dir/sub"]
    assert client.list(".", recursive=True) == ["dir/sub/deep", "top"]

    assert client.hash("top") == hashlib.sha256(b"0123456789").hexdigest()
    assert client.hash("top", "md5") == hashlib.md5(b"0123456789").hexdigest()
    with pytest.raises(DriverInvalidArgument, match="unknown hash algorithm 'crc'"):
        client.hash("top", "crc")

    assert client.delete("top") is True
    assert client.delete("top") is False
    assert client.delete("dir") is True
    assert list(root.iterdir()) == []
    with pytest.raises(DriverInvalidArgument, match="root itself"):
        client.delete(".")


def test_missing_files_are_named(client: StorageClient, tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no file 'ghost'"):
        client.read_bytes("ghost")
    with pytest.raises(DriverError, match="no file 'ghost'"):
        client.stat("ghost")
    with pytest.raises(DriverError, match="no file 'ghost'"):
        client.read_into_path("ghost", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", ["../outside", "a/../../outside", "/etc/passwd", "nul\0byte"])
def test_traversal_is_refused_and_logged(
    client: StorageClient, root: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="driver.Storage")
    for call in (
        lambda: client.write_bytes(path, b"x"),
        lambda: client.read_bytes(path),
        lambda: client.exists(path),
        lambda: client.delete(path),
        lambda: client.stat(path),
        lambda: client.hash(path),
        lambda: client.list(path),
    ):
        with pytest.raises(DriverInvalidArgument, match="leaves the storage root"):
            call()
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING and "refused path" in r.getMessage()]
    assert len(refusals) == 7
    assert not (root.parent / "outside").exists()


def test_symlink_out_of_the_root_is_refused(client: StorageClient, root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (root / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    with pytest.raises(DriverInvalidArgument, match="symbolic link"):
        client.read_bytes("link")
    with pytest.raises(DriverInvalidArgument, match="symbolic link"):
        client.write_bytes("dirlink/planted", b"x")
    assert not (tmp_path / "planted").exists()
    (root / "inner").write_bytes(b"inside")
    (root / "innerlink").symlink_to(root / "inner")
    assert client.read_bytes("innerlink") == b"inside"


def test_delete_removes_a_link_not_what_it_points_to(client: StorageClient, root: Path) -> None:
    (root / "dir").mkdir()
    (root / "dir" / "file").write_bytes(b"kept")
    (root / "filelink").symlink_to(root / "dir" / "file")
    (root / "dirlink").symlink_to(root / "dir")
    (root / "dangling").symlink_to(root / "gone")
    assert client.delete("filelink") is True
    assert client.delete("dirlink") is True
    assert client.delete("dangling") is True
    assert client.delete("dirlink/file") is False  # the link is gone, so nothing is there by that name
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["dir", "dir/file"]
    assert client.delete("dir/file") is True and client.delete("dir") is True
    assert list(root.iterdir()) == []


def test_upload_refused_by_the_driver_does_not_stall(client: StorageClient, tmp_path: Path) -> None:
    source = tmp_path / "image"
    source.write_bytes(os.urandom(40 << 20))
    with pytest.raises(DriverInvalidArgument, match="leaves the storage root"):
        client.write_from_path("../image", source)
    client.write_bytes("dir/file", b"x")
    with pytest.raises(DriverInvalidArgument, match="is a directory"):
        client.write_from_path("dir", source)
    # The session is still usable afterwards.
    assert client.exists("dir/file")


def test_large_file_through_resources(client: StorageClient, root: Path, tmp_path: Path) -> None:
    source = tmp_path / "image"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        for _ in range(64):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            out.write(chunk)
    seen: list[tuple[int, int | None]] = []
    assert client.write_from_path("images/big.img", source, progress=lambda d, t: seen.append((d, t))) == 64 << 20
    assert seen[0] == (0, 64 << 20) and seen[-1] == (64 << 20, 64 << 20)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert client.hash("images/big.img") == digest.hexdigest()
    assert [p.name for p in (root / "images").iterdir()] == ["big.img"]  # no temporary file left

    back = tmp_path / "back.img"
    assert client.read_into_path("images/big.img", back) == 64 << 20
    with back.open("rb") as file:
        assert hashlib.file_digest(file, "sha256").hexdigest() == digest.hexdigest()


def test_write_replaces_atomically(client: StorageClient, root: Path, tmp_path: Path) -> None:
    (root / "file").write_bytes(b"old")
    source = tmp_path / "new"
    source.write_bytes(b"new content")
    client.write_from_path("file", source)
    assert (root / "file").read_bytes() == b"new content"
    assert sorted(p.name for p in root.iterdir()) == ["file"]


def test_short_stream_leaves_the_file_unchanged(client: StorageClient, root: Path) -> None:
    (root / "file").write_bytes(b"old")
    with client.resource() as (handle, stream):
        stream.send(b"only part")
        stream.send_eof()
        with pytest.raises(DriverError, match="ended after 9 of 100 bytes"):
            client.call("write_from_resource", "file", handle, 100)
    assert (root / "file").read_bytes() == b"old"
    assert sorted(p.name for p in root.iterdir()) == ["file"]


def test_cleanup_removes_what_the_session_created(root: Path, tmp_path: Path) -> None:
    (root / "kept").write_bytes(b"was here before")
    (root / "existing").mkdir()
    source = tmp_path / "src"
    source.write_bytes(b"payload")
    with serve(Storage(root_dir=str(root), cleanup=True)) as client:
        client.write_bytes("new/deep/file", b"x")
        client.write_from_path("existing/upload", source)
        client.write_bytes("kept", b"overwritten, but not created")
        assert client.exists("new/deep/file") and client.exists("existing/upload")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["existing", "kept"]
    assert (root / "kept").read_bytes() == b"overwritten, but not created"


def test_without_cleanup_files_stay(root: Path) -> None:
    with serve(Storage(root_dir=str(root))) as client:
        client.write_bytes("stays", b"x")
    assert (root / "stays").read_bytes() == b"x"


def test_root_is_created_and_must_be_a_directory(tmp_path: Path) -> None:
    storage = Storage(root_dir=str(tmp_path / "new" / "root"))
    assert storage.root.is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigurationError, match="not a directory"):
        Storage(root_dir=str(tmp_path / "file"))


def test_progress_bar_draws_to_its_stream() -> None:
    import io

    out = io.StringIO()
    bar = ProgressBar(stream=out, width=4, clock=iter([10.0, 12.0]).__next__)
    bar(0, 8)
    bar(8, 8)
    assert out.getvalue() == "\r[....]   0%  0 B / 8 B\r[####] 100%  8 B / 8 B  4 B/s\n"


def test_default_progress_is_logged(client: StorageClient, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jumpstarter_drivers.storage")
    source = tmp_path / "initramfs"
    source.write_bytes(b"\x00" * 2048)
    client.write_from_path("initramfs", source)
    client.read_into_path("initramfs", tmp_path / "copy")
    messages = [r.getMessage() for r in caplog.records if r.name == "jumpstarter_drivers.storage"]
    assert any(m.startswith("upload initramfs -> initramfs: 2048/2048 bytes (100%)") for m in messages), messages
    assert any(m.startswith(f"download initramfs -> {tmp_path / 'copy'}: 2048/2048 bytes (100%)") for m in messages)
    assert (tmp_path / "copy").read_bytes() == b"\x00" * 2048


def test_errors_do_not_reveal_the_root_path(client: StorageClient, root: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="driver.Storage")
    (root / "file").write_bytes(b"x")
    for call in (lambda: client.stat("ghost"), lambda: client.read_bytes("ghost"), lambda: client.hash("ghost"),
                 lambda: client.list("file"), lambda: client.read_bytes("../outside")):
        with pytest.raises(DriverError) as excinfo:
            call()
        assert str(tmp_path) not in str(excinfo.value)
    assert not [r for r in caplog.records if str(tmp_path) in r.getMessage()], "the refusal log reaches clients"


@pytest.mark.parametrize("root_dir", ["", "/", "~", "/etc", "/etc/network", "/usr", "/proc", "/home", "/tmp"])
def test_system_directories_are_refused_as_roots(root_dir: str) -> None:
    with pytest.raises(ConfigurationError, match=r"Storage: root_dir .* (is empty|system directory|home directory)"):
        Storage(root_dir=root_dir)


def test_a_link_to_a_system_directory_is_refused_as_root(tmp_path: Path) -> None:
    (tmp_path / "etc").symlink_to("/etc")
    with pytest.raises(ConfigurationError, match="system directory"):
        Storage(root_dir=str(tmp_path / "etc"))


def _killed_writer(root: Path) -> Path:
    """Leave a partial upload behind the way a writer killed with SIGKILL does."""
    import signal
    import subprocess
    import sys

    code = (
        "import sys\nfrom jumpstarter_drivers.storage import Storage\n"
        "storage = Storage(root_dir=sys.argv[1])\n"
        "target, temp, out = storage._begin_write('images/big.img')\n"
        "out.write(b'x' * 4096); out.flush()\n"
        "print(temp, flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        partial = Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        proc.stdin.close()
    return partial


def test_a_partial_file_of_a_killed_writer_is_removed_at_start(root: Path, tmp_path: Path) -> None:
    partial = _killed_writer(root)
    assert partial.is_file() and partial.name.endswith(".part")
    outside = tmp_path / ".outside.img.abcd.part"  # a partial-looking file outside the root, reached by a link
    outside.write_bytes(b"not ours")
    (root / "elsewhere").symlink_to(tmp_path)
    (root / ".linked.img.abcd.part").symlink_to(outside)
    Storage(root_dir=str(root))
    assert not partial.exists()
    assert outside.read_bytes() == b"not ours"
    assert (root / ".linked.img.abcd.part").is_symlink(), "a link is not a partial file of ours; it stays"


def test_a_partial_file_being_written_is_kept(root: Path) -> None:
    writer = Storage(root_dir=str(root))
    target, temp, out = writer._begin_write("image")
    try:
        with out:
            out.write(b"in progress")
            Storage(root_dir=str(root))  # a second exporter on the same root starts meanwhile
            assert temp.exists()
        writer._commit("image", target, temp)
    finally:
        temp.unlink(missing_ok=True)
    assert target.read_bytes() == b"in progress"


def test_os_errors_do_not_reveal_the_root_path(client: StorageClient, root: Path, tmp_path: Path) -> None:
    (root / "file").write_bytes(b"x")
    (root / "dir").mkdir()
    source = tmp_path / "source"
    source.write_bytes(b"payload")
    for call in (lambda: client.write_bytes("file/child", b"x"), lambda: client.write_from_path("file/child", source)):
        with pytest.raises(DriverError, match=r"'file/child': (File exists|Not a directory)") as excinfo:
            call()
        assert str(tmp_path) not in str(excinfo.value)


LONG = "x" * 300  # longer than a file name may be (255 bytes): the kernel answers ENAMETOOLONG


@pytest.mark.parametrize("name", [LONG, f"dir/{LONG}", f"{LONG}/file"])
def test_a_name_too_long_is_an_error_naming_it_not_the_root(client: StorageClient, root: Path, tmp_path: Path,
                                                             name: str) -> None:
    (root / "dir").mkdir()
    source = tmp_path / "source"
    source.write_bytes(b"payload")
    calls = {
        "exists": lambda: client.exists(name), "stat": lambda: client.stat(name),
        "read_bytes": lambda: client.read_bytes(name), "read_into_path": lambda: client.read_into_path(name, source),
        "hash": lambda: client.hash(name), "list": lambda: client.list(name), "delete": lambda: client.delete(name),
        "write_bytes": lambda: client.write_bytes(name, b"x"),
        "write_from_path": lambda: client.write_from_path(name, source),
    }
    for what, call in calls.items():
        with pytest.raises(DriverError, match="File name too long") as excinfo:
            call()
        assert str(tmp_path) not in str(excinfo.value), f"{what}: {excinfo.value}"
        assert repr(name) in str(excinfo.value), what


def test_the_home_directory_is_refused_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root the home directory (/root) is a system directory anyway: this user's home is checked on its own."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ConfigurationError, match=r"Storage: root_dir '~' is .*/home, the home directory"):
        Storage(root_dir="~")
    assert Storage(root_dir="~/tftp").root == home / "tftp"


def test_a_name_of_255_bytes_can_be_written(client: StorageClient, root: Path, tmp_path: Path) -> None:
    """The partial file beside it ('.NAME.XXXXXXXX.part') must fit in 255 bytes too."""
    name = "y" * 255
    assert client.write_bytes(name, b"data") == 4
    source = tmp_path / "source"
    source.write_bytes(b"more data")
    assert client.write_from_path(f"dir/{name}", source) == 9
    assert (root / name).read_bytes() == b"data" and (root / "dir" / name).read_bytes() == b"more data"
    assert sorted(p.name for p in root.rglob("*")) == ["dir", name, name]


@pytest.mark.parametrize("root_dir", [".", "./", "sub/..", "..", "{cwd}"])
def test_the_current_directory_or_one_holding_it_is_refused_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_dir: str
) -> None:
    """'' is refused as the current directory; '.' and every other name of it (or of a folder holding it) too."""
    cwd = tmp_path / "lab" / "exporter"
    (cwd / "sub").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    with pytest.raises(ConfigurationError, match=r"Storage: root_dir .* the current directory"):
        Storage(root_dir=root_dir.format(cwd=cwd))
    assert Storage(root_dir="tftp").root == cwd / "tftp"


@pytest.mark.parametrize("root_dir", ["~/.ssh", "~/.gnupg", "~/.config", "~/.config/tftp", "~/.aws/x"])
def test_hidden_folders_of_the_home_directory_are_refused_as_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root_dir: str
) -> None:
    """Keys and settings live there (~/.ssh, ~/.gnupg, ~/.config...): clients would read and replace them."""
    home = tmp_path / "home" / "alice"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ConfigurationError, match=r"Storage: root_dir .* is in .*/alice/\.\w+, a hidden folder of"):
        Storage(root_dir=root_dir)
    assert Storage(root_dir="~/lab/.tftp").root == home / "lab" / ".tftp"


def test_a_folder_holding_the_home_directory_is_refused_as_root(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "users" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ConfigurationError, match=r"Storage: root_dir .*/users' .* holds the home directory"):
        Storage(root_dir=str(tmp_path / "users"))
