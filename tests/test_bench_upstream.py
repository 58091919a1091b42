"""The serving benchmark's driver of vllm-ascend's public FlashLB policy (bench/upstream_flashlb.py):
what it feeds the policy and how it checks what comes back, as vllm-ascend's worker does."""

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from flashlb import Placement

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("upstream_flashlb", REPO / "bench" / "upstream_flashlb.py")
up = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(up)


def test_slot_loads_split_a_replicated_expert_evenly():
    # 2 devices x 3 slots; expert 0 has three replicas (slots 0, 4, 5)
    p = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 0]]), 4, 2)
    h = torch.tensor([[[6.0, 2, 3, 4]], [[3.0, 1, 1, 1]]])              # [W=2, L=1, N=4]
    got = up.slot_loads(p, h)
    want = torch.tensor([[[[2.0, 2, 3], [4, 2, 2]]], [[[1.0, 1, 1], [1, 1, 1]]]])
    assert got.shape == (2, 1, 2, 3) and torch.equal(got, want)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 3), st.integers(1, 4))
def test_slot_loads_sum_back_to_the_expert_loads(seed, L, W):
    # what the policy does with them (register_hotness): add each slot's load to its expert's
    g = torch.Generator().manual_seed(seed)
    N, D, S = 8, 3, 4
    phy = torch.cat([torch.arange(N).repeat(L, 1), torch.randint(N, (L, D * S - N), generator=g)], 1)
    p = Placement.from_phy2log(phy, N, D)
    h = torch.randint(0, 50, (W, L, N), generator=g).to(torch.float64)
    slots = up.slot_loads(p, h).reshape(W, L, D * S)
    back = torch.zeros(W, L, N, dtype=torch.float64).scatter_add_(2, phy.expand(W, -1, -1), slots)
    assert torch.allclose(back, h)


def test_slot_loads_bad_shape():
    p = Placement.from_phy2log(torch.arange(6).remainder(4).unsqueeze(0), 4, 2)
    with pytest.raises(ValueError, match="hotness"):
        up.slot_loads(p, torch.ones(2, 1, 5))


def test_worker_check_resets_what_vllm_ascend_rejects():
    old = torch.tensor([[[0, 1, 2], [3, 0, 1]]] * 4)                   # [L=4, D=2, S=3], N=4
    new = old.clone()
    new[0] = torch.tensor([[0, 3, 2], [1, 0, 1]])                      # expert 1 twice on device 1
    new[1] = torch.tensor([[1, 0, 2], [3, 0, 1]])                      # 0 and 1 swap slots on device 0
    new[2] = torch.tensor([[0, 1, 1], [3, 0, 1]])                      # expert 2 gone (and a duplicate)
    new[3] = torch.tensor([[0, 1, 3], [2, 0, 1]])                      # valid: 2 and 3 trade devices
    got, reset = up.worker_check(old, new)
    assert reset == 3
    assert torch.equal(got[:3], old[:3]) and torch.equal(got[3], new[3])


def test_the_policy_reads_the_fed_loads_back_as_expert_loads():
    """vllm-ascend's FlashLB, given our table and slot loads, sees the expert loads (plus the
    1 it adds to every count): the layouts agree. Needs numba, scipy and the sources."""
    why = up.unavailable()
    if why:
        pytest.skip(why)
    code = textwrap.dedent(f'''
        import importlib.util, torch
        spec = importlib.util.spec_from_file_location("u", {str(REPO / "bench" / "upstream_flashlb.py")!r})
        up = importlib.util.module_from_spec(spec); spec.loader.exec_module(up)
        from flashlb import Placement
        g = torch.Generator().manual_seed(3)
        L, N, D, S, W = 3, 16, 4, 6, 5
        phy = torch.cat([torch.randperm(N, generator=g).repeat(L, 1),
                         torch.randint(N, (L, D * S - N), generator=g)], 1)
        p = Placement.from_phy2log(phy, N, D)
        h = torch.randint(0, 100, (W, L, N), generator=g).double()
        mod = up.load_policy_module(up.find_source(), D)
        pol = mod.FlashLB()
        pol.max_observation_window = W
        pol.register_hotness(p.device_view().numpy(), up.slot_loads(p, h).numpy(), L, N)
        for layer in range(L):
            buf = torch.from_numpy(pol.hotness_window[layer]["buffer"])
            assert torch.allclose(buf, h[:, layer] + 1), layer
        print("ok")
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
