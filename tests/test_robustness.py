"""Determinism, Ctrl-C during calibration, streaming evaluation, and one-line errors for bad configs."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils.data import IterableDataset

import ann2snn
from ann2snn.cli import main
from ann2snn.evaluation import evaluate_classifier
from ann2snn.serialize import content_digest, to_payload
from ann2snn.zoo import create_model

from .helpers import digits_tensors

ROOT = Path(__file__).resolve().parents[1]


def _convert_and_report(model, xc, xt, yt):
    snn = ann2snn.convert(model, xc.split(50), threshold="percentile", percentile=99.5, sample_size=2000,
                          neuron="adafire", burst_cap=2, burst_initial=3, correction="light", iat=True,
                          adapt_samples=40, timesteps=6, encoding="poisson", progress=False)
    report = evaluate_classifier(snn, (xt, yt), 6, batch_size=40).to_dict()
    report.pop("seconds")  # wall time
    return snn, report


def test_same_seed_same_data_gives_identical_snn_and_report():
    """Two conversions in one process (the global RNG state differs between them): bit-identical
    tensors, identical info and file content, identical evaluation report (Poisson input included)."""
    x, y = digits_tensors()
    model = create_model("cnn_digits", pretrained=True)
    a, ra = _convert_and_report(model, x[:150], x[1500:1580], y[1500:1580])
    torch.rand(1000)  # move the global generator: conversion must not depend on it
    b, rb = _convert_and_report(model, x[:150], x[1500:1580], y[1500:1580])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for snn in (a, b):  # wall times of the conversion stages, like the report's seconds
        assert {"prepare", "calibrate", "thresholds", "sensitivity"} <= set(snn.info.pop("stage_times"))
    assert a.info == b.info
    assert content_digest(to_payload(a)) == content_digest(to_payload(b))
    assert json.dumps(ra, sort_keys=True) == json.dumps(rb, sort_keys=True)
    assert a.info["caps"] and a.info["iat"]  # the random and adaptive parts really ran


# -- Ctrl-C ----------------------------------------------------------------------------------------

SLOW_CONVERT = textwrap.dedent("""
    import signal
    import sys
    import ann2snn.api as api

    # a terminal's Ctrl-C: a test run started in the background inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ann2snn.cli import main

    real = api.calibrate

    def calibrate(*args, **kwargs):  # tell the test that calibration has started
        print("calibrating", file=sys.stderr, flush=True)
        return real(*args, **kwargs)

    api.calibrate = calibrate
    sys.exit(main(sys.argv[1:]))
""")


def test_ctrl_c_during_calibration_leaves_no_file_and_exits_130(tmp_path):
    script = tmp_path / "slow_convert.py"
    script.write_text(SLOW_CONVERT)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), "convert", "--model", "cnn_digits", "--data", "digits", "--calib-samples",
         "256", "--threshold", "ltb", "--ltb-iters", "100000000", "--out", str(out_dir / "snn.pt"), "-q"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()
        assert line.strip() == "calibrating", line
        time.sleep(0.5)  # well inside the (endless) calibration loop
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip() == "ann2snn: error: interrupted", err
    assert "Traceback" not in err and out == ""
    assert list(out_dir.iterdir()) == []  # no output file, no temporary file


def test_interrupted_save_leaves_no_partial_file(tmp_path, monkeypatch):
    """Interrupted while the file is written: neither the target nor a temporary file remains."""
    snn = ann2snn.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)),
                          torch.randn(8, 4), threshold="max")
    target = tmp_path / "snn.pt"

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ann2snn.save(snn, target)
    assert list(tmp_path.iterdir()) == []


# -- streaming evaluation --------------------------------------------------------------------------

class LiveBatches(IterableDataset):
    """Synthesises ``n`` batches on the fly and records how many earlier batches are still alive
    when each new one is made: a streaming evaluation keeps at most the previous one."""

    def __init__(self, n: int, batch: int, shape=(1, 8, 8)):
        self.n, self.batch, self.shape = n, batch, shape
        self.refs: list[weakref.ref] = []
        self.alive: list[int] = []

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        for _ in range(self.n):
            self.alive.append(sum(r() is not None for r in self.refs))
            x = torch.rand(self.batch, *self.shape, generator=g)
            self.refs.append(weakref.ref(x))
            yield x, torch.randint(0, 10, (self.batch,), generator=g)


def test_evaluation_streams_batches_instead_of_materialising_the_data():
    x, _ = digits_tensors()
    snn = ann2snn.convert(create_model("cnn_digits", pretrained=True), x[:64], threshold="max", timesteps=4)
    data = LiveBatches(n=12, batch=8)
    loader = torch.utils.data.DataLoader(data, batch_size=None)  # an iterable that knows no length
    result = evaluate_classifier(snn, loader, 4)
    assert result.samples == 12 * 8
    assert max(data.alive) <= 1, data.alive  # never more than the batch just evaluated
    assert len(result.energy.per_sample["sops"]) == 96


# -- bad configs on the command line ---------------------------------------------------------------

@pytest.mark.parametrize(("text", "fragment"), [
    ('timesteps = "32"', "timesteps must be an integer, got str '32'"),
    ("percentile = true", "percentile must be a number, got bool"),
    ("ltb_lr = nan", "ltb_lr must be a finite number"),
    ("thresholds = 3", "unknown configuration option(s): thresholds"),
    ("[conversion]\ntimesteps = 0", "timesteps must be a positive integer"),
    ("burst_budget = 20.0", "burst_budget (rho) must be in (0, 10]"),
    ("iat = 1", "iat must be true or false, got int 1"),
    ("timesteps = ", "cannot parse"),
])
def test_bad_config_files_are_one_line_errors(capsys, tmp_path, text, fragment):
    conf = tmp_path / "conv.toml"
    conf.write_text(text + "\n")
    code = main(["convert", "--model", "cnn_digits", "--data", "digits", "--config", str(conf),
                 "--out", str(tmp_path / "snn.pt")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ann2snn: error: "), err
    assert fragment in err, err
    assert not (tmp_path / "snn.pt").exists()
