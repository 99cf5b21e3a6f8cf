import pytest
import torch

import ann2snn
from ann2snn.adaptation.iat import IATSchedule, Stream, calibrate_iat, run_iat
from ann2snn.adaptation.ssc import SSCTable, choose_scales
from ann2snn.energy import SynapticCounter

from .helpers import trained_digits_cnn
from .test_adafire import brute_force


@pytest.fixture(scope="module")
def digits():
    return trained_digits_cnn()


@pytest.mark.parametrize("seed", range(15))
def test_ssc_dp_equals_brute_force_and_respects_tau(seed):
    g = torch.Generator().manual_seed(seed)
    layers, scales = 3, [1.0, 1.5, 2.0, 3.0]
    base = 0.2
    div = (base + torch.rand(layers, len(scales), generator=g) * 0.3)
    div[:, 0] = base  # r = 1 leaves the divergence at its baseline
    spikes = torch.rand(layers, len(scales), generator=g) * 100
    table = SSCTable([f"l{i}" for i in range(layers)], scales, div.tolist(), spikes.tolist(), base, 0.0, "kl", 4)
    tau = float(torch.rand(1, generator=g)) * 2
    chosen = choose_scales(table, tau)
    idx = [scales.index(chosen[f"l{i}"]) for i in range(layers)]
    used = sum(max(div[i, j].item() - base, 0) for i, j in enumerate(idx))
    assert used <= tau * base + 1e-9
    costs = [[max(v - base, 0) * 1e6 for v in row] for row in div.tolist()]
    # brute force over the same problem (costs scaled to integers for the shared helper)
    best = brute_force([[int(c) for c in row] for row in costs], spikes.tolist(), int(tau * base * 1e6))
    got = sum(spikes[i, j].item() for i, j in enumerate(idx))
    assert got <= best + 1e-6 + 1e-3 * best


def test_ssc_tau_zero_changes_nothing(digits):
    model, xtr, _, xte, _ = digits
    plain = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8)
    same = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8, ssc_tau=0.0)
    assert torch.equal(plain.run(xte, 8), same.run(xte, 8))


def test_ssc_cuts_spikes_within_the_allowance(digits):
    model, xtr, _, xte, yte = digits
    plain = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8)
    ssc = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8, ssc_tau=1.0)
    assert any(r > 1.0 for r in ssc.info["ssc"]["scales"].values())
    with SynapticCounter(plain) as a:
        out_a = plain.run(xte, 8)
    with SynapticCounter(ssc) as b:
        out_b = ssc.run(xte, 8)
    assert b.report().spikes < a.report().spikes
    acc_a = (out_a.argmax(1) == yte).float().mean()
    acc_b = (out_b.argmax(1) == yte).float().mean()
    assert acc_b >= acc_a - 0.05


@pytest.mark.parametrize("seed", range(8))
def test_ssc_sop_cost_equals_brute_force(seed):
    import itertools

    g = torch.Generator().manual_seed(100 + seed)
    layers, scales, base = 3, [1.0, 2.0, 3.0], 0.2
    div = base + torch.rand(layers, len(scales), generator=g) * 0.3
    div[:, 0] = base
    spikes = torch.rand(layers, len(scales), generator=g) * 100
    price = (torch.rand(layers, generator=g) * 50 + 1).tolist()
    table = SSCTable([f"l{i}" for i in range(layers)], scales, div.tolist(), spikes.tolist(), base, 0.0, "kl", 4,
                     price)
    tau = float(torch.rand(1, generator=g)) * 2
    chosen = choose_scales(table, tau, cost="sops")
    idx = [scales.index(chosen[f"l{i}"]) for i in range(layers)]

    def sops(pick):
        return sum(spikes[i, j].item() * price[i] for i, j in enumerate(pick))

    feasible = [p for p in itertools.product(range(len(scales)), repeat=layers)
                if sum(div[i, j].item() - base for i, j in enumerate(p)) <= tau * base]
    assert sum(div[i, j].item() - base for i, j in enumerate(idx)) <= tau * base + 1e-9
    # exact up to the DP's cost discretisation (1/2000 of the budget)
    assert sops(idx) <= min(sops(p) for p in feasible) * (1 + 1e-3) + 1e-6
    with pytest.raises(ValueError, match="cost"):
        choose_scales(table, tau, cost="joules")


