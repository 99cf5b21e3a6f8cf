"""Video and event streams: a 3-D CNN on clips, and a CNN on simulated DVS events, both spiking.

    .venv/bin/python examples/event_video.py         # two or three minutes on one CPU core

1. ``video3d_motion``: Conv3d / BatchNorm3d / MaxPool3d / AvgPool3d over 8-frame clips of a moving object
   (the label is its direction and speed); the whole clip is the static input of every SNN step.
2. ``eventcnn_events``: a CNN trained on the mean ON/OFF event frame of a moving Fashion-MNIST object
   (events: log-intensity changes above a contrast threshold, as a DVS camera emits them). The SNN runs
   in two modes: the mean frame as static input every step, and the stream binned into T frames fed one
   frame per step (``snn.run(frames, sequence=True)``, frames ``[T, B, 2, H, W]``). Per-step frames change
   sign at every neuron as the object moves, which plain IF neurons cannot take back (a spike is never
   undone), and arrive in bursts (a pixel sees events only while an edge crosses it), which an IF neuron
   sending one spike a step cannot keep up with. Signed neurons (``signed=True``: negative spikes that
   cancel earlier ones) with ``step_cap=4`` (up to 4 whole-threshold spikes a step) follow the running
   mean instead.
"""

import torch

import ann2snn
from ann2snn.data.synthetic import bin_events, make_events, make_video, mean_event_frame
from ann2snn.tasks import evaluate_task
from ann2snn.zoo import create_model

torch.set_num_threads(1)

# 1. video
model = create_model("video3d_motion", pretrained=True)
calib, _ = make_video(256, "train", seed=1)                 # [N, 1, 8, 24, 24]
clips, motion = make_video(300, "test", seed=2)
snn = ann2snn.convert(model, calib, threshold="mse", timesteps=32)
print("video3d_motion, direction and speed of motion (16 classes):")
print(evaluate_task(snn, (clips, motion), "classification", [4, 8, 16, 32, 64]).to_text())

# 2. events
model = create_model("eventcnn_events", pretrained=True)
events, _ = make_events(256, "train", seed=1)               # uint8 counts [N, 64 sub-frames, ON/OFF, 24, 24]
calib = mean_event_frame(events)
test = make_events(300, "test", seed=2)
print("\nframes for T=8:", tuple(bin_events(test[0][:4], 8).shape), "([T, B, 2, H, W], their mean is the mean frame)")
for signed, step_cap in ((False, 1), (True, 4)):
    snn = ann2snn.convert(model, calib, threshold="ltb", signed=signed, step_cap=step_cap)
    res = evaluate_task(snn, test, "events", [8, 16, 32, 64])
    kind = "signed neurons, step_cap=4" if signed else "IF neurons"
    print(f"\neventcnn_events, {kind}, one event frame per step:")
    print(res.to_text())
    print("the mean frame as static input: " + ", ".join(
        f"T={t}: {v * 100:.2f}%" for t, v in res.extra["mean_frame"].items()))
