import re

import pytest
import torch
import torch.nn.functional as F

from snn import models
from snn.diagnostics import first_conv

# Basic blocks and channels per stage, and the stem's kernel, of each architecture as the
# papers define it: ResNet-18/34 (He et al. 2016) in the CIFAR form (3x3 stem) and the
# ImageNet form (7x7 stride-2 stem, Table 3); ResNet-19 of tdBN/TET; He et al.'s CIFAR
# ResNet-20 (Dspike's experiments); and the project's small CPU network.
LAYOUTS = {
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), 3),
    "resnet34": ((3, 4, 6, 3), (64, 128, 256, 512), 3),
    "resnet18-imagenet": ((2, 2, 2, 2), (64, 128, 256, 512), 7),
    "resnet34-imagenet": ((3, 4, 6, 3), (64, 128, 256, 512), 7),
    "resnet19": ((3, 3, 2), (128, 256, 512), 3),
    "resnet20": ((3, 3, 3), (16, 32, 64), 3),
    "resnet-tiny": ((1, 1, 1), (16, 32, 64), 3),
}


@pytest.mark.parametrize("arch", models.ARCHS)
def test_every_arch_builds_and_runs(arch):
    torch.manual_seed(0)
    m = models.build(arch, 5, 2)
    n = models.num_stages(arch)
    size = 32 if m.maxpool is not None else 8  # keep the big nets cheap: few classes, tiny inputs
    out = m(torch.randn(2, 3, size, size))
    assert out.main.shape == (2, 5)
    assert len(out.branches) == n - 1 and out.branch_stages == tuple(range(1, n))
    assert all(b.shape == (2, 5) for b in out.branches)


def test_every_arch_has_a_reference_layout():
    assert set(models.ARCHS) == set(LAYOUTS)


@pytest.mark.parametrize("arch", models.ARCHS)
def test_stages_are_the_papers(arch):
    blocks, widths, stem = LAYOUTS[arch]
    m = models.build(arch, 10, 1)
    assert models.num_stages(arch) == len(blocks)
    stages = [getattr(m, f"layer{i}") for i in range(1, len(blocks) + 1)]
    assert [len(s) for s in stages] == list(blocks)
    assert [s[0].conv1.out_channels for s in stages] == list(widths)
    assert m.conv1.kernel_size == (stem, stem)
    assert not hasattr(m, f"layer{len(blocks) + 1}")


def test_resnet_tiny_takes_its_stage_count_from_blocks():
    assert models.num_stages("resnet-tiny", blocks=[1, 1, 1, 1, 1]) == 5


def test_branch_placement():
    assert models.build("resnet18", 10, 1, branches="none").branch_stages == ()
    assert models.build("resnet18", 10, 1, branches=[3, 1]).branch_stages == (1, 3)
    with pytest.raises(ValueError, match=r"branches: stage\(s\) \[4\] not available.*1\.\.3"):
        models.build("resnet18", 10, 1, branches=[4])
    with pytest.raises(ValueError, match="branches"):
        models.build("resnet18", 10, 1, branches=[0])


def test_unknown_arch_and_bad_inputs():
    valid = re.escape(", ".join(models.ARCHS))
    with pytest.raises(ValueError, match=f"^arch: unknown name 'resnet50'; choose one of {valid}$"):
        models.build("resnet50", 10, 2)
    m = models.build("resnet-tiny", 10, 2, in_channels=1)
    with pytest.raises(ValueError, match="expected 1 channels"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\].*\[T, B, C, H, W\]"):
        m(torch.randn(8, 8))


def test_static_input_equals_repeated_frames():
    torch.manual_seed(0)
    m = models.build("resnet-tiny", 10, 3, in_channels=2).eval()
    x = torch.randn(4, 2, 8, 8)
    frames = x.unsqueeze(0).expand(3, *x.shape)  # [T, B, C, H, W]
    a, b = m(x), m(frames)
    torch.testing.assert_close(a.main, b.main)


def test_strip_shortcuts_bit_exact_and_vanilla_param_count():
    torch.manual_seed(0)
    full = models.build("resnet18", 10, 2, branches="all").eval()
    torch.manual_seed(0)
    vanilla = models.build("resnet18", 10, 2, branches="none")
    stripped = models.strip_shortcuts(full)
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(stripped(x), full(x).main)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(stripped) == count(vanilla) < count(full)
    assert not any("shortcuts." in n for n, _ in stripped.named_parameters())
    assert len(full.shortcuts) == 3  # the original is untouched


def test_eq9_shortcut_heads_alone_reach_first_conv():
    # With the main logits detached, only the shortcut heads (Eq. 9) can deliver a gradient to W1.
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    grads = {}
    for branches in ("all", "none"):
        torch.manual_seed(0)
        m = models.build("resnet18", 10, 2, branches=branches, surrogate="sigmoid")
        out = m(x)
        logits = out.main.detach() + 0.25 * sum(out.branches) if out.branches else out.main.detach()
        loss = F.cross_entropy(logits, y)
        if loss.requires_grad:
            loss.backward()
        g = first_conv(m).weight.grad
        grads[branches] = 0.0 if g is None else float(g.norm())
    assert grads["all"] > 0
    assert grads["none"] == 0.0


