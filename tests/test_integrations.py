"""The adapters' contracts, without the stacks installed (test_integrations_upstream.py runs
them through the stacks' own code)."""

import json
import pickle
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from flashlb import Placement
from flashlb.integrations import logical_load
from flashlb.integrations import sglang, vllm, vllm_ascend


def loads(L=3, N=16, T=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (L, N) if T is None else (T, L, N)
    return torch.rand(shape, generator=g, dtype=torch.float64) ** 3 * 100


# ------------------------------------------------------------------ vLLM

def test_vllm_policy_returns_phy2log_on_cpu_and_keeps_experts_in_place():
    w = loads()
    phy = vllm.FlashLBEplbPolicy.rebalance_experts(w, 24, 4, 1, 4)
    assert isinstance(phy, torch.Tensor) and phy.dtype == torch.int64 and phy.device.type == "cpu"
    assert phy.shape == (3, 24)
    Placement.from_phy2log(phy, 16, 4).validate()
    w2 = w.flip(-1)
    warm = vllm.FlashLBEplbPolicy.rebalance_experts(w2, 24, 4, 1, 4, old_global_expert_indices=phy)
    fresh = vllm.FlashLBEplbPolicy.rebalance_experts(w2, 24, 4, 1, 4)
    assert (warm != phy).sum() <= (fresh != phy).sum()
    # callable on an instance too (instance-based policy APIs), with any constructor arguments
    assert torch.equal(vllm.FlashLBEplbPolicy(object(), x=1).rebalance_experts(w, 24, 4, 1, 4), phy)


def test_vllm_policy_elastic_old_maps_and_integer_loads():
    w = (loads() * 10).to(torch.int64)       # vLLM's load window holds integer counts
    phy = vllm.FlashLBEplbPolicy.rebalance_experts(w, 24, 4, 1, 4)
    up_old = torch.cat([phy, torch.full((3, 12), -1, dtype=torch.int64)], 1)   # scale up 4 -> 6
    up = vllm.FlashLBEplbPolicy.rebalance_experts(w, 36, 4, 1, 6, up_old)
    Placement.from_phy2log(up, 16, 6).validate()
    down = vllm.FlashLBEplbPolicy.rebalance_experts(w, 16, 4, 1, 2, up)         # wider old map
    Placement.from_phy2log(down, 16, 2).validate()
    # corrupt rather than elastic: a full map that drops experts, ids out of range, floats
    for bad in (torch.zeros(3, 24, dtype=torch.int64), torch.full((3, 24), 16), phy.double()):
        with pytest.raises(ValueError, match="old_global_expert_indices"):
            vllm.FlashLBEplbPolicy.rebalance_experts(w, 24, 4, 1, 4, bad)


@pytest.mark.parametrize("groups, nodes, ranks", [(3, 2, 4), (5, 1, 4), (4, 3, 4), (0, 1, 4)])
def test_vllm_policy_falls_back_to_global_when_groups_do_not_divide(groups, nodes, ranks):
    w = loads(N=12)
    phy = vllm.FlashLBEplbPolicy.rebalance_experts(w, 16, groups, nodes, ranks)
    assert torch.equal(phy, vllm.FlashLBEplbPolicy.rebalance_experts(w, 16, 1, 1, ranks))


def test_vllm_policy_bad_sizes_raise_value_and_assertion_error():
    w = loads(N=4)
    for args in [(7, 2, 2, 4), (3, 1, 1, 1), (8, 1, 1, 0)]:
        with pytest.raises(vllm.EplbInputError) as e:
            vllm.FlashLBEplbPolicy.rebalance_experts(w, *args)
        assert isinstance(e.value, ValueError) and isinstance(e.value, AssertionError)
    with pytest.raises(TypeError, match="weight"):
        vllm.FlashLBEplbPolicy.rebalance_experts(w.numpy(), 8, 1, 1, 4)


def test_vllm_tuple_policy_for_older_releases():
    w = loads()
    phy, l2p, cnt = vllm.FlashLBEplbPolicyTuple.rebalance_experts(w, 24, 4, 1, 4)
    Placement(phy, l2p, cnt, 4).validate()
    assert torch.equal(phy, vllm.FlashLBEplbPolicy.rebalance_experts(w, 24, 4, 1, 4))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_preserve_intragpu_slots_keeps_staying_experts_in_their_slots(ranks, slots, L, seed):
    rng = np.random.default_rng(seed)
    N = 6
    old = rng.integers(0, N, size=(L, ranks * slots))
    new = rng.integers(0, N, size=(L, ranks * slots))
    post = vllm.preserve_intragpu_slots(new, ranks, old)
    assert isinstance(post, np.ndarray) and post.shape == new.shape
    for layer in range(L):
        for r in range(ranks):
            o, n, p = (x[layer, r * slots:(r + 1) * slots] for x in (old, new, post))
            assert sorted(p.tolist()) == sorted(n.tolist())
            for s, e in enumerate(o.tolist()):
                kept = min(o.tolist().count(e), n.tolist().count(e))
                staying = [i for i, x in enumerate(o.tolist()) if x == e][:kept]
                if s in staying:
                    assert p[s] == e
    t = vllm.preserve_intragpu_slots(torch.from_numpy(new), ranks, torch.from_numpy(old))
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(post))


