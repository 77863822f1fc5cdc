"""FARM+MADE: one MADE evaluated under k pixel orderings in a single batched forward.

Connectivity follows MADE (Germain et al. 2015): every unit has a degree; a weight from a unit of
degree a to a unit of degree b exists iff b >= a (hidden layers) or b > a (output layer). Input pixel d
under ordering i has degree rank_i(d) + 1, so output d sees exactly the pixels before it in ordering i.
As in the FARM paper (section 3) the hidden degrees are shared by all orderings: only the input and
output masks change with the ordering. `num_masks > 1` draws several hidden-degree sets
(connectivity-agnostic training); `mask_index` selects the active one.

Weights have a leading "set" axis of 1 (shared by every ordering) or k (one per ordering), chosen per layer
by `weight_sharing`:
- `shared`: one parameter set for all k orderings (paper 3.1);
- `separate`: k independent MADEs;
- `shared_hidden`: the first (input) and last (output) layers per ordering, the hidden-to-hidden layers
  shared (needs two or more hidden layers: with one it would be `separate`);
- `ordering_embedding`: `shared` plus a learned code per ordering added to every hidden layer's
  pre-activation, so the shared units know which factorization they serve (a constant per ordering, so
  the autoregressive property is untouched).
Either way the k orderings run as stacked masked matmuls, never as a Python loop.

`dropout` drops hidden units while training (a regularizer for wide layers; it cannot add a connection).
`direct_connections` adds MADE's direct input-to-output weights: output d of ordering i sees input d' iff
rank_i(d') < rank_i(d) (a strictly lower-triangular matrix in that ordering), with the output layer's sets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from farm_sweep.orderings import ranks

WEIGHT_SHARING = ("shared", "separate", "shared_hidden", "ordering_embedding")


class FarmMADE(nn.Module):
    def __init__(self, orders: torch.Tensor, hidden_sizes: Sequence[int], weight_sharing: str = "shared",
                 num_masks: int = 1, seed: int = 0, direct_connections: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if weight_sharing not in WEIGHT_SHARING:
            raise ValueError(f"weight_sharing={weight_sharing!r}; choose one of {WEIGHT_SHARING}")
        if not hidden_sizes:
            raise ValueError("hidden_sizes must name at least one hidden layer")
        if weight_sharing == "shared_hidden" and len(hidden_sizes) < 2:
            raise ValueError("weight_sharing='shared_hidden' shares the hidden-to-hidden layers, and one hidden "
                             "layer has none (it would be 'separate'); give two or more hidden_sizes")
        self.k, self.dim = orders.shape
        self.hidden_sizes = list(hidden_sizes)
        self.weight_sharing = weight_sharing
        self.num_masks = num_masks
        self.dropout = dropout
        self.mask_index = 0
        self.register_buffer("orders", orders.clone())
        self.register_buffer("ranks", ranks(orders))

        sizes = [self.dim, *self.hidden_sizes, self.dim]
        self.layer_sets = layer_sets(weight_sharing, self.k, len(sizes) - 1)
        self.weights = nn.ParameterList(
            nn.Parameter(_init_weight(sets, fan_out, fan_in))
            for sets, fan_in, fan_out in zip(self.layer_sets, sizes, sizes[1:]))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.zeros(sets, 1, fan_out)) for sets, fan_out in zip(self.layer_sets, sizes[1:]))
        self.codes = nn.ParameterList(
            nn.Parameter(torch.zeros(self.k, 1, size)) for size in self.hidden_sizes
            if weight_sharing == "ordering_embedding")
        self.direct = (nn.Parameter(torch.zeros(self.layer_sets[-1], self.dim, self.dim))
                       if direct_connections else None)
        self._register_masks(seed)

    @property
    def direct_connections(self) -> bool:
        return self.direct is not None

    def _register_masks(self, seed: int) -> None:
        """Masks per hidden-degree set m: input (M, k, h1, D), hidden (M, h_{l+1}, h_l), output (M, k, D, hL)."""
        generator = torch.Generator().manual_seed(seed)
        input_degree = self.ranks + 1  # (k, D), values 1..D
        firsts, middles, lasts, all_degrees = [], [], [], []
        for _ in range(self.num_masks):
            degrees = _hidden_degrees(self.hidden_sizes, self.dim, generator)
            all_degrees.append(degrees)
            firsts.append(degrees[0][None, :, None] >= input_degree[:, None, :])
            middles.append([later[:, None] >= earlier[None, :] for earlier, later in zip(degrees, degrees[1:])])
            lasts.append(input_degree[:, :, None] > degrees[-1][None, None, :])
        self.register_buffer("input_masks", torch.stack(firsts))
        self.register_buffer("direct_masks", input_degree[:, :, None] > input_degree[:, None, :])  # (k, D, D)
        for layer in range(len(self.hidden_sizes) - 1):
            self.register_buffer(f"hidden_masks_{layer}", torch.stack([m[layer] for m in middles]))
        self.register_buffer("output_masks", torch.stack(lasts))
        for layer in range(len(self.hidden_sizes)):  # follow from the seed, as the masks: not saved
            self.register_buffer(f"degrees_{layer}", torch.stack([d[layer] for d in all_degrees]), persistent=False)

    def degrees(self) -> list[torch.Tensor]:
        """The active mask set's hidden degrees, one (h_l,) tensor per hidden layer."""
        return [getattr(self, f"degrees_{layer}")[self.mask_index] for layer in range(len(self.hidden_sizes))]

    def masks(self, orderings: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The active masks, one per layer; per-ordering masks are restricted to `orderings`."""
        m = self.mask_index
        first, last = self.input_masks[m], self.output_masks[m]
        if orderings is not None:
            first, last = first[orderings], last[orderings]
        hidden = [getattr(self, f"hidden_masks_{layer}")[m] for layer in range(len(self.hidden_sizes) - 1)]
        return [first, *hidden, last]

    def forward(self, x: torch.Tensor, orderings: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli logits for every pixel under each ordering: (k', B, D) for x of shape (B, D).

        `orderings` (indices) restricts the forward to a subset of the k orderings (default: all)."""
        masks = self.masks(orderings)
        index = torch.arange(self.k, device=x.device) if orderings is None else orderings.to(x.device)
        h = x.unsqueeze(0)  # (1, B, D): the input is the same for every ordering
        for layer, (weight, bias, mask) in enumerate(zip(self.weights, self.biases, masks)):
            weight, bias = self._used(weight, orderings, index), self._used(bias, orderings, index)
            h = _masked_linear(h, torch.where(mask, weight, 0.0), bias)
            if layer < len(masks) - 1:
                if self.codes:
                    h = h + self.codes[layer][index]
                h = F.dropout(torch.relu(h), self.dropout, self.training)
        if self.direct is not None:
            direct_masks = self.direct_masks if orderings is None else self.direct_masks[index]
            direct = torch.where(direct_masks, self._used(self.direct, orderings, index), 0.0)
            h = h + _masked_linear(x.unsqueeze(0), direct, torch.zeros(()))
        return h

    def _used(self, tensor: torch.Tensor, orderings: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        """A per-ordering tensor (k sets) restricted to the orderings in use; a shared one (1 set) as it is."""
        return tensor[index] if orderings is not None and tensor.shape[0] == self.k > 1 else tensor

    def ordering_network(self, ordering: int) -> OrderingNetwork:
        """Ordering `ordering` under the active mask set as a plain MLP, for inference: forward(x, [ordering])[0]
        in eval mode equals it (up to rounding: it sums in another order)."""
        index = torch.tensor([ordering], device=self.orders.device)
        weights, biases = [], []
        for layer, (weight, bias, mask) in enumerate(zip(self.weights, self.biases, self.masks(index))):
            weights.append(torch.where(mask.view(mask.shape[-2:]), self._used(weight, index, index)[0], 0.0))
            code = self.codes[layer][ordering, 0] if self.codes and layer < len(self.codes) else 0.0
            biases.append(self._used(bias, index, index)[0, 0] + code)
        direct = None
        if self.direct is not None:
            direct = torch.where(self.direct_masks[ordering], self._used(self.direct, index, index)[0], 0.0)
        return OrderingNetwork(weights, biases, direct)

    def set_mask(self, index: int) -> None:
        if not 0 <= index < self.num_masks:
            raise ValueError(f"mask index {index} out of range 0..{self.num_masks - 1}")
        self.mask_index = index

    @contextmanager
    def using_mask(self, index: int) -> Iterator[None]:
        """Mask set `index` active inside the block, the one active before restored after it."""
        active = self.mask_index
        self.set_mask(index)
        try:
            yield
        finally:
            self.set_mask(active)


@dataclass(frozen=True)
class OrderingNetwork:
    """One ordering of a FarmMADE as a plain MLP: masked `weights` (out, in) and `biases` (out,) per layer (an
    ordering code folded into its layer's bias), ReLU between layers, plus masked `direct` weights (D, D)."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    direct: torch.Tensor | None



def layer_sets(weight_sharing: str, k: int, layers: int) -> list[int]:
    """Weight sets of each of `layers` weight layers (the first takes the input, the last gives the output)."""
    if weight_sharing == "separate":
        return [k] * layers
    if weight_sharing == "shared_hidden":
        return [k if layer in (0, layers - 1) else 1 for layer in range(layers)]
    return [1] * layers


def parameter_count(dim: int, hidden_sizes: Sequence[int], k: int, weight_sharing: str,
                    direct_connections: bool) -> int:
    """The number of parameters FarmMADE(...) holds, from the sizes alone (masks are buffers, not counted)."""
    sizes = [dim, *hidden_sizes, dim]
    sets = layer_sets(weight_sharing, k, len(sizes) - 1)
    count = sum(s * (fan_in * fan_out + fan_out) for s, fan_in, fan_out in zip(sets, sizes, sizes[1:]))
    if weight_sharing == "ordering_embedding":
        count += k * sum(hidden_sizes)
    return count + (sets[-1] * dim * dim if direct_connections else 0)


def _masked_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """h (s_h, B, in) @ weight (s_w, out, in)^T + bias, broadcasting the leading set axis.

    A single input set meeting many weight sets (the first layer) becomes one wide matmul."""
    if h.shape[0] == 1 and weight.shape[0] > 1:
        sets, out, fan_in = weight.shape
        wide = h[0] @ weight.reshape(sets * out, fan_in).T  # (B, sets*out)
        return wide.view(-1, sets, out).transpose(0, 1) + bias
    if weight.shape[0] == 1:
        return h @ weight[0].T + bias
    return torch.baddbmm(bias, h, weight.transpose(1, 2))


def _hidden_degrees(hidden_sizes: Sequence[int], dim: int, generator: torch.Generator) -> list[torch.Tensor]:
    """MADE degrees: each hidden layer's degrees uniform in [min of the previous layer, D-1]."""
    degrees, low = [], 1
    for size in hidden_sizes:
        high = max(dim - 1, low)
        layer = torch.randint(low, high + 1, (size,), generator=generator)
        degrees.append(layer)
        low = int(layer.min())
    return degrees


def _init_weight(sets: int, fan_out: int, fan_in: int) -> torch.Tensor:
    bound = fan_in ** -0.5
    return torch.empty(sets, fan_out, fan_in).uniform_(-bound, bound)
