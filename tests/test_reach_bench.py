"""The reach benchmark's classification of nonlinearities (benchmarks/reach.py, reach_models.py), on toy
models: the benchmark itself needs timm / torchvision and runs outside CI."""

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import reach  # noqa: E402
import reach_models as rm  # noqa: E402


def test_activation_names_do_not_confuse_relu_with_elu():
    assert reach.activations_in("call_module ReLU") == set()
    assert reach.activations_in("aten.leaky_relu_.default") == set()
    assert reach.activations_in("aten.elu.default") == {"elu"}
    assert reach.activations_in("call_module Swish") == {"silu"}
    assert reach.activations_in("aten._softmax.default") == {"softmax"}
    assert "hardsigmoid" in reach.activations_in("hard_sigmoid")
    assert reach.activations_in("GELUTanh") == {"gelu"}  # the tanh approximation of GELU
    # per-sample normalisation blocks like an activation; batch norm does not
    assert reach.activations_in("GroupNorm has no spiking equivalent") == {"groupnorm"}
    assert reach.activations_in("aten.native_layer_norm.default") == {"layernorm"}
    assert reach.activations_in("aten.batch_norm.default BatchNormAct2d") == set()
    assert rm.module_nonlinearities(nn.Sequential(nn.Conv2d(3, 4, 1), nn.GroupNorm(2, 4), nn.ReLU())) == (
        ["ReLU"], ["GroupNorm"])


class _Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        return y * torch.sigmoid(y.mean((2, 3), keepdim=True))  # functional: invisible to the modules


def test_modules_and_exported_ops_both_classify():
    model = _Gate().eval()
    relu, other = rm.module_nonlinearities(model)
    assert relu == ["LeakyReLU"] and other == []
    ep, mode, _ = rm.export_model(model, torch.randn(2, 3, 8, 8))
    ops = rm.graph_ops(ep)
    assert mode == "dynamic"
    assert ops["aten.conv2d.default"] == 1
    assert rm.nonrelu_ops(ops) == ["sigmoid"]
    relu, other = rm.module_nonlinearities(nn.Sequential(nn.Conv2d(3, 3, 1), nn.SiLU(), nn.ReLU6()))
    assert relu == ["ReLU6"] and other == ["SiLU"]


def test_randomised_batchnorm_is_exercised():
    model = _Gate()
    assert reach.randomise_batchnorm(model) == 1
    assert not torch.allclose(model.bn.running_var, torch.ones(4))
    assert (model.bn.running_var >= 0.5).all()
