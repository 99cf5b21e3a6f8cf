"""Convert your own small CNN, trained here on scikit-learn's digits, into a spiking network and evaluate it.

    .venv/bin/python examples/quickstart.py

The same job from the command line, on a bundled pretrained model:

    ann2snn convert --model vgg_digits --data digits --out snn.pt
    ann2snn evaluate snn.pt --report runs/quickstart
"""

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import ann2snn
from ann2snn.data import get_dataset
from ann2snn.evaluation import evaluate_classifier
from ann2snn.report import write_report

torch.manual_seed(0)
train, test = get_dataset("digits", "train"), get_dataset("digits", "test")  # [N, 1, 8, 8], normalised

# 1. An ordinary PyTorch ReLU network, trained as usual.
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 4, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _epoch in range(15):
    for x, y in DataLoader(train, batch_size=64, shuffle=True):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
model.eval()

# 2. Convert it without training: thresholds calibrated on the training images (no labels needed).
snn = ann2snn.convert(model, DataLoader(train, batch_size=128), threshold="ltb", timesteps=32)

# 3. Accuracy at every T, the ANN, the quantisation ceiling, spikes and energy, in one pass.
result = evaluate_classifier(snn, test, timesteps=32)
print(result.to_text())

# 4. Save it, and write plots and a report page.
out = Path("runs/quickstart")
out.mkdir(parents=True, exist_ok=True)
ann2snn.save(snn, out / "snn.pt")
print("report:", write_report(out, result, snn))
