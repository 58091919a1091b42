"""Prices by the cluster's shape (move_penalty / refresh_penalty "auto", default_prices) under
hostile input: bad arguments, extreme shapes, windows of another expert count, the adapter,
the command line."""

REFRESH_PER_MOVE = 4.7e-4 / 1.2e-3  # the defaults' ratio, which "auto" refresh keeps

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import flashlb
from flashlb import Balancer, Placement, metrics
from flashlb._checks import MAX_SLOTS
from flashlb.cli import main
from flashlb.integrations import vllm_ascend
from flashlb.redeploy import default_prices

PLAN_MAX_PRICE = 1e6  # the largest move/refresh price flashlb.plan accepts


def window(T, L, N, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, L, N, generator=g, dtype=torch.float64) ** 4 * 100


# ------------------------------------------------------------------ constructor arguments

BAD_PRICES = ["AUTO", " auto", "auto ", "", "none", b"auto", bytearray(b"auto"), True, False,
              np.bool_(True), float("nan"), float("inf"), -float("inf"), np.float64("nan"), -1e-9,
              -1, 1e7, 10**400, complex(1, 0), [1e-3], torch.tensor(1e-3), np.array(1e-3)]


@pytest.mark.parametrize("name", ["move_penalty", "refresh_penalty"])
@pytest.mark.parametrize("value", BAD_PRICES, ids=repr)
def test_bad_prices_are_refused_at_construction(name, value):
    with pytest.raises(ValueError, match=name) as err:
        Balancer(48, 8, **{name: value})
    assert "'auto'" in str(err.value)  # the message says what is accepted


def test_move_penalty_none_is_refused_but_refresh_none_means_as_a_move():
    with pytest.raises(ValueError, match="move_penalty"):
        Balancer(48, 8, move_penalty=None)
    assert Balancer(48, 8, move_penalty=2e-3, refresh_penalty=None).prices() == (2e-3, None)


def test_numpy_prices_are_numbers_and_numpy_auto_is_auto():
    b = Balancer(48, 8, move_penalty=np.float64(1e-3), refresh_penalty=np.int64(0))
    assert b.prices() == (1e-3, 0.0)
    assert type(b.move_penalty) is float and type(b.refresh_penalty) is float
    a = Balancer(48, 8, move_penalty=np.str_("auto"), refresh_penalty=np.str_("auto"))
    assert type(a.move_penalty) is str and type(a.refresh_penalty) is str
    assert a.prices() == default_prices(48, 8)


def test_auto_refresh_follows_a_move_price_given():
    # a whole re-plan stays cheaper than a repair, in the defaults' proportion
    move, refresh = Balancer(80, 8, move_penalty=1e-3).prices()
    assert move == 1e-3 and refresh == pytest.approx(1e-3 * REFRESH_PER_MOVE)
    assert Balancer(80, 8, refresh_penalty=2e-3).prices() == (default_prices(80, 8)[0], 2e-3)
    assert Balancer(80, 8, move_penalty=0).prices() == (0.0, 0.0)


# ------------------------------------------------------------------ default_prices

@pytest.mark.parametrize("p, d, name", [
    (0, 8, "num_physical"), (-1, 8, "num_physical"), (8.0, 8, "num_physical"), (True, 8, "num_physical"),
    ("256", 8, "num_physical"), (None, 8, "num_physical"), (MAX_SLOTS + 1, 8, "num_physical"),
    (10**400, 8, "num_physical"), (8, 0, "num_devices"), (8, -3, "num_devices"),
    (8, 8.0, "num_devices"), (8, True, "num_devices"), (8, None, "num_devices"),
    (8, 9, "num_devices"), (8, MAX_SLOTS + 1, "num_devices"), (8, 2**64, "num_devices"),
    (8, 10**400, "num_devices"),
])
def test_default_prices_refuse_bad_shapes(p, d, name):
    with pytest.raises(ValueError, match=name):
        default_prices(p, d)


@pytest.mark.parametrize("p, d", [(1, 1), (MAX_SLOTS, 1), (MAX_SLOTS, MAX_SLOTS), (5120, 1024),
                                  (288, 32), (np.int64(288), torch.tensor(32))])
def test_default_prices_of_extreme_shapes_are_prices_plan_accepts(p, d):
    move, refresh = default_prices(p, d)
    for x in (move, refresh):
        assert type(x) is float and math.isfinite(x) and 0 < x <= PLAN_MAX_PRICE
    # the shape scales both prices alike
    assert refresh / move == pytest.approx(REFRESH_PER_MOVE)
    assert move == pytest.approx(1.2e-3 * (int(d) / 32) * (288 / int(p)) ** 2)


