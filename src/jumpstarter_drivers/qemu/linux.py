"""A real Linux for the QEMU board, built from Debian's arm64 packages, as a flasher bundle.

``./run tests`` (as root) downloads ``linux-image-*-cloud-arm64`` and ``busybox-static`` for arm64
into :data:`DEBS_DIR` with ``apt-get download`` (nothing is installed on the host). From them
:func:`build_linux` makes a kernel ``Image`` and an initramfs: busybox, the virtio modules the
board needs (with their dependencies, read from each module's ``.modinfo``), and an init that
brings up ``eth0`` from the kernel command line (``jt.ip=ADDR jt.mask=MASK``), serves
``/www`` with busybox ``httpd`` on port 80, and runs a ``getty`` with a password login on the
console. The result is cached by the packages' names. :func:`make_linux_bundle` lays it out as
a flasher bundle, so U-Boot loads kernel, initramfs and device tree over TFTP and boots them
exactly as the flasher's ``busybox`` method does.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import JumpstarterError
from .driver import DEFAULT_BIOS

#: Where ``./run`` puts the downloaded arm64 packages (``JT_ARM64_DEBS`` overrides it).
DEBS_DIR = Path(os.environ.get("JT_ARM64_DEBS", "~/.cache/jumpstarter-toolkit/debs-arm64")).expanduser()
#: Where built images are cached.
CACHE_DIR = Path("~/.cache/jumpstarter-toolkit/linux-arm64").expanduser()
#: The modules the QEMU ``virt`` board needs, loaded in this order after their dependencies.
MODULES = ("virtio_mmio", "virtio_blk", "virtio_net")
USERNAME = "root"
PASSWORD = "jumpstarter"
HOSTNAME = "qemuboard"
#: Bumped whenever the initramfs layout changes, so cached builds are not reused.
LAYOUT_VERSION = "3"

INITTAB = """\
::sysinit:/etc/rcS
::respawn:/bin/getty -L 115200 ttyAMA0 vt100
::shutdown:/bin/umount -a -r
"""

RCS = """\
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /root /www
mount -t devpts devpts /dev/pts
for module in $(cat /etc/modules); do insmod /lib/modules/$module.ko; done
hostname -F /etc/hostname
ifconfig lo 127.0.0.1 up
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        jt.ip=*) ip="${arg#jt.ip=}" ;;
        jt.mask=*) mask="${arg#jt.mask=}" ;;
    esac
done
if [ -n "$ip" ]; then
    ifconfig eth0 "$ip" netmask "${mask:-255.255.255.0}" up
fi
echo "this is the QEMU board" > /www/index.html
httpd -p 80 -h /www
echo "jumpstarter: init done"
"""

PROFILE = """\
export PS1='\\h:\\w# '
export PATH=/bin:/sbin
"""


class LinuxUnavailable(JumpstarterError):
    """The arm64 packages the QEMU board's Linux is built from are not here."""


@dataclass(frozen=True)
class LinuxImage:
    """A built kernel and initramfs, and the kernel version they belong to."""

    kernel: Path
    initramfs: Path
    version: str


def find_debs(debs_dir: Path = DEBS_DIR) -> tuple[Path, Path]:
    """The kernel and busybox packages in ``debs_dir`` (the newest kernel when several)."""
    kernels = sorted(debs_dir.glob("linux-image-*-arm64_*_arm64.deb")) if debs_dir.is_dir() else []
    busybox = sorted(debs_dir.glob("busybox-static_*_arm64.deb")) if debs_dir.is_dir() else []
    if not kernels or not busybox:
        raise LinuxUnavailable(
            f"no arm64 kernel and busybox-static packages in {debs_dir}; './run tests' downloads them as root "
            "(dpkg --add-architecture arm64; apt-get download linux-image-cloud-arm64's kernel and busybox-static:arm64)"
        )
    return kernels[-1], busybox[-1]


