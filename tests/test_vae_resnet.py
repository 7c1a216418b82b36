"""ResnetBlock2D / Downsample2D / Upsample2D / UNetMidBlock2D against diffusers' modules (same keys, same outputs)."""
from __future__ import annotations

import pytest
import torch

from impasto.models import resnet as ours
from impasto.models.vae_blocks import UNetMidBlock2D
from vae_utils import max_diff

pytestmark = pytest.mark.usefixtures("one_thread")

RESNETS = [
    dict(in_channels=8, out_channels=16, temb_channels=12, groups=4),
    dict(in_channels=8, temb_channels=12, groups=4, time_embedding_norm="scale_shift", output_scale_factor=2.0),
    dict(in_channels=8, temb_channels=None, groups=2, down=True, eps=1e-5),
    dict(in_channels=8, out_channels=8, temb_channels=12, groups=2, up=True, use_in_shortcut=True,
         skip_time_act=True, conv_shortcut_bias=False, non_linearity="mish"),
    dict(in_channels=8, out_channels=4, temb_channels=12, groups=4, groups_out=2, conv_2d_out_channels=6),
]


def _copy(ref, mine):
    assert list(ref.state_dict()) == list(mine.state_dict())
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    mine.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("kw", RESNETS)
@torch.no_grad()
def test_resnet_block(kw):
    from diffusers.models.resnet import ResnetBlock2D

    ref, mine = ResnetBlock2D(**kw), ours.ResnetBlock2D(**kw)
    _copy(ref, mine)
    x = torch.randn(2, 8, 6, 6)
    temb = torch.randn(2, 12) if kw["temb_channels"] else None
    assert max_diff(ref(x, temb), mine(x, temb)) <= 1e-5


@pytest.mark.parametrize("kw", [dict(use_conv=True, padding=0, name="op"), dict(use_conv=True, out_channels=4, name="op"),
                                dict(), dict(use_conv=True), dict(use_conv=True, name="Conv2d_0")])
@torch.no_grad()
def test_downsample(kw):
    from diffusers.models.downsampling import Downsample2D

    ref, mine = Downsample2D(8, **kw), ours.Downsample2D(8, **kw)
    _copy(ref, mine)
    x = torch.randn(1, 8, 9, 10)
    assert max_diff(ref(x), mine(x)) <= 1e-5


@pytest.mark.parametrize("kw", [dict(use_conv=True), dict(), dict(use_conv_transpose=True),
                                dict(use_conv=True, name="Conv2d_0", out_channels=4)])
@torch.no_grad()
def test_upsample(kw):
    from diffusers.models.upsampling import Upsample2D

    ref, mine = Upsample2D(8, **kw), ours.Upsample2D(8, **kw)
    _copy(ref, mine)
    x = torch.randn(1, 8, 5, 6)
    assert max_diff(ref(x), mine(x)) <= 1e-5
    if not kw.get("use_conv_transpose"):
        assert max_diff(ref(x, output_size=(11, 12)), mine(x, output_size=(11, 12))) <= 1e-5
        xb = x.bfloat16()
        up = ours.Upsample2D(8, use_conv=False)(xb)  # nearest in bfloat16 is exact: equal to the float32 result
        assert up.dtype == torch.bfloat16 and torch.equal(up.float(), ours.Upsample2D(8)(xb.float()))


@pytest.mark.parametrize("kw", [dict(temb_channels=12, attention_head_dim=4, resnet_groups=4, num_layers=2),
                                dict(temb_channels=None, attention_head_dim=8, resnet_groups=2, add_attention=False),
                                dict(temb_channels=12, attention_head_dim=2, resnet_groups=4, attn_groups=2,
                                     resnet_time_scale_shift="scale_shift", output_scale_factor=1.5)])
@torch.no_grad()
def test_mid_block(kw):
    from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D as Ref

    ref, mine = Ref(in_channels=8, **kw), UNetMidBlock2D(8, **kw)
    _copy(ref, mine)
    x = torch.randn(2, 8, 4, 4)
    temb = torch.randn(2, 12) if kw["temb_channels"] else None
    assert max_diff(ref(x, temb), mine(x, temb)) <= 1e-5


def test_errors():
    with pytest.raises(ValueError, match="time_embedding_norm"):
        ours.ResnetBlock2D(in_channels=8, groups=4, time_embedding_norm="ada_group")
    with pytest.raises(ValueError, match="act_fn"):
        ours.get_activation("nope")
    with pytest.raises(ValueError, match="out_channels"):
        ours.Downsample2D(8, out_channels=4)
    with pytest.raises(ValueError, match="spatial"):
        UNetMidBlock2D(8, 4, resnet_time_scale_shift="spatial", resnet_groups=4)
