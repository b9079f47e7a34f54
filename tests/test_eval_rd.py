"""Real-bitstream RD evaluation: results schema and provenance, bpp from the files' real bytes, PSNR against
an independent computation, mixed image kinds, continuous rates, and resuming an interrupted run."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_codec
from lpm import fileformat
from lpm.codec import decode_image
from lpm.eval import rd
from lpm.eval.rd import BPP_DEFINITION, CSV_FIELDS, evaluate_codec
from lpm.train.checkpoint import load_codec, save_codec

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RATES = [0.0035, 0.02, 0.0483]  # 0.02 is not a trained rate (continuous)
BUDGET = "test budget: untrained tiny codec, 0 GPU-minutes"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_rd")
    ckpt = root / "tiny.safetensors"
    save_codec(ckpt, make_tiny_codec(), meta={"budget": BUDGET})
    model, info = load_codec(ckpt)
    img = root / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    # odd-sized RGB PNG (too small for MS-SSIM), grey JPEG of odd size, 16-bit RGB PNG
    yy, xx = np.mgrid[0:67, 0:93]
    rgb = np.stack([(xx * 2) % 256, (yy * 3) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    Image.fromarray(rgb).save(img / "a_rgb.png")
    grey = (rng.normal(128, 30, (171, 165)).clip(0, 255)).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(img / "b_grey.jpg", quality=85)
    deep = (rng.random((40, 130, 3)) * 65535).astype(np.uint16)
    (img / "c_16bit.png").write_bytes(imagecodecs.png_encode(deep))
    manifest = root / "toy.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                                for p in sorted(img.iterdir())))
    return {"root": root, "model": model, "info": info, "images": img, "manifest": manifest}


@pytest.fixture(scope="module")
def first_run(setup):
    out = setup["root"] / "out1"
    res = evaluate_codec(setup["model"], setup["images"], RATES, checkpoint_info=setup["info"], out_dir=out,
                         name="tiny", dataset_name="toy", manifest=setup["manifest"], progress=False,
                         keep_streams=True)
    return out, res


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _strict(text: str):
    def no_constants(c):
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(text, parse_constant=no_constants)


def test_json_schema_and_meta(setup, first_run):
    out, res = first_run
    on_disk = _strict((out / "tiny.json").read_text())
    assert on_disk == res
    assert set(res) == {"name", "description", "results", "meta"}
    assert res["name"] == "tiny"
    assert BUDGET in res["description"]
    r = res["results"]
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time", "rate"):
        assert len(r[key]) == len(RATES), key
    assert r["rate"] == RATES
    assert all(b > 0 for b in r["bpp"]) and all(t > 0 for t in r["encoding_time"] + r["decoding_time"])
    assert all(0 < m <= 1 for m in r["ms-ssim-rgb"])  # from the one image large enough
    meta = res["meta"]
    assert meta["checkpoint_sha256"] == setup["info"]["sha256"]
    assert meta["checkpoint_budget"] == BUDGET
    assert meta["dataset"] == "toy"
    assert meta["dataset_manifest_sha256"] == hashlib.sha256(setup["manifest"].read_bytes()).hexdigest()
    assert meta["num_images"] == 3 and meta["ms_ssim_images"] == 1
    assert meta["bpp_definition"] == BPP_DEFINITION == "8*file bytes/pixels (header+CRC included)"
    for key in ("lpm_version", "git_commit", "torch", "compressai", "device", "python"):
        assert meta[key], key


def test_bpp_is_real_file_bytes(first_run):
    out, res = first_run
    rows = _rows(out / "tiny_per_image.csv")
    assert len(rows) == 3 * len(RATES)
    assert list(rows[0]) == list(CSV_FIELDS)
    for row in rows:
        data = (out / row["stream"]).read_bytes()
        h, w = int(row["height"]), int(row["width"])
        assert int(row["bytes"]) == len(data)
        assert float(row["bpp"]) == pytest.approx(8 * len(data) / (h * w), rel=1e-12)
        c = fileformat.decode(data)
        assert int(row["payload_bytes"]) == sum(len(s) for s in c.strings)
        overhead = fileformat.MIN_FILE_SIZE + 4 * (len(c.strings) - 1)
        assert int(row["bytes"]) - int(row["payload_bytes"]) == overhead
        assert c.header.rate == float(row["rate"])
    for i, rate in enumerate(RATES):
        sel = [r for r in rows if float(r["rate"]) == rate]
        assert res["results"]["bpp"][i] == pytest.approx(np.mean([float(r["bpp"]) for r in sel]), rel=1e-12)
    # more rate -> more bytes, for every image (the tiny codec's prompts move the rate monotonically)
    for name in {r["image"] for r in rows}:
        sizes = [int(r["bytes"]) for r in rows if r["image"] == name]
        assert sizes == sorted(sizes), name


def _original_rgb8(path: Path) -> np.ndarray:
    """Independent reference: the original's 8-bit RGB, straight from the file."""
    if path.suffix == ".png":
        a = imagecodecs.png_decode(path.read_bytes())
        if a.dtype == np.uint16:
            a = np.round(a.astype(np.float64) / 65535 * 255)
    else:
        a = np.asarray(Image.open(path))
    a = a.astype(np.float64)
    return np.repeat(a[:, :, None], 3, 2) if a.ndim == 2 else a


