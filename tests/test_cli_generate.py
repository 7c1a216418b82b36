"""`impasto generate` and `impasto info` on a tiny model folder, run in-process through impasto.cli.main."""
from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from pipeline_utils import shared_pair

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folder():
    return shared_pair("sd1").folder


def _main(argv):
    from impasto.cli import main

    return main([str(a) for a in argv])


def test_generate_writes_pngs_with_parameters(folder, tmp_path, capsys):
    import impasto

    out = tmp_path / "img.png"
    rc = _main(["generate", "a red square", "-o", out, "--model", folder, "--steps", 3, "--seed", 7,
                "--num-images", 2, "--negative", "blurry", "--scheduler", "Euler a", "--guidance", 5])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "img-1.png"), str(tmp_path / "img-2.png")]
    second = PIL.Image.open(tmp_path / "img-2.png")
    text = second.text["parameters"]
    assert text.splitlines()[0] == "a red square" and text.splitlines()[1] == "Negative prompt: blurry"
    assert "Steps: 3, Sampler: Euler a, CFG scale: 5.0, Seed: 8, Size: 32x32" in text
    # image 2 is reproducible alone from its own seed through the Python API
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = impasto.scheduler_from_name("Euler a", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    again = pipe("a red square", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0,
                 generator=[torch.Generator().manual_seed(8)]).images[0]
    assert np.abs(np.asarray(again, np.int16) - np.asarray(second, np.int16)).max() <= 1


def test_generate_img2img(folder, tmp_path, capsys):
    init = tmp_path / "init.png"
    PIL.Image.fromarray((np.random.RandomState(0).rand(40, 32, 3) * 255).astype(np.uint8)).save(init)
    rc = _main(["generate", "a cat", "-o", tmp_path / "out", "--model", folder, "--steps", 4,
                "--init-image", init, "--strength", 0.5, "--seed", 1])
    assert rc == 0
    image = PIL.Image.open(tmp_path / "out.png")
    assert image.size == (32, 40) and "Denoising strength: 0.5" in image.text["parameters"]


def test_generate_a1111_syntax(folder, tmp_path):
    """--long-prompt a1111 reads emphasis: the image is the Python API's with long_prompt="a1111"."""
    import impasto

    prompt = "a (red:1.5) square BREAK [blue] background"
    assert _main(["generate", prompt, "-o", tmp_path / "a.png", "--model", folder, "--steps", 3, "--seed", 3,
                  "--long-prompt", "a1111"]) == 0
    image = PIL.Image.open(tmp_path / "a.png")
    assert image.text["parameters"].splitlines()[0] == prompt
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    again = pipe(prompt, num_inference_steps=3, long_prompt="a1111", generator=[torch.Generator().manual_seed(3)])
    assert np.abs(np.asarray(again.images[0], np.int16) - np.asarray(image, np.int16)).max() <= 1


def test_generate_with_lora_and_embedding(folder, tmp_path, capsys):
    """--lora FILE:W and --embedding FILE draw what load_lora_weights + set_adapters and load_textual_inversion
    (token = the file's name) draw through the Python API; each changes the image."""
    import impasto
    from safetensors.torch import save_file

    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    lora = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith(("attn1.to_q", "attn2.to_v")):
            out_f, in_f = module.weight.shape
            lora[f"unet.{name}.lora_A.weight"] = torch.randn(4, in_f, generator=g)
            lora[f"unet.{name}.lora_B.weight"] = torch.randn(out_f, 4, generator=g)
    save_file(lora, str(tmp_path / "style.safetensors"))
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, str(tmp_path / "mytoken.safetensors"))
    prompt = "a mytoken square"
    args = ["generate", prompt, "--model", folder, "--steps", 3, "--seed", 5]
    assert _main(args + ["-o", tmp_path / "both.png", "--lora", f"{tmp_path / 'style.safetensors'}:0.7",
                         "--embedding", tmp_path / "mytoken.safetensors"]) == 0
    assert _main(args + ["-o", tmp_path / "plain.png"]) == 0
    both = np.asarray(PIL.Image.open(tmp_path / "both.png"), np.int16)
    assert 'Lora: "style.safetensors:0.7"' in PIL.Image.open(tmp_path / "both.png").text["parameters"]
    pipe.load_lora_weights(tmp_path / "style.safetensors", adapter_name="style")
    pipe.set_adapters(["style"], [0.7])
    pipe.load_textual_inversion(tmp_path / "mytoken.safetensors", token="mytoken")
    again = pipe(prompt, num_inference_steps=3, generator=[torch.Generator().manual_seed(5)]).images[0]
    assert np.abs(np.asarray(again, np.int16) - both).max() <= 1
    assert np.abs(np.asarray(PIL.Image.open(tmp_path / "plain.png"), np.int16) - both).max() > 10
    # A1111's folders: <lora:style:0.7> in the prompt and the embedding named by its file
    folder_args = ["generate", prompt + " <lora:style:0.7>", "--model", folder, "--steps", 3, "--seed", 5,
                   "--lora-dir", tmp_path, "--embeddings-dir", tmp_path, "-o", tmp_path / "dirs.png"]
    assert _main(folder_args) == 0
    dirs = PIL.Image.open(tmp_path / "dirs.png")
    assert np.abs(np.asarray(dirs, np.int16) - both).max() <= 1
    assert dirs.text["parameters"].startswith(prompt + " <lora:style:0.7>")  # A1111 keeps the tag in the record
    capsys.readouterr()
    assert _main(folder_args[:1] + ["a <lora:nothing:1>"] + folder_args[2:]) == 1
    assert "--lora-dir: no LoRA named 'nothing'" in capsys.readouterr().err
    assert _main(args + ["-o", tmp_path / "x.png", "--lora", "/nonexistent.safetensors:0.5"]) == 1
    assert "--lora: no such file" in capsys.readouterr().err
    assert _main(args + ["-o", tmp_path / "x.png", "--lora", f"{tmp_path / 'style.safetensors'}:strong"]) == 1
    assert "--lora: expected FILE or FILE:WEIGHT" in capsys.readouterr().err


