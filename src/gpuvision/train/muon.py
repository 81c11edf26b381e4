"""Muon (Keller Jordan et al., 2024): momentum SGD whose update for each weight matrix is orthogonalised.

The Nesterov momentum of a gradient matrix G is replaced by the nearest semi-orthogonal matrix (all singular values
about 1), computed by a few Newton-Schulz iterations of matrix products. Every direction of the update then moves
by the same amount, however skewed the gradient's spectrum. airbench94_muon trains the CIFAR-10 net to 94% in 8
epochs instead of 9.9 with it on the convolution filters (Nesterov SGD on the rest).

Ours applies torch.optim.Muon's update (torch >= 2.9) to parameters of any rank: a convolution's filters are
flattened to out_channels x (in_channels * kh * kw), which torch's refuses (torch 2.11-2.14 take 2-D only). It also
runs the iteration in a chosen dtype: bf16 where the device multiplies bf16 fast (CUDA, CPUs with AMX or
AVX-512-BF16), else fp32 (on an AVX2 CPU bf16 is emulated and far slower). `make_muon` returns torch's optimizer
where it takes the parameters and would run as ours does, else ours.
"""

from __future__ import annotations

import functools
import math

import torch

from ..device import bf16_is_fast

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's quintic: steepest slope at zero, converges to ~1


def ns_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device multiplies it fast (CUDA, a CPU where bf16 measured faster), else fp32."""
    return torch.bfloat16 if bf16_is_fast(device) else torch.float32


def orthogonalise(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  eps: float = 1e-7) -> torch.Tensor:
    """Approximately U V^T of a matrix's SVD U S V^T by Newton-Schulz iteration (same ops as torch.optim.Muon)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix x x^T is then the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # Frobenius norm >= spectral norm: every singular value now <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's step for parameters of rank >= 2, with the Newton-Schulz iteration in `ns_dtype`.

    Per parameter P (flattened to rows = dim 0) with gradient G: B <- lerp(B, G, 1 - momentum); the update is
    lerp(G, B, momentum) with Nesterov, else B; orthogonalised; P <- P (1 - lr * weight_decay) - lr *
    sqrt(max(1, rows / cols)) * update. fixed_norm (airbench94_muon's weight normalisation, for filters followed by
    batch norm, where the scale of P does not matter) first rescales P to Frobenius norm sqrt(rows), so a step of
    lr moves every filter by about lr of its own size all through training.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, ns_dtype: torch.dtype = torch.bfloat16,
                 eps: float = 1e-7, fixed_norm: bool = False):
        # the dtype by name: a checkpoint stores the groups as JSON
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        ns_dtype=str(ns_dtype).removeprefix("torch."), eps=eps, fixed_norm=fixed_norm)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon takes matrices and filters, not a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                rows, cols = len(p), p[0].numel()
                dtype = getattr(torch, group["ns_dtype"])
                update = orthogonalise(update.reshape(rows, cols), group["ns_steps"], dtype, group["eps"])
                if group["fixed_norm"]:
                    p.mul_(math.sqrt(rows) / p.norm().clamp(min=group["eps"]))
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.reshape(p.shape), alpha=-lr * math.sqrt(max(1.0, rows / cols)))
        return loss


@functools.cache
def torch_muon_takes_filters() -> bool:
    """Whether this torch's Muon accepts a 4-D convolution weight (2.11-2.14 refuse it)."""
    muon = getattr(torch.optim, "Muon", None)
    if muon is None:
        return False
    try:
        muon([torch.nn.Parameter(torch.zeros(2, 2, 1, 1))])
    except ValueError:
        return False
    return True


def make_muon(params: list[torch.nn.Parameter], device: torch.device, lr: float, momentum: float,
              ns_steps: int = 5, weight_decay: float = 0.0, fixed_norm: bool = False) -> torch.optim.Optimizer:
    """Muon for these parameters: torch's where it takes them and its bf16 iteration suits the device, else ours."""
    dtype = ns_dtype(device)
    own = fixed_norm or dtype != torch.bfloat16 or (any(p.ndim != 2 for p in params) and not torch_muon_takes_filters())
    if own:
        return Muon(params, lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps, ns_dtype=dtype,
                    fixed_norm=fixed_norm)
    return torch.optim.Muon(params, lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps)


class Optimizers:
    """Several optimizers stepped as one (Muon on the filters, SGD on the rest), for a loop that expects one.

    It offers what the Trainer and torch.amp.GradScaler use of an optimizer: param_groups (the inner groups
    themselves, so a learning rate set here reaches them), step, zero_grad and the state dict.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
