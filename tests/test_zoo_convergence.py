"""Every pretrained digits model of the zoo converges to its ANN as T grows."""

import pytest
import torch

import ann2snn
from ann2snn.data.datasets import load_digits
from ann2snn.zoo import create_model, list_models

DIGITS_MODELS = sorted(n for n in list_models(dataset="digits", pretrained=True))


@pytest.fixture(scope="module")
def digits():
    train, test = load_digits("train"), load_digits("test")
    return train.x[:256], test.x, test.y


def test_the_zoo_has_the_architecture_families():
    assert {"mlp_digits", "cnn_digits", "vgg_digits", "resnet_digits", "mobilenet_digits"} <= set(DIGITS_MODELS)


@pytest.mark.parametrize("name", DIGITS_MODELS)
def test_zoo_model_converges_to_its_ann(name, digits):
    xc, xt, yt = digits
    model = create_model(name, pretrained=True)
    snn = ann2snn.convert(model, xc, threshold="max")
    with torch.no_grad():
        ref = model(xt)
    # test activations above the calibration maximum are clipped: the SNN converges to the clipped ANN
    clipped = snn.analog(xt, "clip")
    err = {}
    for T, out in ((16, snn.run(xt, 16)), (1024, snn.run(xt, 1024))):
        err[T] = float((out - clipped).abs().mean() / clipped.abs().mean())
        if T == 1024:
            agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
            acc_snn = float((out.argmax(1) == yt).float().mean())
    acc_ann = float((ref.argmax(1) == yt).float().mean())
    assert err[1024] < err[16] / 10, err
    assert agree >= 0.995  # at most ~2 of 360 borderline images may flip
    assert abs(acc_snn - acc_ann) <= 0.006
