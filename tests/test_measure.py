from __future__ import annotations

import csv
import json

import torch

from iwdctl.cli import main
from iwdctl.images import load_image, save_png
from iwdctl.iwd import analysis_view
from iwdctl.measure import MeasureSettings, measure_pairs, pair_images

from .conftest import shared_data
from .test_iwd import pot_iwd


def _images(tmp_path, count=3, size=24):
    generator = torch.Generator().manual_seed(0)
    for index in range(count):
        x = torch.rand(3, size, size, generator=generator)
        save_png(x, tmp_path / "orig" / f"img{index}.png")
        save_png((x + 0.03).clamp(0, 1), tmp_path / "bright" / f"img{index}_adv0.png")
        save_png(torch.roll(x, 2, dims=2), tmp_path / "bright" / f"img{index}_adv1.png")
        save_png(x.flip(2), tmp_path / "flip" / f"img{index}.png")
    save_png(torch.rand(3, size, size, generator=generator), tmp_path / "flip" / "stray.png")


def test_pairing_rule(tmp_path):
    _images(tmp_path)
    pairing = pair_images(tmp_path / "orig", [tmp_path / "bright", tmp_path / "flip"])
    names = sorted((pair.method, pair.orig.name, pair.adv.name) for pair in pairing.pairs)
    assert len(names) == 9
    assert ("bright", "img0.png", "img0_adv1.png") in names and ("flip", "img2.png", "img2.png") in names
    assert [path.endswith("stray.png") for path in pairing.unpaired] == [True]


