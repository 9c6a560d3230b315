"""The routing package stays pure and fast."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_routing_imports_neither_aio_pika_nor_amqp_jobs(repo_root: Path) -> None:
    # Given a fresh interpreter, When routing is imported, Then no broker code comes with it
    probe = "\n".join(
        [
            "import sys",
            f"sys.path.insert(0, {str(repo_root)!r})",
            "import routing, routing.policy",
            "broker = ('aio_pika', 'aiormq', 'amqp_jobs')",
            "print(sorted(m for m in sys.modules if m.split('.')[0] in broker))",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_benchmark_runs_and_reports_microseconds_per_route() -> None:
    from bench.routing_bench import run

    figures = run(n=2_000)
    assert figures["rules"] == 50
    # A loose bound: this guards against an accidental slow path, not a performance target
    assert 0 < figures["median_us_per_route"] < 200
