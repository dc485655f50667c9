"""What a burst cost the API server, read from its own /metrics: the requests it served, the bytes it allocated.

Both halves of the pools profile create and patch the same Nodes; what
differs is what the controller writes about its pools. The requests, by verb
and resource (`apiserver_request_total`), show that difference next to the
Nodes' own. The bytes its Go runtime allocated (`go_memstats_alloc_bytes_total`)
are what drives its collector, whose marks slow the patches sent meanwhile
(bench.apigc): a NodeCIDRPool status write costs the API server more than a
Node's patch does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Load:
    """Requests served, keyed "VERB resource[/subresource]" (whatever their answer), and bytes allocated."""

    requests: dict[str, int] = field(default_factory=dict)
    allocated_bytes: float = 0.0

    def since(self, before: Load) -> Load:
        """What was served between two readings: the kinds of request that were made at all, most first."""
        grown = {key: count - before.requests.get(key, 0) for key, count in self.requests.items()}
        requests = dict(sorted(((key, count) for key, count in grown.items() if count > 0), key=lambda item: -item[1]))
        return Load(requests, self.allocated_bytes - before.allocated_bytes)

    def line(self, nodes: int, seconds: float, kinds: int = 6) -> str:
        """On one line: all requests per Node and per second (of the `seconds` between the readings), the `kinds`
        most made, and the bytes allocated per Node."""
        if not self.requests or seconds <= 0:
            return ""
        total = sum(self.requests.values())
        each = ", ".join(f"{key} {count}" for key, count in list(self.requests.items())[:kinds])
        if len(self.requests) > kinds:
            rest = list(self.requests.values())[kinds:]
            each += f", {len(rest)} other kinds {sum(rest)}"
        return (
            f"the API server served {total} requests ({total / nodes:.2f} per Node, {total / seconds:.0f}/s): {each}; "
            f"it allocated {self.allocated_bytes / nodes / 1024:.0f} KiB per Node"
        )


def read(metrics_text: str) -> Load:
    """The API server's counters so far, from the text of its /metrics."""
    load = Load()
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "go_memstats_alloc_bytes":  # a gauge (in use) and a counter (_total) share the name
            load.allocated_bytes += sum(s.value for s in family.samples if s.name == "go_memstats_alloc_bytes_total")
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if sample.name != "apiserver_request_total":
                continue
            resource = labels.get("resource", "")
            if labels.get("subresource"):
                resource += "/" + labels["subresource"]
            key = f"{labels['verb']} {resource}"
            load.requests[key] = load.requests.get(key, 0) + int(sample.value)
    return load
