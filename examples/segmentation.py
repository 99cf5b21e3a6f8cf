"""Segmentation with a spiking U-Net: the bundled ``unet_seg`` converted and scored by mIoU across T.

    .venv/bin/python examples/segmentation.py        # about a minute on one CPU core

The SNN's output is the per-pixel class score map averaged over the steps; the argmax per pixel (the
post-processing) runs outside the SNN, as it does on the ANN's output. The same from the command line:

    ann2snn convert --model unet_seg --data synthetic-seg --threshold mse --timesteps 32 --signed --out seg.pt
    ann2snn evaluate seg.pt --timesteps 64 --max-samples 200        # task inferred: segmentation (mIoU)
"""

import torch

import ann2snn
from ann2snn.data.synthetic import SEG_CLASSES, make_segmentation
from ann2snn.tasks import evaluate_task
from ann2snn.zoo import create_model

torch.set_num_threads(1)
model = create_model("unet_seg", pretrained=True)           # U-Net: ConvTranspose + concatenation skips
calib, _ = make_segmentation(256, "train", seed=1)         # 32x32 canvases, 2 Fashion-MNIST objects each
x, masks = make_segmentation(200, "test", seed=2)          # masks: 0 background, 1..4 super-classes

snn = ann2snn.convert(model, calib, threshold="mse", timesteps=32, signed=True)  # the best config here
print(f"classes: {', '.join(SEG_CLASSES)}")
print(evaluate_task(snn, (x, masks), "segmentation", [4, 8, 16, 32, 64]).to_text())

scores = snn.run(x[:1], 64)                                 # [1, 5, 32, 32] averaged analog scores
agree = float((scores.argmax(1) == model(x[:1]).argmax(1)).float().mean())
print(f"one image at T=64: {agree * 100:.1f}% of the pixels get the ANN's class")
