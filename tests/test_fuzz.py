"""Property-based tests: every call returns a valid placement or a ValueError."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flashlb
from flashlb import metrics

from conftest import judge

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instances(draw):
    D = draw(st.integers(1, 6))
    S = draw(st.integers(1, 4))
    N = draw(st.integers(S, D * S))  # S <= N <= P: always solvable
    T = draw(st.integers(1, 3))
    L = draw(st.integers(1, 2))
    kind = draw(st.sampled_from(["random", "zero", "one-hot", "ties", "skew", "integer"]))
    if kind == "zero":
        h = torch.zeros(T, L, N)
    elif kind == "one-hot":
        h = torch.zeros(T, L, N)
        h[..., draw(st.integers(0, N - 1))] = draw(st.floats(1e-3, 1e6))
    elif kind == "ties":
        h = torch.full((T, L, N), float(draw(st.integers(1, 5))))
    else:
        vals = draw(st.lists(st.integers(0, 1000) if kind == "integer" else
                             st.floats(0, 1e4, allow_nan=False, allow_infinity=False),
                             min_size=T * L * N, max_size=T * L * N))
        h = torch.tensor(vals, dtype=torch.float64).view(T, L, N)
        if kind == "skew":
            h = h ** 3
    return h, D * S, D


def check_valid(p, h, P, D):
    p.validate()
    T, L, N = h.shape
    assert p.phy2log.shape == (L, P)
    assert bool((p.logcnt >= 1).all()) and bool((p.logcnt <= D).all())
    assert p.logcnt.sum(1).tolist() == [P] * L


@FUZZ
@given(instances())
def test_flashlb_always_valid_and_never_worse_than_greedy(inst):
    h, P, D = inst
    p = flashlb.plan(h, P, D)
    check_valid(p, h, P, D)
    g = flashlb.plan(h, P, D, algorithm="default")
    g.validate(allow_duplicates=True)
    ours, theirs = judge(p, h), judge(g, h)
    ok = ~g.has_duplicates()
    assert bool((ours[ok] <= theirs[ok] + 1e-9).all())


@FUZZ
@given(instances(), st.integers(1, 3))
def test_impossible_requests_raise_value_error(inst, extra):
    h, P, D = inst
    N = h.shape[-1]
    with pytest.raises(ValueError):
        flashlb.plan(h, N * D + D * extra, D)  # some expert would sit twice on a device
    if N > 1:
        with pytest.raises(ValueError):
            flashlb.plan(h, N - 1, 1)  # fewer slots than experts
    if D > 1:
        with pytest.raises(ValueError):
            flashlb.plan(h, P + 1, D)  # devices would differ in slots


@FUZZ
@given(instances(), st.sampled_from([float("nan"), float("inf"), -1.0]))
def test_bad_values_raise(inst, bad):
    h, P, D = inst
    h = h.clone().to(torch.float64)
    h.view(-1)[0] = bad
    with pytest.raises(ValueError, match="hotness"):
        flashlb.plan(h, P, D)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_edges_one_device_one_expert_one_slot(D, T, seed):
    g = torch.Generator().manual_seed(seed)
    # one expert on D devices: every device holds it
    p = flashlb.plan(torch.rand(T, 1, 1, generator=g), D, D)
    assert p.logcnt.tolist() == [[D]]
    # one device: every expert once
    p = flashlb.plan(torch.rand(T, 1, 5, generator=g), 5, 1)
    check_valid(p, torch.rand(T, 1, 5), 5, 1)
    # one slot per device, P = N
    p = flashlb.plan(torch.rand(T, 2, D, generator=g), D, D)
    check_valid(p, torch.rand(T, 2, D), D, D)


@FUZZ
@given(instances(), instances(), st.sampled_from([0.0, 1e-4, 1e-2]))
def test_plans_near_a_previous_placement_stay_valid(inst, other, penalty):
    h, P, D = inst
    old = flashlb.plan(h, P, D)
    # another window of the same shape: the other instance's values where they fit, else noise
    h2 = torch.rand(h.shape, generator=torch.Generator().manual_seed(int(other[0].sum()) % 1000), dtype=torch.float64)
    new = flashlb.plan(h2, P, D, previous=old, move_penalty=penalty)
    check_valid(new, h2, P, D)
    # never worse than the default greedy aligned to old, moves priced in (the fallback)
    g2 = flashlb.align_to(flashlb.plan(h2, P, D, algorithm="default"), old)
    ok = ~g2.has_duplicates()
    ours = judge(new, h2) + penalty * metrics.moves(old, new)
    theirs = judge(g2, h2) + penalty * metrics.moves(old, g2)
    assert bool((ours[ok] <= theirs[ok] + 1e-9).all())
    # and aligned: no permutation of devices or slots would keep more of old in place
    assert torch.equal(metrics.moves(old, new), metrics.moves(old, flashlb.align_to(new, old)))
    # the default greedy's placement (duplicates possible) is a valid "previous" too
    g = flashlb.plan(h, P, D, algorithm="default")
    new = flashlb.plan(h2, P, D, previous=g, move_penalty=penalty)
    check_valid(new, h2, P, D)
    assert torch.equal(metrics.moves(g, new), metrics.moves(g, flashlb.align_to(new, g)))