@settings(max_examples=200, deadline=None)
@given(p=st.integers(1, MAX_SLOTS), d=st.integers(1, MAX_SLOTS))
def test_default_prices_scale_with_the_shape(p, d):
    if d > p:
        with pytest.raises(ValueError, match="num_devices"):
            default_prices(p, d)
        return
    move, refresh = default_prices(p, d)
    assert 0 < refresh < move <= 3.2
    # twice the devices: twice the prices; twice the slots: a quarter (where both are valid)
    if 2 * d <= p:
        assert default_prices(p, 2 * d)[0] == pytest.approx(2 * move)
    if 2 * p <= MAX_SLOTS:
        assert default_prices(2 * p, d)[0] == pytest.approx(move / 4)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 24), d=st.sampled_from([1, 2, 3, 4, 8]), extra=st.integers(0, 3),
       seed=st.integers(0, 2**16))
def test_auto_prices_keep_placements_valid_on_any_small_shape(n, d, extra, seed):
    per_device = -(-n // d) + extra  # enough slots for every expert, at most n per device
    if per_device > n:
        per_device = n
    p = per_device * d
    h = window(12, 2, n, seed=seed)
    h[6:] = h[6:].roll(1, -1)
    current = flashlb.plan(h[:6], p, d)
    up = Balancer(p, d).step(h[6:], current)
    up.placement.validate()
    assert bool((up.placement.logcnt >= 1).all())
    assert torch.equal(up.moves, metrics.moves(current, up.placement))


# ------------------------------------------------------------------ the Balancer on extreme shapes

@pytest.mark.parametrize("n, p, d", [(1, 1, 1), (1, 8, 8), (2, 2, 1), (2, 4, 2), (3, 6, 3), (4, 8, 8),
                                     (8, 8, 1), (5, 40, 8), (16, 64, 8), (64, 80, 8)])
def test_auto_prices_keep_placements_valid_on_extreme_shapes(n, p, d):
    h = window(16, 2, n, seed=n + p + d)
    h[8:] = h[8:].flip(-1)  # hot and cold experts trade places
    current = flashlb.plan(h[:8], p, d)
    bal = Balancer(p, d)
    up = bal.step(h[8:], current)
    # every expert has a replica, no expert twice on a device, every device full
    up.placement.validate()
    assert torch.equal(up.placement.logcnt.sum(-1), torch.full((2,), p))
    assert bool((up.placement.logcnt >= 1).all())
    assert up.placement.device_view().shape == (2, d, p // d)
    assert torch.equal(up.moves, metrics.moves(current, up.placement))
    kept = torch.ones(2, dtype=torch.bool)
    kept[up.layers] = False
    assert int(up.moves[kept].sum()) == 0  # layers not re-placed stay as they were
    assert bal.prices() == default_prices(p, d)


# ------------------------------------------------------------------ windows of another expert count

def test_auto_prices_are_the_shapes_whatever_the_window_and_no_state():
    P, D, L = 72, 8, 2
    small, large = window(24, L, 32, seed=1), window(24, L, 64, seed=2)
    small[12:] = small[12:].flip(-1)
    large[12:] = large[:12] * (1 + window(12, L, 64, seed=102) / 100)  # a drift, where prices matter
    cur_small, cur_large = flashlb.plan(small[:12], P, D), flashlb.plan(large[:12], P, D)
    # one Balancer sees 32 experts, then 64 (another model behind the same object)
    auto = Balancer(P, D)
    auto.step(small[12:], cur_small)
    state = auto.state_dict()
    assert set(state) == {"reference", "measured", "cycles"}  # prices are not state
    got = auto.step(large[12:], cur_large)
    # the same decision as a fresh Balancer with the shape's prices spelled out, same state
    move, refresh = default_prices(P, D)
    spelled = Balancer(P, D, move_penalty=move, refresh_penalty=refresh)
    spelled.load_state_dict(state)
    want = spelled.step(large[12:], cur_large)
    assert torch.equal(got.placement.phy2log, want.placement.phy2log)
    # and dearer prices would have decided otherwise (the test can tell prices apart)
    dear = Balancer(P, D, move_penalty=4 * move, refresh_penalty=4 * refresh)
    dear.load_state_dict(state)
    assert int(dear.step(large[12:], cur_large).moves.sum()) < int(got.moves.sum())
    assert auto.prices() == (move, refresh)


def test_save_and_load_keep_auto_prices_auto(tmp_path):
    h = window(24, 2, 32, seed=3)
    current = flashlb.plan(h[:12], 40, 8)
    bal = Balancer(40, 8)
    first = bal.step(h[12:], current)
    bal.save(tmp_path / "state.pt")
    again = Balancer(40, 8)
    again.load(tmp_path / "state.pt")
    assert again.move_penalty == "auto" and again.refresh_penalty == "auto"
    a = bal.step(h[12:], first.placement)
    b = again.step(h[12:], first.placement)
    assert torch.equal(a.placement.phy2log, b.placement.phy2log) and torch.equal(a.moves, b.moves)


# ------------------------------------------------------------------ vllm-ascend adapter

def _table():
    return Placement.from_phy2log(torch.arange(24).remainder(16).repeat(3, 1), 16, 4).device_view()


def test_vllm_ascend_policy_passes_prices_through():
    workload = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(1)) * 100
    auto = vllm_ascend.FlashLBPolicy()
    auto.rebalance_experts(_table(), workload)
    assert auto.balancer.prices() == default_prices(24, 4)  # P and D read from the table
    given = vllm_ascend.FlashLBPolicy(move_penalty=2e-3, refresh_penalty=None)
    given.rebalance_experts(_table(), workload)
    assert given.balancer.prices() == (2e-3, None)


@pytest.mark.parametrize("options", [dict(move_penalty="AUTO"), dict(refresh_penalty=float("nan")),
                                     dict(move_penalty=None), dict(refresh_penalty=-1.0),
                                     dict(move_penalty=b"auto")])
def test_vllm_ascend_policy_refuses_bad_prices_at_construction(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        vllm_ascend.FlashLBPolicy(**options)
    # install() checks them before it looks for vllm-ascend
    with pytest.raises(ValueError, match=name):
        vllm_ascend.install(options)


@pytest.mark.parametrize("typo", ["refresh_penalti", "move_price", "refresh"])
def test_misspelt_options_are_refused_at_construction(typo):
    # they went to plan as "other options" and failed only inside the first cycle's search
    with pytest.raises(ValueError, match=typo):
        Balancer(48, 8, **{typo: 1e-3})
    with pytest.raises(ValueError, match=typo):
        vllm_ascend.FlashLBPolicy(**{typo: 1e-3})
    # plan's own options and the search's pass
    Balancer(48, 8, num_groups=4, time_budget=1.0, seed=3, smoothing=0.1, perturb_rounds=2)


# ------------------------------------------------------------------ command line

SIM = ["simulate", "--regime", "swaps-fast", "--layers", "2", "--episodes", "40", "--experts", "64",
       "--physical", "80", "--devices", "8"]


def _price_line(out):
    lines = [l for l in out.splitlines() if l.startswith("balancer prices")]
    assert len(lines) == 1, out
    return lines[0]


def test_cli_simulate_prints_the_prices_it_used(capsys):
    assert main(SIM + ["--policies", "balancer,default"]) == 0
    move, refresh = default_prices(80, 8)
    line = _price_line(capsys.readouterr().out)
    assert f"{move:.3g}" in line and f"{refresh:.3g}" in line
    assert main(SIM + ["--policies", "balancer", "--move-penalty", "0.001"]) == 0
    line = _price_line(capsys.readouterr().out)
    assert "slot: 0.001," in line and line.endswith(f"{1e-3 * REFRESH_PER_MOVE:.3g}")  # refresh follows
    assert main(SIM + ["--policies", "balancer", "--move-penalty", "0.001", "--refresh-penalty", "0.0002"]) == 0
    assert _price_line(capsys.readouterr().out).endswith(": 0.0002")


def test_cli_simulate_without_the_balancer_prints_no_prices(capsys):
    assert main(SIM + ["--policies", "fresh,default", "--move-penalty", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "fresh" in out and "prices" not in out


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "2e6"])
def test_cli_simulate_refuses_bad_prices(value, capsys):
    assert main(SIM + ["--policies", "balancer", "--move-penalty", value]) == 2
    err = capsys.readouterr().err
    assert "move_penalty" in err and "internal error" not in err


def test_cli_swaps_of_a_single_group_is_a_clear_error(capsys):
    # the README's advice: replay --regime swaps-fast --experts N to pick prices; with one
    # group of experts there is nothing to swap
    assert main(["simulate", "--regime", "swaps-fast", "--experts", "8", "--physical", "16",
                 "--devices", "8", "--layers", "2", "--episodes", "40"]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "group" in err
