"""Object detection with a spiking CenterNet: the bundled ``centernet_det`` scored by mAP@0.5 across T.

    .venv/bin/python examples/detection.py           # about two minutes on one CPU core

The SNN outputs two maps averaged over the steps: class-centre logits and box offsets / sizes. The
decoding (sigmoid, 3x3 peak picking as NMS, top-k) runs outside the SNN on those averaged outputs;
mAP is computed by pycocotools (pip install pycocotools). From the command line:

    ann2snn convert --model centernet_det --data synthetic-det --threshold mse --timesteps 32 --signed --out det.pt
    ann2snn evaluate det.pt --timesteps 64 --max-samples 200        # task inferred: detection (mAP@0.5)
"""

import torch

import ann2snn
from ann2snn.data.synthetic import SUPER_CLASSES, make_detection
from ann2snn.tasks import decode_centernet, evaluate_task
from ann2snn.zoo import create_model

torch.set_num_threads(1)
model = create_model("centernet_det", pretrained=True)
calib, _ = make_detection(256, "train", seed=1)
x, boxes = make_detection(200, "test", seed=2)             # boxes: [N, 3, 5] = label, x0, y0, x1, y1 (-1: none)

snn = ann2snn.convert(model, calib, threshold="mse", timesteps=32, signed=True)  # the best config here
print(evaluate_task(snn, (x, boxes), "detection", [4, 8, 16, 32, 64]).to_text())

out = snn.run(x[:1], 64)                                    # {"heatmap": [1, 4, 12, 12], "box": [1, 4, 12, 12]}
det = decode_centernet(out["heatmap"], out["box"], stride=4, min_score=0.3)[0]
print("image 0, truth:", [(SUPER_CLASSES[int(r[0])], [round(float(v)) for v in r[1:]]) for r in boxes[0] if r[0] >= 0])
print("image 0, SNN at T=64:", [(SUPER_CLASSES[int(c)], [round(v) for v in b], round(float(s), 2))
                                for b, s, c in zip(det["boxes"].tolist(), det["scores"], det["labels"], strict=True)])
