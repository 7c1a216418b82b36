"""VQModel parity with diffusers on tiny seeded-random models (float32, CPU)."""
from __future__ import annotations

import pytest
import torch

from impasto.models.vq_model import VQModel
from vae_utils import VQ_CONFIGS, make_diffusers, max_diff, save

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(VQ_CONFIGS))
def pair(request, tmp_path_factory):
    ref = make_diffusers("VQModel", VQ_CONFIGS[request.param], seed=2)
    folder = save(ref, tmp_path_factory.mktemp(request.param))
    return request.param, ref, VQModel.from_pretrained(folder)


@torch.no_grad()
def test_encode_decode_match_diffusers(pair):
    name, ref, ours = pair
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    ha, hb = ref.encode(x).latents, ours.encode(x).latents
    assert max_diff(ha, hb) <= TOL
    a, b = ref.decode(ha), ours.decode(hb)
    assert max_diff(a.sample, b.sample) <= TOL
    assert abs(a.commit_loss.item() - b.commit_loss.item()) <= TOL
    quantized = ours.quantize(hb)[0]
    codebook = ours.quantize.embedding.weight
    rows = quantized.permute(0, 2, 3, 1).reshape(-1, 1, codebook.shape[1])
    assert (rows - codebook[None]).abs().amax(-1).min(1).values.max() < 1e-6  # every vector is a codebook entry
    a, b = ref.decode(ha, force_not_quantize=True), ours.decode(hb, force_not_quantize=True)
    assert max_diff(a.sample, b.sample) <= TOL and b.commit_loss.abs().max() == 0
    assert max_diff(ours.decode(hb, force_not_quantize=True).sample, ours.decode(hb).sample) > 1e-4
    assert max_diff(ref(x).sample, ours(x).sample) <= TOL
    sample, loss = ours(x, return_dict=False)
    assert max_diff(sample, ref(x, return_dict=False)[0]) <= TOL


@torch.no_grad()
def test_lookup_from_codebook(tmp_path):
    cfg = {**VQ_CONFIGS["vq_small"], "lookup_from_codebook": True}
    ref = make_diffusers("VQModel", cfg)
    ours = VQModel.from_pretrained(save(ref, tmp_path))
    indices = torch.randint(0, cfg["num_vq_embeddings"], (2 * 8 * 8,))
    shape = (2, 8, 8, cfg["latent_channels"])
    a = ref.decode(indices, force_not_quantize=True, shape=shape).sample
    b = ours.decode(indices, force_not_quantize=True, shape=shape).sample
    assert max_diff(a, b) <= TOL


def test_unsupported_and_saved_config(tmp_path):
    with pytest.raises(ValueError, match="norm_type"):
        VQModel(**{**VQ_CONFIGS["vq_small"], "norm_type": "spatial"})
    ours = VQModel(**VQ_CONFIGS["vq_embed_dim"])
    assert ours.quant_conv.weight.shape[0] == 3 and ours.config.num_vq_embeddings == 32
    import diffusers

    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    ours.save_pretrained(tmp_path)
    back, info = diffusers.VQModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert max_diff(back(x).sample, ours(x).sample) <= TOL
