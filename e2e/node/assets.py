"""Build, once per machine, what a real Node needs beyond the control plane, into the binary cache.

No registry is reachable where the suite runs, so nothing here is pulled: flanneld and flannel's CNI
plugin come from the Go module proxy, the sandbox ("pause") image is a static Go binary in a one-layer
image archive, and the base of the controller's image is made with debootstrap from the Debian mirror
apt already uses. Everything lands under the cache (``$NODEIPAM_CACHE``, else ``~/.cache/nodeipam``),
beside the Kubernetes binaries; ``make node-assets`` warms it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from localcluster.binaries import BinariesError, cache_dir, ensure_binaries

FLANNEL_VERSION = "v0.27.4"
FLANNEL_PACKAGE = "github.com/flannel-io/flannel"
#: flannel's CNI plugin: its own repository is not served by the proxy; this older copy is (gone from v1.0).
FLANNEL_CNI_VERSION = "v0.9.1"
FLANNEL_CNI_PACKAGE = "github.com/containernetworking/plugins/plugins/meta/flannel"
#: The sandbox image our containerd is configured with: built here, never pulled.
PAUSE_IMAGE = "nodeipam.local/pause:1"
DEBIAN_SUITE = "bookworm"
#: Kubernetes binaries a real Node adds to the control plane.
NODE_BINARIES = ("etcd", "kube-apiserver", "kubectl", "helm", "kube-scheduler", "kube-controller-manager", "kubelet")

PAUSE_SOURCE = """package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

// Waits for SIGTERM or SIGINT, as the sandbox container of a pod does.
func main() {
\tsignals := make(chan os.Signal, 1)
\tsignal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
\t<-signals
}
"""


def assets_dir() -> Path:
    return cache_dir().parent / "node"


def flanneld() -> Path:
    return assets_dir() / "flanneld"


def flannel_cni_plugin() -> Path:
    """A directory holding only the plugin named ``flannel``, to sit beside Debian's plugins."""
    return assets_dir() / "cni" / "flannel"


def pause_archive() -> Path:
    return assets_dir() / "pause.tar"


def base_rootfs_archive() -> Path:
    return assets_dir() / f"debian-{DEBIAN_SUITE}-python3.tar"


def _progress(message: str) -> None:
    print(f"[nodeipam node-assets] {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kwargs: object) -> None:
    _progress(" ".join(argv))
    result = subprocess.run(argv, stdout=sys.stderr, stderr=sys.stderr, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise BinariesError(f"{argv[0]} failed with exit code {result.returncode}: {' '.join(argv)}")


def _go_env() -> dict[str, str]:
    if shutil.which("go") is None:
        raise BinariesError("Go is needed to build flannel and the pause binary; install Go 1.26+")
    return dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false", GOTOOLCHAIN="local")


def _go_install(package: str, version: str, target: Path, cgo: bool = False) -> None:
    """``go install package@version`` into a temporary GOBIN, then move the binary into place atomically."""
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(_go_env(), CGO_ENABLED="1" if cgo else "0")
    if cgo and shutil.which("gcc") is None:
        raise BinariesError(f"{package} needs cgo: apt-get install gcc")
    with tempfile.TemporaryDirectory(prefix="nodeipam-gobin-", dir=target.parent) as gobin:
        _run(["go", "install", "-ldflags=-s -w", f"{package}@{version}"], env=dict(env, GOBIN=gobin))
        built = Path(gobin) / package.rsplit("/", 1)[-1]
        os.replace(built, target)


def _layer(files: dict[str, tuple[bytes, int]]) -> bytes:
    """An uncompressed layer tar of ``path -> (content, mode)``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, (content, mode) in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def write_image_archive(target: Path, tag: str, files: dict[str, tuple[bytes, int]], entrypoint: list[str]) -> None:
    """A one-layer image archive in ``docker save``'s layout, which ``ctr images import`` reads.

    The config names os and architecture: without them containerd filters the image out.
    """
    layer = _layer(files)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
    partial = target.with_suffix(".tmp")
    with tarfile.open(partial, mode="w") as archive:
        for name, content in (("layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    os.replace(partial, target)


def build_pause() -> None:
    if pause_archive().is_file():
        return
    assets_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nodeipam-pause-") as tmp:
        workdir = Path(tmp)
        (workdir / "go.mod").write_text("module nodeipam.local/pause\n\ngo 1.21\n")
        (workdir / "main.go").write_text(PAUSE_SOURCE)
        _run(["go", "build", "-ldflags=-s -w", "-o", "pause", "."], cwd=workdir, env=_go_env())
        binary = (workdir / "pause").read_bytes()
    write_image_archive(pause_archive(), PAUSE_IMAGE, {"pause": (binary, 0o755)}, ["/pause"])


def debian_mirror() -> str:
    """The Debian mirror apt uses here (sources.list or deb822 .sources), else the public one."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for pattern in (r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+\s+main", r"^URIs:\s*(\S+)"):
            for url in re.findall(pattern, text, flags=re.MULTILINE):
                if "security" not in url:
                    return str(url)
    return "http://deb.debian.org/debian"


def build_base_rootfs() -> None:
    """Debian bookworm with python3 + venv, as a rootfs tar that ``docker import`` takes."""
    if base_rootfs_archive().is_file():
        return
    if shutil.which("debootstrap") is None:
        raise BinariesError("debootstrap is needed for the image base: apt-get install debootstrap")
    assets_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nodeipam-rootfs-", dir=assets_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                DEBIAN_SUITE,
                str(rootfs),
                debian_mirror(),
            ]
        )
        partial = base_rootfs_archive().with_suffix(".tmp")
        _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."])
        os.replace(partial, base_rootfs_archive())


def ensure_node_assets() -> None:
    """Everything a real Node needs, built where missing."""
    ensure_binaries(NODE_BINARIES)
    _go_install(FLANNEL_PACKAGE, FLANNEL_VERSION, flanneld(), cgo=True)  # its udp backend is C
    _go_install(FLANNEL_CNI_PACKAGE, FLANNEL_CNI_VERSION, flannel_cni_plugin())
    build_pause()
    build_base_rootfs()


def missing_assets() -> list[str]:
    """What is not built yet (the suite builds it on first use; ``make node-assets`` does it ahead)."""
    paths = [flanneld(), flannel_cni_plugin(), pause_archive(), base_rootfs_archive()]
    return [str(path) for path in paths if not path.is_file()]


def main() -> None:
    """``python -m e2e.node.assets [flannel|pause|base|kubernetes ...]``: warm the cache."""
    wanted = set(sys.argv[1:]) or {"kubernetes", "flannel", "pause", "base"}
    if "kubernetes" in wanted:
        ensure_binaries(NODE_BINARIES)
    if "flannel" in wanted:
        _go_install(FLANNEL_PACKAGE, FLANNEL_VERSION, flanneld(), cgo=True)  # its udp backend is C
        _go_install(FLANNEL_CNI_PACKAGE, FLANNEL_CNI_VERSION, flannel_cni_plugin())
    if "pause" in wanted:
        build_pause()
    if "base" in wanted:
        if os.geteuid() != 0 or shutil.which("debootstrap") is None:
            _progress("not building the image base: it needs root and debootstrap (apt-get install debootstrap)")
        else:
            build_base_rootfs()
    _progress(f"ready in {assets_dir()}")


if __name__ == "__main__":
    main()
