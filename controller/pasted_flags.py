"""kube-controller-manager's flags that mean nothing to nodeipam: dropped from a pasted command line, each with a note.

Operators paste kube-controller-manager's command line; failing on its logging or serving flags with the top-level
usage helps nobody. The flags that would change what is allocated are not here: config.py refuses or notes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

# kube-controller-manager's flags that mean nothing to nodeipam, by what they do there. A name ending in "*" is a
# boolean (no separate value, as Go's flag package reads it); one ending in "-" is a prefix.
_KCM_IGNORED_FLAGS: dict[str, tuple[str, ...]] = {
    "logging; nodeipam has --log-level": (
        "v", "vmodule", "logtostderr*", "alsologtostderr*", "log-dir", "log-file", "log-file-max-size",
        "log-flush-frequency", "logging-format", "stderrthreshold", "skip-headers*", "skip-log-headers*",
        "add-dir-header*", "one-output*", "log-json-split-stream*", "log-json-info-buffer-size",
        "log-text-split-stream*", "log-text-info-buffer-size",
    ),
    "its serving port; nodeipam serves on --metrics-bind-address": (
        "secure-port", "bind-address", "port", "address", "cert-dir", "http2-max-streams-per-connection",
        "permit-address-sharing*", "permit-port-sharing*", "tls-cipher-suites", "tls-min-version", "tls-sni-cert-key",
        "profiling*", "contention-profiling*", "show-hidden-metrics-for-version", "allow-metric-labels",
        "allow-metric-labels-manifest", "disabled-metrics",
    ),
    "who may call its port; nodeipam asks its own API server (TokenReview, SubjectAccessReview)": (
        "authentication-kubeconfig", "authentication-skip-lookup*", "authentication-token-webhook-cache-ttl",
        "authentication-tolerate-lookup-failure*", "authorization-kubeconfig", "authorization-webhook-cache-authorized-ttl",
        "authorization-webhook-cache-unauthorized-ttl", "client-ca-file", "requestheader-",
    ),
    "its other controllers": (
        "controllers", "use-service-account-credentials*", "root-ca-file", "service-account-private-key-file",
        "cluster-signing-", "cloud-provider", "cloud-config", "external-cloud-volume-plugin", "configure-cloud-routes*",
        "cluster-name", "concurrent-", "node-monitor-period", "node-monitor-grace-period", "node-startup-grace-period",
        "terminated-pod-gc-threshold", "horizontal-pod-autoscaler-", "pv-recycler-", "enable-hostpath-provisioner*",
        "enable-garbage-collector*", "large-cluster-size-threshold", "unhealthy-zone-threshold",
        "node-eviction-rate", "secondary-node-eviction-rate", "route-reconciliation-period",
    ),
    "its leader election; nodeipam always holds a Lease": (
        "leader-elect-resource-lock", "leader-migration-config", "enable-leader-migration*",
    ),
    "its client and start-up; nodeipam speaks JSON and starts at once": (
        "kube-api-content-type", "controller-start-interval", "min-resync-period", "feature-gates",
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _IgnoredFlag:
    why: str
    boolean: bool


def _ignored_flag(name: str) -> _IgnoredFlag | None:
    for why, names in _KCM_IGNORED_FLAGS.items():
        for entry in names:
            known = entry.rstrip("*")
            if name == known or (known.endswith("-") and name.startswith(known)):
                return _IgnoredFlag(why, entry.endswith("*"))
    return None


def drop_ignored_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the args without kube-controller-manager's flags that mean nothing here, one note for each dropped).

    Pasted flags then start the controller instead of failing with the usage.
    Read as Go's flag package reads them: `--name=value`, `--name value`, a
    boolean bare; `-v` as --v. Nothing after `--` is looked at.
    """
    kept: list[str] = []
    notes: list[str] = []
    position = 0
    while position < len(argv):
        arg = argv[position]
        position += 1
        if arg == "--":
            kept.extend(argv[position - 1 :])
            break
        name, equals, _ = arg.partition("=")
        if name == "-v" or (name.startswith("-v") and name[2:].isdigit()):
            name, equals = "--v", equals or ("=" if name != "-v" else "")
        if not name.startswith("--"):
            kept.append(arg)
            continue
        ignored = _ignored_flag(name[2:])
        if ignored is None:
            kept.append(arg)
            continue
        given = arg
        if not equals and not ignored.boolean and position < len(argv):
            given = f"{arg} {argv[position]}"
            position += 1
        notes.append(f"note: {given} ignored: kube-controller-manager's flag for {ignored.why}")
    return kept, notes
