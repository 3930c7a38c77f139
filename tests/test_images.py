from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from iwdctl.errors import InputError
from iwdctl.images import dither, load_image, preprocess, quantize, save_png
from iwdctl.iwd import analysis_view, exact_iwd
from tests.conftest import shared_data


def _gradient(height: int = 20, width: int = 30) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 8 % 256, ys * 12 % 256, (xs + ys) * 5 % 256], axis=2).astype(np.uint8)


def test_rgb_png_round_trip_is_exact(tmp_path):
    array = _gradient()
    Image.fromarray(array).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32
    assert torch.equal(image.mul(255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(array))
    save_png(image, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), array)


def test_sixteen_bit_grayscale_keeps_its_precision(tmp_path):
    values = np.array([[0, 1000, 65535], [30000, 40000, 65000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    image = load_image(tmp_path / "g16.png")
    assert image.shape == (3, 2, 3)
    assert torch.allclose(image[0], torch.from_numpy(values / 65535.0).float(), atol=1e-6)
    assert torch.equal(image[0], image[2])


@pytest.mark.parametrize("mode", ["L", "1", "RGBA", "LA", "P", "CMYK", "I;16"])
def test_every_mode_loads_as_rgb_in_unit_range(tmp_path, mode):
    base = Image.fromarray(_gradient())
    converted = (
        base.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257)
    )
    suffix = ".jpg" if mode == "CMYK" else ".png"
    converted.save(tmp_path / f"x{suffix}")
    image = load_image(tmp_path / f"x{suffix}")
    assert image.shape == (3, 20, 30)
    assert image.min() >= 0.0 and image.max() <= 1.0
    if mode in ("L", "LA", "I;16"):
        gray = torch.from_numpy(np.asarray(base.convert("L")) / 255.0).float()
        assert torch.allclose(image[1], gray, atol=1e-4)


def test_palette_with_transparency_keeps_colours(tmp_path):
    array = _gradient()
    palette = Image.fromarray(array).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    image = load_image(tmp_path / "p.png")
    expected = torch.from_numpy(np.asarray(palette.convert("RGB")) / 255.0).permute(2, 0, 1).float()
    assert torch.allclose(image, expected)


def test_exif_orientation_is_applied(tmp_path):
    array = _gradient(10, 40)
    picture = Image.fromarray(array)
    exif = picture.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    picture.save(tmp_path / "r.jpg", exif=exif, quality=100)
    image = load_image(tmp_path / "r.jpg")
    assert image.shape == (3, 40, 10)


def test_not_an_image_and_truncated_and_missing(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(InputError, match="not an image"):
        load_image(tmp_path / "text.png")
    Image.fromarray(_gradient(200, 200)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "absent.png")


def test_preprocess_keeps_input_sized_images_and_crops_others():
    exact = torch.rand(3, 224, 224)
    assert preprocess(exact, 224) is exact
    wide = torch.rand(3, 300, 400)
    out = preprocess(wide, 224)
    assert out.shape == (3, 224, 224)
    assert out.min() >= 0 and out.max() <= 1


def test_save_png_rejects_lossy_suffix_and_quantize_matches_file(tmp_path):
    image = torch.rand(3, 8, 8)
    with pytest.raises(InputError):
        save_png(image, tmp_path / "a.jpg")
    save_png(image, tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png"), quantize(image))
    assert not list(tmp_path.glob("*.part"))


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Finished files are readable as any file this process writes (mkstemp's temporaries are 0600)."""
    import os

    from iwdctl.files import write_text_atomic

    umask = os.umask(0o022)
    os.umask(umask)
    write_text_atomic(tmp_path / "report.json", "{}")
    save_png(torch.rand(3, 8, 8), tmp_path / "a.png")
    for name in ("report.json", "a.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_dithered_rounding_stays_within_a_level_and_keeps_the_analysis_view_closer():
    """Error diffusion along rows: 8-bit levels, each pixel within one level of its value, every run
    of a row keeps its mean to within one level, and IWD's downsampled view (so IWD itself) is
    closer to the unrounded photo's than under the nearest rounding."""
    photo = preprocess(load_image(shared_data("nips17", "images", "629138193e021cdf.png")), 224, 0.875)
    rounded = dither(photo)
    levels = rounded * 255
    assert torch.equal(levels, levels.round()) and torch.equal(quantize(rounded), rounded)
    assert float((rounded - photo).abs().max()) <= 1 / 255 + 1e-6
    running = (rounded - photo).cumsum(dim=-1) * 255  # the carry: what a run has not yet rounded
    assert float(running.abs().max()) <= 0.5 + 1e-3
    views = analysis_view(torch.stack([photo, rounded, quantize(photo)]).double(), 64).numpy()
    assert exact_iwd(views[0], views[1]) < 0.7 * exact_iwd(views[0], views[2])
