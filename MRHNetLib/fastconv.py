"""Exact fast evaluation of an MRH-Net on many small patches at once ("useful taps" form).

Every layer of the network is a 3 x 3 'same' convolution applied to one P x P patch (P = 3) with zero
padding inside the patch, and the original keeps only the centre of the output. For a batch of N
patches the activations are kept column-major, ``(P cols, N, P rows, C)``. Then, for one column offset
dc and one output row r, all the taps of the rows that r reads (2 or 3) are a single matrix product:
the block of output columns whose neighbour (c + dc) lies inside the patch, with that row's
neighbourhood of input rows as one (N, k C_in) strided matrix, times the stacked (k C_in) x C_out taps,
accumulated into the output row (``baddbmm_`` on strided views: no gathers, no copies). A 3 x 3 patch
needs 4 + 6 + 9 + ... = 49 products per channel pair and layer: the useful taps only, against 81 for
the dense 9 x 9-position matrix (which multiplies padding zeros); stacking the rows makes the products
deeper (K = 128 or 192) and the output is read and written 3 times per layer instead of 9. Each output
is the same sum of the same products as ``conv2d`` computes, in another order, so results agree to
float rounding.

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
        self._merged: dict[tuple[int, int], list[list[torch.Tensor]]] = {}

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

    def _row_taps(self, layer: int, p: int) -> list[list[torch.Tensor]]:
        """Per column offset dc and output row r: the taps of the rows that r reads, stacked along C_in
        ((k C_in) x C_out, k = 2 or 3), so that one product covers a whole row neighbourhood."""
        key = (layer, p)
        if key not in self._merged:
            w = self.taps[layer]
            self._merged[key] = [[w[max(0, r - 1) - r + 1: min(p, r + 2) - r + 1, dc + 1].reshape(-1, w.shape[3])
                                  .contiguous() for r in range(p)] for dc in (-1, 0, 1)]
        return self._merged[key]

    def conv(self, x: torch.Tensor, layer: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """One 3 x 3 'same' convolution of (P cols, N, P rows, C_in) patches -> (P, N, P, C_out), added to
        ``out`` when given (a residual), plus the bias."""
        b = self.bias[layer]
        p, n = x.shape[0], x.shape[1]
        c_out = b.shape[0]
        if out is None:
            out = b.expand(p, n, p, c_out).contiguous()
        else:
            out += b
        merged = self._row_taps(layer, p)
        for dc in (-1, 0, 1):
            co, ci = _ranges(dc, p)
            xo, xi = out[co], x[ci]
            if xo.shape[0] == 0:
                continue
            for r in range(p):
                # (cols, N, k rows, C_in) -> (cols, N, k C_in): a strided view, no copy
                rows = xi[:, :, max(0, r - 1): min(p, r + 2)].flatten(2)
                w = merged[dc + 1][r]
                xo[:, :, r].baddbmm_(rows, w.expand(xo.shape[0], -1, -1))
        return out

    def centre(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """The last convolution (one output channel) at the patch centre only: (P, N, P, C) -> (N,)."""
        w, b = self.taps[layer], self.bias[layer]
        p, h = x.shape[0], x.shape[0] // 2
        lo, hi = max(0, h - 1), min(p, h + 2)
        xs = x[lo:hi, :, lo:hi].flatten(2)  # (k cols, N, k rows * C)
        ws = w[lo - h + 1: hi - h + 1, lo - h + 1: hi - h + 1, :, 0].transpose(0, 1)  # (k cols, k rows, C)
        k = xs.shape[0]
        y = torch.bmm(xs, ws.reshape(k, -1, 1)).sum(dim=0)[:, 0]
        return y + b[0]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[0] != x.shape[1] or x.shape[3] != self.in_channels:
            raise MRHNetError(f"fast inference expects (P, P, N, {self.in_channels}) patches, got {tuple(x.shape)}")
        # column-major layout inside: (P cols, N, P rows, C), so a row neighbourhood is one strided matrix
        x = x.to(self.device, self.dtype).permute(1, 2, 0, 3).contiguous()
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
