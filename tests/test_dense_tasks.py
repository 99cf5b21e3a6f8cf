"""Synthetic dense / video / event data, task metrics, signed neurons, the bundled dense models."""

from __future__ import annotations

import json

import pytest
import torch

import ann2snn
from ann2snn.data.datasets import DatasetNotFoundError
from ann2snn.neurons.modules import SpikingNeuron
from ann2snn.tasks import (
    centernet_targets,
    coco_map,
    confusion_matrix,
    decode_centernet,
    evaluate_task,
    mean_iou,
)


def synthetic_or_skip():
    from ann2snn.data import synthetic

    try:
        synthetic._objects("test")
    except DatasetNotFoundError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    return synthetic


# -- generators ------------------------------------------------------------------------------------

def test_generators_are_deterministic_and_well_formed():
    S = synthetic_or_skip()
    x, y = S.make_segmentation(6, "test", seed=3)
    x2, y2 = S.make_segmentation(6, "test", seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == (6, 1, 32, 32) and y.shape == (6, 32, 32) and y.dtype == torch.long
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and int(y.max()) <= 4
    assert ((x[:, 0] > 0) == (y > 0)).all()  # every object pixel is labelled, the background is empty
    assert not torch.equal(S.make_segmentation(6, "test", seed=4)[0], x)

    x, y = S.make_detection(8, "test", seed=3)
    assert torch.equal(y, S.make_detection(8, "test", seed=3)[1])
    assert x.shape == (8, 1, 48, 48) and y.shape == (8, S.MAX_OBJECTS, 5)
    real = y[..., 0] >= 0
    assert real[:, 0].all() and int(real.sum()) >= 8
    b = y[real]
    assert (b[:, 3] > b[:, 1]).all() and (b[:, 4] > b[:, 2]).all() and (b[:, 1:] >= 0).all() and (b[:, 1:] <= 48).all()
    for i in range(8):  # the pixels inside the boxes hold all the ink
        inside = torch.zeros(48, 48, dtype=torch.bool)
        for r in y[i][y[i, :, 0] >= 0]:
            inside[int(r[2]):int(r[4]), int(r[1]):int(r[3])] = True
        assert float(x[i, 0][~inside].sum()) == 0

    v, d = S.make_video(8, "test", seed=3)
    assert v.shape == (8, 1, 8, 24, 24) and torch.equal(v, S.make_video(8, "test", seed=3)[0])
    assert int(d.max()) < 16
    # the object moves: the centre of mass shifts in the labelled direction by 7 frames x the speed
    mass = v[:, 0].sum((2, 3))
    rows = (v[:, 0].sum(3) * torch.arange(24.0)).sum(2) / mass
    cols = (v[:, 0].sum(2) * torch.arange(24.0)).sum(2) / mass
    angle = (d % 8).float() * torch.pi / 4
    travel = 7 * torch.tensor(S.VIDEO_SPEEDS)[d // 8]
    shift_r, shift_c = rows[:, -1] - rows[:, 0], cols[:, -1] - cols[:, 0]
    along = shift_c * torch.cos(angle) - shift_r * torch.sin(angle)
    assert ((along - travel).abs() < 0.5).all(), (along, travel)


def test_events_and_their_frames():
    S = synthetic_or_skip()
    ev, y = S.make_events(3, "test", seed=5, subframes=16)
    assert ev.dtype == torch.uint8 and ev.shape == (3, 16, 2, 24, 24) and y.shape == (3,)
    assert torch.equal(ev, S.make_events(3, "test", seed=5, subframes=16)[0])
    assert int(ev[:, :, 0].sum()) > 100 and int(ev[:, :, 1].sum()) > 100  # ON and OFF events
    frames = S.bin_events(ev, 4)
    assert frames.shape == (4, 3, 2, 24, 24)
    torch.testing.assert_close(frames.mean(0), S.mean_event_frame(ev))
    with pytest.raises(ValueError):
        S.bin_events(ev, 5)


def test_event_pixel_model_by_hand():
    """An ideal DVS pixel: floor(|dlogI| / C) events of the change's sign; the reference moves by them."""
    S = synthetic_or_skip()
    ev, _ = S.make_events(2, "test", seed=0, subframes=8, contrast=0.15)
    # a pixel the object never reaches stays silent; events are a small fraction of the pixels
    assert int(ev[:, :, :, 0, 0].sum()) == 0 or int(ev[:, :, :, -1, -1].sum()) == 0
    assert float((ev > 0).float().mean()) < 0.2


# -- metrics ---------------------------------------------------------------------------------------

def test_mean_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 1]])
    conf = confusion_matrix(pred, target, 3)
    assert conf.tolist() == [[2, 1, 0], [0, 3, 0], [1, 0, 1]]
    # IoU: class 0: 2 / (3 + 3 - 2) = 0.5; class 1: 3 / (4 + 3 - 3) = 0.75; class 2: 1 / (1 + 2 - 1) = 0.5
    assert mean_iou(conf) == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    assert mean_iou(confusion_matrix(target, target, 4)) == 1.0  # class 3 absent: left out


