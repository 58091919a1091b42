"""The ``flashlb`` command: plan, demo (and more as the package grows).

Errors print one line on stderr and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

__all__ = ["main"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _data_dir() -> Path | None:
    """The shared real statistics, if this checkout has them beside it."""
    env = os.environ.get("FLASHLB_DATA")
    cands = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    cands += [here.parent / "shared" / "data" / "sglang-dsv3-logical-count",
              Path.cwd().parent / "shared" / "data" / "sglang-dsv3-logical-count"]
    for c in cands:
        if c.is_dir() and any(c.glob("*.json")):
            return c
    return None


def _read_loads(path: str, drop_empty: bool = True) -> tuple[torch.Tensor, list[int]]:
    """Loads as [T, L, N] plus the indices of the layers kept (all-zero layers dropped)."""
    from .io import load_hotness

    try:
        h = load_hotness(path)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    h = h.to(torch.float64)
    if h.dim() == 2:
        h = h.unsqueeze(0)
    layers = list(range(h.shape[1]))
    if drop_empty:
        live = h.sum((0, 2)) > 0
        if not bool(live.any()):
            raise CliError(f"{path}: every layer has zero load")
        layers = live.nonzero().flatten().tolist()
        h = h[:, live]
    return h, layers


def _table(h: torch.Tensor, before, after, layers: list[int], P: int, D: int, rows: int = 8) -> str:
    from . import metrics

    lb = (metrics.lower_bound_peak(h.sum(0), P, D) / (h.sum(0).sum(-1) / D)).tolist()
    rb = metrics.balance_ratio(before, h).tolist()
    ra = metrics.balance_ratio(after, h).tolist()
    out = [f"{'layer':>6} {'default':>9} {'flashlb':>9} {'bound':>9}"]
    order = sorted(range(len(layers)), key=lambda i: -rb[i])[:rows]
    for i in sorted(order):
        out.append(f"{layers[i]:>6} {rb[i]:9.4f} {ra[i]:9.4f} {lb[i]:9.4f}")
    if len(layers) > rows:
        out.append(f"({rows} of {len(layers)} layers shown: those the default balances worst)")
    return "\n".join(out)


def cmd_plan(args) -> int:
    from . import metrics, plan
    from .placement import Placement

    h, layers = _read_loads(args.loads)
    out = Path(args.output)
    if out.suffix.lower() not in (".json", ".pt", ".safetensors"):
        raise CliError(f"{out}: the output must end in .json, .pt or .safetensors")
    if not out.parent.exists():
        raise CliError(f"{out.parent}: no such directory")
    t = time.perf_counter()
    try:
        new = plan(h, args.physical, args.devices, algorithm=args.algorithm,
                   num_groups=args.groups, num_nodes=args.nodes, time_budget=args.time_budget)
        base = plan(h, args.physical, args.devices, algorithm="default",
                    num_groups=args.groups, num_nodes=args.nodes)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    dt = time.perf_counter() - t
    try:
        new.save(out)
    except OSError as exc:
        raise CliError(f"{out}: cannot write ({exc.strerror or exc})") from None
    print(_table(h, base, new, layers, args.physical, args.devices))
    rb = metrics.balance_ratio(base, h).mean().item()
    ra = metrics.balance_ratio(new, h).mean().item()
    print(f"{len(layers)} layers x {h.shape[2]} experts, {args.physical} slots on {args.devices} devices: "
          f"peak/avg {rb:.4f} (default) -> {ra:.4f} ({args.algorithm}) in {dt:.2f} s; wrote {out}")
    _ = Placement  # the file is a Placement; `Placement.load(path, num_devices=...)` reads it
    return 0


def cmd_demo(args) -> int:
    from . import metrics, plan
    from .synthetic import drifting_trace

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("flashlb demo: a synthetic DeepSeek-V3-sized trace (58 layers x 256 experts, 32 episodes)")
    trace = drifting_trace(32, 58, 256, seed=0, skew=0.6, drift=0.05, burst=0.15)
    window, following = trace[:16], trace[16:]
    for P, D in ((288, 32), (320, 64)):
        t = time.perf_counter()
        new = plan(window, P, D)
        dt = time.perf_counter() - t
        base = plan(window, P, D, algorithm="default")
        fit = (metrics.balance_ratio(base, window).mean().item(), metrics.balance_ratio(new, window).mean().item())
        nxt = (metrics.balance_ratio(base, following).mean().item(), metrics.balance_ratio(new, following).mean().item())
        print(f"  {P} slots / {D} devices: per-episode peak/avg on the window {fit[0]:.4f} (default) "
              f"-> {fit[1]:.4f} (flashlb); on the next window {nxt[0]:.4f} -> {nxt[1]:.4f}; {dt:.2f} s")
    data = _data_dir()
    if data is None:
        print("real DeepSeek-V3 statistics not found (set FLASHLB_DATA to their folder); skipped")
    else:
        f = sorted(data.glob("*.json"))[0]
        h, layers = _read_loads(str(f))
        new = plan(h, 288, 32)
        base = plan(h, 288, 32, algorithm="default")
        path = out / "placement.json"
        new.save(path)
        print(f"real statistics {f.name}: {len(layers)} MoE layers, 288 slots / 32 devices")
        print(_table(h, base, new, layers, 288, 32, rows=5))
        print(f"  peak/avg {metrics.balance_ratio(base, h).mean().item():.5f} (default) -> "
              f"{metrics.balance_ratio(new, h).mean().item():.5f} (flashlb); placement written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashlb", description="Expert-parallelism load balancer for MoE inference.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("plan", help="plan a placement from recorded expert loads")
    q.add_argument("loads", help="loads file: .json (SGLang logical_count), .pt, .npy, .safetensors")
    q.add_argument("--devices", "-d", type=int, required=True, help="number of devices (EP ranks)")
    q.add_argument("--physical", "-p", type=int, required=True, help="physical expert slots in all")
    q.add_argument("--nodes", type=int, default=1, help="nodes, for hierarchical placement")
    q.add_argument("--groups", type=int, default=None, help="expert groups (group-limited routing)")
    q.add_argument("--algorithm", choices=("flashlb", "default"), default="flashlb")
    q.add_argument("--time-budget", type=float, default=None, help="seconds for the anytime search")
    q.add_argument("-o", "--output", required=True, help="placement file: .json (SGLang), .pt, .safetensors")
    q.set_defaults(func=cmd_plan)

    q = sub.add_parser("demo", help="run flashlb on a bundled synthetic trace and the real statistics")
    q.add_argument("--out", default="flashlb-demo", help="folder for what the demo writes")
    q.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        if args.debug:
            raise
        print(f"flashlb: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
