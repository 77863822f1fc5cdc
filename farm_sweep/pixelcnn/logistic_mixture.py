"""The discretized logistic mixture likelihood of PixelCNN++ (Salimans et al. 2017, section 2.1-2.2).

Every channel of a pixel takes one of 256 levels, rescaled to [-1, 1] (level v -> v / 127.5 - 1), so
neighbouring levels are 2/255 apart. An RGB pixel x = (r, g, b) has probability

    p(x) = sum_m pi_m  P(r | mu_r,m,                          s_r,m)
                       P(g | mu_g,m + alpha_m r,              s_g,m)
                       P(b | mu_b,m + beta_m r + gamma_m g,   s_b,m)

where P(v | mu, s) = sigma((v + 1/255 - mu) / s) - sigma((v - 1/255 - mu) / s) is the mass a logistic
puts on the bin of width 2/255 around v; the lowest bin reaches down to -inf and the highest up to
+inf, so the 256 masses sum to one. The component m is shared by the three channels: channels are
autoregressive inside a pixel through alpha, beta, gamma and through the component they share.

Parameter layout per pixel, as in the reference code (P channels of a (B, P, H, W) tensor):
    RGB:       P = 10 M: [logits (M) | R: means, log_scales, coeffs (M each) | G: ... | B: ...]
               coeffs after tanh are alpha (R's block), beta (G's block), gamma (B's block).
    grayscale: P = 3 M:  [logits (M) | means (M) | log_scales (M)]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = 256
HALF_BIN = 1.0 / 255.0  # half the distance between neighbouring levels in [-1, 1]
MIN_LOG_SCALE = -7.0  # the reference code's floor on log s
CHANNELS = (1, 3)


def num_params(channels: int, mixtures: int) -> int:
    """P, the number of parameter channels per pixel: 10 M for RGB, 3 M for grayscale."""
    _check_channels(channels)
    return mixtures * (10 if channels == 3 else 3)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 levels 0..255 -> floats in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] (clamped) -> the nearest of the 256 levels, as uint8."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Snap values to the level grid in [-1, 1]: a continuous draw lands in exactly one bin."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0


def bin_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x | mean, s): the log mass of a logistic on the bin of level x (broadcasting).

    With u = (x + 1/255 - mean) / s and l = (x - 1/255 - mean) / s,
        log(sigma(u) - sigma(l)) = log sigma(u) + log sigma(-l) + log(1 - exp(l - u)),
    exact and finite for every u > l (no cancellation, unlike the difference of two cdfs). The bottom
    bin has no lower edge (sigma(l) = 0) and the top bin no upper edge (sigma(u) = 1): drop those terms.
    """
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (x - mean + HALF_BIN)
    lower = inv_scale * (x - mean - HALF_BIN)
    top, bottom = x > 1.0 - HALF_BIN, x < -1.0 + HALF_BIN
    log_cdf_upper = torch.where(top, 0.0, F.logsigmoid(upper))
    log_sf_lower = torch.where(bottom, 0.0, F.logsigmoid(-lower))
    log_width = torch.where(top | bottom, 0.0, torch.log(-torch.expm1(-2.0 * HALF_BIN * inv_scale)))
    return log_cdf_upper + log_sf_lower + log_width


