"""The command-line codec and checkpoints: real files, odd images, and every kind of bad input."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import make_tiny_codec
from lpm import fileformat
from lpm.cli import main
from lpm.codec import ModelMismatchError, decode_image, encode_image
from lpm.data import read_image
from lpm.train.checkpoint import CheckpointError, load_codec, read_metadata, save_codec

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt2") / "other.safetensors"
    save_codec(path, make_tiny_codec(seed=5), meta={"budget": "untrained test model"})
    return path


def _png(path: Path, array: np.ndarray) -> Path:
    import imagecodecs

    path.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(array)))
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 3) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], -1)
    return np.clip(base + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compress_decompress_round_trip_matches_library(tmp_path, ckpt, capsys):
    src = _png(tmp_path / "in.png", _rgb(70, 90))
    rc, out, err = _run(capsys, "compress", src, tmp_path / "a.lpm", "--model", ckpt, "--rate", 0.013)
    assert rc == 0, err
    assert "bpp" in out
    rc, out, err = _run(capsys, "decompress", tmp_path / "a.lpm", tmp_path / "out.png", "--model", ckpt)
    assert rc == 0, err
    decoded, info = read_image(tmp_path / "out.png")
    assert (info.height, info.width, info.channels, info.bit_depth) == (70, 90, 3, 8)
    # the same as the library's eval-mode forward at that rate, up to 8-bit rounding
    model, _ = load_codec(ckpt)
    x, _ = read_image(src)
    ref = model(x[None], 0.013)["x_hat"][0].clamp(0, 1)
    assert (torch.round(ref * 255) / 255 - decoded).abs().max() <= 1.5 / 255
    # same input -> same bytes
    rc, _, _ = _run(capsys, "compress", src, tmp_path / "b.lpm", "--model", ckpt, "--rate", 0.013)
    assert (tmp_path / "a.lpm").read_bytes() == (tmp_path / "b.lpm").read_bytes()
    rc, out, _ = _run(capsys, "info", tmp_path / "a.lpm")
    assert rc == 0 and "70x90" in out and "lambda=0.013" in out


@pytest.mark.parametrize(
    "name,array,channels,bit_depth",
    [
        ("gray8", _rgb(33, 47)[..., 0], 1, 8),
        ("rgb16", (_rgb(20, 30).astype(np.uint16) * 256 + 3), 3, 16),
        ("gray16", (_rgb(17, 9)[..., 1].astype(np.uint16) * 257), 1, 16),
        ("one_pixel", _rgb(1, 1), 3, 8),
        ("thin", _rgb(3, 200), 3, 8),
        ("tall", _rgb(130, 1), 3, 8),
    ],
)
def test_odd_images_keep_their_format(tmp_path, ckpt, capsys, name, array, channels, bit_depth):
    src = _png(tmp_path / f"{name}.png", array)
    assert _run(capsys, "compress", src, tmp_path / "x.lpm", "--model", ckpt, "--rate", 0.0035)[0] == 0
    rc, _, err = _run(capsys, "decompress", tmp_path / "x.lpm", tmp_path / "y.png", "--model", ckpt)
    assert rc == 0, err
    _, info = read_image(tmp_path / "y.png")
    assert (info.height, info.width, info.channels, info.bit_depth) == (*array.shape[:2], channels, bit_depth)


def test_alpha_is_dropped_with_a_warning(tmp_path, ckpt, capsys):
    rgba = np.concatenate([_rgb(16, 16), np.full((16, 16, 1), 128, np.uint8)], -1)
    src = _png(tmp_path / "rgba.png", rgba)
    with pytest.warns(UserWarning, match="alpha"):
        rc, _, _ = _run(capsys, "compress", src, tmp_path / "x.lpm", "--model", ckpt)
    assert rc == 0
    assert _run(capsys, "decompress", tmp_path / "x.lpm", tmp_path / "y.png", "--model", ckpt)[0] == 0
    assert read_image(tmp_path / "y.png")[1].channels == 3


def test_target_bpp_picks_a_rate_whose_file_fits(tmp_path, ckpt, capsys):
    src = _png(tmp_path / "in.png", _rgb(64, 64))
    sizes = {}
    for r in (0.0035, 0.0483):
        _run(capsys, "compress", src, tmp_path / f"{r}.lpm", "--model", ckpt, "--rate", r)
        sizes[r] = 8 * (tmp_path / f"{r}.lpm").stat().st_size / (64 * 64)
    lo, hi = sorted(sizes.values())
    target = (lo + hi) / 2
    rc, out, err = _run(capsys, "compress", src, tmp_path / "t.lpm", "--model", ckpt, "--target-bpp", target)
    assert rc == 0, err
    bpp = 8 * (tmp_path / "t.lpm").stat().st_size / (64 * 64)
    assert bpp <= target
    assert 0.0035 <= fileformat.read(tmp_path / "t.lpm").header.rate <= 0.0483
    assert "rate" in out


def _one_line_error(rc: int, err: str) -> None:
    assert rc == 2
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("lpm: error: "), err
    assert "Traceback" not in err


def test_bad_streams_fail_cleanly_and_write_nothing(tmp_path, ckpt, other_ckpt, capsys):
    src = _png(tmp_path / "in.png", _rgb(40, 40))
    good = tmp_path / "good.lpm"
    assert _run(capsys, "compress", src, good, "--model", ckpt, "--rate", 0.013)[0] == 0
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "mutated": data[:60] + bytes([data[60] ^ 0x10]) + data[61:],
        "empty": b"",
        "foreign": src.read_bytes(),
        "appended": data + b"\x00",
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.lpm"
        bad.write_bytes(blob)
        out = tmp_path / f"{name}.png"
        rc, _, err = _run(capsys, "decompress", bad, out, "--model", ckpt)
        _one_line_error(rc, err)
        assert not out.exists(), name
    # another checkpoint's stream
    rc, _, err = _run(capsys, "decompress", good, tmp_path / "o.png", "--model", other_ckpt)
    _one_line_error(rc, err)
    assert "checkpoint" in err and not (tmp_path / "o.png").exists()


def test_bad_inputs_and_checkpoints_fail_cleanly(tmp_path, ckpt, capsys):
    src = _png(tmp_path / "in.png", _rgb(40, 40))
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    save_file({"w": torch.zeros(3)}, str(tmp_path / "foreign.safetensors"))
    cases = [
        ("compress", tmp_path / "missing.png", tmp_path / "o.lpm", "--model", ckpt),
        ("compress", tmp_path / "text.png", tmp_path / "o.lpm", "--model", ckpt),
        ("compress", src, tmp_path / "o.lpm", "--model", ckpt, "--rate", 1.0),
        ("compress", src, tmp_path / "o.lpm", "--model", ckpt, "--rate", "nan"),
        ("compress", src, tmp_path / "o.lpm", "--model", ckpt, "--target-bpp", -1),
        ("compress", src, tmp_path / "o.lpm", "--model", ckpt, "--max-pixels", 100),
        ("compress", src, tmp_path / "o.lpm", "--model", tmp_path / "junk.safetensors"),
        ("compress", src, tmp_path / "o.lpm", "--model", tmp_path / "foreign.safetensors"),
        ("compress", src, tmp_path / "o.lpm", "--model", tmp_path / "nothing.safetensors"),
        ("compress", src, tmp_path / "o.lpm", "--model", src),
        ("decompress", tmp_path / "missing.lpm", tmp_path / "o.png", "--model", ckpt),
    ]
    for argv in cases:
        rc, _, err = _run(capsys, *argv)
        _one_line_error(rc, err)
        assert not (tmp_path / "o.lpm").exists() and not (tmp_path / "o.png").exists(), argv


def _resave(src: Path, dst: Path, **changes: str) -> Path:
    md = read_metadata(src)
    save_file(load_file(str(src)), str(dst), metadata={**md, **changes})
    return dst


def test_checkpoint_round_trip_and_mismatches(tmp_path, ckpt):
    model, info = load_codec(ckpt)
    assert info["kind"] == "prompted" and info["meta"]["budget"] == "untrained test model"
    assert len(info["git_commit"]) > 0 and info["lpm_format"] == "1"
    x = torch.rand(1, 3, 48, 40)
    again, _ = load_codec(ckpt)
    assert model.compress(x, 0.013)["strings"] == again.compress(x, 0.013)["strings"]
    with pytest.raises(CheckpointError, match="format"):
        load_codec(_resave(ckpt, tmp_path / "v2.safetensors", lpm_format="2"))
    cfg = json.loads(read_metadata(ckpt)["codec_config"])
    with pytest.raises(CheckpointError, match="do not fit"):
        load_codec(_resave(ckpt, tmp_path / "n.safetensors", codec_config=json.dumps({**cfg, "N": 32})))
    with pytest.raises(CheckpointError, match="metadata"):
        load_codec(_resave(ckpt, tmp_path / "k.safetensors", codec_config=json.dumps({**cfg, "bogus": 1})))
    with pytest.raises(CheckpointError, match="sha256"):
        load_codec(ckpt, expected_sha256="0" * 64)


def test_half_precision_checkpoint_decodes_its_own_streams(tmp_path):
    model = make_tiny_codec(seed=3)
    path = tmp_path / "half.safetensors"
    save_codec(path, model, half=True)
    full = save_codec(tmp_path / "full.safetensors", model)
    assert path.stat().st_size < (tmp_path / "full.safetensors").stat().st_size
    half_model, info = load_codec(path)
    assert info["sha256"] != full
    # entropy tables are stored exactly
    for k, v in model.state_dict().items():
        if "_quantized_cdf" in k or "_offset" in k or "_cdf_length" in k:
            assert torch.equal(v, half_model.state_dict()[k]), k
    x = torch.rand(1, 3, 64, 64)
    c = half_model.compress(x, 0.013)
    y = half_model.decompress(c["strings"], c["shape"], 0.013)["x_hat"]
    ref = model(x, 0.013)["x_hat"].clamp(0, 1)
    assert (y - ref).abs().max() < 0.05  # fp16 weights: rounding-level change of the reconstruction


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pos=st.integers(min_value=0, max_value=10_000),
    value=st.integers(min_value=0, max_value=255),
    fix_crc=st.booleans(),
    cut=st.integers(min_value=0, max_value=3),
)
def test_fuzzed_streams_never_escape_as_other_errors(ckpt, pos, value, fix_crc, cut):
    """Mutated streams either decode to an image of the declared size or raise our one-line errors —
    also when the CRC is recomputed, so the mutation reaches the header checks and the rANS decoder."""
    model, info = _cached_model(ckpt)
    data = bytearray(_cached_stream(ckpt))
    pos %= len(data) - 4
    data[pos] = value
    if cut:
        data = data[: len(data) - cut * 7]
    if fix_crc and len(data) > 4:
        data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    model_id = fileformat.model_id_from_sha256(info["sha256"])
    try:
        c = fileformat.decode(bytes(data), max_pixels=1 << 20)
        x_hat, im = decode_image(model, model_id, c)
    except (fileformat.BitstreamError, ModelMismatchError):
        return
    assert x_hat.shape == (3, im.height, im.width)
    assert torch.isfinite(x_hat).all()


_CACHE: dict = {}


def _cached_model(ckpt):
    key = ("model", str(ckpt))
    if key not in _CACHE:
        _CACHE[key] = load_codec(ckpt)
    return _CACHE[key]


def _cached_stream(ckpt) -> bytes:
    key = ("stream", str(ckpt))
    if key not in _CACHE:
        model, info = _cached_model(ckpt)
        x = torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(0))
        from lpm.data import ImageInfo

        im = ImageInfo(50, 70, 3, 8, False)
        _CACHE[key] = fileformat.encode(
            encode_image(model, fileformat.model_id_from_sha256(info["sha256"]), x, im, 0.013)
        )
    return _CACHE[key]


def test_cli_eval_writes_results_and_classical(tmp_path, ckpt, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png", _rgb(48, 64, 1))
    _png(imgs / "b.png", _rgb(40, 33, 2)[..., 0])
    rc, out, err = _run(capsys, "eval", "--model", ckpt, "--images", imgs, "--out-dir", tmp_path / "ev",
                        "--name", "t", "--continuous", "1", "--classical", "jpeg", "--no-progress")
    assert rc == 0, err
    res = json.loads((tmp_path / "ev" / "t.json").read_text())
    assert len(res["results"]["bpp"]) == 4 and res["meta"]["checkpoint_sha256"]
    assert (tmp_path / "ev" / "t_per_image.csv").exists()
    jp = json.loads((tmp_path / "ev" / "classical-jpeg.json").read_text())
    assert jp["results"]["bpp"] == sorted(jp["results"]["bpp"])
    # two images of one's own are not Kodak: no BD-rate against the (24-image Kodak) anchors
    assert out.count("BD-rate vs VTM not shown") == 2 and "Kodak anchors, cubic" not in out
    assert res["meta"]["dataset"] == str(imgs)


def test_cli_eval_of_a_data_dir_whose_kodak_folder_is_not_kodak_files_nothing_as_kodak(tmp_path, ckpt, capsys):
    """``lpm eval --data-dir D`` reads D/kodak; files there that are not the manifest's Kodak images (same names,
    other bytes) are recorded as 'kodak-unverified' with no manifest, with a warning, never as Kodak."""
    fake = tmp_path / "data" / "kodak"
    fake.mkdir(parents=True)
    _png(fake / "kodim01.png", _rgb(40, 48, 3))
    rc, out, err = _run(capsys, "eval", "--model", ckpt, "--data-dir", tmp_path / "data", "--out-dir",
                        tmp_path / "ev", "--name", "t", "--rates", "0.013", "--no-progress")
    assert rc == 0, err
    assert "not the Kodak images" in err and "NOT comparable" in err
    meta = json.loads((tmp_path / "ev" / "t.json").read_text())["meta"]
    assert meta["dataset"] == "kodak-unverified" and "dataset_manifest" not in meta


def test_cli_eval_of_the_real_kodak_files_records_the_manifest(tmp_path, ckpt, capsys):
    """The same command on (one of) the real Kodak images files them as Kodak, with the manifest's sha256."""
    from lpm.data import locate_dataset

    try:
        real = locate_dataset("kodak")
    except FileNotFoundError:
        pytest.skip("no Kodak copy here (set LPM_DATA_DIR)")
    (tmp_path / "data" / "kodak").mkdir(parents=True)
    (tmp_path / "data" / "kodak" / "kodim24.png").write_bytes((real / "kodim24.png").read_bytes())
    rc, out, err = _run(capsys, "eval", "--model", ckpt, "--data-dir", tmp_path / "data", "--out-dir",
                        tmp_path / "ev", "--name", "t", "--rates", "0.013", "--no-progress", "--max-pixels", "400000")
    assert rc == 0, err
    # one of the 24 real files is part of Kodak, not Kodak: not filed as Kodak, no BD-rate against the anchors
    assert "holds 1 of the 24 Kodak images" in err and "BD-rate vs VTM not shown" in out
    meta = json.loads((tmp_path / "ev" / "t.json").read_text())["meta"]
    assert meta["dataset"] == "kodak-unverified" and "dataset_manifest" not in meta