def test_centernet_targets_decode_back_to_the_boxes():
    boxes = torch.tensor([[[1, 4.0, 8.0, 18.0, 30.0], [3, 30.0, 2.0, 44.0, 12.0], [-1, -1, -1, -1, -1]]])
    heat, reg, mask = centernet_targets(boxes, 4, (12, 12), 4)
    assert int(mask.sum()) == 2 and float(heat.max()) == 1.0
    assert heat[0, 1, 4, 2] == 1.0 and heat[0, 3, 1, 9] == 1.0  # centres (11, 19) / 4 and (37, 7) / 4
    logits = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    dets = decode_centernet(logits, reg, 4, min_score=0.5)[0]
    assert sorted(dets["labels"].tolist()) == [1, 3]
    got = dets["boxes"][dets["labels"].argsort()]
    torch.testing.assert_close(got, boxes[0, :2, 1:], atol=1e-4, rtol=0)


def test_coco_map_on_hand_made_detections():
    pytest.importorskip("pycocotools")
    gt = torch.tensor([[[0, 0.0, 0.0, 10.0, 10.0], [1, 20.0, 20.0, 30.0, 30.0]],
                       [[0, 5.0, 5.0, 15.0, 15.0], [-1, -1, -1, -1, -1]]])

    def det(boxes, scores, labels):
        return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}

    perfect = [det([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]], [0.9, 0.8], [0, 1]),
               det([[5.0, 5.0, 15.0, 15.0]], [0.7], [0])]
    assert coco_map(perfect, gt, 2)["map50"] == pytest.approx(1.0)
    # the class-1 box shifted to IoU 1/3 (< 0.5): class 1 AP 0, class 0 AP 1 -> mAP 0.5
    shifted = [det([[0.0, 0.0, 10.0, 10.0], [25.0, 20.0, 35.0, 30.0]], [0.9, 0.8], [0, 1]),
               det([[5.0, 5.0, 15.0, 15.0]], [0.7], [0])]
    assert coco_map(shifted, gt, 2)["map50"] == pytest.approx(0.5)
    # shifted by 2 px: IoU 8/12 = 0.67 >= 0.5, still a hit at 0.5 but not at stricter thresholds
    near = [det([[0.0, 0.0, 10.0, 10.0], [22.0, 20.0, 32.0, 30.0]], [0.9, 0.8], [0, 1]),
            det([[5.0, 5.0, 15.0, 15.0]], [0.7], [0])]
    m = coco_map(near, gt, 2)
    assert m["map50"] == pytest.approx(1.0) and m["map"] < 1.0


# -- signed neurons --------------------------------------------------------------------------------

