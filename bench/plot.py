"""Redraw the burst figures from a results file, without re-running the benchmark.

    python -m bench.plot RESULTS.json -o docs/bench-scale.png [--memory-limit-mb 512]

Two panels side by side, one line per controller per burst size: Nodes assigned
over time, and the controller's RSS over time with the chart's memory limit as a
dashed line. x is seconds since the burst's first create. Needs matplotlib:
pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {"nodeipam": "tab:blue", "kube-controller-manager": "tab:orange", "kube-controller-manager (QPS 20/30)": "tab:red"}
STYLES = ("-", "--", "-.", ":")  # one per burst size, smallest first


def bursts(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The burst results that carry a time series."""
    return [result for result in document["results"] if result.get("kind") == "burst" and result["series"]["t"]]


def plot(document: dict[str, Any], output: Path, memory_limit_mb: float, memory_limit_label: str = "chart memory limit") -> None:
    """Draw both panels into `output` (PNG, or any format matplotlib infers from the suffix)."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("bench.plot needs matplotlib: pip install -e '.[bench]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = bursts(document)
    if not results:
        sys.exit("no burst results with a time series in this file")
    sizes = sorted({result["nodes"] for result in results})
    figure, (progress, memory) = plt.subplots(1, 2, figsize=(14, 5.5), constrained_layout=True)
    for result in results:
        series = result["series"]
        style = {
            "color": COLOURS.get(result["controller"], "tab:gray"),
            "linestyle": STYLES[sizes.index(result["nodes"]) % len(STYLES)],
            "label": f"{result['controller']}, {result['nodes']:,} Nodes",
        }
        progress.plot(series["t"], series["assigned"], **style)
        memory.plot(series["t"], series["rss_mb"], **style)
    progress.set(title="Nodes assigned during a burst", xlabel="seconds since the burst started", ylabel="Nodes with a podCIDR")
    memory.set(title="Controller memory during a burst", xlabel="seconds since the burst started", ylabel="RSS MB")
    memory.axhline(
        memory_limit_mb, color="black", linestyle="--", linewidth=1, label=f"{memory_limit_label} ({memory_limit_mb:g} MB)"
    )
    memory.set_ylim(bottom=0)
    progress.set_ylim(bottom=0)
    for axes in (progress, memory):
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    started = document.get("meta", {}).get("started", "")
    figure.suptitle(f"nodeipam vs kube-controller-manager, burst of realistic Nodes ({started})")
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="a JSON file written by python -m bench")
    parser.add_argument("-o", "--output", type=Path, required=True, help="image to write, e.g. docs/bench-scale.png")
    parser.add_argument("--memory-limit-mb", type=float, default=512, help="dashed line on the RSS panel (default 512)")
    parser.add_argument("--memory-limit-label", default="chart memory limit", help="its label")
    args = parser.parse_args()
    plot(json.loads(args.results.read_text()), args.output, args.memory_limit_mb, args.memory_limit_label)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
