import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import flashlb
from flashlb import HotnessRecorder, ops


def ids(tokens=64, k=4, n=16, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, n, (tokens, k), generator=g)
    if pad:
        t[::7, 0] = -1
    return t


@pytest.mark.parametrize("count_dtype", [torch.int32, torch.int64, torch.float32])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("tokens", [5, 40000])  # one pass, and the lanes of one chunk
def test_accumulate_matches_bincount(count_dtype, id_dtype, tokens):
    t = ids(tokens).to(id_dtype)
    h = torch.zeros(3, 16, dtype=count_dtype)
    h[2] = 5
    ops.accumulate_hotness(h, t, 2)
    v = t.reshape(-1)
    want = torch.bincount(v[v >= 0].long(), minlength=16) + 5
    assert h[2].tolist() == want.tolist()
    assert h[:2].eq(0).all()


@pytest.mark.parametrize("count_dtype", [torch.int32, torch.float32])
def test_plain_torch_path_equals_the_cpu_kernel(count_dtype):
    t = ids(300)
    a = torch.zeros(2, 16, dtype=count_dtype)
    b = torch.zeros(2, 16, dtype=count_dtype)
    ops.accumulate_hotness(a, t, 1)
    ops._accumulate_torch(b, t, 1)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "row, topk",
    [
        # no experts: padding only, nothing to count
        (torch.zeros(0, dtype=torch.int32), torch.tensor([[-1, -5]])),
        # float32 counts past 2**24: one rounding per call, not one per id
        (torch.full((4,), 2.0**24, dtype=torch.float32), torch.tensor([[1, 1, 1, 2]])),
        # negative int64 counts (garbage in) stay where they are, untouched columns included
        (torch.tensor([-5, 0, -(2**63), 7], dtype=torch.int64), torch.tensor([[1, 2]])),
    ],
    ids=["no experts", "float past 2^24", "negative int64"],
)
def test_plain_torch_path_equals_the_cpu_kernel_at_the_edges(row, topk):
    a, b = row.view(1, -1).clone(), row.view(1, -1).clone()
    ops.accumulate_hotness(a, topk, 0)
    ops._accumulate_torch(b, topk, 0)
    assert torch.equal(a, b), (a, b)


@pytest.mark.parametrize(
    "hotness, topk, layer, err, message",
    [
        (torch.zeros(2, 16, dtype=torch.int32), torch.tensor([[16]]), 0, ValueError, "not below the number of experts"),
        (torch.zeros(2, 16, dtype=torch.int32), torch.tensor([[1]]), 2, IndexError, "layer 2 is outside"),
        (torch.zeros(2, 16, dtype=torch.int32), torch.tensor([[1]]), -1, IndexError, "layer -1"),
        (torch.zeros(2, 16, dtype=torch.float64), torch.tensor([[1]]), 0, ValueError, "hotness must be int32"),
        (torch.zeros(2, 16, dtype=torch.int32), torch.tensor([[1.0]]), 0, ValueError, "topk_ids must be int32"),
        (torch.zeros(16, dtype=torch.int32), torch.tensor([[1]]), 0, ValueError, r"hotness must be \[L, N\]"),
        (torch.zeros(2, 16, dtype=torch.int32), torch.ones(1, 1, 1, dtype=torch.int64), 0, ValueError, "topk_ids must be"),
        (torch.zeros(16, 2, dtype=torch.int32).t(), torch.tensor([[1]]), 0, ValueError, "contiguous"),
    ],
)
def test_accumulate_bad_input_leaves_buffer_untouched(hotness, topk, layer, err, message):
    before = hotness.clone()
    with pytest.raises(err, match=message):
        ops.accumulate_hotness(hotness, topk, layer)
    assert torch.equal(hotness, before)


def test_accumulate_wrong_python_types_are_type_errors_naming_the_argument():
    """A list or array of ids, or a float or bool layer, reached the dispatcher: a RuntimeError
    for the first ones, and layer=True silently counted into layer 1."""
    h = torch.zeros(2, 4, dtype=torch.int32)
    for args, name in (((h, [[1, 2]], 0), "topk_ids"), ((h, np.array([[1, 2]]), 0), "topk_ids"),
                       ((h.tolist(), torch.tensor([[1]]), 0), "hotness"),
                       ((h, torch.tensor([[1]]), 1.0), "layer"), ((h, torch.tensor([[1]]), True), "layer")):
        with pytest.raises(TypeError, match=name):
            ops.accumulate_hotness(*args)
    assert h.eq(0).all()
    ops.accumulate_hotness(h, torch.tensor([[1]]), np.int64(1))  # numpy ints are ints
    assert h[1, 1] == 1


