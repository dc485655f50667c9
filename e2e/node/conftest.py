"""One real Node for the module: control plane, scheduler, controller manager, containerd, kubelet.

Skipped, with what to install, where it cannot run: it needs root and Debian's containerd, runc,
containernetworking-plugins, debootstrap and docker.io (``.ci/run`` installs them). flanneld, the
flannel CNI plugin, the sandbox image and the image base are built on first use (``make node-assets``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.node.realnode import RealNode
from e2e.node.story import Story, say


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    node = RealNode()
    say("starting etcd, kube-apiserver, kube-scheduler, kube-controller-manager (--controllers=*,-nodeipam), containerd, kubelet")
    node.start()
    try:
        say(f"Node {node.node_name} registered by its kubelet, labelled and tainted as a control-plane Node")
        yield Story(node)
    finally:
        node.stop()
        leftovers = node.leftovers()
        assert not leftovers, f"the teardown left: {leftovers}"
        say("stopped; processes, mounts, links, iptables chains and temporary directories removed")
