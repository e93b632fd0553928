"""LayerAct on CUDA: Triton kernels, float32 statistics for float32, float16 and bfloat16 tensors.

A sample is read as a 2-D tile [R, K] of its contiguous block, arranged so that a per-channel
parameter is constant along a tile row (planar: contiguous tensors, channel = row // rows_per_channel)
or varies along it (interleaved: channels_last or the channel dim last, channel = column).
Without an affine the sample is just cut into rows of K.

Where the whole sample fits in one program's registers (CIFAR shapes), one program per sample
reads x once, takes exact two-pass statistics and writes y; backward likewise reads x and dy once.
Larger samples are cut into chunks: a statistics kernel, a small kernel combining the chunks'
statistics, then an apply kernel (so x is read twice; backward likewise, with one PyTorch sum
in between). Weight and bias gradients are written as per-program partial sums and added up by
PyTorch, so no atomics are needed and results are deterministic.

FUSED_MAX, CHUNK_TILE and MAX_K set the tile sizes; benchmarks/bench_cuda.py can try others.

With TRITON_INTERPRET=1 set before this module is imported, the kernels run in Triton's
interpreter on CPU tensors (how the tests check them without a GPU).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..catalogue import kernel_code
from . import torch_ops
from .layout import dense_layout, sample_geometry

NAME = "triton"
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FUSED_MAX = 16384   # padded tile elements one program keeps in registers
CHUNK_TILE = 4096   # padded tile elements per program when a sample is cut into chunks
MAX_K = 4096        # widest tile row


def available(device: torch.device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and INTERPRETED


# ---------------------------------------------------------------- device functions

@triton.jit
def _tile(r0, L, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    r = r0 + tl.arange(0, BLOCK_R)[:, None]
    k = tl.arange(0, BLOCK_K)[None, :]
    offs = r * K + k
    mask = (r < R) & (k < K) & (offs < L)
    return offs, mask, r, k


@triton.jit
def _affine(W, B, r, k, R, K, RPC, AFFINE: tl.constexpr):
    """Per-channel weight and bias of the tile, shaped to broadcast (AFFINE 1 planar, 2 interleaved)."""
    if AFFINE == 1:
        ch = r // RPC
        ok = r < R
    else:
        ch = k
        ok = k < K
    w = tl.load(W + ch, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(B + ch, mask=ok, other=0.0).to(tl.float32)
    return w, b


@triton.jit
def _normal_cdf(z):
    """Phi(z) = erfc(-z / sqrt 2) / 2 and the normal density, as the C kernel computes them: for a = |z| / sqrt 2,
    erfc(a) / 2 = e t Q(t) with e = exp(-a^2) shared with the density, t = 1 / (1 + a / 2) and Q the C kernel's
    degree-8 fit (tools/fit_normal_cdf.py; relative error < 2e-7 in float, so no 1 + erf cancellation in the lower
    tail), |z| capped at 12."""
    a = tl.minimum(tl.abs(z), 12.0, propagate_nan=tl.PropagateNan.ALL) * 0.7071067811865476  # NaN stays NaN
    t = 1.0 / (1.0 + 0.5 * a)
    q = -2.914332785e-02
    q = q * t + 1.403630525e-01
    q = q * t - 2.395766079e-01
    q = q * t + 1.343787760e-01
    q = q * t - 1.006373577e-02
    q = q * t + 9.994714707e-02
    q = q * t + 1.219113767e-01
    q = q * t + 1.411371231e-01
    q = q * t + 1.410461664e-01
    e = tl.exp(-a * a)
    half_erfc = t * q * e
    s = tl.where(z < 0.0, half_erfc, 1.0 - half_erfc)
    return s, e * 0.3989422804014327


@triton.jit
def _scale(z, KIND: tl.constexpr):
    """s(z) and ds/dz: sigmoid (KIND 0), hard sigmoid (1), the normal CDF Phi (2) or its tanh form (3)."""
    if KIND == 0:
        s = tl.sigmoid(z)
        ds = s * (1.0 - s)
    elif KIND == 2:
        s, ds = _normal_cdf(z)
    elif KIND == 3:
        # sigmoid(z (A + B z^2)) = (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) / 2; clamped where z^3 would overflow
        nan = tl.PropagateNan.ALL
        zc = tl.minimum(tl.maximum(z, -100.0, propagate_nan=nan), 100.0, propagate_nan=nan)
        s = tl.sigmoid(zc * (1.5957691216057308 + 0.071354816197 * zc * zc))
        ds = s * (1.0 - s) * (1.5957691216057308 + 3.0 * 0.071354816197 * zc * zc)
    else:
        u = z * (1.0 / 6.0) + 0.5  # NaN (a sample holding NaN or inf) stays NaN, as in the formula
        s = tl.minimum(tl.maximum(u, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0, propagate_nan=tl.PropagateNan.ALL)
        ds = tl.where((z > -3.0) & (z < 3.0), 1.0 / 6.0, 0.0)
    return s, ds


@triton.jit
def _gradients(x, g, mask, mean, rstd, W, B, r, k, R, K, RPC, KIND: tl.constexpr, AFFINE: tl.constexpr):
    """n, s, dz = g x s'(z) and dn = w dz of a tile (zero where masked)."""
    n = tl.where(mask, (x - mean) * rstd, 0.0)
    if AFFINE == 0:
        s, ds = _scale(n, KIND)
        dz = g * x * ds
        dn = dz
    else:
        w, b = _affine(W, B, r, k, R, K, RPC, AFFINE)
        s, ds = _scale(n * w + b, KIND)
        dz = g * x * ds
        dn = dz * w
    return n, s, dz, dn


