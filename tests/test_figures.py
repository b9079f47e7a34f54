"""lpm.figures: output helpers (records, tables, figures), RD curves and the BD-rate table, attention and
bit-allocation plots, savings and the claims table. Small synthetic inputs; the notebook tests run the
whole notebooks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lpm import fileformat
from lpm import figures as F
from lpm.data import EvalImages
from lpm.eval import attention_maps, bit_allocation, load_anchors, storage_saving
from lpm.eval.rd import MEASURE_VERSION

from conftest import make_tiny_base

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _png_ok(path: Path, min_bytes: int = 5_000) -> None:
    """The PNG exists, is not tiny, and is not one flat colour."""
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert arr.shape[0] > 100 and arr.shape[1] > 100
    assert arr.std() > 10  # drawn content, not a blank canvas
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20


def _images(tmp_path: Path, n: int = 1, size=(64, 80)) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        img = np.stack([np.sin(xx / (5 + i)) * 90 + 120, np.cos(yy / 7) * 80 + 120, (xx + yy) / 1.5], -1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        p = tmp_path / f"img{i}.png"
        p.write_bytes(imagecodecs.png_encode(img))
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------ output helpers
def test_markdown_table_formats_and_escapes():
    df = pd.DataFrame({"name": ["a|b", "line\nbreak", None], "x": [1.23456, float("nan"), 3.0], "n": [1, 2, 3]})
    md = F.markdown_table(df, floatfmt={"x": ".2f"})
    lines = md.strip().splitlines()
    assert lines[0] == "| name | x | n |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a\\|b | 1.23 | 1 |"
    assert lines[3] == "| line break |  | 2 |"  # NaN -> empty
    assert lines[4] == "|  | 3.00 | 3 |"  # None -> empty
    assert len(lines) == 5


def test_save_table_writes_csv_and_markdown(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, None]})
    paths = F.save_table(df, "my table", tmp_path, caption="a caption")
    assert paths["csv"] == tmp_path / "tables" / "my_table.csv"
    back = pd.read_csv(paths["csv"])
    assert list(back["a"]) == [1, 2] and back["b"].isna().tolist() == [False, True]
    md = paths["md"].read_text()
    assert md.startswith("| a | b |") and md.rstrip().endswith("a caption")


def test_record_is_strict_json_with_provenance(tmp_path):
    info = {"sha256": "ab" * 32, "meta": {"budget": "3 CPU-minutes"}, "path": "/x/ck.safetensors"}
    imgs = EvalImages((Path("a.png"), Path("b.png")), "myset", None, None)
    nums = {"psnr": np.float32(30.5), "bad": float("nan"), "inf": [1.0, float("inf")], "n": np.int64(3),
            "arr": np.arange(3), "nested": {"x": np.float64("nan")}, "flag": np.bool_(True)}
    path = F.record("nb", nums, tmp_path, checkpoint_info=info, images=imgs, smoke=True)
    assert path == tmp_path / "records" / "nb.json"
    rec = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert rec["smoke"] is True and rec["notebook"] == "nb"
    assert rec["checkpoint"]["sha256"] == "ab" * 32 and rec["checkpoint"]["budget"] == "3 CPU-minutes"
    assert rec["images"] == {"name": "myset", "count": 2, "notice": None}
    n = rec["numbers"]
    assert n["psnr"] == pytest.approx(30.5) and n["bad"] is None and n["inf"] == [1.0, None]
    assert n["n"] == 3 and n["arr"] == [0, 1, 2] and n["nested"]["x"] is None and n["flag"] is True
    assert F.read_record("nb", tmp_path)["numbers"] == n
    assert F.read_record("other", tmp_path) is None


def test_results_dir_given_is_created(tmp_path):
    out = F.results_dir(tmp_path / "deep" / "res")
    assert out.is_dir() and out == (tmp_path / "deep" / "res").resolve()


# ------------------------------------------------------------------------------------------ RD
def _vtm() -> F.Curve:
    df = load_anchors("VTM")
    return F.Curve("VTM", df["bpp"].tolist(), df["psnr_rgb"].tolist(), df["ms_ssim_rgb"].tolist(), "anchor")


def test_continuous_rates(tiny_codec):
    rs = F.continuous_rates(tiny_codec, 4)
    lo, hi = tiny_codec.rate_range
    assert len(rs) == 4 and all(lo < r < hi for r in rs)
    gaps = np.diff(np.log(rs))
    assert np.allclose(gaps, gaps[0])
    assert F.continuous_rates(tiny_codec, 0) == []
    all_rates = F.ours_rates(tiny_codec, 4)
    assert all_rates == sorted(all_rates) and set(tiny_codec.rates) <= set(all_rates)


def test_bd_table_values_reasons_and_separate():
    vtm = _vtm()
    better = F.Curve("better", [b * 0.8 for b in vtm.bpp], vtm.psnr, kind="ours", rates=list(range(8)),
                     trained=[True] * 6 + [False] * 2)
    low = F.Curve("low", [0.2, 0.25, 0.3, 0.35], [20.0, 20.5, 21.0, 21.5], kind="checkpoint")
    sep = F.Curve("sep", vtm.bpp, [p - 0.1 for p in vtm.psnr], kind="separate")
    anchors = F.anchor_curves(["VTM", "TCM-L (Liu et al. CVPR 2023)"], comparable=True)
    df = F.bd_table([better, low, sep], anchors, separate=sep).set_index("curve")
    assert df.loc["better (trained rates)", "points"] == 6
    assert df.loc["better (trained + continuous)", "bd_rate_vs_vtm_percent"] == pytest.approx(-20.0, abs=1e-6)
    assert df.loc["VTM", "bd_rate_vs_vtm_percent"] == 0.0
    assert df.loc["TCM-L (Liu et al. CVPR 2023)", "bd_rate_vs_vtm_percent"] == pytest.approx(-12, abs=1.5)
    assert df.loc["low", "bd_rate_vs_vtm_percent"] is None or math.isnan(df.loc["low", "bd_rate_vs_vtm_percent"])
    assert "not computable" in df.loc["low", "vs_vtm_note"] and "dominated" in df.loc["low", "vs_vtm_note"]
    assert df.loc["sep", "bd_rate_vs_separate_percent"] == 0.0
    assert df.loc["better (trained + continuous)", "bd_rate_vs_separate_percent"] < -20.0
    # not Kodak: the published curves are not comparable with ours
    incomparable = F.anchor_curves(["VTM"], comparable=False)
    df2 = F.bd_table([better], incomparable).set_index("curve")
    assert "not comparable" in df2.loc["better (trained rates)", "vs_vtm_note"]
    assert df2.loc["better (trained rates)", "vs_separate_note"].startswith("no separate")


def test_anchor_sources_table_keeps_sources():
    anchors = F.anchor_curves()
    assert [a.label for a in anchors] == list(F.DEFAULT_ANCHORS)
    df = F.anchor_sources_table(anchors)
    assert df["source"].str.len().min() > 10 and (df["points"] >= 4).all()
    with pytest.raises(ValueError, match="unknown anchor"):
        F.anchor_curves(["no such codec"])


def test_plot_rd_png_pdf(tmp_path):
    vtm = _vtm()
    ours = F.Curve("ours", [0.2, 0.3, 0.45, 0.6], [28.0, 29.5, 31.0, 32.5], [0.9, 0.93, 0.95, 0.96], "ours",
                   rates=[0.002, 0.004, 0.008, 0.016], trained=[True, False, True, True])
    jpeg = F.Curve("JPEG (measured)", [0.3, 0.6, 1.2], [27.0, 30.0, 33.0], [0.85, 0.92, 0.96], "classical")
    anchors = F.anchor_curves(comparable=False)
    assert {F.anchor_group(a.label) for a in anchors} == set(F.ANCHOR_GROUPS)
    for metric in ("psnr", "ms-ssim"):
        fig = F.plot_rd([ours, jpeg], anchors, metric, title="t", footnote="ours = x; budget: y " * 20,
                        anchor_note="not comparable")
        main, zoom, legend = fig.axes  # everything, the zoom on ours, the grouped legend
        labels = [t.get_text() for t in zoom.texts]
        assert labels == ["λ=0.002", "0.004", "λ=0.008", "λ=0.016"]  # every point of ours, in λ order
        assert zoom.get_xlim()[0] < 0.2 and zoom.get_xlim()[1] < 0.7
        leg = legend.get_legend()
        heads = [t.get_text() for t in leg.get_texts() if t.get_fontweight() == "bold"]
        assert heads[0].startswith("measured here") and all(h.startswith("published, ") for h in heads[1:])
        assert len(heads) == 4 and "NOT comparable" in leg.get_title().get_text()
        paths = F.save_figure(fig, f"rd_{metric}", tmp_path)
        _png_ok(paths["png"])
        assert paths["pdf"].stat().st_size > 5_000
        assert paths["png"].stat().st_size < 300_000
    with pytest.raises(ValueError):
        F.plot_rd([vtm], [], "psnr")  # anchors belong in `anchors`
    with pytest.raises(ValueError):
        F.plot_rd([ours], [], "lpips")


def test_classical_curve_cache(tmp_path):
    paths = _images(tmp_path, 2)
    imgs = EvalImages(tuple(paths), "synthetic", None, None)
    logs = []
    c1 = F.classical_curve("jpeg", imgs, tmp_path, smoke=True, log=logs.append)
    assert c1.rates == [10.0, 50.0, 90.0] and c1.kind == "classical"
    assert all(b > 0 for b in c1.bpp) and c1.psnr == sorted(c1.psnr)
    c2 = F.classical_curve("jpeg", imgs, tmp_path, smoke=True, log=logs.append)
    assert "cached" in logs[-1] and c2.bpp == c1.bpp
    cache = tmp_path / "eval" / "classical-jpeg_synthetic_smoke.json"
    assert cache.is_file()
    # measured with another imagecodecs build: the old bytes are not shown again, they are measured again
    rec = json.loads(cache.read_text())
    rec["meta"]["imagecodecs"] = "1999.1.1"
    rec["results"]["bpp"] = [9.0, 9.0, 9.0]
    cache.write_text(json.dumps(rec))
    c3 = F.classical_curve("jpeg", imgs, tmp_path, smoke=True, log=logs.append)
    assert "imagecodecs 1999.1.1" in logs[-2] and "measuring again" in logs[-2] and "measured 3" in logs[-1]
    assert c3.bpp == c1.bpp and json.loads(cache.read_text())["meta"]["imagecodecs"] != "1999.1.1"


def test_separate_models_folder_curve(tmp_path):
    """A folder of per-rate base checkpoints loads as one separate-models curve, cached per file."""
    from lpm.train.checkpoint import save_codec

    folder = tmp_path / "sep-run"
    for i, rate in enumerate((0.0035, 0.013)):
        save_codec(folder / f"model-{rate:g}.safetensors", make_tiny_base(seed=i),
                   meta={"base_rate": rate, "kind": "separate", "budget": "test budget"})
    ck = F.load_checkpoint(str(folder))
    assert ck.separate and ck.label == "sep-run" and len(ck.models) == 2 and ck.budget == "test budget"
    imgs = EvalImages(tuple(_images(tmp_path, 1)), "synthetic", None, None)
    curve = F.checkpoint_curve(ck, imgs, tmp_path / "res", smoke=True, log=lambda s: None)
    assert curve.kind == "separate" and curve.rates == [0.0035, 0.013] and all(curve.trained)
    assert all(b > 0 for b in curve.bpp)
    again = F.checkpoint_curve(ck, imgs, tmp_path / "res", smoke=True, compute=False, log=lambda s: None)
    assert again.bpp == curve.bpp


# ------------------------------------------------------------------------------------------ attention maps
def test_attention_and_bit_allocation_plots(tiny_codec, tmp_path):
    x = torch.rand(3, 64, 96)
    layer, why = F.default_attention_layer(tiny_codec, x)
    assert layer.startswith("g_a.") and why
    rates = list(tiny_codec.rates)
    maps = [attention_maps(tiny_codec, x, r, layer) for r in rates]
    allocs = [bit_allocation(tiny_codec, x, r) for r in rates]
    rows = F.attention_numbers(maps, allocs)
    assert [r["rate"] for r in rows] == rates
    base = rows[rates.index(tiny_codec.base_rate)]
    assert base["mean_prompt_mass"] == 0.0 and base["mean_shift"] < 1e-6
    assert all(r["estimated_bpp"] > 0 and r["real_bpp"] > 0 for r in rows)
    assert any(r["mean_prompt_mass"] > 0 for r in rows)
    fig = F.plot_attention(x, maps, base_rate=tiny_codec.base_rate, title="a", footnote="budget")
    _png_ok(F.save_figure(fig, "att", tmp_path)["png"])
    fig = F.plot_bit_allocation(x, allocs, base_rate=tiny_codec.base_rate, title="b", footnote="budget")
    _png_ok(F.save_figure(fig, "bits", tmp_path)["png"])


# ------------------------------------------------------------------------------------------ savings
def test_storage_summary_matches_storage_saving(tiny_codec):
    df = F.storage_summary({"tiny": tiny_codec})
    s = storage_saving(tiny_codec)
    assert df["saving_percent"][0] == s["saving_percent"]
    assert df["ours_params"][0] == s["ours_params"] and df["separate_params"][0] == s["separate_params"]


def _ledger():
    return [
        {"model": "base", "rate": 0.0483, "images_in_set": 300, "images_seen": 300, "crops_seen": 1000,
         "gpu_minutes": 10.0, "run": "b"},
        *({"model": f"prompt-{r}", "rate": r, "images_in_set": 300, "images_seen": 30, "crops_seen": 100,
           "gpu_minutes": 1.0, "run": "p"} for r in (0.0018, 0.0035)),
    ]


def test_training_data_rebuilt_from_meta():
    budget = "smoke checkpoint: base 100 steps x 4 crops of 64px on 50 BSDS500 images (2.0 min); prompts 10 steps/rate"
    info = {"rates": "[0.001, 0.01, 0.1]", "base_rate": 0.1,
            "meta": {"budget": budget, "prompt_images": ["a", "b", "c", "d", "e"], "base_steps": 100,
                     "prompt_steps_per_rate": 10, "batch": 4, "cpu_minutes": 3.0}}
    ledger = F.ledger_from_meta(info)
    assert [r["kind"] for r in ledger] == ["base", "prompts", "prompts"]
    assert ledger[0]["images_seen"] == 50 and ledger[0]["crops_seen"] == 400 and ledger[0]["cpu_minutes"] == 2.0
    assert ledger[1]["images_seen"] == 5 and ledger[1]["crops_seen"] == 40 and ledger[1]["cpu_minutes"] == 0.5
    df, saving, note = F.training_data(info, num_rates=3)
    assert saving["saving_percent"] == pytest.approx(90.0) and saving["source"] == "checkpoint meta (no ledger)"
    assert saving["budget_label"] == "smoke budget" and note.startswith("smoke budget") and "assumed" in note
    assert "total prompts" in set(df["model"])
    # a budget string that does not say the base's image count: nothing is invented
    assert F.ledger_from_meta({**info, "meta": {**info["meta"], "budget": "b"}}) is None


def test_training_data_with_and_without_ledger(tiny_codec, tmp_path):
    df, saving, note = F.training_data({"meta": {"budget": "b", "prompt_images": ["a"] * 3}})
    assert saving is None and "no budget ledger" in note and "3 prompt-training images" in df["unledgered_meta"][0]
    df, saving, note = F.training_data({"meta": {"ledger": _ledger()}}, num_rates=3)
    assert saving["saving_percent"] == pytest.approx(90.0) and "ledger" in note
    assert "total prompts" in set(df["model"])
    summ = F.storage_summary({"tiny": tiny_codec})
    for s, n in ((saving, note), (None, "no ledger")):
        fig = F.plot_savings(summ, s, n, title="s", footnote="budget")
        _png_ok(F.save_figure(fig, f"sav_{s is None}", tmp_path)["png"])


# ------------------------------------------------------------------------------------------ claims
def _fake_kodak_context(tmp_path: Path, ours_bpp, ours_psnr) -> F.Context:
    """A context over 24 fake 'kodak' images whose evaluation cache holds the given curve for tiny-smoke."""
    ck = F.load_checkpoint("tiny-smoke")
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i in range(1, 25):  # the cache is of these bytes (its images_sha256)
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(tmp_path / f"kodim{i:02d}.png")
    imgs = EvalImages(tuple(tmp_path / f"kodim{i:02d}.png" for i in range(1, 25)), "kodak", None, None)
    ctx = F.Context([ck], imgs, tmp_path, smoke=False)
    path = F.eval_cache_path(tmp_path, ck.label, imgs, False)
    path.parent.mkdir(parents=True, exist_ok=True)
    rates = list(ck.model.rates)
    path.write_text(json.dumps({"name": path.stem, "results": {"bpp": ours_bpp, "psnr-rgb": ours_psnr,
                                                                 "ms-ssim-rgb": [None] * 6, "rate": rates},
                                "meta": {"checkpoint_sha256": ck.info["sha256"], "dataset": "kodak", "num_images": 24,
                                         "lpm_format": fileformat.FORMAT_VERSION, "images_sha256": imgs.sha256,
                                         "measure": MEASURE_VERSION}}))
    return ctx


def test_claims_table_verdicts(tmp_path):
    tcm = load_anchors("TCM-L (Liu et al. CVPR 2023)")
    good = _fake_kodak_context(tmp_path / "good", (tcm["bpp"] * 0.95).tolist(), tcm["psnr_rgb"].tolist())
    t = F.claims_table(good).set_index("claim")
    assert t.loc["better RD than all variable-rate methods", "verdict"] == "supported"
    assert t.loc["RD approaching SOTA fixed-rate codecs", "verdict"] == "supported"
    assert t.loc["80 % less parameter storage (paper-size architecture, N=128/M=192, 6 rates)", "verdict"] == "supported"
    storage = t.loc["80 % less parameter storage than separate models (this checkpoint)"]
    assert storage["value"] == pytest.approx(storage_saving(good.model)["saving_percent"])
    data = t.loc["90 % less training data than separate models"]  # from the smoke checkpoint's ledger
    assert data["verdict"].startswith("supported: as an image count only, at the smoke budget")
    assert data["value"] == pytest.approx(90.0) and "ledger" in data["measurement"]
    assert t.loc["same RD as separately optimised models", "verdict"].startswith("not measurable yet")
    assert (t["budget"].str.len() > 0).all()

    weak = _fake_kodak_context(tmp_path / "weak", [0.2, 0.22, 0.24, 0.26, 0.28, 0.3], [23.0, 23.1, 23.2, 23.3, 23.4, 23.5])
    t = F.claims_table(weak).set_index("claim")
    for claim in ("better RD than all variable-rate methods", "RD approaching SOTA fixed-rate codecs"):
        assert t.loc[claim, "verdict"].startswith("not supported"), t.loc[claim, "verdict"]
        assert "n/a" in t.loc[claim, "measurement"]

    # no cache -> not measurable
    ctx = F.Context(weak.checkpoints, weak.images, tmp_path / "empty", smoke=False)
    t = F.claims_table(ctx).set_index("claim")
    assert "no evaluation cache" in t.loc["better RD than all variable-rate methods", "verdict"]


def test_range_claim_verdicts():
    """The range claim: a bpp that does not rise with λ fails; a rising one waits for separate models, then
    passes with ≥ 80 % of their log-bpp span and fails below; continuous (untrained) points do not count."""
    from lpm.figures.claims import RANGE_CLAIM, range_row
    from lpm.figures.curves import Curve

    rates = [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483]
    sep = Curve("sep", [0.1, 0.15, 0.23, 0.35, 0.52, 0.8], [0.0] * 6, kind="separate", rates=rates)
    flat = Curve("ours", [0.20, 0.204, 0.203, 0.205, 0.202, 0.203], [0.0] * 6, rates=rates)
    r = range_row(flat, sep, "b")
    assert r["claim"] == RANGE_CLAIM and r["verdict"].startswith("not supported (at this budget)")
    assert "3 of 5 steps" in r["measurement"] and r["value"] == pytest.approx(0.205 / 0.20)
    wide = Curve("ours", [0.11, 0.16, 0.24, 0.36, 0.5, 0.75], [0.0] * 6, rates=rates)
    assert range_row(wide, sep, "b")["verdict"] == "supported"
    assert range_row(wide, None, "b")["verdict"].startswith("not measurable yet: no separately optimised")
    narrow = Curve("ours", [0.2, 0.22, 0.24, 0.26, 0.28, 0.3], [0.0] * 6, rates=rates)
    v = range_row(narrow, sep, "b")["verdict"]
    assert v.startswith("not supported: ") and "of the separate models' span" in v
    # a continuous point that breaks monotonicity is not a trained rate: it does not count
    rates_c = sorted(rates + [0.004])
    bpp_c = [0.11, 0.16, 0.05, 0.24, 0.36, 0.5, 0.75]
    with_cont = Curve("ours", bpp_c, [0.0] * 7, rates=rates_c, trained=[r != 0.004 for r in rates_c])
    assert range_row(with_cont, sep, "b")["verdict"] == "supported"
    assert range_row(None, sep, "b", "no cache")["verdict"] == "not measurable yet: no cache"


def test_eval_cache_is_of_the_images_content_not_their_folder_name(tmp_path):
    """The cache was keyed on the folder's name and image count: another folder called 'photos' with as many
    images got the first one's RD numbers."""
    from lpm.figures.curves import _cached_codec_results

    ck = F.load_checkpoint("tiny-smoke")
    sets = []
    for tag, colour in (("A", (200, 10, 10)), ("B", (10, 200, 10))):
        folder = tmp_path / tag / "photos"
        folder.mkdir(parents=True)
        Image.new("RGB", (8, 8), colour).save(folder / "p.png")
        sets.append(EvalImages((folder / "p.png",), "photos", None, None))
    a, b = sets
    path = F.eval_cache_path(tmp_path / "res", ck.label, a, False)
    assert path == F.eval_cache_path(tmp_path / "res", ck.label, b, False)  # one file for both: its meta decides
    path.parent.mkdir(parents=True)
    rates = list(ck.model.rates)
    path.write_text(json.dumps({"name": path.stem, "results": {"bpp": [0.1] * 6, "psnr-rgb": [30.0] * 6,
                                                                 "ms-ssim-rgb": [None] * 6, "rate": rates},
                                "meta": {"checkpoint_sha256": ck.info["sha256"], "dataset": "photos", "num_images": 1,
                                         "lpm_format": fileformat.FORMAT_VERSION, "images_sha256": a.sha256,
                                         "measure": MEASURE_VERSION}}))
    assert _cached_codec_results(path, ck.info, a, None) is not None
    assert _cached_codec_results(path, ck.info, b, None) is None


