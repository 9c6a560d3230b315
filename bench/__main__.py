"""``python -m bench``: run the scenarios, print a results table, optionally write JSON.

Examples::

    python -m bench                              # everything, default sizes, 3 rounds
    python -m bench --only drain,publish --rounds 5
    python -m bench --only delay --quick --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import (
    delay,
    drain,
    latency,
    publish,
    routed_drain,
    routing_scenario,
    schedule,
    secure_drain,
    store,
)
from bench.common import DEFAULT_URL, Metric, log

SCENARIOS = (
    "drain",
    "publish",
    "latency",
    "delay",
    "routing",
    "routed",
    "store",
    "schedule",
    "secure",
)
QUICK_MAX_DELAY = 10.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="amqp-jobs benchmarks against raw aio-pika baselines"
    )
    parser.add_argument(
        "--only",
        default=",".join(SCENARIOS),
        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="broker URL (AMQP_URL or local)")
    parser.add_argument("--rounds", type=int, default=3, help="ABAB rounds per scenario (3)")
    parser.add_argument(
        "--jobs", type=int, default=20_000, help="jobs drained, and published by enqueue_many"
    )
    parser.add_argument(
        "--enqueue-jobs", type=int, default=5_000, help="jobs of the awaited enqueue loop (5000)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=200, help="worker concurrency / raw prefetch (200)"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="latency: jobs/s (500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: duration (10)")
    parser.add_argument(
        "--warmup", type=int, default=100, help="latency: uncounted warm-up probes (100)"
    )
    parser.add_argument("--delay-jobs", type=int, default=300, help="delay: jobs (300)")
    parser.add_argument(
        "--max-delay", type=float, default=60.0, help="delay: longest delay in s (60)"
    )
    parser.add_argument(
        "--store-rows", type=int, default=1_000_000, help="store: rows for the query test"
    )
    parser.add_argument(
        "--schedule-seconds", type=float, default=30.0, help="schedule: counted seconds (30)"
    )
    parser.add_argument("--quick", action="store_true", help=f"cap delays at {QUICK_MAX_DELAY:g} s")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {','.join(SCENARIOS)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.only = chosen
    if args.quick:
        args.max_delay = min(args.max_delay, QUICK_MAX_DELAY)
    return args


async def run_scenario(name: str, args: argparse.Namespace) -> list[Metric]:
    """Run one scenario with the command-line settings."""
    if name == "drain":
        return await drain.run(
            args.url, jobs=args.jobs, rounds=args.rounds, concurrency=args.concurrency
        )
    if name == "publish":
        return await publish.run(
            args.url, single_jobs=args.enqueue_jobs, many_jobs=args.jobs, rounds=args.rounds
        )
    if name == "latency":
        return await latency.run(
            args.url,
            rate=args.rate,
            seconds=args.seconds,
            rounds=args.rounds,
            warmup=args.warmup,
            concurrency=args.concurrency,
        )
    if name == "delay":
        return await delay.run(
            args.url, jobs=args.delay_jobs, max_delay=args.max_delay, rounds=args.rounds
        )
    if name == "store":
        return await store.run(
            args.url,
            jobs=args.jobs,
            rounds=args.rounds,
            concurrency=args.concurrency,
            rows=args.store_rows,
        )
    if name == "schedule":
        return await schedule.run(args.url, rounds=args.rounds, seconds=args.schedule_seconds)
    if name == "secure":
        return await secure_drain.run(
            args.url, jobs=args.jobs, rounds=args.rounds, concurrency=args.concurrency
        )
    if name == "routed":
        return await routed_drain.run(
            args.url, jobs=args.jobs, rounds=args.rounds, concurrency=args.concurrency
        )
    return routing_scenario.run()


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def table(metrics: Sequence[Metric]) -> str:
    """The results as a Markdown table (medians over rounds; ratio = ours / raw)."""
    rows = [
        [
            "scenario",
            "metric",
            "unit",
            "ours (median)",
            "raw (median)",
            "ours/raw",
            "target",
            "met",
        ],
    ]
    for metric in metrics:
        ratio = metric.ratio
        met = metric.met
        rows.append(
            [
                metric.scenario,
                metric.name,
                metric.unit,
                _number(metric.ours_median),
                _number(metric.raw_median),
                "-" if ratio is None else f"{ratio:.2f}x",
                metric.target.describe(metric.unit) if metric.target else "-",
                {True: "yes", False: "NO", None: "-"}[met],
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
        for row in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios; 0 if all ran (targets may still be missed), 1 otherwise."""
    args = parse_args(argv)
    started = time.time()
    metrics: list[Metric] = []
    errors: dict[str, str] = {}
    for name in args.only:
        log(f"=== {name} ===")
        try:
            metrics += asyncio.run(run_scenario(name, args))
        except Exception as exc:
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} failed: {errors[name]}")
    print(table(metrics))
    for metric in metrics:
        if metric.note:
            print(f"- {metric.scenario} / {metric.name}: {metric.note}")
    for name, error in errors.items():
        print(f"- {name}: FAILED ({error})")
    if args.json is not None:
        report: dict[str, Any] = {
            "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1),
            "python": platform.python_version(),
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k != "url"
            },
            "metrics": [metric.as_dict() for metric in metrics],
            "errors": errors,
        }
        args.json.write_text(json.dumps(report, indent=2))
        log(f"wrote {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
