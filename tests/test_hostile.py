"""Hostile inputs: no abort, no hang, one clear error, outputs others can read.

Cases that could hang (FIFOs, /dev/zero, absurd budgets and sizes) or kill the process (the
C++ search on extreme magnitudes) run in a child process with a timeout, many per child: a
hang fails the test instead of freezing the suite, a signal shows as a negative status.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import flashlb
from flashlb import Balancer, Placement, metrics, plan

ROOT = Path(__file__).resolve().parents[1]


def isolated(code: str, *args: str, timeout: float = 90) -> str:
    """Run ``code`` in a fresh interpreter (with ``args`` as sys.argv[1:]); fail on a nonzero
    status, a signal or a timeout. Returns its stdout."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                           text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hung: no answer within {timeout} s\n{(exc.stderr or b'')[-2000:]!r}")
    how = f"killed by signal {-r.returncode}" if r.returncode < 0 else f"status {r.returncode}"
    assert r.returncode == 0, f"{how}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


# --------------------------------------------------------------------------- magnitudes
def test_magnitudes_from_subnormal_to_overflow():
    """Loads at any scale a float64 holds: a valid, duplicate-free placement, never worse
    than the default greedy where the greedy's is admissible, sane metrics. Hypothesis runs
    inside the child, so an abort in the C++ search fails this test and nothing else."""
    isolated("""
        import math, torch, flashlb
        from hypothesis import given, settings, strategies as st
        from flashlb import metrics

        SCALES = [5e-324, 1e-320, 1e-310, 1e-307, 1e-300, 1.0, 1e300, 1e307, 1e308, 1.7976931348623157e308]

        @settings(max_examples=30, deadline=None, database=None, derandomize=True)
        @given(st.data())
        def check(data):
            scale = data.draw(st.sampled_from(SCALES))
            T, L = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
            N, D = data.draw(st.sampled_from([(4, 2), (8, 4), (8, 2), (6, 3)]))
            P = D * data.draw(st.integers(max(1, -(-N // D)), N))
            u = data.draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.25, 1e-3, 0.9]),
                                   min_size=T * L * N, max_size=T * L * N))
            h = torch.tensor(u, dtype=torch.float64).view(T, L, N) * scale
            h[..., 0] = scale  # every layer carries load at this scale
            ours = flashlb.plan(h, P, D)
            ours.validate()
            greedy = flashlb.plan(h, P, D, algorithm="default")
            r_ours, r_greedy = metrics.balance_ratio(ours, h), metrics.balance_ratio(greedy, h)
            assert torch.isfinite(r_ours).all() and (r_ours >= 1 - 1e-12).all(), r_ours
            ok = ~greedy.has_duplicates()
            assert (r_ours[ok] <= r_greedy[ok] * (1 + 1e-9)).all(), (scale, r_ours, r_greedy)
            lb = metrics.lower_bound_peak(h.sum(0) / T if scale < 1e300 else h[0], P, D)
            assert not torch.isnan(lb).any() and (lb >= 0).all(), lb
            if 1e-300 <= scale <= 1e300:
                assert torch.isfinite(lb).all() and (lb > 0).all(), lb
            flashlb.rebalance_experts(h[0], P, 1, 1, D)  # the drop-in path

        check()
        # The issue's exact input, and NaN straight into the search operator.
        flashlb.plan(torch.tensor([[5e-324, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float64), 16, 4).validate()
        w = torch.full((1, 1, 8), float("nan"), dtype=torch.float64)
        ew = torch.ones(1, 1, dtype=torch.float64)
        for bad in (w, w.nan_to_num(posinf=0.0) * 0 + float("inf"), -torch.ones(1, 1, 8, dtype=torch.float64)):
            try:
                torch.ops.flashlb.joint_search(bad, ew, counts=torch.full((1, 8), 2), num_devices=4,
                                               slots_per_device=4, perturb_rounds=10)
            except ValueError:
                pass
            else:
                raise AssertionError("joint_search accepted non-finite or negative loads")
        for limit in (float("inf"), 1e300, float("nan")):
            try:
                torch.ops.flashlb.joint_search(w.nan_to_num(1.0), ew, counts=torch.full((1, 8), 2),
                                               num_devices=4, slots_per_device=4, time_limit=limit)
            except ValueError:
                pass
            else:
                raise AssertionError(f"joint_search accepted time_limit={limit}")
        print("ok")
    """)