def test_claims_compare_spans_over_the_shared_ladder_and_print_the_side_of_the_threshold():
    """The range row compared ours over 6 λ with separate models over 2 ('same λ ladder', unchecked), and
    rounding printed 80 % beside 'not supported' for a ≥ 80 % criterion (79.65 %), +10.0 % for +10.04 %."""
    from lpm.figures.claims import APPROACH_BD_RATE, _verdict_from_bd, range_row

    rates = [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483]
    ours = F.Curve("ours", [0.10, 0.11, 0.12, 0.13, 0.14, 0.15], [30 + i for i in range(6)], kind="ours",
                   rates=rates, trained=[True] * 6)
    pair = F.Curve("separate", [0.14, 0.15], [30, 31], kind="separate", rates=[0.025, 0.0483], trained=[True] * 2)
    r = range_row(ours, pair, "b")
    assert "the 2 λ both were trained at" in r["measurement"] and r["value"] == pytest.approx(0.15 / 0.14)
    lone = F.Curve("separate", [0.2], [31], kind="separate", rates=[0.0483], trained=[True])
    assert range_row(ours, lone, "b")["verdict"].startswith("not measurable yet")
    sep = F.Curve("separate", [0.1 * 2 ** (i / 5) for i in range(6)], [30 + i for i in range(6)], kind="separate",
                  rates=rates, trained=[True] * 6)
    near = F.Curve("ours", [0.1 * 2 ** (0.7965 * i / 5) for i in range(6)], [30 + i for i in range(6)], kind="ours",
                   rates=rates, trained=[True] * 6)
    assert range_row(near, sep, "b")["verdict"] == "not supported: 79.7 % of the separate models' span"
    text, verdict = _verdict_from_bd({"TCM-L": (10.04, "ok", False)}, lambda v: v <= APPROACH_BD_RATE)
    assert "+10.04 %" in text and verdict.startswith("not supported")
    text, verdict = _verdict_from_bd({"SFT": (-0.04, "ok", False)}, lambda v: v < 0.0)
    assert "-0.04 %" in text and verdict == "supported"  # not "-0.0 %" beside "< 0"


