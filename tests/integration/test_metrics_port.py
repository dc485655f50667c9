"""The metrics port's process against a real API server: real token reviews, and the controller's own child.

A scrape with a token the API server accepts shows this process's metrics of the moment; a bad token is
refused; a child replaced after it stuck reviews tokens with a client of its own again. In the controller,
the child serves the port and dies with it, however it stops.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter

from bench.flood import metrics_server_pid
from controller.backoff import Backoff
from controller.credentials import Credentials
from controller.loopwatch import Heartbeat, watch_loop
from controller.metrics_port import MetricsProcess
from localcluster.cluster import ADMIN_TOKEN, LocalControlPlane
from tests.conftest import wait_for
from tests.integration.conftest import Cluster, ControllerProcess, alive, fetch

pytestmark = pytest.mark.integration


def test_a_valid_token_scrapes_this_process_metrics_and_a_bad_one_is_refused(control_plane: LocalControlPlane) -> None:
    credentials = Credentials.load(control_plane.kubeconfig)

    async def main() -> None:
        registry = CollectorRegistry()
        scrapes = Counter("node_ipam_test_scrapes", "a test counter", registry=registry)
        heartbeat = Heartbeat()
        pulse = asyncio.ensure_future(watch_loop(heartbeat, lambda lag: None, interval=0.05))
        port = MetricsProcess(
            "127.0.0.1:0", registry, heartbeat, credentials=credentials, feed_interval=0.1, stuck_after=1.0, backoff=Backoff(0.1)
        )
        await port.start()
        url = f"https://127.0.0.1:{port.ports[0]}/metrics"

        def scraped(value: float) -> bool:
            status, text = fetch(url, ADMIN_TOKEN)
            return status == 200 and f"node_ipam_test_scrapes_total {value}" in text

        try:
            await asyncio.to_thread(wait_for, lambda: scraped(0.0), 20, 0.1, "a scrape")
            scrapes.inc(3)
            await asyncio.to_thread(wait_for, lambda: scraped(3.0), 10, 0.1, "the new value")
            assert (await asyncio.to_thread(fetch, url, "not-a-token"))[0] == 401
            assert (await asyncio.to_thread(fetch, url, None))[0] == 401
            first = port.pid
            assert first is not None
            os.kill(first, signal.SIGSTOP)
            await asyncio.to_thread(wait_for, lambda: port.pid not in (None, first), 20, 0.1, "another child")
            scrapes.inc()
            await asyncio.to_thread(wait_for, lambda: scraped(4.0), 20, 0.1, "a scrape reviewed by the new child")
            assert (await asyncio.to_thread(fetch, url, "not-a-token"))[0] == 401
        finally:
            await port.stop()
            pulse.cancel()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_the_controllers_metrics_port_is_its_child_and_dies_with_it(
    cluster: Cluster, start_controller: Callable[..., ControllerProcess], how: str
) -> None:
    controller = start_controller("--cluster-cidr=10.244.0.0/16")
    cluster.create_nodes(["child"])
    cluster.wait_assigned(["child"])
    wait_for(lambda: controller.get("/readyz", token=None) == 200, what="readyz")
    child = wait_for(lambda: metrics_server_pid(controller.process.pid), what="the metrics port's process")
    assert 'node_ipam_controller_cidrset_cidrs_allocations_total{clusterCIDR="10.244.0.0/16"} 1.0' in controller.read("/metrics")
    if how == "sigterm":
        assert controller.stop() == 0
    else:
        controller.kill()  # no cleanup at all: the child sees its end of the socket pair close
    wait_for(lambda: not alive(child), 10, 0.1, "the metrics port's process to exit")
    assert controller.get("/healthz", token=None) == 0


def test_a_metrics_port_process_that_dies_is_replaced_and_the_controller_goes_on(
    cluster: Cluster, start_controller: Callable[..., ControllerProcess]
) -> None:
    controller = start_controller("--cluster-cidr=10.244.0.0/16")
    wait_for(lambda: controller.get("/readyz", token=None) == 200, what="readyz")
    first = wait_for(lambda: metrics_server_pid(controller.process.pid), what="the metrics port's process")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: metrics_server_pid(controller.process.pid) not in (None, first), 20, 0.1, "another process")
    cluster.create_nodes(["after"])
    cluster.wait_assigned(["after"])
    wait_for(lambda: controller.get("/metrics") == 200, 20, 0.2, "a scrape")
    text = controller.read("/metrics")
    assert 'node_ipam_controller_background_failures_total{loop="metrics_port"} 1.0' in text, text
    assert f"the metrics port's server (process {first}) exited (status -9)" in controller.log()
    assert controller.process.poll() is None
