"""``make demo-node``: the whole story once, a line per step, ending with a pod's IP inside its Node's podCIDR.

Control plane, a real Node (containerd + kubelet), the controller as the chart's Pod from the image
built here, flannel, one application pod. Needs root and the Debian packages the suite needs; says
what is missing otherwise. Everything is removed at the end.
"""

from __future__ import annotations

import signal
import sys

from e2e.node.realnode import RealNode, unavailable, wait_until
from e2e.node.story import CIDR_COLUMNS, TAGS, Story, inside, say


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    reason = unavailable()
    if reason:
        print(f"make demo-node: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # clean up like Ctrl-C
    say("building or finding the binaries and node assets (cold: make node-assets)")
    node = RealNode()
    try:
        say("starting etcd, kube-apiserver, kube-scheduler, kube-controller-manager (--controllers=*,-nodeipam)")
        say("starting containerd and a kubelet")
        node.start()
        story = Story(node)
        say(f"Node {node.node_name} registered: NotReady, no podCIDR")
        story.build_and_load_image()
        story.install(TAGS[0])
        pod = story.ready_controller()
        say(f"controller Pod {pod['metadata']['name']} Ready on {pod['spec']['nodeName']}, Node Ready: {story.node_ready()}")
        wait_until(node.pod_cidr, 60, "the Node's podCIDR")
        pod_cidr = node.pod_cidr()
        say(f"Lease held by {story.wait_new_holder('')}; Node {node.node_name} podCIDR {pod_cidr}")
        say(f"flanneld wrote FLANNEL_SUBNET={node.start_flannel()}")
        wait_until(story.node_ready, 120, "the Node to turn Ready")
        say(f"Node {node.node_name} is Ready")
        for line in story.kubectl("get", "nodes", "-o", CIDR_COLUMNS).strip().splitlines():
            say(f"kubectl get nodes: {line}")
        story.run_app("hello", 1)
        ((name, ip),) = story.app_pod_ips("hello", 1).items()
        say(f"pod {name} IP {ip} is inside Node {node.node_name}'s podCIDR {pod_cidr}: {inside(ip, pod_cidr)}")
        return 0 if inside(ip, pod_cidr) else 1
    except KeyboardInterrupt:
        return 130
    finally:
        node.stop()
        say("stopped and cleaned up")


if __name__ == "__main__":
    sys.exit(main())
