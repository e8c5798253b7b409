import torch

from repfx_deploy.passes.quantize.fold import equalize, fold_batchnorm
from repfx_deploy.passes.quantize.graph import capture


def test_fold_batchnorm_preserves_outputs_and_removes_every_bn(residual_net):
    x = torch.randn(4, 3, 12, 12)
    gm = capture(residual_net, (x,), dynamic_batch=True)
    assert fold_batchnorm(gm) == 3
    assert not [n for n in gm.graph.nodes if "batch_norm" in str(n.target)]
    torch.testing.assert_close(gm(x), residual_net(x), atol=1e-5, rtol=1e-5)


def test_equalize_preserves_outputs_and_balances_ranges(residual_net):
    x = torch.randn(4, 3, 12, 12)
    gm = capture(residual_net, (x,), dynamic_batch=True)
    fold_batchnorm(gm)
    assert equalize(gm) == 1  # conv1 -> relu -> conv2 inside the block; the stem's relu feeds two users
    torch.testing.assert_close(gm(x), residual_net(x), atol=1e-4, rtol=1e-4)
    w1 = gm.get_parameter("conv1.weight").abs().flatten(1).amax(1)
    w2 = gm.get_parameter("conv2.weight").abs().transpose(0, 1).flatten(1).amax(1)
    torch.testing.assert_close(w1, w2, atol=1e-4, rtol=1e-3)