@triton.jit
def _store_channel_sums(DWP, DBP, dz, n, m, chunk, chunks, r0, R, K, AFFINE: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial weight/bias gradients: per tile row (planar, into [M, R]) or column (interleaved, [M*chunks, K])."""
    if AFFINE == 1:
        rows = r0 + tl.arange(0, BLOCK_R)
        at = m.to(tl.int64) * R + rows
        tl.store(DWP + at, tl.sum(dz * n, axis=1), mask=rows < R)
        tl.store(DBP + at, tl.sum(dz, axis=1), mask=rows < R)
    elif AFFINE == 2:
        cols = tl.arange(0, BLOCK_K)
        at = (m.to(tl.int64) * chunks + chunk) * K + cols
        tl.store(DWP + at, tl.sum(dz * n, axis=0), mask=cols < K)
        tl.store(DBP + at, tl.sum(dz, axis=0), mask=cols < K)


# ---------------------------------------------------------------- kernels

@triton.jit
def _forward_fused(X, Y, W, B, MEAN, RSTD, L, R, K, RPC, alpha, KIND: tl.constexpr, AFFINE: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0)
    base = m.to(tl.int64) * L
    offs, mask, r, k = _tile(0, L, R, K, BLOCK_R, BLOCK_K)
    x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x) / L
    d = tl.where(mask, x - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(d * d) / L + alpha)
    z = d * rstd
    if AFFINE != 0:
        w, b = _affine(W, B, r, k, R, K, RPC, AFFINE)
        z = z * w + b
    s, _ = _scale(z, KIND)
    tl.store(Y + base + offs, (x * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(MEAN + m, mean)
    tl.store(RSTD + m, rstd)


@triton.jit
def _forward_stats(X, PART, L, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Count, mean and sum of squared deviations of one chunk (combined later with Chan's formula)."""
    m = tl.program_id(0)
    chunk = tl.program_id(1)
    offs, mask, r, k = _tile(chunk * BLOCK_R, L, R, K, BLOCK_R, BLOCK_K)
    x = tl.load(X + m.to(tl.int64) * L + offs, mask=mask, other=0.0).to(tl.float32)
    count = tl.sum(mask.to(tl.float32))
    mean = tl.sum(x) / tl.maximum(count, 1.0)
    d = tl.where(mask, x - mean, 0.0)
    at = PART + (m.to(tl.int64) * tl.num_programs(1) + chunk) * 3
    tl.store(at, count)
    tl.store(at + 1, mean)
    tl.store(at + 2, tl.sum(d * d))


@triton.jit
def _combine_stats(PART, MEAN, RSTD, chunks, L, alpha, BLOCK_C: tl.constexpr):
    """A sample's mean and rstd from its chunks' (count, mean, M2), by Chan's parallel formula."""
    m = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    at = PART + (m.to(tl.int64) * chunks + c) * 3
    count = tl.load(at, mask=c < chunks, other=0.0)
    chunk_mean = tl.load(at + 1, mask=c < chunks, other=0.0)
    mean = tl.sum(count * chunk_mean) / L
    dev = chunk_mean - mean
    m2 = tl.sum(tl.load(at + 2, mask=c < chunks, other=0.0)) + tl.sum(count * dev * dev)
    tl.store(MEAN + m, mean)
    tl.store(RSTD + m, tl.rsqrt(m2 / L + alpha))


@triton.jit
def _forward_apply(X, Y, W, B, MEAN, RSTD, L, R, K, RPC, KIND: tl.constexpr, AFFINE: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0)
    base = m.to(tl.int64) * L
    offs, mask, r, k = _tile(tl.program_id(1) * BLOCK_R, L, R, K, BLOCK_R, BLOCK_K)
    x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
    z = (x - tl.load(MEAN + m)) * tl.load(RSTD + m)
    if AFFINE != 0:
        w, b = _affine(W, B, r, k, R, K, RPC, AFFINE)
        z = z * w + b
    s, _ = _scale(z, KIND)
    tl.store(Y + base + offs, (x * s).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _backward_fused(G, X, MEAN, RSTD, W, B, DX, DWP, DBP, L, R, K, RPC, KIND: tl.constexpr, AFFINE: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0)
    base = m.to(tl.int64) * L
    offs, mask, r, k = _tile(0, L, R, K, BLOCK_R, BLOCK_K)
    x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + base + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + m)
    n, s, dz, dn = _gradients(x, g, mask, tl.load(MEAN + m), rstd, W, B, r, k, R, K, RPC, KIND, AFFINE)
    mean_dn = tl.sum(dn) / L
    mean_dnn = tl.sum(dn * n) / L
    dx = g * s + rstd * (dn - mean_dn - n * mean_dnn)
    tl.store(DX + base + offs, dx.to(DX.dtype.element_ty), mask=mask)
    _store_channel_sums(DWP, DBP, dz, n, m, 0, 1, 0, R, K, AFFINE, BLOCK_R, BLOCK_K)


@triton.jit
def _backward_sums(G, X, MEAN, RSTD, W, B, PART, DWP, DBP, L, R, K, RPC, KIND: tl.constexpr, AFFINE: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """One chunk's sum(dn) and sum(dn n), and its partial weight/bias gradients."""
    m = tl.program_id(0)
    chunk = tl.program_id(1)
    base = m.to(tl.int64) * L
    r0 = chunk * BLOCK_R
    offs, mask, r, k = _tile(r0, L, R, K, BLOCK_R, BLOCK_K)
    x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + base + offs, mask=mask, other=0.0).to(tl.float32)
    n, s, dz, dn = _gradients(x, g, mask, tl.load(MEAN + m), tl.load(RSTD + m), W, B, r, k, R, K, RPC, KIND, AFFINE)
    at = PART + (m.to(tl.int64) * tl.num_programs(1) + chunk) * 2
    tl.store(at, tl.sum(dn))
    tl.store(at + 1, tl.sum(dn * n))
    _store_channel_sums(DWP, DBP, dz, n, m, chunk, tl.num_programs(1), r0, R, K, AFFINE, BLOCK_R, BLOCK_K)


@triton.jit
def _backward_apply(G, X, MEAN, RSTD, W, B, SUMS, DX, L, R, K, RPC, KIND: tl.constexpr, AFFINE: tl.constexpr,
                    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    m = tl.program_id(0)
    base = m.to(tl.int64) * L
    offs, mask, r, k = _tile(tl.program_id(1) * BLOCK_R, L, R, K, BLOCK_R, BLOCK_K)
    x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + base + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + m)
    n, s, dz, dn = _gradients(x, g, mask, tl.load(MEAN + m), rstd, W, B, r, k, R, K, RPC, KIND, AFFINE)
    dx = g * s + rstd * (dn - tl.load(SUMS + 2 * m) / L - n * (tl.load(SUMS + 2 * m + 1) / L))
    tl.store(DX + base + offs, dx.to(DX.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- host side

class _Plan:
    """How a sample is tiled: [R, K] rows, RPC tile rows per channel (planar), and the launch shape."""

    def __init__(self, length: int, channels: int, inner: int, affine: bool) -> None:
        if not affine:
            self.mode, self.K = 0, min(triton.next_power_of_2(length), MAX_K)
            self.R, self.rpc = triton.cdiv(length, self.K), 1
        elif inner > 1:
            # the narrowest split of a channel's run into equal tile rows that fit MAX_K
            self.rpc = next(d for d in range(triton.cdiv(inner, MAX_K), inner + 1) if inner % d == 0)
            self.mode, self.K, self.R = 1, inner // self.rpc, channels * self.rpc
        else:
            self.mode, self.K, self.R, self.rpc = 2, channels, length // channels, 1
        self.block_k = triton.next_power_of_2(self.K)
        self.fits = self.block_k <= FUSED_MAX  # interleaved rows of more channels than that go to eager ops
        fused_rows = triton.next_power_of_2(self.R)
        self.fused = fused_rows * self.block_k <= FUSED_MAX
        self.block_r = fused_rows if self.fused else max(1, CHUNK_TILE // self.block_k)
        self.chunks = 1 if self.fused else triton.cdiv(self.R, self.block_r)
        self.num_warps = max(4, min(16, self.block_r * self.block_k // 1024))


def _runs_in_triton(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]) -> bool:
    return x.dtype in _DTYPES and x.numel() > 0 and all(p is None or p.dtype in _DTYPES for p in (weight, bias))


def _on(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensor's (a no-op on CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str, alpha: float,
            start_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    if not _runs_in_triton(x, weight, bias):
        return torch_ops.forward(x, weight, bias, kind, alpha, start_dim)
    with _on(x.device):
        return _forward(x, weight, bias, kind, alpha, start_dim)


def backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
             kind: str, start_dim: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    if not _runs_in_triton(x, weight, bias):
        return torch_ops.backward(grad, x, mean, rstd, weight, bias, kind, start_dim)
    with _on(x.device):
        return _backward(grad, x, mean, rstd, weight, bias, kind, start_dim)


def _forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], kind: str, alpha: float,
             start_dim: int) -> Tuple[Tensor, Tensor, Tensor]:
    xd, fmt = dense_layout(x, start_dim)
    rows, length, channels, inner = sample_geometry(xd, start_dim, fmt)
    plan = _Plan(length, channels, inner, weight is not None)
    if not plan.fits:
        return torch_ops.forward(x, weight, bias, kind, alpha, start_dim)
    out = torch.empty_like(xd)
    mean = torch.empty(rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    w = xd if weight is None else weight.detach().contiguous()
    b = xd if bias is None else bias.detach().contiguous()
    meta = dict(KIND=kernel_code(kind), AFFINE=plan.mode, BLOCK_R=plan.block_r, BLOCK_K=plan.block_k,
                num_warps=plan.num_warps)
    if plan.fused:
        _forward_fused[(rows,)](xd, out, w, b, mean, rstd, length, plan.R, plan.K, plan.rpc, alpha, **meta)
        return out, mean, rstd
    part = torch.empty(rows, plan.chunks, 3, dtype=torch.float32, device=x.device)
    _forward_stats[(rows, plan.chunks)](xd, part, length, plan.R, plan.K, BLOCK_R=plan.block_r,
                                        BLOCK_K=plan.block_k, num_warps=plan.num_warps)
    _combine_stats[(rows,)](part, mean, rstd, plan.chunks, length, alpha,
                            BLOCK_C=triton.next_power_of_2(plan.chunks))
    _forward_apply[(rows, plan.chunks)](xd, out, w, b, mean, rstd, length, plan.R, plan.K, plan.rpc, **meta)
    return out, mean, rstd


def _backward(grad: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, weight: Optional[Tensor],
              bias: Optional[Tensor], kind: str, start_dim: int) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    xd, fmt = dense_layout(x, start_dim)
    rows, length, channels, inner = sample_geometry(xd, start_dim, fmt)
    plan = _Plan(length, channels, inner, weight is not None)
    if not plan.fits:
        return torch_ops.backward(grad, x, mean, rstd, weight, bias, kind, start_dim)
    g = grad.contiguous(memory_format=fmt or torch.contiguous_format)
    dx = torch.empty_like(xd)
    w = xd if weight is None else weight.detach().contiguous()
    b = xd if bias is None else bias.detach().contiguous()
    partial_shape = {0: (1,), 1: (rows, plan.R), 2: (rows * plan.chunks, plan.K)}[plan.mode]
    dwp = torch.empty(partial_shape, dtype=torch.float32, device=x.device)
    dbp = torch.empty_like(dwp)
    meta = dict(KIND=kernel_code(kind), AFFINE=plan.mode, BLOCK_R=plan.block_r, BLOCK_K=plan.block_k,
                num_warps=plan.num_warps)
    if plan.fused:
        _backward_fused[(rows,)](g, xd, mean, rstd, w, b, dx, dwp, dbp, length, plan.R, plan.K, plan.rpc, **meta)
    else:
        part = torch.empty(rows, plan.chunks, 2, dtype=torch.float32, device=x.device)
        _backward_sums[(rows, plan.chunks)](g, xd, mean, rstd, w, b, part, dwp, dbp, length, plan.R, plan.K,
                                            plan.rpc, **meta)
        sums = part.sum(1)
        _backward_apply[(rows, plan.chunks)](g, xd, mean, rstd, w, b, sums, dx, length, plan.R, plan.K, plan.rpc,
                                             **meta)
    if weight is None:
        return dx, None, None
    if plan.mode == 1:
        dweight = dwp.view(rows, channels, plan.rpc).sum((0, 2))
        dbias = dbp.view(rows, channels, plan.rpc).sum((0, 2))
    else:
        dweight, dbias = dwp.sum(0), dbp.sum(0)
    return dx, dweight.to(weight.dtype), dbias.to(bias.dtype)
