import pytest
import torch

from flashlb import Placement


def make(phy, N, D):
    return Placement.from_phy2log(torch.tensor(phy), N, D)


def test_views_agree():
    p = make([[0, 1, 2, 0], [3, 3, 1, 2]], 4, 2)
    assert p.logcnt.tolist() == [[2, 1, 1, 0], [0, 1, 1, 2]]
    assert p.log2phy.shape == (2, 4, 2)
    assert p.log2phy[0, 0].tolist() == [0, 3]
    assert p.log2phy[0, 1].tolist() == [1, -1]
    assert p.log2phy[1, 3].tolist() == [0, 1]
    assert p.device_view().tolist() == [[[0, 1], [2, 0]], [[3, 3], [1, 2]]]
    assert p.slots_per_device == 2 and p.num_experts == 4 and p.num_layers == 2


def test_log2phy_inverts_phy2log_on_random_placements():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        N, D, S = 7, 4, 3
        phy = torch.cat([torch.randperm(N, generator=g), torch.randint(0, N, (D * S - N,), generator=g)])
        p = Placement.from_phy2log(phy.unsqueeze(0), N, D)
        for e in range(N):
            slots = [s for s in p.log2phy[0, e].tolist() if s >= 0]
            assert slots == sorted(slots)
            assert all(int(phy[s]) == e for s in slots)
            assert len(slots) == int(p.logcnt[0, e])


def test_validate_accepts_a_valid_placement():
    make([[0, 1, 2, 3, 0, 1]], 4, 3).validate()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: Placement(p.phy2log, p.log2phy, p.logcnt + 1, 2), "logcnt disagrees"),
        (lambda p: Placement(p.phy2log, p.log2phy.flip(-1), p.logcnt, 2), "log2phy"),
        (lambda p: Placement(p.phy2log, p.log2phy, p.logcnt, 3), "multiple of D=3"),
        (lambda p: Placement(p.phy2log.clone().fill_(0), p.log2phy, p.logcnt, 2), "has no replica"),
        (lambda p: Placement(p.phy2log - 1, p.log2phy, p.logcnt, 2), "outside"),
        (lambda p: Placement(p.phy2log.float(), p.log2phy, p.logcnt, 2), "integer"),
    ],
)
def test_validate_names_each_broken_invariant(mutate, message):
    p = make([[0, 1, 2, 0]], 3, 2)
    with pytest.raises(ValueError, match=message):
        mutate(p).validate()


def _devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch, "npu", None) is not None and torch.npu.is_available():
        out.append("npu")
    return out


@pytest.mark.parametrize("device", ["cpu", "cuda", "npu"])
def test_validate_on_the_placements_device(device):
    # every tensor validate() builds lives on the placement's device (arange used to be CPU)
    if device not in _devices():
        pytest.skip(f"no {device} device here")
    p = make([[0, 1, 2, 0, 3, 1]], 4, 3).to(device)
    assert p.validate() is p
    with pytest.raises(ValueError, match="log2phy"):
        Placement(p.phy2log, p.log2phy.flip(-1), p.logcnt, 3).validate()


def test_validate_duplicates_unless_allowed():
    p = make([[0, 0, 1, 2]], 3, 2)
    with pytest.raises(ValueError, match="device 0 of layer 0 holds expert 0 twice"):
        p.validate()
    p.validate(allow_duplicates=True)


def test_from_phy2log_rejects_bad_ids():
    with pytest.raises(ValueError, match="outside"):
        make([[0, 5]], 2, 1)
    with pytest.raises(ValueError, match="integer"):
        Placement.from_phy2log(torch.tensor([[0.0, 1.0]]), 2, 1)


@pytest.mark.parametrize("suffix", [".json", ".pt", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    p = make([[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 2]], 4, 3)
    path = tmp_path / f"placement{suffix}"
    p.save(path)
    q = Placement.load(path, num_devices=3)
    assert q == p
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_is_sglang_init_expert_location(tmp_path):
    import json

    p = make([[0, 1, 2, 3]], 4, 2)
    p.save(tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"physical_to_logical_map": [[0, 1, 2, 3]]}
    with pytest.raises(ValueError, match="num_devices"):
        Placement.load(tmp_path / "x.json")


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_load_refuses_pickled_objects(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"physical_to_logical_map": Evil()}, path)
    with pytest.raises(ValueError, match="refused"):
        Placement.load(path, num_devices=1)
    assert "unpickled!" not in capsys.readouterr().out


def test_save_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=".json, .pt or .safetensors"):
        make([[0, 1]], 2, 1).save(tmp_path / "x.txt")