def test_max_assignment_on_extreme_scores():
    isolated("""
        import itertools, torch, flashlb
        op = torch.ops.flashlb.max_assignment
        for bad in (float("nan"), float("-inf"), float("inf")):
            s = torch.tensor([[[bad, 1.0], [1.0, 0.0]]], dtype=torch.float64)
            try:
                op(s)
            except ValueError:
                pass
            else:
                raise AssertionError(f"max_assignment accepted {bad}")
        g = torch.Generator().manual_seed(0)
        for scale in (5e-324, 1e-300, 1.0, 1e300, 1.7e308):
            s = (torch.rand(4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1) * scale
            out = op(s)
            for b in range(4):
                best = max(sum(float(s[b, i, p[i]]) / scale for i in range(4))
                           for p in itertools.permutations(range(4)))
                got = sum(float(s[b, i, out[b, i]]) / scale for i in range(4))
                assert sorted(out[b].tolist()) == [0, 1, 2, 3] and got >= best - 1e-9, (scale, got, best)
        print("ok")
    """)


# --------------------------------------------------------------------------- budgets and sizes
def test_absurd_budgets_and_sizes_fail_at_once():
    out = isolated("""
        import time, torch, flashlb
        from flashlb import metrics
        h = torch.rand(2, 16, dtype=torch.float64)
        cases = [
            dict(time_budget=float("inf")), dict(time_budget=1e300), dict(time_budget=float("nan")),
            dict(time_budget=-1.0), dict(time_budget=True), dict(seed=2**63), dict(seed=-1),
            dict(seed=1.5), dict(perturb_rounds=10**18), dict(move_penalty=float("nan")),
            dict(smoothing=float("inf")), dict(recency_half_life=float("nan")),
        ]
        for kw in cases:
            t = time.perf_counter()
            try:
                flashlb.plan(h, 32, 4, **kw)
            except ValueError:
                assert time.perf_counter() - t < 5, kw
            else:
                raise AssertionError(f"accepted {kw}")
        sizes = [(17592186044416, 1099511627776), (2**62, 2**58), (10**30, 10**29), (2**40, 2**36),
                 (0, 4), (32, 0), (32, -4), (32.0, 4), (32, 4.0), (True, 1)]
        for P, D in sizes:
            t = time.perf_counter()
            for call in (lambda: flashlb.plan(h, P, D), lambda: flashlb.plan(h, P, D, algorithm="default"),
                         lambda: flashlb.Balancer(P, D).step(h, flashlb.plan(h, 32, 4)),
                         lambda: metrics.lower_bound_peak(h, P, D)):
                try:
                    call()
                except ValueError:
                    pass
                else:
                    raise AssertionError(f"accepted P={P}, D={D}")
            assert time.perf_counter() - t < 10, (P, D)
        # A tiny budget still returns a valid plan.
        flashlb.plan(h, 32, 4, time_budget=1e-9).validate()
        print("ok")
    """)
    assert out.strip() == "ok"


def test_synthetic_traces_refuse_absurd_sizes_and_seeds_at_once():
    """`flashlb simulate --regime drift --episodes 10000000000` looped for hours towards
    terabytes; a seed past what a torch generator takes failed with torch's own message. Both
    are one ValueError naming the argument, at once, from every builder and the CLI."""
    out = isolated("""
        import time, contextlib, io
        from flashlb import synthetic
        from flashlb.cli import main
        builders = [lambda **kw: synthetic.drifting_trace(**kw)] + [
            (lambda r: lambda **kw: synthetic.regime_trace(r, **kw))(r) for r in synthetic.REGIMES]
        for build in builders:
            for kw, name in ((dict(num_episodes=10**10, num_layers=100000, num_experts=8), "num_episodes"),
                             (dict(num_episodes=10**9, num_layers=58, num_experts=256), "num_episodes"),
                             (dict(num_episodes=4, num_layers=1, num_experts=8, seed=2**70), "seed"),
                             (dict(num_episodes=4, num_layers=1, num_experts=8, seed=-(2**70)), "seed"),
                             (dict(num_episodes=4, num_layers=1, num_experts=8, seed=1.5), "seed")):
                t = time.perf_counter()
                try:
                    build(**kw)
                except ValueError as exc:
                    assert name in str(exc), (kw, exc)
                else:
                    raise AssertionError(f"accepted {kw}")
                assert time.perf_counter() - t < 5, kw
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()) as err:
            rc = main(["simulate", "--regime", "drift", "-p", "16", "-d", "4", "--episodes", str(10**10),
                       "--layers", "100000", "--experts", "8"])
        assert rc == 2 and "flashlb: error:" in err.getvalue() and time.perf_counter() - t < 5, err.getvalue()
        print("ok")
    """, timeout=60)
    assert out.strip() == "ok"