def test_psnr_matches_direct_computation(setup, first_run):
    out, _ = first_run
    model, info = setup["model"], setup["info"]
    model_id = fileformat.model_id_from_sha256(info["sha256"])
    for row in _rows(out / "tiny_per_image.csv"):
        c = fileformat.read(out / row["stream"])
        x_hat, im = decode_image(model, model_id, c)
        assert (im.height, im.width) == (int(row["height"]), int(row["width"]))
        ref = _original_rgb8(Path(row["image"]))
        dec = x_hat.double().numpy().transpose(1, 2, 0)
        if im.channels == 1:  # what lpm decompress writes for a grey source: BT.601 luma, one channel
            dec = np.repeat((dec @ np.array([0.299, 0.587, 0.114]))[:, :, None], 3, 2)
        dec = np.round(np.clip(dec, 0, 1) * 255)
        mse = np.mean((ref - dec) ** 2)
        assert float(row["psnr_rgb"]) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
        small = min(im.height, im.width) < 161
        assert math.isnan(float(row["ms_ssim_rgb"])) == small
    grey = [r for r in _rows(out / "tiny_per_image.csv") if r["image"].endswith("b_grey.jpg")]
    assert grey and all(r["channels"] == "1" for r in grey)


def test_a_grey_image_is_measured_on_the_file_lpm_decompress_gives_back(setup, first_run, tmp_path):
    """For a grey source ``lpm decompress`` writes a grey PNG (the luma of the three decoded channels): its PSNR
    and MS-SSIM are what the evaluation reports (lpm 0.2 measured the raw three channels: 0.7 dB apart)."""
    from lpm.cli import main
    from lpm.eval.metrics import ms_ssim_rgb

    out, _ = first_run
    ckpt = setup["root"] / "tiny.safetensors"
    (row,) = [r for r in _rows(out / "tiny_per_image.csv") if r["image"].endswith("b_grey.jpg")
              and float(r["rate"]) == RATES[0]]
    png = tmp_path / "back.png"
    assert main(["decompress", str(out / row["stream"]), str(png), "--model", str(ckpt), "--no-progress"]) == 0
    back = np.asarray(Image.open(png))
    assert back.ndim == 2 and back.dtype == np.uint8  # grey in, grey out
    ref = np.asarray(Image.open(row["image"])).astype(np.float64)
    mse = np.mean((ref - back.astype(np.float64)) ** 2)
    assert float(row["psnr_rgb"]) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    rgb = lambda a: np.repeat(a[:, :, None], 3, 2).astype(np.uint8)  # noqa: E731
    assert float(row["ms_ssim_rgb"]) == pytest.approx(ms_ssim_rgb(rgb(ref), rgb(back)), abs=1e-7)
    assert row["measure"] == str(rd.MEASURE_VERSION)