def test_decompress_without_model_uses_the_shipped_checkpoint_the_header_names(tmp_path, capsys):
    """A file made by a shipped checkpoint that is not the default one decodes without ``--model``; a file
    from an unshipped checkpoint falls back to the default one, which refuses it, naming both ids."""
    from lpm import zoo

    src = _png(tmp_path / "in.png", _rgb(40, 56))
    name = "tiny-smoke"
    assert zoo.DEFAULT_CHECKPOINT != name  # not the default: the header must be what picks it
    assert _run(capsys, "compress", src, tmp_path / "a.lpm", "--model", name, "--rate", 0.005)[0] == 0
    rc, out, err = _run(capsys, "decompress", tmp_path / "a.lpm", tmp_path / "a.png")
    assert rc == 0, err
    assert _run(capsys, "decompress", tmp_path / "a.lpm", tmp_path / "b.png", "--model", name)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    # an explicit --model still wins (and is refused for another checkpoint's file)
    rc, _, err = _run(capsys, "decompress", tmp_path / "a.lpm", tmp_path / "c.png", "--model", zoo.DEFAULT_CHECKPOINT)
    assert rc != 0 and "made by checkpoint" in err and not (tmp_path / "c.png").exists()
    # a file from a checkpoint that is not shipped: the default is tried and refuses it clearly
    foreign = tmp_path / "foreign.safetensors"
    save_codec(foreign, make_tiny_codec(seed=9), meta={"budget": "untrained test model"})
    assert _run(capsys, "compress", src, tmp_path / "f.lpm", "--model", foreign, "--rate", 0.013)[0] == 0
    rc, _, err = _run(capsys, "decompress", tmp_path / "f.lpm", tmp_path / "f.png")
    assert rc != 0 and "made by checkpoint" in err and not (tmp_path / "f.png").exists()
    # an unreadable file: the same error as with --model (no lookup error of its own)
    (tmp_path / "junk.lpm").write_bytes(b"not an lpm file")
    rc, _, err = _run(capsys, "decompress", tmp_path / "junk.lpm", tmp_path / "j.png")
    assert rc != 0 and "junk.lpm" in err and not (tmp_path / "j.png").exists()


