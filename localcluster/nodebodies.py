"""Node objects as a kubelet registers them (~10 KB each), for tests, the demo and benchmarks.

Bare Nodes hide most of the cost of a real cluster: JSON decoding, memory per
object, watch traffic. These carry labels, annotations, conditions, addresses,
capacity and 40 images, like a real worker.
"""

from __future__ import annotations

from typing import Any

IMAGE_COUNT = 40


def realistic_node(name: str, index: int = 0, pod_cidrs: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Node body of about 10 KB; `pod_cidrs` pre-sets spec.podCIDR(s)."""
    ip = f"172.{16 + (index >> 16) % 16}.{(index >> 8) % 256}.{index % 256}"
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.xlarge",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": f"eu-west-1{'abc'[index % 3]}",
                "node-role.kubernetes.io/worker": "",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
            },
        },
        "spec": {"providerID": f"aws:///eu-west-1a/i-{index:017x}"},
        "status": {
            "capacity": {
                "cpu": "4",
                "ephemeral-storage": "104845292Ki",
                "hugepages-2Mi": "0",
                "memory": "16202580Ki",
                "pods": "110",
            },
            "allocatable": {
                "cpu": "3920m",
                "ephemeral-storage": "96625420948",
                "hugepages-2Mi": "0",
                "memory": "15063892Ki",
                "pods": "110",
            },
            "conditions": [
                {
                    "type": condition,
                    "status": "False",
                    "lastHeartbeatTime": "2026-11-27T10:00:00Z",
                    "lastTransitionTime": "2026-11-27T09:00:00Z",
                    "reason": f"KubeletHasNo{condition}",
                    "message": f"kubelet has no {condition.lower()}",
                }
                for condition in ("MemoryPressure", "DiskPressure", "PIDPressure")
            ]
            + [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": "2026-11-27T10:00:00Z",
                    "lastTransitionTime": "2026-11-27T09:00:00Z",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
                {"type": "InternalDNS", "address": f"ip-{ip.replace('.', '-')}.eu-west-1.compute.internal"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": f"{index:032x}",
                "systemUUID": f"ec2{index:05x}-0000-0000-0000-000000000000",
                "bootID": f"{index:08x}-1111-2222-3333-444444444444",
                "kernelVersion": "6.1.0-27-cloud-amd64",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.6.20",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "v1.37.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": [
                {
                    "names": [
                        f"registry.example.com/team-{image % 7}/service-{image}@sha256:{image:064x}",
                        f"registry.example.com/team-{image % 7}/service-{image}:v1.{image}.0",
                    ],
                    "sizeBytes": 10_000_000 + image * 1_234_567,
                }
                for image in range(IMAGE_COUNT)
            ],
        },
    }
    if pod_cidrs:
        node["spec"]["podCIDR"] = pod_cidrs[0]
        node["spec"]["podCIDRs"] = list(pod_cidrs)
    return node
