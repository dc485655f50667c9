"""The `nodeipam` command: run, demo, status, check.

`nodeipam run` takes kube-controller-manager's nodeipam flags by name, so
existing flags can be pasted. Flags are validated into one frozen Settings
before anything touches the cluster; a bad flag exits 2 with the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from controller import config
from controller.config import ConfigError, LeaderElection, Settings


def _add_range_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--cluster-cidr",
        required=required,
        help="CIDR range(s) for pods, comma-separated, at most one IPv4 and one IPv6, e.g. 10.244.0.0/16",
    )
    parser.add_argument("--node-cidr-mask-size", type=int, help="node subnet prefix length (single-stack only)")
    parser.add_argument(
        "--node-cidr-mask-size-ipv4", type=int, help=f"IPv4 node subnet prefix length (default {config.DEFAULT_NODE_MASK_IPV4})"
    )
    parser.add_argument(
        "--node-cidr-mask-size-ipv6", type=int, help=f"IPv6 node subnet prefix length (default {config.DEFAULT_NODE_MASK_IPV6})"
    )
    parser.add_argument("--service-cluster-ip-range", help="service CIDR(s), kept out of the pod ranges if they overlap")


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (else in-cluster config, else $KUBECONFIG / ~/.kube/config)")
    parser.add_argument("--master", help="API server address, overriding the kubeconfig's (e.g. https://10.0.0.1:6443)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeipam", description="Node IPAM controller: a pod CIDR for every Node.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the controller", description="Run the controller (kube-controller-manager flag names)."
    )
    _add_range_flags(run, required=False)
    _add_connection_flags(run)
    run.add_argument(
        "--allocate-node-cidrs",
        nargs="?",
        const="true",
        default="true",
        metavar="BOOL",
        help="accepted for compatibility; must be true",
    )
    run.add_argument(
        "--cidr-allocator-type", default=config.SUPPORTED_ALLOCATOR_TYPE, help="accepted for compatibility; RangeAllocator only"
    )
    run.add_argument(
        "--kube-api-qps",
        type=float,
        default=0.0,
        help="client-side rate limit in requests/s; 0 (default) leaves it to the API server's priority and fairness",
    )
    run.add_argument("--kube-api-burst", type=int, default=0, help="burst for --kube-api-qps")
    run.add_argument("--max-requests-in-flight", type=int, default=64, help="concurrent API requests (default 64)")
    run.add_argument(
        "--resync-period", default="3m", help="how often to re-list Nodes and free ranges of vanished ones (default 3m)"
    )
    run.add_argument(
        "--leader-elect",
        nargs="?",
        const="true",
        default="true",
        metavar="BOOL",
        help="use a Lease so only one replica allocates (default true)",
    )
    run.add_argument("--leader-elect-lease-duration", default="15s", help="default 15s")
    run.add_argument("--leader-elect-renew-deadline", default="10s", help="default 10s")
    run.add_argument("--leader-elect-retry-period", default="2s", help="default 2s")
    run.add_argument("--leader-elect-resource-name", default="nodeipam", help="Lease name (default nodeipam)")
    run.add_argument("--leader-elect-resource-namespace", default="kube-system", help="Lease namespace (default kube-system)")
    run.add_argument("--leader-elect-identity", default="", help="holder identity (default hostname_uuid)")
    run.add_argument(
        "--metrics-bind-address",
        default="0.0.0.0:9254",
        help="host:port for /metrics, /healthz, /readyz; 0 disables (default 0.0.0.0:9254)",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    demo = commands.add_parser(
        "demo", help="start a local control plane, run the controller, register Nodes, show their podCIDRs"
    )
    demo.add_argument("--nodes", type=int, default=5, help="how many Nodes to register (default 5)")
    demo.add_argument("--cluster-cidr", default="10.244.0.0/16")
    demo.add_argument("--once", action="store_true", help="print the Nodes and exit instead of running until Ctrl-C")

    status = commands.add_parser("status", help="usage per cluster CIDR, from the Nodes")
    check = commands.add_parser("check", help="audit podCIDRs: duplicates, overlaps, out of range, missing")
    for inspector in (status, check):
        _add_range_flags(inspector, required=False)
        _add_connection_flags(inspector)
        inspector.add_argument(
            "--deployment",
            metavar="NAMESPACE/NAME",
            help="take the range flags from this nodeipam Deployment's container args instead of --cluster-cidr",
        )
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate every flag of `run`; raises ConfigError naming the flag and the fix."""
    if not config.parse_bool("--allocate-node-cidrs", args.allocate_node_cidrs):
        raise ConfigError("--allocate-node-cidrs", "is false, so there is nothing to do", "drop the flag or set it to true")
    if args.cidr_allocator_type != config.SUPPORTED_ALLOCATOR_TYPE:
        raise ConfigError(
            "--cidr-allocator-type",
            f"{args.cidr_allocator_type!r} is not supported",
            f"use {config.SUPPORTED_ALLOCATOR_TYPE} (or drop the flag)",
        )
    for flag, value in (("--kube-api-qps", args.kube_api_qps), ("--kube-api-burst", args.kube_api_burst)):
        if value < 0:
            raise ConfigError(flag, f"{value} is negative", "use 0 for no client-side limit, or a positive number")
    if args.max_requests_in_flight < 1:
        raise ConfigError("--max-requests-in-flight", f"{args.max_requests_in_flight} is below 1", "use at least 1")
    ranges = config.build_ranges(
        args.cluster_cidr, args.node_cidr_mask_size, args.node_cidr_mask_size_ipv4, args.node_cidr_mask_size_ipv6
    )
    leader = LeaderElection(
        enabled=config.parse_bool("--leader-elect", args.leader_elect),
        lease_duration=config.parse_duration("--leader-elect-lease-duration", args.leader_elect_lease_duration),
        renew_deadline=config.parse_duration("--leader-elect-renew-deadline", args.leader_elect_renew_deadline),
        retry_period=config.parse_duration("--leader-elect-retry-period", args.leader_elect_retry_period),
        resource_name=args.leader_elect_resource_name,
        resource_namespace=args.leader_elect_resource_namespace,
        identity=args.leader_elect_identity,
    )
    if leader.enabled and not leader.lease_duration > leader.renew_deadline > leader.retry_period > 0:
        raise ConfigError(
            "--leader-elect-renew-deadline",
            "leader election needs lease duration > renew deadline > retry period > 0",
            "e.g. --leader-elect-lease-duration=15s --leader-elect-renew-deadline=10s --leader-elect-retry-period=2s",
        )
    resync = config.parse_duration("--resync-period", args.resync_period)
    if resync <= 0:
        raise ConfigError("--resync-period", "must be positive", "e.g. --resync-period=3m")
    bind = args.metrics_bind_address
    if bind not in ("", "0") and not bind.rpartition(":")[2].isdigit():
        raise ConfigError("--metrics-bind-address", f"{bind!r} has no port", "write it as host:port, :port or 0 to disable")
    return Settings(
        ranges=ranges,
        service_cidrs=config.build_service_cidrs(args.service_cluster_ip_range),
        kubeconfig=args.kubeconfig,
        master=args.master,
        kube_api_qps=args.kube_api_qps,
        kube_api_burst=args.kube_api_burst,
        max_in_flight=args.max_requests_in_flight,
        resync_period=resync,
        leader_election=leader,
        metrics_bind_address=bind,
        log_level=args.log_level,
    )


