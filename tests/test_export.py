"""Export and import: NIR graphs (round trip, semantics checked by an independent simulator), the
portable JSON + safetensors format, and reading ONNX models."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.data.datasets import load_digits
from ann2snn.export.ir import ExportError, Op, build, lower
from ann2snn.export.portable import load_portable, read_safetensors, save_portable, write_safetensors
from ann2snn.zoo import create_model

nir = pytest.importorskip("nir")
from ann2snn.export.nir import export_nir, import_nir, to_nir  # noqa: E402
from ann2snn.export.nir_sim import NIRSimulator  # noqa: E402

ZOO = ["mlp_digits", "cnn_digits", "vgg_digits", "resnet_digits", "mobilenet_digits"]
T = 8


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits("train"), load_digits("test")
    return train.x[:256], test.x[:48]


_converted: dict = {}


def converted(name, digits, **kw):
    key = (name, tuple(sorted(kw.items())))
    if key not in _converted:
        torch.manual_seed(0)
        kw = {"threshold": "max", **kw}  # fast calibration: what is exported does not depend on the method
        _converted[key] = ann2snn.convert(create_model(name, pretrained=True), digits[0].split(128), timesteps=T,
                                          progress=False, **kw)
    return _converted[key]


def neuron_op(theta, cap=1, v0=0.5, shape=None, offset=None, bias=None):
    theta = torch.as_tensor(theta, dtype=torch.float32)
    shape = shape or (theta.numel(),)
    return Op("n", "neuron", ["x"], shape, {"cap": cap, "v0": v0, "clip": None, "layer": "n"},
              {"threshold": theta, "v0_offset": torch.zeros_like(theta) if offset is None else offset,
               "bias_shift": torch.zeros_like(theta) if bias is None else bias})


# -- NIR -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_nir_round_trip_is_identical_on_the_zoo(name, digits, tmp_path):
    snn = converted(name, digits)
    path = ann2snn.export_nir(snn, tmp_path / f"{name}.nir", maxpool="extension")
    graph = nir.read(path)  # the standard reader, with its type checks
    assert graph.metadata["ann2snn_format"] == "ann2snn-nir"
    neurons = [n for n in graph.nodes.values() if isinstance(n, nir.NIRGraph) and n.metadata["ann2snn_op"] == "neuron"]
    assert len(neurons) == len(snn.neurons())
    assert all(n.metadata["reset"] == "subtract" for n in neurons)
    back = import_nir(graph)
    x = digits[1]
    assert torch.equal(back.run(x, T), snn.run(x, T))
    assert back.config == snn.config
    assert back.info["layers"] == json.loads(json.dumps(snn.info["layers"], default=str))
    assert [n.name for n in back.neurons().values()] == [n.name for n in snn.neurons().values()]


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "resnet_digits", "mobilenet_digits"])
def test_exported_graph_itself_computes_the_snn(name, digits):
    """A NIR simulator that ignores ann2snn's metadata runs the exact encoding to the same outputs."""
    snn = converted(name, digits)
    x = digits[1]
    ours, theirs = snn.run(x, T), NIRSimulator(to_nir(snn)).run(x, T)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_burst_neuron_subgraph_hand_computed():
    # theta = (1, 0.5), v0 = 0.5, cap 3, input (2.3, 0.2):
    # ch0: v 0.5 -> 2.8: 2 spikes (v 0.8) -> 3.1: 3 spikes (v 0.1) -> 2.4: 2 spikes
    # ch1: v 0.25 -> 0.45: 0 -> 0.65: 1 spike (v 0.15) -> 0.35: 0
    snn = build([Op("x", "input", [], (2,)), neuron_op([1.0, 0.5], cap=3), Op("output", "output", ["n"], (2,))])
    graph = to_nir(snn)
    sub = graph.nodes["n"]
    assert sorted(k for k in sub.nodes if k.startswith("threshold")) == ["threshold_1", "threshold_2", "threshold_3"]
    expected = [[2.0, 0.0], [3.0, 0.5], [2.0, 0.0]]
    x = torch.tensor([[2.3, 0.2]])
    sim = NIRSimulator(graph)
    snn.reset()
    for want in expected:
        assert torch.allclose(snn.step(x), torch.tensor([want]))
        assert torch.allclose(sim.step(x), torch.tensor([want]))
    # an IF node cannot burst: refused, with the way out
    with pytest.raises(ExportError, match="(?s)burst neuron.*neuron_model='exact'"):
        to_nir(snn, neuron_model="if")


