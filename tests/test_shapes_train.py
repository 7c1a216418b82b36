"""The training code with impasto's own classes: a few steps, checkpoint, resume, export, reload."""
import json
import os

import torch

from impasto.shapes import train, world
from impasto.shapes.vae_init import construct_vae


def test_constructed_vae_pools_and_upsamples():
    vae = train.impasto_factory("vae", train.VAE_CONFIG)
    construct_vae(vae)
    _, images = world.ShapesWorld(4).batch(4)
    x = train.to_tensor(images)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        decoded = vae.decode(dist.mean).sample
    pooled = torch.nn.functional.avg_pool2d(x, 4)
    assert (dist.mean[:, :3] - pooled).abs().max() < 0.01 and dist.mean[:, 3].abs().max() < 1e-6
    assert dist.std.max() < 1e-4
    nearest = torch.nn.functional.interpolate(pooled, scale_factor=4, mode="nearest")
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # the convs' zero padding greys the rim
    assert (decoded - nearest)[inner].abs().max() < 0.02


def test_train_resume_and_export(tmp_path):
    import impasto

    torch.set_num_threads(1)
    out = str(tmp_path / "run")
    kw = dict(seed=3, batch_size=4, pool_size=8, checkpoint_every=1, decoder_steps=2, decoder_batch_size=2)
    model = train.train(out, steps=2, **kw)
    first = torch.load(os.path.join(out, "checkpoints", "unet.pt"), weights_only=False)
    assert first["step"] == 2
    model = train.train(out, steps=3, **kw)  # resumes at step 2
    assert torch.load(os.path.join(out, "checkpoints", "unet.pt"), weights_only=False)["step"] == 3
    with open(os.path.join(model, "model_index.json")) as f:
        assert json.load(f)["_class_name"] == "StableDiffusionPipeline"
    with open(os.path.join(model, "vae", "config.json")) as f:
        assert 1.0 < json.load(f)["scaling_factor"] < 3.0
    torch.manual_seed(123)  # another global random state: the export must not depend on it
    exported = train.export_checkpoint(out, str(tmp_path / "exported"))
    for part in ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        with open(os.path.join(model, part), "rb") as a, open(os.path.join(exported, part), "rb") as b:
            assert a.read() == b.read(), part
    pipe = impasto.StableDiffusionPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_mislabel_names_wrong_attributes_at_its_rate():
    import random

    import pytest

    scenes = world.ShapesWorld(1).scenes(2000)
    rng = random.Random(0)
    truth = [(s.shape, s.colour, s.size, s.position, s.background) for s in scenes]
    assert [train.mislabel(s, rng, 0.0) for s in scenes] == truth
    noisy = [train.mislabel(s, rng, 0.25) for s in scenes]
    for k in range(5):  # shape, colour, size, position, background: the subject's are wrong at the rate
        wrong = sum(n[k] != t[k] for n, t in zip(noisy, truth)) / len(scenes)
        assert (0.2 < wrong < 0.3) if k in (0, 1, 3) else wrong == 0, (k, wrong)
    assert all(n[1] != n[4] for n in noisy)  # the named colour and background still differ
    some = [train.mislabel(s, rng, 0.25, ("colour", "position")) for s in scenes]
    for k in range(5):  # only the named attributes are ever wrong
        wrong = sum(n[k] != t[k] for n, t in zip(some, truth)) / len(scenes)
        assert (0.2 < wrong < 0.3) if k in (1, 3) else wrong == 0, (k, wrong)
    with pytest.raises(ValueError, match="caption_noise"):
        train.train("unused", caption_noise=1.0)
    with pytest.raises(ValueError, match="caption_dropout"):
        train.train("unused", caption_dropout=0.0)
    with pytest.raises(ValueError, match="noisy_attributes"):
        train.train("unused", noisy_attributes=("size",))


def test_timestep_draws():
    import pytest

    uniform = train.draw_timesteps("uniform", 1000, 4096, torch.Generator().manual_seed(0))
    assert torch.equal(uniform, torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(0)))
    mid = train.draw_timesteps("logit-normal", 1000, 4096, torch.Generator().manual_seed(0))
    assert mid.dtype == torch.long and 0 <= int(mid.min()) and int(mid.max()) <= 999
    in_middle = lambda t: float(((t >= 250) & (t < 750)).float().mean())  # noqa: E731
    assert in_middle(uniform) < 0.53 and in_middle(mid) > 0.7  # logit-normal: 74 % of draws in the middle half
    with pytest.raises(ValueError, match="timesteps"):
        train.train("unused", timesteps="cosine")


def test_bad_rates_are_refused_before_any_work(tmp_path):
    import pytest

    for kw, name in ((dict(lr=0.0), "lr"), (dict(decoder_lr=-1e-3), "decoder_lr"), (dict(ema_decay=1.0), "ema_decay")):
        with pytest.raises(ValueError, match=name):
            train.train(str(tmp_path / "never"), **kw)
    assert not (tmp_path / "never").exists()


def test_cli_passes_every_training_option(monkeypatch, tmp_path, capsys):
    from impasto.cli import main

    calls = []
    monkeypatch.setattr(train, "train", lambda out, **kw: calls.append((out, kw)) or "model-dir")
    args = ["train-shapes", "--out", str(tmp_path), "--steps", "7", "--seed", "2", "--batch-size", "16",
            "--pool-size", "64", "--checkpoint-every", "5", "--lr", "0.002", "--ema-decay", "0.99",
            "--unet-channels", "32,32,64", "--stage", "vae", "--decoder-steps", "9", "--decoder-batch-size", "8",
            "--decoder-lr", "0.003", "--caption-noise", "0.25", "--caption-noise-on", "colour,position",
            "--caption-dropout", "0.3", "--timesteps", "logit-normal"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == "model-dir"
    assert calls == [(str(tmp_path), dict(
        steps=7, seed=2, device="cpu", batch_size=16, pool_size=64, lr=0.002, checkpoint_every=5, stage="vae",
        decoder_steps=9, decoder_batch_size=8, decoder_lr=0.003, unet_channels=[32, 32, 64], ema_decay=0.99,
        init_from=None, caption_noise=0.25, noisy_attributes=("colour", "position"), caption_dropout=0.3,
        timesteps="logit-normal"))]
