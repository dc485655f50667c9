"""`make demo` (`python -m localcluster.demo`): the controller against a real local control plane, end to end.

Starts etcd + kube-apiserver, runs `nodeipam run` against them, registers
Nodes as a kubelet would, and prints what an operator would check with kubectl.
It lives beside the package, not in it: it needs the Go-built binaries of a
checkout, so the wheel and the image carry no command that cannot run.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import netaddr

from controller import config
from controller.flagvalues import ConfigError
from localcluster.binaries import BinariesError
from localcluster.cluster import LocalControlPlane
from localcluster.nodebodies import realistic_node

WAIT_TIMEOUT = 60.0
MAX_NODES = 1000  # each is a realistic ~10 KB Node created in one request; more would outlast WAIT_TIMEOUT
SERVICE_CIDR = "10.96.0.0/12"
CIDR_COLUMNS = "custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR,CIDRS:.spec.podCIDRs"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_args(nodes: int, cluster_cidr: str) -> None:
    """Refuse, before anything starts, what cannot end with every Node assigned."""
    if not 1 <= nodes <= MAX_NODES:
        raise ConfigError("--nodes", f"{nodes} is not between 1 and {MAX_NODES}", "use e.g. --nodes=5 (the default)")
    ranges = config.build_ranges(cluster_cidr)
    service = netaddr.IPNetwork(SERVICE_CIDR)
    for family in ranges:
        if (
            family.version == service.version
            and family.cluster_cidr.first <= service.last
            and service.first <= family.cluster_cidr.last
        ):
            raise ConfigError(
                "--cluster-cidr", f"{family.cluster_cidr} overlaps the demo's service range {service}", "use e.g. 10.244.0.0/16"
            )
        subnets = 2 ** (family.node_mask_size - family.cluster_cidr.prefixlen)
        if nodes > subnets:
            raise ConfigError(
                "--nodes",
                f"{nodes} Nodes do not fit: {family.cluster_cidr} holds {subnets} node subnets of /{family.node_mask_size}",
                f"use --nodes={subnets} or fewer, or a larger --cluster-cidr",
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m localcluster.demo",
        description="Start a local control plane, run the controller, register Nodes, show their podCIDRs.",
    )
    parser.add_argument("--nodes", type=int, default=5, help="how many Nodes to register (default 5)")
    parser.add_argument("--cluster-cidr", default="10.244.0.0/16")
    parser.add_argument("--once", action="store_true", help="print the Nodes and exit instead of running until Ctrl-C")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 2 for bad input, before anything starts; else what `demo` returns."""
    args = build_parser().parse_args(argv)
    try:
        check_args(args.nodes, args.cluster_cidr)
    except ConfigError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 2
    return demo(nodes=args.nodes, cluster_cidr=args.cluster_cidr, once=args.once)


def demo(nodes: int, cluster_cidr: str, once: bool) -> int:
    """Exit status 0 once the Nodes are shown (or on Ctrl-C), 1 when the control plane or the controller fails."""
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C: no stray etcd/apiserver
    print("starting etcd and kube-apiserver on loopback ...", flush=True)
    try:
        plane = LocalControlPlane(service_cidr=SERVICE_CIDR)
        plane.start()
    except (BinariesError, RuntimeError) as error:
        print(f"demo: error: the local control plane did not start: {error}", file=sys.stderr)
        return 1
    try:
        return _show(plane, nodes, cluster_cidr, once)
    finally:
        plane.stop()


def _show(plane: LocalControlPlane, nodes: int, cluster_cidr: str, once: bool) -> int:
    """Run the controller against `plane`, register the Nodes and print their podCIDRs."""
    controller = subprocess.Popen(
        plane.controller_command(
            cluster_cidr, "--leader-elect=false", "--metrics-bind-address=127.0.0.1:0", "--health-probe-bind-address=127.0.0.1:0"
        )
    )
    try:
        names = [f"worker-{index}" for index in range(1, nodes + 1)]
        items = [realistic_node(name, index) for index, name in enumerate(names, start=1)]
        plane.kubectl("create", "-f", "-", input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        print(f"registered {nodes} Nodes; waiting for their podCIDRs ...", flush=True)
        deadline = time.monotonic() + WAIT_TIMEOUT
        while time.monotonic() < deadline and controller.poll() is None:
            listed = json.loads(plane.kubectl("get", "nodes", "-o", "json"))["items"]
            if all(item["spec"].get("podCIDR") for item in listed):
                break
            time.sleep(0.2)
        print()
        print(f"$ kubectl get nodes -o {CIDR_COLUMNS}")
        print(plane.kubectl("get", "nodes", "-o", CIDR_COLUMNS), flush=True)
        if once:
            return 0 if controller.poll() is None else 1
        print(f"The controller keeps running. Try:\n  export KUBECONFIG={plane.kubeconfig}")
        print(f"  {plane.binaries['kubectl']} get nodes -o {CIDR_COLUMNS}")
        print("Ctrl-C stops everything.", flush=True)
        controller.wait()
        return controller.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if controller.poll() is None:
            controller.terminate()
            controller.wait(timeout=15)


if __name__ == "__main__":
    sys.exit(main())
