"""Data-parallel calibration and evaluation under torch.distributed (2 gloo processes on this machine)
give what one process gives on the same data: exactly for maxima, samples and counts, to 1e-6 for means."""

import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

import ann2snn
from ann2snn import distributed as D
from ann2snn.evaluation import evaluate_classifier

WORLD = 2
# thresholds by every method; batches of 64, 8 (4 rows per rank) and 1 (none for rank 1), sample_size
# below the number of activation rows, so the percentile / MSE reservoir really subsamples
METHODS = {
    "max": dict(threshold="max"),
    "percentile": dict(threshold="percentile", percentile=99.0, sample_size=3000),
    "mse": dict(threshold="mse", sample_size=3000, timesteps=8),
    "ltb": dict(threshold="ltb", ltb_iters=7),
    "ltb_clip": dict(threshold="ltb", ltb_iters=5, ltb_forward="clip", granularity="layer"),
}
# everything that simulates the SNN on calibration data: AdaFire sensitivity + DP, both corrections, SSC, IAT
ADAPT = dict(threshold="max", neuron="adafire", burst_cap=2, burst_initial=3, correction="both", ssc_tau=0.3,
             iat=True, iat_tolerance=0.2, adapt_samples=25, timesteps=4)


def model_and_data():
    from ann2snn.zoo import create_model

    from .helpers import digits_tensors

    x, y = digits_tensors()
    return create_model("cnn_digits", pretrained=True), x[:200], x[1500:1597], y[1500:1597]


def batches(x, size=64):
    """Batches of 64, 64, 64, 8 and 1: the last gives one rank no row at all."""
    return [x[i:i + size] for i in range(0, x.shape[0], size)] + [x[:1]]


def measure(model, xc, xt, yt):
    """Everything distributed runs must reproduce, as plain tensors / numbers."""
    out = {}
    for key, cfg in METHODS.items():
        snn = ann2snn.convert(model, batches(xc), progress=False, **cfg)
        out[key] = [n.threshold.clone() for n in snn.neurons().values()]
        out[key + "_samples"] = snn.info["calibration"]["samples"]
    snn = ann2snn.convert(model, batches(xc), progress=False, **ADAPT)
    neurons = list(snn.neurons().values())
    out["adapt"] = {
        "caps": [n.cap for n in neurons],
        "thresholds": [n.threshold.clone() for n in neurons],
        "bias_shift": [n.bias_shift.clone() for n in neurons],
        "v0_offset": [n.v0_offset.clone() for n in neurons],
        "sensitivity": snn.info["sensitivity"],
        "correction": snn.info["correction"],
        "ssc_scales": snn.info["ssc"]["scales"],
        "ssc_table": snn.info["ssc"]["table"],
        "iat": snn.info["iat"],
    }
    result = evaluate_classifier(snn, (xt, yt), 6, batch_size=30)  # batches of 30, 30 | 30, 7 per rank
    out["eval"] = result.to_dict()
    # a Dataset (split by index) and a plain list of batches (split batch by batch, 4 / 3 per rank)
    out["eval_dataset"] = evaluate_classifier(snn, TensorDataset(xt, yt), 6, batch_size=30, energy=None).to_dict()
    listed = list(zip(xt.split(14), yt.split(14), strict=True))
    out["eval_batches"] = evaluate_classifier(snn, listed, 6).to_dict()
    return out


def _worker(rank, init_file, out_dir):
    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert D.is_distributed() and D.world_size() == WORLD and D.rank() == rank
        model, xc, xt, yt = model_and_data()
        torch.save(measure(model, xc, xt, yt), os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        D.shutdown(sync=False)
        raise
    D.shutdown()  # waits for the peer before tearing down gloo's connections


def assert_close(a, b, path="", exact=False):
    if isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b), path
        else:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=path)
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}", exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_close(u, v, f"{path}[{i}]", exact)
    elif isinstance(a, float) and not exact:
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    torch.set_num_threads(1)
    single = measure(*model_and_data())
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks


def test_every_rank_ends_with_the_same_result(runs):
    _, ranks = runs
    for other in ranks[1:]:
        for key in ranks[0]:
            if not key.startswith("eval"):  # wall time differs
                assert_close(ranks[0][key], other[key], key, exact=True)


def test_max_percentile_and_mse_thresholds_equal_one_process_exactly(runs):
    single, ranks = runs
    for key in ("max", "percentile", "mse"):
        assert_close(single[key], ranks[0][key], key, exact=True)
        assert single[key + "_samples"] == ranks[0][key + "_samples"] == 201


def test_ltb_thresholds_equal_one_process_to_1e6(runs):
    single, ranks = runs
    for key in ("ltb", "ltb_clip"):
        assert_close(single[key], ranks[0][key], key)
        assert not torch.equal(single[key][0], single["max"][0])  # LTB really moved away from max


def test_sensitivity_caps_corrections_ssc_iat_equal_one_process(runs):
    single, ranks = runs
    a, b = single["adapt"], ranks[0]["adapt"]
    assert a["caps"] == b["caps"]
    assert a["ssc_scales"] == b["ssc_scales"]
    assert a["sensitivity"]["spikes"] == b["sensitivity"]["spikes"]  # sums of spike counts: exact
    assert a["sensitivity"]["samples"] == b["sensitivity"]["samples"] == 25
    assert a["ssc_table"]["spikes"] == b["ssc_table"]["spikes"]
    assert_close(a, b, "adapt")
    assert any(float(t.abs().max()) > 0 for t in a["bias_shift"])  # the correction did something
    assert a["iat"]["fit"]["samples"] == b["iat"]["fit"]["samples"] == 25  # the schedule was fitted on all samples


@pytest.mark.parametrize("key", ["eval", "eval_dataset", "eval_batches"])
def test_evaluation_equals_one_process(runs, key):
    single, ranks = runs
    a, b = dict(single[key]), dict(ranks[0][key])
    a.pop("seconds"), b.pop("seconds")
    assert a["samples"] == b["samples"] == 97
    for k in ("accuracy_per_t", "ann_accuracy", "ceiling", "sops_per_t", "macs_per_t"):
        assert a[k] == b[k], k  # ratios of exact integer counts
    if a["energy"] is not None:  # SOPs, spikes, MACs: equal, not close, per layer and in total
        assert a["energy"]["sops"] > 0 and a["energy"]["macs"] > 0
        for k in ("sops", "spikes", "macs", "neuron_updates", "mean_steps", "total_steps", "layers"):
            assert a["energy"][k] == b["energy"][k], k
    # ranks evaluate whole batches, the very ones one process makes; reports merge by exact sums, so
    # even batches dealt round robin (merged in another order) give the same numbers
    assert a == b


def test_shard_range_splits_without_padding():
    for n in range(0, 9):
        for w in (1, 2, 3):
            parts = [D.shard_range(n, r, w) for r in range(w)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(p[1] == q[0] for p, q in zip(parts, parts[1:], strict=False))
            assert max(p[1] - p[0] for p in parts) - min(p[1] - p[0] for p in parts) <= 1


def test_helpers_are_no_ops_in_one_process():
    t = torch.arange(5.0)
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    assert D.all_reduce_sum(t) is t and D.all_reduce_max(t) is t and D.all_gather_cat(t) is t
    assert D.local_slice(t) is t and D.sum_floats([1.0, 2.0]) == [1.0, 2.0]