def test_resume_recomputes_only_missing_rows(setup, first_run, monkeypatch):
    _, first = first_run
    out = setup["root"] / "out_resume"
    kw = dict(checkpoint_info=setup["info"], out_dir=out, name="tiny", dataset_name="toy",
              manifest=setup["manifest"], progress=False)
    evaluate_codec(setup["model"], setup["images"], RATES, **kw)
    csv_path = out / "tiny_per_image.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 3 * len(RATES)
    kept = lines[:3]  # header + 2 rows, then half of a third row (interrupted mid-write)
    csv_path.write_text("".join(kept) + lines[3][: len(lines[3]) // 2])
    (out / "tiny.json").unlink()

    calls = []
    real = rd.encode_image

    def counting(*a, **k):
        calls.append(a[3:])
        return real(*a, **k)

    monkeypatch.setattr(rd, "encode_image", counting)
    second = evaluate_codec(setup["model"], setup["images"], RATES, **kw)
    assert len(calls) == 3 * len(RATES) - 2
    rows = _rows(csv_path)
    assert len(rows) == 3 * len(RATES)
    assert len({(r["image"], r["rate"]) for r in rows}) == len(rows)
    assert (out / "tiny.json").is_file()
    for key in ("bpp", "bpp_payload", "psnr-rgb", "ms-ssim-rgb", "rate"):
        assert second["results"][key] == first["results"][key], key
    assert {k: v for k, v in second["meta"].items() if k not in ("git_commit",)} == \
        {k: v for k, v in first["meta"].items() if k not in ("git_commit",)}

    calls.clear()
    third = evaluate_codec(setup["model"], setup["images"], RATES, **kw)
    assert calls == [] and third == second  # everything reused, timings included


def test_inputs_and_errors(setup, tmp_path):
    model = setup["model"]
    one = setup["images"] / "a_rgb.png"
    # no out_dir, no checkpoint: nothing written, model identified by its state dict
    res = evaluate_codec(model, one, [0.013], progress=False)
    assert res["meta"]["checkpoint_sha256"].startswith("state:")
    assert res["meta"]["num_images"] == 1 and res["results"]["ms-ssim-rgb"] == [None]
    assert "unknown" in res["meta"]["checkpoint_budget"]
    res2 = evaluate_codec(model, [str(one)], [0.013], progress=False, out_dir=tmp_path)
    assert res2["results"]["bpp"] == res["results"]["bpp"]
    assert (tmp_path / "lpm.json").is_file() and (tmp_path / "lpm_per_image.csv").is_file()
    with pytest.raises(ValueError, match="outside"):
        evaluate_codec(model, one, [0.1], progress=False)
    with pytest.raises(FileNotFoundError):
        evaluate_codec(model, [tmp_path / "missing.png"], [0.013], progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        evaluate_codec(model, one, [0.013], progress=False, keep_streams=True)


def test_results_of_format_version_1_are_moved_aside_and_measured_again(setup, first_run, monkeypatch):
    """A per-image CSV written by lpm 0.1 (format version 1 streams, 4 bytes smaller, no lpm_format column)
    is not reused: it is kept as <name>_per_image.format1.csv and every row is measured again."""
    out = setup["root"] / "out_v1"
    out.mkdir()
    fields = [f for f in rd.CSV_FIELDS if f not in ("lpm_format", "image_sha256", "measure")]
    src_rows = _rows(first_run[0] / "tiny_per_image.csv")
    with open(out / "tiny_per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in src_rows:
            w.writerow({k: r[k] for k in fields})
    old_text = (out / "tiny_per_image.csv").read_text()
    calls = []
    real = rd.encode_image
    monkeypatch.setattr(rd, "encode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.warns(UserWarning, match="format version 1"):
        res = evaluate_codec(setup["model"], setup["images"], RATES, checkpoint_info=setup["info"], out_dir=out,
                             name="tiny", dataset_name="toy", progress=False)
    assert len(calls) == 3 * len(RATES)
    assert (out / "tiny_per_image.format1.csv").read_text() == old_text  # nothing lost
    rows = _rows(out / "tiny_per_image.csv")
    assert len(rows) == 3 * len(RATES) and {r["lpm_format"] for r in rows} == {"2"}
    assert res["meta"]["lpm_format"] == 2 and res["results"]["bpp"] == first_run[1]["results"]["bpp"]


def test_per_image_csv_is_never_truncated_or_appended_through_a_link(setup, tmp_path):
    """The per-image CSV is cut back (a torn last row) and appended to: a link planted at its path used to
    have its target cut and written."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\nno newline at the end")
    out = tmp_path / "out"
    out.mkdir()
    (out / "lpm_per_image.csv").symlink_to(victim)
    with pytest.raises(OSError, match="lpm_per_image.csv: is a symbolic link"):
        evaluate_codec(setup["model"], setup["images"] / "a_rgb.png", [0.013], progress=False, out_dir=out)
    assert victim.read_text() == "precious\nno newline at the end"


def test_open_append_refuses_links_and_special_files(tmp_path):
    import os

    from lpm.fsutil import open_append

    with open_append(tmp_path / "log.csv") as f:
        f.write("a,b\n")
    with open_append(tmp_path / "log.csv") as f:
        f.write("1,2\n")
    assert (tmp_path / "log.csv").read_text() == "a,b\n1,2\n"
    (tmp_path / "link.csv").symlink_to(tmp_path / "log.csv")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere.csv")
    for name in ("link.csv", "dangling.csv"):
        with pytest.raises(OSError, match=f"{name}: is a symbolic link"):
            open_append(tmp_path / name)
    assert not (tmp_path / "nowhere.csv").exists()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="fifo"):  # refused at once, not a hang waiting for a reader
        open_append(tmp_path / "fifo")
    with pytest.raises(OSError, match="is a directory|Is a directory"):
        open_append(tmp_path)


def test_rows_are_reused_only_for_the_same_bytes_of_an_image(setup, tmp_path):
    """Per-image rows were keyed on the image's path: a file replaced by another image kept its old numbers."""
    src = setup["images"] / "a_rgb.png"
    img = tmp_path / "img.png"
    img.write_bytes(src.read_bytes())
    first = evaluate_codec(setup["model"], img, [0.013], progress=False, out_dir=tmp_path / "out", name="t")
    assert _rows(tmp_path / "out" / "t_per_image.csv")[0]["image_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(img)  # another image under the same name
    second = evaluate_codec(setup["model"], img, [0.013], progress=False, out_dir=tmp_path / "out", name="t")
    assert second["results"]["bpp"] != first["results"]["bpp"]
    assert second["meta"]["images_sha256"] != first["meta"]["images_sha256"]
    alone = evaluate_codec(setup["model"], img, [0.013], progress=False)
    assert second["results"]["bpp"] == alone["results"]["bpp"]


@pytest.mark.parametrize("missing, tag, what", [
    (("image_sha256", "measure"), "unhashed", r"rows without the sha256 of their images \(lpm 0.2\)"),
    (("measure",), "measure1", r"rows measured on the codec's raw channels \(lpm 0.2"),
])
def test_per_image_csv_of_lpm_0_2_is_moved_aside_and_measured_again(setup, tmp_path, missing, tag, what):
    out = tmp_path / "out"
    out.mkdir()
    old = [f for f in CSV_FIELDS if f not in missing]
    text = ",".join(old) + "\n"
    (out / "t_per_image.csv").write_text(text)
    with pytest.warns(UserWarning, match=what):
        evaluate_codec(setup["model"], setup["images"] / "a_rgb.png", [0.013], progress=False, out_dir=out, name="t")
    assert (out / f"t_per_image.{tag}.csv").read_text() == text
    assert len(_rows(out / "t_per_image.csv")) == 1
