"""Exact fast evaluation of an MRH-Net on many small patches at once ("useful taps" form).

Every layer of the network is a 3 x 3 'same' convolution applied to one P x P patch (P = 3) with zero
padding inside the patch, and the original keeps only the centre of the output. For a batch of N
patches the activations are kept channel-major, ``(P rows, C, P cols, N)``, i.e. one (P C, P N) matrix.
Then, for one output row r and one column offset dc, all the taps of the rows that r reads (2 or 3) are
a single plain matrix product: the stacked taps (C_out x k C_in) times a block of consecutive rows of
that matrix (the row neighbourhood; its columns restricted to the patch columns whose neighbour c + dc
lies inside the patch), accumulated into the output row. No gathers, no copies: every operand is a
contiguous block, which keeps the products near the machine's GEMM peak. A 3 x 3 patch needs
4 + 6 + 9 + ... = 49 products per channel pair and layer: the useful taps only, against 81 for the dense
9 x 9-position matrix (which multiplies padding zeros). Each output is the same sum of the same products
as ``conv2d`` computes, in another order, so results agree to float rounding.

Buffers and the list of products are prepared once per batch size and thread (a workspace), so a layer
is 9 library calls plus the bias and the ReLU. Residual additions are folded into the accumulation, and
the last layer computes the centre output only. The same code runs on CUDA; ``precision`` picks fp32
(exact), tf32 (CUDA tensor cores) or bf16.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from ..errors import MRHNetError
from .model import MRHNet

PRECISIONS = ("fp32", "tf32", "bf16")


def _ranges(d: int, p: int) -> tuple[slice, slice]:
    """(output positions, input positions) along one patch axis for a tap offset ``d`` in {-1, 0, 1}."""
    return slice(max(0, -d), p - max(0, d)), slice(max(0, d), p + min(0, d))


class PatchNet:
    """An :class:`~MRHNetLib.network.model.MRHNet` prepared for centre-of-patch inference on batches of patches.

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
        self._local = threading.local()  # one workspace per thread (CPU workers share the net)

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
        """Per column offset dc and output row r: the transposed taps of the rows that r reads, side by
        side (C_out x k C_in, k = 2 or 3), so that one product covers a whole row neighbourhood."""
        w = self.taps[layer]  # (3, 3, C_in, C_out)
        return [[w[max(0, r - 1) - r + 1: min(p, r + 2) - r + 1, dc + 1].reshape(-1, w.shape[3]).t().contiguous()
                 for r in range(p)] for dc in (-1, 0, 1)]

    def _layer_plan(self) -> list[tuple[int, int, bool]]:
        """(input buffer, output buffer, accumulate?) of every layer but the last: buffer 0 holds the
        patches, 1-3 the activations; accumulating layers add onto their output buffer (the residual)."""
        plan = [(0, 1, False), (1, 2, False), (2, 3, False), (3, 2, True)]  # Conv1-3, Conv3_1 + a
        plan += [(2, 3, False), (3, 2, True)] * self.depth  # blocks: conv1, conv2 + r
        return plan + [(2, 3, False)]  # Conv4; then Conv5 at the centre

    def _workspace(self, p: int, n: int) -> "_Workspace":
        ws = getattr(self._local, "ws", None)
        if ws is None or (ws.p, ws.n) != (p, n):
            ws = self._local.ws = _Workspace(self, p, n)
        return ws

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(P, P, N, C_in) patches (rows, cols, patch, channel) -> (N,) centre outputs."""
        if x.ndim != 4 or x.shape[0] != x.shape[1] or x.shape[3] != self.in_channels:
            raise MRHNetError(f"fast inference expects (P, P, N, {self.in_channels}) patches, got {tuple(x.shape)}")
        ws = self._workspace(x.shape[0], x.shape[2])
        ws.buffers[0].copy_(x.permute(0, 3, 1, 2))  # -> (P rows, C, P cols, N), on the device, in dtype
        with self._matmul_mode():
            for products, out, bias in ws.layers:
                for first, w, xi, oo in products:
                    if first:
                        torch.mm(w, xi, out=oo)
                    else:
                        oo.addmm_(w, xi)
                out.add_(bias).relu_()  # every layer but the last is followed by a ReLU
            y = torch.zeros((1, ws.n), dtype=self.dtype, device=self.device)
            for w, xc in ws.centre:
                y.addmm_(w, xc)
            return (y[0] + self.bias[-1][0]).float()

    def flops(self, n: int, patch: int = 3) -> float:
        """Multiply-adds x 2 that ``__call__`` does for ``n`` patches (the products actually computed)."""
        taps = sum((patch - abs(dr)) * (patch - abs(dc)) for dr in (-1, 0, 1) for dc in (-1, 0, 1))
        centre = min(patch, 3) ** 2
        total = 0
        for i, w in enumerate(self.taps):
            c_in, c_out = w.shape[2], w.shape[3]
            total += c_in * c_out * (centre if i == len(self.taps) - 1 else taps)
        return 2.0 * n * total


class _Workspace:
    """Activation buffers of a :class:`PatchNet` for batches of ``n`` P x P patches, and every layer's
    products prepared as (overwrite?, taps, input block, output block) views into them."""

    def __init__(self, pn: PatchNet, p: int, n: int):
        self.p, self.n = p, n
        width = pn.taps[0].shape[3]
        shapes = [(p, pn.in_channels, p, n)] + [(p, width, p, n)] * 3
        self.buffers = [torch.empty(s, dtype=pn.dtype, device=pn.device) for s in shapes]
        self.layers = []
        plan = pn._layer_plan()
        for layer, (src, dst, accumulate) in enumerate(plan):
            x, out = self.buffers[src], self.buffers[dst]
            c_in, c_out = x.shape[1], out.shape[1]
            xs = x.view(p * c_in, p * n)  # rows: (patch row, channel); columns: (patch col, patch)
            taps = pn._row_taps(layer, p)
            products = []
            for r in range(p):
                rows = xs[max(0, r - 1) * c_in: min(p, r + 2) * c_in]  # the row neighbourhood of row r
                o = out[r].view(c_out, p * n)
                for dc in (0, -1, 1):  # dc = 0 first: it covers every output column
                    co, ci = _ranges(dc, p)
                    if co.stop > co.start:
                        products.append((dc == 0 and not accumulate, taps[dc + 1][r],
                                         rows[:, ci.start * n: ci.stop * n], o[:, co.start * n: co.stop * n]))
            self.layers.append((products, out, pn.bias[layer].view(1, c_out, 1, 1)))
        # the last layer (one output channel) at the patch centre only: per column, (1, k C) x (k C, N)
        last, z, h = pn.taps[-1], self.buffers[plan[-1][1]], p // 2
        lo, hi = max(0, h - 1), min(p, h + 2)
        self.centre = [(last[lo - h + 1: hi - h + 1, col - h + 1, :, 0].reshape(1, -1),
                        z[lo:hi, :, col].view((hi - lo) * z.shape[1], n)) for col in range(lo, hi)]
