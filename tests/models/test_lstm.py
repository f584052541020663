import torch

from models.lstm import LSTMCell


def test_fused_cell_matches_torch_lstm_cell_forward_and_backward():
    torch.manual_seed(0)
    ours, ref = LSTMCell(7, 5).double(), torch.nn.LSTMCell(7, 5).double()
    with torch.no_grad():
        ours.weight.copy_(torch.cat([ref.weight_ih, ref.weight_hh], dim=1))
        ours.bias.copy_(ref.bias_ih + ref.bias_hh)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    h, c = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    h1, c1 = ours(x, (h, c))
    h2, c2 = ref(x, (h, c))
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    (g1,) = torch.autograd.grad((h1 * 3 + c1).sum(), x)
    (g2,) = torch.autograd.grad((h2 * 3 + c2).sum(), x)
    torch.testing.assert_close(g1, g2)


def test_the_stepper_and_doubled_gates_give_forwards_state_bit_for_bit():
    # the samplers' loop moves g's doubling into a copy of W and b: exact in floating point, so no bit may move
    torch.manual_seed(0)
    cell = LSTMCell(7, 5)
    with torch.no_grad():
        cell.bias.normal_()  # nn.LSTMCell's init is small; spread the gates over the sigmoid's range
    x, h, c = torch.randn(4, 7), torch.randn(4, 5), torch.randn(4, 5)
    with torch.inference_mode():
        want = cell(x, (h, c))
        got = cell.stepper()(x, (h, c))
        weight, bias = cell.doubled()
        by_hand = cell.update(torch.addmm(bias, torch.cat([x, h], 1), weight.t()), c, g_doubled=True)
    for a, b, d in zip(want, got, by_hand, strict=True):
        assert torch.equal(a, b) and torch.equal(a, d)
    assert torch.equal(weight[:10], cell.weight[:10]) and torch.equal(weight[10:15], 2 * cell.weight[10:15])