def test_equal_to_threshold_fires_like_ann2snn():
    # v0 = 0 and input exactly theta: ann2snn fires (v >= theta); NIR compares v > threshold,
    # so the exported threshold sits one float32 step below
    snn = build([Op("x", "input", [], (1,)), neuron_op([0.75], v0=0.0), Op("output", "output", ["n"], (1,))])
    x = torch.tensor([[0.75]])
    assert snn.run(x, 4).item() == 0.75
    assert NIRSimulator(to_nir(snn)).run(x, 4).item() == 0.75


def test_if_mode_states_the_difference_and_round_trips(digits, tmp_path):
    snn = converted("resnet_digits", digits)
    graph = to_nir(snn, neuron_model="if")
    ifs = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    assert len(ifs) == len(snn.neurons())
    assert all(n.metadata["reset"] == "subtract" and "reset" in n.metadata["note"] for n in ifs)
    assert all(np.all(n.v_reset == 0) for n in ifs)
    x = digits[1]
    nir.write(tmp_path / "if.nir", graph)
    assert torch.equal(import_nir(tmp_path / "if.nir").run(x, T), snn.run(x, T))
    # a tool that runs NIR's IF as NIR defines it (reset to 0, start at 0) gets a different network
    theirs = NIRSimulator(graph).run(x, T)
    assert (theirs - snn.run(x, T)).abs().max() > 0.1


def test_maxpool_is_refused_by_default_with_the_layers_named(digits):
    snn = converted("vgg_digits", digits)
    with pytest.raises(ExportError) as info:
        to_nir(snn)
    names = [o.node for o in info.value.offenders]
    assert len(names) == 2 and all(o.op == "max_pool" for o in info.value.offenders)
    assert "maxpool='extension'" in str(info.value)
    # a tool that ignores the extension's metadata cannot run its body (a Delay of NaN steps)
    graph = to_nir(snn, maxpool="extension")
    assert all(np.isnan(graph.nodes[n].nodes["placeholder"].delay).all() for n in names)
    with pytest.raises(NotImplementedError, match="Delay"):
        NIRSimulator(graph).run(digits[1][:2], 2)


class Branches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 5, 1)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], dim=1)
        x = F.avg_pool2d(x, 2)
        return self.head(torch.flatten(x, 1))


def test_concatenation_as_summed_channel_embeddings(digits, tmp_path):
    torch.manual_seed(0)
    snn = ann2snn.convert(Branches().eval(), digits[0], timesteps=T, threshold="max", progress=False)
    graph = to_nir(snn)
    parts = [k for k, n in graph.nodes.items() if n.metadata.get("ann2snn_op") == "concat_part"]
    assert len(parts) == 2
    x = digits[1]
    assert torch.allclose(NIRSimulator(graph).run(x, T), snn.run(x, T), atol=1e-5)
    nir.write(tmp_path / "c.nir", graph)
    assert torch.equal(import_nir(tmp_path / "c.nir").run(x, T), snn.run(x, T))


class Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.c3 = nn.Conv2d(4, 2, 3)
        self.fc = nn.Linear(2 * 14 * 14, 3)

    def forward(self, x):
        x = self.up(F.relu(self.c(x)))
        return self.fc(F.relu(self.c3(x)).flatten(1))


def test_what_cannot_be_exported_is_listed(digits):
    snn = ann2snn.convert(Unexportable().eval(), digits[0][:64], timesteps=4, threshold="max", progress=False)
    with pytest.raises(ExportError, match="cannot export 1 operation") as info:
        lower(snn)
    assert info.value.offenders[0].op == "call_module Upsample"
    assert "Upsample" in str(info.value) and "up" in str(info.value)


