"""A real etcd + kube-apiserver for the session, and the controller as a real process."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from localcluster.binaries import ensure_binaries
from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane, free_port
from localcluster.nodebodies import realistic_node
from tests.conftest import wait_for
from tests.faultproxy import FaultProxy

STOP_TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parents[2]
#: The NodeCIDRPool CRD, from its one source: the chart's crds/ directory.
POOL_CRD = ROOT / "manifests" / "charts" / "nodeipam" / "crds" / "nodecidrpools.yaml"


@pytest.fixture(scope="session")
def control_plane() -> Iterator[LocalControlPlane]:
    with LocalControlPlane() as plane:
        yield plane


@pytest.fixture(scope="session")
def pool_crd(control_plane: LocalControlPlane) -> str:
    """The chart's NodeCIDRPool CRD installed and established; returns its name."""
    control_plane.kubectl("apply", "-f", str(POOL_CRD))
    name = "nodecidrpools.nodeipam.io"
    control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    return name


@pytest.fixture(scope="session")
def core(control_plane: LocalControlPlane) -> client.CoreV1Api:
    api_client = config.new_client_from_config(config_file=control_plane.kubeconfig)
    return client.CoreV1Api(api_client)


class Cluster:
    """Arrange and assert on Nodes and Events through the official client."""

    def __init__(self, plane: LocalControlPlane, core: client.CoreV1Api) -> None:
        self.plane = plane
        self.core = core

    def create_nodes(self, names: list[str], pod_cidrs: tuple[str, ...] = ()) -> None:
        for index, name in enumerate(names):
            self.core.create_node(realistic_node(name, index, pod_cidrs))

    def delete_node(self, name: str) -> None:
        self.core.delete_node(name)
        wait_for(lambda: name not in self.pod_cidrs(), timeout=30, what=f"node {name} to be gone")

    def pod_cidrs(self) -> dict[str, list[str]]:
        """name -> spec.podCIDRs ([] when unassigned); also checks podCIDR == podCIDRs[0]."""
        result = {}
        for node in self.core.list_node().items:
            cidrs = list(node.spec.pod_cidrs or [])
            if cidrs:
                assert node.spec.pod_cidr == cidrs[0], f"{node.metadata.name}: podCIDR != podCIDRs[0]"
            result[node.metadata.name] = cidrs
        return result

    def wait_single_ranges_inside(self, names: list[str], cluster_cidr: str, mask: int) -> dict[str, list[str]]:
        """Wait until `names` are assigned; each must hold one range of `mask` inside `cluster_cidr`, none shared."""
        cidrs = self.wait_assigned(names)
        no_duplicates(cidrs)
        outer = ipaddress.ip_network(cluster_cidr)
        for name in names:
            (cidr,) = cidrs[name]
            inner = ipaddress.ip_network(cidr)
            assert inner.version == outer.version and inner.prefixlen == mask, (name, cidr)
            assert inner.subnet_of(outer), (name, cidr)  # type: ignore[arg-type]
        return cidrs

    def wait_assigned(self, names: list[str], timeout: float = 60.0) -> dict[str, list[str]]:
        def assigned() -> dict[str, list[str]] | None:
            cidrs = self.pod_cidrs()
            return cidrs if all(cidrs.get(name) for name in names) else None

        result = wait_for(assigned, timeout=timeout, what=f"podCIDRs on {len(names)} nodes")
        assert result is not None
        return result

    def events_for(self, name: str) -> list[Any]:
        """Events about the Node now called `name` (not an earlier Node of that name)."""
        uid = self.core.read_node(name).metadata.uid
        events = self.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
        return [event for event in events if event.involved_object.kind == "Node" and event.involved_object.uid == uid]

    def wait_event(self, name: str, reason: str, timeout: float = 30.0) -> Any:
        def found() -> Any:
            return next((e for e in self.events_for(name) if e.reason == reason), None)

        return wait_for(found, timeout=timeout, what=f"a {reason} event on node {name}")

    def delete_all_nodes(self) -> None:
        self.core.delete_collection_node()
        wait_for(lambda: not self.core.list_node().items, timeout=30, what="all nodes deleted")


@pytest.fixture
def cluster(control_plane: LocalControlPlane, core: client.CoreV1Api) -> Iterator[Cluster]:
    the_cluster = Cluster(control_plane, core)
    the_cluster.delete_all_nodes()
    yield the_cluster
    the_cluster.delete_all_nodes()


def fetch(url: str, token: str | None) -> tuple[int, str]:
    """(status, body) of an https GET with an optional bearer token, not verifying the self-signed certificate."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode(errors="replace")
    except OSError:
        return 0, ""


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has stopped)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


class KubeControllerManager:
    """kube-controller-manager's node IPAM alone, run against the test API server as a process (never in the cluster)."""

    def __init__(self, plane: LocalControlPlane, log: Path, cluster_cidr: str, mask: int) -> None:
        binary = ensure_binaries(("kube-controller-manager",))["kube-controller-manager"]
        service = [f"--service-cluster-ip-range={plane.service_cidr}"] if ":" not in cluster_cidr else []
        self.argv = [
            str(binary),
            f"--kubeconfig={plane.kubeconfig}",
            "--controllers=nodeipam",
            "--allocate-node-cidrs=true",
            f"--cluster-cidr={cluster_cidr}",
            f"--node-cidr-mask-size={mask}",
            *service,
            "--leader-elect=false",
            "--secure-port=0",
            "-v=2",
        ]
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


