"""Classical codecs measured live (lpm.eval.classical) and the 8-bit metrics (lpm.eval.metrics)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lpm.data import read_image, to_uint8, write_image
from lpm.eval import classical
from lpm.eval.classical import (
    CLASSICAL_CODECS,
    CLASSICAL_SETTINGS,
    UNAVAILABLE_CODECS,
    available_classical_codecs,
    classical_library_version,
    evaluate_classical,
    save_results_json,
)
from lpm.eval.metrics import MS_SSIM_MIN_SIDE, PSNR_CAP_DB, ms_ssim_rgb, psnr

torch.set_num_threads(1)

H, W = 160, 192  # >= 161 px is needed on the shorter side for MS-SSIM: 160 is not enough
BIG_H, BIG_W = 176, 192
CODECS = sorted(CLASSICAL_CODECS)
RESULT_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "quality")


def _smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 90 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 40 + 170 * x / w
    b = 200 - 150 * y / h + 20 * np.sin((x + y) / 11.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).round().astype(np.uint8)


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 128 + 60 * np.sign(np.sin(x / 3.0)) * np.sign(np.sin(y / 5.0))  # fine checker-like stripes
    waves = 25 * np.sin(np.stack([x / 7.0, y / 4.0, (x - y) / 9.0], -1))
    img = base[..., None] + waves + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _save(path: Path, img: np.ndarray) -> Path:
    write_image(path, torch.from_numpy(img).permute(2, 0, 1).float() / 255.0)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("classical")
    return {
        "smooth": _save(d / "smooth.png", _smooth(BIG_H, BIG_W)),
        "texture": _save(d / "texture.png", _texture(BIG_H, BIG_W)),
        "tiny": _save(d / "tiny.png", _texture(40, 50, seed=1)),
    }


@pytest.fixture(scope="module")
def default_runs(images) -> dict[str, dict]:
    """Every available codec's default sweep on the two MS-SSIM-sized images (computed once)."""
    return {c: evaluate_classical(c, [images["smooth"], images["texture"]], progress=False) for c in CODECS}


# ------------------------------------------------------------------------------------------------ metrics
def test_psnr_of_one_gray_level_offset():
    a = _smooth(H, W).astype(np.int16)
    a = np.clip(a, 0, 254).astype(np.uint8)
    b = (a + 1).astype(np.uint8)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255), abs=1e-9)  # 48.1308 dB
    assert psnr(a, b) == pytest.approx(48.13, abs=0.005)


def test_psnr_known_mse_and_symmetry():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 48  # MSE = 48^2 / 48 = 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 48.0))
    assert psnr(a, b) == psnr(b, a)


def test_psnr_identical_images_give_documented_cap():
    a = _texture(20, 30)
    assert psnr(a, a) == PSNR_CAP_DB
    assert PSNR_CAP_DB == pytest.approx(148.13, abs=0.01) and math.isfinite(PSNR_CAP_DB)


def test_psnr_accepts_tensors_and_rejects_bad_input():
    a = _texture(20, 30)
    b = np.clip(a.astype(int) + 3, 0, 255).astype(np.uint8)
    assert psnr(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(psnr(a, b))
    with pytest.raises(TypeError, match="uint8"):
        psnr(a.astype(np.float32), b)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, b[:10])


def test_ms_ssim_rgb():
    a = _texture(BIG_H, BIG_W)
    assert ms_ssim_rgb(a, a) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(3)
    light = np.clip(a + rng.normal(0, 3, a.shape), 0, 255).round().astype(np.uint8)
    heavy = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).round().astype(np.uint8)
    assert 1.0 > ms_ssim_rgb(a, light) > ms_ssim_rgb(a, heavy) > 0.0
    # undefined below 161 px on the shorter side: NaN, no exception
    assert MS_SSIM_MIN_SIDE == 161
    assert math.isnan(ms_ssim_rgb(a[:160], light[:160]))
    assert math.isnan(ms_ssim_rgb(a[:, :40], light[:, :40]))
    assert math.isfinite(ms_ssim_rgb(a[:161, :161], light[:161, :161]))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        ms_ssim_rgb(a[..., 0], a[..., 0])


