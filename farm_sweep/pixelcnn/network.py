"""PixelCNN++ (Salimans et al. 2017) and an anti-diagonal causal variant for wavefront sampling.

Both map an image x (B, C, H, W) in [-1, 1] to the logistic mixture parameters (B, P, H, W) of every
pixel (see logistic_mixture.py). The parameters of pixel (r, c) never depend on pixel (r, c) itself
(no channel of it): channels inside a pixel are handled by the likelihood's coefficients.

`raster` (the reference architecture): causal for the raster order. Two streams, as in the reference:
  u  ("up" stream): down-shifted convolutions, sees the rows strictly above (r' < r);
  ul ("up-left" stream): down-right-shifted convolutions plus the u stream, sees r' < r, or r' = r, c' < c.
  Together they cover every earlier pixel: no blind spot (gradient-checked in the tests).

`antidiagonal`: causal for the anti-diagonal wavefront order. Pixel (r, c) depends only on pixels with
  r' + c' < r + c, so all pixels of one anti-diagonal can be sampled in one network evaluation.
  Construction: one stream of 3x3 convolutions masked to offsets (dr, dc) with dr + dc < 0 for the first
  layer and dr + dc <= 0 after it. Induction: a feature at (r, c) depends on inputs with r' + c' < r + c
  and masked layers keep it so. Strided convolutions keep it per level: a feature at (i, j) of the level
  with stride 2^l depends on inputs with r' + c' < 2^l (i + j), and upsampling with a 2x2 stride-2
  transposed convolution copies (i, j) to (2i + a, 2j + b) whose r + c is >= 2 (i + j). Receptive field
  of (r, c): a subset of {r' + c' < r + c}; with the offsets (-1, +1) and (+1, -1) it spreads along the
  diagonals too, so there is no blind spot inside the reach of the network.

Shared pieces follow the reference: concat_elu, gated residual blocks with dropout, an up pass (stages
of resnets with stride-2 downsampling between them) whose activations feed, in reverse, the down pass
(stages of resnets with upsampling) through skip connections, weight normalization on every layer, and
an extra channel of ones on the input so that the network can tell the image from its zero padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from farm_sweep.pixelcnn.logistic_mixture import CHANNELS, num_params

CAUSAL = ("raster", "antidiagonal")
ConvFactory = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class PixelCNNConfig:
    """Defaults are the paper's CIFAR-10 model; use fewer stages for small images (H, W must be
    divisible by 2^(stages-1))."""

    channels: int = 3
    filters: int = 160
    resnets_per_stage: int = 5
    stages: int = 3
    mixtures: int = 10
    dropout: float = 0.5
    causal: str = "raster"

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise ValueError(f"channels={self.channels}: choose one of {CHANNELS}")
        if self.causal not in CAUSAL:
            raise ValueError(f"causal={self.causal!r}: choose one of {CAUSAL}")
        for name in ("filters", "resnets_per_stage", "stages", "mixtures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


def build_pixelcnn(config: PixelCNNConfig) -> nn.Module:
    """The network for `config.causal`: forward(x (B, C, H, W)) -> mixture params (B, P, H, W)."""
    return RasterPixelCNN(config) if config.causal == "raster" else AntidiagonalPixelCNN(config)


# ---------------------------------------------------------------- building blocks


def concat_elu(x: torch.Tensor) -> torch.Tensor:
    """ELU of x and of -x, stacked on channels: keeps both signs' information (2x channels)."""
    return F.elu(torch.cat([x, -x], dim=1))


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (a zero row enters on top): (r, c) now holds (r - 1, c)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


