import pytest
import torch

from snn import surrogates
from snn.neurons import LIF, lif_reference


def eq_1_2(c, tau=0.5, vth=1.0):
    """Eq. 1-2 written out with Python floats, one neuron."""
    u, out = 0.0, []
    for ct in c:
        u_pre = tau * u + ct
        o = 1.0 if u_pre > vth else 0.0
        u = u_pre * (1 - o)
        out.append(o)
    return out


def test_hand_made_sequence():
    c = [0.6, 0.8, 0.2, 1.0, 1.5, 0.0, 0.9]
    # u_pre: 0.6, 1.1 (fire), 0.2, 1.1 (fire), 1.5 (fire), 0, 0.9
    spikes = LIF()(torch.tensor(c).view(-1, 1))
    assert spikes.view(-1).tolist() == [0, 1, 0, 1, 1, 0, 0]
    assert spikes.view(-1).tolist() == eq_1_2(c)


def test_exactly_at_threshold_does_not_fire():
    c = torch.tensor([1.0, 0.5, 0.75]).view(-1, 1)  # u_pre = 1.0, 1.0, 1.25
    assert LIF()(c).view(-1).tolist() == [0, 0, 1]


@pytest.mark.parametrize("tau,vth", [(0.5, 1.0), (0.9, 0.5), (1.0, 2.0)])
def test_random_inputs_match_plain_loop(tau, vth):
    torch.manual_seed(0)
    c = torch.randn(6, 50) * 1.5
    out = LIF(tau, vth)(c)
    for j in range(50):
        assert out[:, j].tolist() == eq_1_2(c[:, j].tolist(), tau, vth)


@pytest.mark.parametrize("name", surrogates.NAMES)
@pytest.mark.parametrize("detach_reset", [False, True])
def test_custom_backward_matches_autograd_reference(name, detach_reset):
    torch.manual_seed(1)
    c = (torch.randn(5, 3, 4, dtype=torch.float64) * 1.2).requires_grad_()
    w = torch.randn(5, 3, 4, dtype=torch.float64)
    lif = LIF(0.5, 1.0, name, 1.5, detach_reset=detach_reset)
    (lif(c) * w).sum().backward()
    g_fast = c.grad.clone()
    c.grad = None
    ref = lif_reference(c, tau=0.5, v_threshold=1.0, surrogate=surrogates.get(name, 1.5), detach_reset=detach_reset)
    (ref * w).sum().backward()
    torch.testing.assert_close(g_fast, c.grad)
    assert g_fast.abs().sum() > 0


def test_full_jacobian_matches_reference_loop():
    # the whole analytical Jacobian of the fused node equals the reference loop's
    torch.manual_seed(2)
    c = (torch.randn(4, 6, dtype=torch.float64) + 0.8).requires_grad_()
    lif = LIF(surrogate="sigmoid")
    j_fast = torch.autograd.functional.jacobian(lif, c)
    j_ref = torch.autograd.functional.jacobian(
        lambda z: lif_reference(z, surrogate=surrogates.get("sigmoid")), c)
    torch.testing.assert_close(j_fast, j_ref)
    # gradients flow back in time: spikes at t depend on currents at t' < t
    assert j_fast[3, 0, 0, 0].abs() > 0 or j_fast[2, 0, 0, 0].abs() > 0


def test_no_state_between_calls():
    lif = LIF()
    c = torch.full((3, 2), 0.7)
    assert torch.equal(lif(c), lif(c))


@pytest.mark.parametrize("kwargs", [{"tau": 0.0}, {"tau": 1.5}, {"v_threshold": 0.0}])
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        LIF(**kwargs)
