"""Solver quality and speed, FlashLB beside the default greedy, measured in one run.

    .venv/bin/python bench/solver.py [--quick]

Prints: the brief's seed example (and the exact optimum); the optimality gap on a broad family
of small instances against the exact solver (a negative gap is flagged as an oracle bug, never
clamped); DeepSeek-V3-sized synthetic windows (16 episodes) and the window after them; the
real statistics in ../shared/data/ when present, flat and hierarchical; whole models of other
shapes (Qwen3, DeepSeek-V2-Lite); whole-model timings, 16 against 64 episodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import flashlb
from flashlb import metrics
from flashlb.solvers.exact import exact_plan
from flashlb.synthetic import drifting_trace, regime_trace, small_instance

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
    """Gap to the exact optimum over the broad family of flashlb.synthetic.small_instance."""
    gaps, gaps_default, t_f, t_e, worst, oracle_bugs = [], [], 0.0, 0.0, {}, []
    for seed in range(n):
        h, P, D, kind = small_instance(seed)
        (e, best), dt = timed(exact_plan, h, P, D)
        t_e += dt
        if best.item() <= 0:
            continue
        f, dt = timed(flashlb.plan, h, P, D)
        t_f += dt
        gap = objective(f, h).item() / best.item() - 1
        if gap < -1e-9:  # below the optimum: the oracle is wrong, not the solver right
            oracle_bugs.append((seed, gap))
        gaps.append(gap)
        worst[kind] = max(worst.get(kind, -1.0), gap)
        gaps_default.append(objective(flashlb.plan(h, P, D, algorithm="default"), h).item() / best.item() - 1)
    m = len(gaps)
    print(f"small instances (seeds 0-{n - 1} of synthetic.small_instance: up to 6 devices, 1-4 slots "
          f"per device, 1-4 episodes; {m} with load): gap to the exact optimum")
    print(f"  flashlb mean {100 * sum(gaps) / m:.4f}%  worst {100 * max(gaps):.3f}%  "
          f"({1000 * t_f / m:.1f} ms each; exact {1000 * t_e / m:.1f} ms)")
    print("  worst per kind: " + ", ".join(f"{k} {100 * v:.3f}%" for k, v in sorted(worst.items())))
    print(f"  default mean {100 * sum(gaps_default) / m:.3f}%  worst {100 * max(gaps_default):.3f}% "
          "(its placements may double an expert on a device)")
    if oracle_bugs:
        print(f"  ORACLE BUG: flashlb below the exact optimum on {len(oracle_bugs)} instances "
              f"(seed, gap): {oracle_bugs[:5]}")
    else:
        print("  no negative gap (none below the exact optimum: the oracle held)")


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


def _real_files():
    """[(name, [L, N] loads of the MoE layers)] of the shared statistics; [] when absent."""
    files = sorted(DATA.glob("*.json")) if DATA.is_dir() else []
    out = []
    for path in files:
        h = torch.tensor(json.loads(path.read_text())["logical_count"], dtype=torch.float64)
        out.append((path.name, h[h.sum(-1) > 0]))
    return out


def _default_against_flashlb(loads, P, D, **options) -> str:
    """Mean peak/avg and time per file of the default greedy and flashlb, as one line."""
    g_r, f_r, t_g, t_f = [], [], 0.0, 0.0
    for _, h in loads:
        g, dt = timed(flashlb.plan, h, P, D, algorithm="default", **options)
        t_g += dt
        f, dt = timed(flashlb.plan, h, P, D, **options)
        t_f += dt
        g_r.append(metrics.balance_ratio(g, h).mean().item())
        f_r.append(metrics.balance_ratio(f, h).mean().item())
    n = len(loads)
    return (f"default {sum(g_r) / n:.5f}  flashlb {sum(f_r) / n:.5f}  "
            f"(per file: default {1000 * t_g / n:.0f} ms, flashlb {1000 * t_f / n:.0f} ms)")


def real():
    loads = _real_files()
    if not loads:
        print("real statistics: ../shared/data not present, skipped")
        return
    print(f"real DeepSeek-V3 statistics ({len(loads)} files, 58 MoE layers each), mean peak/avg:")
    for P, D in ((288, 32), (320, 64)):
        print(f"  {P}/{D}: " + _default_against_flashlb(loads, P, D))
    # Group-limited plans (DeepSeek-V3: 8 groups) packed onto nodes, then placed per node.
    print("hierarchical plans (8 expert groups packed onto nodes), same files, mean peak/avg:")
    for P, D, M in ((288, 32, 4), (320, 64, 8)):
        print(f"  {P}/{D}, {M} nodes: " + _default_against_flashlb(loads, P, D, num_groups=8, num_nodes=M))


# (name, layers, experts, slots, devices) of MoE models with fewer, smaller layers
OTHER_MODELS = (("Qwen3-30B-A3B", 48, 128, 144, 8), ("Qwen3-235B-A22B", 94, 128, 160, 32),
                ("DeepSeek-V2-Lite", 26, 64, 80, 8))


def other_models():
    """Whole models of other shapes: one window (what the drop-in signature gets) and 16."""
    print("other whole models, synthetic hot/cold-swap windows, peak/avg and time per call:")
    for name, L, N, P, D in OTHER_MODELS:
        tr = regime_trace("swaps", 16, L, N, seed=7)
        for h in (tr[-1], tr):
            f, t_f = timed(flashlb.plan, h, P, D)
            g, t_g = timed(flashlb.plan, h, P, D, algorithm="default")
            T = 1 if h.dim() == 2 else h.shape[0]
            print(f"  {name} ({L} x {N}, {P}/{D}), {T:2d} episode(s): "
                  f"default {metrics.balance_ratio(g, h).mean().item():.4f} in {1000 * t_g:.0f} ms, "
                  f"flashlb {metrics.balance_ratio(f, h).mean().item():.4f} in {1000 * t_f:.0f} ms")


def speed():
    print("whole model (58 x 256), wall time per call on this machine (best of 3):")
    tr = drifting_trace(16, 58, 256, seed=11, skew=0.6, drift=0.05, burst=0.15)
    for P, D in ((288, 32), (320, 64)):
        _, first = timed(flashlb.plan, tr, P, D)  # first call of this shape: no warm-up exists
        f = min(timed(flashlb.plan, tr, P, D)[1] for _ in range(3))
        g = min(timed(flashlb.plan, tr, P, D, algorithm="default")[1] for _ in range(3))
        print(f"  {P}/{D}, 16 episodes: flashlb first {first:.3f} s, best of 3 {f:.3f} s; "
              f"default {g:.3f} s; ratio {f / g:.1f}x")


def episodes_scaling():
    """16 against 64 episodes on the whole model: time, and quality in and after the window."""
    print("whole model 288/32, 16 against 64 episodes (the search sees at most 16 scenarios):")
    tr = drifting_trace(80, 58, 256, seed=11, skew=0.6, drift=0.05, burst=0.15)
    nxt = tr[64:]
    threads = torch.get_num_threads()
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        row = {}
        for T in (16, 64):
            win = tr[64 - T:64]
            flashlb.plan(win, 288, 32)
            best = min(timed(flashlb.plan, win, 288, 32) for _ in range(3))
            p, t = best[0], best[1]
            row[T] = t
            if n == 1:
                print(f"  {T} episodes: window {objective(p, win).mean().item():.4f}, "
                      f"next 16 episodes {objective(p, nxt).mean().item():.4f}")
        print(f"  {n} thread(s): 16 episodes {row[16]:.3f} s, 64 episodes {row[64]:.3f} s, "
              f"ratio {row[64] / row[16]:.2f}x")
    torch.set_num_threads(threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer instances")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    seed_example()
    small_gaps(100 if args.quick else 1000)
    synthetic(1 if args.quick else 3)
    real()
    other_models()
    speed()
    episodes_scaling()
    return 0


if __name__ == "__main__":
    sys.exit(main())
