"""The unembedding (lm_head) over a slice of longer sequences without copying its weight.

Reads no config and no model: a module (nn.Linear or any head) and states in, logits out.
"""
from __future__ import annotations

import torch


def unembed(lm_head, h: torch.Tensor) -> torch.Tensor:
    """lm_head over states h (B, T, H), one row at a time: logits (B, T, V).

    h is a slice of longer sequences (the completion positions, or the last one), which F.linear
    cannot fold into one matrix: it runs bmm with the unembedding expanded to B copies. Whether
    that materialises the copies depends on the CPU's kernels: with a frozen bf16 weight (a 4-bit
    base's) on an Intel with AVX512-BF16 (oneDNN's bf16 bmm) it does, B x H x V elements, 2.2 GB
    for a micro-batch of 8 at Qwen2.5-0.5B's width, 70 GB for a 64-prompt prefill at
    Qwen2.5-Math-7B's (found by benchmarks/rehearse.py); on an AMD EPYC without AVX512, and in
    fp32 anywhere, it does not (not checked on CUDA). Here each row is one GEMM (T, H) x (H, V)
    written into the preallocated (B, T, V) output, and its backward one GEMM per row into the
    states' gradient, so the peak is the logits alone on every CPU kind: never more than
    F.linear's (tested on whichever kind runs the suite). Each row runs the kernel F.linear runs
    on a 2-D input (mm, or addmm with a bias) on the same shapes, so the values equal the
    row-by-row lm_head bit for bit; against F.linear's bmm they are bit-identical on the tiny
    model and equal to rounding at other widths (the GEMM's blocking). Any other head (a
    LoRA-wrapped one with THR off, one with hooks or a patched forward, e.g. accelerate's
    offloading) is called as a module, row by row, and stacked (twice the logits' memory).
    """
    if not len(h):
        return lm_head(h)
    if not _plain_linear(lm_head):
        return torch.stack([lm_head(x) for x in h])
    return _RowwiseLinear.apply(h, lm_head.weight, lm_head.bias)


def _plain_linear(m) -> bool:
    """Whether calling m computes exactly F.linear(x, m.weight, m.bias): an nn.Linear with no
    hooks of its own or global ones (the check Module.__call__ makes before its fast path) and
    no forward patched on the instance."""
    from torch.nn.modules import module as mod

    hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks,
             mod._global_forward_hooks, mod._global_forward_pre_hooks,
             mod._global_backward_hooks, mod._global_backward_pre_hooks)
    return type(m) is torch.nn.Linear and not any(hooks) and "forward" not in vars(m)


class _RowwiseLinear(torch.autograd.Function):
    """h (B, T, H) -> h W^T + b (B, T, V), one 2-D GEMM per row of B, into one output tensor."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        out = h.new_empty(*h.shape[:-1], weight.shape[0])
        for x, o in zip(h, out):
            if bias is None:
                torch.mm(x, weight.t(), out=o)
            else:
                torch.addmm(bias, x, weight.t(), out=o)
        ctx.save_for_backward(h, weight)
        return out

    @staticmethod
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # what mm's backward computes for each row: grad_i W
            grad_h = h.new_empty(h.shape)
            for g, o in zip(grad, grad_h):
                torch.mm(g, weight, out=o)
        if ctx.needs_input_grad[1]:  # a trainable unembedding: sum_i grad_i^T h_i
            grad_w = torch.zeros_like(weight)
            for g, x in zip(grad, h):
                grad_w.addmm_(g.t(), x)
        if ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_h, grad_w, grad_b
