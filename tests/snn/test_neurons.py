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


# -- the fused CPU kernels (snn._lif_cpu) against the tensor-op implementation -----------------
from snn import _lif_cpu


def _both_paths(c, w, **kw):
    """Spikes and input gradient from the fused kernels and from the tensor-op path."""
    out = {}
    for fused in (True, False):
        x = c.detach().clone().requires_grad_()
        y = LIF(**kw, fused=fused)(x)
        (y * w).sum().backward()
        out[fused] = (y.detach(), x.grad)
    return out[True], out[False]


def test_fused_kernels_are_used_on_cpu():
    # numba is a dependency: if it stopped loading, the comparisons below would compare a path with itself
    from snn.neurons import _fused_kernels

    assert _lif_cpu.available(torch.zeros(2, 3))
    assert not _lif_cpu.available(torch.zeros(2, 3, dtype=torch.bfloat16))
    assert _fused_kernels(torch.zeros(2, 3)) is _lif_cpu
    assert _fused_kernels(torch.zeros(2, 3), False) is None  # and the switch the comparisons below rely on


@pytest.mark.parametrize("name", surrogates.NAMES)
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("tau", [0.5, 0.8])
def test_fused_matches_tensor_ops_float32(name, detach_reset, tau):
    torch.manual_seed(3)
    c = torch.randn(4, 3, 5000) * 1.5 + 0.3  # more neurons than one kernel block
    w = torch.randn_like(c)
    (ys, gs), (yt, gt) = _both_paths(c, w, tau=tau, surrogate=name, detach_reset=detach_reset)
    assert torch.equal(ys, yt)
    assert 0.05 < ys.mean() < 0.95
    # the kernels evaluate the backward in float64 before rounding; agreement is to float32 precision
    torch.testing.assert_close(gs, gt, rtol=1e-4, atol=1e-5)


def test_fused_keeps_channels_last_layout_and_values():
    torch.manual_seed(4)
    t, b = 3, 4
    cl = (torch.randn(t * b, 8, 5, 5) + 0.7).contiguous(memory_format=torch.channels_last)
    c = cl.view(t, b, 8, 5, 5)  # T folded out of a channels-last batch, as in the models
    w = torch.randn(t, b, 8, 5, 5)  # a contiguous upstream gradient: other strides than the input
    (ys, gs), (yt, gt) = _both_paths(c, w)
    assert ys.stride() == c.stride()
    assert torch.equal(ys, yt)
    torch.testing.assert_close(gs, gt)


def test_fused_handles_non_dense_input():
    torch.manual_seed(5)
    base = torch.randn(4, 6, 10) + 0.6
    c = base[:, :, ::2]  # strided: not one slab per step
    assert not _lif_cpu.dense_time_major(c)
    w = torch.randn(4, 6, 5)
    (ys, gs), (yt, gt) = _both_paths(c, w)
    assert torch.equal(ys, yt)
    torch.testing.assert_close(gs, gt)


def test_fused_expanded_channels_last_input_gives_channels_last_spikes():
    # A static image's stem output, computed once and expanded over T (stride 0): the spikes keep
    # each step channels-last, so the next channels-last convolution needs no reorder (both paths:
    # the fused kernels and the tensor ops that CUDA uses).
    torch.manual_seed(6)
    y0 = (torch.randn(4, 8, 5, 5) + 0.7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 4, 8, 5, 5)
    out = {}
    for fused in (True, False):
        y = y0.clone().requires_grad_()
        c = y.unsqueeze(0).expand(3, *y.shape)
        assert not _lif_cpu.dense_time_major(c)
        s = LIF(fused=fused)(c)
        (s * w).sum().backward()
        assert s.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)  # T folded into B: a view
        out[fused] = (s.detach(), y.grad)
    (ys, gs), (yt, gt) = out[True], out[False]
    assert torch.equal(ys, yt)
    torch.testing.assert_close(gs, gt)


def test_fused_rounds_the_potential_to_float32_before_the_threshold():
    # u_pre(1) = 0.5 * 0.75 + (0.625 + 2**-24) = 1 + 2**-24 exactly, which rounds to 1.0 in float32:
    # float32 arithmetic (the tensor ops, and torch everywhere) does not fire; float64 would.
    c = torch.tensor([0.75, 0.625 + 2.0**-24], dtype=torch.float32).view(2, 1)
    assert c[1].item() == 0.625 + 2.0**-24  # representable
    assert LIF()(c).view(-1).tolist() == [0.0, 0.0]
    assert LIF()(c.double()).view(-1).tolist() == [0.0, 1.0]


