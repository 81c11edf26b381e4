"""Muon: the orthogonalised update, parity with torch.optim.Muon on matrices, and a small net that learns with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gpuvision.train import muon as muon_module
from gpuvision.train.muon import Muon, Optimizers, make_muon, ns_dtype, orthogonalise


@pytest.mark.parametrize("shape", [(48, 160), (160, 48)])
def test_orthogonalised_update_has_singular_values_near_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ortho = orthogonalise(g, steps=5, dtype=torch.float32)
    s = torch.linalg.svdvals(ortho)
    # The quintic trades exact convergence for speed: singular values land near 1, not on it.
    assert s.min() > 0.5 and s.max() < 1.5
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (ortho * (u @ vh)).sum() / (ortho.norm() * (u @ vh).norm())
    assert cosine > 0.95  # the direction of U V^T, the nearest semi-orthogonal matrix


@pytest.mark.cuda
def test_orthogonalised_update_in_bf16_on_cuda_matches_fp32():
    g = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    fast = orthogonalise(g.cuda(), steps=3, dtype=ns_dtype(torch.device("cuda")))
    assert fast.dtype == torch.bfloat16 and fast.is_cuda
    exact = orthogonalise(g, steps=3, dtype=torch.float32)
    cosine = (fast.float().cpu() * exact).sum() / (fast.float().norm().cpu() * exact.norm())
    assert cosine > 0.99


def test_step_equals_torch_muon_on_matrices():
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(32, 48, generator=gen), torch.randn(64, 16, generator=gen)]
    ours = [nn.Parameter(w.clone()) for w in weights]
    theirs = [nn.Parameter(w.clone()) for w in weights]
    settings = dict(lr=0.05, weight_decay=0.1, momentum=0.9, ns_steps=5)
    opt_ours = Muon(ours, ns_dtype=torch.bfloat16, **settings)
    opt_theirs = torch.optim.Muon(theirs, **settings)
    for _ in range(4):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        opt_ours.step()
        opt_theirs.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fixed_norm_makes_the_step_independent_of_the_weights_scale():
    w = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    grad = torch.randn_like(w)
    results = []
    for scale in (1.0, 100.0):
        p = nn.Parameter(w * scale)
        p.grad = grad.clone()
        Muon([p], lr=0.1, momentum=0.6, ns_dtype=torch.float32, fixed_norm=True).step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1])


def test_a_small_net_learns_with_muon_on_its_filters_and_matrices():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(256, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean(dim=(1, 2)) > x[:, 1].mean(dim=(1, 2))).long()  # a rule one convolution layer can see
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 2, bias=False))
    opt = Muon(net.parameters(), lr=0.02, momentum=0.9, ns_dtype=torch.float32)
    first = None
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = (net(x).argmax(1) == y).float().mean().item()
    assert loss.item() < 0.5 * first and accuracy > 0.9


def test_newton_schulz_dtype_follows_the_measured_cpu(monkeypatch):
    from gpuvision.device import acceleration

    monkeypatch.setattr(acceleration, "measured", lambda d: {"matmul_tflops": {"fp32": 0.09, "bf16": 0.02}})
    assert ns_dtype(torch.device("cpu")) == torch.float32  # emulated bf16 is far slower than fp32 there
    monkeypatch.setattr(acceleration, "measured", lambda d: {"matmul_tflops": {"fp32": 0.23, "bf16": 0.71}})
    assert ns_dtype(torch.device("cpu")) == torch.bfloat16


def test_make_muon_takes_conv_filters():
    conv = nn.Conv2d(4, 8, 3)
    opt = make_muon([conv.weight], torch.device("cpu"), lr=0.1, momentum=0.6, fixed_norm=True)
    conv.weight.grad = torch.randn_like(conv.weight)
    before = conv.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, conv.weight)
    if not muon_module.torch_muon_takes_filters():
        assert isinstance(opt, Muon)


def test_optimizers_step_together_and_round_trip_their_state():
    a, b = nn.Parameter(torch.ones(4, 4)), nn.Parameter(torch.ones(3))
    both = Optimizers(Muon([a], lr=0.1, ns_dtype=torch.float32), torch.optim.SGD([b], lr=0.1, momentum=0.9))
    for group in both.param_groups:  # the groups are the inner optimizers' own: a learning rate set here counts
        group["lr"] = 0.5
    a.grad, b.grad = torch.randn(4, 4), torch.ones(3)
    both.step()
    assert torch.allclose(b, torch.full((3,), 0.5))
    state = both.state_dict()
    fresh = Optimizers(Muon([a], lr=0.1, ns_dtype=torch.float32), torch.optim.SGD([b], lr=0.1, momentum=0.9))
    fresh.load_state_dict(state)
    assert [g["lr"] for g in fresh.param_groups] == [0.5, 0.5]
    assert torch.equal(fresh.optimizers[0].state[a]["momentum_buffer"], both.optimizers[0].state[a]["momentum_buffer"])
    both.zero_grad()
    assert a.grad is None and b.grad is None


def test_grad_scaler_steps_the_pair():  # fp16 training steps the optimizer through torch.amp.GradScaler
    a, b = nn.Parameter(torch.ones(4, 4)), nn.Parameter(torch.ones(3))
    both = Optimizers(Muon([a], lr=0.1, ns_dtype=torch.float32), torch.optim.SGD([b], lr=0.1))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale((a * torch.arange(16.0).view(4, 4)).sum() + b.sum()).backward()
    scaler.step(both)
    assert torch.allclose(b, torch.full((3,), 0.9))  # the gradient was unscaled before SGD's step
    assert not torch.equal(a, torch.ones(4, 4))
