"""One real Node beside the local control plane: containerd, a kubelet, flannel, and the rest of a control plane.

The local control plane (etcd + kube-apiserver) is the project's own; this adds what a cluster runs
around it: kube-scheduler, kube-controller-manager with every controller but the node IPAM one (that
is ours), a containerd of its own (own root, state, socket and CNI directories) and a kubelet that
registers a control-plane Node, and flanneld in kube-subnet-mgr mode, which turns the Node's podCIDR
into the subnet its CNI plugin hands to bridge + host-local.

Everything lives in one temporary directory, except what the kernel and the CNI plugins keep
host-wide: the cni0 and flannel.1 links and flannel's iptables chains.
``stop()`` removes all of it, so a second run starts from the same machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from e2e.node import assets
from localcluster.binaries import ensure_binaries
from localcluster.cluster import LocalControlPlane, free_port

CLUSTER_CIDR = "10.244.0.0/16"
NODE_MASK = 25
SERVICE_CIDR = "10.96.0.0/12"
CNI_NETWORK = "cbr0"
#: Links the CNI plugins and flannel make outside our directory (and flannel's FLANNEL-* iptables chains).
HOST_LINKS = ("cni0", "flannel.1")
#: Fixed paths the programs use whatever their flags say: containerd's shim sockets, dockerd's plugin
#: sockets, libcni's result cache, the kubelet's device-plugin socket. Removed if a run created them.
HOST_PATHS = (Path("/run/containerd"), Path("/run/docker"), Path("/var/lib/cni"), Path("/var/lib/kubelet"))
CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane:NoSchedule"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"

#: Debian packages the real Node needs, by the command that shows each is there.
REQUIRED_COMMANDS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "dockerd": "docker.io",
    "debootstrap": "debootstrap",
    "iptables": "iptables",
    "ip": "iproute2",
    "gcc": "gcc",
    "go": "Go 1.26+ (https://go.dev/dl)",
}
DEBIAN_CNI_PLUGINS = Path("/usr/lib/cni")


def unavailable() -> str | None:
    """Why a real Node cannot run here, naming what to install; None when it can."""
    if os.geteuid() != 0:
        return "a real Node needs root (containerd, the kubelet, network links): run as root"
    missing = sorted({package for command, package in REQUIRED_COMMANDS.items() if shutil.which(command) is None})
    if not (DEBIAN_CNI_PLUGINS / "bridge").is_file():
        missing.append("containernetworking-plugins")
    if missing:
        return f"a real Node needs: {', '.join(missing)} (apt-get install -y {' '.join(p for p in missing if ' ' not in p)})"
    return None


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def mounts_under(directory: Path) -> list[str]:
    """Mount points below ``directory``, deepest first (the order to unmount them in)."""
    prefix = str(directory.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (containerd's shims name its socket)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


class RealNode:
    """Control plane + scheduler + controller manager + containerd + kubelet (+ flanneld once asked for)."""

    def __init__(self, node_name: str = "node-1") -> None:
        self.node_name = node_name
        self.binaries = ensure_binaries(assets.NODE_BINARIES)
        assets.ensure_node_assets()
        self.plane = LocalControlPlane(service_cidr=SERVICE_CIDR)
        self.dir = Path(tempfile.mkdtemp(prefix="nodeipam-node-"))
        self.socket = self.dir / "containerd" / "containerd.sock"
        self.cni_conf_dir = self.dir / "cni" / "net.d"
        self.cni_bin_dir = self.dir / "cni" / "bin"
        self.subnet_file = self.dir / "flannel" / "subnet.env"
        self.kubelet_root = self.dir / "kubelet"
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self._host_paths_before = [path for path in HOST_PATHS if path.exists()]

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Everything up to a registered, labelled, still NotReady Node (no CNI config yet)."""
        try:
            # A run killed before its teardown leaves cni0 and flannel's chains; their old addresses would break this one.
            clean_host()
            self.plane.start()
            self._start_scheduler()
            self._start_controller_manager()
            self._start_containerd()
            self._start_kubelet()
            wait_until(self._node_registered, 120, f"the kubelet to register Node {self.node_name}")
            # The kubelet refuses node-role labels in --node-labels: a control-plane Node is labelled through the API.
            self.plane.kubectl("label", "node", self.node_name, f"{CONTROL_PLANE_LABEL}=", "--overwrite")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything and remove what it left, inside our directory and on the host."""
        self._delete_pods()
        self._stop_process("flanneld")
        self._stop_process("kubelet")
        self._remove_containers()
        for name in ("containerd", "kube-controller-manager", "kube-scheduler"):
            self._stop_process(name)
        for pid in processes_mentioning(str(self.socket)):  # shims outlive containerd
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for handle in self._logs:
            handle.close()
        self._logs.clear()
        self.plane.stop()
        clean_host()
        remove_pod_cgroups()
        for path in HOST_PATHS:
            if path not in self._host_paths_before:
                shutil.rmtree(path, ignore_errors=True)
        for point in mounts_under(self.dir):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What a stopped run left behind; empty when the teardown did its job."""
        found = [f"process {name}" for name, process in self._processes.items() if process.poll() is None]
        found += [f"link {link}" for link in HOST_LINKS if Path("/sys/class/net", link).exists()]
        chains = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        found += [f"iptables chain {line.split()[0][1:]}" for line in chains.splitlines() if line.startswith(":FLANNEL")]
        found += [f"path {path}" for path in HOST_PATHS if path.exists() and path not in self._host_paths_before]
        found += [f"process {pid} (a shim)" for pid in processes_mentioning(str(self.socket))]
        found += [f"directory {directory}" for directory in (self.dir, self.plane.workdir) if directory.exists()]
        return found

    def log(self, name: str, lines: int = 40) -> str:
        path = self.dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- the network, on demand ----------------------------------------------------------------------

    def pod_cidr(self) -> str:
        return self.plane.kubectl("get", "node", self.node_name, "-o", "jsonpath={.spec.podCIDR}").strip()

    def start_flannel(self) -> str:
        """flanneld for this Node (it needs the Node's podCIDR), then the CNI config; returns FLANNEL_SUBNET."""
        conf = self.dir / "flannel" / "net-conf.json"
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(json.dumps({"Network": CLUSTER_CIDR, "SubnetLen": NODE_MASK, "Backend": {"Type": "vxlan"}}))
        self._spawn(
            "flanneld",
            [
                str(assets.flanneld()),
                "--kube-subnet-mgr",
                f"--kubeconfig-file={self.plane.kubeconfig}",
                f"--net-config-path={conf}",
                f"--subnet-file={self.subnet_file}",
            ],
            env=dict(os.environ, NODE_NAME=self.node_name),
        )
        wait_until(self.subnet_file.exists, 60, f"flanneld to write {self.subnet_file}")
        self._write_cni_config()
        return self.flannel_subnet()

    def flannel_subnet(self) -> str:
        for line in self.subnet_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "FLANNEL_SUBNET":
                return value
        raise RuntimeError(f"no FLANNEL_SUBNET in {self.subnet_file}")

    def _write_cni_config(self) -> None:
        """The conflist flannel's manifest installs: flannel delegating to bridge + host-local, then portmap."""
        conflist = {
            "name": CNI_NETWORK,
            "cniVersion": "0.3.1",
            "plugins": [
                {
                    "type": "flannel",
                    "subnetFile": str(self.subnet_file),
                    "dataDir": str(self.dir / "flannel" / "cni-data"),
                    # host-local keeps its leases with us, not in /var/lib/cni/networks: a next run starts from .2 again.
                    "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni" / "host-local")},
                    "delegate": {"hairpinMode": True, "isDefaultGateway": True},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        partial = self.cni_conf_dir / "10-flannel.conflist.tmp"
        partial.write_text(json.dumps(conflist, indent=2))
        os.replace(partial, self.cni_conf_dir / "10-flannel.conflist")

    # -- pieces --------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self._processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _stop_process(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def check_alive(self) -> None:
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)}")

    def _start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(self.binaries["kube-scheduler"]),
                f"--kubeconfig={self.plane.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )

    def _start_controller_manager(self) -> None:
        """Every controller a cluster runs but the node IPAM one; its root CA lets projected tokens mount."""
        certs = self.plane.workdir / "certs"
        self._spawn(
            "kube-controller-manager",
            [
                str(self.binaries["kube-controller-manager"]),
                f"--kubeconfig={self.plane.kubeconfig}",
                "--controllers=*,-nodeipam",
                "--allocate-node-cidrs=false",
                f"--root-ca-file={certs / 'apiserver.crt'}",
                f"--service-account-private-key-file={certs / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )

    def _start_containerd(self) -> None:
        self.cni_conf_dir.mkdir(parents=True)
        self.cni_bin_dir.mkdir(parents=True)
        for plugin in DEBIAN_CNI_PLUGINS.iterdir():
            (self.cni_bin_dir / plugin.name).symlink_to(plugin)
        (self.cni_bin_dir / "flannel").symlink_to(assets.flannel_cni_plugin())
        state = self.dir / "containerd"
        state.mkdir()
        default = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True, check=True).stdout
        replacements = {
            'root = "/var/lib/containerd"': f'root = "{state / "root"}"',
            'state = "/run/containerd"': f'state = "{state / "state"}"',
            'address = "/run/containerd/containerd.sock"': f'address = "{self.socket}"',
            'path = "/opt/containerd"': f'path = "{state / "opt"}"',
            'bin_dir = "/opt/cni/bin"': f'bin_dir = "{self.cni_bin_dir}"',
            'conf_dir = "/etc/cni/net.d"': f'conf_dir = "{self.cni_conf_dir}"',
            "netns_mounts_under_state_dir = false": "netns_mounts_under_state_dir = true",
            # This machine forbids lowering oom_score_adj; without it every sandbox fails to start.
            "restrict_oom_score_adj = false": "restrict_oom_score_adj = true",
        }
        config = default
        for old, new in replacements.items():
            if old not in config:
                raise RuntimeError(f"containerd's default config has no {old!r}: another containerd version?")
            config = config.replace(old, new, 1)
        config = _set_sandbox_image(config, assets.PAUSE_IMAGE)
        config = _set_runc_root(config, state / "runc")
        (state / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", f"--config={state / 'config.toml'}"])
        wait_until(self.socket.exists, 30, "containerd's socket")
        self.ctr("images", "import", str(assets.pause_archive()))

    def ctr(self, *args: str) -> str:
        result = subprocess.run(
            ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def _start_kubelet(self) -> None:
        self.kubelet_root.mkdir()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzPort": 0,
            # Test only: the API server reaches logs/exec without client certificates.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            # A busy shared disk must not evict our pods or taint the Node, nor image GC drop the imported images.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        }
        path = self.dir / "kubelet-config.json"
        path.write_text(json.dumps(config))
        self._spawn(
            "kubelet",
            [
                str(self.binaries["kubelet"]),
                f"--config={path}",
                f"--kubeconfig={self.plane.kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.kubelet_root / 'pki'}",
                f"--hostname-override={self.node_name}",
                f"--register-with-taints={CONTROL_PLANE_TAINT}",
            ],
        )

    def _node_registered(self) -> bool:
        self.check_alive()
        return bool(self.plane.kubectl("get", "node", self.node_name, "--ignore-not-found", "-o", "name").strip())

    def _delete_pods(self) -> None:
        """Let the kubelet tear the pods' networks down (CNI DEL) while it and flannel still run."""
        kubelet = self._processes.get("kubelet")
        if kubelet is None or kubelet.poll() is not None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.plane.kubectl("delete", "deployments", "--all", "-n", "default", "--wait=false")
            self.plane.kubectl("delete", "pods", "--all", "-n", "default", "--wait=true", "--timeout=60s")

    def _remove_containers(self) -> None:
        """Kill and delete every container of our containerd, so their shims exit and their mounts go."""
        process = self._processes.get("containerd")
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            for task in self.ctr("tasks", "ls", "-q").split():
                with contextlib.suppress(RuntimeError):
                    self.ctr("tasks", "kill", "--signal=SIGKILL", task)
            for task in self.ctr("tasks", "ls", "-q").split():
                with contextlib.suppress(RuntimeError):
                    self.ctr("tasks", "delete", "--force", task)
            for container in self.ctr("containers", "ls", "-q").split():
                with contextlib.suppress(RuntimeError):
                    self.ctr("containers", "delete", container)


def _set_runc_root(config: str, root: Path) -> str:
    """runc's state for the CRI's containers goes with ours instead of /run/containerd/runc."""
    section = config.index('[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]')
    at = config.index('Root = ""', section)
    return config[:at] + f'Root = "{root}"' + config[at + len('Root = ""') :]


def _set_sandbox_image(config: str, image: str) -> str:
    lines = config.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("sandbox_image = "):
            indent = line[: len(line) - len(line.lstrip())]
            lines[index] = f'{indent}sandbox_image = "{image}"'
            return "\n".join(lines) + "\n"
    raise RuntimeError("containerd's default config has no sandbox_image")


def clean_host() -> None:
    """Remove what flannel and the CNI plugins keep host-wide: links and iptables chains."""
    for link in HOST_LINKS:
        subprocess.run(["ip", "link", "delete", link], capture_output=True)
    for table in ("filter", "nat", "mangle"):
        _remove_chains(table, "FLANNEL")


def _remove_chains(table: str, prefix: str) -> None:
    """Delete the rules that jump to chains named ``prefix``*, then the chains themselves."""
    listing = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True)
    if listing.returncode != 0:
        return
    chains = [
        line.split()[1] for line in listing.stdout.splitlines() if line.startswith("-N ") and line.split()[1].startswith(prefix)
    ]
    if not chains:
        return
    for line in listing.stdout.splitlines():
        parts = _split_rule(line)
        if parts[:1] == ["-A"] and "-j" in parts and parts[parts.index("-j") + 1] in chains and parts[1] not in chains:
            subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True)
    for chain in chains:
        subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
    for chain in chains:
        subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


def _split_rule(line: str) -> list[str]:
    """``iptables -S`` output split as a shell would: flannel's comments are quoted and hold spaces."""
    return shlex.split(line)


def remove_pod_cgroups() -> None:
    """The kubelet's kubepods cgroups (cgroupfs driver), deepest first; a busy one stays and is retried never."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir():
            continue
        directories = sorted((path for path in top.rglob("*") if path.is_dir()), key=lambda path: len(path.parts), reverse=True)
        for directory in [*directories, top]:
            with contextlib.suppress(OSError):
                directory.rmdir()