def test_search_operator_refuses_sizes_no_machine_holds_at_once():
    """torch.ops.flashlb.joint_search on a 1 x 1 x 1 load with num_devices=2**28 ran 27 s into
    a MemoryError, and with 2**40 failed in torch's allocator: sizes whose arrays cannot fit
    are one ValueError, before anything is allocated."""
    out = isolated("""
        import time, torch, flashlb
        js = torch.ops.flashlb.joint_search
        w, ew = torch.ones(1, 1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64)
        for D, S in ((2**28, 1), (2**40, 1), (1, 2**40), (2**31, 2**31)):
            t = time.perf_counter()
            for start in (dict(counts=torch.tensor([[D * S]])), dict(init_slots=torch.zeros(1, 0, dtype=torch.int64))):
                try:
                    js(w, ew, num_devices=D, slots_per_device=S, **start)
                except ValueError as exc:
                    assert "joint_search" in str(exc), exc
                else:
                    raise AssertionError(f"accepted D={D}, S={S}")
            assert time.perf_counter() - t < 5, (D, S)
        print("ok")
    """, timeout=60)
    assert out.strip() == "ok"


# --------------------------------------------------------------------------- special and damaged files
FILES_CHILD = """
    import json, os, sys, time, torch, flashlb
    from pathlib import Path
    from flashlb import Balancer, Placement
    from flashlb.io import load_hotness
    from flashlb._files import max_file_bytes

    d = Path(sys.argv[1])
    readers = {
        "load_hotness": lambda p: load_hotness(p),
        "Placement.load": lambda p: Placement.load(p, num_devices=2),
        "Balancer.load": lambda p: Balancer(8, 2).load(p),
    }
    special = []
    for sfx in (".json", ".pt", ".npy", ".safetensors"):
        os.mkfifo(d / f"fifo{sfx}")
        (d / f"zero{sfx}").symlink_to("/dev/zero")
        (d / f"dir{sfx}").mkdir()
        (d / f"loop{sfx}").symlink_to(d / f"loop2{sfx}")
        (d / f"loop2{sfx}").symlink_to(d / f"loop{sfx}")
        with open(d / f"huge{sfx}", "wb") as f:
            f.truncate(max_file_bytes() + 1)  # sparse: no disk used
        special += [d / f"{k}{sfx}" for k in ("fifo", "zero", "dir", "loop", "huge", "missing")]
    failures = []
    for path in special + sorted((d / "damaged").iterdir()):
        for name, read in readers.items():
            t = time.perf_counter()
            try:
                read(path)
            except ValueError as exc:
                if "\\n" in str(exc) or str(path.name) not in str(exc):
                    failures.append(f"{name}({path.name}): unclear message {str(exc)!r}")
            except BaseException as exc:
                failures.append(f"{name}({path.name}): {type(exc).__name__}: {exc}")
            else:
                failures.append(f"{name}({path.name}): accepted")
            if time.perf_counter() - t > 5:
                failures.append(f"{name}({path.name}): took {time.perf_counter() - t:.1f} s")
    print(json.dumps(failures))
"""


