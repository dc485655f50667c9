"""The metrics port's process against a real API server: real token reviews, and the controller's own child.

A scrape with a token the API server accepts shows this process's metrics of the moment; a bad token is
refused; a child replaced after it stuck reviews tokens with a client of its own again. In the controller,
the child serves the port and dies with it, however it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, generate_latest

from bench.flood import metrics_server_pid
from controller.backoff import Backoff
from controller.credentials import Credentials
from controller.kube import KubeClient
from controller.loopwatch import Heartbeat, watch_loop
from controller.metrics_port import MetricsProcess
from controller.secure_serving import ACCESS_REVIEWS, TOKEN_REVIEWS
from controller.serving_reviews import DelegatingAuth
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
            "127.0.0.1:0",
            lambda: generate_latest(registry),
            heartbeat,
            credentials=credentials,
            feed_interval=0.1,
            stuck_after=1.0,
            backoff=Backoff(0.1),
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


class CountedReviews:
    """The real review client, counting what it sends and how many are at the API server at once."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self.sent: list[str] = []
        self.in_flight = 0
        self.most_at_once = 0

    async def request(self, method: str, path: str, *, body: Any = None) -> Any:
        self.sent.append(path)
        self.in_flight += 1
        self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            return await self.kube.request(method, path, body=body)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize(
    ("who", "status"),
    [pytest.param("admin", 200, id="allowed"), pytest.param("service-account", 403, id="authenticated-not-authorized")],
)
def test_a_token_whose_answers_expired_is_reviewed_again_by_the_real_api_server_both_reviews_at_once(
    control_plane: LocalControlPlane, who: str, status: int
) -> None:
    """The SubjectAccessReview sent beside the TokenReview is one the real API server accepts, and decides the same."""
    core = client.CoreV1Api(config.new_client_from_config(config_file=control_plane.kubeconfig))
    token = ADMIN_TOKEN
    if who == "service-account":
        account = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="metrics-reader-without-rights"))
        with contextlib.suppress(ApiException):
            core.create_namespaced_service_account("default", account)
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))
        token = core.create_namespaced_service_account_token("metrics-reader-without-rights", "default", request).status.token

    async def main() -> None:
        now = [0.0]
        async with KubeClient(Credentials.load(control_plane.kubeconfig)) as kube:
            reviews = CountedReviews(kube)
            auth = DelegatingAuth(reviews, clock=lambda: now[0])
            headers = {"Authorization": f"Bearer {token}"}
            assert (await auth.check(headers, "/metrics", "GET")).status == status
            assert reviews.most_at_once == 1  # a token not seen before: its user is not known yet
            now[0] += auth.ttl + 1
            reviews.sent.clear()
            assert (await auth.check(headers, "/metrics", "GET")).status == status
            assert sorted(reviews.sent) == sorted([TOKEN_REVIEWS, ACCESS_REVIEWS])
            assert reviews.most_at_once == 2

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
