"""Solver quality and speed, FlashLB beside the default greedy, measured in one run.

    .venv/bin/python bench/solver.py [--quick]

Prints: the brief's seed example (and the exact optimum); the optimality gap on random small
instances against the exact solver; DeepSeek-V3-sized synthetic windows (16 episodes) and the
window after them; the real statistics in ../shared/data/ when present; whole-model timings.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

import flashlb
from flashlb import metrics
from flashlb.solvers.exact import exact_plan
from flashlb.synthetic import drifting_trace

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sglang-dsv3-logical-count"
SEED = [600, 560, 120, 120, 20, 10, 10, 10]


def objective(p, h):
    """[L] per-episode peak/avg averaged over episodes (those with load), as the solvers see it."""
    return metrics.balance_ratio(p, h)


def timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def seed_example():
    h = torch.tensor([SEED], dtype=torch.float64)
    g = flashlb.plan(h, 16, 8, algorithm="default")
    f = flashlb.plan(h, 16, 8)
    e, _ = exact_plan(h, 16, 8)
    peak = lambda p: metrics.device_loads(p, h).max().item()  # noqa: E731
    avg = 1450 / 8
    print("seed example [600,560,120,120,20,10,10,10], 16 slots / 8 devices (peak, peak/avg):")
    for name, p in (("default", g), ("flashlb", f), ("exact", e)):
        print(f"  {name:8s} {peak(p):8.2f} {peak(p) / avg:.4f}")


def small_gaps(n):
    rnd, g = random.Random(0), torch.Generator().manual_seed(0)
    gaps, gaps_default, t_f, t_e = [], [], 0.0, 0.0
    while len(gaps) < n:
        D = rnd.choice([1, 2, 3, 4, 6])
        S = max(1, min(rnd.choice([1, 2, 3, 4]), 12 // D))
        P = D * S
        N = rnd.randint(S, P)
        T = rnd.choice([1, 1, 2, 4])
        h = (torch.rand(T, 1, N, generator=g, dtype=torch.float64) ** 3 * 100).round()
        (e, best), dt = timed(exact_plan, h, P, D)
        t_e += dt
        if best.item() <= 0:
            continue
        f, dt = timed(flashlb.plan, h, P, D)
        t_f += dt
        gaps.append(max(objective(f, h).item() / best.item() - 1, 0.0))  # below 0: rounding
        gaps_default.append(objective(flashlb.plan(h, P, D, algorithm="default"), h).item() / best.item() - 1)
    print(f"random small instances (n={n}, up to 12 slots, 1-4 episodes): gap to the exact optimum")
    print(f"  flashlb mean {100 * sum(gaps) / n:.3f}%  worst {100 * max(gaps):.3f}%  "
          f"({1000 * t_f / n:.1f} ms each; exact {1000 * t_e / n:.1f} ms)")
    print(f"  default mean {100 * sum(gaps_default) / n:.3f}%  worst {100 * max(gaps_default):.3f}% "
          "(its placements may double an expert on a device)")


def synthetic(repeats):
    print("DeepSeek-V3-sized synthetic windows (58 layers x 256 experts, 16 episodes, drifting):")
    print("  (next: the following 16 episodes; 'summed' = flashlb given the window summed into one)")
    print(f"  {'slots/dev':>10} {'default':>8} {'flashlb':>8} {'closer':>7} | {'next:def':>8} {'flashlb':>8} {'summed':>8}")
    for P, D in ((288, 32), (320, 64)):
        rows = []
        for seed in range(repeats):
            tr = drifting_trace(32, 58, 256, seed=seed, skew=0.6, drift=0.05, burst=0.15)
            win, nxt = tr[:16], tr[16:]
            g = flashlb.plan(win, P, D, algorithm="default")
            f = flashlb.plan(win, P, D)
            s = flashlb.plan(win.sum(0), P, D)
            rows.append([metrics.balance_ratio(g, win).mean().item(), metrics.balance_ratio(f, win).mean().item(),
                         metrics.balance_ratio(g, nxt).mean().item(), metrics.balance_ratio(f, nxt).mean().item(),
                         metrics.balance_ratio(s, nxt).mean().item()])
        a = torch.tensor(rows).mean(0).tolist()
        closer = 1 - (a[1] - 1) / (a[0] - 1)
        print(f"  {P:>5}/{D:<4} {a[0]:8.4f} {a[1]:8.4f} {100 * closer:6.1f}% | {a[2]:8.4f} {a[3]:8.4f} {a[4]:8.4f}")


def real():
    files = sorted(DATA.glob("*.json")) if DATA.is_dir() else []
    if not files:
        print("real statistics: ../shared/data not present, skipped")
        return
    print(f"real DeepSeek-V3 statistics ({len(files)} files, 58 MoE layers each), mean peak/avg:")
    for P, D in ((288, 32), (320, 64)):
        g_r, f_r, t_g, t_f = [], [], 0.0, 0.0
        for path in files:
            h = torch.tensor(json.loads(path.read_text())["logical_count"], dtype=torch.float64)
            h = h[h.sum(-1) > 0]
            g, dt = timed(flashlb.plan, h, P, D, algorithm="default")
            t_g += dt
            f, dt = timed(flashlb.plan, h, P, D)
            t_f += dt
            g_r.append(metrics.balance_ratio(g, h).mean().item())
            f_r.append(metrics.balance_ratio(f, h).mean().item())
        n = len(files)
        print(f"  {P}/{D}: default {sum(g_r) / n:.5f}  flashlb {sum(f_r) / n:.5f}  "
              f"(per file: default {1000 * t_g / n:.0f} ms, flashlb {1000 * t_f / n:.0f} ms)")


def speed():
    print("whole model (58 x 256, 16 episodes), wall time per call on this machine:")
    tr = drifting_trace(16, 58, 256, seed=11, skew=0.6, drift=0.05, burst=0.15)
    for P, D in ((288, 32), (320, 64)):
        _, first = timed(flashlb.plan, tr, P, D)  # first call of this shape: no warm-up exists
        f = min(timed(flashlb.plan, tr, P, D)[1] for _ in range(3))
        g = min(timed(flashlb.plan, tr, P, D, algorithm="default")[1] for _ in range(3))
        print(f"  {P}/{D}: flashlb first {first:.3f} s, best of 3 {f:.3f} s; default {g:.3f} s; ratio {f / g:.1f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer instances")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    seed_example()
    small_gaps(40 if args.quick else 200)
    synthetic(1 if args.quick else 3)
    real()
    speed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