def test_import_reads_plain_layers_from_other_tools():
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    g = nir.NIRGraph.from_list(nir.Affine(weight=w, bias=np.ones(4, np.float32)))
    x = torch.rand(5, 3)
    assert torch.allclose(import_nir(g).run(x, 3), x @ torch.from_numpy(w).T + 1, atol=1e-6)


def test_import_refuses_foreign_neurons_and_edited_files(digits):
    g = nir.NIRGraph.from_list(nir.Affine(weight=np.eye(3, dtype=np.float32), bias=np.zeros(3, np.float32)),
                               nir.IF(r=np.ones(3, np.float32), v_threshold=np.ones(3, np.float32)))
    with pytest.raises(ExportError, match="reset by\\s+subtraction"):
        import_nir(g)
    snn = converted("mlp_digits", digits)
    graph = to_nir(snn)
    name = next(k for k, n in graph.nodes.items() if isinstance(n, nir.NIRGraph))
    graph.nodes[name].nodes["value"].scale *= 2  # thresholds in the graph no longer match the metadata
    with pytest.raises(ExportError, match="differ from its ann2snn metadata"):
        import_nir(graph)


# -- cross-check with another simulator ------------------------------------------------------------

def test_norse_runs_the_if_export_as_nir_semantics(digits):
    """Norse's IF neurons (through nirtorch) agree with the reference simulator on the IF export."""
    pytest.importorskip("norse")
    nirtorch = pytest.importorskip("nirtorch")
    from norse.torch.utils.import_nir import _import_norse_module

    class Scale(nn.Module):
        def __init__(self, s):
            super().__init__()
            self.register_buffer("s", torch.from_numpy(np.asarray(s, np.float32)))

        def forward(self, x):
            return x * self.s

    snn = converted("mlp_digits", digits)
    graph = to_nir(snn, neuron_model="if")
    node_map = {t: _import_norse_module for t in (nir.IF, nir.Affine, nir.Flatten)}
    node_map[nir.Scale] = lambda n: Scale(n.scale)
    net = nirtorch.nir_to_torch(graph, node_map)
    x = digits[1][:12]
    outs = []
    for sample in x:  # NIR's Flatten(start_dim=0) is per sample: run unbatched
        state, total = None, 0
        for _ in range(T):
            y, state = net(sample, state)
            total = total + y
        outs.append(total / T)
    norse_out = torch.stack(outs)
    assert torch.allclose(norse_out, NIRSimulator(graph).run(x, T), atol=1e-4)


# -- portable format -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_portable_round_trip_is_identical_on_the_zoo(name, digits, tmp_path):
    snn = converted(name, digits)
    folder = save_portable(snn, tmp_path / name)
    desc = json.loads((folder / "graph.json").read_text())
    assert desc["format"] == "ann2snn-portable" and desc["layers"][0]["op"] == "input"
    assert sum(layer["op"] == "neuron" for layer in desc["layers"]) == len(snn.neurons())
    back = load_portable(folder)
    x = digits[1]
    assert torch.equal(back.run(x, T), snn.run(x, T))
    assert back.config == snn.config and back.info["passes"] == snn.info["passes"]


def test_portable_adafire_and_corrections_round_trip(digits, tmp_path):
    snn = converted("cnn_digits", digits, neuron="adafire", burst_alloc="uniform", burst_cap=3, correction="light")
    assert any(n.cap == 3 for n in snn.neurons().values())
    assert any(bool(n.bias_shift.any()) for n in snn.neurons().values())
    x = digits[1]
    assert torch.equal(load_portable(save_portable(snn, tmp_path / "p")).run(x, T), snn.run(x, T))
    assert torch.equal(import_nir(export_nir(snn, tmp_path / "a.nir")).run(x, T), snn.run(x, T))
    assert torch.allclose(NIRSimulator(to_nir(snn)).run(x, T), snn.run(x, T), atol=1e-5)