def test_torch_compile_traces_the_tensor_ops_and_matches_eager():
    # dynamo cannot trace into numba's kernels (it failed inside the kernel call): under
    # torch.compile the LIF takes its tensor-op path, which gives the eager fused kernels' result
    torch._dynamo.reset()
    torch.manual_seed(5)
    c = torch.randn(3, 4, 2000) * 1.5 + 0.3
    w = torch.randn_like(c)
    lif = LIF(surrogate="atan", surrogate_param=2.0)
    out = {}
    for name, f in (("eager", lif), ("compiled", torch.compile(lif, backend="aot_eager", fullgraph=True))):
        x = c.clone().requires_grad_()
        y = f(x)
        (y * w).sum().backward()
        out[name] = (y.detach(), x.grad)
    assert torch.equal(out["compiled"][0], out["eager"][0])
    torch.testing.assert_close(out["compiled"][1], out["eager"][1], rtol=1e-4, atol=1e-5)


# -- the fused GPU kernels (snn._lif_cuda, Triton) ----------------------------------------------
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.slow  # a fresh interpreter: a subprocess
def test_cpu_training_does_not_import_triton():
    # Triton is only needed for CUDA tensors; a CPU trial actor should not pay for its import
    code = ("import sys, torch; from snn.neurons import LIF; x = torch.randn(2, 3, requires_grad=True); "
            "LIF()(x).sum().backward(); assert 'triton' not in sys.modules, 'triton imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.slow  # a fresh interpreter: numba starts its thread pool once per process
def test_fused_cpu_kernels_leave_torch_s_thread_count_alone():
    # numba's OpenMP pool shares torch's libgomp, and starting it sets the calling thread's OpenMP
    # count to the pool's size: the kernels put torch's count back, so a trial given one CPU stays on one
    code = ("import torch; torch.set_num_threads(1); from snn.neurons import LIF; "
            "x = torch.randn(2, 3, 1000, requires_grad=True); LIF()(x).sum().backward(); "
            "assert torch.get_num_threads() == 1, torch.get_num_threads()")
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}  # a pool larger than torch's count
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow  # a subprocess (Triton reads TRITON_INTERPRET at import)
def test_triton_kernels_match_tensor_ops_in_interpreter():
    # The same kernels, run on the CPU by Triton's interpreter, against the tensor-op path and
    # lif_reference: every surrogate, both reset modes, a masked tail block, bfloat16, layout.
    triton = pytest.importorskip("triton")
    if tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 8):
        pytest.skip("Triton's interpreter before 3.8 fails on these kernels (seen with 3.6, which compiles them)")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "snn" / "lif_cuda_check.py")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # every surrogate x both reset modes x two shapes
    assert f"ok: {len(surrogates.NAMES) * 2 * 2} float32 cases" in out.stdout


@cuda
def test_fused_kernels_are_used_on_cuda():
    from snn import _lif_cuda
    from snn.neurons import _fused_kernels

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert _fused_kernels(torch.zeros(2, 3, device="cuda", dtype=dtype)) is _lif_cuda


@cuda
@pytest.mark.parametrize("name", surrogates.NAMES)
@pytest.mark.parametrize("detach_reset", [False, True])
def test_cuda_fused_matches_tensor_ops_and_reference_float32(name, detach_reset):
    torch.manual_seed(7)
    c = torch.randn(4, 3, 5000, device="cuda") * 1.5 + 0.3
    w = torch.randn_like(c)
    (ys, gs), (yt, gt) = _both_paths(c, w, surrogate=name, detach_reset=detach_reset)
    assert torch.equal(ys, yt) and 0.05 < ys.mean() < 0.95
    torch.testing.assert_close(gs, gt, rtol=1e-4, atol=1e-5)
    x = c.clone().requires_grad_()
    (lif_reference(x, surrogate=surrogates.get(name), detach_reset=detach_reset) * w).sum().backward()
    torch.testing.assert_close(gs, x.grad, rtol=1e-4, atol=1e-5)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_fused_half_precision_fires_as_tensor_ops(dtype):
    # the potential is rounded to the tensors' dtype before the threshold in both paths
    torch.manual_seed(8)
    t, b = 4, 16
    c = (torch.randn(t * b, 32, 8, 8, device="cuda") * 1.5 + 0.5).to(dtype)
    c = c.contiguous(memory_format=torch.channels_last).view(t, b, 32, 8, 8)
    w = torch.randn(t, b, 32, 8, 8, device="cuda", dtype=dtype)
    (ys, gs), (yt, gt) = _both_paths(c, w, surrogate="atan", surrogate_param=2.0)
    assert ys.dtype == dtype and ys.stride() == c.stride()
    assert torch.equal(ys, yt)
    # backward carries dL/du_pre in float32 where the tensor ops round it at every step
    torch.testing.assert_close(gs.float(), gt.float(), rtol=3e-2, atol=3e-2)
