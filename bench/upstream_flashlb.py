"""The public FlashLB policy of vllm-ascend (EPLB policy type 3), run in its own update loop.

    python bench/upstream_flashlb.py [--regime swaps] [--seed 101] [--cycles 18] [--layers 58]
                                     [--apply worker|priority]

The policy is read from the vllm-ascend release that ``build.sh --test`` installs into
``.venv/upstream-ascend`` (override: FLASHLB_UPSTREAM_ASCEND), or from the folder holding
``vllm_ascend/`` named by FLASHLB_VLLM_ASCEND_SRC, as the upstream tests find it. The policy
imports numba and scipy, which are not flashlb dependencies: without them (or without the
policy's code) :func:`unavailable` says why and the serving benchmark skips this column.

The loop is vllm-ascend's (``EplbWorker.do_update``): each cycle the policy gets the placement
in service ``[L, D, S]`` and, per stage, the load of every physical slot ``[W, L, D, S]``; a
replicated expert's tokens are split evenly over its replicas, as the router spreads them. It
keeps its own per-layer history and decides which layers to re-plan (its gate) and how to
align them to the ones in service; the worker then applies the whole returned table, resetting
any layer its placement check rejects. Our :class:`flashlb.Placement` is built from that table
and moves are counted with :func:`flashlb.metrics.moves` (no re-alignment of ours).

The compiled upstream code runs in a child interpreter (:func:`run_isolated`) so that a crash
in it ends that run only, not the benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from flashlb import metrics  # noqa: E402
from flashlb.placement import Placement  # noqa: E402
from flashlb.redeploy.simulate import SimulationResult, boot_placement  # noqa: E402

POLICY = "vllm-ascend-flashlb"
HELP = "the public FlashLB policy of vllm-ascend (type 3) in its own update loop"
MODULE = "vllm_ascend.eplb.core.policy.policy_flashlb"
APPLY = ("worker", "priority")


def find_source() -> Path | None:
    """The folder holding ``vllm_ascend/`` (sources named by FLASHLB_VLLM_ASCEND_SRC, else the
    installed release), or None."""
    p = Path(os.environ.get("FLASHLB_VLLM_ASCEND_SRC")
             or os.environ.get("FLASHLB_UPSTREAM_ASCEND", REPO / ".venv" / "upstream-ascend"))
    return p if p.exists() else None


def unavailable() -> str | None:
    """Why the upstream policy cannot run here, or None when it can."""
    src = find_source()
    if src is None or not (src / (MODULE.replace(".", "/") + ".py")).exists():
        return ("no vllm-ascend policy code (build.sh --test installs the release, or set "
                "FLASHLB_VLLM_ASCEND_SRC)")
    missing = [m for m in ("numba", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (the upstream policy needs them; flashlb does not)"
    return None


def load_policy_module(src: Path, num_devices: int) -> types.ModuleType:
    """Import vllm-ascend's policy_flashlb from ``src`` with two stand-ins, in this process.

    - ``vllm.logger``: the policy only logs one info line through it; vLLM itself is not
      needed for a policy that is pure numpy/numba.
    - ``vllm_ascend.distributed.parallel_state``: the policy asks the dynamic-EPLB process group
      for its world size (fewer than 32 ranks switch it to stricter thresholds); the stand-in
      answers with ``num_devices``, as that group would, without any NPU process group.
    The package ``__init__`` files of vllm_ascend are not run (they register the NPU platform
    with vLLM); the packages get their real folders so the policy's own imports resolve.
    """
    if "vllm" not in sys.modules:
        vllm = types.ModuleType("vllm")
        vllm.__path__ = []
        vlog = types.ModuleType("vllm.logger")
        vlog.logger = logging.getLogger("vllm")
        vllm.logger = vlog
        sys.modules.update({"vllm": vllm, "vllm.logger": vlog})
    root = src / "vllm_ascend"
    for pkg in ("vllm_ascend", "vllm_ascend.eplb", "vllm_ascend.eplb.core", "vllm_ascend.eplb.core.policy",
                "vllm_ascend.distributed"):
        mod = types.ModuleType(pkg)
        mod.__path__ = [str(root.joinpath(*pkg.split(".")[1:]))]
        sys.modules[pkg] = mod
    ps = types.ModuleType("vllm_ascend.distributed.parallel_state")
    ps.get_dynamic_eplb_group = lambda: types.SimpleNamespace(world_size=num_devices)
    sys.modules[ps.__name__] = ps
    return importlib.import_module(MODULE)


def slot_loads(placement: Placement, hotness: torch.Tensor) -> torch.Tensor:
    """Per-physical-slot loads as the serving stack records them.

    placement: [L, P] slots over D devices; hotness: [W, L, N] per-stage expert loads.
    Returns [W, L, D, P // D] float64: each slot carries its expert's load divided by the
    expert's replica count (the router spreads an expert's tokens evenly over its replicas).
    """
    h = torch.as_tensor(hotness, dtype=torch.float64)
    if h.dim() != 3 or h.shape[1:] != (placement.num_layers, placement.num_experts):
        raise ValueError(f"hotness must be [W, {placement.num_layers}, {placement.num_experts}], "
                         f"got {tuple(h.shape)}")
    phy = placement.phy2log.cpu()
    share = h / placement.logcnt.cpu().to(torch.float64)            # [W, L, N] per replica
    per_slot = share.gather(2, phy.expand(h.shape[0], -1, -1))      # [W, L, P]
    return per_slot.view(h.shape[0], placement.num_layers, placement.num_devices, placement.slots_per_device)


def worker_check(old: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, int]:
    """vllm-ascend's worker check of a new table ``[L, D, S]`` against the one in service: a
    layer that loses an expert, holds one expert twice on a device, or moves an expert that
    stays on a device to another slot of it is reset to the old layer. Returns (table, number
    of layers reset)."""
    new = new.clone()
    reset = 0
    for layer in range(old.shape[0]):
        bad = new[layer].unique().numel() < old[layer].unique().numel()
        for d in range(old.shape[1]):
            if bad:
                break
            row, was = new[layer, d], old[layer, d]
            stays = torch.isin(row, was)
            bad = row.unique().numel() != row.numel() or not torch.equal(row[stays], was[stays])
        if bad:
            new[layer] = old[layer]
            reset += 1
    return new, reset


def run_loop(episodes: torch.Tensor, num_physical: int, num_devices: int, *, cycle: int = 8,
             window: int = 16, apply: str = "worker", src: Path | None = None,
             log=None) -> tuple[SimulationResult, dict]:
    """The serving protocol of :func:`flashlb.simulate` for the upstream policy, in this process.

    episodes: [T, L, N] per-episode loads. Every ``cycle`` episodes from ``window`` on the
    policy decides on the last ``window`` (its stages); its placement serves and is judged on
    the next ``cycle``. apply="worker": the whole returned table (as vllm-ascend's worker);
    "priority": only the layers the policy reports as improved. Returns the result and
    counters (layers reset by the worker check, layers the policy flagged).
    """
    if apply not in APPLY:
        raise ValueError(f"apply must be one of {APPLY}, got {apply!r}")
    src = src or find_source()
    mod = load_policy_module(src, num_devices)
    mod.warm_up()  # what the EPLB process does before its loop: compiles the numba kernels
    ep = torch.as_tensor(episodes, dtype=torch.float64)
    T, L, N = ep.shape
    cycles = (T - window) // cycle
    if cycles < 1:
        raise ValueError(f"{T} episodes: a decision needs window={window} and cycle={cycle} more")
    policy = mod.FlashLB()
    cur = boot_placement(L, N, num_physical, num_devices)
    ratio, moves, layers, seconds = [], [], [], []
    counters = {"reset": 0, "flagged": 0}
    for c in range(cycles):
        t0 = window + c * cycle
        seen, nxt = ep[t0 - window:t0], ep[t0:t0 + cycle]
        start = time.perf_counter()
        table = cur.device_view().clone()
        changed, priority, new_table = policy.rebalance_experts(table, slot_loads(cur, seen))
        new_table = torch.as_tensor(new_table, dtype=torch.int64)
        if apply == "priority":
            keep = torch.ones(L, dtype=torch.bool)
            keep[torch.as_tensor(priority, dtype=torch.int64)] = False
            new_table[keep] = table[keep]
        new_table, reset = worker_check(table, new_table)
        new = Placement.from_device_view(new_table, N)
        seconds.append(time.perf_counter() - start)
        mv = metrics.moves(cur, new)
        moves.append(int(mv.sum()))
        layers.append(int((mv > 0).sum()))
        ratio.append(metrics.peak_avg_ratio(metrics.device_loads(new, nxt)).mean(-1))
        counters["reset"] += reset
        counters["flagged"] += len(priority)
        cur = new
        if log:
            log(f"      cycle {c + 1}/{cycles}: {layers[-1]} layers changed ({len(priority)} flagged), "
                f"{moves[-1]} slots moved, next window {float(ratio[-1].mean()):.4f}, {seconds[-1]:.2f} s")
    res = SimulationResult(POLICY, torch.stack(ratio), torch.tensor(moves), torch.tensor(layers),
                           torch.tensor(seconds, dtype=torch.float64))
    return res, counters


def run_isolated(episodes: torch.Tensor, num_physical: int, num_devices: int, *, cycle: int = 8,
                 window: int = 16, apply: str = "worker", timeout: float | None = None,
                 verbose: bool = False) -> tuple[SimulationResult | None, dict | str]:
    """:func:`run_loop` in a child interpreter (the same Python, the same import path).
    Returns (result, counters), or (None, why) when the child crashed or timed out."""
    with tempfile.TemporaryDirectory(prefix="flashlb-upstream-") as tmp:
        inp, out = Path(tmp) / "trace.pt", Path(tmp) / "result.pt"
        torch.save(torch.as_tensor(episodes, dtype=torch.float64), inp)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(inp), str(out),
               "--physical", str(num_physical), "--devices", str(num_devices), "--cycle", str(cycle),
               "--window", str(window), "--apply", apply] + (["--verbose"] if verbose else [])
        try:
            proc = subprocess.run(cmd, timeout=timeout, stdout=None if verbose else subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout} s"
        if proc.returncode != 0 or not out.exists():
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exit status {proc.returncode}")
            tail = (proc.stderr or "").strip().splitlines()[-3:]
            return None, f"the upstream policy crashed ({how}): {' | '.join(tail)}"
        d = torch.load(out, weights_only=True)
        res = SimulationResult(POLICY, d["ratio"], d["moves"], d["layers"], d["seconds"])
        return res, {"reset": int(d["reset"]), "flagged": int(d["flagged"])}


def _child(args) -> None:
    ep = torch.load(args.child[0], weights_only=True)
    log = (lambda s: print(s, flush=True)) if args.verbose else None
    res, cnt = run_loop(ep, args.physical, args.devices, cycle=args.cycle, window=args.window,
                        apply=args.apply, log=log)
    torch.save({"ratio": res.ratio, "moves": res.moves, "layers": res.layers, "seconds": res.seconds,
                "reset": torch.tensor(cnt["reset"]), "flagged": torch.tensor(cnt["flagged"])}, args.child[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regime", default="swaps")
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--cycles", type=int, default=18)
    ap.add_argument("--layers", type=int, default=58)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--physical", type=int, default=288)
    ap.add_argument("--devices", type=int, default=32)
    ap.add_argument("--cycle", type=int, default=8)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--apply", choices=APPLY, default="worker",
                    help="worker: apply the whole returned table, as vllm-ascend's worker does; "
                         "priority: only the layers the policy reports as improved")
    ap.add_argument("--verbose", action="store_true", help="one line per cycle")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    why = unavailable()
    if why:
        print(f"{POLICY}: skipped, {why}")
        return
    from flashlb.synthetic import regime_trace

    trace = regime_trace(args.regime, args.window + args.cycle * args.cycles, args.layers, args.experts,
                         seed=args.seed)
    t = time.perf_counter()
    res, info = run_isolated(trace, args.physical, args.devices, cycle=args.cycle, window=args.window,
                             apply=args.apply, verbose=args.verbose)
    if res is None:
        print(f"{POLICY}: {info}")
        return
    print(f"{POLICY} (apply={args.apply}), regime {args.regime}, seed {args.seed}, {args.layers} layers, "
          f"{res.ratio.shape[0]} decisions: next-window {res.mean_ratio:.4f}, {res.total_moves} slots moved, "
          f"{int(res.layers.sum())} layer changes ({info['flagged']} flagged improved, "
          f"{info['reset']} reset by the worker check), {res.seconds_per_decision:.2f} s/decision "
          f"[{time.perf_counter() - t:.0f} s]")


if __name__ == "__main__":
    main()
