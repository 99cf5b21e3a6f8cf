"""Convert a small CNN trained on scikit-learn's digits into a spiking network and evaluate it."""

import torch
from sklearn.datasets import load_digits
from torch import nn

import ann2snn
from ann2snn.energy import measure

torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target)
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(32 * 4, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for _epoch in range(15):
    for i in range(0, len(x_train), 64):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_train[i:i + 64]), y_train[i:i + 64]).backward()
        opt.step()
model.eval()
ann_acc = (model(x_test).argmax(1) == y_test).float().mean().item()

snn = ann2snn.convert(model, x_train[:256], threshold="ltb", timesteps=32)
out, history = snn.run(x_test, 32, return_all=True)
print(f"ANN accuracy {ann_acc * 100:.1f} %")
for t in (4, 8, 16, 32):
    acc = (history[t - 1].argmax(1) == y_test).float().mean().item()
    print(f"SNN accuracy at T={t:<3d} {acc * 100:.1f} %")
_, report = measure(snn, x_test, 32)
print(report.to_text())
