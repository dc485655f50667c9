"""A flood of the metrics port, on a HealthServer in a process of its own (its memory read from /proc).

1,000 idle TLS connections, then 2,000 /metrics requests with random tokens, all held open, with a review API
that takes 50 ms a review, two at a time (bench/flood.py, which `python -m bench.flood` runs too). Imports
nothing of the server but its constructor, so that it runs against older code as well.
"""

from __future__ import annotations

from bench.flood import REVIEWS_AT_ONCE, VALID_TOKEN, health_server, measure, raise_open_files_limit

FLOOD_IDLE = 1000
FLOOD_PENDING = 2000
#: What the flood may add to the server's memory: 128 connections take ~40 MiB; before the limits, 1,000
#: idle connections alone took ~275 MiB and the whole flood ~830 MiB.
FLOOD_MEMORY_MIB = 100
#: A valid scrape during the flood: answered at once (cached) or after one review ahead of the flood's;
#: before, it waited ~40 s behind 2,000 reviews of 50 ms, two at a time.
FLOOD_SCRAPE_SECONDS = 15.0


def test_a_flood_leaves_memory_bounded_and_a_valid_scrape_answers() -> None:
    raise_open_files_limit()
    with health_server(review_seconds=0.05) as server:
        figures = measure(server.port, server.pid, FLOOD_IDLE, FLOOD_PENDING, VALID_TOKEN, server.token_reviews_sent)
    print("\n".join(figures.lines()))
    problems = []
    growth = figures.peak_rss_mib - figures.rss_at_rest_mib
    if growth >= FLOOD_MEMORY_MIB:
        problems.append(f"memory grew by {growth:.0f} MiB")
    if figures.scrape_status != 200 or figures.scrape_seconds >= FLOOD_SCRAPE_SECONDS:
        problems.append(f"the valid scrape answered {figures.scrape_status} after {figures.scrape_seconds:.1f} s")
    if figures.probe_status != 200:
        problems.append(f"/healthz answered {figures.probe_status}")
    # A review already at the API server when its client left may finish; nothing after it is sent.
    if figures.token_reviews_after_clients_left > REVIEWS_AT_ONCE:
        problems.append(f"{figures.token_reviews_after_clients_left} TokenReviews sent for clients that had left")
    assert not problems, "; ".join(problems)
