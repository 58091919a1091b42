"""Hotness operators on the CPU against plain torch, measured in one run.

    .venv/bin/python bench/ops.py

accumulate_hotness at 8192 tokens x top-8 over 256 experts, against bincount + add and a
copy of topk_ids (the memory-bandwidth floor); episode_stats on [1024, 58, 256] against the
plain-torch reduction. Prints the median of repeated timings and the ratios.
"""

from __future__ import annotations

import statistics
import time

import torch

from flashlb import ops


def median_time(fn, repeats=200, warmup=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (8192, 8), generator=g)
    hot = torch.zeros(58, 256, dtype=torch.int64)
    dst = torch.empty_like(ids)

    def bincount_add():
        hot[3] += torch.bincount(ids.view(-1), minlength=256)

    rows = [
        ("flashlb accumulate_hotness", lambda: torch.ops.flashlb.accumulate_hotness(hot, ids, 3)),
        ("torch bincount + add", bincount_add),
        ("torch scatter_add_", lambda: hot[3].scatter_add_(0, ids.view(-1), torch.ones_like(ids.view(-1)))),
        ("copy of topk_ids (floor)", lambda: dst.copy_(ids)),
    ]
    print("accumulate_hotness, 8192 tokens x top-8, 256 experts, int64 ids and counts:")
    t = {name: median_time(fn) for name, fn in rows}
    for name, v in t.items():
        print(f"  {name:28s} {1e6 * v:8.1f} us")
    ours = t["flashlb accumulate_hotness"]
    print(f"  ratio to bincount + add: {ours / t['torch bincount + add']:.2f}x;"
          f" to the copy: {ours / t['copy of topk_ids (floor)']:.2f}x")

    steps = torch.randint(0, 64, (1024, 58, 256), generator=g, dtype=torch.int32)
    fsteps = steps.float()
    print("episode_stats, [1024, 58, 256] into episodes of 16 steps:")
    for name, x in (("int32", steps), ("float32", fsteps)):
        a = median_time(lambda: torch.ops.flashlb.episode_stats(x, 16), repeats=20, warmup=2)
        b = median_time(lambda: ops._episode_stats_torch(x, 16), repeats=20, warmup=2)
        print(f"  {name:8s} flashlb {1e3 * a:7.2f} ms   plain torch {1e3 * b:7.2f} ms   ratio {a / b:.2f}x")


if __name__ == "__main__":
    main()
