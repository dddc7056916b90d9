"""`python -m bench [NAME ...]`: run the named benchmarks (all when none is named)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["broker_startup", "sync_full", "webhook_load", "pipeline_load", "reconcile",
              "client_requests"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    for name in names:
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
            return 2
        module = importlib.import_module(f"bench.{name}")
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
