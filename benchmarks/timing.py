"""Timing shared by the micro-benchmarks: each closure once a round, the rounds' order shuffled, medians."""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch


def medians_in_random_order(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each closure over ``repeats`` rounds, each round calling every closure once in a random
    order (drift and cache effects hit all alike); one more round first, to warm up, dropped."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats + 1):
        for name in random.sample(list(runs), len(runs)):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v[1:]) for name, v in times.items()}


def one_thread_rounds(argv, description: str, repeats: int, quick: str) -> tuple[bool, int]:
    """A micro-benchmark's command line (``--repeats``, ``--quick``: ``quick`` says what it keeps, with three rounds),
    torch at one thread: returns (quick, rounds)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=repeats, help=f"rounds (default: {repeats})")
    parser.add_argument("--quick", action="store_true", help=f"{quick}, three rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    return args.quick, 3 if args.quick else args.repeats
