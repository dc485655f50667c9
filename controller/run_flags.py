"""The flags of `nodeipam run`, validated into one frozen Settings before anything touches the cluster.

Each check raises ConfigError naming the flag and the fix (cli.py prints it and exits 2); a port that cannot
be bound is found here too, before the controller starts.
"""

from __future__ import annotations

import argparse
import socket

from controller import config, flagvalues
from controller.config import Settings
from controller.flagvalues import ConfigError
from controller.secure_serving import ServingOptions, parse_always_allow_paths


def serving_options(args: argparse.Namespace) -> ServingOptions:
    if bool(args.tls_cert_file) != bool(args.tls_private_key_file):
        raise ConfigError("--tls-cert-file", "is given without --tls-private-key-file or the reverse", "give both or neither")
    try:
        paths = parse_always_allow_paths(args.authorization_always_allow_paths)
    except ValueError as error:
        raise ConfigError(
            "--authorization-always-allow-paths", str(error), "give absolute paths, e.g. /healthz,/readyz"
        ) from error
    return ServingOptions(args.tls_cert_file, args.tls_private_key_file, paths)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Validate every flag of `run`; raises ConfigError naming the flag and the fix."""
    flagvalues.parse_bool("--allocate-node-cidrs", args.allocate_node_cidrs)  # false: a note (see _run), not an error
    config.check_allocator_type(args.cidr_allocator_type)
    config.check_rate_limit(args.kube_api_qps, args.kube_api_burst)
    if args.max_requests_in_flight < 1:
        raise ConfigError("--max-requests-in-flight", f"{args.max_requests_in_flight} is below 1", "use at least 1")
    ranges = config.build_ranges(
        args.cluster_cidr, args.node_cidr_mask_size, args.node_cidr_mask_size_ipv4, args.node_cidr_mask_size_ipv6
    )
    dry_run = flagvalues.parse_bool("--dry-run", args.dry_run)
    leader = config.build_leader_election(
        enabled=flagvalues.parse_bool("--leader-elect", args.leader_elect) and not dry_run,  # a dry run takes no Lease
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline,
        retry_period=args.leader_elect_retry_period,
        resource_name=args.leader_elect_resource_name,
        resource_namespace=args.leader_elect_resource_namespace,
        identity=args.leader_elect_identity,
    )
    resync = config.parse_resync_period(args.resync_period)
    config.check_master(args.master)
    config.check_bind_address("--metrics-bind-address", args.metrics_bind_address)
    config.check_bind_address("--health-probe-bind-address", args.health_probe_bind_address)
    probe_port = config.split_bind_address(args.health_probe_bind_address)
    if probe_port is not None and probe_port[1] != 0 and probe_port == config.split_bind_address(args.metrics_bind_address):
        taken = f"{args.health_probe_bind_address!r} is the metrics port too"
        raise ConfigError("--health-probe-bind-address", taken, "give it a port of its own")
    return Settings(
        ranges=ranges,
        service_cidrs=config.build_service_cidrs(args.service_cluster_ip_range),
        kubeconfig=args.kubeconfig,
        master=args.master,
        kube_api_qps=args.kube_api_qps,
        kube_api_burst=config.kube_api_burst(args.kube_api_qps, args.kube_api_burst),
        max_in_flight=args.max_requests_in_flight,
        resync_period=resync,
        leader_election=leader,
        metrics_bind_address=args.metrics_bind_address,
        health_probe_bind_address=args.health_probe_bind_address,
        serving=serving_options(args),
        log_level=args.log_level,
        dry_run=dry_run,
    )


def check_can_listen(flag: str, address: str) -> None:
    """Bind `address` once and let go, so that a port in use or a foreign address fails now, with the flag named.

    The port is free again for the server a moment later (SO_REUSEADDR, as
    the server sets it); a process that takes it in between fails at start.
    """
    bind = config.split_bind_address(address)
    if bind is None:
        return
    host, port = bind
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, protocol, _, where in found:
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(where)
    except OSError as error:
        raise ConfigError(
            flag,
            f"cannot listen on {address} ({error.strerror or error})",
            "use a free port on an address of this machine, e.g. 127.0.0.1:9254, or 0 to turn it off",
        ) from None