def test_map_figures_take_tensors_channels_first_and_refuse_nothing_to_show():
    """A (3, 2, 3) tensor (an image 2 high, 3 wide) was drawn as 3 high and 2 wide; empty map lists failed with
    IndexError / max() of an empty sequence; an empty curve broke the BD table."""
    from lpm.figures.plots import _image_hwc

    t = torch.rand(3, 2, 3)
    assert np.allclose(_image_hwc(t), t.permute(1, 2, 0).numpy())
    assert _image_hwc(torch.rand(3, 300, 1)).shape == (300, 1, 3)
    assert _image_hwc(np.zeros((2, 3, 3))).shape == (2, 3, 3)  # an (H, W, 3) array stays as it is
    with pytest.raises(ValueError, match="at least one rate"):
        F.plot_attention(t, [])
    with pytest.raises(ValueError, match="at least one rate"):
        F.plot_bit_allocation(t, [])
    empty = F.Curve("nothing", [], [], kind="classical")
    row = F.bd_table([empty], [])
    assert row["vs_vtm_note"][0].startswith("not")


def _cache(results_dir: Path, label: str, info: dict, imgs: EvalImages, rates, bpp, psnr) -> None:
    path = F.eval_cache_path(results_dir, label, imgs, False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": path.stem, "results": {"bpp": list(bpp), "psnr-rgb": list(psnr),
                                                                 "ms-ssim-rgb": [None] * len(rates), "rate": list(rates)},
                                "meta": {"checkpoint_sha256": info["sha256"], "dataset": imgs.name,
                                         "num_images": len(imgs.paths), "lpm_format": fileformat.FORMAT_VERSION,
                                         "images_sha256": imgs.sha256, "measure": MEASURE_VERSION}}))


