"""Set an AutoencoderKL's weights by hand: latents = the image average-pooled 4x (RGB in channels 0-2).

The world's images are flat colours, for which a pooled image is a fine latent, so the encoder needs no
training. The construction uses the real architecture (`VAE_CONFIG`: three blocks of 32 channels, one resnet
each, mid attention, GroupNorm with 16 groups; channels past the six colour pairs stay zero). Its decoder is a
4x nearest-neighbour upsample, which training (`train.train_decoder`) replaces by a learned one:

- every resnet's `conv2` and every attention's `to_out` are zero, so those blocks pass their input through
  their skip connections (their other weights keep the random init, so they can still be fine-tuned);
- encoder: `conv_in` writes each colour as a (+x, -x) channel pair at scale `SCALE`; the stride-2 down-
  sampling convs average 2x2 blocks; the decoder's upsampling convs are identities, so decoding is a 4x
  nearest-neighbour upsample (crisp 4x4 blocks, which cap the analyser's shape score at about 74 %);
- the un-skipped GroupNorms (`conv_norm_out`) see groups made of (+x, -x) pairs: their mean is exactly 0 and
  their variance (<= SCALE**2) is far below eps = 1e-6, so they are a fixed gain; silu(x) - silu(-x) = x then
  undoes the activation exactly in the following conv;
- the posterior's log-variance is LOGVAR everywhere (std ~5e-5), so sampling and the mean agree.
"""
from __future__ import annotations

import math

import torch

SCALE = 1e-4  # features travel at this size between conv_in and conv_norm_out
LOGVAR = -20.0
_EPS = 1e-6  # GroupNorm eps of the encoder and decoder


def _centre(conv, out_channel: int, in_channel: int, value: float) -> None:
    k = conv.weight.shape[-1] // 2
    conv.weight[out_channel, in_channel, k, k] = value


def _identity(conv) -> None:
    conv.weight.zero_()
    conv.bias.zero_()
    for c in range(min(conv.weight.shape[:2])):
        _centre(conv, c, c, 1.0)


@torch.no_grad()
def construct_vae(vae) -> None:
    """Overwrite `vae` (built from train.VAE_CONFIG) with the pooled-image autoencoder described above."""
    config = vae.config
    channels = set(config.block_out_channels)
    if len(channels) != 1 or 2 * config.norm_num_groups != min(channels) or config.latent_channels < 3:
        raise ValueError("vae: expected equal block_out_channels, twice norm_num_groups, >= 3 latent channels; "
                         f"got {list(config.block_out_channels)}, {config.norm_num_groups}, {config.latent_channels}")
    for name, module in vae.named_modules():
        if name.endswith("conv2") or name.endswith("to_out.0"):
            module.weight.zero_()
            module.bias.zero_()
    gain = math.sqrt(_EPS) / SCALE  # GroupNorm maps SCALE * x to about x / gain; the affine weight undoes it
    enc, dec = vae.encoder, vae.decoder
    for conv, inputs in ((enc.conv_in, 3), (dec.conv_in, config.latent_channels)):
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(3):
            _centre(conv, 2 * c, c, SCALE)
            _centre(conv, 2 * c + 1, c, -SCALE)
    for block in enc.down_blocks:
        for down in block.downsamplers or []:
            down.conv.weight.zero_()
            down.conv.bias.zero_()
            for c in range(down.conv.weight.shape[0]):
                down.conv.weight[c, c, :2, :2] = 0.25
    for block in dec.up_blocks:
        for up in block.upsamplers or []:
            _identity(up.conv)
    for norm in (enc.conv_norm_out, dec.conv_norm_out):
        norm.weight.fill_(gain)
        norm.bias.zero_()
    latent = config.latent_channels
    for conv in (enc.conv_out, dec.conv_out):
        conv.weight.zero_()
        conv.bias.zero_()
        for c in range(3):  # silu(+x) - silu(-x) = x
            _centre(conv, c, 2 * c, 1.0)
            _centre(conv, c, 2 * c + 1, -1.0)
    enc.conv_out.bias[latent:] = LOGVAR
    _identity(vae.quant_conv)
    _identity(vae.post_quant_conv)