def test_spread_start_exports_as_a_per_step_current(digits, tmp_path):
    snn = converted("cnn_digits", digits, neuron="adafire", burst_alloc="uniform", burst_cap=2, v0_mode="spread")
    assert all(n.spread_steps == snn.config.timesteps for n in snn.neurons().values())
    x = digits[1]
    assert torch.equal(load_portable(save_portable(snn, tmp_path / "p")).run(x, T), snn.run(x, T))
    assert torch.equal(import_nir(export_nir(snn, tmp_path / "a.nir")).run(x, T), snn.run(x, T))


def test_safetensors_files_are_standard(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1.5], np.float32)}
    write_safetensors(tmp_path / "ours.safetensors", arrays, {"k": "v"})
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    assert sorted(theirs) == sorted(arrays) and all(np.array_equal(theirs[k], arrays[k]) for k in arrays)
    st.save_file(arrays, str(tmp_path / "theirs.safetensors"))
    back = read_safetensors(tmp_path / "theirs.safetensors")
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)


def test_portable_rejects_damaged_files(digits, tmp_path):
    folder = save_portable(converted("mlp_digits", digits), tmp_path / "m")
    (folder / "graph.json").write_text("{not json")
    with pytest.raises(ann2snn.SerializationError, match="not valid JSON"):
        load_portable(folder)
    (folder / "weights.safetensors").write_bytes(b"\x05")
    with pytest.raises(ann2snn.SerializationError):
        read_safetensors(folder / "weights.safetensors")


def test_the_documented_reader_runs_the_portable_format_without_ann2snn(digits, tmp_path):
    """docs/export.md's plain torch + safetensors reader reproduces the model's outputs."""
    pytest.importorskip("safetensors.torch")
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "export.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def run(x, T)" in b)
    snn = converted("mlp_digits", digits)
    folder = save_portable(snn, tmp_path / "p")
    x = digits[1]
    scope: dict = {"x": x, "snn": snn}  # the page's own check at its end runs too
    exec(code.replace("DIR/", f"{folder}/"), scope)  # noqa: S102 - our own documentation
    assert torch.allclose(scope["run"](x, T), snn.run(x, T), atol=1e-5)


def test_random_networks_round_trip_through_both_formats(tmp_path_factory):
    """Hypothesis: any supported mix of blocks (BN, ReLU6, residuals, depthwise, BN after a neuron,
    pools) exports and reads back to identical outputs; the NIR graph itself computes the same."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from .test_properties import BLOCKS
    from .test_properties import build as build_net

    @settings(max_examples=4, deadline=None)
    @given(st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=4), st.integers(0, 2**16))
    def check(blocks, seed):
        torch.manual_seed(seed)
        net = build_net(blocks)
        x = torch.rand(24, 1, 8, 8)
        snn = ann2snn.convert(net, x, threshold="max", timesteps=4, progress=False)
        ours = snn.run(x, 4)
        tmp = tmp_path_factory.mktemp("rt")
        assert torch.equal(import_nir(export_nir(snn, tmp / "a.nir", maxpool="extension")).run(x, 4), ours)
        assert torch.equal(load_portable(save_portable(snn, tmp / "p")).run(x, 4), ours)
        if "maxpool" not in blocks:
            assert torch.allclose(NIRSimulator(to_nir(snn)).run(x, 4), ours, atol=1e-4)

    check()


class FunctionalPools(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c(x)), 2)
        x = F.adaptive_max_pool2d(x, self.adaptive) if self.adaptive else F.max_pool2d(x, 2, 2)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("adaptive", [0, 2])
def test_functional_max_pools_export(adaptive, tmp_path):
    net = FunctionalPools().eval()
    net.adaptive = adaptive
    x = torch.rand(16, 1, 8, 8)
    snn = ann2snn.convert(net, x, threshold="max", timesteps=4, progress=False)
    assert torch.equal(load_portable(save_portable(snn, tmp_path / "p")).run(x, 4), snn.run(x, 4))
    if adaptive:  # adaptive max-pooling: not even as an extension
        with pytest.raises(ExportError, match="max-pooling other than 2-D with fixed windows"):
            to_nir(snn, maxpool="extension")
    else:
        assert torch.equal(import_nir(to_nir(snn, maxpool="extension")).run(x, 4), snn.run(x, 4))
