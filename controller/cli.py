"""The `nodeipam` command: run, status, check, explain, plan; `kubectl ipam status|check|explain|plan` as a kubectl plugin.

`nodeipam run` takes kube-controller-manager's nodeipam flags by name, so
existing flags can be pasted; its flags that mean nothing here are dropped
with a note. Flags are validated into one frozen Settings before anything
touches the cluster; a bad flag exits 2 with the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import sys
from collections.abc import Sequence

import netaddr

from controller import config, flagvalues, pasted_flags
from controller.config import FamilyRange, LeaderElection, Settings
from controller.credentials import Credentials, CredentialsError
from controller.flagvalues import ConfigError
from controller.run_flags import check_can_listen, settings_from_args
from controller.secure_serving import DEFAULT_ALWAYS_ALLOW_PATHS


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


def _add_connection_flags(parser: argparse.ArgumentParser, plugin: bool = False) -> None:
    """--kubeconfig, --context, --master; as a kubectl plugin, kubectl's -s/--server too."""
    parser.add_argument("--kubeconfig", help="kubeconfig file (else in-cluster config, else $KUBECONFIG / ~/.kube/config)")
    parser.add_argument("--context", help="the kubeconfig context to use (default: its current-context)")
    servers = ("--master", "-s", "--server") if plugin else ("--master",)
    parser.add_argument(
        *servers, dest="master", help="API server address, overriding the kubeconfig's (e.g. https://10.0.0.1:6443)"
    )


def _add_serving_flags(parser: argparse.ArgumentParser) -> None:
    """kube-controller-manager's secure-serving flags, for the metrics port."""
    parser.add_argument("--tls-cert-file", default=None, help="PEM certificate for https (default: self-signed at start-up)")
    parser.add_argument("--tls-private-key-file", default=None, help="PEM key of --tls-cert-file")
    parser.add_argument(
        "--authorization-always-allow-paths",
        default=",".join(DEFAULT_ALWAYS_ALLOW_PATHS),
        help="paths served without a token (default /healthz,/readyz,/livez); others need a token allowed to get them",
    )


def version() -> str:
    """The installed package's version (its metadata), as `--version` prints it."""
    try:
        return importlib.metadata.version("nodeipam")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


#: Exit statuses, one meaning each, so that scripts can tell them apart.
EXIT_OK = 0
EXIT_PROBLEMS = 1  # `check` found problems; `plan` found conflicts; `run` lost its Lease
EXIT_USAGE = 2  # bad flags, a bad kubeconfig or --context, a Deployment that does not exist
EXIT_CLUSTER = 3  # the cluster cannot be read: the API server is unreachable, or refuses the credentials or the request
INSPECT_EPILOG = """\
exit status: 0 fine; 1 problems found (check); 2 bad flags or usage (a flag, the kubeconfig, --context,
--deployment, a Node that does not exist for explain); 3 the cluster cannot be read (API server unreachable,
credentials or permission refused)"""
PLAN_EPILOG = """\
exit status: 0 safe to switch; 1 conflicts (each named); 2 bad flags or usage (a flag, the kubeconfig, --context,
--deployment); 3 the cluster cannot be read (API server unreachable, credentials or permission refused)"""
RUN_EPILOG = """\
kube-controller-manager's flags that mean nothing to nodeipam (--v, --secure-port, --bind-address, --profiling,
--controllers, --leader-elect-resource-lock, --feature-gates, ...) are accepted and ignored, one note each on stderr.

exit status: 0 stopped; 1 the Lease was lost; 2 bad flags or usage (a flag, the kubeconfig)"""
#: `kubectl ipam` with neither --cluster-cidr nor --deployment reads the ranges of this Deployment in -n/--namespace
#: (the chart's and the manifest's name and namespace).
PLUGIN_DEPLOYMENT_NAME = "nodeipam"
PLUGIN_NAMESPACE = "kube-system"


