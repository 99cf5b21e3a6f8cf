"""The ``ann2snn`` command line, in-process through ``main([...])`` (plus one real subprocess)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import ann2snn
from ann2snn.cli import main
from ann2snn.data import get_dataset, subset
from ann2snn.evaluation import evaluate_classifier
from ann2snn.zoo import create_model, get_entry

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--calib-samples", "200", "--timesteps", "8", "--ltb-iters", "20", "--batch-size", "100", "-q"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> list[str]:
    """``--model`` arguments for a pretrained digits VGG: the zoo checkpoint, or a quickly trained one."""
    if get_entry("vgg_digits").has_checkpoint:
        return ["--model", "vgg_digits"]
    from ann2snn.zoo import train_classifier

    torch.manual_seed(0)
    model = create_model("vgg_digits")
    train_classifier(model, get_dataset("digits", "train"), None, epochs=4, optimizer="adam", lr=3e-3,
                     batch_size=64, num_threads=2)
    path = tmp_path_factory.mktemp("weights") / "vgg_digits.pt"
    torch.save(model.state_dict(), path)
    return ["--model", "vgg_digits", "--weights", str(path)]


@pytest.fixture(scope="module")
def snn_file(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("snn") / "snn.pt"
    assert main(["convert", *weights, "--data", "digits", "--out", str(out), *FAST]) == 0
    return out


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ann2snn: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, err)


# -- convert / evaluate / report -----------------------------------------------------------------

def test_convert_saves_snn_with_its_source(snn_file, weights):
    snn = ann2snn.load(snn_file)
    source = snn.info["source"]
    assert source["model"] == "vgg_digits" and source["data"] == "digits" and source["calib_samples"] == 200
    assert snn.config.timesteps == 8 and snn.config.ltb_iters == 20 and snn.config.progress is False
    assert len(snn.neurons()) == 6


def test_convert_prints_each_stages_time_on_one_line(capsys, weights, tmp_path):
    code, out, err = run(capsys, "convert", *weights, "--data", "digits", "--out", str(tmp_path / "snn.pt"), *FAST,
                         "--neuron", "adafire", "--timesteps", "2", "--correction", "light", "--adapt-samples", "32")
    assert code == 0, err
    lines = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("stages:")]
    assert len(lines) == 1, out
    stages = [part.split()[0] for part in lines[0].removeprefix("stages: ").split(", ")]
    assert stages == ["prepare", "calibrate", "thresholds", "sensitivity", "correction"]
    assert set(stages) == set(ann2snn.load(tmp_path / "snn.pt").info["stage_times"])


def test_evaluate_prints_table(capsys, snn_file):
    code, out, err = run(capsys, "evaluate", str(snn_file), "--max-samples", "120", "-q")
    assert code == 0, err
    lines = out.splitlines()
    rows = [ln.split() for ln in lines if ln.strip() and ln.split()[0] in {"1", "2", "4", "8"}]
    assert [r[0] for r in rows] == ["1", "2", "4", "8"]
    for r in rows:
        assert r[1].endswith("%") and 0.0 <= float(r[1][:-1]) <= 100.0
    assert any(ln.strip().startswith("ANN") for ln in lines)
    assert "120 samples" in out and "SOPs" in out and "saving" in out
    acc_t8 = float(rows[-1][1][:-1])
    assert acc_t8 > 50.0  # a pretrained digits VGG converts well at T = 8


def test_evaluate_json_agrees_with_python_api(capsys, snn_file):
    code, out, err = run(capsys, "evaluate", str(snn_file), "--data", "digits", "--json", "--max-samples", "150",
                         "--batch-size", "64", "--energy", "neuromorphic")
    assert code == 0, err
    got = json.loads(out)  # stdout is JSON only
    snn = ann2snn.load(snn_file)
    test = subset(get_dataset("digits", "test"), 150, seed=0)
    want = json.loads(evaluate_classifier(snn, test, 8, energy="neuromorphic", batch_size=64).to_json())
    for d in (got, want):
        d.pop("seconds")
        d.pop("meta")
    assert got == want
    assert got["samples"] == 150 and len(got["accuracy_per_t"]) == 8
    assert set(got["ceiling"]) == {"1", "2", "4", "8"}
    assert got["energy"]["energy_model"]["name"] == "neuromorphic"


def test_report_writes_valid_pngs_and_page(capsys, snn_file, tmp_path):
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "report", str(snn_file), "--data", "digits", "--out", str(out_dir),
                         "--max-samples", "60", "-q")
    assert code == 0, err
    for name in ("accuracy.png", "energy.png", "thresholds.png"):
        data = (out_dir / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000, name
    page = (out_dir / "report.md").read_text()
    assert "![accuracy against T](accuracy.png)" in page and '"threshold": "ltb"' in page
    assert "vgg_digits" in page
    assert (out_dir / "report.html").read_text().startswith("<!doctype html>")
    assert json.loads((out_dir / "results.json").read_text())["samples"] == 60


def test_report_shows_spike_compression(capsys, weights, tmp_path):
    out = tmp_path / "ssc.pt"
    code, _, err = run(capsys, "convert", *weights, "--data", "digits", "--out", str(out), *FAST,
                       "--threshold", "mse", "--ssc-tau", "2", "--ssc-cost", "sops")
    assert code == 0, err
    ssc = ann2snn.load(out).info["ssc"]
    assert ssc["cost"] == "sops" and any(r > 1 for r in ssc["scales"].values())
    assert ssc["calibration"]["sops_after"] < ssc["calibration"]["sops_before"]
    code, _, err = run(capsys, "report", str(out), "--data", "digits", "--out", str(tmp_path / "r"),
                       "--max-samples", "40", "-q")
    assert code == 0, err
    page = (tmp_path / "r" / "report.md").read_text()
    assert "## Spike compression (SSC)" in page and "| SSC scale |" in page
    change = f"{(ssc['calibration']['sops_after'] / ssc['calibration']['sops_before'] - 1) * 100:+.1f} %"
    assert change in page
    kept = next(c for c in ssc["checks"] if c["kept"])  # how the combination was found
    assert f". {len(ssc['checks'])} combination" in page and f"allowance {kept['tau']:.3g}" in page
    for name, r in ssc["scales"].items():  # each layer's row carries its scale
        assert any(line.startswith(f"| {name} |") and f"| {r:g} |" in line for line in page.splitlines()), name


def test_evaluate_report_option(capsys, snn_file, tmp_path):
    code, _, err = run(capsys, "evaluate", str(snn_file), "--max-samples", "40", "--report", str(tmp_path / "r"),
                       "--timesteps", "4", "-q")
    assert code == 0, err
    assert (tmp_path / "r" / "accuracy.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((tmp_path / "r" / "results.json").read_text())["timesteps"] == 4


def test_config_file_then_flags(capsys, weights, tmp_path):
    conf = tmp_path / "conv.toml"
    conf.write_text('[conversion]\nthreshold = "percentile"\npercentile = 99.9\ntimesteps = 4\ngranularity = "layer"\n')
    out = tmp_path / "snn.pt"
    code, stdout, err = run(capsys, "convert", *weights, "--data", "digits", "--config", str(conf), "--timesteps", "6",
                            "--calib-samples", "100", "--out", str(out), "-q")
    assert code == 0, err
    cfg = ann2snn.load(out).config
    assert (cfg.threshold, cfg.percentile, cfg.granularity, cfg.timesteps) == ("percentile", 99.9, "layer", 6)
    assert "percentile thresholds" in stdout


def test_iat_flag_and_adaptive_exit_row(capsys, weights, tmp_path):
    out = tmp_path / "iat.pt"
    code, _, err = run(capsys, "convert", *weights, "--data", "digits", "--iat", "--out", str(out), *FAST)
    assert code == 0, err
    snn = ann2snn.load(out)
    assert snn.config.iat is True and snn.info["iat"]["mean_entropy"]
    code, text, err = run(capsys, "evaluate", str(out), "--max-samples", "64", "-q")
    assert code == 0, err
    assert any(ln.split()[:1] == ["IAT"] for ln in text.splitlines())
    code, text, err = run(capsys, "evaluate", str(out), "--max-samples", "64", "--json")
    iat = json.loads(text)["iat"]
    assert 1.0 <= iat["mean_steps"] <= 8.0 and 0.0 <= iat["accuracy"] <= 1.0 and iat["energy_ratio"] > 0
    hist = iat["exit_histogram"]
    assert len(hist) == 8 and sum(hist) == 64
    assert sum((t + 1) * n for t, n in enumerate(hist)) / 64 == pytest.approx(iat["mean_steps"])
    code, _, err = run(capsys, "evaluate", str(out), "--max-samples", "64", "--report", str(tmp_path / "rep"), "-q")
    assert code == 0, err
    assert (tmp_path / "rep" / "exit_steps.png").stat().st_size > 0
    assert "exit_steps.png" in (tmp_path / "rep" / "report.md").read_text()


def test_yaml_config_needs_pyyaml(capsys, weights, tmp_path):
    conf = tmp_path / "conv.yaml"
    conf.write_text("threshold: max\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        code, _, err = run(capsys, "convert", *weights, "--data", "digits", "--config", str(conf),
                           "--out", str(tmp_path / "s.pt"))
        assert_one_line_error(code, err, "PyYAML")
        assert not (tmp_path / "s.pt").exists()
    else:
        pytest.skip("PyYAML is installed")


# -- compare ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adafire_file(weights, tmp_path_factory) -> Path:
    """AdaFire at T = 4 with spike compression: the second configuration beside ``snn_file`` (IF, T = 8)."""
    out = tmp_path_factory.mktemp("adafire") / "adafire.pt"
    argv = ["convert", *weights, "--data", "digits", "--out", str(out), *FAST, "--timesteps", "4", "--neuron",
            "adafire", "--burst-alloc", "uniform", "--ssc-tau", "2", "--adapt-samples", "64"]
    assert main(argv) == 0
    return out


def _comparison_want(files: list[Path], samples: int, batch_size: int, timesteps: int | None = None):
    test = subset(get_dataset("digits", "test"), samples, seed=0)
    return [evaluate_classifier(snn, test, timesteps or snn.config.timesteps, batch_size=batch_size)
            for snn in (ann2snn.load(f) for f in files)]


def test_compare_json_equals_evaluate_classifier(capsys, snn_file, adafire_file):
    code, out, err = run(capsys, "compare", str(adafire_file), str(snn_file), "--max-samples", "120",
                         "--batch-size", "64", "--json")
    assert code == 0, err
    got = json.loads(out)
    want = _comparison_want([adafire_file, snn_file], 120, 64)
    assert got["samples"] == 120 and got["data"] == "digits" and got["model"] == "vgg_digits"
    assert got["ann"]["accuracy"] == want[0].ann_accuracy == want[1].ann_accuracy
    assert got["ann"]["macs"] == want[0].energy.ann_macs
    assert [r["timesteps"] for r in got["snns"]] == [4, 8]
    assert [r["config"]["summary"] for r in got["snns"]] == ["adafire, ltb, SSC", "if, ltb"]
    for row, res in zip(got["snns"], want, strict=True):
        assert row["accuracy"] == res.accuracy
        assert row["delta_points"] == pytest.approx((res.accuracy - res.ann_accuracy) * 100)
        assert row["sops"] == pytest.approx(res.energy.sops, rel=1e-12)
        assert row["saving"] == pytest.approx(res.energy.saving, rel=1e-12)
        full = dict(row["evaluation"])
        expected = json.loads(res.to_json())
        for d in (full, expected):
            d.pop("seconds")
            d.pop("meta")
        assert full == expected  # the same evaluation as `ann2snn evaluate --json`


def test_compare_table_and_report(capsys, snn_file, adafire_file, tmp_path):
    report = tmp_path / "rep"
    code, out, err = run(capsys, "compare", str(adafire_file), str(snn_file), "--max-samples", "90",
                         "--batch-size", "64", "--timesteps", "2", "--report", str(report), "-q")
    assert code == 0, err
    want = _comparison_want([adafire_file, snn_file], 90, 64, timesteps=2)
    lines = out.splitlines()
    assert max(len(ln) for ln in lines) <= 100
    ann_row = next(ln for ln in lines if ln.startswith("ANN "))
    assert f"{want[0].ann_accuracy * 100:.2f} %" in ann_row
    for name, res in zip(("adafire.pt", "snn.pt"), want, strict=True):
        row = next(ln for ln in lines if ln.startswith(name + " "))
        cells = row.split()
        assert cells[cells.index("%") - 2] == "2"  # T, overridden for both
        for text in (f"{res.accuracy * 100:.2f} %", f"{(res.accuracy - res.ann_accuracy) * 100:+.2f}",
                     f"{res.energy.sops:,.0f}", f"saving {res.energy.saving * 100:+.1f} %"):
            assert text in row, (text, row)
    assert "90 test samples" in out and f"report: {report / 'compare.md'}" in out
    assert (report / "compare.png").read_bytes()[:8] == PNG_MAGIC
    page = (report / "compare.md").read_text()
    assert "![accuracy and energy per model](compare.png)" in page
    assert f"| adafire.pt | adafire, ltb, SSC | 2 | {want[0].accuracy * 100:.2f} % |" in page
    assert json.loads((report / "compare.json").read_text())["snns"][1]["sops"] == pytest.approx(want[1].energy.sops)


@pytest.fixture(scope="module")
def mismatched(snn_file, tmp_path_factory) -> Path:
    """Copies of ``snn_file`` that record another model, and other data."""
    d = tmp_path_factory.mktemp("mismatch")
    for name, key, value in (("other_model.pt", "model", "mlp_digits"), ("other_data.pt", "data", "mnist")):
        snn = ann2snn.load(snn_file)
        snn.info["source"][key] = value
        ann2snn.save(snn, d / name)
    return d


COMPARE_CASES = {
    "missing snn": (["{snn}", "{d}/none.pt"], "no such file"),
    "other model": (["{snn}", "{m}/other_model.pt"], "converted from vgg_digits (weights"),
    "other data": (["{snn}", "{m}/other_data.pt"], "converted on digits but {m}/other_data.pt on mnist"),
    "zero timesteps": (["{snn}", "--timesteps", "0"], "--timesteps must be a positive integer"),
    "unknown energy": (["{snn}", "--energy", "quantum"], "unknown energy model"),
    "no snn": ([], "the following arguments are required: SNN"),
}


@pytest.mark.parametrize("case", list(COMPARE_CASES))
def test_compare_bad_input(capsys, case, snn_file, bad_files, mismatched, tmp_path):
    argv, fragment = COMPARE_CASES[case]
    argv = [a.format(d=bad_files, snn=snn_file, m=mismatched) for a in argv]
    code, out, err = run(capsys, "compare", *argv, "--report", str(tmp_path / "rep"), "-q")
    assert_one_line_error(code, err, fragment.format(m=mismatched))
    assert out == ""
    assert not (tmp_path / "rep").exists()


# -- inspect / zoo --------------------------------------------------------------------------------

def test_inspect_describes_each_node(capsys):
    code, out, err = run(capsys, "inspect", "vgg_digits")
    assert code == 0, err
    assert "folded into features_0" in out
    assert "running max-pool" in out and "moved before neuron" in out
    assert "removed (identity at inference)" in out  # dropout
    assert out.count("IF neuron") == 6
    assert "convertible: 6 neuron layers" in out


UNSUPPORTED_MODULE = """
import torch
from torch import nn


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.sigmoid(self.fc1(x.flatten(1)))
        return self.fc2(torch.tanh(h))


