"""Models and checkpoints as people have them: wrapped, prefixed, half-precision, GPU-saved and
safetensors checkpoints; ``timm:NAME`` / ``torchvision:NAME`` models (with stand-in packages, never a
download); the ONNX reader's op table and its docs page."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import textwrap
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.cli import main
from ann2snn.loading import LoadError, load_model, load_weights
from ann2snn.loading.checkpoints import apply_state_dict

FAST = ["--calib-samples", "64", "--timesteps", "4", "--threshold", "max", "--batch-size", "64", "-q"]
ROOT = Path(__file__).resolve().parents[1]

MODELS = """
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 10))


SHARED = build()
"""


def trained(seed: int = 0) -> nn.Module:
    """The architecture of ``build()`` with weights and BN statistics that are not the initial ones."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    name = "ann2snn_test_loading_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODELS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def same_weights(a: nn.Module, b: nn.Module, *, filled: int | None = None) -> bool:
    """Equal state_dicts; with ``filled``, BN's step counters in ``b`` are that value (load_state_dict
    keeps the receiving module's own counter when a checkpoint has none: 0 in a model just built)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    for k in sa:
        if k.endswith("num_batches_tracked") and filled is not None:
            if int(sb[k]) != filled:
                return False
        elif sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k]):
            return False
    return True


def without_step_counters(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def saved_on_cuda(src: Path, dst: Path) -> Path:
    """``src`` as ``torch.save`` writes it on a GPU machine: every storage's location is ``cuda:0``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)
    return dst


def write_checkpoint(kind: str, model: nn.Module, path: Path) -> tuple[Path, list[str], bool]:
    """A checkpoint of ``model`` in one real-world shape: (file, phrases the adaptation line must hold,
    whether BN step counters were left out)."""
    sd = model.state_dict()
    if kind == "plain":
        torch.save(sd, path)
        return path, [], False
    if kind == "wrapped":  # {'state_dict': ..., 'best_prec1': ...}
        torch.save({"state_dict": sd, "best_prec1": 91.7, "epoch": 200}, path)
        return path, ["unwrapped 'state_dict'"], False
    if kind == "dataparallel":
        torch.save(nn.DataParallel(model).state_dict(), path)
        return path, ["stripped 'module.' from 9 keys"], False
    if kind == "compiled":  # what torch.compile(model).state_dict() holds
        torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}}, path)
        return path, ["unwrapped 'model'", "stripped '_orig_mod.' from 9 keys"], False
    if kind == "ema":
        torch.save({"epoch": 3, "state_dict_ema": {"module." + k: v for k, v in sd.items()}}, path)
        return path, ["unwrapped 'state_dict_ema'", "stripped 'module.'"], False
    if kind == "resnet20_release":  # CUDA-saved, DataParallel, BN without num_batches_tracked, wrapped
        plain = {"module." + k: v for k, v in without_step_counters(sd).items()}
        torch.save({"state_dict": plain, "best_prec1": 92.16}, path.with_suffix(".cpu"))
        saved_on_cuda(path.with_suffix(".cpu"), path)
        return path, ["unwrapped 'state_dict'", "mapped tensors saved on cuda:0 to the CPU",
                      "stripped 'module.' from 8 keys", "filled 1 missing 'num_batches_tracked' buffer(s)"], True
    if kind == "half":
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, path)
        return path, ["cast 8 tensor(s) float16 -> float32"], False
    if kind == "safetensors":
        pytest.importorskip("safetensors")
        from safetensors.torch import save_file

        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return path, [], False
    raise AssertionError(kind)