def test_preserve_intragpu_slots_names_maps_that_are_not_l_by_p():
    """A [P] or [L, D, S] map was Python's 'not enough values to unpack'."""
    for new, old in ((np.arange(4), np.arange(4)), (np.zeros((2, 2, 4), dtype=np.int64),) * 2):
        with pytest.raises(ValueError, match=r"\[L, P\]"):
            vllm.preserve_intragpu_slots(new, 2, old)


def test_vllm_register_needs_vllm():
    try:
        import vllm as _  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            vllm.register()
    else:
        pytest.skip("vLLM is importable here; test_integrations_upstream covers register()")


# ------------------------------------------------------------------ vllm-ascend

def test_vllm_ascend_policy_contract():
    policy = vllm_ascend.FlashLBPolicy()
    table = Placement.from_phy2log(torch.arange(24).remainder(16).repeat(3, 1), 16, 4).device_view()
    g = torch.Generator().manual_seed(0)
    workload = torch.rand(5, 3, 4, 6, generator=g) * 100
    workload[:, 1, 0] *= 20  # layer 1: device 0 overloaded
    changed, priority, new_table = policy.rebalance_experts(table.to(torch.int32), workload)
    assert changed is True and 1 in priority and all(isinstance(x, int) for x in priority)
    assert new_table.shape == table.shape and new_table.dtype == torch.int64 and new_table.device.type == "cpu"
    Placement.from_device_view(new_table, 16).validate()
    # experts that stay on a device keep their slot (vllm-ascend's worker rejects a layer otherwise)
    for layer in range(3):
        for d in range(4):
            old, new = table[layer, d], new_table[layer, d]
            stay = torch.isin(new, old)
            assert torch.equal(new[stay], old[stay])
    # state kept across calls; a 3-d workload (one stage) works too; the policy pickles
    policy.rebalance_experts(new_table, workload[0])
    assert policy.balancer.cycles == 2
    assert pickle.loads(pickle.dumps(policy)).balancer.cycles == 2
    with pytest.raises(ValueError, match="expert_workload"):
        policy.rebalance_experts(table, torch.rand(3, 4, 5))
    with pytest.raises(ValueError, match="current_expert_table"):
        policy.rebalance_experts(table.float(), workload)
    # an empty table (no layer, device or slot) was torch's "max(): Expected reduction dim"
    for empty in (torch.zeros(0, 4, 6, dtype=torch.int64), torch.zeros(3, 0, 6, dtype=torch.int64),
                  torch.zeros(3, 4, 0, dtype=torch.int64)):
        with pytest.raises(ValueError, match="current_expert_table"):
            vllm_ascend.FlashLBPolicy().rebalance_experts(empty, torch.rand(empty.shape))


def test_vllm_ascend_balancer_options_pass_through():
    policy = vllm_ascend.FlashLBPolicy(threshold=1.5, max_layers_per_cycle=1)
    table = Placement.from_phy2log(torch.arange(24).remainder(16).repeat(3, 1), 16, 4).device_view()
    workload = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(1)) * 100
    workload[:, :, 0] *= 50
    _, priority, _ = policy.rebalance_experts(table, workload)
    assert len(priority) <= 1 and policy.balancer.threshold == 1.5
    env = {vllm_ascend.OPTIONS_ENV: '{"threshold": 1.2, "max_layers_per_cycle": 3}'}
    assert vllm_ascend.balancer_options_from_env(env) == {"threshold": 1.2, "max_layers_per_cycle": 3}
    assert vllm_ascend.balancer_options_from_env({}) == {}
    for bad in ("[1, 2]", "{threshold: 1}", "[" * 100000 + "]" * 100000):  # the last: RecursionError
        with pytest.raises(ValueError, match=vllm_ascend.OPTIONS_ENV):
            vllm_ascend.balancer_options_from_env({vllm_ascend.OPTIONS_ENV: bad})