def test_measure_matches_pot_and_writes_outputs(tmp_path, capsys):
    _images(tmp_path)
    code = main(
        [
            "measure",
            str(tmp_path / "orig"),
            str(tmp_path / "bright"),
            str(tmp_path / "flip"),
            "--json",
            str(tmp_path / "r.json"),
            "--csv",
            str(tmp_path / "r.csv"),
            "--plot",
            str(tmp_path / "h.png"),
            "-q",
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["pairs"]) == 9 and set(report["summary"]) == {"bright", "flip"}
    for pair in report["pairs"]:
        x, y = load_image(pair["orig"]).double(), load_image(pair["adv"]).double()
        assert abs(pair["iwd"] - pot_iwd(x, y)) <= 1e-9 * max(pot_iwd(x, y), 1e-12)
        assert abs(pair["l2"] - (x - y).norm().item()) < 1e-9
        assert pair["iwd_exact"] is True
    with open(tmp_path / "r.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 9
    assert (tmp_path / "h.png").stat().st_size > 1000
    assert "stray.png" in capsys.readouterr().err


def test_measure_bad_inputs(tmp_path, capsys):
    _images(tmp_path)
    save_png(torch.rand(3, 30, 24), tmp_path / "big" / "img0.png")
    save_png(torch.rand(3, 4, 4), tmp_path / "tiny" / "a.png")
    save_png(torch.rand(3, 4, 4), tmp_path / "tiny2" / "a.png")
    (tmp_path / "empty").mkdir()
    cases = [
        ["measure", str(tmp_path / "orig"), str(tmp_path / "flip"), "--strict"],
        ["measure", str(tmp_path / "orig"), str(tmp_path / "big")],
        ["measure", str(tmp_path / "tiny"), str(tmp_path / "tiny2")],
        ["measure", str(tmp_path / "orig"), str(tmp_path / "empty")],
        ["measure", str(tmp_path / "absent"), str(tmp_path / "flip")],
        ["measure", str(tmp_path / "orig"), str(tmp_path / "tiny")],
    ]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("iwdctl: error:") and "\n" not in err, (args, err)
    # --resize maps the second image onto the first's size
    assert (
        main(["measure", str(tmp_path / "orig" / "img0.png"), str(tmp_path / "big" / "img0.png"), "--resize", "-q"])
        == 0
    )


def test_measure_pairs_api_flags_approximation(tmp_path):
    _images(tmp_path, count=1)
    pairing = pair_images(tmp_path / "orig", [tmp_path / "flip"])
    exact = measure_pairs(pairing.pairs, MeasureSettings(size=0))
    approx = measure_pairs(pairing.pairs, MeasureSettings(size=0, approx=True))
    assert exact[0].iwd_exact and not approx[0].iwd_exact
    assert abs(approx[0].iwd - exact[0].iwd) <= approx[0].iwd_bound * exact[0].iwd
    assert 0 < approx[0].iwd_bound < 2e-3  # the default tolerance, 1e-3, plus float32 rounding


def _measure_in_a_process(tmp_path, *checked_modules: str) -> list[bool]:
    """Runs `iwdctl measure --device cpu --size 40` in a fresh process on _images' pairs and a degenerate pair
    (a dark photo brightened, as clipped noise does), checks its values against POT and returns whether
    each of `checked_modules` was imported."""
    import subprocess
    import sys

    _images(tmp_path, count=2)
    dark = load_image(shared_data("nips17", "images", "65c1808390bd18c5.png"))
    sign = torch.randint(0, 2, dark.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    save_png(dark, tmp_path / "orig" / "dark.png")
    save_png(dark + sign * 8 / 255, tmp_path / "bright" / "dark_adv0.png")
    script = (
        "import sys, json\n"
        "from iwdctl.cli import main\n"
        f"code = main(['measure', {str(tmp_path / 'orig')!r}, {str(tmp_path / 'bright')!r}, '--device', 'cpu',"
        f" '--size', '40', '--json', {str(tmp_path / 'r.json')!r}, '-q'])\n"
        f"print(json.dumps([code, *(name in sys.modules for name in {list(checked_modules)!r})]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    code, *imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    for pair in report["pairs"]:
        x, y = analysis_view(torch.stack([load_image(pair["orig"]), load_image(pair["adv"])]).double(), 40)
        assert abs(pair["iwd"] - pot_iwd(x, y)) <= 1e-9 * max(pot_iwd(x, y), 1e-12)
    return imported


def test_measure_on_a_cpu_does_not_import_torch(tmp_path):
    """`iwdctl measure --device cpu` runs on NumPy arrays: torch's 2 s import is not paid, not even
    for a degenerate pair."""
    assert _measure_in_a_process(tmp_path, "torch") == [False]


def test_measure_loads_cached_kernels_without_setting_up_numbas_compiler(tmp_path):
    """Once its kernels are in numba's disk cache, a measure process loads them without refreshing
    numba's typing and lowering registries (0.3 s of a one-pair process at 64 px; their loading
    imports numba.np.npdatetime) or importing SciPy's linear algebra (0.15 s)."""
    _measure_in_a_process(tmp_path, "numba.np.npdatetime")  # compiles and caches what is missing
    assert _measure_in_a_process(tmp_path, "numba.np.npdatetime", "scipy.linalg") == [False, False]


def test_measure_keeps_numpy_blas_on_one_thread(tmp_path, monkeypatch):
    """Pairs run in threads; NumPy's BLAS threads would compete with them, so inside measure_pairs
    BLAS runs on one thread, and its setting is restored afterwards."""
    import importlib

    from threadpoolctl import threadpool_info

    engine = importlib.import_module("iwdctl.measure")

    def blas_threads() -> list[int]:
        return [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]

    before = blas_threads()
    seen: list[list[int]] = []
    measure_pair = engine.measure_pair

    def recording(*arguments, **keywords):  # type: ignore[no-untyped-def]
        seen.append(blas_threads())
        return measure_pair(*arguments, **keywords)

    monkeypatch.setattr(engine, "measure_pair", recording)
    _images(tmp_path, count=2)
    measure_pairs(pair_images(tmp_path / "orig", [tmp_path / "flip"]).pairs, MeasureSettings(size=0))
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert blas_threads() == before
