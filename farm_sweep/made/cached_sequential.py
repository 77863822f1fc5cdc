"""Sequential sampling with cached hidden units: the sequential sample for about one forward's work.

In rank order, a hidden unit of degree m reads only pixels of rank < m (through the layers before it), and
pixel r's logit reads only the last layer's units of degree <= r (farm_sweep.made.staircase). So once pixel
r - 1 is drawn, every unit of degree <= r is final and never changes again. Drawing pixel r therefore needs:
1. the units whose degree is exactly r, computed once, from the (final) units of the layer before;
2. pixel r's output row over the final last-layer units, plus its direct connections to ranks < r;
3. the first layer's sums updated by the column of the pixel just drawn, for the units not yet final.
Over the D steps each unmasked weight is multiplied once per image: at most the work of one forward, spread
over D small steps, against sequential's D whole forwards. The sums run in another order than the network's
forward, so a pixel whose logit sits within rounding of its threshold may differ: made/sampling.py follows
this pass with plain forwards until one changes nothing, which makes the sample sequential's bit for bit.
"""

from __future__ import annotations

import torch

from farm_sweep.made.network import FarmMADE
from farm_sweep.made.staircase import Layer, ordering_staircase


def cached_sequential_pass(model: FarmMADE, threshold: torch.Tensor) -> torch.Tensor:
    """Samples (N, D), pixel d drawn as 1[threshold_d < logit_d] in ordering 0's rank order under the active
    mask set, each logit from the units cached so far (module docstring); eval mode, no gradients."""
    net = ordering_staircase(model, 0)
    order, layers = net.order, net.layers
    threshold = threshold[:, order]
    batch, dim = threshold.shape
    ranks = torch.arange(dim, device=threshold.device)
    final_counts = [torch.searchsorted(degrees.sort().values, ranks, right=True).tolist()
                    for degrees in model.degrees()]  # per layer: units of degree <= r, for every rank r
    first = layers[0]
    first_sums = first.bias.expand(batch, -1).clone()  # the first layer's pre-activations, pixels drawn so far
    first_rows = first.weight.T.contiguous()  # (D, h1): what pixel r adds to them
    units = [threshold.new_zeros(batch, len(layer.bias)) for layer in layers]
    done = [0] * len(layers)
    output, output_bias = net.output[order], net.output_bias[order]  # rows in rank order
    direct = net.direct[order][:, order] if net.direct is not None else None
    x = torch.zeros_like(threshold)
    for rank in range(dim):
        _finalize_units(layers, units, first_sums, done, [counts[rank] for counts in final_counts])
        logit = torch.addmv(output_bias[rank].expand(batch), units[-1][:, :done[-1]], output[rank, :done[-1]])
        if direct is not None and rank:
            logit += x[:, :rank] @ direct[rank, :rank]
        drawn = (threshold[:, rank] < logit).to(x.dtype)
        x[:, rank] = drawn
        pending = done[0]  # first-layer units not yet final read this pixel
        first_sums[:, pending:].addr_(drawn, first_rows[rank, pending:])
    samples = torch.empty_like(x)
    samples[:, order] = x
    return samples


def _finalize_units(layers: list[Layer], units: list[torch.Tensor], first_sums: torch.Tensor, done: list[int],
                    targets: list[int]) -> None:
    """Compute each layer's units from done[l] up to targets[l] (those whose degree the rank has reached)."""
    for depth, (layer, target) in enumerate(zip(layers, targets)):
        start = done[depth]
        if target == start:
            continue
        if depth == 0:
            units[0][:, start:target] = first_sums[:, start:target].relu()
        else:
            reads = layer.support[target - 1]  # supports are nondecreasing: the last new unit reads the most
            units[depth][:, start:target] = torch.addmm(layer.bias[start:target], units[depth - 1][:, :reads],
                                                        layer.weight[start:target, :reads].T).relu_()
        done[depth] = target