def _damaged(folder: Path) -> Path:
    """Damaged files of every format (written once per session into ``folder/damaged``)."""
    import numpy as np
    from safetensors.torch import save_file

    dmg = folder / "damaged"
    dmg.mkdir()
    good = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]]), 4, 2)
    good.save(folder / "good.pt")
    good.save(folder / "good.safetensors")
    pt, st = (folder / "good.pt").read_bytes(), (folder / "good.safetensors").read_bytes()
    files = {
        "trunc.json": b'{"physical_to_logical_map": [[0, 1',
        "utf.json": b"\xff\xfe\x00{",
        "nested.json": b"[" * 200000 + b"]" * 200000,
        "nested_dict.json": b'{"logical_count": ' * 50000 + b"1" + b"}" * 50000,
        "empty.json": b"",
        "null.json": b"null",
        "floats.json": json.dumps({"physical_to_logical_map": [[0.5, 1.7, 2.2, 3.9]]}).encode(),
        "bools.json": json.dumps({"physical_to_logical_map": [[True, False, True, False]]}).encode(),
        "mixed.json": json.dumps({"physical_to_logical_map": [[0, 1, True, 3]]}).encode(),
        "ragged.json": json.dumps({"physical_to_logical_map": [[0, 1], [0]]}).encode(),
        "deep.json": json.dumps({"physical_to_logical_map": [[[0, 1]]]}).encode(),
        "bigint.json": ('{"physical_to_logical_map": [[' + "9" * 400 + ", 1]], "
                        '"logical_count": [[' + "9" * 400 + ", 1]]}").encode(),
        "strings.json": json.dumps({"physical_to_logical_map": [["a", "b"]], "logical_count": [["a"]]}).encode(),
        "trunc.pt": pt[: len(pt) // 2],
        "noise.pt": os.urandom(4096),
        "empty.pt": b"",
        "noise.npy": os.urandom(512),
        "trunc_header.npy": b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f8', 'fortran_order': False, 'shape': (10**12, 10**12), }",
        "empty.npy": b"",
        "trunc.safetensors": st[: len(st) // 2],
        "noise.safetensors": os.urandom(256),
        "hugeheader.safetensors": (2**62).to_bytes(8, "little") + b"{}",
        "badheader.safetensors": (5).to_bytes(8, "little") + b"nope!",
        "empty.safetensors": b"",
    }
    for name, data in files.items():
        (dmg / name).write_bytes(data)
    # Formats that parse but hold the wrong things.
    torch.save({"physical_to_logical_map": torch.empty(2, 8, dtype=torch.int64, device="meta"),
                "logical_count": torch.empty(2, 8, device="meta")}, dmg / "meta.pt")
    torch.save({"physical_to_logical_map": torch.eye(2, dtype=torch.int64).to_sparse(),
                "logical_count": torch.eye(2).to_sparse()}, dmg / "sparse.pt")
    torch.save({"physical_to_logical_map": torch.tensor([[0.5, 1.5, 2.0, 3.0]]),
                "logical_count": torch.tensor([1.0])}, dmg / "floatids.pt")
    torch.save({"physical_to_logical_map": torch.tensor([[0, 1, 2, 2]]),  # expert 3 has no replica
                "num_experts": torch.tensor(4), "reference": "x"}, dmg / "noreplica.pt")
    import collections
    torch.save(collections.Counter(a=1), dmg / "object.pt")  # needs unpickling: refused
    np.save(dmg / "object.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(dmg / "structured.npy", np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]))
    np.save(dmg / "vector.npy", np.zeros(3))
    save_file({"physical_to_logical_map": torch.tensor([[0.5, 1.5]]),
               "logical_count": torch.zeros(2, 2, 2, 2)}, str(dmg / "floats.safetensors"))
    return dmg


def test_special_and_damaged_files_are_one_value_error(tmp_path):
    """Placement.load, Balancer.load and the loads reader: FIFOs, devices, directories,
    symlink loops, huge files and damaged files of every format are one ValueError that names
    the file, in seconds."""
    _damaged(tmp_path)
    failures = json.loads(isolated(FILES_CHILD, str(tmp_path)))
    assert failures == []


def test_json_ids_must_be_integers(tmp_path):
    for rows in ([[0.5, 1.7, 2.2, 3.9]], [[True, False, True, False]], [[0, 1, 2.0, 3]], [[0, 1, None, 3]]):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"physical_to_logical_map": rows}))
        with pytest.raises(ValueError, match="integer"):
            Placement.load(path, num_devices=2)


