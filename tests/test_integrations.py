import json

import pytest
import torch

from flashlb import Placement
from flashlb.integrations import logical_load
from flashlb.integrations import sglang, vllm, vllm_ascend


def loads(L=3, N=16, T=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (L, N) if T is None else (T, L, N)
    return torch.rand(shape, generator=g, dtype=torch.float64) ** 3 * 100


def test_vllm_policy_signature_and_old_placement():
    w = loads()
    phy2log, log2phy, logcnt = vllm.FlashLBEplbPolicy.rebalance_experts(w, 24, 1, 1, 4)
    p = Placement(phy2log, log2phy, logcnt, 4).validate()
    w2 = w.flip(-1)
    phy2, _, _ = vllm.FlashLBEplbPolicy.rebalance_experts(w2, 24, 1, 1, 4, old_global_expert_indices=phy2log)
    fresh, _, _ = vllm.FlashLBEplbPolicy.rebalance_experts(w2, 24, 1, 1, 4)
    assert (phy2 != phy2log).sum() <= (fresh != phy2log).sum()
    assert p.num_layers == 3


def test_vllm_ascend_policy_contract():
    policy = vllm_ascend.FlashLBPolicy()
    table = Placement.from_phy2log(torch.arange(24).remainder(16).repeat(3, 1), 16, 4).device_view()
    g = torch.Generator().manual_seed(0)
    workload = torch.rand(5, 3, 4, 6, generator=g) * 100
    workload[:, 1, 0] *= 20  # layer 1: device 0 overloaded
    changed, priority, new_table = policy.rebalance_experts(table, workload)
    assert changed and 1 in priority
    assert new_table.shape == table.shape
    Placement.from_device_view(new_table, 16).validate()
    # state kept across calls; a 3-d workload (one stage) works too
    policy.rebalance_experts(new_table, workload[0])
    assert policy.balancer.cycles == 2
    with pytest.raises(ValueError, match="expert_workload"):
        policy.rebalance_experts(table, torch.rand(3, 4, 5))


def test_logical_load_sums_replicas():
    table = torch.tensor([[[0, 1], [1, 2]]])  # L=1, D=2, S=2: expert 1 twice
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])  # [2 stages, 1, 2, 2]
    assert logical_load(x, table).tolist() == [[[1.0, 5.0, 4.0]], [[1.0, 2.0, 1.0]]]
    with pytest.raises(ValueError, match="does not end"):
        logical_load(torch.ones(2, 3), table)


def test_sglang_algorithm_and_init_file(tmp_path):
    t = loads(T=4)
    phy, l2p, cnt = sglang.rebalance_experts(t, 24, 6, None, 1)
    Placement(phy, l2p, cnt, 4).validate()
    path = sglang.write_init_expert_location(tmp_path / "loc.json", t, 24, 6)
    data = json.loads(path.read_text())
    assert list(data) == ["physical_to_logical_map"] and torch.equal(torch.tensor(data["physical_to_logical_map"]), phy)
    with pytest.raises(ValueError, match="num_local_physical_experts"):
        sglang.rebalance_experts(t, 24, 5, None, 1)