def build_linux(cache_dir: Path = CACHE_DIR, debs_dir: Path = DEBS_DIR) -> LinuxImage:
    """Kernel and initramfs for the QEMU board, built once per package set and cached."""
    kernel_deb, busybox_deb = find_debs(debs_dir)
    if shutil.which("dpkg-deb") is None:
        raise LinuxUnavailable("dpkg-deb is not installed (Debian package dpkg)")
    key = hashlib.sha256(f"{kernel_deb.name}\n{busybox_deb.name}\n{LAYOUT_VERSION}".encode()).hexdigest()[:16]
    out = cache_dir / key
    image = LinuxImage(out / "Image", out / "initramfs.cpio", (out / "version").read_text().strip()
                       if (out / "version").is_file() else "")
    if image.version and image.kernel.is_file() and image.initramfs.is_file():
        return image
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="linux-arm64-") as temp:
        root = Path(temp)
        for deb in (kernel_deb, busybox_deb):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=300)
        kernel = next((root / "boot").glob("vmlinuz-*"))
        version = kernel.name.removeprefix("vmlinuz-")
        modules = resolve_modules(root / "lib" / "modules" / version, MODULES)
        staging = out / ".Image.staging"
        shutil.copyfile(kernel, staging)
        os.replace(staging, out / "Image")
        cpio = initramfs((root / "bin" / "busybox").read_bytes(), modules)
        (out / ".initramfs.staging").write_bytes(cpio)
        os.replace(out / ".initramfs.staging", out / "initramfs.cpio")
    (out / "version").write_text(version + "\n")
    return LinuxImage(out / "Image", out / "initramfs.cpio", version)


def modinfo(module: bytes) -> dict[str, str]:
    """The ``key=value`` strings of a kernel module's ``.modinfo`` section (64-bit little-endian ELF)."""
    if module[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", module, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", module, shoff + index * shentsize)
        return name, offset, size

    _, names_at, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if module[names_at + name : module.index(b"\0", names_at + name)] == b".modinfo":
            entries = module[offset : offset + size].split(b"\0")
            return dict(e.decode(errors="replace").split("=", 1) for e in entries if b"=" in e)
    return {}