def _fail(command: str, error: Exception) -> int:
    print(f"nodeipam {command}: error: {error}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        try:
            settings = settings_from_args(args)
        except ConfigError as error:
            return _fail("run", error)
        from controller import operator

        operator.configure_logging(settings.log_level)
        try:
            asyncio.run(operator.run(settings))
        except operator.LeadershipLost as error:
            print(f"nodeipam run: {error}", file=sys.stderr)
            return 1
        return 0
    if args.command == "demo":
        from controller import demo

        return demo.main(nodes=args.nodes, cluster_cidr=args.cluster_cidr, once=args.once)
    from controller import inspect

    try:
        flags = args
        if args.deployment and not args.cluster_cidr:
            flags = build_parser().parse_args(inspect.args_of_deployment(args.deployment, args.kubeconfig, args.master))
        ranges = config.build_ranges(
            flags.cluster_cidr, flags.node_cidr_mask_size, flags.node_cidr_mask_size_ipv4, flags.node_cidr_mask_size_ipv6
        )
        service_cidrs = config.build_service_cidrs(flags.service_cluster_ip_range)
    except (ConfigError, inspect.InspectError) as error:
        return _fail(args.command, error)
    if args.command == "status":
        return inspect.status_command(ranges, service_cidrs, args.kubeconfig, args.master, args.output)
    return inspect.check_command(ranges, args.kubeconfig, args.master)


if __name__ == "__main__":
    sys.exit(main())