def test_same_rd_claim_judges_the_trained_ladder_over_the_shared_psnr_range(tmp_path):
    """The "same RD" row took rd_curves' continuous rates into the BD-rate on images other than all of Kodak (on
    Kodak only the trained ones), and called a ladder sitting on the separate curve over a sliver of its PSNR
    range "supported" (BD-rate ≈ 0 there says nothing about the ladder)."""
    from lpm.eval import bd_rate
    from lpm.train.checkpoint import save_codec

    ck = F.load_checkpoint("tiny-smoke")
    trained = sorted(float(r) for r in ck.model.rates)
    folder = tmp_path / "sep-run"
    for i, rate in enumerate(trained):
        save_codec(folder / f"model-{rate:g}.safetensors", make_tiny_base(seed=i),
                   meta={"base_rate": rate, "kind": "separate", "budget": "test budget"})
    sep = F.load_checkpoint(str(folder))
    for i in range(2):
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(tmp_path / f"img{i}.png")
    imgs = EvalImages(tuple(tmp_path / f"img{i}.png" for i in range(2)), "synthetic", None, None)
    sep_bpp = [0.1 * 1.5 ** i for i in range(len(trained))]
    sep_psnr = [26.0 + 1.5 * i for i in range(len(trained))]
    for (model, info), rate, b, q in zip(sep.models, trained, sep_bpp, sep_psnr):
        _cache(tmp_path / "res", f"{sep.label}_{Path(info['path']).stem}", info, imgs, [rate], [b], [q])
    claim = "same RD as separately optimised models"

    # ours: 3 % more bits at every trained rate, and one continuous rate in between that dips
    mid = math.sqrt(trained[1] * trained[2])
    rates = trained[:2] + [mid] + trained[2:]
    bpp = [1.03 * b for b in sep_bpp[:2]] + [0.17] + [1.03 * b for b in sep_bpp[2:]]
    psnr = sep_psnr[:2] + [25.0] + sep_psnr[2:]
    _cache(tmp_path / "res", ck.label, ck.info, imgs, rates, bpp, psnr)
    row = F.claims_table(F.Context([ck, sep], imgs, tmp_path / "res", smoke=False)).set_index("claim").loc[claim]
    want = bd_rate(sep_bpp, sep_psnr, [1.03 * b for b in sep_bpp], sep_psnr)
    assert row["value"] == pytest.approx(want) and want == pytest.approx(3.0, abs=0.01)
    assert row["verdict"] == "supported" and "over 100 % of the separate models' PSNR range" in row["measurement"]

    # ours over a sliver: every trained point within ±1 % of the separate curve's third point, on that curve
    near = [sep_bpp[2] * (1 + 0.004 * k) for k in range(-3, len(trained) - 3)]
    near_q = [sep_psnr[2] + 1.5 * math.log(b / sep_bpp[2]) / math.log(1.5) for b in near]
    _cache(tmp_path / "res", ck.label, ck.info, imgs, trained, near, near_q)
    row = F.claims_table(F.Context([ck, sep], imgs, tmp_path / "res", smoke=False)).set_index("claim").loc[claim]
    assert row["verdict"].startswith("not measurable yet: the curves share 1 % of the separate models' PSNR range")
    assert row["value"] == pytest.approx(0.0, abs=0.1)  # over the sliver the BD-rate would have passed the criterion


