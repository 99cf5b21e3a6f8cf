import torch

from ann2snn.neurons import SpikingNeuron, burst_step, if_step, quantize


def run_if(inputs, theta=1.0, v0=0.5):
    v = torch.tensor([v0 * theta])
    spikes = []
    for x in inputs:
        s, v = if_step(torch.tensor([x]), v, torch.tensor(theta))
        spikes.append(int(s.item()))
    return spikes, v.item()


def test_if_hand_computed_spike_train():
    # v: 0.75, 1.0 -> spike -> 0.0, 0.25, 0.5, 0.75, 1.0 -> spike -> 0.0
    spikes, v = run_if([0.25] * 6)
    assert spikes == [0, 1, 0, 0, 0, 1]
    assert v == 0.0


def test_if_soft_reset_keeps_the_residue_and_negative_input_integrates():
    spikes, v = run_if([0.8, 0.8, -0.5, 0.9], theta=1.0, v0=0.0)
    # 0.8; 1.6 -> spike, 0.6; 0.1; 1.0 -> spike, 0.0
    assert spikes == [0, 1, 0, 1]
    assert abs(v) < 1e-6


def test_burst_hand_computed():
    v = torch.tensor([0.5])
    out = []
    for _ in range(3):
        s, v = burst_step(torch.tensor([2.5]), v, torch.tensor(1.0), 4)
        out.append(int(s.item()))
    # 3.0 -> 3 spikes, 0.0; 2.5 -> 2, 0.5; 3.0 -> 3, 0.0
    assert out == [3, 2, 3]
    s, v2 = burst_step(torch.tensor([10.0]), torch.tensor([0.5]), torch.tensor(1.0), 2)
    assert s.item() == 2 and v2.item() == 8.5  # capped at m, the rest stays in the membrane


def test_burst_with_cap_one_is_if_exactly():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 64, generator=g)
    theta = torch.rand(64, generator=g) + 0.1
    v_if = v_b = theta * 0.5
    for t in range(50):
        s1, v_if = if_step(x[t], v_if, theta)
        s2, v_b = burst_step(x[t], v_b, theta, 1)
        assert torch.equal(s1, s2) and torch.equal(v_if, v_b)


def test_neuron_rate_matches_quantised_clip_for_constant_input():
    theta = torch.tensor([1.0, 0.5, 2.0])
    neuron = SpikingNeuron(theta)
    z = torch.tensor([[0.3, 0.7, -1.0], [1.7, 0.26, 1.01]])
    T = 16
    total = sum(neuron(z) for _ in range(T))
    expected = quantize(z, theta, T)
    assert torch.allclose(total / T, expected, atol=1e-6)


def test_dead_channel_stays_silent():
    neuron = SpikingNeuron(torch.tensor([0.0, 1.0]))
    outs = [neuron(torch.tensor([[5.0, 5.0]])) for _ in range(4)]
    assert all(o[0, 0].item() == 0.0 for o in outs)
    assert all(o[0, 1].item() == 1.0 for o in outs)


def test_spread_start_adds_the_same_charge_over_the_window():
    """v0_mode='spread': v starts at 0 and v0*theta/T arrives each step; after T steps a constant input
    has produced exactly the spikes of the half-threshold start (only their timing differs)."""
    from ann2snn.neurons import SpikingNeuron

    T = 8
    theta = torch.tensor([1.0, 2.0])
    z = torch.tensor([[[0.3], [0.55]], [[0.9], [1.3]]]).reshape(2, 2)  # [batch, channels]
    for cap in (1, 3):
        start = SpikingNeuron(theta / cap, cap=cap, v0=0.5)
        spread = SpikingNeuron(theta / cap, cap=cap, v0=0.5, spread_steps=T)
        a = sum(start(z) for _ in range(T))
        b = sum(spread(z) for _ in range(T))
        assert torch.allclose(a, b)
        assert float(spread.v.min()) >= -1e-6
    first = SpikingNeuron(torch.tensor([1.0]), v0=0.5, spread_steps=4)
    assert first(torch.tensor([[0.5]])).item() == 0.0  # 0.5 + 0.125 < 1: no spike at t = 1 (the start would fire)
    assert SpikingNeuron.from_spec(first.spec()).spread_steps == 4
