"""Choices that promise something about new data: thresholds chosen for the requested T
(``threshold="auto"``), IAT's exit schedule and SSC's allowance checked on held-out adaptation samples."""

import json
import math

import pytest
import torch

import ann2snn
from ann2snn.adaptation.burst import output_divergence
from ann2snn.adaptation.checks import clopper_pearson, split
from ann2snn.adaptation.iat import IATSchedule, _fit_schedule, exit_steps, fit_checked

from .helpers import trained_digits_cnn


@pytest.fixture(scope="module")
def digits():
    return trained_digits_cnn()


def _divergence(snn, x, T):
    return output_divergence(snn.run(x, T), snn.analog(x, "relu"), "kl")


@pytest.mark.parametrize("T,expected", [(4, "ltb"), (64, "mse")])
def test_auto_thresholds_pick_the_method_closest_to_the_ann_at_the_requested_T(digits, T, expected):
    """Both candidates are exactly what ``ltb`` / ``mse`` give alone; ``auto`` keeps the one whose spiking
    model, run for T steps on the adaptation samples, diverges least from the ANN: LTB at few steps,
    MSE at many (its clipping values rise towards the maxima as T grows, LTB's stay low)."""
    model, xtr, _, _, _ = digits
    data = xtr[:512].split(128)
    single = {m: ann2snn.convert(model, data, threshold=m, timesteps=T, progress=False) for m in ("ltb", "mse")}
    auto = ann2snn.convert(model, data, threshold="auto", timesteps=T, progress=False)
    x = xtr[:auto.config.adapt_samples]
    measured = {m: _divergence(snn, x, T) for m, snn in single.items()}
    info = auto.info["thresholds"]
    assert info["picked"] == min(measured, key=measured.get) == expected
    assert info["samples"] == len(x) and info["timesteps"] == T
    for m in measured:
        assert info["candidates"][m]["divergence"] == pytest.approx(measured[m], rel=1e-6)
    for name, neuron in auto.neurons().items():
        assert torch.equal(neuron.threshold, single[expected].neurons()[name].threshold)
    assert auto.info["layers"][0]["clip_value_mean"] == pytest.approx(
        single[expected].info["layers"][0]["clip_value_mean"])


def test_ltb_stays_the_default_and_every_method_stays_selectable(digits):
    assert ann2snn.ConversionConfig().threshold == "ltb"
    model, xtr, _, _, _ = digits
    snn = ann2snn.convert(model, xtr[:128], threshold="max", timesteps=8, progress=False)
    assert "thresholds" not in snn.info


def test_clopper_pearson_matches_the_closed_forms():
    for n in (1, 10, 128):
        alpha = 0.05
        assert clopper_pearson(0, n) == (0.0, pytest.approx(1 - (alpha / 2) ** (1 / n), abs=1e-9))
        assert clopper_pearson(n, n) == (pytest.approx((alpha / 2) ** (1 / n), abs=1e-9), 1.0)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(1 - hi, abs=1e-9) and 0.18 < lo < 0.19
    fit, check = split(10, 0.5, 0)
    assert sorted(torch.cat([fit, check]).tolist()) == list(range(10)) and len(check) == 5


