"""`impasto generate` with SDXL folders: --refiner/--high-noise-frac hand-off and --mask inpainting."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_utils import gen, shared_pair
from sdxl_utils import mask_tensor, refiner_pair, to_pil

torch.set_num_threads(1)


def _main(argv):
    from impasto.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    import tiny

    root = tmp_path_factory.mktemp("sdxl-cli")
    base = shared_pair("sdxl").folder
    refiner = tiny.save_folder(refiner_pair().ref, root / "refiner")
    return base, refiner


def test_refiner_handoff_equals_python_api(folders, tmp_path, capsys):
    import impasto

    base, refiner = folders
    out = tmp_path / "x.png"
    rc = _main(["generate", "a cat", "-o", out, "--model", base, "--refiner", refiner, "--high-noise-frac", 0.6,
                "--steps", 4, "--seed", 3, "--negative", "blur", "--scheduler", "EulerDiscreteScheduler"])
    assert rc == 0 and capsys.readouterr().out.split() == [str(out)]
    b = impasto.StableDiffusionXLPipeline.from_pretrained(base)
    r = impasto.StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner)
    for p in (b, r):
        p.set_progress_bar_config(disable=True)
        p.scheduler = impasto.EulerDiscreteScheduler.from_config(p.scheduler.config)
    lat = b("a cat", negative_prompt="blur", num_inference_steps=4, guidance_scale=7.5, denoising_end=0.6,
            output_type="latent", generator=[gen(3)]).images
    want = r(["a cat"], negative_prompt=["blur"], image=lat, num_inference_steps=4, guidance_scale=7.5,
             denoising_start=0.6, generator=[gen(3)]).images[0]
    got = PIL.Image.open(out)
    assert np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16)).max() <= 1


def test_mask_inpaints_and_errors(folders, tmp_path, capsys):
    base, _ = folders
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    image = to_pil(torch.rand(1, 3, 32, 32, generator=gen(1)))
    image.save(init)
    to_pil(mask_tensor()).save(mask)
    out = tmp_path / "o.png"
    rc = _main(["generate", "a cat", "-o", out, "--model", base, "--init-image", init, "--mask", mask,
                "--steps", 3, "--seed", 0, "--strength", 0.9])
    assert rc == 0
    import impasto

    pipe = impasto.StableDiffusionXLInpaintPipeline.from_pretrained(base)
    pipe.set_progress_bar_config(disable=True)
    want = pipe("a cat", image=PIL.Image.open(init).convert("RGB"), mask_image=PIL.Image.open(mask).convert("L"),
                num_inference_steps=3, strength=0.9, guidance_scale=7.5, generator=[gen(0)]).images[0]
    result = np.asarray(PIL.Image.open(out), np.int16)
    assert result.shape == (32, 32, 3) and np.abs(result - np.asarray(want, np.int16)).max() <= 1
    capsys.readouterr()
    for args, word in ((["--mask", mask], "--mask"), (["--high-noise-frac", 0.5], "--high-noise-frac")):
        rc = _main(["generate", "x", "-o", tmp_path / "e.png", "--model", base, "--steps", 2, *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and word in err[0]
