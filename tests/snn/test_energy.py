"""The energy estimate of one inference (snn.energy) and the counts behind it, checked against a
count that does not use snn.diagnostics: the test's own hooks record every layer's input, and
the synaptic operations are counted by enumerating, for each input position, the output
positions that read it (SOPs = Σ spikes × fan-out); MACs are written out by hand."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from snn.config import TrainConfig
from snn.diagnostics import ActivityMonitor
from snn.energy import PRESETS, Energy, energy_uj
from snn.models import NeuronConfig, SpikingResNet


def _fanout_by_enumeration(conv: nn.Conv2d, h_in: int, w_in: int) -> list[list[int]]:
    """How many output positions read each input position, by trying every output position and
    kernel offset."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    h_out = (h_in + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    count = [[0] * w_in for _ in range(h_in)]
    for oh, ow, i, j in itertools.product(range(h_out), range(w_out), range(kh), range(kw)):
        h, w = oh * sh - ph + i * dh, ow * sw - pw + j * dw
        if 0 <= h < h_in and 0 <= w < w_in:
            count[h][w] += 1
    return count


def _independent_count(model: SpikingResNet, batches: list[torch.Tensor]) -> tuple[float, float, int]:
    """(SOPs, MACs, spikes) per image of the inference model (no shortcut heads), from the
    layers' inputs as the test's own hooks see them."""
    stem = model.conv1
    seen: list[tuple[nn.Module, torch.Tensor, torch.Size]] = []
    handles = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[0].detach().double(), out.shape)))
               for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.startswith("shortcuts")]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    sops = macs = spikes = 0.0
    for m, x, out in seen:
        binary = bool(((x == 0) | (x == 1)).all())
        if isinstance(m, nn.Linear):
            if binary:
                sops += float(x.sum()) * m.out_features
            else:
                macs += x.numel() * m.out_features
            continue
        fan = torch.tensor(_fanout_by_enumeration(m, x.shape[2], x.shape[3]), dtype=torch.float64)
        if m is stem or not binary:
            macs += out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            spikes += float(x.sum())
            sops += float((x.sum(dim=(0, 1)) * fan).sum()) * m.out_channels
    images = sum(int(x.shape[0]) for x in batches)
    return sops / images, macs / images, int(spikes)


def _net(**kw) -> SpikingResNet:
    torch.manual_seed(5)
    # stage 1: an identity residual block; stage 2: stride 2, with a 1x1 downsample conv; a shortcut
    # head on stage 1, which inference does not run
    return SpikingResNet([1, 1], [4, 8], 3, timesteps=3, in_channels=1, branches=[1],
                         neuron=NeuronConfig(v_threshold=0.4), **kw).eval()


@pytest.mark.parametrize("hidden", [None, 5])
def test_sops_and_macs_match_a_count_by_enumeration_on_a_residual_network(hidden):
    model = _net(head_hidden=hidden)
    batches = [torch.rand(6, 1, 8, 8) * 2, torch.rand(4, 1, 8, 8) * 2]
    sops, macs, spikes = _independent_count(model, batches)
    assert spikes > 0 and sops > 0  # spikes reach every spike-reading layer, borders included
    with torch.no_grad(), ActivityMonitor(model) as mon:
        for x in batches:
            model(x)
    assert mon.synops_per_image() == pytest.approx(sops, rel=1e-9)
    assert mon.macs_per_image() == pytest.approx(macs, rel=1e-9)
    # by hand: the stem, 3x3 pad 1 on 8x8x1 to 8x8x4, runs once on a static image (models.py);
    # the classifier reads averaged spikes: 8x3 MACs, or with a hidden layer 8x5 per step (T=3)
    # and then spikes (SOPs)
    stem = 8 * 8 * 4 * 1 * 9
    head = 8 * 3 if hidden is None else 3 * 8 * 5
    assert mon.stem_macs_per_image() == stem
    assert mon.macs_per_image() == stem + head
    # the same network without spikes, one step: stem; stage 1: two 3x3 4->4 convs on 8x8; stage 2:
    # 3x3 4->8 stride 2 on 4x4 outputs, 3x3 8->8 on 4x4, the 1x1 downsample 4->8 on 4x4; the head
    dense = (stem + 2 * 64 * 4 * 4 * 9 + 16 * 8 * 4 * 9 + 16 * 8 * 8 * 9 + 16 * 8 * 4
             + (8 * 3 if hidden is None else 8 * 5 + 5 * 3))
    assert mon.dense_macs_per_image() == dense


def test_a_border_spike_reaches_fewer_synapses_than_a_central_one():
    """With zero padding a corner input of a 3x3 conv feeds 4 output positions, a central one 9;
    stride 2 leaves some inputs feeding fewer still: SOPs count each spike's own fan-out."""
    for stride, corner, centre in ((1, 4, 9), (2, 1, 4)):
        conv = nn.Conv2d(1, 2, 3, stride, 1, bias=False)
        model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), conv)  # the first conv is the stem
        model[0].weight.data.fill_(1.0)
        for pos, expected in (((0, 0), corner), ((3, 3), centre)):
            x = torch.zeros(1, 1, 7, 7)
            x[0, 0, pos[0], pos[1]] = 1.0
            with torch.no_grad(), ActivityMonitor(model) as mon:
                model(x)
            assert mon.synops_per_image() == expected * 2, (stride, pos)


def test_energy_is_e_mac_times_macs_plus_e_ac_times_sops():
    model = _net()
    x = torch.rand(4, 1, 8, 8) * 2
    with torch.no_grad(), ActivityMonitor(model) as mon:
        model(x)
    for name, costs in PRESETS.items():
        expected = (costs.mac_pj * mon.macs_per_image() + costs.ac_pj * mon.synops_per_image()) * 1e-6
        assert mon.energy_uj(costs) == pytest.approx(expected, rel=1e-12), name
        assert mon.dense_energy_uj(costs) == pytest.approx(costs.mac_pj * mon.dense_macs_per_image() * 1e-6)
    # Horowitz (ISSCC 2014), 45 nm: a 32-bit float MAC is a 3.7 pJ multiply and a 0.9 pJ add
    assert (PRESETS["45nm-fp32"].mac_pj, PRESETS["45nm-fp32"].ac_pj) == pytest.approx((4.6, 0.9))
    assert energy_uj(1e6, 1e6, Energy(mac_pj=2.0, ac_pj=0.5).costs()) == pytest.approx(2.5)


@pytest.mark.parametrize("energy, message", [
    ({"preset": "7nm"}, "energy.preset: unknown preset '7nm'; allowed: 45nm-fp32, 45nm-fp16, 45nm-int32, 45nm-int8"),
    ({"mac_pj": -1.0, "ac_pj": 0.1}, "energy.mac_pj: Input should be greater than 0, got -1.0"),
    ({"mac_pj": 1.0}, "energy.ac_pj: your own energies need both mac_pj and ac_pj"),
    ({"preset": "45nm-int8", "ac_pj": 0.1}, "energy.ac_pj: give a preset or your own mac_pj and ac_pj, not both"),
])
def test_a_bad_energy_setting_names_its_field(energy, message):
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict({"energy": energy})
    assert str(e.value) == message