class ControllerProcess:
    """`python -m controller ARGS` as its own process, the way it runs in a cluster.

    Its metrics endpoint and its probe port are moved to free loopback ports; its output goes to a log file.
    """

    def __init__(self, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        self.probe_port = free_port()
        self.log_path = log_dir / f"controller-{self.metrics_port}.log"
        moved = ("--metrics-bind-address=", "--health-probe-bind-address=")
        args = [arg for arg in args if not arg.startswith(moved)]
        self.argv = [
            sys.executable,
            "-m",
            "controller",
            *args,
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
        ]
        self.expected_codes: tuple[int, ...] = (0, -signal.SIGKILL)  # what the teardown accepts
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env if env is not None else os.environ.copy(), cwd=ROOT
        )

    @classmethod
    def run(cls, plane: LocalControlPlane, flags: list[str], log_dir: Path) -> ControllerProcess:
        """`nodeipam run FLAGS` against the local control plane; no leader election unless asked for."""
        args = ["run", f"--kubeconfig={plane.kubeconfig}", *flags]
        if not any(flag.startswith("--leader-elect") for flag in flags):
            args.append("--leader-elect=false")
        return cls(args, log_dir)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, token: str | None = ADMIN_TOKEN) -> int:
        """HTTPS status of GET path on the metrics endpoint (0 when nothing answers).

        The local control plane's admin token is sent unless `token` is None; the health paths need none.
        """
        return fetch(f"https://127.0.0.1:{self.metrics_port}{path}", token)[0]

    def probe(self, path: str) -> int:
        """HTTP status of GET path on the probe port, as the kubelet sends it (0 when nothing answers)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.probe_port}{path}", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def read(self, path: str, token: str | None = ADMIN_TOKEN) -> str:
        """The body of GET path on the metrics endpoint (e.g. the /metrics text); fails on anything but 200."""
        status, body = fetch(f"https://127.0.0.1:{self.metrics_port}{path}", token)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> int:
        """SIGTERM, then the exit code; fails if it takes longer than a few seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"controller did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.log()}") from None
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_controller(control_plane: LocalControlPlane) -> Iterator[Callable[..., ControllerProcess]]:
    started: list[ControllerProcess] = []
    log_dir = Path(tempfile.mkdtemp(prefix="nodeipam-test-logs-"))

    def start(*flags: str) -> ControllerProcess:
        process = ControllerProcess.run(control_plane, list(flags), log_dir)
        started.append(process)
        return process

    yield start
    failures = []
    for process in started:  # stop every one before judging, so a bad exit leaks no process
        code = process.stop()
        if code not in process.expected_codes:
            failures.append(f"controller exited with {code}:\n{process.log()}")
    assert not failures, "\n\n".join(failures)


class Proxied:
    """Controllers started each behind its own FaultProxy; the proxies outlive them."""

    def __init__(self, plane: LocalControlPlane, start: Callable[..., ControllerProcess]) -> None:
        self.plane = plane
        self.start = start
        self.started: list[tuple[FaultProxy, ControllerProcess]] = []

    def __call__(self, *flags: str, seed: int = 0, proxy: FaultProxy | None = None) -> tuple[FaultProxy, ControllerProcess]:
        """`nodeipam run FLAGS --master=<proxy>`; a new proxy unless one is given."""
        proxy = proxy or FaultProxy(self.plane.server, seed=seed).start()
        controller = self.start(*flags, f"--master={proxy.url}")
        self.started.append((proxy, controller))
        return proxy, controller

    def close(self) -> None:
        """Release stalls first, so the controllers can stop cleanly; then the proxies."""
        for proxy, _ in self.started:
            proxy.clear()
        failures = []
        for _, controller in self.started:  # every one is stopped, whatever the others did
            code = controller.stop()
            if code not in controller.expected_codes:
                failures.append(f"controller exited with {code}:\n{controller.log()}")
        for proxy in {id(proxy): proxy for proxy, _ in self.started}.values():
            proxy.stop()
        assert not failures, "\n".join(failures)


@pytest.fixture
def proxied(control_plane: LocalControlPlane, start_controller: Callable[..., ControllerProcess]) -> Iterator[Proxied]:
    started = Proxied(control_plane, start_controller)
    yield started
    started.close()


def run_cli(*args: str, kubeconfig: str) -> subprocess.CompletedProcess[str]:
    """`nodeipam ARGS --kubeconfig=...` (status, check, or bad `run` flags), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "controller", *args, f"--kubeconfig={kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def no_duplicates(cidrs: dict[str, list[str]]) -> None:
    flat = [cidr for values in cidrs.values() for cidr in values]
    duplicates = sorted({cidr for cidr in flat if flat.count(cidr) > 1})
    assert not duplicates, f"duplicate podCIDRs: {duplicates}\n{json.dumps(cidrs, indent=1)}"


LEASE_SECONDS = 4  # short, so that a take-over happens within a test


def leader_flags(identity: str, lease: str, *flags: str, lease_seconds: int = LEASE_SECONDS) -> list[str]:
    """`flags` plus leader election as `identity` on Lease default/`lease`.

    The renew deadline is a second below the lease duration (3 s for the default 4 s), the retry period 1 s.
    """
    return [
        *flags,
        "--leader-elect=true",
        f"--leader-elect-identity={identity}",
        f"--leader-elect-resource-name={lease}",
        "--leader-elect-resource-namespace=default",
        f"--leader-elect-lease-duration={lease_seconds}s",
        f"--leader-elect-renew-deadline={lease_seconds - 1}s",
        "--leader-elect-retry-period=1s",
    ]
