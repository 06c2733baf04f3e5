"""Vision-transformer weights that are set, not learned, so that an embedding says what an image looks like.

A randomly initialised ViT embeds every image to nearly the same direction, and whether two images
come out closer than two others is chance. The built-in offline backbones (``tiny-clip``,
``tiny-dino``) are therefore constructed like the tiny VAE: each weight is chosen so that the
network computes fixed, explainable image statistics and pools them into its CLS token.

- **Patch embedding** (a linear filter bank per patch): the patch's mean colour, its horizontal and
  vertical luminance edge (right half minus left half, bottom minus top), and a fine checkerboard
  texture filter at a quarter of the patch size.
- **Layer 1's MLP** turns those into the pooled features: each colour is routed to the channel of the
  image region (a ``grid`` x ``grid`` layout) its patch lies in, and the edge and texture responses
  become energies (their magnitude). Both use one identity of the activation:
  ``act(x) - act(-x) = x`` exactly for GELU and QuickGELU, while ``act(x - B) ~ 0`` for a large B
  switches a path off; a patch learns its region from position-embedding channels set to B outside it.
- **Layer 2's attention** pools: with zero queries and keys every token attends to every token
  equally, so the CLS token receives the mean of the patch features.
- **LayerNorms** would normalise each token's features away. As in the tiny VAE, every signal
  channel travels with its negation, and a pair of large constants ``[K, -K]`` sets each token's
  spread: the mean is exactly zero and the spread almost constant, so each norm is a fixed scale.
  The last norm keeps only the pooled features (the constants and raw filters get weight 0).

The embedding is then: colour layout (mean colour per region, after the backbone's own
normalisation, so it is centred on an average photo) + edge and texture energy (centred on typical
values). Its cosine similarity follows colour, layout and texture: what a person sees at a glance.
It knows nothing of objects, identity or words; the text tower stays random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

CONSTANT = 100.0  # the [K, -K] pair: dominates every token's spread
GATE = 100.0  # position channel value outside a region
GATE_GAIN = 60.0  # how far below zero a switched-off path starts (in pre-activation units)
# Per filter (edge x, edge y, checker): the gain before |.| (so act(x) + act(-x) ~ |x| for typical
# responses) and the centre subtracted from the pooled energy (about the mean over the sample subject
# and a few real photos, so a typical image sits near zero and the energy does not add a shared offset).
ENERGY_GAINS = (10.0, 10.0, 40.0)
ENERGY_CENTRES = (0.75, 0.75, 0.4)
ENERGY_WEIGHT = 1.0  # energies against colours (each colour weighted by the region count: a region's mean)


@dataclass(frozen=True)
class Layout:
    """Channel indices of the residual stream. Every signal channel ``i`` has its negation at ``i + 1``."""

    hidden: int
    grid: int
    colours: int = 3
    filters: int = 3  # edge x, edge y, checker texture (on luminance)

    @property
    def regions(self) -> int:
        return self.grid * self.grid

    @property
    def raw(self) -> list[int]:  # colours then filters, from the patch embedding
        return [2 * i for i in range(self.colours + self.filters)]

    @property
    def constant(self) -> int:
        return 2 * (self.colours + self.filters)

    @property
    def gates(self) -> list[int]:
        start = self.constant + 2
        return [start + 2 * r for r in range(self.regions)]

    @property
    def outputs(self) -> list[int]:  # colour x region, then filter energies
        start = self.gates[-1] + 2 if self.regions else self.constant + 2
        return [start + 2 * i for i in range(self.output_count)]

    @property
    def output_count(self) -> int:
        return self.colours * self.regions + self.filters

    @property
    def needed(self) -> int:
        return self.outputs[-1] + 2


def patch_filters(patch: int, colours: int = 3) -> torch.Tensor:
    """(colours + 3, 3, patch, patch): mean colour per channel, luminance edge x, edge y, checker texture."""
    area = float(patch * patch)
    half = patch // 2
    cell = max(1, patch // 4)
    weights = torch.zeros(colours + 3, 3, patch, patch)
    for c in range(colours):
        weights[c, c] = 1.0 / area
    sign_x = torch.ones(patch, patch)
    sign_x[:, :half] = -1.0
    sign_y = torch.ones(patch, patch)
    sign_y[:half, :] = -1.0
    index = torch.arange(patch) // cell
    checker = ((index[:, None] + index[None, :]) % 2) * 2.0 - 1.0
    for row, sign in enumerate((sign_x, sign_y, checker), start=colours):
        weights[row, :] = sign / (area * 3.0)  # luminance: the mean of the three channels
    return weights


def _region_of(patch_index: int, patches_per_side: int, grid: int) -> int:
    row, col = divmod(patch_index, patches_per_side)
    return (row * grid // patches_per_side) * grid + (col * grid // patches_per_side)


def _token_scale(layout: Layout) -> float:
    """What a LayerNorm multiplies a patch token by: sqrt(hidden) / ||token|| (features neglected)."""
    squares = 2 * CONSTANT**2 + 2 * GATE**2 * max(0, layout.regions - 1)
    return math.sqrt(layout.hidden / squares)


def _unit_norm(norm: torch.nn.LayerNorm) -> None:
    norm.weight.fill_(1.0)
    norm.bias.zero_()


def set_embeddings(patch_conv: torch.nn.Conv2d, cls: torch.Tensor, positions: torch.Tensor, layout: Layout) -> None:
    """Patch filters into (x, -x) pairs; CLS and positions carry the constants and region gates."""
    filters = patch_filters(patch_conv.kernel_size[0], layout.colours)
    patch_conv.weight.zero_()
    if patch_conv.bias is not None:
        patch_conv.bias.zero_()
    for row, channel in enumerate(layout.raw):
        patch_conv.weight[channel] = filters[row]
        patch_conv.weight[channel + 1] = -filters[row]
    cls.zero_()
    positions.zero_()  # (tokens, hidden): row 0 is the CLS token
    positions[:, layout.constant] = CONSTANT
    positions[:, layout.constant + 1] = -CONSTANT
    side = int(round(math.sqrt(positions.shape[0] - 1)))
    for token in range(1, positions.shape[0]):
        region = _region_of(token - 1, side, layout.grid)
        for r, channel in enumerate(layout.gates):
            if r != region:
                positions[token, channel] = GATE
                positions[token, channel + 1] = -GATE


def set_feature_mlp(fc1: torch.nn.Linear, fc2: torch.nn.Linear, layout: Layout) -> None:
    """Layer 1's MLP: colour per region (gated pass-through) and filter energies, into the output pairs."""
    scale = _token_scale(layout)
    gate_weight = GATE_GAIN / (GATE * scale)
    for linear in (fc1, fc2):
        linear.weight.zero_()
        linear.bias.zero_()
    unit = 0
    outputs = iter(layout.outputs)
    for colour in range(layout.colours):
        source = layout.raw[colour]
        for gate in layout.gates or [None]:
            target = next(outputs)
            for sign in (1.0, -1.0):  # act(x) - act(-x) = x
                fc1.weight[unit, source] = sign / scale
                if gate is not None:
                    fc1.weight[unit, gate] = -gate_weight
                fc2.weight[target, unit] = sign
                fc2.weight[target + 1, unit] = -sign
                unit += 1
    for filt in range(layout.filters):
        source = layout.raw[layout.colours + filt]
        target = next(outputs)
        for sign in (1.0, -1.0):  # act(x) + act(-x) ~ |x|
            fc1.weight[unit, source] = sign * ENERGY_GAINS[filt] / scale
            fc2.weight[target, unit] = 1.0
            fc2.weight[target + 1, unit] = -1.0
            unit += 1
        # Half the centre: the CLS token keeps its own (zero-feature) copy of this bias and then
        # receives the pooled mean, which holds it once more.
        fc2.bias[target] = -ENERGY_CENTRES[filt] / 2
        fc2.bias[target + 1] = ENERGY_CENTRES[filt] / 2
    if unit > fc1.out_features:
        raise ValueError(f"the MLP needs {unit} hidden units, it has {fc1.out_features}")


