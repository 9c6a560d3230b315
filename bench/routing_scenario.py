"""Routing: the routing decision time of a 50-rule policy, from ``bench/routing_bench.py``.

That module belongs to the routing package's owners; this one only calls its ``run()``
when it exists and turns its figure into a metric. It needs no broker.
"""

from __future__ import annotations

import importlib
from typing import Any

from bench.common import Metric, log


def run() -> list[Metric]:
    """Call ``bench.routing_bench.run()`` if present; return its median microseconds per route."""
    try:
        module: Any = importlib.import_module("bench.routing_bench")
    except ImportError as exc:
        log(f"routing: bench/routing_bench.py is not importable ({exc}); skipped")
        return []
    runner = getattr(module, "run", None)
    if runner is None:
        log("routing: bench/routing_bench.py has no run(); skipped")
        return []
    figures: dict[str, float] = runner()
    log(f"routing: {figures}")
    if "median_us_per_route" not in figures:
        log("routing: run() gave no median_us_per_route; its figures are in the log only")
        return []
    rules = int(figures.get("rules", 50))
    metrics = [
        Metric(
            "routing",
            f"Policy.route(), {rules}-rule policy (median)",
            "us",
            [figures["median_us_per_route"]],
            higher_is_better=False,
            note=f"{int(figures.get('calls_per_repetition', 0))} calls per repetition",
        )
    ]
    if "best_us_per_route" in figures:
        metrics.append(
            Metric(
                "routing",
                f"Policy.route(), {rules}-rule policy (best)",
                "us",
                [figures["best_us_per_route"]],
                higher_is_better=False,
            )
        )
    return metrics
