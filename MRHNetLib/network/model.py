"""The MRH-Net architecture (Liang et al., eLife 2022), in PyTorch.

Conv1 -> ReLU -> Conv2 -> ReLU(=a) -> Conv3 -> ReLU -> Conv3_1, + a; then ``depth`` residual blocks
(ReLU -> r; Conv -> ReLU -> Conv; + r); then ReLU -> Conv4 (64) -> ReLU -> Conv5 (1).
All 3 x 3 convolutions with 64 filters, 'same' zero padding inside the patch, with bias, no batch norm.
Parameter names follow the original layer names (``Conv1``, ..., ``blocks.k.conv1``, ``Conv4``, ``Conv5``)
so that transfer learning and the MATLAB importer can address them.
"""
from __future__ import annotations

import torch
from torch import nn

WIDTH = 64


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True)


class ResBlock(nn.Module):
    """x -> ReLU -> r; r -> conv1 -> ReLU -> conv2; + r."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.conv1 = conv3x3(width, width)
        self.conv2 = conv3x3(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(x)
        return self.conv2(torch.relu(self.conv1(r))) + r


class MRHNet(nn.Module):
    """Patch-to-patch network: (N, C, P, P) normalised MRI patches -> (N, 1, P, P) target patches."""

    def __init__(self, in_channels: int = 67, depth: int = 5, width: int = WIDTH):
        super().__init__()
        self.in_channels, self.depth, self.width = in_channels, depth, width
        self.Conv1 = conv3x3(in_channels, width)
        self.Conv2 = conv3x3(width, width)
        self.Conv3 = conv3x3(width, width)
        self.Conv3_1 = conv3x3(width, width)
        self.blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.Conv4 = conv3x3(width, width)
        self.Conv5 = conv3x3(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.Conv2(torch.relu(self.Conv1(x))))
        x = self.Conv3_1(torch.relu(self.Conv3(a))) + a
        for block in self.blocks:
            x = block(x)
        return self.Conv5(torch.relu(self.Conv4(torch.relu(x))))

    def convs(self) -> list[nn.Conv2d]:
        """All convolutions in forward order (used by fast inference and the importer)."""
        out = [self.Conv1, self.Conv2, self.Conv3, self.Conv3_1]
        for b in self.blocks:
            out += [b.conv1, b.conv2]
        return out + [self.Conv4, self.Conv5]

    def head(self) -> list[nn.Conv2d]:
        """The layers that transfer learning replaces."""
        return [self.Conv4, self.Conv5]


def init_weights(net: MRHNet, scheme: str = "glorot", generator: torch.Generator | None = None) -> MRHNet:
    """Initialise every convolution: ``glorot`` (MATLAB's default, as the original code) or ``orthogonal``
    (as the paper); biases 0."""
    for conv in net.convs():
        reinit_conv(conv, scheme, generator)
    return net


def reinit_conv(conv: nn.Conv2d, scheme: str = "glorot", generator: torch.Generator | None = None) -> None:
    with torch.no_grad():
        if scheme == "glorot":
            nn.init.xavier_uniform_(conv.weight, generator=generator)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(conv.weight, generator=generator)
        else:
            raise ValueError(f"unknown initialisation '{scheme}' (use 'glorot' or 'orthogonal')")
        conv.bias.zero_()
