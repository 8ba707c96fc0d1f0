"""The energy estimate of one inference (snn.energy) and the counts behind it, checked against a
count that does not use snn.diagnostics: the test's own hooks keep every LIF's output and every
layer's input (a layer reads spikes when its input shares memory with a LIF's output), and the
synaptic operations are counted by enumerating, for each input position, the output positions
that read it (SOPs = Σ spikes × fan-out); MACs are written out by hand."""

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
    from snn.neurons import LIF

    stem = model.conv1
    seen: list[tuple[nn.Module, torch.Tensor, torch.Size, bool]] = []
    lif_out: list[torch.Tensor] = []  # spikes, kept alive: no other tensor takes their memory meanwhile
    spike_memory: set[int] = set()

    def spikes_out(m, args, out):
        if isinstance(m, LIF) or args[0].untyped_storage().data_ptr() in spike_memory:  # a max-pool of spikes
            lif_out.append(out.detach())
            spike_memory.add(out.untyped_storage().data_ptr())

    def layer(m, args, out):
        seen.append((m, args[0].detach(), out.shape, args[0].untyped_storage().data_ptr() in spike_memory))

    handles = [m.register_forward_hook(layer) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and not name.startswith("shortcuts")]
    handles += [m.register_forward_hook(spikes_out) for name, m in model.named_modules()
                if isinstance(m, (LIF, nn.MaxPool2d)) and not name.startswith("shortcuts")]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    assert all(bool(((t == 0) | (t == 1)).all()) for t in lif_out)  # a LIF fires 0 or 1
    sops = macs = spikes = 0.0
    for m, x, out, read_spikes in seen:
        reads_spikes = m is not stem and read_spikes
        x = x.double()
        if isinstance(m, nn.Linear):
            if reads_spikes:
                sops += float(x.sum()) * m.out_features
            else:
                macs += x.numel() * m.out_features
            continue
        if not reads_spikes:
            macs += out.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
        else:
            fan = torch.tensor(_fanout_by_enumeration(m, x.shape[2], x.shape[3]), dtype=torch.float64)
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


class _OneSpike(nn.Module):
    """A 1x1 stem, a LIF that fires where the image is 1, and a 3x3 conv reading its spikes."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        from snn.neurons import LIF

        self.stem = nn.Conv2d(1, 1, 1, bias=False)
        self.stem.weight.data.fill_(1.0)
        self.lif = LIF(v_threshold=0.5)
        self.conv = nn.Conv2d(1, 2, 3, stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.lif(self.stem(x).unsqueeze(0))  # [T=1, B, 1, H, W]
        return self.conv(s.flatten(0, 1))


def test_an_imagenet_stems_max_pool_passes_spikes_on():
    """The max of spikes is a spike: the first block after the ImageNet stem's max-pool reads
    spikes (SOPs); only the stem and the classifier are MACs."""
    torch.manual_seed(6)
    model = SpikingResNet([1, 1], [4, 8], 3, timesteps=2, in_channels=1, stem="imagenet",
                          neuron=NeuronConfig(v_threshold=0.4)).eval()
    batches = [torch.rand(3, 1, 16, 16) * 2]
    sops, macs, spikes = _independent_count(model, batches)
    with torch.no_grad(), ActivityMonitor(model) as mon:
        model(batches[0])
    assert spikes > 0 and mon.synops_per_image() == pytest.approx(sops, rel=1e-9)
    assert mon.macs_per_image() == macs == 8 * 8 * 4 * 1 * 49 + 8 * 3  # the 7x7 stride-2 stem on 16x16, the head


def test_a_border_spike_reaches_fewer_synapses_than_a_central_one():
    """With zero padding a corner input of a 3x3 conv feeds 4 output positions, a central one 9;
    stride 2 leaves some inputs feeding fewer still: SOPs count each spike's own fan-out."""
    for stride, corner, centre in ((1, 4, 9), (2, 1, 4)):
        model = _OneSpike(stride).eval()
        for pos, expected in (((0, 0), corner), ((3, 3), centre)):
            x = torch.zeros(1, 1, 7, 7)
            x[0, 0, pos[0], pos[1]] = 1.0
            with torch.no_grad(), ActivityMonitor(model) as mon:
                model(x)
            assert mon.firing_rates() == {"stem": 1 / 49}
            assert mon.synops_per_image() == expected * 2, (stride, pos)


def test_a_layer_that_reads_no_spikes_is_counted_in_macs_whatever_its_values():
    """What a layer reads decides, not its values: the same conv reading the stem's output
    directly (analog, here 0 or 1 too) does a multiply-accumulate per synapse."""
    model = _OneSpike(1).eval()
    model.forward = lambda x: model.conv(model.stem(x))  # the LIF skipped
    x = torch.zeros(1, 1, 7, 7)
    x[0, 0, 3, 3] = 1.0
    with torch.no_grad(), ActivityMonitor(model) as mon:
        model(x)
    assert mon.synops_per_image() == 0 and mon.macs_per_image() == 49 * 1 + 49 * 2 * 9


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


@pytest.mark.parametrize("shape", [(2, 3, 300, 5, 4), (6, 300, 5, 4), (2, 3, 300)])
def test_spikes_summed_per_position_in_half_precision_are_exact(shape):
    """bfloat16 holds integers up to 256 only: its channel sums go 256 channels at a time."""
    from snn.diagnostics import _spikes_per_position

    spikes = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.3).float()
    expected = spikes.double().sum(dim=tuple(range(len(shape) - 2))) if len(shape) >= 4 else spikes.double().sum()
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        got = _spikes_per_position(spikes.to(dtype))
        assert got.dtype == torch.float32 and torch.equal(got.double(), expected), dtype
