"""Cherry-picking redeployment on a smoothly drifting per-step trace, measured in one run.

    .venv/bin/python bench/redeploy.py [--quick]

Replays a DeepSeek-V3-sized trace (58 layers x 256 experts, 288 slots on 32 devices; hot
experts drift step by step) through decision cycles (flashlb.simulate: 16-step episodes, a
decision every 8 episodes on the last 8, judged on the next 8, from the boot map) for three
policies - flashlb with cherry-picking (Balancer), flashlb re-planning every layer every
cycle, and the default greedy every cycle (both aligned to the map in service) - and prints
the next-window per-episode peak/avg, the expert moves, the layers touched, and the time of
one decision cycle. bench/serving.py covers the drift regimes and every policy.
"""

from __future__ import annotations

import argparse
import time

import torch

import flashlb
from flashlb.synthetic import drifting_trace


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cycles")
    args = ap.parse_args()
    cycles, cycle_len = (5, 64) if args.quick else (10, 128)
    L, N, P, D = 58, 256, 288, 32
    trace = drifting_trace(cycles * cycle_len, L, N, tokens_per_episode=4096 * 8, seed=5,
                           skew=0.6, drift=0.01, burst=0.3)
    print(f"trace: {cycles * cycle_len} steps x {L} layers x {N} experts, 4096 tokens x top-8 per step; "
          f"{P} slots / {D} devices; a decision every {cycle_len} steps on 16-step episodes")
    t = time.perf_counter()
    res = flashlb.simulate(trace, P, D, episode_len=16, cycle=cycle_len // 16, window=cycle_len // 16,
                           policies=("balancer", "fresh", "default"))
    print(f"simulated in {time.perf_counter() - t:.1f} s")
    print(f"  {'policy':12s} {'next-window peak/avg':>21s} {'moves':>8s} {'layers/cycle':>13s} {'moves/re-placed layer':>22s}")
    for name, r in res.items():
        touched = int(r.layers.sum())
        per_layer = r.total_moves / touched if touched else 0.0
        print(f"  {name:12s} {r.mean_ratio:21.4f} {r.total_moves:8d} {r.layers.float().mean():13.1f} {per_layer:22.1f}")
    cp, ev, de = res["balancer"], res["fresh"], res["default"]
    print(f"balancer vs fresh every cycle: {100 * (cp.mean_ratio / ev.mean_ratio - 1):+.2f}% peak/avg; "
          f"moves {100 * cp.total_moves / max(de.total_moves, 1):.1f}% of the aligned default's")
    print(f"fresh every cycle vs default: {100 * (ev.mean_ratio / de.mean_ratio - 1):+.2f}% peak/avg")

    # one decision cycle over every layer (all layers triggered), wall time; the placement in
    # service is flashlb's for an earlier window (the steady state: no expert twice on a device)
    episodes = flashlb.ops.episode_stats(trace[cycle_len:2 * cycle_len], 16)[0].to(torch.float64)
    current = flashlb.plan(flashlb.ops.episode_stats(trace[:cycle_len], 16)[0].to(torch.float64), P, D)
    times = []
    for _ in range(3):
        bal = flashlb.Balancer(P, D, threshold=1.0)
        t = time.perf_counter()
        up = bal.step(episodes, current)
        times.append(time.perf_counter() - t)
    print(f"one decision cycle re-placing all {up.layers.numel()} layers: best of 3 {min(times):.3f} s")


if __name__ == "__main__":
    main()