def right_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every column one right (a zero column enters on the left): (r, c) now holds (r, c - 1)."""
    return F.pad(x, (1, 0, 0, 0))[:, :, :, :-1]


def nin(c_in: int, c_out: int) -> nn.Module:
    """A weight-normalized per-pixel linear map (1x1 convolution)."""
    return weight_norm(nn.Conv2d(c_in, c_out, 1))


class DownShiftedConv2d(nn.Module):
    """Output (r, c) sees input rows r-kh+1..r, columns c-kw//2..c+kw//2: nothing below row r."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int] = (2, 3), stride: int = 1) -> None:
        super().__init__()
        kh, kw = kernel
        self.pad = (kw // 2, kw // 2, kh - 1, 0)  # left, right, top, bottom
        self.conv = weight_norm(nn.Conv2d(c_in, c_out, kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class DownRightShiftedConv2d(nn.Module):
    """Output (r, c) sees input rows r-kh+1..r, columns c-kw+1..c: nothing below or to the right."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int] = (2, 2), stride: int = 1) -> None:
        super().__init__()
        kh, kw = kernel
        self.pad = (kw - 1, 0, kh - 1, 0)
        self.conv = weight_norm(nn.Conv2d(c_in, c_out, kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))


class ShiftedDeconv2d(nn.Module):
    """Stride-2 upsampling whose outputs see inputs at or above them and, with `right_shifted`, at or left
    of them too (kernel (2, 2)); otherwise horizontally centred (kernel (2, 3)). Cropped as the reference."""

    def __init__(self, c_in: int, c_out: int, right_shifted: bool) -> None:
        super().__init__()
        kh, kw = (2, 2) if right_shifted else (2, 3)
        self.deconv = weight_norm(nn.ConvTranspose2d(c_in, c_out, (kh, kw), stride=2, output_padding=1), dim=1)
        left, right = (0, kw - 1) if right_shifted else (kw // 2, kw // 2)
        self.crop = (left, right, 0, kh - 1)  # columns cut on the left and right, rows on top and bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right, top, bottom = self.crop
        y = self.deconv(x)
        return y[:, :, top:y.shape[2] - bottom, left:y.shape[3] - right]


class AntidiagonalConv2d(nn.Module):
    """3x3 convolution restricted to offsets (dr, dc) with dr + dc <= 0 (strict: < 0), i.e. to the
    anti-diagonals at or (strict) before the output's. Stride 2 maps (i, j) to centre (2i, 2j)."""

    padding = 1  # zeros on every side: the 3x3 kernel is centred on its output

    def __init__(self, c_in: int, c_out: int, stride: int = 1, strict: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.conv = weight_norm(nn.Conv2d(c_in, c_out, 3))
        offset = torch.arange(3) - 1
        diagonal = offset[:, None] + offset[None, :]  # dr + dc of every tap
        self.register_buffer("mask", (diagonal < 0) if strict else (diagonal <= 0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.conv.weight * self.mask, self.conv.bias, self.stride, padding=self.padding)


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), where (a, b) = conv(dropout(concat_elu(conv(concat_elu(x)) + nin(skip)))).

    `skip` is how many filters-wide tensors arrive through the skip input (0: none)."""

    def __init__(self, filters: int, conv: ConvFactory, skip: int, dropout: float) -> None:
        super().__init__()
        self.conv_in = conv(2 * filters, filters)
        self.skip = nin(2 * skip * filters, filters) if skip else None
        self.dropout = nn.Dropout(dropout)
        self.conv_out = conv(2 * filters, 2 * filters)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(concat_elu(x))
        if skip is not None:
            h = h + self.skip(concat_elu(skip))
        a, b = self.conv_out(self.dropout(concat_elu(h))).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)


def _resnets(config: PixelCNNConfig, conv: ConvFactory, skip: int, count: int) -> nn.ModuleList:
    return nn.ModuleList(GatedResnet(config.filters, conv, skip, config.dropout) for _ in range(count))


def _down_pass_sizes(config: PixelCNNConfig) -> list[int]:
    """Resnets per down-pass stage: one more after the first, to consume the downsampled activations."""
    n = config.resnets_per_stage
    return [n] + [n + 1] * (config.stages - 1)


def _check_size(x: torch.Tensor, config: PixelCNNConfig) -> None:
    factor = 2 ** (config.stages - 1)
    if x.shape[1] != config.channels or x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f"input {tuple(x.shape)}: expected {config.channels} channels and H, W divisible "
                         f"by {factor} for {config.stages} stages")


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)


# ---------------------------------------------------------------- the networks


class RasterPixelCNN(nn.Module):
    """PixelCNN++ as in the reference implementation (two streams, u and ul)."""

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__()
        self.config = config
        f, c_in, stages = config.filters, config.channels + 1, config.stages
        u_conv, ul_conv = DownShiftedConv2d, DownRightShiftedConv2d
        self.u_init = DownShiftedConv2d(c_in, f, (2, 3))
        self.ul_init_above = DownShiftedConv2d(c_in, f, (1, 3))
        self.ul_init_left = DownRightShiftedConv2d(c_in, f, (2, 1))
        self.up_u = nn.ModuleList(_resnets(config, u_conv, 0, config.resnets_per_stage) for _ in range(stages))
        self.up_ul = nn.ModuleList(_resnets(config, ul_conv, 1, config.resnets_per_stage) for _ in range(stages))
        self.downsample_u = nn.ModuleList(DownShiftedConv2d(f, f, (2, 3), stride=2) for _ in range(stages - 1))
        self.downsample_ul = nn.ModuleList(DownRightShiftedConv2d(f, f, (2, 2), stride=2) for _ in range(stages - 1))
        self.down_u = nn.ModuleList(_resnets(config, u_conv, 1, n) for n in _down_pass_sizes(config))
        self.down_ul = nn.ModuleList(_resnets(config, ul_conv, 2, n) for n in _down_pass_sizes(config))
        self.upsample_u = nn.ModuleList(ShiftedDeconv2d(f, f, right_shifted=False) for _ in range(stages - 1))
        self.upsample_ul = nn.ModuleList(ShiftedDeconv2d(f, f, right_shifted=True) for _ in range(stages - 1))
        self.out = nin(f, num_params(config.channels, config.mixtures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.config)
        x = _with_ones(x)
        # The initial shifts make both streams strictly causal: u sees rows above, ul also the row's left.
        u = down_shift(self.u_init(x))
        ul = down_shift(self.ul_init_above(x)) + right_shift(self.ul_init_left(x))
        us, uls = [u], [ul]
        for stage in range(self.config.stages):  # up pass: remember every activation
            for u_block, ul_block in zip(self.up_u[stage], self.up_ul[stage], strict=True):
                u = u_block(u)
                ul = ul_block(ul, u)
                us.append(u)
                uls.append(ul)
            if stage < self.config.stages - 1:
                u, ul = self.downsample_u[stage](u), self.downsample_ul[stage](ul)
                us.append(u)
                uls.append(ul)
        u, ul = us.pop(), uls.pop()
        for stage in range(self.config.stages):  # down pass: consume them in reverse
            for u_block, ul_block in zip(self.down_u[stage], self.down_ul[stage], strict=True):
                u = u_block(u, us.pop())
                ul = ul_block(ul, torch.cat([u, uls.pop()], dim=1))
            if stage < self.config.stages - 1:
                u, ul = self.upsample_u[stage](u), self.upsample_ul[stage](ul)
        return self.out(F.elu(ul))


class AntidiagonalPixelCNN(nn.Module):
    """One stream of anti-diagonally masked convolutions in the same up/down shape (see module doc)."""

    def __init__(self, config: PixelCNNConfig) -> None:
        super().__init__()
        self.config = config
        f, stages = config.filters, config.stages
        self.init = AntidiagonalConv2d(config.channels + 1, f, strict=True)
        self.up = nn.ModuleList(_resnets(config, AntidiagonalConv2d, 0, config.resnets_per_stage)
                                for _ in range(stages))
        self.downsample = nn.ModuleList(AntidiagonalConv2d(f, f, stride=2) for _ in range(stages - 1))
        self.down = nn.ModuleList(_resnets(config, AntidiagonalConv2d, 1, n) for n in _down_pass_sizes(config))
        self.upsample = nn.ModuleList(weight_norm(nn.ConvTranspose2d(f, f, 2, stride=2), dim=1)
                                      for _ in range(stages - 1))
        self.out = nin(f, num_params(config.channels, config.mixtures))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_size(x, self.config)
        h = self.init(_with_ones(x))
        skips = [h]
        for stage, blocks in enumerate(self.up):
            for block in blocks:
                h = block(h)
                skips.append(h)
            if stage < self.config.stages - 1:
                h = self.downsample[stage](h)
                skips.append(h)
        h = skips.pop()
        for stage, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, skips.pop())
            if stage < self.config.stages - 1:
                h = self.upsample[stage](h)
        return self.out(F.elu(h))
