"""Prices by the cluster's shape (move_penalty / refresh_penalty "auto", default_prices) under
hostile input: bad arguments, extreme shapes, windows of another expert count, the adapter,
the command line."""

import math

import numpy as np
import pytest
import torch

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
    assert Balancer(48, 8, move_penalty=2e-3, refresh_penalty=None).prices(32) == (2e-3, None)


def test_numpy_prices_are_numbers_and_numpy_auto_is_auto():
    b = Balancer(48, 8, move_penalty=np.float64(1e-3), refresh_penalty=np.int64(0))
    assert b.prices(32) == (1e-3, 0.0)
    assert type(b.move_penalty) is float and type(b.refresh_penalty) is float
    a = Balancer(48, 8, move_penalty=np.str_("auto"), refresh_penalty=np.str_("auto"))
    assert type(a.move_penalty) is str and type(a.refresh_penalty) is str
    assert a.prices(32) == default_prices(32, 8)


# ------------------------------------------------------------------ default_prices

@pytest.mark.parametrize("n, d, name", [
    (0, 8, "num_experts"), (-1, 8, "num_experts"), (8.0, 8, "num_experts"), (True, 8, "num_experts"),
    ("256", 8, "num_experts"), (None, 8, "num_experts"), (MAX_SLOTS + 1, 8, "num_experts"),
    (10**400, 8, "num_experts"), (8, 0, "num_devices"), (8, -3, "num_devices"),
    (8, 8.0, "num_devices"), (8, True, "num_devices"), (8, None, "num_devices"),
    (8, MAX_SLOTS + 1, "num_devices"), (8, 2**64, "num_devices"), (8, 10**400, "num_devices"),
])
def test_default_prices_refuse_bad_shapes(n, d, name):
    with pytest.raises(ValueError, match=name):
        default_prices(n, d)


@pytest.mark.parametrize("n, d", [(1, 1), (1, MAX_SLOTS), (MAX_SLOTS, 1), (MAX_SLOTS, MAX_SLOTS),
                                  (4096, 1024), (256, 32), (np.int64(256), torch.tensor(32))])
def test_default_prices_of_extreme_shapes_are_prices_plan_accepts(n, d):
    move, refresh = default_prices(n, d)
    for p in (move, refresh):
        assert type(p) is float and math.isfinite(p) and 0 < p <= PLAN_MAX_PRICE
    # the shape scales both prices alike
    assert refresh / move == pytest.approx(4.7e-4 / 1.2e-3)
    assert move == pytest.approx(1.2e-3 * (int(d) / 32) * (256 / int(n)) ** 2)


