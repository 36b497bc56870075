"""Frame-sized buffers stay in the process's heap instead of being faulted in again per frame."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

glibc_only = pytest.mark.skipif(
    not hasattr(os, "confstr") or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc's allocator only"
)

#: An upload through a session served in a fresh process; prints minor page faults per MiB moved.
UPLOAD = textwrap.dedent(
    """
    import resource, sys, threading
    sys.path.insert(0, sys.argv[1])
    from sample_drivers import Sample
    from jumpstarter_drivers import serve

    size, chunk = 64 << 20, b"u" * (64 << 10)
    with serve(Sample()) as client:
        def upload():
            with client.resource() as (handle, stream):
                result = []
                caller = threading.Thread(target=lambda: result.append(client.call("upload_size", handle)))
                caller.start()
                for _ in range(size // len(chunk)):
                    stream.send(chunk)
                stream.send_eof()
                caller.join(60)
                assert result == [size], result

        upload()  # warm up: the heap grows to its working size once
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        upload()
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (size >> 20))
    """
)


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@glibc_only
def test_an_upload_does_not_fault_its_frames_in_again():
    # glibc's defaults: about 240 faults per MiB uploaded (every page of every received frame)
    faults_per_mib = float(_run(UPLOAD, os.path.dirname(__file__)))
    assert faults_per_mib < 32, f"{faults_per_mib:.0f} page faults per MiB uploaded"


@glibc_only
def test_keep_frame_buffers_applies_once_and_yields_to_the_users_tunables():
    code = "from jumpstarter_drivers.core.allocator import keep_frame_buffers as k; print(k(), k())"
    assert _run(code) == "True True"
    tuned = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1048576"}
    assert _run(code, env=tuned) == "False False"
    assert _run(code, env={"MALLOC_MMAP_THRESHOLD_": "1048576"}) == "False False"