def resolve_modules(modules_dir: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """``(name, contents)`` of ``wanted`` and every module they depend on, dependencies first."""
    files = {p.name.split(".ko")[0].replace("-", "_"): p for p in modules_dir.rglob("*.ko")}
    ordered: list[tuple[str, bytes]] = []

    def add(name: str, chain: tuple[str, ...]) -> None:
        if name in chain:
            raise ValueError(f"module dependency loop: {' -> '.join(chain + (name,))}")
        if any(n == name for n, _ in ordered):
            return
        if name not in files:
            raise LinuxUnavailable(f"kernel module {name} is not in {modules_dir}")
        data = files[name].read_bytes()
        for dep in filter(None, modinfo(data).get("depends", "").split(",")):
            add(dep.replace("-", "_"), chain + (name,))
        ordered.append((name, data))

    for name in wanted:
        add(name, ())
    return ordered


def initramfs(busybox: bytes, modules: list[tuple[str, bytes]]) -> bytes:
    """An uncompressed ``newc`` cpio archive: busybox, the modules, the init scripts and accounts."""
    archive = _Cpio()
    for directory in ("bin", "sbin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "root", "www"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)  # init's stdio, before devtmpfs is mounted
    archive.file("bin/busybox", busybox, 0o755)
    for link in ("init", "bin/sh"):
        archive.symlink(link, "/bin/busybox")
    archive.symlink("sbin/init", "/bin/busybox")
    for name, data in modules:
        archive.file(f"lib/modules/{name}.ko", data, 0o644)
    files = {
        "etc/modules": "\n".join(name for name, _ in modules) + "\n",
        "etc/inittab": INITTAB,
        "etc/hostname": HOSTNAME + "\n",
        "etc/passwd": f"{USERNAME}:x:0:0:root:/root:/bin/sh\n",
        "etc/group": "root:x:0:\n",
        "etc/shadow": f"{USERNAME}:{password_hash(PASSWORD)}:19000:0:99999:7:::\n",
        "etc/profile": PROFILE,
        "etc/issue": "Jumpstarter QEMU board\n\n",
    }
    for path, text in files.items():
        archive.file(path, text.encode(), 0o600 if path == "etc/shadow" else 0o644)
    archive.file("etc/rcS", RCS.encode(), 0o755)
    # busybox finds its applets as links named after them; --install would need a writable /bin at boot
    for applet in APPLETS:
        archive.symlink(f"bin/{applet}", "/bin/busybox")
    return archive.finish()


#: Busybox applets linked in /bin (what init, the login, the flasher and the shell client use).
APPLETS = (
    "base64", "cat", "chmod", "dd", "dmesg", "echo", "false", "getty", "head", "hostname", "httpd", "ifconfig",
    "insmod", "login", "ls", "mkdir", "mount", "poweroff", "printf", "readlink", "reboot", "rm", "sha256sum",
    "sleep", "stty", "sync", "tail", "telnetd", "true", "umount", "uname", "wc", "wget",
)


def password_hash(password: str) -> str:
    """A SHA-512 crypt hash of ``password`` (what busybox ``login`` checks), made by ``openssl passwd``."""
    if shutil.which("openssl") is None:
        raise LinuxUnavailable("openssl is not installed (Debian package openssl); it hashes the board's password")
    done = subprocess.run(["openssl", "passwd", "-6", "-salt", "jumpstarter", password],
                          check=True, capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


class _Cpio:
    """Writes a ``newc`` cpio archive (the format the kernel unpacks as an initramfs)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 1

    def _entry(self, name: str, mode: int, data: bytes, rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.inode += 1
        self.out.write(header + encoded)
        self.out.write(b"\0" * (-self.out.tell() % 4))
        self.out.write(data)
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, b"")

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, b"", (major, minor))

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return self.out.getvalue()


#: Where U-Boot loads the bundle's files on the ``virt`` board (RAM starts at 0x40000000).
KERNEL_ADDRESS = 0x40400000
DTB_ADDRESS = 0x47000000
INITRAMFS_ADDRESS = 0x48000000
#: Kernel command line of a boot that cannot find its init: the kernel panics (see the ``panic`` variant).
PANIC_ARGS = "rdinit=/no/such/init root=/dev/nowhere"


def dump_dtb(path: Path, qemu: str = "qemu-system-aarch64", machine: str = "virt", cpu: str = "cortex-a57",
             memory_mb: int = 1024, bios: str = DEFAULT_BIOS) -> Path:
    """The device tree QEMU gives its ``machine`` booting ``bios`` (what U-Boot hands to Linux), written
    to ``path``. The firmware matters: without it QEMU describes devices the board with U-Boot lacks."""
    done = subprocess.run(
        [qemu, "-M", f"{machine},dumpdtb={path}", "-cpu", cpu, "-m", str(memory_mb), "-nodefaults", "-display", "none",
         "-bios", bios],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if done.returncode != 0 or not path.is_file():
        raise LinuxUnavailable(f"QEMU could not dump the {machine} device tree: {done.stderr.strip()[-500:]}")
    return path


def make_linux_bundle(directory: Path, image: LinuxImage, dtb: Path, ipaddr: str, netmask: str) -> Path:
    """Lay ``image`` and ``dtb`` out as a flasher bundle in ``directory`` that boots with ``eth0`` at
    ``ipaddr``; its DTB variant ``panic`` boots a kernel that cannot find its init (for panic tests)."""
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    for source, name in ((image.kernel, "Image"), (image.initramfs, "initramfs.cpio"), (dtb, "virt.dtb")):
        target = data / name
        if not target.exists():
            shutil.copyfile(source, target)
    initrd = f"{INITRAMFS_ADDRESS:#x}:{image.initramfs.stat().st_size:#x}"

    def bootcmd(extra: str = "") -> str:
        args = f"console=ttyAMA0 jt.ip={ipaddr} jt.mask={netmask} {extra}".strip()
        return f"setenv bootargs '{args}'; booti {KERNEL_ADDRESS:#x} {initrd} {DTB_ADDRESS:#x}"

    manifest = f"""\
apiVersion: jumpstarter.dev/v1alpha1
kind: FlashBundleManifest
metadata:
  name: qemu-linux-{image.version}
spec:
  manufacturer: Debian arm64 packages, assembled by the Jumpstarter toolkit
  link: null
  bootcmd: "{bootcmd()}"
  shelltype: busybox
  login:
    login_prompt: "login:"
    username: {USERNAME}
    password: {PASSWORD}
    prompt: "#"
  default_target: usd
  targets:
    usd: /dev/vda
  preflash_commands: []
  kernel:
    file: data/Image
    address: "{KERNEL_ADDRESS:#x}"
  initram:
    file: data/initramfs.cpio
    address: "{INITRAMFS_ADDRESS:#x}"
  dtb:
    default: virt
    address: "{DTB_ADDRESS:#x}"
    variants:
      virt:
        file: data/virt.dtb
      panic:
        bootcmd: "{bootcmd(PANIC_ARGS)}"
"""
    (directory / "manifest.yaml").write_text(manifest)
    return directory