def test_generate_hires_fix(folder, tmp_path, capsys):
    """--hires-scale: the image is hires_fix's with the second pass re-seeded from the same seed (A1111's way)."""
    import impasto

    args = ["generate", "a red square", "--model", folder, "--steps", 3, "--seed", 4, "--hires-scale", 1.5]
    assert _main(args + ["-o", tmp_path / "h.png", "--hires-strength", 0.6, "--hires-upscaler", "lanczos"]) == 0
    image = PIL.Image.open(tmp_path / "h.png")
    assert image.size == (48, 48)
    assert "Denoising strength: 0.6, Hires upscale: 1.5, Hires steps: 3, Hires upscaler: lanczos" in \
        image.text["parameters"]
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    again = impasto.hires_fix(pipe, "a red square", scale=1.5, strength=0.6, upscaler="lanczos",
                              num_inference_steps=3, generator=[torch.Generator().manual_seed(4)],
                              hires_generator=[torch.Generator().manual_seed(4)]).images[0]
    assert np.abs(np.asarray(again, np.int16) - np.asarray(image, np.int16)).max() <= 1
    assert _main(args + ["-o", tmp_path / "x.png", "--hires-upscaler", "ESRGAN_4x"]) == 1
    assert "--hires-upscaler: expected one of" in capsys.readouterr().err
    assert _main(["generate", "a cat", "--model", folder, "-o", tmp_path / "x.png", "--hires-steps", 2]) == 1
    assert "--hires-steps: only used with --hires-scale" in capsys.readouterr().err


A1111_TEXT = """masterpiece, (a red square:1.2)
at dusk
Negative prompt: blurry, [text]
Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 42, Size: 32x40, Model hash: 0a1b2c, \
Clip skip: 2, Lora hashes: "x: 1234, y: 5678", Version: v1.10.1"""