# --------------------------------------------------------------------------- previous placements
def _broken_placements():
    """(name, Placement) pairs for 1 layer x 4 experts on 8 slots / 2 devices, each breaking
    one invariant of a placement in service."""
    good = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]]), 4, 2)
    no_replica = Placement.from_phy2log(torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]]), 4, 2)
    bad_cnt = Placement(good.phy2log, good.log2phy, good.logcnt + torch.tensor([[1, -1, 0, 0]]), 2)
    l2p = good.log2phy.clone()
    l2p[0, 0, 0] = 1  # slot 1 holds expert 1, not 0
    bad_l2p = Placement(good.phy2log, l2p, good.logcnt, 2)
    ragged_l2p = Placement(good.phy2log, good.log2phy[:, :, :1], good.logcnt, 2)
    float_phy = Placement(good.phy2log.double(), good.log2phy, good.logcnt, 2)
    out_of_range = Placement(good.phy2log + 4, good.log2phy, good.logcnt, 2)
    wrong_layers = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3] * 2] * 2), 4, 2)
    wrong_slots = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3]]), 4, 2)
    wrong_devices = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]]), 4, 4)
    wrong_experts = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]]), 5, 2)
    meta = Placement(good.phy2log.to("meta"), good.log2phy, good.logcnt, 2)
    return [("no replica", no_replica), ("logcnt", bad_cnt), ("log2phy", bad_l2p),
            ("narrow log2phy", ragged_l2p), ("float ids", float_phy), ("ids >= N", out_of_range),
            ("layers", wrong_layers), ("slots", wrong_slots), ("devices", wrong_devices),
            ("experts", wrong_experts), ("meta", meta), ("bool devices", Placement(
                good.phy2log, good.log2phy, good.logcnt, True))]


@pytest.mark.parametrize("name,prev", _broken_placements(), ids=lambda x: x if isinstance(x, str) else "")
def test_previous_that_breaks_an_invariant_is_refused(name, prev):
    h = torch.rand(1, 4, dtype=torch.float64) + 0.1
    with pytest.raises(ValueError):
        plan(h, 8, 2, previous=prev, move_penalty=0.01)
    with pytest.raises(ValueError):
        plan(h, 8, 2, previous=prev)
    with pytest.raises(ValueError):
        Balancer(8, 2).step(h, prev)


def test_previous_with_duplicates_is_served_and_replaced_by_a_valid_plan():
    """The default greedy may put two replicas of an expert on one device; such a placement
    in service is accepted, and what comes back has every expert and no duplicate."""
    dup = Placement.from_phy2log(torch.tensor([[0, 0, 1, 2, 3, 1, 2, 3]]), 4, 2)
    with pytest.raises(ValueError, match="twice"):
        dup.validate()
    h = torch.tensor([[5.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    plan(h, 8, 2, previous=dup, move_penalty=0.01).validate()
    Balancer(8, 2, threshold=1.0, min_gain=0.0).step(h, dup).placement.validate()


def test_adapters_refuse_a_bad_placement_in_service():
    from flashlb.integrations import vllm, vllm_ascend

    w = torch.rand(1, 4, dtype=torch.float64) + 0.1
    for old in (torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]]), torch.tensor([[0, 1, 2, 3, 0, 1, 2, 4]]),
                torch.tensor([[0, 1, 2, 3, 0, 1, 2, -2]]), torch.tensor([[0.0, 1, 2, 3, 0, 1, 2, 3]])):
        with pytest.raises(ValueError):
            vllm.FlashLBEplbPolicy.rebalance_experts(w, 8, 1, 1, 2, old_global_expert_indices=old)
    # -1 is no damage in vLLM's contract: elastic EP marks the slots of added ranks with it
    elastic = torch.tensor([[0, 1, 2, 3, 0, 1, 2, -1]])
    phy = vllm.FlashLBEplbPolicy.rebalance_experts(w, 8, 1, 1, 2, old_global_expert_indices=elastic)
    Placement.from_phy2log(phy, 4, 2).validate()
    table = torch.tensor([[[0, 1, 3, 0], [1, 3, 0, 1]]])  # expert 2 has no replica
    with pytest.raises(ValueError):
        vllm_ascend.FlashLBPolicy().rebalance_experts(table, torch.rand(1, 1, 2, 4))


