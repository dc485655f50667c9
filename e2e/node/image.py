"""The controller's image, built from the project's Dockerfile by ``docker build``, as a user builds it.

No registry is reachable here, so the Dockerfile's base (``python:3.11-slim``) cannot be pulled: the
build gets another base through the Dockerfile's ``BASE`` argument, made from Debian bookworm's
packages (same Python minor version, same layout: ``python`` on PATH, pip in the base interpreter).
The host's CA bundle goes into that base with a pip.conf naming it, so pip in the build verifies
this network's TLS. The Dockerfile itself is used unchanged.

When no Docker daemon answers, one is started for the build in a temporary directory (its own
data root, exec root, socket, no iptables rules) and stopped afterwards, which removes every image
it made; with a running daemon, the images made here are removed by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

from e2e.node import assets
from e2e.node.realnode import mounts_under

ROOT = Path(__file__).resolve().parents[2]
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REPOSITORY = "nodeipam"

BASE_DOCKERFILE = """\
FROM {imported}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY pip.conf /etc/pip.conf
# Debian marks its Python as externally managed and ships pip only as the wheel venv uses: install that.
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \\
 && wheel=$(ls /usr/share/python-wheels/pip-*.whl) \\
 && python3 "$wheel/pip" install --no-index --no-cache-dir "$wheel" \\
 && ln -s /usr/bin/python3 /usr/local/bin/python \\
 && python -m pip --version
"""


def docker_client() -> str:
    """The docker client shipped beside dockerd (a newer client elsewhere on PATH may not speak to it)."""
    dockerd = shutil.which("dockerd")
    if dockerd:
        beside = Path(dockerd).resolve().parent.parent / "bin" / "docker"
        if beside.is_file():
            return str(beside)
    found = shutil.which("docker")
    if found is None:
        raise RuntimeError("no docker client: apt-get install docker.io")
    return found


class Docker:
    """A Docker daemon to build with: the running one, else our own until ``stop()``."""

    def __init__(self) -> None:
        self.client = docker_client()
        self.env = dict(os.environ)
        self.dir: Path | None = None
        self._daemon: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.images: list[str] = []
        if not self._answers(self.env):
            self._start_daemon()

    def _answers(self, env: dict[str, str]) -> bool:
        result = subprocess.run([self.client, "info"], capture_output=True, env=env, timeout=60)
        return result.returncode == 0

    def _start_daemon(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="nodeipam-docker-"))
        socket = self.dir / "docker.sock"
        self._log = open(self.dir / "dockerd.log", "ab")  # noqa: SIM115 - closed in stop()
        self._daemon = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={self.dir / 'data'}",
                f"--exec-root={self.dir / 'exec'}",
                f"--pidfile={self.dir / 'dockerd.pid'}",
                f"--host=unix://{socket}",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.env["DOCKER_HOST"] = f"unix://{socket}"
        deadline = time.monotonic() + 60
        while not (socket.exists() and self._answers(self.env)):
            if self._daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not start; log: {(self.dir / 'dockerd.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def run(self, *args: str, stdin: IO[bytes] | None = None, cwd: Path | None = None) -> str:
        result = subprocess.run(
            [self.client, *args],
            stdin=stdin,
            capture_output=True,
            env=dict(self.env, DOCKER_BUILDKIT="0"),
            cwd=cwd,
            timeout=900,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise RuntimeError(f"docker {' '.join(args[:2])} failed:\n{output[-4000:]}")
        return result.stdout.decode(errors="replace")

    def status(self, *args: str) -> tuple[int, str]:
        """Run a docker command that may fail; its exit status and output."""
        result = subprocess.run([self.client, *args], capture_output=True, text=True, env=self.env, timeout=300)
        return result.returncode, result.stdout + result.stderr

    def stop(self) -> None:
        if self._daemon is None:
            for image in reversed(self.images):
                with contextlib.suppress(RuntimeError):
                    self.run("rmi", "--force", image)
            return
        self._daemon.terminate()
        try:
            self._daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._daemon.kill()
            self._daemon.wait()
        if self._log is not None:
            self._log.close()
        if self.dir is not None:
            for point in mounts_under(self.dir):
                subprocess.run(["umount", "-l", point], capture_output=True)
            shutil.rmtree(self.dir, ignore_errors=True)


def build_images(docker: Docker, archive: Path, tags: tuple[str, ...]) -> list[str]:
    """Build the project's Dockerfile on a Debian base, tag it ``nodeipam:<tag>`` for each tag, save all to ``archive``."""
    suffix = uuid.uuid4().hex[:8]
    imported = f"nodeipam-debian:{suffix}"
    base = f"nodeipam-base:{suffix}"
    with open(assets.base_rootfs_archive(), "rb") as rootfs:
        docker.run("import", "-", imported, stdin=rootfs)
    docker.images.append(imported)
    with tempfile.TemporaryDirectory(prefix="nodeipam-base-") as context:
        directory = Path(context)
        shutil.copy(HOST_CA_BUNDLE, directory / "ca-certificates.crt")
        (directory / "pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
        (directory / "Dockerfile").write_text(BASE_DOCKERFILE.format(imported=imported))
        docker.run("build", "--network=host", "-t", base, str(directory))
    docker.images.append(base)
    names = [f"{REPOSITORY}:{tag}" for tag in tags]
    docker.run("build", "--network=host", "--build-arg", f"BASE={base}", "-t", names[0], str(ROOT))
    docker.images.append(names[0])
    for name in names[1:]:
        docker.run("tag", names[0], name)
        docker.images.append(name)
    docker.run("save", "-o", str(archive), *names)
    return names
