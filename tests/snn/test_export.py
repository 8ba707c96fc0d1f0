"""NIR export of a stripped spiking ResNet (snn/export.py): BatchNorm folding, the neuron
parameters against Eq. 1-2, the graph's structure as ``nir.read`` gives it back, the errors, and
the graph run by an independent simulator (snnTorch's NIR importer, a test dependency)."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snn import models
from snn.export import DT, fold_batchnorm, lif_node, to_nir, write_nir
from snn.neurons import LIF, lif_reference


def _trained_like(net: models.SpikingResNet, seed: int = 0) -> models.SpikingResNet:
    """``net`` in eval mode with BatchNorm statistics and affine parameters away from their
    initial identity, as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.7 - 0.2)
    return net.eval()


@pytest.mark.parametrize("bias", [False, True])
def test_folded_batchnorm_is_the_convolution_then_the_batchnorm(bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=bias)
    bn = torch.nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.1, 3)
    bn.weight.data.uniform_(-2, 2)
    bn.bias.data.uniform_(-1, 1)
    bn.eval()
    weight, bias_ = fold_batchnorm(conv, bn)
    assert weight.dtype == bias_.dtype == np.float32 and weight.shape == (8, 3, 3, 3) and bias_.shape == (8,)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = bn.double()(conv.double()(x))  # the unfolded layers, in float64
    got = F.conv2d(x, torch.from_numpy(weight).double(), torch.from_numpy(bias_).double(), stride=2, padding=1)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)  # float32 parameters: rounded once


@pytest.mark.parametrize("beta", [0.05, 0.3, 0.5, 0.9, 0.97])
@pytest.mark.parametrize("threshold", [0.4, 1.0, 2.5])
def test_a_forward_euler_step_of_the_lif_node_is_eq_1_2(beta, threshold):
    """NIR's LIF, tau dv/dt = (v_leak - v) + R I, stepped by forward Euler with dt:
    v <- (1 - dt/tau) v + (R dt/tau) I, must be u <- beta u + c with the layer's threshold and a
    reset to 0. In float32, the dtype the layer computes in, the decay 1 - dt/tau is beta to the last
    bit for beta >= 0.5; below, 1 - x lies on a grid of 2^-24, and the decay is the nearest point."""
    node = lif_node(LIF(beta, threshold), (2, 3))
    assert isinstance(node, nir.LIF)
    for p in (node.tau, node.r, node.v_leak, node.v_threshold, node.v_reset):
        assert p.shape == (2, 3) and p.dtype == np.float32
    decay = np.float32(1) - np.float32(DT) / node.tau
    if beta >= 0.5:
        assert np.all(decay == np.float32(beta))
    assert np.all(np.abs(decay.astype(np.float64) - beta) <= 2.0**-25)
    assert np.allclose(node.r * DT / node.tau, 1.0, rtol=1e-6)
    assert np.all(node.v_leak == 0) and np.all(node.v_reset == 0) and np.all(node.v_threshold == np.float32(threshold))
    # the Euler recursion with these numbers, against the project's reference loop of Eq. 1-2
    current = torch.rand(16, 2, 3, generator=torch.Generator().manual_seed(1)) * 2 * threshold
    v, spikes = np.zeros((2, 3), np.float32), []
    for c in current.numpy():
        v = decay * v + c
        z = v > node.v_threshold
        v = np.where(z, node.v_reset, v)
        spikes.append(z)
    assert np.array_equal(np.stack(spikes), lif_reference(current, tau=beta, v_threshold=threshold).numpy() > 0)


def test_a_neuron_without_leak_is_an_if_node():
    """tau = 1 (no leak) is NIR's IF neuron, dv/dt = R I: a forward-Euler step adds R dt I = I."""
    node = lif_node(LIF(1.0, 0.8), (4,))
    assert isinstance(node, nir.IF)
    assert np.allclose(node.r * DT, 1.0) and np.all(node.v_threshold == np.float32(0.8)) and np.all(node.v_reset == 0)


def _lif_names(net: models.SpikingResNet) -> set[str]:
    return {name for name, m in net.named_modules() if isinstance(m, LIF)}