def test_signed_neuron_takes_spikes_back_by_hand():
    xs = [0.9, 0.9, 0.9, -0.9, -0.9, -0.9, 0.3]
    plain, signed = SpikingNeuron(torch.tensor(1.0)), SpikingNeuron(torch.tensor(1.0), signed=True)
    out_p = [float(plain(torch.tensor([[x]]))) for x in xs]
    out_s = [float(signed(torch.tensor([[x]]))) for x in xs]
    assert out_p == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # v: 1.4 -> .4, 1.3 -> .3, 1.2 -> .2, -.7, ...
    assert out_s == [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 0.0]  # the net count follows round(sum) >= 0
    assert signed.count is not None and float(signed.count) == 0.0
    never = SpikingNeuron(torch.tensor(1.0), signed=True)
    assert [float(never(torch.tensor([[-2.0]]))) for _ in range(3)] == [0.0, 0.0, 0.0]  # no net negative count


def test_signed_snn_follows_sign_changing_sequences():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 36, 4)).eval()
    # every sample's input flips sign half-way: the mean is small, the halves are large
    half = torch.rand(16, 3, 2, 6, 6) * 2
    frames = torch.cat([half, -half + 0.1 * torch.rand_like(half)])
    ref = model(frames.mean(0)).detach()
    calib = frames.flatten(0, 1)
    err = {}
    for signed in (False, True):
        snn = ann2snn.convert(model, calib, threshold="max", signed=signed, progress=False)
        out = snn.run(frames, sequence=True)
        err[signed] = float((out - ref).abs().mean() / ref.abs().mean())
    assert err[True] < 0.1 and err[True] < err[False] / 3


def test_step_cap_lets_bursts_through():
    """A charge of 3 thresholds arriving at step 7 of 8: an IF neuron sends 1 spike a step (2 by the end),
    one with step_cap=4 sends the 3 at once; the threshold is the IF one either way."""
    xs = [0.0] * 6 + [3.0, 0.0]
    for cap, expected in ((1, [0.0] * 6 + [1.0, 1.0]), (4, [0.0] * 6 + [3.0, 0.0])):
        n = SpikingNeuron(torch.tensor(1.0), cap=cap, signed=True)
        assert [float(n(torch.tensor([[x]]))) for x in xs] == expected
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
    calib = torch.rand(64, 4)
    plain = ann2snn.convert(model, calib, threshold="max", progress=False)
    capped = ann2snn.convert(model, calib, threshold="max", step_cap=4, progress=False)
    for a, b in zip(plain.neurons().values(), capped.neurons().values(), strict=True):
        assert a.cap == 1 and b.cap == 4 and torch.equal(a.threshold, b.threshold)
    with pytest.raises(ann2snn.ConfigError, match="step_cap"):
        ann2snn.ConversionConfig(neuron="adafire", step_cap=2)


# -- the bundled models ----------------------------------------------------------------------------

def test_synthetic_datasets_match_their_zoo_models():
    from ann2snn.data import DATASETS
    from ann2snn.zoo import get_entry

    for name in ("unet_seg", "centernet_det", "video3d_motion", "eventcnn_events"):
        e = get_entry(name)
        assert DATASETS[e.dataset].input_shape == e.input_shape and DATASETS[e.dataset].num_classes == e.num_classes
        out = e.factory().eval()(torch.zeros(2, *e.input_shape))
        if e.task == "detection":
            assert out["heatmap"].shape == (2, 4, 12, 12) and out["box"].shape == (2, 4, 12, 12)
        elif e.task == "segmentation":
            assert out.shape == (2, 5, 32, 32)
        else:
            assert out.shape == (2, e.num_classes)


def _pretrained_or_skip(name):
    from ann2snn.zoo import CheckpointNotFoundError, create_model

    try:
        return create_model(name, pretrained=True)
    except CheckpointNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", ["unet_seg", "centernet_det", "video3d_motion", "eventcnn_events"])