def test_head_is_eq6_average_over_time_of_the_classifier():
    # b_l(x) = (1/T) sum_t fc(GAP(s_t)) (Eq. 6); the head averages over T before fc, which an
    # affine fc makes equal, and the two-layer head (ResNet-19) keeps the LIF between its layers
    from snn.models import _Head

    torch.manual_seed(9)
    s = (torch.rand(4, 3, 16, 5, 5) > 0.6).float()  # spikes [T, B, C, H, W]
    head = _Head(16, 10)
    per_step = torch.stack([head.fc(s[t].mean(dim=(2, 3))) for t in range(4)]).mean(0)
    torch.testing.assert_close(head(s), per_step)
    deep = _Head(16, 10, hidden=8)
    z = deep.lif(deep.fc1(s.mean(dim=(3, 4))))
    torch.testing.assert_close(deep(s), torch.stack([deep.fc(z[t]) for t in range(4)]).mean(0))


def test_activity_monitor_counts_against_the_layers_own_outputs():
    # firing rate = spikes / (neurons x T) per stage, counted here in float64 from each LIF's
    # output (the operations behind the energy estimate: tests/snn/test_energy.py)
    from snn.diagnostics import ActivityMonitor, stage_of
    from snn.neurons import LIF

    torch.manual_seed(11)
    model = models.build("resnet-tiny", 10, 2, in_channels=1, branches="all").eval()
    spikes, neurons = {}, {}

    def lif_hook(stage):
        def hook(m, args, out):
            spikes[stage] = spikes.get(stage, 0.0) + out.double().sum().item()
            neurons[stage] = neurons.get(stage, 0) + out.numel()
        return hook

    handles = []
    for name, m in model.named_modules():
        if stage_of(name) is not None and isinstance(m, LIF):
            handles.append(m.register_forward_hook(lif_hook(stage_of(name))))
    x = [torch.rand(5, 1, 8, 8) * 3, torch.rand(3, 1, 8, 8) * 3]
    with torch.no_grad(), ActivityMonitor(model) as mon:
        for xb in x:
            model(xb)
    for h in handles:
        h.remove()
    rates = mon.firing_rates()
    assert set(rates) == set(spikes) and any(v > 0 for v in spikes.values())
    for k in spikes:
        assert rates[k] == pytest.approx(spikes[k] / neurons[k], rel=1e-12)
    assert mon.mean_firing_rate() == pytest.approx(sum(spikes.values()) / sum(neurons.values()), rel=1e-12)


def test_head_gradient_is_eq6_s_and_reaches_the_stage_without_a_dense_copy():
    # the head's backward hands its stage the gradient of Eq. 6 as a broadcast view; where the
    # stage output also feeds the next stage, autograd adds it into that gradient in place
    from snn.models import _Head

    torch.manual_seed(10)
    head = _Head(16, 10)
    s = (torch.rand(4, 3, 16, 5, 5) > 0.6).float().requires_grad_()
    s_ref = s.detach().clone().requires_grad_()
    w = torch.randn(3, 10)
    (head(s) * w).sum().backward()
    (torch.stack([head.fc(s_ref[t].mean(dim=(2, 3))) for t in range(4)]).mean(0) * w).sum().backward()
    torch.testing.assert_close(s.grad, s_ref.grad)

    seen = {}
    x = torch.randn(4, 3, 16, 5, 5).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    x.register_hook(lambda g: seen.setdefault("x", g))
    y = x * 2  # a stage output that both a head and the next stage read
    y.register_hook(lambda g: seen.setdefault("y", g))
    head(y).sum().backward(retain_graph=True)
    assert seen["y"].stride()[3:] == (0, 0)  # from the head alone: a view, nothing written
    seen.clear()
    x.grad = None
    z = torch.full_like(y, 3.0)  # channels-last, as a conv's input gradient is in training
    (head(y).sum() + (y * z).sum()).backward()
    torch.testing.assert_close(seen["y"], torch.full_like(y, 3) + head.fc.weight.sum(0)[None, None, :, None, None] / 100)
    assert seen["y"].is_contiguous(memory_format=torch.channels_last_3d)  # the next stage's layout kept


def test_head_under_autocast_keeps_the_rate_in_float32_and_hands_back_a_bfloat16_view():
    # Eq. 6 on bfloat16 spikes under autocast: the spike rate and the logits in float32 (as an
    # exact float32 head computes them), the stage's gradient in the spikes' dtype, still a view
    from snn.models import _Head

    torch.manual_seed(11)
    head = _Head(16, 10)
    s32 = (torch.rand(2, 3, 16, 7, 7) > 0.6).float()
    s = s32.to(torch.bfloat16).requires_grad_()
    seen = {}
    s.register_hook(lambda g: seen.setdefault("s", g))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(s)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, head.fc(s32.mean(dim=(0, 3, 4))))
    out.sum().backward()
    assert seen["s"].dtype == torch.bfloat16 and seen["s"].stride()[3:] == (0, 0)
    torch.testing.assert_close(seen["s"][0, :, :, 0, 0].float(), head.fc.weight.sum(0).expand(3, 16) / 98,
                               rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_head_runs_in_a_model_converted_to_another_dtype(dtype):
    # outside autocast the head computes in its classifier's dtype (a whole model in float64 for a
    # gradient check, or cast to bfloat16), as nn.Linear on the spike rate would
    from snn.models import _Head

    torch.manual_seed(12)
    head = _Head(16, 10).to(dtype)
    s = (torch.rand(2, 3, 16, 5, 5) > 0.5).to(dtype).requires_grad_()
    out = head(s)
    assert out.dtype == dtype
    torch.testing.assert_close(out, head.fc(s.detach().mean(dim=(0, 3, 4))))
    out.sum().backward()
    assert s.grad.dtype == dtype