# --------------------------------------------------------------------------- error types
def test_api_raises_only_value_or_type_errors():
    g = torch.Generator().manual_seed(0)
    h = torch.rand(2, 8, generator=g, dtype=torch.float64)
    bad_loads = [
        torch.empty(2, 8, device="meta"), h.to_sparse(), h.to(torch.complex128), h > 0.5,
        h[0], h.view(1, 1, 2, 8), h[:, :0], h * float("nan"), -h, h * float("inf"),
        torch.tensor([[1e308, 1e308]], dtype=torch.float64) * 10,
    ]
    for x in bad_loads:
        with pytest.raises(ValueError):
            plan(x, 16, 4)
    with pytest.raises(TypeError):
        plan([[1.0] * 8], 16, 4)
    # episode weights without data, sparse, or complex (whose imaginary part was dropped)
    h3 = torch.rand(3, 2, 8, generator=g, dtype=torch.float64)
    p3 = plan(h3, 16, 4)
    for w in (torch.ones(3, device="meta"), torch.ones(3).to_sparse(), torch.tensor([1 + 5j, 1, 1])):
        with pytest.raises(ValueError, match="weights"):
            plan(h3, 16, 4, weights=w)
        with pytest.raises(ValueError, match="weights"):
            metrics.balance_ratio(p3, h3, weights=w)
    for kw in (dict(algorithm=["flashlb"]), dict(num_nodes=0), dict(num_groups=3), dict(hierarchical="yes"),
               dict(seed=2**64), dict(algorithm="default", seed=0, previous=None, time_budget=float("inf"))):
        with pytest.raises(ValueError):
            plan(h, 16, 4, **kw)
    p = plan(h, 16, 4)
    with pytest.raises(ValueError):
        flashlb.align_to(p, p, num_nodes=0)
    with pytest.raises(ValueError):
        Placement.from_phy2log(torch.empty(1, 8, dtype=torch.int64, device="meta"), 8, 4)
    with pytest.raises(ValueError):
        Placement.from_phy2log(torch.tensor([[0, 1]]).to_sparse(), 2, 1)
    with pytest.raises(TypeError):
        Placement.from_phy2log([[0, 1]], 2, 1)
    with pytest.raises(ValueError):
        Balancer(16, 4, move_penalty=float("nan"))


@pytest.mark.parametrize("P,D", [(16, 0), (16, -4), (4, 4), (16.0, 4), (16, 4.0), (True, 1), (17, 4), (10**30, 10**29)])
def test_metrics_check_their_sizes(P, D):
    h = torch.rand(2, 8, dtype=torch.float64)
    with pytest.raises(ValueError):
        metrics.lower_bound_peak(h, P, D)
    with pytest.raises(ValueError):
        metrics.min_max_replica_load(h, P, D)


def test_metrics_at_extreme_scales_are_sane():
    gen = torch.Generator().manual_seed(7)
    p = plan(torch.rand(2, 8, dtype=torch.float64, generator=gen), 16, 4)
    base = torch.tensor([[1.0, 1, 1, 1, 0.5, 0.5, 0.5, 0.5]] * 2, dtype=torch.float64)
    for scale in (5e-324, 1e-310, 1.0, 1e307, 1.7e308):
        h = base * scale
        r = metrics.balance_ratio(p, h)
        # Ratios ignore scale: the loads as stored (at 5e-324 the halves round to 0), brought
        # to a normal range, must give the same ratios. Dividing by the largest entry is exact
        # here, since every entry is that entry times 1, 0.5 or 0.
        same = metrics.balance_ratio(p, h / h.amax())
        assert torch.isfinite(r).all() and (r >= 1 - 1e-12).all(), (scale, r)
        torch.testing.assert_close(r, same, rtol=1e-12, atol=0)
        lb = metrics.lower_bound_peak(h, 16, 4)
        assert (lb > 0).all() and not torch.isnan(lb).any()
    with pytest.raises(ValueError):
        metrics.balance_ratio(p, h, weights=torch.tensor([float("nan")]))


