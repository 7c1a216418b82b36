"""`impasto upscale`: a small image larger than the model's sample size goes through the tiled path."""
import numpy as np
import PIL.Image
import pytest

from ldm_utils import make_superres_components

from impasto.commands import upscale

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sr_folder(tmp_path_factory):
    import diffusers

    folder = tmp_path_factory.mktemp("ldm-sr-cli")
    diffusers.LDMSuperResolutionPipeline(**make_superres_components()).save_pretrained(str(folder))
    return folder


def test_upscale_cli_tiles_large_image(sr_folder, tmp_path, capsys, caplog):
    rng = np.random.default_rng(0)
    src = tmp_path / "in.png"
    # 44x24 with alpha: larger than the UNet's sample_size (16), not a multiple of its factor (2)
    PIL.Image.fromarray((rng.random((24, 43, 4)) * 255).astype(np.uint8), "RGBA").save(src)
    out1, out2, out3 = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / "c.png"
    base = ["upscale", str(src), "--model", str(sr_folder), "--steps", "2", "--device", "cpu"]
    with caplog.at_level("INFO", logger="impasto"):
        assert upscale.main(base + ["-o", str(out1), "--seed", "3"]) == 0
    assert "tiles" in caplog.text and "RGB" in caplog.text
    err = capsys.readouterr().err
    assert "2/2" in err  # the progress bar
    a = PIL.Image.open(out1)
    assert a.size == (43 * 4, 24 * 4) and a.mode == "RGB"
    assert upscale.main(base + ["-o", str(out2), "--seed", "3"]) == 0
    assert np.array_equal(np.asarray(a), np.asarray(PIL.Image.open(out2)))
    assert upscale.main(base + ["-o", str(out3), "--seed", "4", "--eta", "1"]) == 0
    assert not np.array_equal(np.asarray(a), np.asarray(PIL.Image.open(out3)))


def test_upscale_cli_errors(sr_folder, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(SystemExit) as e:
        upscale.main(["upscale", str(bad), "-o", str(tmp_path / "o.png"), "--model", str(sr_folder)])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        upscale.main(["upscale", str(bad), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "none")])


def test_upscale_registered_in_impasto_cli(sr_folder, tmp_path):
    cli = pytest.importorskip("impasto.cli")
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    PIL.Image.new("L", (20, 12), 128).save(src)  # smaller than the model's sample size: one pass, no tiles
    assert cli.main(["upscale", str(src), "-o", str(out), "--model", str(sr_folder), "--steps", "1", "--seed", "0"]) == 0
    assert PIL.Image.open(out).size == (80, 48)