KINDS = ["plain", "wrapped", "dataparallel", "compiled", "ema", "resnet20_release", "half", "safetensors"]


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_shapes_load_through_the_python_loader(kind, user_models, tmp_path, caplog):
    model = trained()
    path, phrases, dropped_counters = write_checkpoint(kind, model, tmp_path / f"{kind}.pt")
    with caplog.at_level(logging.INFO, logger="ann2snn"):
        loaded = load_model(f"{user_models}:build", path)
    if kind == "half":  # the values went through float16 on the way
        ref = trained()
        with torch.no_grad():
            for p in ref.state_dict().values():
                if p.is_floating_point():
                    p.copy_(p.half().float())
        model = ref
    assert same_weights(model, loaded.module, filled=0 if dropped_counters else None)
    if phrases:
        assert len(loaded.notes) == 1 and loaded.notes[0].startswith("weights: ")
        for phrase in phrases:
            assert phrase in loaded.notes[0], (phrase, loaded.notes)
        logged = [r.getMessage() for r in caplog.records if r.name == "ann2snn"]
        assert logged == [f"{user_models}:build: {loaded.notes[0]}"]
    else:
        assert loaded.notes == []


def test_a_cuda_saved_file_needs_the_cpu_mapping(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the file would load without a mapping")
    path, _, _ = write_checkpoint("resnet20_release", trained(), tmp_path / "r.th")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)  # what the mapping is for
    model = trained(seed=1)
    line = load_weights(model, path)
    assert "mapped tensors saved on cuda:0 to the CPU" in line
    assert same_weights(trained(), model, filled=7)


def test_load_weights_into_a_model_of_your_own(tmp_path):
    path, _, _ = write_checkpoint("dataparallel", trained(), tmp_path / "dp.pt")
    model = trained(seed=3)
    assert load_weights(model, path) == "weights: stripped 'module.' from 9 keys"
    assert same_weights(trained(), model)
    torch.save(trained().state_dict(), tmp_path / "plain.pt")
    assert load_weights(model, tmp_path / "plain.pt") is None


def test_real_mismatches_are_still_refused(user_models, tmp_path):
    sd = trained().state_dict()
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "4.bias"}, "1 missing key(s) (4.bias)"),
        "unexpected": ({**sd, "5.weight": torch.zeros(3)}, "1 unexpected key(s) (5.weight)"),
        "shape": ({**sd, "4.weight": torch.zeros(10, 255)}, "4.weight (10, 255) vs (10, 256)"),
    }
    for name, (state, fragment) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
        with pytest.raises(LoadError, match="does not match model") as err:
            load_model(f"{user_models}:build", path)
        assert fragment in str(err.value), (name, str(err.value))
        assert str(err.value).endswith(f"(after stripped 'module.' from {len(state)} keys)")
    # a prefix is stripped only when the model's own keys lack it; other first names only when the
    # result is exactly the model's keys
    torch.save({"backbone." + k: v for k, v in sd.items() if k != "4.bias"}, tmp_path / "partial.pt")
    with pytest.raises(LoadError, match="missing key"):
        load_model(f"{user_models}:build", tmp_path / "partial.pt")


