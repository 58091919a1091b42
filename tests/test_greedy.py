import torch

import flashlb
from flashlb import Placement, metrics
from flashlb.solvers.greedy import balanced_packing, replicate


def test_seed_example_peaks_at_232(seed_hotness):
    p = flashlb.plan(seed_hotness, 16, 8, algorithm="default")
    p.validate(allow_duplicates=True)
    assert metrics.device_loads(p, seed_hotness).max().item() == 232
    # the published greedy doubles an expert on a device here
    assert bool(p.has_duplicates().all())


def test_replicate_is_min_max_replica(seed_hotness):
    rep, cnt = replicate(seed_hotness, 16)
    assert cnt.tolist() == [[5, 5, 1, 1, 1, 1, 1, 1]]
    assert rep[0, :8].tolist() == list(range(8))


def test_balanced_packing_fills_every_pack():
    w = torch.tensor([[5.0, 4, 3, 3, 2, 1]])
    pack, rank = balanced_packing(w, 3)
    assert torch.bincount(pack[0], minlength=3).tolist() == [2, 2, 2]
    loads = torch.zeros(3).index_add_(0, pack[0], w[0])
    assert loads.tolist() == [6.0, 6.0, 6.0]
    assert sorted(zip(pack[0].tolist(), rank[0].tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_rebalance_experts_signature():
    w = torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) * 100
    phy2log, log2phy, logcnt = flashlb.rebalance_experts(w, 24, 4, 2, 8, algorithm="default")
    assert phy2log.shape == (3, 24) and logcnt.shape == (3, 16) and log2phy.shape[:2] == (3, 16)
    Placement(phy2log, log2phy, logcnt, 8).validate(allow_duplicates=True)


def test_hierarchical_keeps_groups_on_one_node():
    g = torch.Generator().manual_seed(1)
    w = torch.rand(4, 16, generator=g) * 100
    p = flashlb.plan(w, 32, 8, algorithm="default", num_groups=4, num_nodes=2)
    p.validate(allow_duplicates=True)
    # every expert's replicas live on one node, and each node holds whole groups
    node_of_slot = torch.arange(32) // 16
    for layer in range(4):
        for e in range(16):
            nodes = {int(node_of_slot[s]) for s in p.log2phy[layer, e].tolist() if s >= 0}
            assert len(nodes) == 1
        groups_on_node0 = {e // 4 for e in p.phy2log[layer, :16].tolist()}
        assert len(groups_on_node0) == 2


def test_balanced_packing_rejects_uneven_packs():
    import pytest

    with pytest.raises(ValueError, match="evenly"):
        balanced_packing(torch.ones(1, 5), 2)