def test_bundled_dense_models_converge_to_the_ann(name):
    S = synthetic_or_skip()
    model = _pretrained_or_skip(name)
    from ann2snn.zoo import get_entry

    ds = S.synthetic_dataset(get_entry(name).dataset, "test", n=16) if name != "eventcnn_events" else None
    x = ds.x if ds is not None else S.mean_event_frame(S.make_events(16, "test", seed=2, subframes=8)[0])
    torch.set_num_threads(1)
    snn = ann2snn.convert(model, x[:12], threshold="max", progress=False)
    xt = x[12:]
    ref = snn.analog(xt, "clip")  # test activations above the calibration maximum are clipped
    _, hist = snn.run(xt, 128, return_all=True)

    def err(out, r):
        if isinstance(r, dict):
            return sum(float((out[k] - r[k]).abs().mean() / r[k].abs().mean()) for k in r) / len(r)
        return float((out - r).abs().mean() / r.abs().mean())

    def at(t):
        return {k: v[t - 1] for k, v in hist.items()} if isinstance(hist, dict) else hist[t - 1]

    e16, e128 = err(at(16), ref), err(at(128), ref)
    # error ~ 1 / T: the deep detector (8 neuron layers, thresholds at the max of 12 images) is slowest
    assert e128 < e16 / 2.5 and e128 < 0.3, (e16, e128)


def test_evaluate_task_segmentation_and_detection_reach_the_ann():
    S = synthetic_or_skip()
    for name, task in (("unet_seg", "segmentation"), ("centernet_det", "detection")):
        if task == "detection":
            pytest.importorskip("pycocotools")
        model = _pretrained_or_skip(name)
        from ann2snn.zoo import get_entry

        ds = S.synthetic_dataset(get_entry(name).dataset, "test", n=24)
        torch.set_num_threads(1)
        snn = ann2snn.convert(model, ds.x[:16], threshold="max", progress=False)
        res = evaluate_task(snn, (ds.x[16:], ds.y[16:]), task, [4, 64])
        assert res.metric in ("mIoU", "mAP@0.5") and set(res.snn) == {4, 64}
        assert abs(res.snn[64] - res.ann) < 0.1 and res.ann > 0.5
        assert json.loads(res.to_json())["snn"]["64"] == res.snn[64]


def test_cli_convert_and_evaluate_segmentation(capsys, tmp_path):
    synthetic_or_skip()
    _pretrained_or_skip("unet_seg")
    from ann2snn.cli import main

    out = tmp_path / "seg.pt"
    assert main(["convert", "--model", "unet_seg", "--data", "synthetic-seg", "--calib-samples", "16",
                 "--threshold", "max", "--out", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--max-samples", "8", "-T", "8", "--json", "-q"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["task"] == "segmentation" and res["metric"] == "mIoU" and set(res["snn"]) == {"1", "2", "4", "8"}
    assert res["samples"] == 8 and 0 < res["ann"] <= 1
    assert main(["evaluate", str(out), "--max-samples", "8", "-T", "4", "--task", "classification", "-q"]) == 2
    assert "classifier" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--task", "events", "-q"]) == 2
    assert "event streams" in capsys.readouterr().err


def test_signed_burst_snn_saves_loads_and_refuses_export(tmp_path):
    from ann2snn.export import save_portable

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 36, 3)).eval()
    frames = torch.randn(8, 2, 2, 6, 6)
    snn = ann2snn.convert(model, frames.flatten(0, 1), threshold="max", signed=True, step_cap=3, progress=False)
    ann2snn.save(snn, tmp_path / "s.pt")
    back = ann2snn.load(tmp_path / "s.pt")
    assert all(n.signed and n.cap == 3 for n in back.neurons().values())
    assert back.config.signed and back.config.step_cap == 3
    assert torch.equal(back.run(frames, sequence=True), snn.run(frames, sequence=True))
    with pytest.raises(ann2snn.ConversionError, match="signed"):
        save_portable(snn, tmp_path / "p")
