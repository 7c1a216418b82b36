"""Folder -> single file -> pipeline gives identical images; files without embedded configs are read by shape."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import single_file_utils as sfu  # noqa: E402
import tiny  # noqa: E402

import impasto  # noqa: E402
from impasto.loading.single_file import keys as K  # noqa: E402
from impasto.loading.single_file import pipeline_from_single_file, read_checkpoint, save_single_file  # noqa: E402

ARGS = dict(prompt="a red circle", num_inference_steps=2, output_type="np", height=32, width=32)


def images(pipe, **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe(**{**ARGS, **kw}, generator=torch.Generator().manual_seed(0)).images


def strip_metadata_ckpt(src: Path, dst: Path) -> Path:
    """The same tensors as a plain .ckpt, as the files people download are: no embedded configs."""
    state, _ = read_checkpoint(src)
    torch.save({"state_dict": state, "global_step": 1}, dst)
    return dst


@pytest.mark.parametrize("variant", ["sd1", "sd2"])
def test_round_trip_with_embedded_configs_is_exact(tmp_path, variant):
    folder = tiny.make_sd_folder(tmp_path, variant)
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    file = save_single_file(pipe, tmp_path / "model.safetensors")
    again = pipeline_from_single_file(impasto.StableDiffusionPipeline, file)
    np.testing.assert_array_equal(images(pipe), images(again))


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_plain_ckpt_is_read_by_shape_and_matches(tmp_path, family):
    folder = sfu.conforming_folder(tmp_path, family)
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    file = save_single_file(pipe, tmp_path / "with_meta.safetensors")
    ckpt = strip_metadata_ckpt(file, tmp_path / "model.ckpt")
    state, configs = read_checkpoint(ckpt)
    assert configs == {}
    if family == "sd2":  # the original layout keeps one unused last text layer
        assert K.count_blocks(state, "cond_stage_model.model.transformer.resblocks.") == 3
    prediction = pipe.scheduler.config.prediction_type
    again = pipeline_from_single_file(impasto.StableDiffusionPipeline, ckpt, prediction_type=prediction)
    assert again.unet.config.attention_head_dim == pipe.unet.config.attention_head_dim
    np.testing.assert_allclose(images(pipe), images(again), atol=1e-5)


def test_prediction_type_defaults_as_diffusers(tmp_path):
    """Plain files say nothing of it: SD 2.x is v-prediction unless its global_step is 875,000 (the 512-base
    model), an original config's `parameterization` decides, and prediction_type= beats both."""
    files = {}
    for family in ("sd1", "sd2"):
        pipe = impasto.StableDiffusionPipeline.from_pretrained(sfu.conforming_folder(tmp_path / family, family))
        state, _ = read_checkpoint(save_single_file(pipe, tmp_path / f"{family}.safetensors"))
        for step in (1, 875000):
            files[family, step] = tmp_path / f"{family}-{step}.ckpt"
            torch.save({"state_dict": state, "global_step": step}, files[family, step])

    def prediction(family, step, **kw):
        pipe = pipeline_from_single_file(impasto.StableDiffusionPipeline, files[family, step], **kw)
        return pipe.scheduler.config.prediction_type

    assert prediction("sd2", 1) == "v_prediction" and prediction("sd2", 875000) == "epsilon"
    assert prediction("sd1", 1) == prediction("sd1", 875000) == "epsilon"
    yaml = tmp_path / "v.yaml"
    yaml.write_text('model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: "v"\n')
    assert prediction("sd1", 1, original_config=str(yaml)) == "v_prediction"
    assert prediction("sd2", 1, original_config={"model": {"params": {"parameterization": "eps"}}}) == "epsilon"
    assert prediction("sd2", 1, prediction_type="epsilon") == "epsilon"
    with pytest.raises(ValueError, match="original_config"):
        prediction("sd1", 1, original_config="https://example.com/v1-inference.yaml")


def test_diffusers_reads_our_single_file(tmp_path):
    """The file we write is the layout diffusers' own from_single_file understands."""
    diffusers = pytest.importorskip("diffusers")
    folder = sfu.conforming_folder(tmp_path, "sd1")
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    file = save_single_file(pipe, tmp_path / "model.safetensors")
    theirs = diffusers.StableDiffusionPipeline.from_single_file(str(file), config=str(folder), local_files_only=True,
                                                                safety_checker=None)
    ours_sd = pipe.unet.state_dict()
    their_sd = theirs.unet.state_dict()
    assert set(ours_sd) == set(their_sd)
    assert all(torch.equal(ours_sd[k], their_sd[k]) for k in ours_sd)
    np.testing.assert_allclose(images(pipe), images(theirs), atol=1e-4)


def test_forbidden_pickle_is_refused(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned",))

    file = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.ones(1)}, "payload": Evil()}, file)
    with pytest.raises(ValueError, match="refused to load.*posix.system|refused to load.*system"):
        pipeline_from_single_file(impasto.StableDiffusionPipeline, file)


def test_file_that_is_no_checkpoint_is_named_so(tmp_path):
    for name, data in (("page.ckpt", b"<!DOCTYPE html><html>Civitai</html>"), ("notes.bin", b"hello"),
                       ("empty.pt", b"")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="not a PyTorch checkpoint") as e:
            pipeline_from_single_file(impasto.StableDiffusionPipeline, tmp_path / name)
        assert "refused" not in str(e.value) and name in str(e.value)


def test_dtype_names_and_diffusers_loading_keywords(tmp_path):
    folder = tiny.make_sd_folder(tmp_path, "sd1")
    file = save_single_file(impasto.StableDiffusionPipeline.from_pretrained(folder), tmp_path / "m.safetensors")
    pipe = impasto.StableDiffusionPipeline.from_single_file(str(file), torch_dtype="bfloat16", low_cpu_mem_usage=True,
                                                            device_map="cpu")
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    assert impasto.UNet2DConditionModel.from_single_file(str(file), torch_dtype="float16").dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        impasto.StableDiffusionPipeline.from_single_file(str(file), torch_dtype="float17")


def test_truncated_file_is_a_clear_error(tmp_path):
    folder = tiny.make_sd_folder(tmp_path, "sd1")
    pipe = impasto.StableDiffusionPipeline.from_pretrained(folder)
    file = save_single_file(pipe, tmp_path / "model.safetensors")
    data = file.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        pipeline_from_single_file(impasto.StableDiffusionPipeline, cut)


def test_lora_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    file = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(file))
    with pytest.raises(ValueError, match="no Stable Diffusion UNet weights"):
        pipeline_from_single_file(impasto.StableDiffusionPipeline, file)


def test_convert_command_both_ways(tmp_path):
    from impasto.cli import main

    folder = tiny.make_sd_folder(tmp_path, "sd1")
    file = tmp_path / "model.safetensors"
    assert main(["convert", str(folder), str(file)]) == 0
    back = tmp_path / "back"
    assert main(["convert", str(file), str(back)]) == 0
    a = images(impasto.StableDiffusionPipeline.from_pretrained(folder))
    b = images(impasto.StableDiffusionPipeline.from_pretrained(back))
    np.testing.assert_array_equal(a, b)
    assert main(["convert", str(tmp_path / "missing.txt"), str(back)]) != 0