def test_vllm_ascend_plugin_is_off_unless_asked():
    vllm_ascend.plugin({})                       # nothing happens, nothing is imported
    with pytest.raises(ValueError, match="threshold"):
        vllm_ascend.plugin({vllm_ascend.ENABLE_ENV: "1", vllm_ascend.OPTIONS_ENV: '{"threshold": 0.5}'})


def test_logical_load_sums_replicas():
    table = torch.tensor([[[0, 1], [1, 2]]])  # L=1, D=2, S=2: expert 1 twice
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # [2 stages, 1, 2, 2]
    assert logical_load(x, table).tolist() == [[[1.0, 5.0, 4.0]], [[1.0, 2.0, 1.0]]]
    with pytest.raises(ValueError, match="does not end"):
        logical_load(torch.ones(2, 3), table)


# ------------------------------------------------------------------ SGLang

def test_sglang_algorithm_returns_cpu_int64_and_ignores_sglang_algorithm_value():
    t = loads(T=4)
    phy, l2p, cnt = sglang.rebalance_experts(t, 24, 6, None, 1, algorithm=object())
    for x in (phy, l2p, cnt):
        assert x.device.type == "cpu" and x.dtype == torch.int64
    Placement(phy, l2p, cnt, 4).validate()
    phy2, _, _ = sglang.rebalance_experts(t, 24, 6, None, 1, plan_options={"seed": 0})
    assert torch.equal(phy, phy2)
    with pytest.raises(ValueError, match="plan_options"):
        sglang.rebalance_experts(t, 24, 6, None, 1, plan_options={"algorithm": "default"})
    with pytest.raises(ValueError, match="num_local_physical_experts"):
        sglang.rebalance_experts(t, 24, 5, None, 1)


def test_sglang_takes_numpy_and_tensor_sizes_and_names_bad_ones():
    """A numpy or 0-d tensor size (as read from a config array) is a size, as it is for
    flashlb.plan; it was refused with '6 must divide 24', which it does."""
    t = loads(T=2)
    want, _, _ = sglang.rebalance_experts(t, 24, 6, None, 1)
    for local in (np.int64(6), np.int32(6), torch.tensor(6)):
        assert torch.equal(sglang.rebalance_experts(t, 24, local, None, 1)[0], want)
    assert torch.equal(sglang.rebalance_experts(t, np.int64(24), np.int64(6), None, 1)[0], want)
    for bad in (6.0, True, "6", 0, -6, torch.tensor(6.0)):
        with pytest.raises(ValueError, match="num_local_physical_experts"):
            sglang.rebalance_experts(t, 24, bad, None, 1)


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_sglang_init_file_holds_only_what_sglang_accepts(tmp_path, suffix):
    t = loads(T=4)
    phy, _, _ = sglang.rebalance_experts(t, 24, 6, None, 1)
    path = sglang.write_init_expert_location(tmp_path / f"loc{suffix}", t, 24, 6)
    if suffix == ".json":
        data = json.loads(path.read_text())
        assert torch.equal(torch.tensor(data["physical_to_logical_map"]), phy)
    else:
        data = torch.load(path, weights_only=True)
        assert torch.equal(data["physical_to_logical_map"], phy)
    assert list(data) == ["physical_to_logical_map"]
    assert Placement.load(path, num_devices=4).phy2log.equal(phy)


def test_sglang_init_file_refuses_formats_sglang_cannot_read(tmp_path):
    with pytest.raises(ValueError, match=".json or .pt"):
        sglang.write_init_expert_location(tmp_path / "loc.safetensors", loads(T=2), 24, 6)
    assert not list(tmp_path.iterdir())


def test_safetensors_placement_keeps_its_sizes(tmp_path):
    p = Placement.from_phy2log(torch.tensor([[0, 1, 2, 3, 0, 1]]), 4, 3)
    p.save(tmp_path / "p.safetensors")
    q = Placement.load(tmp_path / "p.safetensors")       # no num_devices: read from the metadata
    assert q == p and q.num_devices == 3


def test_import_refuses_a_torch_other_than_the_build_torch(monkeypatch):
    import types

    import flashlb

    monkeypatch.setitem(sys.modules, "flashlb._build_info", types.SimpleNamespace(TORCH_VERSION="2.0.1+cpu"))
    with pytest.raises(ImportError, match=r"built against torch 2\.0\.1\+cpu.*rebuild"):
        flashlb._check_torch()
    local = torch.__version__.split("+")[0] + "+cu999"     # another build of the same release is fine
    monkeypatch.setitem(sys.modules, "flashlb._build_info", types.SimpleNamespace(TORCH_VERSION=local))
    flashlb._check_torch()