def set_pooling_attention(query: torch.nn.Linear, key: torch.nn.Linear, value: torch.nn.Linear,
                          out: torch.nn.Linear, layout: Layout) -> None:
    """Zero queries and keys: uniform attention, so every token (the CLS too) receives the mean of the values."""
    for linear in (query, key, value, out):
        linear.weight.zero_()
        if linear.bias is not None:
            linear.bias.zero_()
    scale = _token_scale(layout)
    for channel in layout.outputs:
        for copy in (channel, channel + 1):
            value.weight[copy, copy] = 1.0 / scale
            out.weight[copy, copy] = 1.0


def set_silent_attention(value: torch.nn.Linear, out: torch.nn.Linear) -> None:
    """An attention block that adds nothing (its output projection is zero)."""
    out.weight.zero_()
    if out.bias is not None:
        out.bias.zero_()
    del value


def set_silent_mlp(fc2: torch.nn.Linear) -> None:
    fc2.weight.zero_()
    fc2.bias.zero_()


def set_output_norm(norm: torch.nn.LayerNorm, layout: Layout) -> None:
    """Keep only the pooled features; colours and energies weighted against each other."""
    norm.weight.zero_()
    norm.bias.zero_()
    colour_count = layout.colours * layout.regions
    for index, channel in enumerate(layout.outputs):
        norm.weight[channel] = float(layout.regions) if index < colour_count else ENERGY_WEIGHT


