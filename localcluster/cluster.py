"""A real etcd + kube-apiserver on loopback, in a temporary directory.

Shared by the tests, the demo (`make demo`) and the benchmarks. It is a real API
server (validation, 422s, watches, RBAC), not a mock; it starts in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from localcluster.binaries import ensure_binaries

ADMIN_TOKEN = "nodeipam-admin-token"
#: A second cluster-admin, whose every request the API server's audit log records (and no other's).
AUDITED_TOKEN = "nodeipam-audited-token"
AUDITED_USER = "audited"
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  users: ["{AUDITED_USER}"]
- level: None
"""
STARTUP_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalControlPlane:
    """etcd + kube-apiserver; use as a context manager, or start()/stop()."""

    def __init__(
        self,
        service_cidr: str = "10.96.0.0/12",
        extra_apiserver_flags: tuple[str, ...] = (),
        keep_dir: bool = False,
        apiserver_env: Mapping[str, str] | None = None,
    ) -> None:
        self.service_cidr = service_cidr
        self.extra_apiserver_flags = extra_apiserver_flags
        self.apiserver_env = dict(apiserver_env or {})  # added to kube-apiserver's environment (e.g. GODEBUG)
        self.keep_dir = keep_dir
        self.binaries = ensure_binaries()
        self.workdir = Path(tempfile.mkdtemp(prefix="nodeipam-cp-"))
        self.port = 0
        self.server = ""
        self.kubeconfig = str(self.workdir / "kubeconfig")
        self.audit_log = self.workdir / "audit.log"  # the audited user's requests, one JSON event per line
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._argv: dict[str, list[str]] = {}  # name -> command line, to restart in place
        self._by_name: dict[str, subprocess.Popen[bytes]] = {}
        #: name -> time.monotonic() when it was last started: a Go runtime's trace counts from about then.
        self.spawned_at: dict[str, float] = {}

    def __enter__(self) -> LocalControlPlane:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        try:
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self._processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        for handle in self._logs:
            handle.close()
        self._logs.clear()
        if not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kubectl(self, *args: str, check: bool = True, input_text: str | None = None) -> str:
        """Run kubectl against this control plane and return its stdout."""
        result = subprocess.run(
            [str(self.binaries["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            text=True,
            capture_output=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def controller_command(self, cluster_cidr: str, *flags: str, module: Sequence[str] = ("controller",)) -> list[str]:
        """`nodeipam run` against this control plane (its kubeconfig and service range), then `flags`.

        One command line for the demo and the benchmarks. `module`: what
        `python -m` runs, the controller or a wrapper that takes its arguments.
        """
        return [
            sys.executable,
            "-m",
            *module,
            "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--cluster-cidr={cluster_cidr}",
            f"--service-cluster-ip-range={self.service_cidr}",
            *flags,
        ]

    def audited_kubeconfig(self) -> str:
        """A kubeconfig for the audited user (cluster-admin too): its every request is in `audited_requests()`."""
        path = self.workdir / "kubeconfig-audited"
        path.write_text(Path(self.kubeconfig).read_text().replace(ADMIN_TOKEN, AUDITED_TOKEN))
        return str(path)

    def audited_requests(self) -> list[dict[str, object]]:
        """The audit log's events (the audited user's requests, once answered), oldest first."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def env(self) -> dict[str, str]:
        """An environment whose KUBECONFIG points here."""
        return dict(os.environ, KUBECONFIG=self.kubeconfig)

    def pid(self, name: str) -> int:
        """The process ID of "etcd" or "kube-apiserver", for benchmarks that read its CPU time."""
        return self._by_name[name].pid

    def restart_apiserver(self, kill: bool = False) -> None:
        """Stop kube-apiserver (SIGTERM, or SIGKILL) and start it again: same port, flags and certificates."""
        self._restart("kube-apiserver", kill)

    def restart_etcd(self, kill: bool = False) -> None:
        """Stop etcd (SIGTERM, or SIGKILL) and start it again on the same ports and data; waits until the API serves."""
        self._restart("etcd", kill)

    def _restart(self, name: str, kill: bool) -> None:
        process = self._by_name[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        index = self._processes.index(process)
        self._processes.remove(process)
        restarted = self._spawn(name, self._argv[name])
        self._processes.remove(restarted)
        self._processes.insert(index, restarted)  # stop() ends them in reverse start order
        self._wait_ready()

    # -- pieces ------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop(); appended to on a restart
        self._logs.append(log)
        env = dict(os.environ, **self.apiserver_env) if name == "kube-apiserver" and self.apiserver_env else None
        self.spawned_at[name] = time.monotonic()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self._processes.append(process)
        self._argv[name] = argv
        self._by_name[name] = process
        return process

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(self.binaries["etcd"]),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                # 100,000 realistic Nodes, each written twice (created, then given its podCIDR), pass etcd's
                # default 2 GiB before the API server's compaction frees their old revisions.
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        certs = self.workdir / "certs"
        certs.mkdir()
        subprocess.run(["openssl", "genrsa", "-out", str(certs / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "rsa", "-in", str(certs / "sa.key"), "-pubout", "-out", str(certs / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (self.workdir / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},admin,admin,"system:masters"\n{AUDITED_TOKEN},{AUDITED_USER},{AUDITED_USER},"system:masters"\n'
        )
        (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries["kube-apiserver"]),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={certs}",
                f"--token-auth-file={self.workdir / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={certs / 'sa.pub'}",
                f"--service-account-signing-key-file={certs / 'sa.key'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                *self.extra_apiserver_flags,
            ],
        )

    def _write_kubeconfig(self) -> None:
        Path(self.kubeconfig).write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {self.server}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {ADMIN_TOKEN}
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
"""
        )

    def _wait_ready(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for path in ("/readyz", "/api/v1/namespaces/kube-system", "/api/v1/namespaces/default"):
            while True:
                for process in self._processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"{process.args!r} exited with {process.returncode}; logs in {self.workdir}")
                request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                with (
                    contextlib.suppress(urllib.error.URLError, ConnectionError, OSError),
                    urllib.request.urlopen(request, context=context, timeout=5) as response,
                ):
                    if response.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the API server did not become ready at {path}; logs in {self.workdir}")
                time.sleep(0.2)
