"""Exact fast evaluation of an MRH-Net on many small patches at once ("useful taps" form).

Every layer of the network is a 3 x 3 'same' convolution applied to one P x P patch (P = 3) with zero
padding inside the patch, and the original keeps only the centre of the output. For a batch of N
patches the activations are kept position-major, ``(P, P, N, C)``. Then one kernel tap (dr, dc) of a
layer is a single matrix product: the block of positions whose neighbour (r + dr, c + dc) lies inside
the patch, read at the shifted block, times the tap's C_in x C_out matrix, accumulated into the
output block (``baddbmm_`` on strided views: no gathers, no copies). A 3 x 3 patch needs
4 + 6 + 9 + ... = 49 products per channel pair and layer: the useful taps only, against 81 for the
dense 9 x 9-position matrix (which multiplies padding zeros). Each output is the same sum of the
same products as ``conv2d`` computes, in another order, so results agree to float rounding.

Residual additions are folded into the accumulation (the output block starts as ``skip + bias``),
ReLUs run in place, and the last layer computes the centre output only. The same code runs on CUDA;
``precision`` picks fp32 (exact), tf32 (CUDA tensor cores) or bf16.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import MRHNetError
from .model import MRHNet

PRECISIONS = ("fp32", "tf32", "bf16")


def _ranges(d: int, p: int) -> tuple[slice, slice]:
    """(output positions, input positions) along one patch axis for a tap offset ``d`` in {-1, 0, 1}."""
    return slice(max(0, -d), p - max(0, d)), slice(max(0, d), p + min(0, d))


class PatchNet:
    """An :class:`~MRHNetLib.model.MRHNet` compiled for centre-of-patch inference on position-major batches.

    ``PatchNet(net, device, precision)(x)`` with ``x`` of shape (P, P, N, C_in) returns the (N,) centre
    outputs, equal to ``net(patches)[:, 0, h, h]`` to float rounding."""

    def __init__(self, net: MRHNet, device: str | torch.device = "cpu", precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise MRHNetError(f"unknown precision '{precision}' (use {', '.join(PRECISIONS)})")
        self.device = torch.device(device)
        if precision == "tf32" and self.device.type != "cuda":
            raise MRHNetError("precision tf32 needs a CUDA device (use fp32 or bf16 on the CPU)")
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.depth, self.in_channels = net.depth, net.in_channels
        with torch.no_grad():
            # taps[l] = (3, 3, C_in, C_out): tap (dr+1, dc+1) multiplies the input at offset (dr, dc)
            self.taps = [c.weight.detach().permute(2, 3, 1, 0).contiguous().to(self.device, self.dtype)
                         for c in net.convs()]
            self.bias = [c.bias.detach().to(self.device, self.dtype) for c in net.convs()]
        if any(t.shape[:2] != (3, 3) for t in self.taps):
            raise MRHNetError("fast inference supports 3 x 3 convolutions only")

    @contextlib.contextmanager
    def _matmul_mode(self) -> Iterator[None]:
        if self.device.type != "cuda":
            yield
            return
        mm = torch.backends.cuda.matmul
        if hasattr(mm, "fp32_precision"):  # torch >= 2.9
            old, mm.fp32_precision = mm.fp32_precision, ("tf32" if self.precision == "tf32" else "ieee")
            try:
                yield
            finally:
                mm.fp32_precision = old
            return
        old, mm.allow_tf32 = mm.allow_tf32, self.precision == "tf32"
        try:
            yield
        finally:
            mm.allow_tf32 = old

    def conv(self, x: torch.Tensor, layer: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """One 3 x 3 'same' convolution of (P, P, N, C_in) patches -> (P, P, N, C_out), added to ``out``
        when given (a residual), plus the bias."""
        w, b = self.taps[layer], self.bias[layer]
        p, _, n, _ = x.shape
        c_out = w.shape[3]
        if out is None:
            out = b.expand(p, p, n, c_out).contiguous()
        else:
            out += b
        for dr in (-1, 0, 1):
            ro, ri = _ranges(dr, p)
            for dc in (-1, 0, 1):
                co, ci = _ranges(dc, p)
                xo, xi = out[ro, co], x[ri, ci]
                rows, cols = xo.shape[0], xo.shape[1]
                if rows == 0 or cols == 0:
                    continue
                # (rows, cols, N, C) blocks are (rows, cols * N, C) batches of matrices: views, no copies
                yv = xo.view(rows, cols * n, c_out)
                xv = xi.reshape(rows, cols * n, xi.shape[3])
                yv.baddbmm_(xv, w[dr + 1, dc + 1].expand(rows, -1, -1))
        return out

    def centre(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """The last convolution (one output channel) at the patch centre only: (P, P, N, C) -> (N,)."""
        w, b = self.taps[layer], self.bias[layer]
        p, h = x.shape[0], x.shape[0] // 2
        lo, hi = max(0, h - 1), min(p, h + 2)
        xs = x[lo:hi, lo:hi]
        ws = w[lo - h + 1: hi - h + 1, lo - h + 1: hi - h + 1, :, 0]  # (k, k, C)
        k, n, c = xs.shape[0], xs.shape[2], xs.shape[3]
        y = torch.bmm(xs.reshape(k * k, n, c), ws.reshape(k * k, c, 1)).sum(dim=0)[:, 0]
        return y + b[0]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[0] != x.shape[1] or x.shape[3] != self.in_channels:
            raise MRHNetError(f"fast inference expects (P, P, N, {self.in_channels}) patches, got {tuple(x.shape)}")
        x = x.to(self.device, self.dtype)
        with self._matmul_mode():
            a = self.conv(x, 0).relu_()
            a = self.conv(a, 1).relu_()
            t = self.conv(a, 2).relu_()
            y = self.conv(t, 3, out=a)  # Conv3_1 + a
            del t
            layer = 4
            for _ in range(self.depth):
                r = y.relu_()  # block input after its first ReLU: the skip
                h = self.conv(r, layer).relu_()
                y = self.conv(h, layer + 1, out=r)  # conv2 + r, in r's memory
                del h
                layer += 2
            z = self.conv(y.relu_(), layer).relu_()
            return self.centre(z, layer + 1).float()

    def flops(self, n: int, patch: int = 3) -> float:
        """Multiply-adds x 2 that ``__call__`` does for ``n`` patches (the products actually computed)."""
        taps = sum((patch - abs(dr)) * (patch - abs(dc)) for dr in (-1, 0, 1) for dc in (-1, 0, 1))
        centre = min(patch, 3) ** 2
        total = 0
        for i, w in enumerate(self.taps):
            c_in, c_out = w.shape[2], w.shape[3]
            total += c_in * c_out * (centre if i == len(self.taps) - 1 else taps)
        return 2.0 * n * total
