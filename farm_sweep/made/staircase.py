"""The logits of chosen pixels under chosen orderings, for inference, computing only what they need.

MADE's masks are staircases. Sort every hidden layer's units by degree and an ordering's input pixels by
rank: a first-layer unit of degree m then reads a prefix of the inputs (the m pixels of rank < m), a hidden
unit a prefix of the layer before it (the units of degree <= its own), and output pixel d a prefix of the
last hidden layer (the units of degree <= rank(d)). Hence:
1. a layer is computed in blocks of rows, each block reading only the prefix its rows need (about half of a
   dense matmul's work);
2. the pixels asked for of an ordering, up to rank r, need only the units of degree <= r and the inputs of
   rank < r;
3. only the output rows of those pixels are computed;
4. each ordering's sorted, masked weights are kept while the model's weights are unchanged.
5. orderings that share their hidden-to-hidden weights run those layers together, in one matmul per row
   block over the orderings that reach it (sorted by how far they reach, so these are a block of columns).
This is the network nll_exact and inpaint evaluate (eval mode: no dropout). It sums in another order than
FarmMADE.forward, so the two agree up to float rounding.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from farm_sweep.made.network import FarmMADE

BLOCKS = 8  # row blocks per layer: more skip more of the masked triangle, each one a smaller matmul


@dataclass(frozen=True)
class Layer:
    """A hidden layer, units sorted by degree: `weight` (h, in) masked, with its columns in the previous
    layer's sorted order (the first layer's: the ordering's pixels by rank), `bias` (h,) (ordering code
    included), `support` (h,) how many leading columns each unit reads (nondecreasing)."""

    weight: torch.Tensor
    bias: torch.Tensor
    support: list[int]


@dataclass(frozen=True)
class OrderingStaircase:
    """One ordering under one mask set, sorted: its pixels by rank, hidden `layers`, and the output layer
    (rows by pixel, columns sorted) with each pixel's `output_support`, plus masked `direct` weights."""

    order: torch.Tensor
    layers: list[Layer]
    output: torch.Tensor
    output_bias: torch.Tensor
    output_support: torch.Tensor
    direct: torch.Tensor | None


Built = dict[tuple[int, int], OrderingStaircase]  # (mask set, ordering) -> its sorted network
_CACHE: weakref.WeakKeyDictionary[FarmMADE, tuple[tuple[tuple[int, int], ...], Built]] = weakref.WeakKeyDictionary()


@torch.no_grad()
def logits_at(model: FarmMADE, x: torch.Tensor, orderings: torch.Tensor, pixels: torch.Tensor,
              needed: torch.Tensor | None = None) -> torch.Tensor:
    """forward(x, orderings)[..., pixels] in eval mode: (k', B, n) for x (B, D), the active mask set. With
    `needed` (k', n) bool, ordering i is computed only where needed[i] (0 elsewhere)."""
    logits = x.new_zeros(len(orderings), len(pixels), len(x))  # pixel-major: every layer runs transposed
    asked = []  # (row, sorted network, columns of `pixels`)
    for row, ordering in enumerate(orderings.tolist()):
        columns = torch.arange(len(pixels), device=pixels.device) if needed is None else needed[row].nonzero()[:, 0]
        if len(columns):
            asked.append((row, ordering_staircase(model, ordering), columns))
    shared = all(weight.shape[0] == 1 for weight in model.weights[1:-1])  # hidden-to-hidden weights
    x_t = x.T.contiguous()  # (D, B): a prefix of an ordering's pixels is a block of rows
    for group in [asked] if shared else [[one] for one in asked]:
        if group:
            _group_logits(group, x_t, pixels, logits)
    return logits.transpose(1, 2)


def ordering_staircase(model: FarmMADE, ordering: int) -> OrderingStaircase:
    """The sorted network of `ordering` under the active mask set (kept while the weights are unchanged)."""
    built = _built(model)
    if (model.mask_index, ordering) not in built:
        built[model.mask_index, ordering] = _build(model, ordering)
    return built[model.mask_index, ordering]


def _built(model: FarmMADE) -> Built:
    """The model's sorted networks built so far, emptied whenever a weight changed (or moved)."""
    state = tuple((p.data_ptr(), p._version) for p in model.parameters())
    key, built = _CACHE.get(model, (None, {}))
    if key != state:
        built = {}
        _CACHE[model] = (state, built)
    return built