def test_accepts_exactly_what_strict_load_state_dict_accepts(tmp_path):
    """A state_dict saved by this PyTorch records BN version 2: a missing num_batches_tracked is then a
    real mismatch for load_state_dict(strict=True), and for ann2snn too; without that record (a plain
    dict, or a file from PyTorch < 0.4.1) load_state_dict fills it in, and so does ann2snn."""
    sd = trained().state_dict()
    versioned = type(sd)((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    versioned._metadata = sd._metadata
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        trained(seed=1).load_state_dict(versioned, strict=True)
    with pytest.raises(LoadError, match="1 missing key.*num_batches_tracked"):
        apply_state_dict(trained(seed=1), versioned, "ckpt", "m")
    prefixed = type(sd)(("module." + k, v) for k, v in versioned.items())
    prefixed._metadata = type(sd._metadata)(("module" + ("." + k if k else ""), v) for k, v in sd._metadata.items())
    torch.save(prefixed, tmp_path / "versioned.pt")
    with pytest.raises(LoadError, match="num_batches_tracked"):  # the version record survives the prefix
        load_weights(trained(seed=1), tmp_path / "versioned.pt")
    unversioned = dict(versioned)
    trained(seed=1).load_state_dict(unversioned, strict=True)  # PyTorch fills it in ...
    model = trained(seed=1)
    assert "filled 1 missing" in " ".join(apply_state_dict(model, unversioned, "ckpt", "m"))  # ... and so do we
    assert same_weights(trained(), model, filled=7)


def test_pickled_objects_need_trust(user_models, tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": trained().state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(LoadError, match="pickled Python objects.*--trust-pickle"):
        load_model(f"{user_models}:build", path)
    loaded = load_model(f"{user_models}:build", path, trust_pickle=True)
    assert same_weights(trained(), loaded.module)


def test_not_a_state_dict_says_what_it_holds(user_models, tmp_path):
    torch.save({"epoch": 3, "lr": torch.tensor(0.1), "optimizer": {"step": 4}}, tmp_path / "odd.pt")
    with pytest.raises(LoadError, match="does not hold a state_dict.*epoch, lr, optimizer"):
        load_model(f"{user_models}:build", tmp_path / "odd.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(LoadError, match="safetensors"):
        load_model(f"{user_models}:build", tmp_path / "broken.safetensors")


def test_a_model_instance_in_user_code_is_left_untouched(user_models, tmp_path):
    torch.save(trained().state_dict(), tmp_path / "w.pt")
    shared = importlib.import_module(user_models).SHARED
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    loaded = load_model(f"{user_models}:SHARED", tmp_path / "w.pt")
    assert loaded.module is not shared and same_weights(trained(), loaded.module)
    assert all(torch.equal(before[k], v) for k, v in shared.state_dict().items())
    assert shared.training


def test_cli_convert_and_inspect_say_what_was_adapted(capsys, user_models, tmp_path):
    path, phrases, _ = write_checkpoint("resnet20_release", trained(), tmp_path / "resnet20.th")
    code = main(["convert", "--model", f"{user_models}:build", "--weights", str(path), "--data", "digits",
                 "--out", "snn.pt", *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "weights:" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"ann2snn: {user_models}:build: weights: ")
    for phrase in phrases:
        assert phrase in lines[0]
    source = ann2snn.load(tmp_path / "snn.pt").info["source"]
    assert source["weights"] == str(path) and source["notes"] == [lines[0].split(": ", 2)[2]]
    code = main(["inspect", f"{user_models}:build", "--weights", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert sum("weights: unwrapped 'state_dict'" in ln for ln in err.splitlines()) == 1
    # a real mismatch: today's one-line error, nothing written
    torch.save({"state_dict": {"module." + k: v for k, v in trained().state_dict().items() if k != "4.bias"}},
               tmp_path / "bad.th")
    code = main(["convert", "--model", f"{user_models}:build", "--weights", "bad.th", "--data", "digits",
                 "--out", "bad.pt", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not match model" in err and "4.bias" in err
    assert not (tmp_path / "bad.pt").exists()


# -- timm:NAME / torchvision:NAME -----------------------------------------------------------------

class Catalogue:
    """Stands in for timm / torchvision: records how it was asked to build, builds a small CNN."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def build(self, name: str, **kwargs) -> nn.Module:
        self.calls.append((name, kwargs))
        if name != "tiny_cnn":
            raise RuntimeError(f"Unknown model ({name})")
        model = trained(seed=5).train()
        if kwargs.get("num_classes", 10) != 10:
            model[4] = nn.Linear(256, kwargs["num_classes"])
        return model


@pytest.fixture
def fake_timm(monkeypatch):
    cat = Catalogue()
    timm = types.ModuleType("timm")

    def create_model(name, pretrained=False, **kwargs):
        return cat.build(name, pretrained=pretrained, **kwargs)

    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", timm)
    return cat


@pytest.fixture
def fake_torchvision(monkeypatch):
    cat = Catalogue()
    tv, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")

    def get_model(name, **kwargs):
        return cat.build(name, **kwargs)

    models.get_model = get_model
    tv.models = models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    return cat


def test_timm_model_by_name_converts_end_to_end(capsys, fake_timm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["convert", "--model", "timm:tiny_cnn", "--data", "digits", "--out", "random.pt", *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert fake_timm.calls == [("tiny_cnn", {"pretrained": False})]
    assert [ln for ln in err.splitlines() if "random weights" in ln] == [
        "ann2snn: timm:tiny_cnn: no --weights given: the model has random weights (nothing is downloaded; give "
        "a local state_dict or .safetensors file with --weights)"]
    snn = ann2snn.load(tmp_path / "random.pt")
    assert snn.info["source"]["model_kind"] == "timm" and len(snn.neurons()) == 1

    path, _, _ = write_checkpoint("dataparallel", trained(), tmp_path / "ckpt.pth")
    code = main(["convert", "--model", "timm:tiny_cnn", "--weights", str(path), "--data", "digits",
                 "--out", "trained.pt", *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "random weights" not in err and "ann2snn: timm:tiny_cnn: weights: stripped 'module.'" in err
    loaded = load_model("timm:tiny_cnn", path)
    assert same_weights(trained(), loaded.module) and not loaded.module.training

    code = main(["inspect", "timm:tiny_cnn"])
    out, err = capsys.readouterr()
    assert code == 0 and "convertible: 1 neuron layers" in out and "random weights" in err


def test_named_model_arguments_and_errors(fake_timm):
    loaded = load_model("timm:tiny_cnn(num_classes=3)")
    assert fake_timm.calls[-1] == ("tiny_cnn", {"pretrained": False, "num_classes": 3})
    assert loaded.module[4].out_features == 3 and loaded.kind == "timm" and loaded.weights is None
    with pytest.raises(LoadError, match=r"building timm:nope failed: RuntimeError: Unknown model \(nope\)"):
        load_model("timm:nope")
    with pytest.raises(LoadError, match="pretrained= is not accepted"):
        load_model("timm:tiny_cnn(pretrained=True)")
    with pytest.raises(LoadError, match="keyword=literal"):
        load_model("timm:tiny_cnn(3)")
    with pytest.raises(LoadError, match="give the architecture's name"):
        load_model("timm:")


def test_torchvision_model_by_name(fake_torchvision, tmp_path):
    path, _, _ = write_checkpoint("wrapped", trained(), tmp_path / "tv.pth")
    loaded = load_model("torchvision:tiny_cnn", path)
    assert fake_torchvision.calls == [("tiny_cnn", {"weights": None})]
    assert loaded.kind == "torchvision" and same_weights(trained(), loaded.module)
    assert loaded.notes == ["weights: unwrapped 'state_dict'"]


@pytest.mark.parametrize("package", ["timm", "torchvision"])
def test_named_model_without_its_package(package, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(LoadError, match=f"needs the '{package}' package, which is not installed: pip install {package}"):
        load_model(f"{package}:resnet18")
    code = main(["inspect", f"{package}:resnet18"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"pip install {package}" in err


# -- the ONNX reader beside the loaders ----------------------------------------------------------

def test_onnx_docs_page_lists_the_op_table():
    from ann2snn.loading.onnx import OPS, op_table_markdown

    page = (ROOT / "docs" / "onnx.md").read_text()
    table = page.split("<!-- op table: begin -->\n", 1)[1].split("<!-- op table: end -->", 1)[0]
    assert table == op_table_markdown()
    for op in OPS:
        assert f"| {op} |" in table
    assert {"Conv", "Relu", "Gemm", "MaxPool", "BatchNormalization"} <= set(OPS)


def test_export_holds_no_importers():
    assert importlib.util.find_spec("ann2snn.export.onnx") is None
    src = (ROOT / "src" / "ann2snn" / "loading" / "onnx.py").read_text()
    assert "from ..loading" not in src and "import ann2snn.loading" not in src
