"""The ``flashlb`` command: plan, simulate, report, demo.

Errors print one line on stderr and exit with status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from ._checks import as_hotness

__all__ = ["main"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error form: one line on stderr, exit status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")
        sys.exit(2)


def _one_line(message) -> str:
    lines = [x.strip() for x in str(message).splitlines() if x.strip()]
    return lines[0] if lines else type(message).__name__


class _Progress:
    """A progress line on stderr for work that takes more than a second.

    ``update(i, n)`` draws a bar; without updates a ticking clock shows the work is alive.
    """

    def __init__(self, label: str):
        import threading

        self.label = label
        self.start = time.perf_counter()
        self.done = threading.Event()
        self.shown = False
        self.frac = None
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()

    def update(self, i: int, n: int) -> None:
        self.frac = (i, n)

    def _tick(self):
        while not self.done.wait(0.2):
            el = time.perf_counter() - self.start
            if el < 1.0:
                continue
            self.shown = True
            if self.frac:
                i, n = self.frac
                fill = int(30 * i / max(n, 1))
                bar = f"[{'#' * fill}{'.' * (30 - fill)}] {i}/{n}"
            else:
                bar = "..."
            sys.stderr.write(f"\r{self.label} {bar} {el:.1f} s")
            sys.stderr.flush()


def _writable(path: Path, suffixes: tuple[str, ...]) -> Path:
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise CliError(f"{path}: the output must end in {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise CliError(f"{path.parent}: no such directory")
    # The output replaces a file; a directory, FIFO or device there is no file to replace.
    if path.is_dir():
        raise CliError(f"{path}: a directory, not a file")
    if path.exists() and not path.is_file():
        raise CliError(f"{path}: not a regular file (a FIFO or device); name a file")
    if not os.access(path.parent, os.W_OK):
        raise CliError(f"{path.parent}: not writable")
    return path


def _out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK):
        raise CliError(f"{out}: not writable")
    return out


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


def _read_loads(path: str, episode_len: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """Loads as [T, L, N] (every layer of the file) and the layers that carry load.

    With ``episode_len``, a per-step file [S, L, N] is cut into episodes of that many steps.
    Layers without load (the dense layers of a whole-model recording) are planned too, so the
    placement covers every layer the file has, but statistics skip them.
    """
    from .io import load_hotness

    try:
        h = load_hotness(path)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    try:
        h = as_hotness(h, name=path)  # [T, L, N] float64; finite, >= 0
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if episode_len is not None:
        if episode_len < 1:
            raise CliError(f"--episode-len must be >= 1, got {episode_len}")
        from .ops import episode_stats

        # Longer than the file: one episode of every step (the same cut, in int64 range).
        h = episode_stats(h, min(episode_len, h.shape[0]))[0].to(torch.float64)
    live = (h.sum((0, 2)) > 0).nonzero().flatten().tolist()
    if not live:
        raise CliError(f"{path}: every layer has zero load")
    return h, live


def _table(h, before, after, live, P, D, *, before_name="default", after_name="flashlb",
           moves=None, rows=8) -> str:
    """Per-layer peak/avg before and after (the worst-balanced layers), bound and moves."""
    from . import metrics

    idx = torch.tensor(live)
    hl = h[:, idx]
    lb = metrics.lower_bound_ratio(hl, P, D).tolist()
    rb = metrics.balance_ratio(before.select_layers(idx), hl).tolist()
    ra = metrics.balance_ratio(after.select_layers(idx), hl).tolist()
    out = [f"{'layer':>6} {before_name:>9} {after_name:>9} {'bound':>9}" + (f" {'moves':>6}" if moves is not None else "")]
    order = sorted(range(len(live)), key=lambda i: -rb[i])[:rows]
    for i in sorted(order):
        line = f"{live[i]:>6} {rb[i]:9.4f} {ra[i]:9.4f} {lb[i]:9.4f}"
        out.append(line + (f" {int(moves[live[i]]):6d}" if moves is not None else ""))
    if len(live) > rows:
        out.append(f"({rows} of {len(live)} layers with load shown: those {before_name} balances worst; "
                   "bound: a lower bound on the per-episode peak/avg, averaged like the ratios)")
    return "\n".join(out)


def _mean_ratio(placement, h, live) -> float:
    from . import metrics

    idx = torch.tensor(live)
    return metrics.balance_ratio(placement.select_layers(idx), h[:, idx]).mean().item()


def cmd_plan(args) -> int:
    from . import metrics, plan, plan_workloads
    from .placement import Placement

    # Several files: each is one workload, a scenario of the objective (flashlb.plan_workloads).
    files = args.loads
    if args.weights is not None and len(files) == 1:
        raise CliError("--weights weighs several LOADS files against each other; with one file "
                       "there is nothing to weigh")
    if args.weights is not None and len(args.weights) != len(files):
        raise CliError(f"--weights needs one weight per LOADS file ({len(files)}), got {len(args.weights)}")
    loaded = [_read_loads(f, args.episode_len) for f in files]
    if len({tuple(x[0].shape[1:]) for x in loaded}) > 1:
        raise CliError("LOADS files differ in layers or experts: "
                       + ", ".join(f"{f}: {tuple(x[0].shape[1:])}" for f, x in zip(files, loaded)))
    if len(files) == 1:
        h, live = loaded[0]
    else:
        h = torch.stack([x[0].sum(0) for x in loaded])
        live = sorted(set().union(*(x[1] for x in loaded)))
    out = _writable(Path(args.output), (".json", ".pt", ".safetensors"))
    previous = None
    if args.previous:
        try:
            previous = Placement.load(args.previous, num_devices=args.devices, num_experts=h.shape[2])
        except (OSError, ValueError) as exc:
            raise CliError(f"--previous {args.previous}: {exc}") from None
    try:
        t = time.perf_counter()
        with _Progress(f"planning {h.shape[1]} layers"):
            opts = dict(algorithm=args.algorithm, num_groups=args.groups, num_nodes=args.nodes,
                        time_budget=args.time_budget, previous=previous, move_penalty=args.move_penalty,
                        layer_penalty=args.layer_penalty, refresh_penalty=args.refresh_penalty)
            if len(files) > 1:
                new = plan_workloads(list(h), args.physical, args.devices, weights=args.weights, **opts)
            else:
                new = plan(h, args.physical, args.devices, **opts)
        dt = time.perf_counter() - t
        base = previous if previous is not None else plan(
            h, args.physical, args.devices, algorithm="default", num_groups=args.groups, num_nodes=args.nodes)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        new.save(out)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    before = "previous" if previous is not None else "default"
    moves = metrics.moves(base, new) if previous is not None else None
    print(_table(h, base, new, live, args.physical, args.devices, before_name=before,
                 after_name=args.algorithm, moves=moves))
    moved = f", {int(moves.sum())} slots moved" if moves is not None else ""
    print(f"{len(live)} layers with load x {h.shape[2]} experts, {args.physical} slots on {args.devices} "
          f"devices: peak/avg {_mean_ratio(base, h, live):.4f} ({before}) -> "
          f"{_mean_ratio(new, h, live):.4f} ({args.algorithm}) in {dt:.2f} s{moved}; wrote {out}")
    return 0


def cmd_simulate(args) -> int:
    from .redeploy import simulate
    from .redeploy.simulate import POLICIES

    if (args.trace is None) == (args.regime is None):
        raise CliError("give a TRACE file or --regime (not both)")
    if args.expert_bytes < 0:
        raise CliError(f"--expert-bytes must be >= 0, got {args.expert_bytes}")
    policies = tuple(args.policies.split(",")) if args.policies else POLICIES
    unknown = sorted(set(policies) - set(POLICIES))
    if unknown:
        raise CliError(f"--policies: unknown {unknown}; choose from {','.join(POLICIES)}")
    if args.trace is not None:
        h, live = _read_loads(args.trace)
        h = h[:, torch.tensor(live)]
    else:
        from .synthetic import regime_trace

        try:
            h = regime_trace(args.regime, args.episodes, args.layers, args.experts, seed=args.seed)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    out = _out_dir(args.out) if args.out else None  # before the work, not after it
    # The Balancer's own defaults unless the command line sets them.
    options = {k: v for k, v in (("threshold", args.threshold), ("move_penalty", args.move_penalty),
                                 ("layer_penalty", args.layer_penalty),
                                 ("refresh_penalty", args.refresh_penalty),
                                 ("max_moves_per_cycle", args.max_moves)) if v is not None}
    try:
        with _Progress("simulating") as prog:
            res = simulate(h, args.physical, args.devices, episode_len=args.episode_len, cycle=args.cycle,
                           window=args.window, policies=policies, progress=prog.update,
                           balancer_options=options)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _print_simulation(res, args.expert_bytes)
    if "balancer" in res:
        from .redeploy import Balancer

        move, refresh = Balancer(args.physical, args.devices, **options).prices()
        refresh = "as a move" if refresh is None else f"{refresh:.3g}"
        print(f"balancer prices per moved slot: {move:.3g}, when a layer takes its fresh plan whole: {refresh}")
    if out is not None:
        path = _plot_simulation(res, out)
        print(f"figure written to {path}")
    return 0


def _print_simulation(res, expert_bytes: int = 3 * 7168 * 2048) -> None:
    print(f"{'policy':12s} {'next-window peak/avg':>21s} {'slots moved':>12s} {'GB moved':>9s} "
          f"{'layers/cycle':>13s} {'s/decision':>11s}")
    for name, r in res.items():
        print(f"{name:12s} {r.mean_ratio:21.4f} {r.total_moves:12d} {r.total_moves * expert_bytes / 1e9:9.2f} "
              f"{r.layers.float().mean():13.1f} {r.seconds_per_decision:11.3f}")
    if "balancer" in res and "default" in res:
        cp, de = res["balancer"], res["default"]
        print(f"balancer moved {100 * cp.total_moves / max(de.total_moves, 1):.1f}% of the aligned default's slots")


def _save_figure(fig, path: Path) -> Path:
    import io

    from .placement import atomic_write

    buf = io.BytesIO()  # in memory first: a full disk is then an OSError of the write itself
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, buf.getvalue())
    return path


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise CliError("flashlb report needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_simulation(res, out: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, r in res.items():
        y = r.ratio.flatten()
        ax.plot(torch.arange(y.numel()), y, label=f"{name} (mean {r.mean_ratio:.3f}, {r.total_moves} moves)")
    ax.set_xlabel("episode served (after the first decision)")
    ax.set_ylabel("peak / average device load")
    ax.set_title("Per-episode balance on the next window, mean over layers")
    ax.legend(fontsize=7)
    path = _save_figure(fig, out / "simulation.png")
    plt.close(fig)
    return path


def cmd_report(args) -> int:
    from . import metrics, plan

    if args.cycle_len is not None and (args.cycle_len < 16 or args.cycle_len % 16):
        # the replay cuts the steps into 16-step episodes and decides every cycle of them
        raise CliError(f"--cycle-len must be a positive multiple of 16 (steps), got {args.cycle_len}")
    h, live = _read_loads(args.loads, args.episode_len)
    out = _out_dir(args.out)
    plt = _plt()
    try:
        with _Progress(f"planning {h.shape[1]} layers"):
            base = plan(h, args.physical, args.devices, algorithm="default")
            new = plan(h, args.physical, args.devices)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    idx = torch.tensor(live)
    hl = h[:, idx]
    written = []
    # 1. device-load heat maps: layers x devices (load / average), summed window
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    loads = {}
    for ax, (name, p) in zip(axes, (("default", base), ("flashlb", new))):
        dl = metrics.device_loads(p.select_layers(idx), hl.sum(0))
        rel = dl / dl.mean(-1, keepdim=True).clamp_min(1e-12)
        loads[name] = rel
    vmax = max(float(r.max()) for r in loads.values())
    for ax, (name, rel) in zip(axes, loads.items()):
        im = ax.imshow(rel.numpy(), aspect="auto", cmap="magma", vmin=min(float(r.min()) for r in loads.values()), vmax=vmax)
        ax.set_title(f"{name}: device load / average (peak {float(rel.max()):.3f})")
        ax.set_xlabel("device")
    axes[0].set_ylabel("layer (with load)")
    fig.colorbar(im, ax=axes, shrink=0.8)
    written.append(_save_figure(fig, out / "device_loads.png"))
    plt.close(fig)
    # 2. peak/avg per layer for each algorithm, and the lower bound
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for name, p in (("default", base), ("flashlb", new)):
        r = metrics.balance_ratio(p.select_layers(idx), hl)
        ax.plot(live, r.numpy(), marker=".", label=f"{name} (mean {r.mean():.4f})")
    lb = metrics.lower_bound_ratio(hl, args.physical, args.devices)
    ax.plot(live, lb.numpy(), linestyle=":", color="gray", label="lower bound (per episode, averaged)")
    ax.set_xlabel("layer")
    ax.set_ylabel("per-episode peak / average")
    ax.set_title(f"{args.physical} slots on {args.devices} devices")
    ax.legend()
    written.append(_save_figure(fig, out / "peak_per_layer.png"))
    plt.close(fig)
    # 3. optional: replay the file (its steps, before any episode cut) as a per-step trace
    if args.cycle_len is not None:
        from .redeploy import simulate

        raw, raw_live = _read_loads(args.loads)
        try:
            with _Progress("simulating") as prog:
                cycle = args.cycle_len // 16  # --cycle-len steps in 16-step episodes
                res = simulate(raw[:, torch.tensor(raw_live)], args.physical, args.devices, episode_len=16,
                               cycle=cycle, window=2 * cycle, progress=prog.update)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        _print_simulation(res)
        written.append(_plot_simulation(res, out))
    print(f"peak/avg {_mean_ratio(base, h, live):.4f} (default) -> {_mean_ratio(new, h, live):.4f} (flashlb)")
    print("figures written:", ", ".join(str(p) for p in written))
    return 0


def cmd_demo(args) -> int:
    from . import metrics, plan
    from .synthetic import drifting_trace

    out = _out_dir(args.out)
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
    import io

    from .placement import atomic_write

    buf = io.BytesIO()
    torch.save({"logical_count": trace}, buf)
    atomic_write(out / "synthetic_trace.pt", buf.getvalue())
    data = _data_dir()
    if data is None:
        print("real DeepSeek-V3 statistics not found (set FLASHLB_DATA to their folder); skipped")
        src = str(out / "synthetic_trace.pt")
    else:
        src = str(sorted(data.glob("*.json"))[0])
    # Through the parser, so the demo runs exactly what a user's command line would.
    parser = build_parser()
    for argv in (["plan", src, "--devices", "32", "--physical", "288", "-o", str(out / "placement.json")],
                 ["report", src, "--devices", "32", "--physical", "288", "--out", str(out)]):
        print("\n$ flashlb " + " ".join(argv))
        sub = parser.parse_args(argv)
        rc = sub.func(sub)
        if rc:
            return rc
    print(f"\ndemo finished: placement and figures are in {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="flashlb", description="Expert-parallelism load balancer for MoE inference.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    loads_help = "loads file: .json (SGLang logical_count), .pt (tensor or SGLang dump), .npy, .safetensors"

    def sizes(q):
        q.add_argument("--devices", "-d", type=int, required=True, help="number of devices (EP ranks)")
        q.add_argument("--physical", "-p", type=int, required=True, help="physical expert slots in all")

    q = sub.add_parser("plan", help="plan a placement from recorded expert loads",
                       description="Plan a placement; print per-layer peak/avg before and after.")
    q.add_argument("loads", nargs="+", help=loads_help + "; several files: one workload each, planned "
                   "together (each a scenario of the objective)")
    sizes(q)
    q.add_argument("--weights", type=float, nargs="+", default=None,
                   help="with several LOADS files: how much each workload matters (default: equally)")
    q.add_argument("--nodes", type=int, default=1, help="nodes, for hierarchical placement")
    q.add_argument("--groups", type=int, default=None, help="expert groups (group-limited routing)")
    q.add_argument("--episode-len", type=int, default=None, help="cut a per-step file into episodes of this many steps")
    q.add_argument("--algorithm", choices=("flashlb", "default"), default="flashlb")
    q.add_argument("--time-budget", type=float, default=None, help="seconds for the anytime search")
    q.add_argument("--previous", default=None, help="placement in service (.json/.pt/.safetensors): keep experts in place")
    q.add_argument("--move-penalty", type=float, default=0.0, help="cost of one moved slot, in peak/avg units (with --previous)")
    q.add_argument("--refresh-penalty", type=float, default=None, help="cost of one moved slot when a layer takes "
                   "its fresh plan whole (with --previous; default: --move-penalty)")
    q.add_argument("--layer-penalty", type=float, default=0.0, help="fixed cost of re-placing a layer at all, in "
                   "peak/avg units (with --previous)")
    q.add_argument("-o", "--output", required=True, help="placement file: .json (SGLang --init-expert-location), .pt, .safetensors")
    q.set_defaults(func=cmd_plan)

    q = sub.add_parser("simulate", help="replay a trace through decision cycles, policy by policy",
                       description="Every CYCLE episodes each policy re-plans from the last WINDOW episodes and "
                                   "is judged per episode on the next CYCLE; all start from the boot map.")
    q.add_argument("trace", nargs="?", default=None, help=loads_help + "; loads [S, L, N] (or give --regime)")
    sizes(q)
    q.add_argument("--regime", default=None, help="a synthetic trace instead of a file: stationary, drift, swaps, "
                   "swaps-fast, bursts or switch")
    q.add_argument("--episodes", type=int, default=160, help="--regime: episodes of the trace")
    q.add_argument("--layers", type=int, default=58, help="--regime: MoE layers")
    q.add_argument("--experts", type=int, default=256, help="--regime: experts per layer")
    q.add_argument("--seed", type=int, default=0, help="--regime: seed of the trace")
    q.add_argument("--episode-len", type=int, default=1, help="steps per episode (1: the trace holds episodes)")
    q.add_argument("--cycle", type=int, default=8, help="episodes between decisions (and judged after each)")
    q.add_argument("--window", type=int, default=16, help="episodes each decision sees")
    q.add_argument("--policies", default=None, help="comma-separated: balancer, fresh, forecast, previous, "
                   "default, static, clairvoyant (default: all)")
    q.add_argument("--threshold", type=float, default=None, help="balancer: re-plan layers above this peak/avg "
                   "(default: the Balancer's)")
    q.add_argument("--move-penalty", type=float, default=None, help="balancer: cost of one moved slot "
                   "(default: the Balancer's, by the cluster's shape)")
    q.add_argument("--refresh-penalty", type=float, default=None, help="balancer: cost of one moved slot when a "
                   "layer takes its fresh plan whole (default: the Balancer's, by the cluster's shape)")
    q.add_argument("--layer-penalty", type=float, default=None, help="balancer: fixed cost of re-placing a layer "
                   "at all, in peak/avg units (default: the Balancer's, 0)")
    q.add_argument("--max-moves", type=int, default=None, help="balancer: at most this many slots moved per cycle")
    q.add_argument("--expert-bytes", type=int, default=3 * 7168 * 2048,
                   help="bytes of one expert's weights (default: DeepSeek-V3 in 8 bits)")
    q.add_argument("--out", default=None, help="folder for the per-episode figure")
    q.set_defaults(func=cmd_simulate)

    q = sub.add_parser("report", help="PNG figures: device loads, peak/avg per layer, simulation",
                       description="Write PNG figures comparing flashlb with the default greedy.")
    q.add_argument("loads", help=loads_help)
    sizes(q)
    q.add_argument("--episode-len", type=int, default=None, help="cut a per-step file into episodes")
    q.add_argument("--cycle-len", type=int, default=None,
                   help="also replay the file as a per-step trace, deciding every this many steps "
                        "(a multiple of 16)")
    q.add_argument("--out", required=True, help="folder for the figures")
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("demo", help="run flashlb on a bundled synthetic trace and the real statistics")
    q.add_argument("--out", default="flashlb-demo", help="folder for what the demo writes")
    q.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ValueError, TypeError, OSError, MemoryError, RecursionError) as exc:
        # Bad input (files, sizes, options) that reached the library: one line, status 2.
        if args.debug:
            raise
        print(f"flashlb: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flashlb: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback with --debug
        if args.debug:
            raise
        print(f"flashlb: internal error: {type(exc).__name__}: {_one_line(exc)} (--debug shows the "
              "traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