def test_ssc_corrects_again_after_scaling(digits):
    """With a correction configured, the scaled thresholds get their own correction: the per-channel
    mean error that the correction cancels is smaller than with the corrections of the unscaled model."""
    from ann2snn.adaptation import correction as corr
    from ann2snn.adaptation.ssc import compress

    model, xtr, _, _, _ = digits
    x = xtr[:128]
    mean_errors = {}
    for mode in ("none", "auto"):
        snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8, correction="light")
        scales = compress(snn, x, 4.0, 8, verify=False, correction=mode)
        assert any(r > 1.0 for r in scales.values())
        reference = corr._analog_outputs(snn, x, "clip")
        errs = [corr._measure(snn, x, 8, n, reference[n]) for n in snn.neurons()]
        mean_errors[mode] = sum(float(corr._channel_mean(e, True).abs().mean()) for e in errs)
        assert snn.info["ssc"]["recorrected"] == (None if mode == "none" else "light")
        log = snn.info["ssc"]["correction"]  # the correction of the kept thresholds, as measured
        if mode == "none":
            assert log is None
        else:
            assert list(log) == list(snn.neurons())
            assert sum(v["mean_error_after"] for v in log.values()) == pytest.approx(mean_errors[mode], rel=1e-4)
    assert "correction" not in str(snn.info["ssc"]["checks"])
    assert mean_errors["auto"] < 0.7 * mean_errors["none"]


@pytest.mark.parametrize("tau", [1.0, 8.0])
def test_ssc_combination_is_verified_against_the_allowance(digits, tau):
    from ann2snn.adaptation.burst import _first_tensor, divergence_sum
    from ann2snn.adaptation.ssc import compress

    model, xtr, _, _, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8)
    x = xtr[:128]
    ann = _first_tensor(snn.analog(x, "relu"))
    scales = compress(snn, x, tau, 8)
    info = snn.info["ssc"]
    total, count = divergence_sum(_first_tensor(snn.run(x, 8)), ann, info["table"]["metric"])
    base = info["table"]["baseline_divergence"]
    # whatever the DP chose from one-layer measurements, the combination kept respects the allowance
    # on the calibration data (or nothing is scaled)
    assert total / count <= (1 + tau) * base + 1e-9 or all(r == 1.0 for r in scales.values())
    if info["checks"]:
        assert info["checks"][0]["tau"] == tau and all(c["tau"] <= tau for c in info["checks"])
        kept = [c for c in info["checks"] if c["kept"]]
        passing = [c for c in info["checks"] if c["passed"]]
        assert len(kept) == (1 if passing else 0)
        if kept:  # the cheapest combination that respects the allowance
            assert kept[0]["sops"] == min(c["sops"] for c in passing)
        # what the report shows is the kept check: the model kept, measured on the calibration data
        assert info["calibration"]["divergence_after"] == pytest.approx(total / count, rel=1e-5)
        with SynapticCounter(snn) as c:
            snn.run(x, 8)
        assert info["calibration"]["sops_after"] == pytest.approx(c.report().sops, rel=1e-6)


def test_iat_impossible_threshold_equals_plain_run(digits):
    model, xtr, _, xte, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=16)
    never = IATSchedule(a=2.0, b=0.0, mean_entropy=[0.0] * 16)
    res = run_iat(snn, xte, 16, never)
    assert torch.equal(res.output, snn.run(xte, 16))
    assert torch.all(res.exit_steps == 16)


def test_iat_exits_early_keeps_order_and_matches_plain_run_at_exit(digits):
    model, xtr, _, xte, yte = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=16, iat=True)
    assert "iat" in snn.info
    res = run_iat(snn, xte, 16)
    assert res.mean_steps < 16
    _, history = snn.run(xte, 16, return_all=True)
    for i in range(0, xte.shape[0], 7):  # output after early exit = the plain run at that step
        t = int(res.exit_steps[i])
        assert torch.allclose(res.output[i], history[t - 1, i], atol=1e-5)
    acc = (res.output.argmax(1) == yte).float().mean()
    full = (history[-1].argmax(1) == yte).float().mean()
    assert acc >= full - 0.05