@torch.no_grad()
def _build(model: FarmMADE, ordering: int) -> OrderingStaircase:
    net = model.ordering_network(ordering)
    degrees = model.degrees()
    sorted_units = [d.argsort(stable=True) for d in degrees]
    order = model.orders[ordering]
    layers, columns, column_degrees = [], order, None
    for layer, (weight, bias) in enumerate(zip(net.weights[:-1], net.biases[:-1])):
        units = sorted_units[layer]
        unit_degrees = degrees[layer][units]
        support = unit_degrees if column_degrees is None else torch.searchsorted(column_degrees, unit_degrees,
                                                                                 right=True)
        layers.append(Layer(weight[units][:, columns].contiguous(), bias[units], support.tolist()))
        columns, column_degrees = units, unit_degrees
    output_support = torch.searchsorted(column_degrees, model.ranks[ordering], right=True)
    return OrderingStaircase(order, layers, net.weights[-1][:, columns].contiguous(), net.biases[-1],
                             output_support, net.direct)


def _group_logits(group: list[tuple[int, OrderingStaircase, torch.Tensor]], x_t: torch.Tensor,
                  pixels: torch.Tensor, logits: torch.Tensor) -> None:
    """Fill logits[row, columns] (n, B) for orderings sharing their hidden-to-hidden weights, computing only
    the units and inputs their pixels reach. Activations are transposed, (units, orderings x B), the
    orderings that reach furthest first."""
    reach = [_counts(net, pixels[columns]) for _, net, columns in group]
    order = sorted(range(len(group)), key=lambda e: reach[e][-1], reverse=True)
    group, reach = [group[e] for e in order], [reach[e] for e in order]
    batch = x_t.shape[1]
    first = [net.layers[0] for _, net, _ in group]
    h = x_t.new_zeros(reach[0][0], len(group) * batch)
    for e, ((_, net, _), layer, counts) in enumerate(zip(group, first, reach)):
        inputs = x_t[net.order[:_reach(layer.support, counts[0])]]
        h[:counts[0], e * batch:(e + 1) * batch] = blocked(layer.weight[:counts[0]], inputs, layer.support, [1],
                                                            batch) + layer.bias[:counts[0], None]
    h.relu_()
    for depth in range(1, len(group[0][1].layers)):
        layers = [net.layers[depth] for _, net, _ in group]
        rows = reach[0][depth]
        deepest = [counts[depth] for counts in reach]  # nonincreasing along the group
        h = blocked(layers[0].weight[:rows], h, layers[0].support, deepest, batch)
        h.view(rows, len(group), batch).add_(torch.stack([layer.bias[:rows] for layer in layers], 1)[:, :, None])
        h.relu_()
    for e, ((row, net, columns), counts) in enumerate(zip(group, reach)):
        asked = pixels[columns]
        result = torch.addmm(net.output_bias[asked, None], net.output[asked, :counts[-1]],
                             h[:counts[-1], e * batch:(e + 1) * batch])
        if net.direct is not None:
            result += net.direct[asked] @ x_t
        logits[row, columns] = result


def _counts(net: OrderingStaircase, pixels: torch.Tensor) -> list[int]:
    """How many (sorted) units of each hidden layer `pixels` reach, first layer first."""
    counts = [int(net.output_support[pixels].max())]
    for layer in reversed(net.layers[1:]):
        counts.insert(0, _reach(layer.support, counts[0]))
    return counts


def _reach(support: list[int], count: int) -> int:
    """How many leading columns the first `count` rows read."""
    return support[count - 1] if count else 0


def blocked(weight: torch.Tensor, h: torch.Tensor, support: list[int], deepest: list[int],
             batch: int) -> torch.Tensor:
    """weight @ h for a weight (rows, in) whose row r is zero beyond column support[r] (nondecreasing), h
    (in, E x batch) the activations of E orderings side by side, ordering e needing the first deepest[e]
    rows (nonincreasing; [1] for one ordering that needs them all): in row blocks, each multiplying only the
    columns its last row reads, for the orderings that reach the block."""
    rows = len(weight)
    out = h.new_zeros(rows, h.shape[1])
    bounds = [round(rows * block / BLOCKS) for block in range(BLOCKS + 1)]
    for start, stop in zip(bounds, bounds[1:]):
        width = _reach(support, stop) if stop > start else 0
        reaching = sum(1 for count in deepest if count > start) if len(deepest) > 1 else 1
        if width and reaching:
            out[start:stop, :reaching * batch] = weight[start:stop, :width] @ h[:width, :reaching * batch]
    return out