def test_rd_claims_against_a_reference_count_only_over_most_of_our_psnr_range():
    """The RD rows against published anchors took a BD-rate over any overlap: a ladder of which only its top
    sliver reached the anchor's PSNR range got a verdict from that sliver."""
    from lpm.figures.claims import RANGE_SHARE, _judged_bd, _verdict_from_bd

    ref = F.Curve("ref", [0.1 * 1.5 ** i for i in range(6)], [28.0 + 1.5 * i for i in range(6)], kind="anchor")
    inside = F.Curve("ours", [0.2, 0.3, 0.45, 0.65], [29.0, 30.2, 31.4, 32.6])  # inside the reference's range
    v, why, dominated = _judged_bd(ref, inside)
    assert v is not None and why == "ok"
    # a ladder below the reference's PSNR range, not beaten by it: only its top 0.2 dB of 3.6 dB overlaps (6 %)
    low = F.Curve("ours", [0.02, 0.03, 0.045, 0.065], [24.6, 25.8, 27.0, 28.2])
    v, why, dominated = _judged_bd(ref, low)
    assert not dominated and v is None and f"over only 6 % of our PSNR range, < {100 * RANGE_SHARE:g} %" in why
    text, verdict = _verdict_from_bd({"ref": (v, why, dominated)}, lambda x: x < 0)
    assert verdict == "not measurable yet: no BD-rate against ref" and "over only 6 %" in text