def test_bad_id_after_good_ones_writes_nothing():
    h = torch.zeros(1, 4, dtype=torch.int32)
    with pytest.raises(ValueError):
        ops.accumulate_hotness(h, torch.tensor([[0, 1, 2, 9]]), 0)
    assert h.eq(0).all()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.float32, torch.float64])
@pytest.mark.parametrize("S, E", [(16, 4), (10, 4), (3, 8), (1, 1)])
def test_episode_stats(dtype, S, E):
    g = torch.Generator().manual_seed(S * 100 + E)
    steps = torch.randint(0, 50, (S, 2, 5), generator=g).to(dtype)
    episodes, mean, var = ops.episode_stats(steps, E)
    T = -(-S // E)
    assert episodes.shape == (T, 2, 5)
    assert episodes.sum(0).to(torch.float64).allclose(steps.sum(0).to(torch.float64))  # nothing dropped
    first = S - (T - 1) * E
    assert episodes[0].to(torch.float64).allclose(steps[:first].sum(0).to(torch.float64))
    full = episodes.to(torch.float64).clone()
    full[0] *= E / first
    assert mean.to(torch.float64).allclose(full.mean(0), rtol=1e-5)
    assert var.to(torch.float64).allclose(full.var(0, unbiased=False), rtol=1e-5)
    ref = ops._episode_stats_torch(steps, E)
    for a, b in zip((episodes, mean, var), ref):
        assert a.dtype == b.dtype and torch.allclose(a.to(torch.float64), b.to(torch.float64), rtol=1e-5)


def test_episode_stats_bad_input():
    with pytest.raises(ValueError, match="episode_len must be >= 1"):
        ops.episode_stats(torch.zeros(4, 1, 2), 0)
    with pytest.raises(ValueError, match=r"steps must be \[S, L, N\]"):
        ops.episode_stats(torch.zeros(4, 2), 2)
    with pytest.raises(ValueError, match="int32, int64, float32 or float64"):
        ops.episode_stats(torch.zeros(4, 1, 2, dtype=torch.bool), 2)


def _bad_op_calls():
    f64, i64 = torch.float64, torch.int64
    w, ew = torch.ones(1, 1, 4, dtype=f64), torch.ones(1, 1, dtype=f64)
    js = torch.ops.flashlb.joint_search
    return [
        ("episode_len 0", lambda d: ops.episode_stats(torch.zeros(4, 1, 2, device=d), 0)),
        ("episode_len -1", lambda d: ops.episode_stats(torch.zeros(4, 1, 2, device=d), -1)),
        ("no step", lambda d: ops.episode_stats(torch.zeros(0, 1, 2, device=d), 2)),
        ("bool steps", lambda d: ops.episode_stats(torch.zeros(4, 1, 2, dtype=torch.bool, device=d), 2)),
        ("2-d steps", lambda d: ops.episode_stats(torch.zeros(4, 2, device=d), 2)),
        ("2-d loads", lambda d: js(w[0].to(d), ew.to(d), counts=torch.ones(1, 4, dtype=i64, device=d),
                                   num_devices=2, slots_per_device=2)),
        ("no device", lambda d: js(w.to(d), ew.to(d), counts=torch.ones(1, 4, dtype=i64, device=d),
                                   num_devices=0, slots_per_device=2)),
        ("no slot", lambda d: js(w.to(d), ew.to(d), counts=torch.ones(1, 4, dtype=i64, device=d),
                                 num_devices=2, slots_per_device=0)),
        ("2-d scores", lambda d: torch.ops.flashlb.max_assignment(torch.ones(3, 3, dtype=f64, device=d))),
        ("non-square scores", lambda d: torch.ops.flashlb.max_assignment(torch.ones(1, 3, 2, dtype=f64, device=d))),
        ("1-d weight", lambda d: torch.ops.flashlb.balanced_packing(torch.ones(4, dtype=f64, device=d), 2)),
        ("uneven packs", lambda d: torch.ops.flashlb.balanced_packing(torch.ones(1, 4, dtype=f64, device=d), 3)),
    ]


@pytest.mark.parametrize("name, call", _bad_op_calls(), ids=[n for n, _ in _bad_op_calls()])
def test_fake_kernels_refuse_what_the_cpu_kernels_refuse(name, call):
    """The fakes (meta tensors, torch.compile) check shapes and sizes like the kernels: an
    episode_len of 0 was a ZeroDivisionError there, -1 a negative dimension, and bad solver
    shapes came back as tensors of made-up shapes."""
    with pytest.raises(ValueError):
        call("cpu")
    with pytest.raises(ValueError):
        call("meta")


def test_opcheck_every_op():
    checks = [
        (torch.ops.flashlb.accumulate_hotness.default, (torch.zeros(3, 16, dtype=torch.int64), ids(), 1)),
        (torch.ops.flashlb.accumulate_hotness.default, (torch.zeros(3, 16), ids().int(), 0)),
        (torch.ops.flashlb.episode_stats.default, (torch.rand(10, 2, 3), 4)),
        (torch.ops.flashlb.episode_stats.default, (torch.randint(0, 9, (8, 2, 3)), 2)),
        (torch.ops.flashlb.joint_search.default,
         (torch.rand(2, 3, 6, dtype=torch.float64), torch.full((2, 3), 1 / 3, dtype=torch.float64)),
         dict(counts=torch.tensor([[2, 2, 2, 2, 2, 2]] * 2), num_devices=4, slots_per_device=3,
              perturb_rounds=4)),
        (torch.ops.flashlb.max_assignment.default, (torch.rand(3, 5, 5, dtype=torch.float64),)),
        (torch.ops.flashlb.balanced_packing.default, (torch.rand(3, 8, dtype=torch.float64), 4)),
    ]
    for op, args, *kwargs in checks:
        result = torch.library.opcheck(op, args, *kwargs)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_ops_trace_under_torch_compile():
    @torch.compile(fullgraph=True)
    def step(h, t):
        ops.accumulate_hotness(h, t, 0)
        return ops.episode_stats(h.unsqueeze(0).float(), 1)[1]

    h = torch.zeros(1, 16)
    out = step(h, ids())
    assert out.sum().item() == h.sum().item() > 0


def test_tiling_arithmetic():
    cores, per_core, tile, hist_len, ub = torch.ops.flashlb.hotness_tiling(8192 * 8, 256, 8, 4, 20, 192 * 1024)
    assert cores <= 20 and cores * per_core >= 8192 * 8 and (cores - 1) * per_core < 8192 * 8
    assert per_core * 8 % 32 == 0 and tile * 8 % 32 == 0 and hist_len * 4 % 32 == 0
    assert ub <= 192 * 1024
    # N not a whole number of blocks: the histogram is padded, then one block for the ids >= N
    assert torch.ops.flashlb.hotness_tiling(10, 30, 4, 4, 4, 1 << 16)[3] == 32 + 8
    # nothing to count still launches one core
    assert torch.ops.flashlb.hotness_tiling(0, 8, 4, 4, 4, 1 << 16)[0] == 1
    # a tiny unified buffer: the tile shrinks to what is left, in whole blocks
    c, pc, tile, hl, ub = torch.ops.flashlb.hotness_tiling(4096, 256, 4, 4, 1, 2048)
    assert tile * 4 % 32 == 0 and tile >= 8
    episodes, first, cores, per = torch.ops.flashlb.episode_tiling(1000, 58 * 256, 16, 20)
    assert episodes == 63 and first == 1000 - 62 * 16 and per * 4 % 32 == 0
    assert cores * per >= 58 * 256 > (cores - 1) * per


# ----------------------------------------------------------------------------- recorder
def test_recorder_ring_and_episodes():
    rec = HotnessRecorder(2, 4, window=3)
    for step in range(5):
        rec.record(0, torch.tensor([[step % 4]]))
        rec.record(1, torch.tensor([[0, 1]]))
        rec.next_step()
    w = rec.window()
    assert w.shape == (3, 2, 4)
    assert [int(r[0].argmax()) for r in w] == [2, 3, 0]  # steps 2, 3, 4: oldest first
    assert rec.episodes(2).shape == (2, 2, 4)
    assert rec.episodes(2).sum().item() == w.sum().item()


def test_recorder_empty_window_raises():
    with pytest.raises(ValueError, match="no committed step"):
        HotnessRecorder(1, 2, 4).window()


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def test_recording_needs_no_sync_and_no_allocation():
    rec = HotnessRecorder(2, 8, window=4)
    t = ids(32, 2, 8)
    with OpLog() as log:
        for _ in range(3):
            rec.record(0, t)
            rec.record(1, t)
            rec.next_step()
    names = {f.__name__ for f in log.ops}
    assert "_local_scalar_dense.default" not in names  # .item() / bool(): a host sync
    for f in log.ops:
        name = f._schema.name
        assert name.startswith("flashlb::") or f._schema.is_mutable or name in ("aten::unsqueeze", "aten::view"), name


def test_recorder_all_reduce_over_gloo(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_all_reduce_worker, args=(2, str(tmp_path / "store")), nprocs=2, join=True)


def _all_reduce_worker(rank, world, store):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    rec = HotnessRecorder(1, 4, window=2)
    rec.record(0, torch.tensor([[rank, 3]]))
    rec.next_step()
    rec.all_reduce()
    assert rec.window()[0, 0].tolist() == [1, 1, 0, 2]
    dist.destroy_process_group()


def test_recorder_feeds_the_planner():
    rec = HotnessRecorder(2, 8, window=8)
    for s in range(8):
        for layer in range(2):
            rec.record(layer, ids(16, 2, 8, seed=s))
        rec.next_step()
    p = flashlb.plan(rec.episodes(2), 16, 4)
    p.validate()


# ----------------------------------------------------------------------------- hostile sizes
def test_episode_stats_with_an_episode_longer_than_int64_can_count_is_one_episode():
    # ceil_div(S, 2**63 - 1) overflowed and crashed the process: run it in a child.
    import subprocess
    import sys

    code = ("import torch, flashlb; from flashlb import ops\n"
            "s = torch.arange(12.).reshape(3, 2, 2)\n"
            "for f in (torch.ops.flashlb.episode_stats, ops._episode_stats_torch):\n"
            "    e, m, v = f(s, 2**63 - 1)\n"
            "    assert e.shape == (1, 2, 2) and torch.equal(e[0], s.sum(0)), e\n"
            "print(torch.ops.flashlb.episode_tiling(5, 8, 2**63 - 1, 4))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0].startswith("[1, 5,")


@pytest.mark.parametrize("args", [(2**63 - 1, 8, 4, 4, 4, 1 << 16), (10, 2**63 - 1, 4, 4, 4, 1 << 16),
                                  (10, 8, 3, 4, 4, 1 << 16), (10, 8, 4, 4, 0, 1 << 16), (-1, 8, 4, 4, 4, 1 << 16)])
def test_tiling_refuses_sizes_its_arithmetic_cannot_hold(args):
    with pytest.raises(ValueError, match="hotness_tiling"):
        torch.ops.flashlb.hotness_tiling(*args)


def test_tiling_over_the_unified_buffer_says_so():
    # 60,000 experts need more than a vector core's unified buffer: the launcher must see it.
    ub = torch.ops.flashlb.hotness_tiling(4096, 60000, 4, 4, 40, 188416)[4]
    assert ub > 188416


# ----------------------------------------------------------------------------- saturation, ids >= N
@pytest.mark.parametrize("path", ["cpu", "torch"])
def test_int32_counts_saturate_instead_of_wrapping(path):
    top = 2**31 - 1
    h = torch.zeros(1, 4, dtype=torch.int32)
    h[0, 1] = top - 2
    h[0, 2] = top
    t = torch.tensor([[1, 1, 1, 1, 1, 2, 3]])
    if path == "cpu":
        ops.accumulate_hotness(h, t, 0)
    else:
        ops._accumulate_torch(h, t, 0)
    assert h[0].tolist() == [0, top, top, 1]


def test_plain_torch_path_drops_ids_past_n_without_checks_and_refuses_them_with():
    h = torch.zeros(1, 4, dtype=torch.int32)
    ops._accumulate_torch(h, torch.tensor([[0, 4, 9, -1, 3]]), 0, False)
    assert h[0].tolist() == [1, 0, 0, 1]
    with pytest.raises(ValueError, match="not below the number of experts"):
        ops._accumulate_torch(h, torch.tensor([[0, 4]]), 0, True)
    assert h[0].tolist() == [1, 0, 0, 1]


def test_set_debug_checks_reaches_the_operator():
    seen = []

    class Args(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name == "flashlb::accumulate_hotness":
                seen.append(args[3] if len(args) > 3 else (kwargs or {}).get("check_ids", False))
            return func(*args, **(kwargs or {}))

    h = torch.zeros(1, 4, dtype=torch.int32)
    try:
        for flag in (True, False):
            ops.set_debug_checks(flag)
            with Args():
                ops.accumulate_hotness(h, torch.tensor([[1]]), 0)
    finally:
        ops.set_debug_checks(False)
    assert seen == [True, False]


def test_per_thread_histograms_count_the_second_chunk():
    # count_ids splits n ids into min(threads, 8, n >> 18) chunks: 2**19 + ids and two threads
    # give two chunks; a bad id at the very end lies in the second one.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t = ids(140000, 4, 16, seed=3)
        assert t.numel() >> 18 >= 2
        h = torch.zeros(1, 16, dtype=torch.int32)
        ops.accumulate_hotness(h, t, 0)
        v = t.reshape(-1)
        assert h[0].tolist() == torch.bincount(v[v >= 0], minlength=16).tolist()
        bad = t.clone()
        bad[-1, -1] = 16
        with pytest.raises(ValueError, match="holds id 16"):
            ops.accumulate_hotness(h, bad, 0)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- NPU build script
def _build_npu(env_extra, tmp_path):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("SOC_VERSION", "ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME")}
    env.update(ASCEND_HOME_PATH=str(tmp_path), FLASHLB_NPU_DRY_RUN="1", **env_extra)
    return subprocess.run(["bash", str(root / "kernels" / "build_npu.sh")], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("soc", ["Ascend310P3", "Ascend910A", "Ascend910ProB"])
def test_build_npu_refuses_socs_without_datacopypad(soc, tmp_path):
    out = _build_npu({"SOC_VERSION": soc}, tmp_path)
    assert out.returncode == 1 and "DataCopyPad" in out.stderr


def test_build_npu_names_an_a3_board(tmp_path):
    import os

    smi = tmp_path / "bin" / "npu-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\n[ \"$2\" = -t ] && printf '  Chip Name : Ascend910\\n  NPU Name : 9392\\n'\n")
    smi.chmod(0o755)
    out = _build_npu({"PATH": f"{smi.parent}:{os.environ['PATH']}"}, tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "Ascend910_9392", out


def test_cmake_configures_against_cann_rules_that_need_the_package_path(tmp_path):
    # A stand-in for CANN's ascendc.cmake that, like the real one, stops without
    # ASCEND_CANN_PACKAGE_PATH; the library goes into the package folder.
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    root = Path(__file__).resolve().parent.parent
    rules = tmp_path / "cann" / "tools" / "tikcpp" / "ascendc_kernel_cmake" / "ascendc.cmake"
    rules.parent.mkdir(parents=True)
    rules.write_text('if(NOT DEFINED ASCEND_CANN_PACKAGE_PATH)\n  message(FATAL_ERROR "no ASCEND_CANN_PACKAGE_PATH")\n'
                     "endif()\nfunction(ascendc_library name kind)\n  add_library(${name} INTERFACE)\nendfunction()\n"
                     "function(ascendc_include_directories)\nendfunction()\n")
    out = subprocess.run(["cmake", "-S", str(root), "-B", str(tmp_path / "build"), f"-DASCEND_HOME_PATH={rules.parents[3]}",
                          f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cache = (tmp_path / "build" / "CMakeCache.txt").read_text()
    assert f"FLASHLB_NPU_INSTALL_DIR:PATH={root / 'flashlb'}" in cache


def test_npu_library_is_looked_for_in_the_package_folder(monkeypatch):
    import importlib.util
    from pathlib import Path

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torch_npu" else real(name, *a))
    lib = Path(ops.__file__).resolve().parent.parent / ops.NPU_LIBRARY
    if lib.exists():
        pytest.skip("the NPU library is built here")
    with pytest.warns(UserWarning, match=str(lib)):
        assert ops._load_npu_kernels() is False
    assert lib.parent.name == "flashlb"


@pytest.mark.parametrize("device", ["cuda", "meta-typo", "npu:99", "meta"])
def test_recorder_on_a_missing_device_is_one_value_error(device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("cuda is present here")
    with pytest.raises(ValueError, match="device"):
        HotnessRecorder(2, 4, window=3, device=device)