def _new_parser(prog: str, epilog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Node IPAM controller: a pod CIDR for every Node.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nodeipam {version()}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _new_parser("nodeipam", f"status, check and explain: {INSPECT_EPILOG}\nrun: see nodeipam run --help")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the controller",
        description="Run the controller (kube-controller-manager flag names).",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_range_flags(run, required=False)
    _add_connection_flags(run)
    run.add_argument(
        "--allocate-node-cidrs",
        nargs="?",
        const="true",
        default="true",
        metavar="BOOL",
        help="accepted for compatibility; nodeipam allocates whatever it says (false is noted on stderr)",
    )
    run.add_argument(
        "--cidr-allocator-type", default=config.SUPPORTED_ALLOCATOR_TYPE, help="accepted for compatibility; RangeAllocator only"
    )
    run.add_argument(
        "--kube-api-qps",
        type=float,
        default=Settings.kube_api_qps,
        help=f"client-side rate limit in requests/s: 0 (default) leaves it to the API server's priority and fairness,"
        f" else at least {config.MIN_KUBE_API_QPS:g}",
    )
    run.add_argument(
        "--kube-api-burst",
        type=int,
        default=None,
        help=f"requests allowed at once above --kube-api-qps, at least 1 when given with it"
        f" (not given: {config.KCM_KUBE_API_BURST}, as in kube-controller-manager, or the rate if higher)",
    )
    run.add_argument(
        "--max-requests-in-flight",
        type=int,
        default=Settings.max_in_flight,
        help=f"concurrent API requests (default {Settings.max_in_flight})",
    )
    run.add_argument(
        "--resync-period",
        default=flagvalues.go_duration(Settings.resync_period),
        help=(
            "how often to re-read the Nodes left open (no range yet, a patch of unknown outcome), a Go duration of at "
            f"least 1s (default {flagvalues.go_duration(Settings.resync_period)}); all Nodes are listed again only after a"
            " gap in the watch"
        ),
    )
    run.add_argument(
        "--leader-elect",
        nargs="?",
        const="true",
        default=str(LeaderElection.enabled).lower(),
        metavar="BOOL",
        help=f"use a Lease so only one replica allocates (default {str(LeaderElection.enabled).lower()})",
    )
    lease, renew, retry = (
        flagvalues.go_duration(seconds)
        for seconds in (LeaderElection.lease_duration, LeaderElection.renew_deadline, LeaderElection.retry_period)
    )
    run.add_argument("--leader-elect-lease-duration", default=lease, help=f"whole seconds, at least 1s (default {lease})")
    run.add_argument(
        "--leader-elect-renew-deadline",
        default=renew,
        help=f"below the lease duration, above 1.2 x retry period (default {renew})",
    )
    run.add_argument("--leader-elect-retry-period", default=retry, help=f"at least 100ms (default {retry})")
    name, namespace = LeaderElection.resource_name, LeaderElection.resource_namespace
    run.add_argument("--leader-elect-resource-name", default=name, help=f"Lease name (default {name})")
    run.add_argument("--leader-elect-resource-namespace", default=namespace, help=f"Lease namespace (default {namespace})")
    run.add_argument("--leader-elect-identity", default=LeaderElection.identity, help="holder identity (default hostname_uuid)")
    run.add_argument(
        "--metrics-bind-address",
        default=Settings.metrics_bind_address,
        help=f"host:port for /metrics, /healthz, /readyz; 0 disables (default {Settings.metrics_bind_address})",
    )
    run.add_argument(
        "--health-probe-bind-address",
        default=Settings.health_probe_bind_address,
        help="host:port for the kubelet's probes (/healthz, /livez, /readyz over http, from a process of its own);"
        f" 0 disables (default {Settings.health_probe_bind_address})",
    )
    run.add_argument("--log-level", default=Settings.log_level, choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--dry-run",
        nargs="?",
        const="true",
        default="false",
        metavar="BOOL",
        help="decide and log what would be allocated and released, and compare it with what another allocator writes"
        " (plan_disagreements_total); write nothing, take no Lease (default false)",
    )
    _add_serving_flags(run)

    _add_plan_command(commands)
    _add_inspect_commands(commands)
    return parser


def build_plugin_parser() -> argparse.ArgumentParser:
    """`kubectl ipam`: the read commands and plan, with kubectl's -n/--namespace and -s/--server."""
    parser = _new_parser("kubectl ipam", INSPECT_EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect_commands(commands, plugin=True)
    _add_plan_command(commands, plugin=True)
    return parser


def _add_inspect_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], plugin: bool = False) -> None:
    for name, summary in (
        ("status", "usage per cluster CIDR, from the Nodes"),
        ("check", "audit podCIDRs: duplicates, overlaps, out of range, in a service range, missing"),
        ("explain", "why a Node got its pool and range, or why it waits: every pool in order, and why each was taken or not"),
    ):
        inspector = commands.add_parser(
            name, help=summary, description=summary, epilog=INSPECT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        _add_range_flags(inspector, required=False)
        _add_connection_flags(inspector, plugin)
        _add_deployment_flags(inspector, plugin)
        inspector.add_argument(
            "-o", "--output", choices=["text", "json", "yaml"], default="text", help="json and yaml: one document"
        )
        if name == "explain":
            inspector.add_argument("node", metavar="NODE", help="the Node's name")
        if name == "status":
            inspector.add_argument(
                "--html",
                metavar="FILE",
                default="",
                help="also write a picture of the address space to FILE: one page, a block per node subnet, usage and legend",
            )
            inspector.add_argument("--svg", metavar="FILE", default="", help="also write the grid of blocks alone to FILE (SVG)")


def _add_deployment_flags(parser: argparse.ArgumentParser, plugin: bool) -> None:
    """--deployment (and, as a kubectl plugin, -n/--namespace): the range flags read from the installed controller."""
    parser.add_argument(
        "--deployment",
        metavar="NAMESPACE/NAME",
        help="take the range flags from this nodeipam Deployment's container args instead of --cluster-cidr"
        + (f"; NAME alone: in --namespace (with neither: {PLUGIN_DEPLOYMENT_NAME})" if plugin else ""),
    )
    if plugin:
        parser.add_argument(
            "-n", "--namespace", default=PLUGIN_NAMESPACE, help=f"the Deployment's namespace (default {PLUGIN_NAMESPACE})"
        )


def _add_plan_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], plugin: bool = False) -> None:
    summary = "read-only takeover report: what the controller would find and do, and conflicts"
    plan = commands.add_parser(
        "plan", help=summary, description=summary, epilog=PLAN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_range_flags(plan, required=False)
    _add_connection_flags(plan, plugin)
    _add_deployment_flags(plan, plugin)
    plan.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    plan.add_argument(
        "--watch",
        default="0s",
        metavar="DURATION",
        help="list the Nodes again after this long (a Go duration, e.g. 30s) and name every podCIDR written meanwhile",
    )


def _fail(command: str, error: Exception, status: int = EXIT_USAGE, prog: str = "nodeipam") -> int:
    print(f"{prog} {command}: error: {error}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """The exit status: EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE or EXIT_CLUSTER (see INSPECT_EPILOG and RUN_EPILOG)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        kept, notes = pasted_flags.drop_ignored_flags(argv[1:])
        argv = ["run", *kept]
        for note in notes:
            print(f"nodeipam run: {note}", file=sys.stderr)
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "plan":
        return _plan(args)
    return _inspect(args)


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl ipam status|check|explain|plan` (kubectl-ipam, which kubectl finds on PATH), kubectl's flags mapped onto ours.

    -n/--namespace and a bare Deployment NAME make --deployment; with neither
    --cluster-cidr nor --deployment, the ranges come from the nodeipam
    Deployment in the namespace (kube-system unless -n says otherwise).
    """
    args = build_plugin_parser().parse_args(argv)
    if not args.cluster_cidr:
        name = args.deployment or PLUGIN_DEPLOYMENT_NAME
        args.deployment = name if "/" in name else f"{args.namespace}/{name}"
    if args.command == "plan":
        return _plan(args, prog="kubectl ipam")
    return _inspect(args, prog="kubectl ipam")


def _run(args: argparse.Namespace) -> int:
    """Everything that can be wrong with the input is found before the controller starts."""
    try:
        settings = settings_from_args(args)
        if not flagvalues.parse_bool("--allocate-node-cidrs", args.allocate_node_cidrs):
            print(
                "nodeipam run: note: --allocate-node-cidrs=false ignored: nodeipam allocates regardless;"
                " it is kube-controller-manager that must run with --allocate-node-cidrs=false",
                file=sys.stderr,
            )
        if settings.dry_run and flagvalues.parse_bool("--leader-elect", args.leader_elect):
            print("nodeipam run: note: --leader-elect ignored: a dry run takes no Lease and writes nothing", file=sys.stderr)
        check_can_listen("--metrics-bind-address", settings.metrics_bind_address)
        check_can_listen("--health-probe-bind-address", settings.health_probe_bind_address)
        credentials = Credentials.load(settings.kubeconfig, settings.master, context=args.context)
    except (ConfigError, CredentialsError) as error:
        return _fail("run", error)
    from controller import lifecycle
    from controller.metrics_port import MetricsServerError
    from controller.probes import ProbeServerError

    lifecycle.configure_logging(settings.log_level)
    # Armed when stopping begins; covers the event loop's own cleanup after run() too.
    deadline = lifecycle.ShutdownDeadline(lifecycle.SHUTDOWN_GRACE_SECONDS)
    try:
        asyncio.run(lifecycle.run(settings, credentials, deadline))
    except (lifecycle.LeadershipLost, ProbeServerError, MetricsServerError) as error:
        print(f"nodeipam run: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    finally:
        deadline.cancel()
    return EXIT_OK


def _inspect(args: argparse.Namespace, prog: str = "nodeipam") -> int:
    """`status`, `check` and `explain`: flags first, then credentials, then the cluster."""
    from controller import cluster_reads, inspect

    try:
        credentials, ranges, service_cidrs, lease = _inputs(args)
        if args.command == "explain":
            from controller import explain_command

            where = lease or (LeaderElection.resource_namespace, LeaderElection.resource_name)
            explain_command.explain_command(args.node, ranges, service_cidrs, credentials, args.output, where)
            return EXIT_OK
        if args.command == "status":
            inspect.status_command(ranges, service_cidrs, credentials, args.output, args.html, args.svg, lease)
            return EXIT_OK
        found = inspect.check_command(ranges, service_cidrs, credentials, args.output)
        return EXIT_PROBLEMS if found else EXIT_OK
    except (ConfigError, CredentialsError, cluster_reads.InspectError) as error:
        return _fail(args.command, error, prog=prog)
    except cluster_reads.ClusterError as error:
        return _fail(args.command, error, EXIT_CLUSTER, prog)


def _plan(args: argparse.Namespace, prog: str = "nodeipam") -> int:
    """`plan`: flags first (exit 2), then credentials (2), then the cluster (3); 0 safe to switch, 1 conflicts."""
    from controller import cluster_reads, plan_command

    try:
        watch = flagvalues.parse_duration("--watch", args.watch)
        credentials, ranges, service_cidrs, _ = _inputs(args)
        plan = asyncio.run(plan_command.compute(ranges, service_cidrs, credentials, watch, args.watch))
    except (ConfigError, CredentialsError, cluster_reads.InspectError) as error:
        return _fail("plan", error, prog=prog)
    except cluster_reads.ClusterError as error:
        return _fail("plan", error, EXIT_CLUSTER, prog)
    print(plan_command.render(plan, args.output))
    return EXIT_OK if plan.safe else EXIT_PROBLEMS


Inputs = tuple[Credentials, tuple[FamilyRange, ...], tuple[netaddr.IPNetwork, ...], tuple[str, str] | None]


def _inputs(args: argparse.Namespace) -> Inputs:
    """The credentials, and the ranges either from the flags or from --deployment's args (with its Lease's place).

    What the flags alone can say is checked before the kubeconfig is read, and that before the cluster.
    """
    from controller import cluster_reads

    config.check_master(args.master)
    from_deployment = bool(args.deployment) and not args.cluster_cidr
    if from_deployment:
        cluster_reads.split_deployment_reference(args.deployment)
    else:
        ranges, service_cidrs = _inspected_ranges(args)
    credentials = Credentials.load(args.kubeconfig, args.master, context=args.context)
    if not from_deployment:
        return credentials, ranges, service_cidrs, None
    run, *flags = cluster_reads.args_of_deployment(args.deployment, credentials)
    kept, _ = pasted_flags.drop_ignored_flags(flags)
    run_args = build_parser().parse_args([run, *kept])
    ranges, service_cidrs = _inspected_ranges(run_args)
    return credentials, ranges, service_cidrs, (run_args.leader_elect_resource_namespace, run_args.leader_elect_resource_name)


def _inspected_ranges(flags: argparse.Namespace) -> tuple[tuple[FamilyRange, ...], tuple[netaddr.IPNetwork, ...]]:
    if not flags.cluster_cidr:
        raise ConfigError(
            "--cluster-cidr",
            "is required",
            "pass the pod network, e.g. --cluster-cidr=10.244.0.0/16, or read it from the controller's Deployment"
            " with --deployment=kube-system/nodeipam",
        )
    ranges = config.build_ranges(
        flags.cluster_cidr, flags.node_cidr_mask_size, flags.node_cidr_mask_size_ipv4, flags.node_cidr_mask_size_ipv6
    )
    return ranges, config.build_service_cidrs(flags.service_cluster_ip_range)


if __name__ == "__main__":
    sys.exit(main())