# --------------------------------------------------------------------------- written files
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_take_the_umask_mode(tmp_path, umask):
    p = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3]]), 4, 2)
    old = os.umask(umask)
    try:
        for name in ("p.json", "p.pt", "p.safetensors"):
            p.save(tmp_path / name)
        Balancer(4, 2).save(tmp_path / "state.pt")
    finally:
        os.umask(old)
    for name in ("p.json", "p.pt", "p.safetensors", "state.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_writer_killed_mid_write_leaves_no_stale_temporary(tmp_path):
    """kill -9 during a write: the next write to that file removes the dead writer's temporary
    (ours by name and by a dead pid); the file itself was never half written."""
    target = tmp_path / "placement.json"
    p = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3]]), 4, 2)
    p.save(target)
    before = target.read_bytes()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from flashlb._files import atomic_write
        def write(tmp):
            tmp.write_text('{"physical_to_logical_map": [[0, 1')
            print("writing", flush=True)
            time.sleep(60)
        atomic_write(sys.argv[1], write)
    """), str(target)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "writing"
        assert len(list(tmp_path.glob(".placement.json.*.tmp"))) == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        child.stdout.close()
    assert target.read_bytes() == before  # the reader never saw the half-written file
    p.save(target)
    assert not list(tmp_path.glob(".*.tmp"))
    assert Placement.load(target, num_devices=2) == p


def test_a_full_disk_is_one_value_error_in_every_format(tmp_path):
    """A write that fails half way (the disk fills: here a file size limit) is one ValueError
    naming the file for every format - torch.save and safetensors used to raise their own
    RuntimeError / SafetensorError, and the CLI called that an internal error - and leaves
    the file that was there, and no temporary."""
    out = isolated("""
        import json, resource, signal, sys, torch, flashlb
        from pathlib import Path
        from flashlb.cli import main
        d = Path(sys.argv[1])
        g = torch.Generator().manual_seed(0)
        h = torch.rand(4, 64, generator=g, dtype=torch.float64)
        p = flashlb.plan(h, 128, 8)
        small = flashlb.Placement.from_phy2log(torch.tensor([[0, 1, 2, 3]]), 4, 2)
        bal = flashlb.Balancer(128, 8)
        bal.step(h, p)
        for name in ("p.json", "p.pt", "p.safetensors"):
            small.save(d / name)
        flashlb.Balancer(128, 8).save(d / "state.pt")
        before = {f.name: f.read_bytes() for f in d.iterdir()}
        (d / "loads.json").write_text(json.dumps({"logical_count": h.tolist()}))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        bad = []
        writes = [(n, lambda n=n: p.save(d / n)) for n in ("p.json", "p.pt", "p.safetensors")]
        for name, write in writes + [("state.pt", lambda: bal.save(d / "state.pt"))]:
            try:
                write()
            except ValueError as exc:
                if name not in str(exc):
                    bad.append(f"{name}: {exc}")
            except BaseException as exc:
                bad.append(f"{name}: {type(exc).__name__}: {exc}")
            else:
                bad.append(f"{name}: written")
        for name in ("p.pt", "p.safetensors"):
            rc = main(["plan", str(d / "loads.json"), "-p", "128", "-d", "8", "-o", str(d / name)])
            if rc != 2:
                bad.append(f"cli -o {name}: status {rc}")
        after = {f.name: f.read_bytes() for f in d.iterdir() if f.name != "loads.json"}
        if after != before:
            bad.append(f"files changed: {sorted(after)} vs {sorted(before)}")
        print(json.dumps(bad))
    """, str(tmp_path))
    assert json.loads(out.strip().splitlines()[-1]) == []


# --------------------------------------------------------------------------- CLI
CLI_CHILD = """
    import contextlib, io, json, sys
    from flashlb.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                rc = main(argv)
            except SystemExit as exc:
                rc = exc.code
            except BaseException as exc:
                rc = f"raised {type(exc).__name__}: {exc}"
        results.append([argv, rc, err.getvalue()])
    print(json.dumps(results))