def build():
    return Gated()


def build_ok():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = "ann2snn_test_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(UNSUPPORTED_MODULE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_inspect_lists_what_cannot_convert(capsys, user_module):
    code, out, err = run(capsys, "inspect", f"{user_module}:build")
    assert code == 1
    assert "2 operation(s) cannot convert" in out
    assert "sigmoid" in out and "tanh" in out
    assert f"{user_module}.py" in out  # the user's source line
    assert "CANNOT CONVERT" in out
    assert err.strip().startswith("ann2snn:") and len(err.strip().splitlines()) == 1


def test_convert_user_factory_with_weights(capsys, user_module, tmp_path):
    model = __import__(user_module).build_ok()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    code, out, err = run(capsys, "convert", "--model", f"{user_module}:build_ok", "--weights", "state.pt",
                         "--data", "digits", "--out", "user.pt", *FAST)
    assert code == 0, err
    assert ann2snn.load(tmp_path / "user.pt").info["source"]["model"] == f"{user_module}:build_ok"
    # an unsupported model fails convert with one line pointing at inspect
    code, _, err = run(capsys, "convert", "--model", f"{user_module}:build", "--data", "digits", "--out", "x.pt")
    assert_one_line_error(code, err, "cannot convert 2 operation(s)", "ann2snn inspect")
    assert not (tmp_path / "x.pt").exists()


