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
