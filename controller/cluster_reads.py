"""What the read-only commands read of the cluster: Nodes, NodeCIDRPools, a Deployment's flags, a Lease's record.

`nodeipam status` and `check` (inspect.py) and `explain` (explain_command.py)
present what is read here; this module sends the GETs and LISTs, parses the
NodeCIDRPools once, and turns an API error into one line that says what to
check. A read whose absence the output can do without (pools the user may
not list, the record of patches in flight) is a note on stderr instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

from controller import inflight
from controller.config import is_dns_label, is_dns_subdomain
from controller.credentials import Credentials
from controller.kube import ApiError, KubeClient
from controller.model import NodeInfo
from controller.pools import PoolSpec, PoolSpecError

POOLS_RESOURCE = "nodecidrpools.nodeipam.io"

T = TypeVar("T")


class InspectError(RuntimeError):
    """Bad input for `status`, `check` or `explain` (exit status 2); the message names the flag and the fix."""


class ClusterError(RuntimeError):
    """The API server could not be reached or refused (exit status 3); the message says what to check."""


def explain_api_error(error: ApiError, credentials: Credentials, request: str) -> str:
    """One line for an API error: unreachable, unauthenticated, forbidden (naming the permission), or other."""
    server = credentials.server
    if error.status == 0:
        cause = " ".join(str(error.__cause__ or error.message).split())
        return f"cannot reach the API server at {server}: {cause}; check --kubeconfig/--master and that the API server is up"
    if error.status == 401:
        return f"the API server at {server} does not accept these credentials (401 Unauthorized); check the kubeconfig's user"
    if error.status == 403:
        return f"the API server at {server} forbids {request} (403 Forbidden: {error.message}); grant it to this user"
    return f"the API server at {server} answered {request} with {error}"


def _read(credentials: Credentials, read: Callable[[KubeClient], Awaitable[T]]) -> T:
    """One read, with a client of its own, from the commands' synchronous code."""

    async def run() -> T:
        async with KubeClient(credentials) as kube:
            return await read(kube)

    return asyncio.run(run())


def split_deployment_reference(reference: str) -> tuple[str, str]:
    """ "NAMESPACE/NAME" -> (namespace, name), each a valid Kubernetes name."""
    namespace, _, name = reference.rpartition("/")
    if not is_dns_label(namespace) or not is_dns_subdomain(name):
        raise InspectError(f"--deployment: {reference!r} is not NAMESPACE/NAME; e.g. --deployment=kube-system/nodeipam")
    return namespace, name


def args_of_deployment(reference: str, credentials: Credentials) -> list[str]:
    """The `run ...` args of a nodeipam Deployment ("NAMESPACE/NAME"), so its own flags describe the ranges."""
    namespace, name = split_deployment_reference(reference)
    try:
        deployment = _read(
            credentials, lambda kube: kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
        )
    except ApiError as error:
        if error.status == 404:
            raise InspectError(
                f"--deployment: there is no deployment {name} in namespace {namespace};"
                " give the controller's NAMESPACE/NAME (kubectl get deployments -A lists them)"
            ) from None
        raise ClusterError(explain_api_error(error, credentials, f"get on deployments.apps in namespace {namespace}")) from None
    for container in deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
        argv = [*container.get("command", []), *container.get("args", [])]
        if "run" in argv:
            return argv[argv.index("run") :]
    raise InspectError(f"--deployment: no container of {reference} runs `nodeipam run`; give the controller's Deployment")


def list_nodes(credentials: Credentials) -> list[NodeInfo]:
    try:
        nodes, _ = _read(credentials, lambda kube: kube.list_nodes())
        return nodes
    except ApiError as error:
        raise ClusterError(explain_api_error(error, credentials, "list on nodes (cluster-wide)")) from None


@dataclasses.dataclass(frozen=True)
class PoolsRead:
    """The NodeCIDRPools listed, each parsed once: the specs of those that parse, in LIST order, and why the others
    do not."""

    specs: tuple[PoolSpec, ...] = ()
    invalid: tuple[str, ...] = ()

    @property
    def listed(self) -> bool:
        """Whether any NodeCIDRPool was listed, parsed or not."""
        return bool(self.specs or self.invalid)

    @classmethod
    def parse(cls, bodies: Iterable[Mapping[str, Any]]) -> PoolsRead:
        specs = []
        invalid = []
        for body in bodies:
            try:
                specs.append(PoolSpec.from_body(body))
            except PoolSpecError as error:
                invalid.append(str(error))
        return cls(tuple(specs), tuple(invalid))


#: No NodeCIDRPool: the flags' ranges alone.
NO_POOLS = PoolsRead()


def list_pools(credentials: Credentials) -> PoolsRead:
    """Every NodeCIDRPool, parsed; none when the CRD is not installed, or (with a note) when the user may not list them."""
    try:
        bodies = _read(credentials, KubeClient.list_pools) or []
    except ApiError as error:
        if error.status == 403:  # status of the ranges from the flags needs only Nodes: show those
            print(f"note: pools not shown: {explain_api_error(error, credentials, f'list on {POOLS_RESOURCE}')}", file=sys.stderr)
            return NO_POOLS
        raise ClusterError(explain_api_error(error, credentials, f"list on {POOLS_RESOURCE}")) from None
    return PoolsRead.parse(bodies)


def read_in_flight(credentials: Credentials, lease: tuple[str, str]) -> list[inflight.InFlight]:
    """The controller's record of patches in flight, from its Lease (namespace, name); none when it cannot be read.

    The picture is drawn all the same without it: the state is then missing,
    and a note on stderr says why.
    """
    namespace, name = lease
    try:
        body = _read(
            credentials, lambda kube: kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
        )
    except ApiError as error:
        if error.status != 404:
            why = explain_api_error(error, credentials, f"get on leases.coordination.k8s.io in namespace {namespace}")
            print(f"note: patches in flight not shown: {why}", file=sys.stderr)
        return []
    return in_flight_of(lease, body)


def in_flight_of(lease: tuple[str, str], body: Mapping[str, Any] | None) -> list[inflight.InFlight]:
    """The record of patches in flight a Lease (namespace, name; None: there is none) holds; a note on stderr when
    the record cannot be read whole."""
    annotations = ((body or {}).get("metadata") or {}).get("annotations") or {}
    entries, problem = inflight.decode(str(annotations.get(inflight.ANNOTATION, "")))
    if problem:
        print(f"note: the Lease {lease[0]}/{lease[1]}'s record of patches in flight: {problem}", file=sys.stderr)
    return entries
