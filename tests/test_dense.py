"""Dense-prediction and other structures: U-Net skips, multi-output heads, 3D convs, sequence input."""

import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.energy import measure

from .helpers import randomize_bn


class TinyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.up2 = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec = nn.Conv2d(8 + 8 + 16, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        a = self.enc1(x)
        b = self.enc2(a)
        u = F.relu(self.up(b))
        d = torch.cat([a, u, self.up2(b)], dim=1)
        return self.head(F.relu(self.dec(d)))


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.heatmap = nn.Conv2d(8, 2, 1)
        self.box = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        f = self.body(x)
        return {"heatmap": self.heatmap(f), "box": F.interpolate(self.box(f), scale_factor=0.5, mode="nearest")}


class Video(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv3d(1, 4, 3, padding=1)
        self.b1 = nn.BatchNorm3d(4)
        self.pool = nn.MaxPool3d(2)
        self.c2 = nn.Conv3d(4, 8, 3, padding=1)
        self.avg = nn.AvgPool3d(2)
        self.fc = nn.Linear(8 * 2 * 2 * 2, 5)

    def forward(self, x):
        x = self.pool(F.relu(self.b1(self.c1(x))))
        x = self.avg(F.relu(self.c2(x)))
        return self.fc(x.flatten(1))


def rel_err(a, b):
    return float((a - b).abs().mean() / b.abs().mean())


def test_unet_with_skips_and_upsampling_converges():
    model = randomize_bn(TinyUNet())
    x = torch.randn(8, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max")
    ref = model(x).detach()
    e16, e512 = rel_err(snn.run(x, 16), ref), rel_err(snn.run(x, 512), ref)
    assert e512 < e16 / 5 and e512 < 0.02
    _, report = measure(snn, x, 8)
    assert report.sops > 0 and report.ann_macs > 0  # ConvTranspose and concatenation are counted


def test_dict_outputs_are_averaged_per_key():
    model = TwoHeads().eval()
    x = torch.randn(4, 1, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max")
    ref = model(x)
    out = snn.run(x, 512)
    assert set(out) == {"heatmap", "box"} and out["box"].shape == (4, 4, 4, 4)
    for k in out:
        assert rel_err(out[k], ref[k].detach()) < 0.02
    final, hist = snn.run(x, 6, return_all=True)
    assert hist["heatmap"].shape == (6, 4, 2, 8, 8)


def test_conv3d_video_model_converges():
    model = randomize_bn(Video())
    x = torch.randn(6, 1, 8, 8, 8)
    snn = ann2snn.convert(model, x, threshold="max")
    ref = model(x).detach()
    assert rel_err(snn.run(x, 512), ref) < rel_err(snn.run(x, 16), ref) / 5


def test_sequence_input_one_frame_per_step():
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
    frames = torch.rand(300, 3, 1, 6, 6)  # [T, B, ...]: a noisy event-like stream around its mean
    mean_frame = frames.mean(0)
    snn = ann2snn.convert(model, frames.flatten(0, 1), threshold="max")
    out = snn.run(frames, sequence=True)
    ref = model(mean_frame).detach()  # linear first layer: the rate code of the mean input
    assert out.shape == (3, 4)
    assert rel_err(out, ref) < 0.05
