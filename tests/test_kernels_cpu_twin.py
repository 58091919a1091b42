"""The Ascend C kernels (kernels/*.cpp) run unchanged on the CPU twin (kernels/twin/) against
the C++ reference (torch.ops.flashlb.*), over tiling edge cases; and each sync of a kernel is
shown to be needed: a copy without it makes the twin report the hazard."""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import flashlb  # noqa: F401  (registers torch.ops.flashlb.*)

ROOT = Path(__file__).resolve().parent.parent
KERNELS = {"hotness": ROOT / "kernels" / "accumulate_hotness.cpp",
           "episodes": ROOT / "kernels" / "episode_stats.cpp"}
TWIN = ROOT / "kernels" / "twin"
BUILD = ROOT / "build" / "twin"
CXX = shutil.which("g++")
FLAGS = ["-std=c++20", "-ffp-contract=off", "-fPIC", "-pthread", f"-I{TWIN}", f"-I{ROOT / 'host' / 'include'}"]
UB_BUDGET = 184 * 1024  # kUbBudget of tiling.h, what the launchers give the kernels

pytestmark = pytest.mark.skipif(CXX is None, reason="g++ not found: the CPU twin needs it")


class TwinFault(Exception):
    pass


def _compile(src: Path, obj: Path) -> None:
    subprocess.run([CXX, *FLAGS, "-O1", "-c", str(src), "-o", str(obj)], check=True, capture_output=True, text=True)


def _objects() -> dict[str, Path]:
    """entry, hotness and episodes objects, rebuilt when a source or twin header changed."""
    sources = {"entry": TWIN / "entry.cpp", **KERNELS}
    deps = [*sources.values(), TWIN / "kernel_operator.h", ROOT / "host" / "include" / "flashlb" / "tiling.h"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in deps) + " ".join(FLAGS).encode()).hexdigest()[:16]
    out = BUILD / key
    objs = {name: out / f"{name}.o" for name in sources}
    if not all(o.is_file() for o in objs.values()):
        out.mkdir(parents=True, exist_ok=True)
        for name, src in sources.items():
            _compile(src, objs[name])
    return objs


def _link(objs: list[Path], lib: Path):
    subprocess.run([CXX, "-shared", "-pthread", *map(str, objs), "-o", str(lib)], check=True)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def twin():
    objs = _objects()
    lib = objs["entry"].parent / "libtwin.so"
    return _link(list(objs.values()), lib) if not lib.is_file() else ctypes.CDLL(str(lib))


def _ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def hotness(lib, ids: torch.Tensor, N: int, cores: int, float_counts=False, budget=UB_BUDGET,
            launch_anyway=False):
    """(row [N], out-of-range count) of the twin's accumulate_hotness kernel; None if it does not fit."""
    ids = ids.contiguous().reshape(-1)
    dt = torch.float32 if float_counts else torch.int32
    row = torch.zeros(N, dtype=dt)
    oob = torch.zeros(8, dtype=dt)
    err = ctypes.create_string_buffer(512)
    rc = lib.twin_accumulate_hotness(_ptr(ids), ids.element_size(), _ptr(row), int(float_counts), _ptr(oob),
                                     ctypes.c_int64(ids.numel()), ctypes.c_int64(N), ctypes.c_int64(cores),
                                     ctypes.c_int64(budget), int(launch_anyway), err, len(err))
    if rc == 1:
        raise TwinFault(err.value.decode())
    return None if rc == 2 else (row, int(oob[0].item()))