# ------------------------------------------------------------------------------------------- codec table
def test_codec_table():
    known = {"jpeg", "webp", "avif", "jpegxl", "jpeg2000"}
    assert set(CLASSICAL_CODECS) | set(UNAVAILABLE_CODECS) == known
    assert not set(CLASSICAL_CODECS) & set(UNAVAILABLE_CODECS)
    assert "jpeg" in CLASSICAL_CODECS  # libjpeg is in every imagecodecs wheel
    assert available_classical_codecs() == list(CLASSICAL_CODECS)
    for name, reason in UNAVAILABLE_CODECS.items():
        assert isinstance(reason, str) and reason, name
    for name, (encode, decode, qualities) in CLASSICAL_CODECS.items():
        assert callable(encode) and callable(decode)
        assert len(qualities) >= 6 and list(qualities) == sorted(set(qualities))
        assert "quality_meaning" in CLASSICAL_SETTINGS[name]
        assert classical_library_version(name)


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_is_lossy_but_close(codec: str):
    encode, decode, qualities = CLASSICAL_CODECS[codec]
    img = _smooth(H, W)
    data = encode(img, qualities[-1])
    assert isinstance(data, bytes) and 0 < len(data) < img.nbytes
    rec = decode(data)
    assert rec.shape == img.shape and rec.dtype == np.uint8
    assert 30.0 < psnr(img, rec) < PSNR_CAP_DB  # the default sweep stops short of lossless


# ------------------------------------------------------------------------------------- evaluate_classical
@pytest.mark.parametrize("codec", CODECS)
def test_default_sweep_is_monotone(default_runs, codec: str):
    r = default_runs[codec]["results"]
    bpp, q = np.array(r["bpp"]), np.array(r["psnr-rgb"])
    assert list(r["quality"]) == list(CLASSICAL_CODECS[codec].qualities)
    # more quality -> more bits, strictly, at every step of the sweep
    assert np.all(np.diff(bpp) > 0), bpp
    # more bits -> higher PSNR. libwebp's quality is not a PSNR target: its in-loop filter strength and
    # segment quantisers (spatial noise shaping) are tuned perceptually and change with quality, so on
    # the flat synthetic image alone PSNR falls 0.44 dB from q20 to q30 (libwebp 1.6.0); the two-image
    # mean dips 0.02 dB. WebP may therefore dip by at most 0.1 dB between neighbouring points; every
    # other codec must rise strictly. (On Kodak images the WebP curve rises at every step.) The same
    # step costs WebP 0.001 in MS-SSIM.
    webp = codec == "webp"
    assert np.all(np.diff(q) > (-0.1 if webp else 0.0)), q
    assert q[-1] - q[0] > 5.0, q
    ms = np.array(r["ms-ssim-rgb"])
    assert np.all((ms > 0.5) & (ms <= 1.0))
    assert np.all(np.diff(ms) > (-0.005 if webp else 0.0)), ms
    assert all(t > 0 for t in r["encoding_time"] + r["decoding_time"])


@pytest.mark.parametrize("codec", CODECS)
def test_results_json_shape(default_runs, codec: str, tmp_path):
    out = default_runs[codec]
    assert set(out) == {"name", "description", "results", "meta"}
    assert isinstance(out["name"], str) and isinstance(out["description"], str)
    n = len(CLASSICAL_CODECS[codec].qualities)
    assert set(out["results"]) == set(RESULT_KEYS)
    for key in RESULT_KEYS:
        assert len(out["results"][key]) == n, key
        assert all(isinstance(v, (int, float)) for v in out["results"][key])
    meta = out["meta"]
    assert meta["image_count"] == 2 and meta["images"] == ["smooth.png", "texture.png"]
    assert meta["image_sizes"] == [[BIG_H, BIG_W]] * 2 and meta["ms_ssim_image_count"] == 2
    assert meta["codec"] == codec and meta["settings"] == CLASSICAL_SETTINGS[codec]
    assert meta["codec_library"] == classical_library_version(codec)
    import imagecodecs

    assert meta["imagecodecs"] == imagecodecs.__version__
    for key in ("lpm_version", "git_commit", "torch", "device", "bpp_definition", "psnr_definition"):
        assert meta[key], key
    path = save_results_json(out, tmp_path / f"{codec}.json")
    back = json.loads(path.read_text())
    assert back["results"]["bpp"] == pytest.approx(out["results"]["bpp"])


