"""Sinusoidal timestep and guidance embeddings against diffusers' functions."""
from __future__ import annotations

import pytest
import torch

from impasto.models.embeddings import guidance_scale_embedding, timestep_embedding


@pytest.mark.parametrize("dim,flip,shift", [(32, True, 0), (32, False, 1), (33, True, 1), (320, False, 0)])
def test_timestep_embedding_matches_diffusers(dim, flip, shift):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 37, 999, 512.5])
    expected = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    got = timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
    assert got.shape == (5, dim)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dim", [16, 256, 17])
def test_guidance_scale_embedding_matches_lcm_pipeline(dim):
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([1.0, 7.5, 8.0]) - 1
    expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    assert torch.equal(guidance_scale_embedding(w, dim), expected)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="timesteps"):
        timestep_embedding(torch.zeros(2, 2), 8)
    with pytest.raises(ValueError, match="w"):
        guidance_scale_embedding(torch.zeros(2, 2), 8)