def _held_out_trap(n=40, T=8, seed=0):
    """Confidences / predictions ``[T, n]``: the samples to fit on are confident early and never change
    their class; half of those to check on are even more confident at first but change class at step 4."""
    fit, check = split(n, 0.5, seed)
    conf = torch.linspace(0.5, 0.99, T)[:, None].repeat(1, n)
    pred = torch.zeros(T, n, dtype=torch.long)
    conf[:, fit] = 0.99
    traps = check[: len(check) // 2]
    conf[:, traps] = 0.995
    pred[:3, traps] = 1
    return conf, pred, fit, check, traps


def test_iat_split_check_tightens_a_schedule_that_fails_on_held_out_samples():
    conf, pred, fit, check, traps = _held_out_trap()
    T = conf.shape[0]
    base = IATSchedule(0.6, 0.4, [0.5 - 0.05 * t for t in range(T)])
    tol = 0.05
    naive = _fit_schedule(base, conf[:, fit], pred[:, fit], tol)  # fitted on the first part alone
    steps = exit_steps(torch.tensor(naive.thresholds()), conf[:, check])
    naive_changed = float((pred[:, check].gather(0, steps[None])[0] != pred[-1, check]).float().mean())
    assert naive_changed > tol  # it keeps its tolerance on the samples it was fitted on only
    checked = fit_checked(base, conf, pred, tol, 0.5, seed=0)
    steps = exit_steps(torch.tensor(checked.thresholds()), conf[:, check])
    changed = int((pred[:, check].gather(0, steps[None])[0] != pred[-1, check]).sum())
    f = checked.fit
    assert f["tightened"] > 0 and checked.a > naive.a
    assert changed <= tol * len(check) and f["check"]["changed"] == changed
    assert f["check_samples"] == len(check) and f["fit_samples"] == len(fit)
    assert f["check"]["interval"] == list(clopper_pearson(changed, len(check)))
    assert f["mean_steps"] > 1  # tightening costs steps


def test_iat_tolerance_records_the_held_out_change_with_its_interval(digits):
    model, xtr, _, _, _ = digits
    snn = ann2snn.convert(model, xtr[:512].split(128), threshold="mse", timesteps=16, iat=True,
                          iat_tolerance=0.01, adapt_samples=200, progress=False)
    fit = snn.info["iat"]["fit"]
    assert fit["fit_samples"] + fit["check_samples"] == fit["samples"] == 200
    lo, hi = fit["check"]["interval"]
    assert lo <= fit["check"]["rate"] <= hi and fit["check"]["rate"] <= 0.01
    # the recorded check is what the schedule does on those samples
    _, check = split(200, 0.5, snn.config.seed)
    x = xtr[:200][check]
    full = snn.run(x, 16).argmax(1)
    res = ann2snn.run_iat(snn, x, 16)
    assert int((res.output.argmax(1) != full).sum()) == fit["check"]["changed"]
    assert res.mean_steps == pytest.approx(fit["check"]["mean_steps"])


def test_ssc_max_loss_respects_the_held_out_check_and_records_its_interval(digits):
    model, xtr, _, _, _ = digits
    data, n = xtr[:512].split(128), 256
    plain = ann2snn.convert(model, data, threshold="mse", timesteps=8, progress=False)
    snn = ann2snn.convert(model, data, threshold="mse", timesteps=8, ssc_max_loss=0.02, progress=False)
    ssc = snn.info["ssc"]
    _, check = split(n, 0.5, snn.config.seed)
    x = xtr[:n][check]
    changed = int((snn.run(x, 8).argmax(1) != plain.run(x, 8).argmax(1)).sum())
    assert changed == ssc["check"]["changed"] <= math.floor(0.02 * len(check))
    assert ssc["check"]["samples"] == len(check) and ssc["fit"]["samples"] == n - len(check)
    assert ssc["check"]["interval"] == list(clopper_pearson(changed, len(check)))
    kept = [t for t in ssc["tries"] if t["kept"]]
    assert kept and ssc["tau"] == kept[0]["tau"] and ssc["check"]["sops_after"] < ssc["check"]["sops_before"]
    # every cheaper combination that met the target where it was chosen failed the check
    cheaper = [t for t in ssc["tries"] if t["sops"] < kept[0]["sops"] and t["fit_changed"] <= 0.02 * ssc["fit"]["samples"]]
    assert all(t["check_changed"] is not None and t["check_changed"] > 0.02 * len(check) for t in cheaper)


def test_ssc_max_loss_validation(digits):
    with pytest.raises(ann2snn.ConfigError, match="not both"):
        ann2snn.ConversionConfig(ssc_tau=1.0, ssc_max_loss=0.01)
    with pytest.raises(ann2snn.ConfigError, match="ssc_max_loss"):
        ann2snn.ConversionConfig(ssc_max_loss=1.5)


def test_cli_evaluate_and_report_show_the_checked_choices(capsys, tmp_path):
    from ann2snn.cli import main
    from ann2snn.zoo import get_entry

    if not get_entry("vgg_digits").has_checkpoint:
        pytest.skip("the bundled vgg_digits checkpoint is not installed")
    out = tmp_path / "snn.pt"
    assert main(["convert", "--model", "vgg_digits", "--data", "digits", "--out", str(out), "--calib-samples", "200",
                 "--timesteps", "8", "--threshold", "auto", "--ltb-iters", "20", "--ssc-max-loss", "0.02", "--iat", "--iat-tolerance", "0.02",
                 "-q"]) == 0
    snn = ann2snn.load(out)
    assert snn.config.ssc_max_loss == 0.02 and snn.config.threshold == "auto"
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "digits", "--max-samples", "60", "--report", str(tmp_path / "r"),
                 "-q"]) == 0
    printed = capsys.readouterr().out
    page = (tmp_path / "r" / "report.md").read_text()
    picked = snn.info["thresholds"]["picked"]
    iat, ssc = snn.info["iat"]["fit"]["check"], snn.info["ssc"]["check"]
    for text in (printed, page):
        assert f"auto: {picked} thresholds" in text or f"thresholds: {picked} (auto)" in text
        assert f"on {iat['samples']} held-out adaptation samples {iat['changed']} changed" in text
        assert f"interval {iat['interval'][0] * 100:.2f} % to {iat['interval'][1] * 100:.2f} %" in text
        assert f"on {ssc['samples']} held-out adaptation samples {ssc['changed']} changed" in text
    assert "## Calibration choices and how sure they are" in page
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", "digits", "--max-samples", "30", "--json", "-q"]) == 0


    checks = json.loads(capsys.readouterr().out)["meta"]["calibration_checks"]
    assert checks["iat"]["check"] == iat and checks["ssc"]["check"] == ssc and checks["thresholds"]["picked"] == picked