def test_parse_a1111_parameters():
    from impasto.commands.infotext import format_parameters, parse_parameters

    prompt, negative, fields = parse_parameters(A1111_TEXT)
    assert prompt == "masterpiece, (a red square:1.2)\nat dusk" and negative == "blurry, [text]"
    assert fields["Size-1"] == "32" and fields["Size-2"] == "40" and fields["Lora hashes"] == "x: 1234, y: 5678"
    assert fields["Sampler"] == "Euler a" and fields["Clip skip"] == "2" and fields["Version"] == "v1.10.1"
    text = format_parameters("a, b", "c", [("Steps", 3), ("Lora", "a.safetensors:0.5, b"), ("Skipped", None),
                                           ("Seed", 1)])
    assert parse_parameters(text) == ("a, b", "c", {"Steps": "3", "Lora": "a.safetensors:0.5, b", "Seed": "1"})
    # as in A1111, a last line of fewer than three fields is prompt text
    assert parse_parameters("a\nSteps: 3, Seed: 1") == ("a\nSteps: 3, Seed: 1", "", {})
    assert parse_parameters("just a prompt") == ("just a prompt", "", {})


def test_params_from_round_trip(folder, tmp_path, capsys):
    """An image made again from its own PNG parameters (prompt, negative, seed, sampler, guidance, size, clip skip,
    Hires. fix) is the same image; an A1111 PNG's settings and prompt syntax are read as A1111 meant them."""
    import impasto

    assert _main(["generate", "a (red:1.3) square", "-o", tmp_path / "a.png", "--model", folder, "--steps", 3,
                  "--seed", 11, "--num-images", 2, "--negative", "blurry, dark", "--scheduler", "Euler a",
                  "--guidance", 5, "--clip-skip", 1, "--width", 24, "--hires-scale", 2, "--hires-strength", 0.7]) == 0
    first = PIL.Image.open(tmp_path / "a-2.png")
    assert "Seed: 12, Size: 24x32" in first.text["parameters"] and "Clip skip: 2" in first.text["parameters"]
    capsys.readouterr()
    assert _main(["generate", "-o", tmp_path / "b.png", "--model", folder, "--params-from", tmp_path / "a-2.png"]) == 0
    again = PIL.Image.open(tmp_path / "b.png")
    assert again.size == first.size == (48, 64)
    assert np.abs(np.asarray(again, np.int16) - np.asarray(first, np.int16)).max() <= 1
    assert "not applied: Model" in capsys.readouterr().err
    assert again.text["parameters"] == first.text["parameters"]
    # an A1111 image: its prompt syntax, sampler, seed, size and clip skip
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_TEXT)
    PIL.Image.new("RGB", (32, 40)).save(tmp_path / "a1111.png", pnginfo=info)
    assert _main(["generate", "-o", tmp_path / "c.png", "--model", folder, "--params-from", tmp_path / "a1111.png"]) == 0
    assert "not applied: Lora hashes, Model hash, Version" in capsys.readouterr().err
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = impasto.scheduler_from_name("Euler a", pipe.scheduler.config)
    want = pipe("masterpiece, (a red square:1.2)\nat dusk", negative_prompt="blurry, [text]", num_inference_steps=3,
                guidance_scale=6.0, width=32, height=40, clip_skip=1, long_prompt="a1111",
                generator=[torch.Generator().manual_seed(42)]).images[0]
    got = PIL.Image.open(tmp_path / "c.png")
    assert np.abs(np.asarray(want, np.int16) - np.asarray(got, np.int16)).max() <= 1
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert _main(["generate", "-o", tmp_path / "d.png", "--model", folder, "--params-from", tmp_path / "plain.png"]) == 1
    assert "holds no A1111 'parameters' text" in capsys.readouterr().err
    assert _main(["generate", "-o", tmp_path / "d.png", "--model", folder]) == 1
    assert "prompt: give the text to draw" in capsys.readouterr().err
    # impasto info IMG.png: A1111's "PNG Info"
    assert _main(["info", tmp_path / "a1111.png"]) == 0
    shown = capsys.readouterr().out
    assert "prompt: masterpiece, (a red square:1.2)\nat dusk" in shown and "  Clip skip: 2" in shown
    assert _main(["info", tmp_path / "a1111.png", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["Lora hashes"] == "x: 1234, y: 5678"
    assert _main(["info", tmp_path / "plain.png"]) == 1
    assert "path: " in capsys.readouterr().err


def test_variation_seed(folder, tmp_path, capsys):
    """A1111's variation seed: strength 0 is the seed's image, 1 the variation seed's, between them a blend that
    keeps the noise's scale (spherical); the PNG records it and --params-from makes it again."""
    from impasto.core.noise import slerp

    a, b = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.randn(4, 8, 8)
    assert torch.equal(slerp(0.0, a, b), a) and torch.allclose(slerp(1.0, a, b), b, atol=1e-5)
    assert abs(float(slerp(0.5, a, b).std()) - 1) < 0.1 and float((0.5 * a + 0.5 * b).std()) < 0.8

    def run(name, *extra):
        assert _main(["generate", "a red square", "-o", tmp_path / name, "--model", folder, "--steps", 3, *extra]) == 0
        return PIL.Image.open(tmp_path / name)

    def diff(x, y):
        return np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()

    plain, other = run("s3.png", "--seed", 3), run("s9.png", "--seed", 9)
    assert diff(run("v0.png", "--seed", 3, "--variation-seed", 9, "--variation-strength", 0), plain) == 0
    assert diff(run("v1.png", "--seed", 3, "--variation-seed", 9, "--variation-strength", 1), other) <= 1
    half = run("v4.png", "--seed", 3, "--variation-seed", 9, "--variation-strength", 0.4)
    assert diff(half, plain) > 5 and diff(half, other) > 5
    assert "Seed: 3, Size: 32x32, Model: " in half.text["parameters"]
    assert "Variation seed: 9, Variation seed strength: 0.4" in half.text["parameters"]
    again = PIL.Image.open(tmp_path / "again.png") if _main(["generate", "-o", tmp_path / "again.png", "--model",
                                                             folder, "--params-from", tmp_path / "v4.png"]) == 0 else None
    assert again is not None and diff(again, half) == 0
    capsys.readouterr()
    assert _main(["generate", "x", "-o", tmp_path / "e.png", "--model", folder, "--variation-seed", 2]) == 1
    assert "--variation-seed: give --variation-strength too" in capsys.readouterr().err


@pytest.mark.parametrize("args,word", [
    (["--width", 30], "--width"),
    (["--steps", 0], "--steps"),
    (["--strength", 0.5], "--strength"),
    (["--init-image", "/nonexistent.png"], "--init-image"),
    (["--scheduler", "Warp 9"], "scheduler"),
    (["--model", "/nonexistent/model"], "nonexistent"),
])
def test_generate_errors_are_one_line(folder, tmp_path, capsys, args, word):
    argv = ["generate", "x", "-o", tmp_path / "o.png", "--model", folder, "--steps", 2, *args]
    rc = _main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("impasto generate: error:") and word in err[0]
    assert not (tmp_path / "o.png").exists()


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as e:
        _main(["generate", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--output", "--model", "--negative", "--steps", "--guidance", "--seed", "--scheduler", "--width",
                 "--height", "--num-images", "--init-image", "--strength", "--dtype", "--device"):
        assert flag in text


def test_info_folder_and_file(folder, capsys):
    assert _main(["info", folder]) == 0
    text = capsys.readouterr().out
    assert "StableDiffusionPipeline" in text and "UNet2DConditionModel" in text and "float32" in text
    assert _main(["info", folder, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["components"]["unet"]["parameters"] == sum(
        p.numel() for p in shared_pair("sd1").ref.unet.parameters())
    assert data["components"]["safety_checker"]["class"] is None
    assert _main(["info", folder / "vae" / "diffusion_pytorch_model.safetensors"]) == 0
    assert "tensors" in capsys.readouterr().out
    assert _main(["info", folder / "model_index.json"]) == 1
    assert "not a weights file" in capsys.readouterr().err