def log_prob(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """log p(x_pixel | params) for every pixel: x (B, C, H, W) on the level grid, params (B, P, H, W).

    Returns (B, H, W): the whole pixel, i.e. the sum of its channels' conditionals."""
    logits, means, log_scales, coeffs = _split(params, x.shape[1])
    log_px = bin_log_prob(x.unsqueeze(2), _conditional_means(x, means, coeffs), log_scales)  # (B, C, M, H, W)
    return torch.logsumexp(F.log_softmax(logits, dim=1) + log_px.sum(1), dim=1)


def channel_log_probs(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The full categorical of every channel given the pixel's TRUE earlier channels, (B, C, H, W, 256).

    p(x_c = v | x_<c) = sum_m q_m,c P_m,c(v), where q_m,c ∝ pi_m prod_{c' < c} P_m,c'(x_c') is the
    posterior of component m after the earlier channels. Gathering at x and summing over channels gives
    `log_prob` (the chain rule inside a pixel). Memory: B·C·M·H·W·256 floats."""
    logits, means, log_scales, coeffs = _split(params, x.shape[1])
    means = _conditional_means(x, means, coeffs)  # (B, C, M, H, W)
    log_px = bin_log_prob(x.unsqueeze(2), means, log_scales)
    seen = log_px.cumsum(1) - log_px  # sum over the earlier channels only
    log_posterior = F.log_softmax(logits.unsqueeze(1) + seen, dim=2)
    values = torch.arange(LEVELS, dtype=x.dtype, device=x.device) / 127.5 - 1.0
    log_bins = bin_log_prob(values, means.unsqueeze(-1), log_scales.unsqueeze(-1))  # (B, C, M, H, W, 256)
    return torch.logsumexp(log_posterior.unsqueeze(-1) + log_bins, dim=2)


def sample(params: torch.Tensor, channels: int = 3, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Draw x ~ p(. | params) at every pixel, on the level grid: (B, C, H, W).

    `noise` holds uniforms (B, 1 + C, H, W): the first picks the component by inverting the cdf of the
    mixture weights, the others drive each channel's logistic draw mu + s log(u / (1 - u)), which is then
    snapped to its level (so it lands in each bin with exactly the bin's mass). A frozen `noise` makes the
    sampler a deterministic function of params."""
    logits, means, log_scales, coeffs = _split(params, channels)
    batch, mixtures, height, width = logits.shape
    if noise is None:
        noise = torch.rand(batch, 1 + channels, height, width, dtype=params.dtype, device=params.device)
    u = noise.clamp(1e-5, 1.0 - 1e-5)
    component = (F.softmax(logits, dim=1).cumsum(1) < u[:, :1]).sum(1, keepdim=True).clamp(max=mixtures - 1)
    index = component.unsqueeze(1).expand(-1, channels, -1, -1, -1)  # (B, C, 1, H, W)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t.gather(2, index).squeeze(2)  # (B, C, H, W)

    draw = pick(means) + pick(log_scales).exp() * (torch.log(u[:, 1:]) - torch.log1p(-u[:, 1:]))
    if coeffs is None:
        return quantize(draw)
    alpha, beta, gamma = pick(coeffs).unbind(1)
    r = quantize(draw[:, 0])
    g = quantize(draw[:, 1] + alpha * r)
    b = quantize(draw[:, 2] + beta * r + gamma * g)
    return torch.stack([r, g, b], dim=1)


def _split(params: torch.Tensor,
           channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """logits (B, M, H, W); means, log_scales, coeffs (B, C, M, H, W); coeffs is None for grayscale."""
    per_mixture = num_params(channels, 1)
    if params.shape[1] % per_mixture:
        raise ValueError(f"{params.shape[1]} parameter channels is not a multiple of {per_mixture} "
                         f"(the count per mixture component for {channels} channel(s))")
    mixtures = params.shape[1] // per_mixture
    logits = params[:, :mixtures]
    blocks = params[:, mixtures:].unflatten(1, (channels, -1, mixtures))  # (B, C, 3 or 2, M, H, W)
    means, log_scales = blocks[:, :, 0], blocks[:, :, 1].clamp(min=MIN_LOG_SCALE)
    coeffs = torch.tanh(blocks[:, :, 2]) if channels == 3 else None
    return logits, means, log_scales, coeffs


def _conditional_means(x: torch.Tensor, means: torch.Tensor, coeffs: torch.Tensor | None) -> torch.Tensor:
    """Shift G's means by alpha r and B's by beta r + gamma g (x: (B, C, H, W), means: (B, C, M, H, W))."""
    if coeffs is None:
        return means
    r, g = x[:, 0:1], x[:, 1:2]  # (B, 1, H, W), broadcast over the components
    alpha, beta, gamma = coeffs.unbind(1)
    return torch.stack([means[:, 0], means[:, 1] + alpha * r, means[:, 2] + beta * r + gamma * g], dim=1)


def _check_channels(channels: int) -> None:
    if channels not in CHANNELS:
        raise ValueError(f"channels={channels}: the logistic mixture models 1 (grayscale) or 3 (RGB) channels")