def output_selector(layout: Layout, width: int) -> torch.Tensor:
    """(len(outputs), width): a projection that reads the pooled feature channels."""
    selector = torch.zeros(layout.output_count, width)
    for row, channel in enumerate(layout.outputs):
        selector[row, channel] = 1.0
    return selector


def _vit_parts(layer) -> tuple:
    """(query, key, value, out, fc1, fc2) of a ViT layer, in transformers 5's names or 4's."""
    if hasattr(layer, "mlp"):
        a = layer.attention
        return a.q_proj, a.k_proj, a.v_proj, a.o_proj, layer.mlp.fc1, layer.mlp.fc2
    a = layer.attention
    return (a.attention.query, a.attention.key, a.attention.value, a.output.dense,
            layer.intermediate.dense, layer.output.dense)


@torch.no_grad()
def construct_vit(model, grid: int) -> Layout:
    """Set a transformers ``ViTModel`` (two or more layers, no pooler) as described above."""
    config = model.config
    layout = Layout(config.hidden_size, grid)
    if layout.needed > config.hidden_size:
        raise ValueError(f"grid {grid} needs hidden size {layout.needed}, the model has {config.hidden_size}")
    embeddings = model.embeddings
    set_embeddings(embeddings.patch_embeddings.projection, embeddings.cls_token.data[0],
                   embeddings.position_embeddings.data[0], layout)
    layers = list(model.layers if hasattr(model, "layers") else model.encoder.layer)
    for layer in layers:
        _unit_norm(layer.layernorm_before)
        _unit_norm(layer.layernorm_after)
    parts = [_vit_parts(layer) for layer in layers]
    set_silent_attention(parts[0][2], parts[0][3])
    set_feature_mlp(parts[0][4], parts[0][5], layout)
    set_pooling_attention(*parts[1][:4], layout)
    set_silent_mlp(parts[1][5])
    for part in parts[2:]:
        set_silent_attention(part[2], part[3])
        set_silent_mlp(part[5])
    set_output_norm(model.layernorm, layout)
    return layout


@torch.no_grad()
def construct_clip_vision(model, grid: int) -> Layout:
    """Set a ``CLIPModel``'s vision tower and visual projection; the text tower is left as it is."""
    vision = model.vision_model
    layout = Layout(vision.config.hidden_size, grid)
    if layout.needed > vision.config.hidden_size:
        raise ValueError(f"grid {grid} needs hidden size {layout.needed}, the model has {vision.config.hidden_size}")
    embeddings = vision.embeddings
    set_embeddings(embeddings.patch_embedding, embeddings.class_embedding.data, embeddings.position_embedding.weight.data,
                   layout)
    _unit_norm(vision.pre_layrnorm)
    vision.pre_layrnorm.weight.fill_(1.0 / _token_scale(layout))  # keep the stream at its raw magnitude
    layers = list(vision.encoder.layers)
    for layer in layers:
        _unit_norm(layer.layer_norm1)
        _unit_norm(layer.layer_norm2)
    first, second = layers[0], layers[1]
    set_silent_attention(first.self_attn.v_proj, first.self_attn.out_proj)
    set_feature_mlp(first.mlp.fc1, first.mlp.fc2, layout)
    attn = second.self_attn
    set_pooling_attention(attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, layout)
    set_silent_mlp(second.mlp.fc2)
    for layer in layers[2:]:
        set_silent_attention(layer.self_attn.v_proj, layer.self_attn.out_proj)
        set_silent_mlp(layer.mlp.fc2)
    set_output_norm(vision.post_layernorm, layout)
    projection = model.visual_projection.weight
    if projection.shape[0] < layout.output_count:
        raise ValueError(f"projection_dim must be at least {layout.output_count}")
    projection.zero_()
    projection[: layout.output_count] = output_selector(layout, projection.shape[1])
    return layout
