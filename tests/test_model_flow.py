"""The invertible flow: exact inverse, cancelling log-determinants, shapes."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.flow import NormalizingFlow

torch.set_num_threads(1)


def _trained_like_flow(dim: int, blocks: int, seed: int) -> NormalizingFlow:
    """A flow with non-trivial weights, as after some training."""
    torch.manual_seed(seed)
    flow = NormalizingFlow(dim, blocks, hidden=16, clamp=2.0, seed=seed)
    flow.train()
    flow(torch.randn(64, dim) * 3 + 1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return flow.eval()


@settings(max_examples=20, deadline=None)
@given(
    dim=st.integers(2, 12),
    blocks=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_inverse_of_forward_gives_the_input_back(
    dim: int, blocks: int, seed: int
) -> None:
    """f^-1(f(z)) equals z and f(f^-1(c)) equals c, in float64 to 1e-9."""
    flow = _trained_like_flow(dim, blocks, seed)
    z = torch.randn(32, dim, generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        flow64, z64 = flow.double(), z.double()
        back, _ = flow64.inverse(flow64(z64)[0])
        again, _ = flow64(flow64.inverse(z64)[0])
    assert torch.allclose(back, z64, atol=1e-9)
    assert torch.allclose(again, z64, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(dim=st.integers(2, 12), seed=st.integers(0, 1000))
def test_forward_and_inverse_log_determinants_cancel(dim: int, seed: int) -> None:
    """The inverse's log-determinant at f(z) is minus the forward's at z."""
    flow = _trained_like_flow(dim, 4, seed)
    z = torch.randn(16, dim)
    with torch.no_grad():
        c, ld_forward = flow(z)
        _, ld_inverse = flow.inverse(c)
    assert ld_forward.shape == (16,)
    assert torch.allclose(ld_forward, -ld_inverse, atol=1e-4)
    assert ld_forward.abs().max() > 1e-3


def test_log_determinant_matches_the_jacobian() -> None:
    """The reported log-determinant is log|det J| of the forward map."""
    flow = _trained_like_flow(5, 3, 7).double()
    z = torch.randn(1, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v)[0], z)
    expected = torch.linalg.slogdet(jac.reshape(5, 5))[1]
    _, log_det = flow(z)
    assert torch.allclose(log_det[0], expected, atol=1e-8)


def test_shapes_and_dtypes_are_kept() -> None:
    """Both directions keep (N, dim) and the input dtype."""
    flow = _trained_like_flow(6, 2, 1)
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(9, 6, dtype=dtype)
        flow = flow.to(dtype)
        c, ld = flow(z)
        back, ld_inv = flow.inverse(c)
        assert c.shape == back.shape == (9, 6)
        assert c.dtype == back.dtype == ld.dtype == ld_inv.dtype == dtype


def test_likelihood_training_maps_latents_towards_a_standard_normal() -> None:
    """Maximum likelihood lowers the NLL of skewed data below its start."""
    torch.manual_seed(0)
    z = torch.randn(512, 4)
    z[:, 1] = z[:, 0] ** 2 + 0.1 * z[:, 1]
    flow = NormalizingFlow(4, 4, hidden=32, seed=0)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    flow.train()
    start = float(-flow.log_prob(z).mean().detach())
    for _ in range(150):
        loss = -flow.log_prob(z).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(-flow.log_prob(z).mean().detach()) < start - 0.5


@settings(max_examples=25, deadline=None)
@given(
    dim=st.integers(2, 10),
    bank_size=st.integers(1, 40),
    rows=st.integers(1, 50),
    seed=st.integers(0, 1000),
)
def test_flow_knn_is_the_log_distance_to_the_nearest_bank_point(
    dim: int, bank_size: int, rows: int, seed: int
) -> None:
    """FlowKNN equals a brute-force float64 nearest distance, for any block
    size, and a latent whose flow-space point is in the bank scores log(eps)."""
    import math

    from model.flow import FlowKNN

    flow = _trained_like_flow(dim, 2, seed)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(30, dim, generator=gen) * 2
    bank_z = torch.cat([z[:3], torch.randn(bank_size, dim, generator=gen)])
    with torch.no_grad():
        bank = flow(bank_z)[0]
        head = FlowKNN(flow, bank, eps=0.01, rows=rows)
        got = head(z).double()
        u = flow(z)[0].double()
    brute = torch.cdist(u, bank.double()).min(dim=1).values
    want = torch.log(brute + 0.01)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(got[:3], torch.full((3,), math.log(0.01)).double(), atol=1e-4)
    assert bool((got[3:] >= math.log(0.01) - 1e-6).all())


def test_flow_knn_refuses_a_bank_of_the_wrong_shape() -> None:
    """A bank whose width is not the flow's, or an empty one, is a ValueError."""
    import pytest

    from model.flow import FlowKNN

    flow = _trained_like_flow(4, 1, 0)
    with pytest.raises(ValueError, match=r"\(M >= 1, 4\)"):
        FlowKNN(flow, torch.zeros(5, 3), eps=0.01)
    with pytest.raises(ValueError, match=r"\(M >= 1, 4\)"):
        FlowKNN(flow, torch.zeros(0, 4), eps=0.01)
    with pytest.raises(ValueError, match="eps=0"):
        FlowKNN(flow, torch.zeros(2, 4), eps=0)
