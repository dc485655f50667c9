"""The bench's watch of Nodes, in a process of its own (see `Watcher` in bench.harness).

A module of its own so that a spawned process can import its entry point:
multiprocessing does not import a package's `__main__` in the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from multiprocessing.connection import Connection

import aiohttp
import msgspec

from controller.credentials import Credentials
from controller.kube import KubeClient

REPORT_INTERVAL = 0.05  # the watch process sends what it saw this often


class _WatchedMeta(msgspec.Struct):
    name: str = ""
    resourceVersion: str = ""


class _WatchedSpec(msgspec.Struct):
    podCIDR: str = ""


class _WatchedObject(msgspec.Struct):
    metadata: _WatchedMeta = msgspec.field(default_factory=_WatchedMeta)
    spec: _WatchedSpec = msgspec.field(default_factory=_WatchedSpec)
    code: int = 0  # a Status in an ERROR event


class _WatchEvent(msgspec.Struct):
    """The few fields the bench reads of a ~10 KB watch event; msgspec skips the rest unparsed."""

    type: str
    object: _WatchedObject


def watch_nodes(kubeconfig: str, connection: Connection) -> None:
    """The watch process: list, then watch Nodes, sending back when each is first seen, and first seen with a
    podCIDR."""
    os.setsid()  # a CPU share of its own where the kernel groups CPU time by session, as the controller has
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(Credentials.load(kubeconfig), connection))


async def _watch(credentials: Credentials, connection: Connection) -> None:
    seen: list[tuple[str, float]] = []  # first seen with a podCIDR
    appeared: list[tuple[str, float]] = []  # ADDED: how late the API server delivers a new Node to its watchers
    counts = {"resumed": 0, "relisted": 0}

    def report(ready: bool = False) -> None:
        connection.send((seen.copy(), appeared.copy(), counts["resumed"], counts["relisted"], ready))
        seen.clear()
        appeared.clear()

    async def listed() -> str:
        async with KubeClient(credentials) as kube:
            nodes, version = await kube.list_nodes()
        now = time.monotonic()
        appeared.extend((node.name, now) for node in nodes)
        seen.extend((node.name, now) for node in nodes if node.pod_cidrs)
        return version

    version = await listed()
    report(ready=True)
    decoder = msgspec.json.Decoder(_WatchEvent)
    headers = {"Authorization": f"Bearer {credentials.current_token()}"}
    connector = aiohttp.TCPConnector(ssl=credentials.ssl_context())

    async def report_often() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            if seen or appeared:
                report()

    reporter = asyncio.ensure_future(report_often())
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        while not reporter.done():
            params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true"}
            async with session.get(credentials.server + "/api/v1/nodes", params=params, headers=headers) as response:
                if response.status != 200:  # e.g. 504 while the API server's cache catches up: try again
                    await asyncio.sleep(1)
                    continue
                async for line in response.content:
                    event = decoder.decode(line)
                    if event.type == "ERROR":
                        if event.object.code == 410:  # resumed past the API server's watch cache
                            counts["relisted"] += 1
                            version = await listed()
                        else:
                            await asyncio.sleep(1)
                        break
                    version = event.object.metadata.resourceVersion or version
                    if event.type == "ADDED":
                        appeared.append((event.object.metadata.name, time.monotonic()))
                    if event.type in ("ADDED", "MODIFIED") and event.object.spec.podCIDR:
                        seen.append((event.object.metadata.name, time.monotonic()))
                else:
                    counts["resumed"] += 1  # the API server ended the watch; resume from the last version seen