def test_iat_follows_the_configs_delayed_evaluation(digits):
    # a model converted with t0 = 3 averages from step 4 on in run() and in run_iat() alike
    model, xtr, _, xte, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=16, t0=3)
    never = IATSchedule(a=2.0, b=0.0, mean_entropy=[0.0] * 16)
    res = run_iat(snn, xte, 16, never)
    assert torch.equal(res.output, snn.run(xte, 16))
    assert not torch.equal(res.output, run_iat(snn, xte, 16, never, t0=0).output)
    always = IATSchedule(a=-1.0, b=0.0, mean_entropy=[0.0] * 16)
    assert torch.all(run_iat(snn, xte, 16, always).exit_steps == 4)  # no exit before t0 + 1


def test_iat_exited_samples_stop_costing(digits):
    model, xtr, _, xte, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=16)
    calibrate_iat(snn, [xtr[:256]], 16)
    with SynapticCounter(snn) as c:
        res = run_iat(snn, xte, 16)
    rep = c.report()
    assert rep.mean_steps == pytest.approx(res.mean_steps)
    with SynapticCounter(snn) as full:
        snn.run(xte, 16)
    assert rep.sops < full.report().sops
    per = torch.tensor(rep.per_sample["steps"])
    assert torch.equal(per.long(), res.exit_steps)


def test_stream_api_reports_done_samples(digits):
    model, xtr, _, xte, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8, iat=True)
    seen = 0
    stream = Stream(snn, xte[:32], 8)
    for state in stream:
        assert state.active.numel() == state.mean_output.shape[0] == state.done.numel()
        seen += int(state.done.sum())
    assert seen == 32
    assert stream.result().output.shape == (32, 10)


def test_iat_tolerance_fits_the_schedule_within_the_allowance(digits):
    """A fitted schedule changes at most `tolerance` of the calibration samples' predictions against
    the full run, and needs no more steps than any grid schedule that also meets it (here: the paper's)."""
    from ann2snn.adaptation.iat import calibrate_iat, run_iat

    model, xtr, _, _, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=16)
    calib = xtr[:512]
    full = snn.run(calib, 16).argmax(1)
    paper = calibrate_iat(snn, calib.split(128), 16)
    paper_res = run_iat(snn, calib, 16, paper)
    paper_changed = float((paper_res.output.argmax(1) != full).float().mean())
    for tol in (0.0, 0.02):
        fitted = calibrate_iat(snn, calib.split(128), 16, tolerance=tol)
        res = run_iat(snn, calib, 16, fitted)
        changed = float((res.output.argmax(1) != full).float().mean())
        assert changed <= tol + 1e-9
        assert fitted.fit["changed"] == pytest.approx(changed)
        assert fitted.fit["mean_steps"] == pytest.approx(res.mean_steps)
        if paper_changed <= tol:  # the paper's constants are on the grid: the fit can only be faster
            assert res.mean_steps <= paper_res.mean_steps + 1e-9
    assert res.mean_steps < 16  # with 2 % allowance some samples do exit early
    with pytest.raises(ann2snn.ConfigError):
        calibrate_iat(snn, calib, 16, tolerance=1.5)


