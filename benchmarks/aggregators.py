"""Aggregator throughput benchmark: ``python benchmarks/aggregators.py [--quick] [...]``.

A thin wrapper around ``nnmjax bench`` (see ``nnmjax/bench/`` and
``benchmarks/README.md``); it takes the same options.
"""
import os
import sys

if __name__ == "__main__":
    # Run from a source checkout without installing: make the repository importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from nnmjax.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