def test_pickled_model_needs_trust(capsys, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(create_model("mlp_digits"), path)
    code, _, err = run(capsys, "inspect", str(path))
    assert_one_line_error(code, err, "--trust-pickle")
    code, out, err = run(capsys, "inspect", str(path), "--trust-pickle")
    assert code == 0, err
    assert "convertible: 2 neuron layers" in out


def test_zoo_lists_models_and_datasets(capsys):
    code, out, err = run(capsys, "zoo")
    assert code == 0, err
    assert "vgg_digits" in out and "vgg_fmnist" in out
    digits = next(ln for ln in out.splitlines() if ln.split()[:1] == ["digits"])
    assert "yes" in digits
    code, out, _ = run(capsys, "zoo", "--json")
    data = json.loads(out)
    assert {m["name"] for m in data["models"]} >= {"vgg_digits", "resnet_digits"}
    assert next(d for d in data["datasets"] if d["name"] == "digits")["available"] is True


def test_python_dash_m_subprocess():
    proc = subprocess.run([sys.executable, "-m", "ann2snn", "zoo"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "vgg_digits" in proc.stdout and proc.stderr == ""


def test_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"ann2snn {ann2snn.__version__} (torch {torch.__version__}")
    assert main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--threshold", "--granularity", "--neuron", "--burst-cap", "--calib-samples", "--config", "--ltb-iters"):
        assert flag in out


def test_python_dash_m_version():
    proc = subprocess.run([sys.executable, "-m", "ann2snn", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"ann2snn \d+\.\d+\.\d+ \(torch [^,]+, Python [\d.]+\)\n", proc.stdout), proc.stdout


def test_every_config_field_is_in_exactly_one_group():
    import dataclasses

    from ann2snn.config import CONFIG_GROUPS, FIELD_PAGE

    listed = [name for group in CONFIG_GROUPS.values() for name in group.fields]
    assert sorted(listed) == sorted(f.name for f in dataclasses.fields(ann2snn.ConversionConfig))
    assert len(listed) == len(set(listed))
    for page in FIELD_PAGE.values():
        assert re.fullmatch(r"docs/(methods/)?[a-z_]+\.md", page), page


def test_convert_help_groups_flags_with_their_docs_page(capsys):
    from ann2snn.config import CONFIG_GROUPS

    assert main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    sections: dict[str, str] = {}  # group title -> its block of the help text
    title = None
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            sections[title] = ""
        elif title is not None:
            sections[title] += line + "\n"
    for spec in CONFIG_GROUPS.values():
        block = sections[spec.title]
        for name in spec.fields:
            if name not in ("progress", "extra"):
                assert f"--{name.replace('_', '-')} " in block or f"--{name.replace('_', '-')}," in block, name
        for page in spec.pages:
            if page:
                assert page in " ".join(block.split()), (spec.title, page)
    assert "--model MODEL" in sections["model and weights"] and "docs/capture.md" in sections["model and weights"]
    assert "--calib-samples" in sections["data"] and "--out FILE" in sections["output and other"]


def test_config_errors_name_the_docs_page(capsys, tmp_path):
    with pytest.raises(ann2snn.ConfigError, match=r"ssc_tau must be >= 0, got -1 \(see docs/methods/ssc\.md\)$"):
        ann2snn.ConversionConfig(ssc_tau=-1)
    with pytest.raises(ann2snn.ConfigError, match=r"unknown threshold 'x'.*\(see docs/methods/thresholds\.md\)$"):
        ann2snn.ConversionConfig(threshold="x")
    out = tmp_path / "snn.pt"
    code, _, err = run(capsys, "convert", "--model", "vgg_digits", "--data", "digits", "--neuron", "adafire",
                       "--step-cap", "2", "--out", str(out))
    assert_one_line_error(code, err, "step_cap=2 applies to IF neurons")
    assert err.rstrip().endswith("(see docs/methods/events.md)")
    code, _, err = run(capsys, "convert", "--model", "vgg_digits", "--data", "digits", "--iat-a", "many",
                       "--out", str(out))
    assert_one_line_error(code, err, "--iat-a", "(see docs/methods/iat.md)")
    assert not out.exists()


def test_every_config_field_has_a_flag(capsys):
    import dataclasses

    main(["convert", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(ann2snn.ConversionConfig):
        if f.name not in ("progress", "extra"):
            assert f"--{f.name.replace('_', '-')}" in out, f.name


# -- bad input: one line on stderr, exit 2, nothing written -----------------------------------------

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save(create_model("cnn_digits").state_dict(), d / "other.pt")
    np.savez(d / "empty.npz", x=np.zeros((0, 1, 8, 8), np.float32), y=np.zeros(0, np.int64))
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    np.savez(d / "nan.npz", x=x, y=np.zeros(20, np.int64))
    x[3, 0, 2, 2] = np.inf
    np.savez(d / "inf.npz", x=x, y=np.zeros(20, np.int64))
    np.savez(d / "shape.npz", x=np.zeros((20, 3, 5, 5), np.float32), y=np.zeros(20, np.int64))
    (d / "corrupt.npz").write_bytes(b"PK\x03\x04 broken zip")
    (d / "conf.toml").write_text("threshold = [unclosed\n")
    (d / "unknown.toml").write_text('thresholds = "ltb"\n')
    return d


CONVERT_CASES = {
    "unknown model": (["--model", "no_such_model"], "unknown model"),
    "missing checkpoint": (["--weights", "{d}/missing.pt"], "checkpoint not found"),
    "corrupt checkpoint": (["--weights", "{d}/garbage.pt"], "cannot read checkpoint"),
    "mismatched checkpoint": (["--weights", "{d}/other.pt"], "does not match model vgg_digits"),
    "missing data": (["--data", "{d}/missing.npz"], "data not found"),
    "unknown dataset": (["--data", "imagenet"], "unknown dataset"),
    "corrupt data": (["--data", "{d}/corrupt.npz"], "cannot load data"),
    "empty data": (["--data", "{d}/empty.npz"], "empty"),
    "nan data": (["--data", "{d}/nan.npz"], "NaN or inf"),
    "inf data": (["--data", "{d}/inf.npz"], "NaN or inf"),
    "data shape": (["--data", "{d}/shape.npz"], "input shape (3, 5, 5)"),
    "wrong bundled data": (["--data", "fashion-mnist"], "expects (1, 8, 8)"),
    "unknown threshold": (["--threshold", "magic"], "unknown threshold 'magic'"),
    "unknown granularity": (["--granularity", "pixel"], "unknown granularity"),
    "unknown neuron": (["--neuron", "lif"], "unknown neuron"),
    "zero timesteps": (["--timesteps", "0"], "timesteps must be a positive integer"),
    "negative timesteps": (["--timesteps", "-4"], "timesteps must be a positive integer"),
    "non-numeric timesteps": (["--timesteps", "many"], "--timesteps"),
    "zero calib samples": (["--calib-samples", "0"], "--calib-samples"),
    "unwritable output": (["--out", "{d}/no/such/folder/snn.pt"], "does not exist"),
    "output is a folder": (["--out", "{d}"], "is a folder"),
    "bad config file": (["--config", "{d}/conf.toml"], "cannot parse"),
    "unknown config key": (["--config", "{d}/unknown.toml"], "unknown configuration option"),
    "missing config file": (["--config", "{d}/none.toml"], "config file not found"),
    "untrusted pickle": (["--model", "{d}/garbage.pt"], "--trust-pickle"),
    "bad factory": (["--model", "no_such_pkg.models:build"], "cannot import module"),
}


@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_bad_input(capsys, case, weights, bad_files, tmp_path):
    change, fragment = CONVERT_CASES[case]
    change = [c.format(d=bad_files) for c in change]
    args = dict(zip(weights[::2], weights[1::2], strict=True))
    args.update({"--data": "digits", "--out": str(tmp_path / "snn.pt"), "--calib-samples": "50", "--ltb-iters": "2"})
    flags = []
    for k, v in zip(change[::2], change[1::2], strict=True):
        if k in args:
            args[k] = v
        else:
            flags += [k, v]
    argv = ["convert", *[x for kv in args.items() for x in kv], *flags, "-q"]
    code, out, err = run(capsys, *argv)
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []  # nothing written


EVALUATE_CASES = {
    "missing snn": (["{d}/none.pt"], "no such file"),
    "corrupt snn": (["{d}/garbage.pt"], "not a readable ann2snn file"),
    "not an snn": (["{d}/other.pt"], "not an ann2snn spiking-model file"),
    "zero timesteps": (["{snn}", "--timesteps", "0"], "--timesteps must be a positive integer"),
    "unknown energy": (["{snn}", "--energy", "quantum"], "unknown energy model"),
    "data shape": (["{snn}", "--data", "{d}/shape.npz"], "calibrated on (1, 8, 8)"),
    "nan data": (["{snn}", "--data", "{d}/nan.npz"], "NaN or inf"),
    "missing data": (["{snn}", "--data", "{d}/missing.npz"], "data not found"),
    "bad max samples": (["{snn}", "--max-samples", "-1"], "--max-samples"),
}


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_bad_input(capsys, case, snn_file, bad_files, tmp_path):
    argv, fragment = EVALUATE_CASES[case]
    argv = [a.format(d=bad_files, snn=snn_file) for a in argv]
    code, out, err = run(capsys, "evaluate", *argv, "--report", str(tmp_path / "rep"), "-q")
    assert_one_line_error(code, err, fragment)
    assert out == ""
    assert not (tmp_path / "rep").exists()


def test_report_folder_unwritable(capsys, snn_file, bad_files):
    code, _, err = run(capsys, "report", str(snn_file), "--out", str(bad_files / "garbage.pt" / "sub"))
    assert_one_line_error(code, err, "report folder")


def test_usage_errors_are_one_line(capsys):
    for argv in ([], ["frobnicate"], ["convert"], ["evaluate"], ["inspect"]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err)


def test_a_process_group_the_caller_made_is_left_to_the_caller(capsys, tmp_path):
    """main() joins (and later leaves) a group only when it made one from torchrun's environment; a
    program that already has a group keeps it after calling the CLI, on success and on error."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        code, _, err = run(capsys, "inspect", "vgg_digits")
        assert code == 0, err
        assert dist.is_initialized()
        code, _, err = run(capsys, "inspect", str(tmp_path / "missing.pt"))
        assert code != 0 and "ann2snn: error" in err
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
