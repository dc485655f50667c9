"""`nodeipam demo`: the controller against a real local control plane, end to end.

Starts etcd + kube-apiserver, runs `nodeipam run` against them, registers
Nodes as a kubelet would, and prints what an operator would check with kubectl.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from controller.localcluster.cluster import LocalControlPlane
from controller.localcluster.nodebodies import realistic_node

WAIT_TIMEOUT = 60.0
CIDR_COLUMNS = "custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR,CIDRS:.spec.podCIDRs"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(nodes: int, cluster_cidr: str, once: bool) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM cleans up like Ctrl-C: no stray etcd/apiserver
    print("starting etcd and kube-apiserver on loopback ...", flush=True)
    with LocalControlPlane() as plane:
        controller = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "run",
                f"--kubeconfig={plane.kubeconfig}",
                f"--cluster-cidr={cluster_cidr}",
                f"--service-cluster-ip-range={plane.service_cidr}",
                "--leader-elect=false",
                "--metrics-bind-address=127.0.0.1:0",
            ]
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