@pytest.mark.parametrize("head_hidden", [None, 12])
def test_the_graph_reads_back_with_lif_nodes_residual_edges_and_no_batchnorm(tmp_path, head_hidden):
    net = _trained_like(models.build("resnet-tiny", 10, 3, in_channels=1, branches="all", head_hidden=head_hidden,
                                     tau=0.6, v_threshold=0.9))
    write_nir(models.strip_shortcuts(net), tmp_path / "m.nir", [1, 8, 8])
    g = nir.read(tmp_path / "m.nir")
    kinds = {name: type(node).__name__ for name, node in g.nodes.items()}
    assert set(kinds.values()) == {"Input", "Conv2d", "LIF", "SumPool2d", "Flatten", "Affine", "Output"}
    assert not any("norm" in k.lower() for k in kinds.values())
    assert {n for n, k in kinds.items() if k == "LIF"} == _lif_names(net)  # no shortcut head left
    assert {n for n, k in kinds.items() if k == "Conv2d"} == {"conv1", "layer1.0.conv1", "layer1.0.conv2",
                                                             "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample",
                                                             "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample"}
    inputs = {n: sorted(a for a, b in g.edges if b == n) for n in g.nodes}
    # residual additions: the block's second LIF sums its conv2 and the shortcut
    assert inputs["layer1.0.lif2"] == ["layer1.0.conv2", "lif1"]  # identity shortcut
    assert inputs["layer2.0.lif2"] == ["layer2.0.conv2", "layer2.0.downsample"]
    assert inputs["layer2.0.downsample"] == ["layer1.0.lif2"]
    assert inputs["head.pool"] == ["layer3.0.lif2"] and inputs["output"] == ["head.fc"]
    assert inputs["head.fc"] == (["head.lif"] if head_hidden else ["head.flatten"])
    assert inputs.get("head.fc1") == (["head.flatten"] if head_hidden else None)
    # BatchNorm is in the convolutions: the stem's folded weight and bias
    w, b = fold_batchnorm(net.conv1, net.bn1)
    assert np.array_equal(g.nodes["conv1"].weight, w) and np.array_equal(g.nodes["conv1"].bias, b)
    # global average pooling: a sum over the last stage's 2 x 2 map of an 8 x 8 digit, its 1/4 in the weights
    assert list(g.nodes["head.pool"].kernel_size) == [2, 2] and list(g.nodes["head.pool"].stride) == [2, 2]
    first = net.head.fc1 if head_hidden else net.head.fc
    assert np.array_equal(g.nodes["head.fc1" if head_hidden else "head.fc"].weight, first.weight.detach().numpy() / 4)
    assert np.array_equal(g.nodes["head.fc"].bias, net.head.fc.bias.detach().numpy())
    assert list(g.nodes["output"].output_type["output"]) == [10]
    assert int(g.metadata["timesteps"]) == 3 and float(g.metadata["dt"]) == DT
    assert "analog image" in str(g.metadata["input_encoding"]) and "mean of the output" in str(g.metadata["readout"])


def test_the_imagenet_stems_max_pooling_is_refused_in_one_line():
    net = models.build("resnet18-imagenet", 10, 2, branches="none").eval()
    with pytest.raises(ValueError) as e:
        to_nir(models.strip_shortcuts(net), [3, 32, 32])
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("maxpool (the imagenet stem's 3x3 max-pooling): NIR has no max-pooling node")
    assert "arch_kwargs stem: cifar" in message and "resnet18," in message


def test_other_models_and_shapes_are_refused():
    with pytest.raises(ValueError, match="model: NIR export takes a SpikingResNet"):
        to_nir(torch.nn.Linear(3, 3), [3, 8, 8])
    net = models.build("resnet-tiny", 10, 2, in_channels=1).eval()
    with pytest.raises(ValueError, match=r"input_shape: expected \[C, H, W\] with C = 1, got \[3, 8, 8\]"):
        to_nir(net, [3, 8, 8])
    with pytest.raises(ValueError, match="kind: unknown input kind 'audio'"):
        to_nir(net, [1, 8, 8], kind="audio")


def _exactly_foldable(net: models.SpikingResNet, seed: int) -> models.SpikingResNet:
    """``net`` in eval mode with BatchNorm scales that are powers of two and no shift: folded into
    the convolution, it rounds exactly as the convolution then the BatchNorm do."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.eps = 0.0
            m.running_var.copy_(4.0 ** torch.randint(-1, 2, (n,), generator=g).float())
            m.weight.data.copy_(2.0 ** torch.randint(-1, 2, (n,), generator=g).float())
            m.running_mean.zero_()
            m.bias.data.zero_()
    return net.eval()


@pytest.mark.parametrize("head_hidden, tau, frames", [(None, 0.5, False), (12, 0.3, False), (None, 0.8, True)])
def test_snntorch_runs_the_exported_graph_exactly_as_the_project_runs_the_network(head_hidden, tau, frames):
    """snnTorch's NIR importer, an independent simulator, gives the stripped network's logits and
    every layer's spikes of every sample. With BatchNorm that folds without rounding, nothing but
    the order of float sums differs: the spikes are the same, the logits equal to float32 rounding.
    (A trained network's folded BatchNorm rounds differently: tests/study/test_export_cli.py.)"""
    pytest.importorskip("snntorch")
    from nir_sim import import_snntorch, run_project, run_snntorch

    t = 4
    torch.manual_seed(3)
    net = _exactly_foldable(models.build("resnet-tiny", 10, t, in_channels=1, branches="all",
                                         head_hidden=head_hidden, tau=tau, v_threshold=0.7), seed=3)
    if head_hidden:
        net.head.fc1.weight.data *= 8  # so that the hidden LIF of the head fires
    stripped = models.strip_shortcuts(net)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(t, 24, 1, 8, 8, generator=g) * 2 if frames else torch.rand(24, 1, 8, 8, generator=g) * 2
    graph = to_nir(stripped, [1, 8, 8], kind="frames" if frames else "static")
    theirs = run_snntorch(import_snntorch(graph), x, t, frames=frames)
    ours = run_project(stripped, x)
    assert set(theirs.spikes) == set(ours.spikes) == _lif_names(net)
    for name, count in ours.spikes.items():
        assert count.sum() > 100, name  # every layer fires: the comparison means something
        assert torch.equal(theirs.spikes[name], count), name
    assert torch.allclose(theirs.logits, ours.logits, rtol=0, atol=1e-6)