"""


def test_cli_errors_are_one_line_and_status_2(tmp_path):
    dmg = _damaged(tmp_path)
    loads = tmp_path / "loads.json"
    loads.write_text(json.dumps({"logical_count": (torch.rand(2, 8) + 0.1).tolist()}))
    wide = tmp_path / "wide.json"  # 16 experts: P / D = 16 <= N, only memory refuses these sizes
    wide.write_text(json.dumps({"logical_count": (torch.rand(2, 16) + 0.1).tolist()}))
    big = tmp_path / "big.json"
    big.write_text('{"logical_count": [[' + "9" * 400 + ", 1, 2, 3]]}")
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    out = str(tmp_path / "out.json")
    plan_ = ["plan", str(loads), "-d", "4", "-p", "16", "-o", out]
    bad = [
        [], ["nope"], ["plan"], ["plan", str(loads)], ["plan", str(loads), "-d", "x", "-p", "16", "-o", out],
        ["plan", str(loads), "-d", "4", "-p", "16", "-o", out, "--bogus"],
        ["plan", str(big), "-d", "4", "-p", "16", "-o", out],
        ["plan", str(tmp_path / "fifo.json"), "-d", "4", "-p", "16", "-o", out],
        ["plan", str(tmp_path / "zero.pt"), "-d", "4", "-p", "16", "-o", out],
        ["plan", str(tmp_path), "-d", "4", "-p", "16", "-o", out],
        ["plan", str(loads), "-d", "1099511627776", "-p", "17592186044416", "-o", out],
        ["plan", str(wide), "-d", "1099511627776", "-p", "17592186044416", "-o", out],
        ["report", str(wide), "-d", "1099511627776", "-p", "17592186044416", "--out", str(tmp_path / "r")],
        ["plan", str(loads), "-d", "4", "-p", "1" + "0" * 400, "-o", out],
        plan_ + ["--time-budget", "inf"], plan_ + ["--time-budget", "1e300"], plan_ + ["--time-budget", "nan"],
        plan_ + ["--move-penalty", "nan"], plan_ + ["--episode-len", "0"],
        ["plan", str(loads), "-d", "4", "-p", "16", "-o", str(tmp_path / "no" / "dir.json")],
        ["simulate", str(loads), "-d", "4", "-p", "16", "--cycle-len", "1" + "0" * 30],
        ["simulate", str(loads), "-d", "0", "-p", "16"],
    ]
    bad += [["plan", str(f), "-d", "4", "-p", "16", "-o", out] for f in sorted(dmg.iterdir())
            if f.suffix != ".npy" or f.name != "vector.npy"]
    bad += [plan_ + ["--previous", str(f)] for f in sorted(dmg.iterdir()) if f.suffix != ".npy"]
    bad += [plan_ + ["--previous", str(tmp_path / "fifo.json")], plan_ + ["--previous", str(tmp_path / "zero.pt")]]
    good = [plan_ + ["--episode-len", str(2**63 - 1)], plan_ + ["--episode-len", "1" + "0" * 30]]
    results = json.loads(isolated(CLI_CHILD, json.dumps(bad + good), timeout=120))
    failures = []
    for argv, rc, err in results[: len(bad)]:
        lines = err.strip().splitlines()
        if rc != 2 or len(lines) != 1 or not lines[0].startswith("flashlb"):
            failures.append(f"{argv[:1] + [Path(a).name for a in argv[1:2]] + argv[2:]}: rc={rc!r}, stderr={err!r}")
    for argv, rc, err in results[len(bad):]:
        if rc != 0:
            failures.append(f"{argv}: rc={rc!r}, stderr={err!r}")
    assert failures == []


def test_cli_process_exit_status(tmp_path):
    """The installed entry point itself: one line on stderr and status 2."""
    bad = tmp_path / "bad.json"
    bad.write_text("[[1, 2], [3]]")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "flashlb.cli", "plan", str(bad), "-d", "2", "-p", "4", "-o",
                        str(tmp_path / "o.json")], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_mutated_files_of_every_format_are_value_errors():
    """Random byte flips, truncations and insertions in valid files of every format: each
    reader returns or raises ValueError, never anything else, never a hang or a signal."""
    out = isolated("""
        import json, os, random, tempfile
        from pathlib import Path
        import numpy as np, torch
        from safetensors.torch import save_file
        from flashlb import Balancer, Placement
        from flashlb.io import load_hotness

        rng = random.Random(0)
        d = Path(tempfile.mkdtemp())
        p = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]] * 3), 4, 2)
        for sfx in (".json", ".pt", ".safetensors"):
            p.save(d / f"p{sfx}")
        h = torch.rand(3, 2, 8)
        torch.save({"logical_count": h}, d / "h.pt")
        np.save(d / "h.npy", h.numpy())
        (d / "h.json").write_text(json.dumps({"logical_count": h.tolist()}))
        save_file({"logical_count": h}, str(d / "h.safetensors"))
        Balancer(8, 2).save(d / "b.pt")
        readers = {"Placement.load": lambda f: Placement.load(f, num_devices=2),
                   "load_hotness": load_hotness, "Balancer.load": lambda f: Balancer(8, 2).load(f)}
        bad = []
        for src in sorted(d.iterdir()):
            data = src.read_bytes()
            for _ in range(60):
                m = bytearray(data)
                kind = rng.randrange(3)
                if kind == 0:
                    for _ in range(rng.randint(1, 8)):
                        m[rng.randrange(len(m))] = rng.randrange(256)
                elif kind == 1:
                    m = m[: rng.randrange(len(m))]
                else:
                    at = rng.randrange(len(m))
                    m[at:at] = rng.randbytes(rng.randint(1, 64))
                f = d / f"mutant{src.suffix}"
                f.write_bytes(bytes(m))
                for name, read in readers.items():
                    try:
                        read(f)
                    except ValueError:
                        pass
                    except BaseException as exc:
                        bad.append(f"{name}({src.name} mutant): {type(exc).__name__}: {exc}")
        print(json.dumps(bad))
    """)
    assert json.loads(out) == []