def test_without_model_the_cli_uses_the_papers_method_named_in_the_zoo(tmp_path, capsys):
    """No ``--model``: ``lpm compress`` uses ``zoo.DEFAULT_CHECKPOINT``, the paper's method (prompts alone, no
    extension such as the latent gain), whatever the sort order of the shipped names; ``lpm models`` marks it."""
    from lpm import zoo

    assert zoo.DEFAULT_CHECKPOINT in zoo.CHECKPOINTS
    assert "the paper's method" in zoo.CHECKPOINTS[zoo.DEFAULT_CHECKPOINT].budget
    src = _png(tmp_path / "in.png", _rgb(40, 56))
    assert _run(capsys, "compress", src, tmp_path / "d.lpm", "--rate", 0.005)[0] == 0
    want = fileformat.model_id_from_sha256(zoo.CHECKPOINTS[zoo.DEFAULT_CHECKPOINT].sha256)
    assert fileformat.read(tmp_path / "d.lpm").header.model_id == want
    rc, out, _ = _run(capsys, "models")
    marked = [line for line in out.splitlines() if "(default)" in line]
    assert rc == 0 and len(marked) == 1 and marked[0].startswith(f"checkpoint {zoo.DEFAULT_CHECKPOINT} (default):")


def test_cli_eval_honours_max_pixels_for_the_codec_and_the_classical_codecs(tmp_path, ckpt, capsys):
    """``lpm eval --max-pixels`` was accepted and ignored: a 40x48 image was evaluated under a limit of 100."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "a.png", _rgb(40, 48, 1))
    rc, out, err = _run(capsys, "eval", "--model", ckpt, "--images", imgs, "--out-dir", tmp_path / "ev",
                        "--name", "t", "--max-pixels", "100", "--no-progress")
    assert rc != 0 and "a.png: 40x48 (HxW) image has 1920 pixels, more than the allowed max_pixels=100" in err
    assert not (tmp_path / "ev" / "t.json").exists()
    rc, out, err = _run(capsys, "eval", "--images", imgs, "--out-dir", tmp_path / "ev", "--classical-only",
                        "--classical", "jpeg", "--max-pixels", "100", "--no-progress")
    assert rc != 0 and "max_pixels=100" in err
    assert not (tmp_path / "ev" / "classical-jpeg.json").exists()


def test_cli_eval_sets_only_the_whole_kodak_set_against_the_anchors(tmp_path, ckpt, capsys, monkeypatch):
    """The published anchors are means over all 24 Kodak images: part of the set (here 1 of a stand-in
    manifest's 2) is 'kodak-unverified' and gets no BD-rate against them; the whole set, found by --data-dir
    or by --images, is Kodak and gets one."""
    import hashlib

    from lpm import data

    fake = tmp_path / "data" / "kodak"
    fake.mkdir(parents=True)
    _png(fake / "kodim01.png", _rgb(40, 48, 3))
    _png(fake / "kodim02.png", _rgb(48, 40, 4))
    manifest = tmp_path / "stand-in.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                                for p in sorted(fake.glob("*.png"))))
    real = data.manifest_path
    monkeypatch.setattr(data, "manifest_path", lambda name: manifest if name == "kodak" else real(name))
    args = ("--model", ckpt, "--out-dir", tmp_path / "ev", "--name", "t", "--rates", "0.013", "--no-progress")
    for where in (("--data-dir", tmp_path / "data"), ("--images", fake)):
        rc, out, err = _run(capsys, "eval", *where, *args)
        assert rc == 0, err
        assert "BD-rate vs VTM (Kodak anchors, cubic)" in out or "BD-rate vs VTM not computable" in out, out
        assert json.loads((tmp_path / "ev" / "t.json").read_text())["meta"]["dataset"] == "kodak"
    (fake / "kodim02.png").unlink()
    rc, out, err = _run(capsys, "eval", "--data-dir", tmp_path / "data", *args[:2], "--out-dir", tmp_path / "ev2",
                        *args[4:])
    assert rc == 0, err
    assert "holds 1 of the 2 Kodak images" in err and "missing: kodim02.png" in err
    assert "BD-rate vs VTM not shown" in out
    assert json.loads((tmp_path / "ev2" / "t.json").read_text())["meta"]["dataset"] == "kodak-unverified"