def test_ssc_backs_off_when_one_layer_measurements_understate_the_combination(digits, monkeypatch):
    import ann2snn.adaptation.ssc as ssc

    real = ssc.ssc_table

    def understated(*args, **kwargs):  # every scale looks free: the DP scales every layer to the maximum
        table = real(*args, **kwargs)
        table.divergence = [[table.baseline_divergence] * len(row) for row in table.divergence]
        return table

    monkeypatch.setattr(ssc, "ssc_table", understated)
    model, xtr, _, _, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8)
    before = {n: m.threshold.clone() for n, m in snn.neurons().items()}
    unverified = ssc.choose_scales(understated(snn, xtr[:128], 8), 0.5)
    assert all(r == max(ssc.DEFAULT_SCALES) for r in unverified.values())
    chosen = ssc.compress(snn, xtr[:128], 0.5, 8)
    checks = snn.info["ssc"]["checks"]
    # the same combination is run once, however many allowances the DP gives it for
    assert len(checks) == 1 and checks[0]["divergence"] > 1.5 * snn.info["ssc"]["table"]["baseline_divergence"]
    assert not checks[0]["passed"] and not checks[0]["kept"]
    # nothing respects the allowance when every layer is at its largest scale: back to the plain thresholds
    assert all(r == 1.0 for r in chosen.values())
    info = snn.info["ssc"]  # and the report describes the model kept, not the last rejected one
    assert info["recorrected"] is None
    assert info["calibration"]["sops_after"] == info["calibration"]["sops_before"]
    assert info["calibration"]["divergence_after"] == info["calibration"]["divergence_before"]
    assert all(torch.equal(m.threshold, before[n]) for n, m in snn.neurons().items())


def test_ssc_prices_do_not_depend_on_counter_flushes(digits):
    """The counter flushes every 255 steps; prices divide the SOPs attributed since the last flush by
    the spikes of the same steps, so a run past 255 steps prices spikes like a shorter one."""
    from ann2snn.adaptation.ssc import ssc_table

    model, xtr, _, _, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8)
    short = ssc_table(snn, xtr[:32], 200, scales=[1.0]).sops_per_spike
    long = ssc_table(snn, xtr[:32], 300, scales=[1.0]).sops_per_spike
    assert all(p > 0 for p in short)
    assert all(abs(a - b) <= 0.1 * b for a, b in zip(long, short, strict=True)), (short, long)


def test_ssc_search_bisects_to_the_cheapest_combination_within_the_allowance(digits, monkeypatch):
    """Combinations twice as harmful as the one-layer table says: the full allowance fails, half passes,
    and the search then tries allowances in between, keeping the passing one with the fewest SOPs."""
    import ann2snn.adaptation.ssc as ssc

    model, xtr, _, _, _ = digits
    snn = ann2snn.convert(model, xtr[:256], threshold="mse", timesteps=8)
    x = xtr[:64]
    table = ssc.ssc_table(snn, x, 8)
    base = {n: m.threshold.clone() for n, m in snn.neurons().items()}

    def scales_in_use():
        return {n: float((m.threshold / base[n]).flatten()[0]) for n, m in snn.neurons().items()}

    def twice_as_harmful(snn_, x_, timesteps, metric, ann=None, spikes=False):
        idx = {n: min(range(len(table.scales)), key=lambda i: abs(table.scales[i] - r))
               for n, r in scales_in_use().items()}
        rows = {n: i for i, n in enumerate(table.layers)}
        rise = sum(max(table.divergence[rows[n]][i] - table.baseline_divergence, 0.0) for n, i in idx.items())
        sops = sum(table.spikes[rows[n]][i] * table.sops_per_spike[rows[n]] for n, i in idx.items())
        return {"divergence": table.baseline_divergence + 2 * rise, "sops": sops}

    monkeypatch.setattr(ssc, "measure", twice_as_harmful)
    tau = 4.0
    chosen, checks = ssc.apply_verified(snn, table, tau, x, 8, cost="sops", correction=None, refine=3)
    assert not checks[0]["passed"] and checks[0]["tau"] == tau
    taus = [c["tau"] for c in checks]
    first_pass = next(c["tau"] for c in checks if c["passed"])
    assert any(first_pass < t < tau for t in taus), taus  # refined above the first allowance that held
    assert len(checks) <= 1 + 6 + 3  # halvings to tau / 64, then three bisection steps at most
    passing = [c for c in checks if c["passed"]]
    kept = [c for c in checks if c["kept"]]
    assert len(kept) == 1 and kept[0]["sops"] == min(c["sops"] for c in passing)
    assert kept[0]["divergence"] <= (1 + tau) * table.baseline_divergence
    # the model holds the kept combination (not the last one tried)
    assert scales_in_use() == pytest.approx(chosen) and chosen != {n: 1.0 for n in table.layers}
    assert twice_as_harmful(snn, x, 8, table.metric)["sops"] == pytest.approx(kept[0]["sops"])
