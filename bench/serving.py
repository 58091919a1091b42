"""Serving-time balance under drift: what each policy gives the steps it serves, per byte moved.

    .venv/bin/python bench/serving.py [--quick] [--seeds 101,102] [--regimes swaps,switch]
                                      [--policies balancer,fresh,default,vllm-ascend-flashlb]
                                      [--tables-only] [--png out/serving_balance_vs_moves.png]

Protocol (flashlb.simulate): whole-model traces (58 layers x 256 experts, 288 slots on 32
devices, 16 steps x 4096 tokens x top-8 per episode) of each drift regime of
flashlb.synthetic; every 8 episodes each policy re-plans from the last 16 and is judged, per
episode, on the next 8; all start from the boot map (flashlb.boot_placement). Printed per
regime and seed: next-window mean per-episode peak/avg, slots moved, bytes moved (DeepSeek-V3
expert: 3 matrices of 7168 x 2048 in 8 bits), seconds per decision; the forecast's gain
(forecast vs fresh); the balance-vs-moves curve over Balancer move budgets (PNG); the
Balancer's prices across cluster shapes; and workloads planned together (real DeepSeek-V3
statistics in ../shared/data, leave one out).

The column vllm-ascend-flashlb is the public FlashLB policy of vllm-ascend in its own update
loop (bench/upstream_flashlb.py); it runs only where numba, scipy and the vllm-ascend policy
are found, and is skipped with one line otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import flashlb
from flashlb import metrics
from flashlb.redeploy.simulate import POLICIES, POLICY_HELP
from flashlb.synthetic import REGIMES, regime_trace

import upstream_flashlb as upstream  # bench/, beside this script

L, N, P, D = 58, 256, 288, 32
EXPERT_BYTES = 3 * 7168 * 2048  # 44,040,192: gate, up and down projections in 8 bits
CYCLE, WINDOW = 8, 16
DATA = Path(os.environ.get("FLASHLB_DATA") or
            Path(__file__).resolve().parents[2] / "shared" / "data" / "sglang-dsv3-logical-count")


def run_regime(regime, seed, cycles, policies, layers):
    trace = regime_trace(regime, WINDOW + CYCLE * cycles, layers, N, seed=seed)
    ours = tuple(p for p in policies if p in POLICIES)
    res = flashlb.simulate(trace, P, D, cycle=CYCLE, window=WINDOW, policies=ours) if ours else {}
    if upstream.POLICY in policies:
        up, info = upstream.run_isolated(trace, P, D, cycle=CYCLE, window=WINDOW)
        if up is None:
            print(f"    {upstream.POLICY}: no result, {info}")
        else:
            res[upstream.POLICY] = up
            print(f"    {upstream.POLICY}: {int(up.layers.sum())} layer re-plans applied, "
                  f"{info['reset']} reset by the worker's placement check")
    return res


def against_upstream(res):
    """The issue's bar: the Balancer below the public FlashLB's ratio at <= 1/3 of its moves."""
    bal, up = res.get("balancer"), res.get(upstream.POLICY)
    if bal is None or up is None:
        return
    share = bal.total_moves / max(up.total_moves, 1)
    below, few = bal.mean_ratio < up.mean_ratio, share <= 1 / 3
    print(f"    Balancer vs public FlashLB: {bal.mean_ratio:.4f} vs {up.mean_ratio:.4f} "
          f"({'below' if below else 'NOT below'}), at {100 * share:.1f}% of its moves "
          f"({'<=' if few else 'NOT <='} 1/3): {'met' if below and few else 'not met'}")


def print_table(res, layers):
    scale = L / layers  # moves and bytes as for the whole model when fewer layers are run
    print(f"    {'policy':19s} {'next-window peak/avg':>21s} {'slots moved':>12s} {'GB moved':>9s} {'s/decision':>11s}")
    for name, r in res.items():
        mv = r.total_moves * scale
        print(f"    {name:19s} {r.mean_ratio:21.4f} {mv:12.0f} {mv * EXPERT_BYTES / 1e9:9.1f} "
              f"{r.seconds_per_decision:11.3f}")


def budget_curve(regime, seed, cycles, budgets, layers):
    """Balancer under each move budget (slots per cycle): [(budget, ratio, moves)] or None when
    the budget interface is missing."""
    trace = regime_trace(regime, WINDOW + CYCLE * cycles, layers, N, seed=seed)
    points = []
    for b in budgets:
        try:
            res = flashlb.simulate(trace, P, D, cycle=CYCLE, window=WINDOW, policies=("balancer",),
                                   balancer_options={"max_moves_per_cycle": b})
        except TypeError as exc:
            print(f"    Balancer(max_moves_per_cycle=...) is not available here ({exc}); curve skipped")
            return None, trace
        r = res["balancer"]
        points.append((b, r.mean_ratio, r.total_moves))
        print(f"    budget {str(b):>6s} slots/cycle: next-window {r.mean_ratio:.4f}, "
              f"{r.total_moves} slots moved", flush=True)
    return points, trace


def draw(points, refs, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if points:
        xs = [max(m, 1) for _, _, m in points]
        ax.plot(xs, [r for _, r, _ in points], marker="o", label="Balancer, move budget per cycle")
        for (b, r, m), x in zip(points, xs):
            ax.annotate(str(b), (x, r), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for name, res in refs.items():
        ax.scatter([max(res.total_moves, 1)], [res.mean_ratio], marker="x", s=50, label=name, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("slots moved in all (log)")
    ax.set_ylabel("next-window mean per-episode peak/avg")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def workloads(quick):
    files = sorted(DATA.glob("*.json")) if DATA.is_dir() else []
    if not files:
        print("  real statistics: ../shared/data not present, skipped")
        return
    from flashlb.io import load_hotness

    loads = {f.stem: torch.as_tensor(load_hotness(str(f)), dtype=torch.float64) for f in files}
    loads = {k: (v.sum(0) if v.dim() == 3 else v) for k, v in loads.items()}
    live = torch.stack(list(loads.values())).sum((0, 2)) > 0
    loads = {k: v[live] for k, v in loads.items()}
    print(f"  {len(loads)} workloads, {int(live.sum())} MoE layers, {P} slots / {D} devices; "
          "plan on all others, judge on the held-out one:")
    print(f"    {'held out':24s} {'as scenarios':>13s} {'summed (flashlb)':>17s} {'summed (default)':>17s} {'one other (flashlb)':>20s}")
    names = list(loads)
    rows = []
    for k in names[:3] if quick else names:
        others = [v for kk, v in loads.items() if kk != k]
        mix = flashlb.plan_workloads(others, P, D)
        summed = flashlb.plan(torch.stack(others).sum(0), P, D)
        greedy = flashlb.plan(torch.stack(others).sum(0), P, D, algorithm="default")
        # one other workload of the other kind where there is one (prefill <-> decode)
        kind = k.split("_")[0]
        other = next((kk for kk in names if not kk.startswith(kind)), names[0])
        single = flashlb.plan(loads[other], P, D)
        r = [metrics.balance_ratio(p, loads[k]).mean().item() for p in (mix, summed, greedy, single)]
        rows.append(r)
        print(f"    {k:24s} {r[0]:13.4f} {r[1]:17.4f} {r[2]:17.4f} {r[3]:13.4f} ({other})", flush=True)
    mean = [sum(x[i] for x in rows) / len(rows) for i in range(4)]
    print(f"    {'mean':24s} {mean[0]:13.4f} {mean[1]:17.4f} {mean[2]:17.4f} {mean[3]:20.4f}")


def decision_time():
    trace = regime_trace("swaps", 32, L, N, seed=7)
    cur = flashlb.plan(trace[:16], P, D)
    for fc in (False, True):  # plan's default, then forecast=True
        times = []
        for _ in range(3):
            t = time.perf_counter()
            flashlb.plan(trace[16:], P, D, forecast=fc)
            times.append(time.perf_counter() - t)
        print(f"  one fresh plan of the whole model (58 x 256, 16 episodes), forecast={fc}: "
              f"best of 3 {min(times):.3f} s")
    # A window half new (the serving protocol: every 8 episodes, the last 16) and one all new.
    for name, window in (("half new", trace[8:24]), ("all new", trace[16:])):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            flashlb.Balancer(P, D).step(window, cur)
            times.append(time.perf_counter() - t)
        print(f"  one Balancer cycle (defaults: every layer weighed, forecast), window {name}: "
              f"best of 3 {min(times):.3f} s")


def against_fresh(regime, seed, cycles, layers, variants):
    """Balancer variants ``(label, cycle, options)`` on one trace, each judged on the same
    episodes as fresh plans every 8."""
    trace = regime_trace(regime, WINDOW + CYCLE * cycles, layers, N, seed=seed)
    ref = flashlb.simulate(trace, P, D, cycle=CYCLE, window=WINDOW, policies=("fresh", "default"))
    fr, de = ref["fresh"], ref["default"]
    print(f"  regime {regime}, seed {seed}: fresh every {CYCLE} {fr.mean_ratio:.4f}")
    for label, every, opts in variants:
        r = flashlb.simulate(trace, P, D, cycle=every, window=WINDOW, policies=("balancer",),
                             balancer_options=opts)["balancer"]
        print(f"    {label}: {r.mean_ratio:.4f} ({100 * (r.mean_ratio / fr.mean_ratio - 1):+.2f}% vs fresh), "
              f"{100 * r.total_moves / max(de.total_moves, 1):.1f}% of the aligned default's moves, "
              f"{int(r.layers.sum())} layer re-placements, {r.seconds_per_decision:.3f} s per decision",
              flush=True)


def _options(opts):
    return ", ".join(f"{k}={v:g}" if v is not None else f"{k}=None" for k, v in opts.items()) or "defaults"


# Deciding more often: the defaults, and dearer moves (both prices doubled) for fewer of them.
CADENCES = ((8, {}), (4, {}), (2, {}), (2, {"move_penalty": 2.4e-3, "refresh_penalty": 9.4e-4}))


def cadence(seed, cycles, layers):
    """The Balancer deciding every 8, 4 and 2 episodes (from the last 16), against fresh plans
    every 8: hot/cold swaps and a stationary model."""
    variants = [(f"Balancer every {every} episodes ({_options(opts)})", every, opts)
                for every, opts in CADENCES]
    for regime in ("swaps", "swaps-fast", "stationary"):
        against_fresh(regime, seed, cycles, layers, variants)


# How the Balancer prices its moves: the defaults (dear small repairs, a cheaper whole
# re-plan), the defaults before (one price for every move) and a fixed price per layer.
PRICES = ({}, {"move_penalty": 6e-4, "refresh_penalty": None},
          {"move_penalty": 4e-4, "refresh_penalty": None, "layer_penalty": 0.06})


def prices(seed, cycles, layers, regimes):
    """The Balancer under each way of pricing moves, every 8 episodes, against fresh plans."""
    variants = [(_options(opts), CYCLE, opts) for opts in PRICES]
    for regime in regimes:
        against_fresh(regime, seed, cycles, layers, variants)


# Cluster shapes (experts, slots, devices): DeepSeek-V3's 256 experts on 8-72 devices, 128 or
# 64 experts (Qwen3-MoE-like, smaller models), and few experts with up to two slots each.
SHAPES = ((256, 288, 32), (256, 264, 8), (256, 272, 16), (256, 320, 64), (256, 288, 72),
          (128, 160, 16), (128, 160, 32), (128, 144, 16), (64, 80, 8),
          (32, 40, 8), (16, 32, 8), (32, 64, 16))


def shapes(seed, cycles, layers, regimes, cases=SHAPES):
    """The Balancer's defaults (prices by the shape, flashlb.redeploy.default_prices) and the
    prices of 288 slots on 32 devices kept for every shape, against fresh plans every 8."""
    from flashlb.redeploy import default_prices

    fixed = dict(zip(("move_penalty", "refresh_penalty"), default_prices(288, 32)))
    for n, p, d in cases:
        rows = {"defaults (by the shape)": [], "the prices of 288 slots / 32 devices": []}
        for regime in regimes:
            trace = regime_trace(regime, WINDOW + CYCLE * cycles, layers, n, seed=seed)
            ref = flashlb.simulate(trace, p, d, cycle=CYCLE, window=WINDOW, policies=("fresh", "default"))
            for (label, cells), opts in zip(rows.items(), ({}, fixed)):
                r = flashlb.simulate(trace, p, d, cycle=CYCLE, window=WINDOW, policies=("balancer",),
                                     balancer_options=opts)["balancer"]
                cells.append((100 * (r.mean_ratio / ref["fresh"].mean_ratio - 1),
                              100 * r.total_moves / max(ref["default"].total_moves, 1)))
        move, refresh = default_prices(p, d)
        print(f"  {n} experts, {p} slots / {d} devices (prices by the shape {move:.2g}, {refresh:.2g}); "
              f"against fresh, share of the aligned default's moves, mean over {', '.join(regimes)}:")
        for label, cells in rows.items():
            a = sum(x for x, _ in cells) / len(cells)
            b = sum(y for _, y in cells) / len(cells)
            each = "; ".join(f"{x:+.2f}% {y:.1f}%" for x, y in cells)
            print(f"    {label}: {a:+.2f}%, {b:.1f}%   ({each})", flush=True)


def forecast_limit(seed, cycles, layers):
    """What a forecast could gain at best: fresh plans every cycle on the episodes, on the
    forecast (``forecast=True``), and on the present known exactly - each episode's deviation
    from the popularity the generator drew it from, around the popularity at the window's end
    (equal weights, and the forecast's own weights). Judged on the next window, as above."""
    from flashlb.forecast import DEFAULT
    from flashlb.objective import episode_weights

    w_fc = episode_weights(WINDOW, DEFAULT["scenario_half_life"])
    for regime in ("swaps-fast", "swaps"):
        trace, shares = regime_trace(regime, WINDOW + CYCLE * cycles, layers, N, seed=seed,
                                     with_popularity=True)
        got = {"fresh": [], "forecast": [], "present known": [], "present known, forecast's weights": []}
        for c in range(cycles):
            t0 = WINDOW + c * CYCLE
            seen, nxt = trace[t0 - WINDOW:t0], trace[t0:t0 + CYCLE]
            tokens = seen.sum(-1, keepdim=True)
            known = (shares[t0 - 1] + seen / tokens - shares[t0 - WINDOW:t0]).clamp_min(0) * tokens
            plans = {"fresh": flashlb.plan(seen, P, D), "forecast": flashlb.plan(seen, P, D, forecast=True),
                     "present known": flashlb.plan(known, P, D),
                     "present known, forecast's weights": flashlb.plan(known, P, D, weights=w_fc)}
            for k, p in plans.items():
                got[k].append(float(metrics.peak_avg_ratio(metrics.device_loads(p, nxt)).mean()))
        base = sum(got["fresh"]) / cycles
        cells = ", ".join(f"{k} {sum(v) / cycles:.4f} ({100 * (sum(v) / cycles / base - 1):+.2f}%)"
                          for k, v in got.items())
        print(f"  regime {regime}, seed {seed}: {cells}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three regimes, fewer cycles (< 2 min)")
    ap.add_argument("--seeds", default=None, help="comma-separated trace seeds (held out: never tuned on)")
    ap.add_argument("--regimes", default=None, help=f"comma-separated, from {','.join(REGIMES)}")
    ap.add_argument("--policies", default=None,
                    help=f"comma-separated, from {','.join(POLICIES + (upstream.POLICY,))} (default: all)")
    ap.add_argument("--tables-only", action="store_true",
                    help="only the per-regime tables (no move-budget curve, workloads or timings)")
    ap.add_argument("--png", default="out/serving_balance_vs_moves.png", help="balance-vs-moves figure (out/ is ignored by git)")
    args = ap.parse_args()
    quick = args.quick
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [101]
    regimes = args.regimes.split(",") if args.regimes else (["swaps", "switch", "stationary"] if quick else list(REGIMES))
    cycles = 3 if quick else 18
    layers = L
    policies = tuple(args.policies.split(",")) if args.policies else POLICIES + (upstream.POLICY,)
    unknown = set(policies) - set(POLICIES) - {upstream.POLICY}
    if unknown:
        ap.error(f"unknown policies {sorted(unknown)}")
    why = upstream.unavailable() if upstream.POLICY in policies else None
    if why:
        print(f"{upstream.POLICY}: skipped, {why}")
        policies = tuple(p for p in policies if p != upstream.POLICY)
    print(f"serving protocol: every {CYCLE} episodes re-plan from the last {WINDOW}, judged per episode on the next "
          f"{CYCLE}; {cycles} decisions; {layers} layers x {N} experts, {P} slots / {D} devices; "
          f"expert = {EXPERT_BYTES:,} bytes" + (" (moves scaled to 58 layers)" if layers != L else ""))
    for name in policies:
        print(f"  {name:19s} {POLICY_HELP.get(name) or upstream.HELP}")
    gains = []
    t0 = time.perf_counter()
    for regime in regimes:
        for seed in seeds:
            res = run_regime(regime, seed, cycles, policies, layers)
            print(f"  regime {regime}, seed {seed}:")
            print_table(res, layers)
            if "forecast" in res and "fresh" in res:
                g = 100 * (1 - res["forecast"].mean_ratio / res["fresh"].mean_ratio)
                gains.append((regime, seed, g))
                print(f"    forecast: {g:+.2f}% better than fresh")
            if all(k in res for k in ("balancer", "fresh", "default")):
                bal, fr, de = res["balancer"], res["fresh"], res["default"]
                print(f"    Balancer {100 * (bal.mean_ratio / fr.mean_ratio - 1):+.2f}% vs fresh at "
                      f"{100 * bal.total_moves / max(de.total_moves, 1):.1f}% of the aligned default's moves")
            against_upstream(res)
            sys.stdout.flush()
    if gains:
        print(f"  forecast gain on the next window (forecast vs fresh), mean over {len(gains)} runs: "
              f"{sum(g for *_, g in gains) / len(gains):+.2f}%")
    print(f"  [{time.perf_counter() - t0:.0f} s]")
    if args.tables_only:
        return

    print("balance vs moves (Balancer move budgets), regime swaps, seed", seeds[0])
    budgets = [0, 200, 1000, 4000] if quick else [0, 100, 300, 1000, 3000, 10000]
    points, trace = budget_curve("swaps", seeds[0], cycles, budgets, layers)
    refs = flashlb.simulate(trace, P, D, cycle=CYCLE, window=WINDOW,
                            policies=("balancer", "fresh", "default", "static", "clairvoyant"))
    if upstream.POLICY in policies:
        up, _ = upstream.run_isolated(trace, P, D, cycle=CYCLE, window=WINDOW)
        if up is not None:
            refs[upstream.POLICY] = up
    draw(points, refs, args.png, f"regime swaps, seed {seeds[0]}, {layers} layers, {cycles} decisions")
    print(f"  figure written to {args.png}")

    print("deciding more often (flashlb.simulate(cycle=...)):")
    cadence(seeds[0], cycles, 16 if quick else layers)

    print("the forecast's limit (fresh plans on the popularity at the window's end, known to the generator):")
    forecast_limit(seeds[0], cycles, 16 if quick else layers)

    print("pricing moves (Balancer(move_penalty=..., refresh_penalty=..., layer_penalty=...)):")
    prices(seeds[0], cycles, 16 if quick else layers,
           ("swaps-fast", "stationary") if quick else [r for r in REGIMES if r != "drift"])

    print("prices across cluster shapes (16 layers, Balancer defaults vs one pair of prices):")
    shapes(seeds[0], 3 if quick else 12, 16, ("swaps-fast", "stationary") if quick else
           ("swaps-fast", "stationary", "switch", "bursts"), SHAPES[:3] if quick else SHAPES)

    print("workloads planned together (flashlb.plan_workloads):")
    workloads(quick)
    if not quick:
        print("decision time:")
        decision_time()


if __name__ == "__main__":
    main()