def episode_stats(lib, steps: torch.Tensor, E: int, cores: int, budget=UB_BUDGET):
    S, L, N = steps.shape
    x = steps.to(torch.float32).contiguous()
    T = -(-S // E)
    episodes, mean, var = torch.empty(T, L, N), torch.empty(L, N), torch.empty(L, N)
    err = ctypes.create_string_buffer(512)
    rc = lib.twin_episode_stats(_ptr(x), _ptr(episodes), _ptr(mean), _ptr(var), ctypes.c_int64(S),
                                ctypes.c_int64(L * N), ctypes.c_int64(E), ctypes.c_int64(cores),
                                ctypes.c_int64(budget), err, len(err))
    if rc:
        raise TwinFault(err.value.decode())
    return episodes, mean, var


def _ids(n, N, seed, dtype=torch.int64, pad=0.1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, N, (n,), generator=g)
    ids[torch.rand(n, generator=g) < pad] = -1
    return ids.to(dtype)


# (num ids, N, cores, UB budget): a tail inside a block, more cores than chunks, one id, many
# experts, a budget so small that every core walks many tiles.
HOTNESS_CASES = [
    (1000, 16, 8, UB_BUDGET),
    (1003, 16, 8, UB_BUDGET),
    (5, 16, 40, UB_BUDGET),
    (1, 3, 4, UB_BUDGET),
    (20000, 4096, 20, UB_BUDGET),
    (9999, 257, 3, 2048 + 1056),
]


@pytest.mark.parametrize("float_counts", [False, True])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("n, N, cores, budget", HOTNESS_CASES)
def test_hotness_kernel_equals_the_cpu_kernel(twin, n, N, cores, budget, id_dtype, float_counts):
    ids = _ids(n, N, seed=n + N, dtype=id_dtype)
    got = hotness(twin, ids, N, cores, float_counts, budget)
    assert got is not None, "tiling must fit"
    row, oob = got
    want = torch.zeros(1, N, dtype=row.dtype)
    torch.ops.flashlb.accumulate_hotness(want, ids.reshape(-1, 1), 0)
    assert torch.equal(row, want[0]) and oob == 0


def test_hotness_ids_at_the_limits_and_a_chunk_of_padding_only(twin):
    N = 64
    ids = torch.full((4096,), -1, dtype=torch.int32)  # the first cores see padding only
    ids[-3:] = torch.tensor([0, N - 1, N - 1], dtype=torch.int32)
    row, oob = hotness(twin, ids, N, 8)
    assert row[0] == 1 and row[N - 1] == 2 and row.sum() == 3 and oob == 0


@pytest.mark.parametrize("id_dtype, big", [(torch.int32, 2**31 - 1), (torch.int64, 2**63 - 1)])
def test_hotness_counts_ids_past_n_out_of_range_and_never_in_a_row(twin, id_dtype, big):
    N = 16
    ids = torch.tensor([3, N, big, -1, -(2**31), 3, N + 1], dtype=id_dtype)
    row, oob = hotness(twin, ids, N, 2)
    assert oob == 3 and row[3] == 2 and row.sum() == 2
    with pytest.raises(ValueError, match="not below the number of experts"):  # the CPU kernel refuses
        torch.ops.flashlb.accumulate_hotness(torch.zeros(1, N, dtype=torch.int32), ids.reshape(1, -1), 0)


def test_hotness_tiling_over_the_budget_is_refused(twin):
    # 60,000 experts: histogram + one id tile are more than the unified buffer holds.
    cores, per_core, tile, hist_len, ub = torch.ops.flashlb.hotness_tiling(4096, 60000, 4, 4, 40, UB_BUDGET)
    assert ub > UB_BUDGET
    ids = _ids(4096, 60000, 0, torch.int32)
    assert hotness(twin, ids, 60000, 40) is None  # what the launcher sees: take the ATen path
    with pytest.raises(TwinFault, match="InitBuffer"):
        hotness(twin, ids, 60000, 40, launch_anyway=True)


# (S, E, L * N columns as (L, N), cores, budget): E divides S, the short oldest episode, one
# step, columns not a whole block, more cores than blocks, many tiles per core.
EPISODE_CASES = [
    (16, 4, (2, 8), 4, UB_BUDGET),
    (10, 4, (3, 5), 4, UB_BUDGET),
    (1, 1, (1, 3), 8, UB_BUDGET),
    (7, 8, (2, 9), 40, UB_BUDGET),
    (33, 8, (58, 256), 20, UB_BUDGET),
    (9, 2, (4, 100), 3, 3 * 64),
]


@pytest.mark.parametrize("S, E, LN, cores, budget", EPISODE_CASES)
@pytest.mark.parametrize("kind", ["counts", "real"])
def test_episode_kernel_meets_the_cpu_reference_within_the_stated_bound(twin, S, E, LN, cores, budget, kind):
    g = torch.Generator().manual_seed(S * 31 + E)
    if kind == "counts":
        steps = torch.randint(0, 5000, (S, *LN), generator=g).to(torch.float32)
    else:
        steps = (torch.rand(S, *LN, generator=g) * 1e3).to(torch.float32)
    got = episode_stats(twin, steps, E, cores, budget)
    ref = torch.ops.flashlb.episode_stats(steps.to(torch.float64), E)
    T = ref[0].shape[0]
    if kind == "counts":  # integer partial sums below 2^24: exact
        assert torch.equal(got[0].to(torch.float64), ref[0])
    else:
        assert torch.allclose(got[0].to(torch.float64), ref[0], rtol=E * 2**-23, atol=0)
    full = ref[0].clone()
    full[0] *= E / (S - (T - 1) * E)
    M = full.abs().amax(0)
    u = 2.0**-24
    assert ((got[1].to(torch.float64) - ref[1]).abs() <= (E + T + 2) * u * M + 1e-30).all()
    assert ((got[2].to(torch.float64) - ref[2]).abs() <= 4 * (E + T + 2) * u * M**2 + 1e-30).all()


# ------------------------------------------------------------------ every sync is needed
def _sync_lines(src: str) -> list[int]:
    """Line numbers of the kernel's synchronisation: Await<...>() calls, the SetFlag and
    WaitFlag inside Await, PipeBarrier."""
    pat = re.compile(r"^\s*(Await<AscendC::HardEvent::\w+>\(\);|AscendC::(SetFlag|WaitFlag|PipeBarrier)<)")
    return [i for i, line in enumerate(src.splitlines()) if pat.search(line)]


def _mutant_runs(kernel: str, lib):
    if kernel == "hotness":
        hotness(lib, torch.full((64,), -1, dtype=torch.int32), 16, 2)  # a chunk of padding only
        hotness(lib, _ids(3000, 16, 1), 16, 4, budget=2048)
    else:
        episode_stats(lib, torch.rand(10, 2, 8), 4, 2)


@pytest.mark.parametrize("kernel", ["hotness", "episodes"])
def test_removing_any_sync_makes_the_twin_report_a_hazard(twin, kernel, tmp_path):
    objs = _objects()
    src = KERNELS[kernel].read_text()
    lines = src.splitlines(keepends=True)
    syncs = _sync_lines(src)
    assert len(syncs) >= (3 if kernel == "hotness" else 6), syncs
    _mutant_runs(kernel, twin)  # the kernel as written passes
    for k, i in enumerate(syncs):
        mutant = tmp_path / f"{kernel}_{k}.cpp"
        mutant.write_text("".join(lines[:i] + ["// sync removed\n"] + lines[i + 1:]))
        obj = tmp_path / f"{kernel}_{k}.o"
        subprocess.run([CXX, *FLAGS, "-O0", "-c", str(mutant), "-o", str(obj)], check=True, capture_output=True)
        lib = _link([o if name != kernel else obj for name, o in objs.items()], tmp_path / f"lib{k}.so")
        with pytest.raises(TwinFault, match="unsynchronised|WaitFlag|SetFlag"):
            _mutant_runs(kernel, lib)


# ------------------------------------------------------------------ the twin's own checks
PROBES = r"""
#include <cstdio>
#include "kernel_operator.h"
using namespace AscendC;

static float gm[64];

static void probe(int which) {
  TPipe pipe;
  TBuf<TPosition::VECCALC> a, b;
  pipe.InitBuffer(a, 256);
  pipe.InitBuffer(b, 256);
  LocalTensor<float> x = a.Get<float>(), y = b.Get<float>();
  GlobalTensor<float> g;
  g.SetGlobalBuffer(gm, 64);
  DataCopyExtParams p{1, 8 * sizeof(float), 0, 0, 0};
  DataCopyPadExtParams<float> pad{false, 0, 0, 0.0f};
  switch (which) {
    case 0:  // a correct hand-over: load, flag, add, flag, store
      DataCopyPad(x, g, p, pad);
      SetFlag<HardEvent::MTE2_V>(0); WaitFlag<HardEvent::MTE2_V>(0);
      Add(y, x, x, 8);
      SetFlag<HardEvent::V_MTE3>(0); WaitFlag<HardEvent::V_MTE3>(0);
      DataCopyPad(g[8], y, p);
      return;
    case 1: DataCopyPad(x[4], g, p, pad); return;              // UB address off a 32-byte block
    case 2: DataCopyPad(x, g[60], p, pad); return;             // past SetGlobalBuffer's 64 floats
    case 3: { TBuf<TPosition::VECCALC> c; pipe.InitBuffer(c, 192 * 1024); return; }  // over the UB
    case 4:  // MTE3 still reads y when V overwrites it
      Duplicate(y, 1.0f, 8);
      SetFlag<HardEvent::V_MTE3>(0); WaitFlag<HardEvent::V_MTE3>(0);
      DataCopyPad(g, y, p);
      Duplicate(y, 2.0f, 8);
      return;
    case 5:  // V still reads x when MTE2 overwrites it
      Duplicate(x, 1.0f, 8);
      Add(y, x, x, 8);
      DataCopyPad(x, g, p, pad);
      return;
    case 6: {  // 3 floats copied in: the other 5 of the block are poisoned, not zero
      DataCopyExtParams three{1, 3 * sizeof(float), 0, 0, 0};
      DataCopyPad(x, g, three, pad);
      PipeBarrier<PIPE_ALL>();
      if (x.GetValue(3) == 0.0f) throw flashlb::twin::Fault("pad bytes read as zero");
      return;
    }
  }
}

extern "C" int run_probe(int which, char* err, int n) {
  std::string f = flashlb::twin::launch(1, [&] { probe(which); });
  std::snprintf(err, n, "%s", f.c_str());
  return f.empty() ? 0 : 1;
}
"""


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    d = tmp_path_factory.mktemp("probes")
    (d / "probes.cpp").write_text(PROBES)
    subprocess.run([CXX, *FLAGS, "-O0", "-shared", str(d / "probes.cpp"), "-o", str(d / "probes.so")], check=True)
    return ctypes.CDLL(str(d / "probes.so"))


@pytest.mark.parametrize("which, fault", [
    (0, None),
    (1, "not 32-byte aligned"),
    (2, "outside SetGlobalBuffer"),
    (3, "InitBuffer"),
    (4, "unsynchronised MTE3 -> V"),
    (5, "unsynchronised V -> MTE2"),
    (6, None),
])
def test_the_twin_refuses_what_an_ai_core_gets_wrong(probes, which, fault):
    err = ctypes.create_string_buffer(512)
    rc = probes.run_probe(which, err, len(err))
    if fault is None:
        assert rc == 0, err.value.decode()
    else:
        assert rc == 1 and fault in err.value.decode(), err.value.decode()
