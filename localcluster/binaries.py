"""Find, or build from the Go module proxy, the control-plane binaries.

Lookup order: ``$KUBEBUILDER_ASSETS`` (envtest's convention for pre-fetched
binaries), then the cache directory, else a build into that cache.
Kubernetes is not meant to be used as a Go dependency, so the build goes
through a throwaway wrapper module that pins every staging module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.0"
HELM_VERSION = "v3.22.0"
PROMETHEUS_VERSION = "v0.316.0"  # the Go module version of Prometheus 3.16.0

#: Binaries built from k8s.io/kubernetes, by name -> Go package.
KUBERNETES_COMMANDS = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
}
ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"
PROMTOOL_PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"

CONTROL_PLANE = ("etcd", "kube-apiserver", "kubectl")
ALL_BINARIES = ("etcd", *KUBERNETES_COMMANDS, "helm", "promtool")


class BinariesError(RuntimeError):
    """The binaries could not be found or built."""


def cache_dir() -> Path:
    """Where built binaries live: outside any checkout, shared by all of them."""
    base = os.environ.get("NODEIPAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nodeipam"
    )
    return Path(base) / f"k8s-{KUBERNETES_VERSION}"


def find_binary(name: str) -> Path | None:
    """Return the path of one binary if it is already present."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    candidates = [Path(assets) / name] if assets else []
    candidates.append(cache_dir() / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_binaries(names: tuple[str, ...] = CONTROL_PLANE) -> dict[str, Path]:
    """Return paths for ``names``, building whatever is missing into the cache."""
    missing = [name for name in names if find_binary(name) is None]
    if missing:
        build(missing)
    found = {name: find_binary(name) for name in names}
    absent = [name for name, path in found.items() if path is None]
    if absent:
        raise BinariesError(f"binaries still missing after the build: {', '.join(absent)}")
    return {name: path for name, path in found.items() if path is not None}


def _progress(message: str) -> None:
    print(f"[nodeipam binaries] {message}", file=sys.stderr, flush=True)


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    _progress("go " + " ".join(args))
    result = subprocess.run(["go", *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=sys.stderr)
    if result.returncode != 0:
        raise BinariesError(f"'go {' '.join(args)}' failed with exit code {result.returncode}")
    return result.stdout


def _staging_replacements(workdir: Path, env: dict[str, str]) -> list[str]:
    """The staging modules that k8s.io/kubernetes replaces with ./staging paths."""
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], workdir, env))
    gomod = Path(info["GoMod"]).read_text()
    modules = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, flags=re.MULTILINE)
    if not modules:
        raise BinariesError("no staging replacements found in k8s.io/kubernetes go.mod")
    staging_version = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
    return [f"-replace={module}={module}@{staging_version}" for module in sorted(set(modules))]


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.removeprefix("v").split(".")[:2]
    flags = []
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={KUBERNETES_VERSION}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    return "-s -w " + " ".join(flags)


def build(names: list[str]) -> None:
    """Build ``names`` into the cache (the cold build takes ~10 minutes on 2 cores)."""
    if shutil.which("go") is None:
        raise BinariesError("Go is needed to build the control-plane binaries; install Go 1.26+")
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    _progress(f"building {', '.join(names)} into {target} (cold: ~10 minutes, once per machine)")
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false", GOTOOLCHAIN="local")
    with tempfile.TemporaryDirectory(prefix="nodeipam-build-") as tmp:
        workdir = Path(tmp)
        kube = [name for name in names if name in KUBERNETES_COMMANDS]
        if kube or "etcd" in names:
            _go(["mod", "init", "nodeipam.local/controlplane"], workdir, env)
            if kube:
                _go(["mod", "edit", *_staging_replacements(workdir, env)], workdir, env)
            imports = [KUBERNETES_COMMANDS[name] for name in kube]
            if "etcd" in names:
                imports.append(ETCD_PACKAGE)
            (workdir / "tools.go").write_text(
                "//go:build tools\n\npackage tools\n\nimport (\n" + "".join(f'\t_ "{package}"\n' for package in imports) + ")\n"
            )
            wanted = [f"k8s.io/kubernetes@{KUBERNETES_VERSION}"] if kube else []
            if "etcd" in names:
                wanted.append(f"{ETCD_PACKAGE}@{ETCD_VERSION}")
            _go(["get", *wanted], workdir, env)
            _go(["mod", "tidy"], workdir, env)
            for name in kube:
                out = str(target / (name + ".tmp"))
                _go(["build", "-ldflags", _version_ldflags(), "-o", out, KUBERNETES_COMMANDS[name]], workdir, env)
                os.replace(out, target / name)
            if "etcd" in names:
                out = str(target / "etcd.tmp")
                _go(["build", "-ldflags", "-s -w", "-o", out, ETCD_PACKAGE], workdir, env)
                os.replace(out, target / "etcd")
        if "helm" in names:
            gobin = workdir / "gobin"
            ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
            _go(["install", "-ldflags", ldflags, f"{HELM_PACKAGE}@{HELM_VERSION}"], workdir, dict(env, GOBIN=str(gobin)))
            shutil.move(str(gobin / "helm"), target / "helm")
        if "promtool" in names:  # checks and unit-tests the chart's alerts and dashboard queries
            gobin = workdir / "gobin"
            package = f"{PROMTOOL_PACKAGE}@{PROMETHEUS_VERSION}"
            _go(["install", "-ldflags", "-s -w", package], workdir, dict(env, GOBIN=str(gobin)))
            shutil.move(str(gobin / "promtool"), target / "promtool")
    _progress("done")


def main() -> None:
    """``python -m localcluster.binaries [names...]``: warm the cache."""
    names = tuple(sys.argv[1:]) or ALL_BINARIES
    for name, path in ensure_binaries(names).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