@pytest.mark.parametrize("codec", CODECS)
def test_bpp_counts_the_encoded_bytes(images, codec: str):
    encode, _, qualities = CLASSICAL_CODECS[codec]
    q = qualities[len(qualities) // 2]
    out = evaluate_classical(codec, [images["texture"]], qualities=[q], progress=False)
    x, _ = read_image(images["texture"])
    data = encode(np.ascontiguousarray(to_uint8(x)), q)  # the encoders are deterministic
    assert out["results"]["bpp"] == [8 * len(data) / (BIG_H * BIG_W)]


def test_small_image_gives_nan_ms_ssim_not_a_crash(images, tmp_path):
    out = evaluate_classical("jpeg", [images["tiny"]], qualities=[50, 90], progress=False)
    r = out["results"]
    assert all(math.isnan(v) for v in r["ms-ssim-rgb"])
    assert all(math.isfinite(v) for v in r["psnr-rgb"] + r["bpp"])
    assert out["meta"]["ms_ssim_image_count"] == 0
    back = json.loads(save_results_json(out, tmp_path / "tiny.json").read_text())  # strict JSON: null
    assert back["results"]["ms-ssim-rgb"] == [None, None]
    # mixed with a large image, the tiny one is left out of the MS-SSIM mean but counts for bpp/PSNR
    mixed = evaluate_classical("jpeg", [images["tiny"], images["smooth"]], qualities=[50], progress=False)
    alone = evaluate_classical("jpeg", [images["smooth"]], qualities=[50], progress=False)
    assert mixed["results"]["ms-ssim-rgb"] == pytest.approx(alone["results"]["ms-ssim-rgb"])
    assert mixed["results"]["bpp"] != pytest.approx(alone["results"]["bpp"])
    assert mixed["meta"]["ms_ssim_image_count"] == 1


def test_points_are_means_over_images(images):
    both = evaluate_classical("jpeg", [images["smooth"], images["texture"]], qualities=[40], progress=False)
    one = [evaluate_classical("jpeg", [images[k]], qualities=[40], progress=False) for k in ("smooth", "texture")]
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb"):
        assert both["results"][key][0] == pytest.approx(np.mean([o["results"][key][0] for o in one]))


def test_names_aliases_qualities_and_directories(images):
    out = evaluate_classical("JPEG", [images["smooth"]], qualities=[60, 20, 60], progress=False)
    assert out["results"]["quality"] == [20, 60]  # sorted, de-duplicated
    assert out["name"] == "JPEG"
    if "jpegxl" in CLASSICAL_CODECS:  # a single path is accepted too
        jxl = evaluate_classical("JXL", images["smooth"], qualities=[50], progress=False)
        assert jxl["meta"]["codec"] == "jpegxl"
    if "jpeg2000" in CLASSICAL_CODECS:
        j2k = evaluate_classical("j2k", [images["smooth"]], qualities=[30], progress=False)
        assert j2k["meta"]["codec"] == "jpeg2000"
    from_dir = evaluate_classical("jpeg", images["smooth"].parent, qualities=[50], progress=True)
    assert from_dir["meta"]["images"] == ["smooth.png", "texture.png", "tiny.png"]


def test_errors(images, monkeypatch):
    with pytest.raises(ValueError, match="unknown classical codec"):
        evaluate_classical("bpg", [images["smooth"]])
    with pytest.raises(ValueError, match="no images"):
        evaluate_classical("jpeg", [])
    with pytest.raises(ValueError, match="empty"):
        evaluate_classical("jpeg", [images["smooth"]], qualities=[])
    with pytest.raises(FileNotFoundError):
        evaluate_classical("jpeg", [images["smooth"].parent / "missing.png"], progress=False)
    # a codec missing from the imagecodecs build is refused with its recorded reason
    monkeypatch.delitem(classical.CLASSICAL_CODECS, "webp", raising=False)
    monkeypatch.setitem(classical.UNAVAILABLE_CODECS, "webp", "built without WEBP (test)")
    with pytest.raises(RuntimeError, match=r"unavailable: built without WEBP \(test\)"):
        evaluate_classical("webp", [images["smooth"]])


@pytest.mark.parametrize("codec, bad", [("jpeg", [-20]), ("jpeg", [250]), ("webp", [-5]), ("avif", [100]),
                                        ("jpegxl", [-10]), ("jpeg2000", [0.001]), ("jpeg", [49.5])])
def test_qualities_outside_the_lossy_range_or_truncated_are_refused(images, codec, bad):
    """WebP -5 coded losslessly (a 148 dB point that moved its BD-rate vs VTM by 6-16 points), AVIF 100 too,
    JPEG 250 coded as 100, JPEG 49.5 as 49 (two 'qualities' with one file): each is now refused by name,
    before anything is coded."""
    if codec not in CLASSICAL_CODECS:
        pytest.skip(f"{codec} not in this imagecodecs build")
    with pytest.raises(ValueError, match="outside|whole numbers"):
        evaluate_classical(codec, [images["smooth"]], qualities=bad, progress=False)


def test_a_numpy_scalar_quality_is_one_quality(images):
    out = evaluate_classical("jpeg", [images["smooth"]], qualities=np.int64(50), progress=False)
    assert out["results"]["quality"] == [50]


def test_an_image_too_wide_for_the_format_is_named_with_the_limit(tmp_path):
    """WebP stops at 16383 pixels a side: a wider image failed with 'invalid data shape, strides, or dtype'."""
    if "webp" not in CLASSICAL_CODECS:
        pytest.skip("webp not in this imagecodecs build")
    wide = tmp_path / "wide.png"
    write_image(wide, torch.rand(3, 2, 16384))
    with pytest.raises(ValueError, match=r"wide.png is 16384×2: WebP codes at most 16383"):
        evaluate_classical("webp", [wide], qualities=[50], progress=False)
    jpeg = evaluate_classical("jpeg", [wide], qualities=[50], progress=False)  # JPEG goes to 65500
    assert len(jpeg["results"]["bpp"]) == 1
