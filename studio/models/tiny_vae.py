"""A tiny AutoencoderKL whose weights are set, not learned, so that it really autoencodes.

A randomly initialised VAE decodes every latent to mush, so nothing a trained tiny UNet produced
could be seen or scored. Fitting one takes minutes on a CPU. Instead the weights are chosen:

- every ResNet block is an identity (its second convolution is zero, so only the skip path remains;
  channel changes go through the 1x1 shortcut, set to copy), every attention block too (zero output
  projection, residual kept);
- the encoder's downsamplers average 2x2 pixels, so a latent is the image averaged over 8x8 blocks
  (RGB in three latent channels, the fourth zero, a near-zero posterior variance); the decoder's
  upsamplers repeat and smooth;
- the GroupNorm + SiLU before each output convolution would normalise an image's colours away, so
  each colour travels with its negation and two large constants in its group ``[c, -c, K, -K]``:
  the group mean is then exactly zero and its spread is set by K, which makes the normalisation a fixed
  scale that the norm's affine weight undoes; a +20 shift keeps SiLU in its linear range.

The result: ``decode(encode(x))`` is ``x`` smoothed at 8x8-pixel scale, exactly the SD1.x shapes.
"""

from __future__ import annotations

import math

import torch

CHANNELS = 32  # every block; GroupNorm(8) then holds the 4-channel groups [c, -c, K, -K]
GROUPS = 8
CONSTANT = 100.0
SILU_SHIFT = 20.0
LATENT_CHANNELS = 4
SMOOTH = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def _signal_layout(colours: int) -> list[tuple[int, int, int, int]]:
    """Channel indices (c, -c, K, -K) for each colour: one GroupNorm group each."""
    return [(4 * i, 4 * i + 1, 4 * i + 2, 4 * i + 3) for i in range(colours)]


def _identity_blocks(module: torch.nn.Module) -> None:
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    for sub in module.modules():
        if isinstance(sub, ResnetBlock2D):
            sub.conv2.weight.zero_()
            sub.conv2.bias.zero_()
            if sub.conv_shortcut is not None:
                shortcut = sub.conv_shortcut
                shortcut.weight.zero_()
                shortcut.bias.zero_()
                for channel in range(min(shortcut.in_channels, shortcut.out_channels)):
                    shortcut.weight[channel, channel, 0, 0] = 1.0
        elif isinstance(sub, Attention):
            sub.to_out[0].weight.zero_()
            sub.to_out[0].bias.zero_()


def _spread_in(conv: torch.nn.Conv2d, colours: int) -> None:
    """conv_in: colour c -> channels (c, -c) at the centre tap; the constants from the bias."""
    conv.weight.zero_()
    conv.bias.zero_()
    centre = conv.kernel_size[0] // 2
    for colour, (pos, neg, k_pos, k_neg) in enumerate(_signal_layout(colours)):
        conv.weight[pos, colour, centre, centre] = 1.0
        conv.weight[neg, colour, centre, centre] = -1.0
        conv.bias[k_pos] = CONSTANT
        conv.bias[k_neg] = -CONSTANT


def _linear_norm(norm: torch.nn.GroupNorm, colours: int) -> None:
    """Make GroupNorm + SiLU pass each colour through linearly (shifted by SILU_SHIFT)."""
    scale = CONSTANT / math.sqrt(2.0)  # std of [c, -c, K, -K] is ~K/sqrt(2) when |c| << K
    norm.weight.fill_(0.0)
    norm.bias.fill_(0.0)
    for pos, _, _, _ in _signal_layout(colours):
        norm.weight[pos] = scale
        norm.bias[pos] = SILU_SHIFT


def _gather_out(conv: torch.nn.Conv2d, colours: int) -> None:
    """conv_out: output c = (shifted c) - SILU_SHIFT; other outputs zero."""
    conv.weight.zero_()
    conv.bias.zero_()
    centre = conv.kernel_size[0] // 2
    for colour, (pos, _, _, _) in enumerate(_signal_layout(colours)):
        conv.weight[colour, pos, centre, centre] = 1.0
        conv.bias[colour] = -SILU_SHIFT


def _average_downsamplers(encoder) -> None:
    for block in encoder.down_blocks:
        for down in block.downsamplers or []:
            conv = down.conv
            conv.weight.zero_()
            conv.bias.zero_()
            for channel in range(conv.out_channels):
                conv.weight[channel, channel, 0:2, 0:2] = 0.25


def _smoothing_upsamplers(decoder, colours: int) -> None:
    constants = {k for _, _, kp, kn in _signal_layout(colours) for k in (kp, kn)}
    for block in decoder.up_blocks:
        for up in block.upsamplers or []:
            conv = up.conv
            conv.weight.zero_()
            conv.bias.zero_()
            for channel in range(conv.out_channels):
                if channel in constants:
                    conv.weight[channel, channel, 1, 1] = 1.0
                else:
                    conv.weight[channel, channel] = SMOOTH


def tiny_autoencoder(*, resolution: int, scaling_factor: float):
    """The tiny VAE (SD's 8x downsampling, 4 latent channels) with the weights described above."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(CHANNELS,) * 4,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=GROUPS,
        sample_size=resolution,
        scaling_factor=scaling_factor,
    )
    with torch.no_grad():
        _identity_blocks(vae)
        _spread_in(vae.encoder.conv_in, colours=3)
        _average_downsamplers(vae.encoder)
        _linear_norm(vae.encoder.conv_norm_out, colours=3)
        out = vae.encoder.conv_out  # 2 * latent channels: means, then log-variances
        _gather_out(out, colours=3)
        out.bias[LATENT_CHANNELS:] = -20.0  # posterior std e^-10: sampling adds ~no noise
        for conv in (vae.quant_conv, vae.post_quant_conv):
            conv.weight.zero_()
            conv.bias.zero_()
            for channel in range(conv.out_channels):
                conv.weight[channel, channel, 0, 0] = 1.0
        _spread_in(vae.decoder.conv_in, colours=3)
        _smoothing_upsamplers(vae.decoder, colours=3)
        _linear_norm(vae.decoder.conv_norm_out, colours=3)
        _gather_out(vae.decoder.conv_out, colours=3)
    vae.eval()
    vae.requires_grad_(False)
    return vae
