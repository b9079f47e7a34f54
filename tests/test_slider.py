"""The rate slider (lpm.slider) without a browser: real-file numbers, cache, preview, target-bpp search, the
headless widget (stale marking while coding, "cached" on a cache hit, the session's RD plot), the static
strip figure, and the rate_slider notebook under papermill (SMOKE parameters) with its record and figure."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch

import lpm.slider as slider_mod
from lpm import fileformat, zoo
from lpm.codec import encode_image
from lpm.data import ImageInfo
from lpm.slider import STALE, RateSlider, center_crop, rd_svg, round_rate

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "rate_slider.ipynb"
H, W, PREVIEW = 96, 144, 64

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def kodak_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photograph-like ``(H, W, 3)`` uint8 image: sky gradient, flat coloured shapes with edges, a
    textured band and sensor noise (fixed seed)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.stack([0.5 + 0.3 * y, 0.6 + 0.2 * y, 0.9 - 0.3 * y], -1)
    for _ in range(6):
        cy, cx, r = rng.random(3)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < (0.05 + 0.2 * r) ** 2
        img[mask] = 0.8 * rng.random(3) + 0.2 * img[mask]
    img += (0.06 * np.sin(40 * x + 25 * y) * (y > 0.6))[..., None]
    img += rng.normal(0, 0.02, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def smoke():
    model, info = zoo.load("tiny-smoke")
    return model, fileformat.model_id_from_sha256(info["sha256"]), info


@pytest.fixture(scope="module")
def image():
    a = kodak_like(H, W)
    return torch.from_numpy(a.transpose(2, 0, 1).copy()).float() / 255.0, ImageInfo(H, W, 3, 8, False)


@pytest.fixture(scope="module")
def rs(smoke, image):
    """One slider shared by the read-only tests (its cache fills up as they run)."""
    model, model_id, info = smoke
    return RateSlider(model, model_id, *image, preview_size=PREVIEW, budget=info["meta"]["budget"], name="tiny-smoke")


def rates_to_check(model) -> list[float]:
    lo, hi = model.rate_range
    mid = math.exp(0.5 * (math.log(model.rates[1]) + math.log(model.rates[2])))  # an interpolated rate
    base_side = math.exp(0.5 * (math.log(model.rates[-2]) + math.log(model.rates[-1])))  # faded-in prompts
    return [lo, model.rates[2], mid, base_side, hi]


def test_code_at_reports_the_real_file(smoke, image, rs):
    model, model_id, _ = smoke
    x, info = image
    for rate in rates_to_check(model):
        res = rs.code_at(rate, full=True)
        assert res["rate"] == round_rate(rate)
        assert res["full"] and (res["height"], res["width"]) == (H, W)
        # the bytes are those of a whole .lpm file made independently at the same rate
        again = fileformat.encode(encode_image(model, model_id, x, info, res["rate"]))
        assert res["bytes"] == len(res["stream"]) == len(again)
        assert res["stream"] == again
        parsed = fileformat.decode(res["stream"])
        assert parsed.header.rate == res["rate"] and parsed.header.model_id == model_id
        assert res["bpp"] == pytest.approx(8.0 * res["bytes"] / (H * W), rel=1e-12)
        assert math.isfinite(res["psnr"]) and 12.0 < res["psnr"] < 60.0
        decoded = imagecodecs.png_decode(res["png_bytes"])
        assert decoded.shape == (H, W, 3) and decoded.dtype == np.uint8
        zoom = imagecodecs.png_decode(res["zoom_png"])
        assert zoom.shape[0] == zoom.shape[1] >= rs.zoom[2]


def test_rate_order_of_the_smoke_checkpoint(smoke, rs):
    """Real bytes over the trained ladder. Measured on this checkpoint (and in the README's Kodak table): the
    prompt-module rates are monotone, but the bare base (0.0483, no prompts) makes a *smaller* file than
    0.025. So the test checks monotonicity over the prompted rates, and that the lowest rate is the smallest
    file of the whole ladder — not monotonicity over the whole ladder, which this checkpoint does not have."""
    model, _, _ = smoke
    sizes = {r: rs.code_at(r, full=True)["bytes"] for r in model.rates}
    prompted = [r for r in model.rates if r != model.base_rate]
    assert [sizes[r] for r in prompted] == sorted(sizes[r] for r in prompted), sizes
    assert sizes[min(model.rates)] == min(sizes.values())
    assert sizes[min(model.rates)] < max(sizes.values())  # the slider really moves the rate


def test_cache_hit_returns_the_same_result_without_coding(smoke, image, monkeypatch):
    model, model_id, _ = smoke
    s = RateSlider(model, model_id, *image, preview_size=PREVIEW)
    calls = []
    real = slider_mod.encode_image

    def counting(*args, **kwargs):
        calls.append(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(slider_mod, "encode_image", counting)
    first = s.code_at(0.01)
    assert len(calls) == 1
    assert s.code_at(0.01) is first
    assert s.code_at(0.0100001) is first  # the same rate after rounding to 4 significant digits
    assert len(calls) == 1
    full = s.code_at(0.01, full=True)  # another entry: the full-resolution image
    assert full is not first and len(calls) == 2
    assert s.code_at(0.01, full=True) is full and len(calls) == 2


def test_preview_and_full_sizes(smoke, image, rs):
    model, model_id, _ = smoke
    preview = rs.code_at(0.005)
    full = rs.code_at(0.005, full=True)
    assert not preview["full"] and full["full"]
    assert max(preview["height"], preview["width"]) == PREVIEW
    assert (preview["height"], preview["width"]) == (round(H * PREVIEW / W), PREVIEW)
    assert (full["height"], full["width"]) == (H, W)
    assert preview["bytes"] < full["bytes"]
    assert imagecodecs.png_decode(preview["png_bytes"]).shape == (preview["height"], preview["width"], 3)
    assert preview["bpp"] == pytest.approx(8.0 * preview["bytes"] / (preview["height"] * preview["width"]))
    # an image no larger than the preview is coded once: "preview" and "full" are the same entry
    small_x, small_info = center_crop(*image, 48, 60)
    small = RateSlider(model, model_id, small_x, small_info, preview_size=PREVIEW)
    assert small.preview_is_full
    assert small.code_at(0.005) is small.code_at(0.005, full=True)
    assert small.code_at(0.005)["full"] and small.code_at(0.005)["height"] == 48


def test_target_bpp_search(smoke, rs):
    model, _, _ = smoke
    lo_bpp = rs.code_at(model.rates[0], full=True)["bpp"]
    hi_bpp = max(rs.code_at(r, full=True)["bpp"] for r in model.rates)
    for target in (lo_bpp + 0.3 * (hi_bpp - lo_bpp), lo_bpp + 0.7 * (hi_bpp - lo_bpp), hi_bpp + 1.0):
        res = rs.find_rate_for_bpp(target)
        assert res["full"] and res["bpp"] <= target
        assert model.rate_range[0] <= res["rate"] <= model.rate_range[1]
        assert res is rs.code_at(res["rate"], full=True)
    # out of reach: the lowest rate, whose size says that the target cannot be met
    res = rs.find_rate_for_bpp(0.5 * lo_bpp)
    assert res["rate"] == model.rates[0] and res["bpp"] > 0.5 * lo_bpp
    with pytest.raises(ValueError):
        rs.find_rate_for_bpp(0.0)


def test_rates_outside_the_range_are_refused(rs):
    lo, hi = rs.rate_range
    for bad in (lo * 0.9, hi * 1.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="outside"):
            rs.code_at(bad)
        with pytest.raises(ValueError, match="outside"):  # also as the initial rate: when built, not shown
            RateSlider(rs.model, rs.model_id, *rs._sources["full"][:2], rate=bad, preview_size=PREVIEW)


def test_widget_builds_headless_and_follows_the_slider(smoke, image):
    import ipywidgets as w

    model, model_id, info = smoke
    s = RateSlider(model, model_id, *image, preview_size=PREVIEW, budget=info["meta"]["budget"], name="tiny-smoke")
    box = s.widget()
    assert isinstance(box, w.VBox) and s.widget() is box
    ui = s._ui
    sl = ui["slider"]
    assert isinstance(sl, w.FloatLogSlider) and isinstance(ui["target"], w.BoundedFloatText)
    assert isinstance(ui["find"], w.Button) and isinstance(ui["image"], w.Image)
    assert sl.min == pytest.approx(math.log10(model.rate_range[0]))
    assert sl.max == pytest.approx(math.log10(model.rate_range[1]))
    assert sl.continuous_update is False and sl.value == pytest.approx(model.base_rate)
    # shown at start: the full image at the base rate, with the real file's numbers
    base = s.code_at(model.base_rate, full=True)
    assert "FULL RESOLUTION" in ui["shown"].value and f"{base['bpp']:.4f}" in ui["shown"].value
    assert f">{base['bytes']}<" in ui["shown"].value and ui["image"].value == base["png_bytes"]
    # the budget string is under the widget
    footer = box.children[-1]
    assert isinstance(footer, w.HTML) and "NOT the paper" in footer.value and "tiny-smoke" in footer.value
    # and its name and kind above it (two sliders side by side must be told apart at a glance)
    header = box.children[1]
    assert "lpm-title" in header._dom_classes and "<b>tiny-smoke</b>" in header.value
    assert "+ latent gain (beyond the paper)" in header.value  # tiny-smoke carries the gain
    plain = RateSlider(zoo.load("tiny-smoke-prompts-only").model, model_id, *image, name="p")
    assert plain._method() == "— prompt modules alone (the paper's method)"
    # moving the slider re-codes and shows the new rate
    sl.value = model.rates[0]
    low = s.code_at(model.rates[0], full=True)
    assert f"{low['bpp']:.4f}" in ui["shown"].value and ui["image"].value == low["png_bytes"]
    # with "full resolution" off, the preview is shown and labelled as such
    ui["full"].value = False
    prev = s.code_at(model.rates[0])
    assert "PREVIEW" in ui["shown"].value and f"{prev['bpp']:.4f}" in ui["shown"].value
    assert ui["image"].value == prev["png_bytes"]
    # the target-bpp button: the slider moves to the found rate, the full image is shown
    ui["target"].value = round(0.5 * (low["bpp"] + base["bpp"]), 3)
    ui["find"].click()
    found = s.find_rate_for_bpp(ui["target"].value)
    assert sl.value == pytest.approx(found["rate"], rel=1e-9) and ui["full"].value is True
    assert "FULL RESOLUTION" in ui["shown"].value and f"{found['bpp']:.4f}" in ui["shown"].value
    assert "≤ target" in ui["status"].value
    assert "coded in" in ui["shown"].value  # coded by the search just now: not presented as a cache hit
    bundle = s._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


def _rd_points(svg: str) -> list[tuple[str, float]]:
    """(class, rate) of each point of the RD plot's SVG."""
    return [(m.group(1), float(m.group(2)))
            for m in re.finditer(r"class='(lpm-rd-point[^']*)' data-rate='([^']+)'", svg)]


def test_widget_marks_stale_says_cached_and_plots_the_session(smoke, image, monkeypatch):
    """While a new rate is coded, the numbers/image/zoom/RD plot on screen carry the stale class (and the
    status names the rate being coded); the class is gone once the (preview) result is shown. Going back to a rate
    says "cached", not a coding time. The RD plot gains one point per new rate, trained rates marked, the
    current one highlighted."""
    model, model_id, _ = smoke
    s = RateSlider(model, model_id, *image, preview_size=PREVIEW, rate=model.rates[1])
    s.widget()
    ui = s._ui
    stale_keys = ("shown", "image", "zoom", "rd")
    assert not any(STALE in ui[k]._dom_classes for k in stale_keys)
    assert "coded in" in ui["shown"].value and "cached" not in ui["shown"].value
    points = _rd_points(ui["rd"].value)
    assert [r for _, r in points] == [model.rates[1]] and "lpm-rd-trained" in points[0][0]
    assert "lpm-rd-current" in points[0][0]

    seen = []  # (stale flags, status) at each real encode
    real = slider_mod.encode_image

    def watching(*args, **kwargs):
        seen.append(([STALE in ui[k]._dom_classes for k in stale_keys], ui["status"].value))
        return real(*args, **kwargs)

    monkeypatch.setattr(slider_mod, "encode_image", watching)
    old_shown = ui["shown"].value
    mid = round_rate(math.sqrt(model.rates[2] * model.rates[3]))  # not a trained rate
    ui["slider"].value = mid
    assert len(seen) == 2  # preview, then full resolution
    assert seen[0][0] == [True] * 4 and f"λ={mid:.4g}" in seen[0][1]
    assert seen[1][0] == [False] * 4  # the preview on screen is of the new rate while the full image codes
    assert "coding the full-resolution image" in seen[1][1]
    assert not any(STALE in ui[k]._dom_classes for k in stale_keys)
    assert ui["shown"].value != old_shown and f">{mid:.4g}<" in ui["shown"].value
    assert "coded in" in ui["shown"].value and ui["status"].value == ""
    points = _rd_points(ui["rd"].value)
    assert [r for _, r in points] == sorted([model.rates[1], mid])
    current = [r for c, r in points if "lpm-rd-current" in c]
    assert current == [mid] and all("lpm-rd-trained" not in c for c, r in points if r == mid)

    # a trained rate: one more point, marked as trained
    ui["slider"].value = model.rates[0]
    points = _rd_points(ui["rd"].value)
    assert len(points) == 3 and len(seen) == 4
    assert [r for c, r in points if "lpm-rd-current" in c] == [model.rates[0]]
    assert {r for c, r in points if "lpm-rd-trained" in c} == {model.rates[0], model.rates[1]}

    # back to a rate already coded: no coding, never marked stale, "cached" instead of a coding time
    changes = []
    ui["shown"].observe(lambda ch: changes.append(ch["new"]), names="_dom_classes")
    ui["slider"].value = mid
    assert len(seen) == 4 and not changes
    assert "cached" in ui["shown"].value and "coded in" not in ui["shown"].value
    assert f">{mid:.4g}<" in ui["shown"].value
    assert len(_rd_points(ui["rd"].value)) == 3
    assert [r for c, r in _rd_points(ui["rd"].value) if "lpm-rd-current" in c] == [mid]

    # the plot follows the kind shown: with the toggle off, the preview's points (just the one coded)
    ui["full"].value = False
    assert "PREVIEW" in ui["shown"].value and "cached" in ui["shown"].value
    assert "(preview)" in ui["rd"].value and len(_rd_points(ui["rd"].value)) == 3

    # layout: the rows wrap, the images can shrink, and the style sheet is in the widget
    assert ui["views"].layout.flex_flow == "row wrap" and ui["image"].layout.max_width == "100%"
    assert ".lpm-stale" in s.widget().children[0].value and "pixelated" in s.widget().children[0].value


def test_an_error_leaves_the_screen_consistent(smoke, image, monkeypatch):
    """A failed move left everything greyed and the slider at the failed rate while the numbers were still
    the previous rate's; a NaN target did the same. Now the status says what failed and what is shown, the
    screen is not greyed, and the slider is back at the rate shown."""
    model, model_id, _ = smoke
    s = RateSlider(model, model_id, *image, preview_size=PREVIEW, rate=model.rates[1])
    s.widget()
    ui = s._ui
    stale_keys = ("shown", "image", "zoom", "rd")
    shown = ui["shown"].value

    def broken(*args, **kwargs):
        raise RuntimeError("simulated encoder failure")

    monkeypatch.setattr(slider_mod, "encode_image", broken)
    ui["slider"].value = model.rates[3]
    assert "simulated encoder failure" in ui["status"].value and f"still showing λ={model.rates[1]:.4g}" in ui["status"].value
    assert not any(STALE in ui[k]._dom_classes for k in stale_keys)
    assert ui["slider"].value == model.rates[1] and ui["shown"].value == shown
    monkeypatch.undo()
    ui["target"].value = float("nan")
    ui["find"].click()
    assert "target bpp must be a positive number" in ui["status"].value
    assert not any(STALE in ui[k]._dom_classes for k in stale_keys) and ui["slider"].value == model.rates[1]
    ui["slider"].value = model.rates[3]  # and it recovers
    assert f">{model.rates[3]:.4g}<" in ui["shown"].value and ui["status"].value == ""


def test_rd_svg_handles_one_and_no_points():
    assert "nothing coded yet" in rd_svg([])
    one = rd_svg([{"rate": 0.01, "bpp": 0.3, "psnr": 28.0, "trained": False}], 0.01)
    assert _rd_points(one) == [("lpm-rd-point lpm-rd-current", 0.01)] and "nan" not in one


def test_strip_uses_the_slider_files_and_plots(smoke, rs):
    from lpm.figures.rate_strip import plot_rate_strip

    model, _, info = smoke
    strip = rs.strip()
    assert [p["rate"] for p in strip["panels"]] == model.rates and all(p["trained"] for p in strip["panels"])
    zy, zx, zs = rs.zoom
    for p in strip["panels"]:
        res = rs.code_at(p["rate"], full=True)  # the same (cached) real file as the slider's
        assert (p["bytes"], p["bpp"], p["psnr"]) == (res["bytes"], res["bpp"], res["psnr"])
        dec = imagecodecs.png_decode(res["png_bytes"])
        assert np.array_equal(p["crop"], dec[zy : zy + zs, zx : zx + zs])
    assert strip["original"].shape == (zs, zs, 3) and (strip["height"], strip["width"]) == (H, W)
    fig = plot_rate_strip(strip, checkpoint="tiny-smoke", budget=info["meta"]["budget"], image="x.png",
                          base_rate=model.base_rate)
    axes = fig.get_axes()
    assert len(axes) == len(model.rates) + 1
    first = strip["panels"][0]
    assert axes[0].get_title() == f"λ = {first['rate']:.4g}\n{first['bpp']:.3f} bpp · {first['psnr']:.2f} dB"
    assert "(base)" in axes[len(model.rates) - 1].get_title() and axes[-1].get_title().startswith("original")
    texts = " ".join(t.get_text() for t in fig.texts) + fig.get_suptitle()
    assert "NOT the paper" in texts and "SMOKE" in texts and "smoke checkpoint, not the paper" in texts


def test_notebook_runs_and_records(tmp_path):
    pm = pytest.importorskip("papermill")
    import nbformat

    data = tmp_path / "data"
    data.mkdir()
    (data / "kodak_like.png").write_bytes(imagecodecs.png_encode(kodak_like(160, 240, seed=1)))
    results = tmp_path / "results"
    pm.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        parameters={"SMOKE": True, "DATA_DIR": str(data), "RESULTS_DIR": str(results)},
        kernel_name="python3",
        progress_bar=False,
        cwd=str(tmp_path),
    )
    rec = json.loads((results / "records" / "rate_slider.json").read_text())
    # the defaults: the paper's method (prompts alone) first, the latent-gain variant beside it, one slider each
    first, entry = zoo.CHECKPOINTS["tiny-smoke-prompts-only"], zoo.CHECKPOINTS["tiny-smoke"]
    assert rec["notebook"] == "rate_slider" and rec["smoke"] is True
    assert rec["checkpoint"]["sha256"] == first.sha256 and "NOT the paper" in rec["checkpoint"]["budget"]
    nums = rec["numbers"]
    assert nums["image"] == "kodak_like.png" and nums["coded_size"] == [128, 192]  # the SMOKE crop
    assert list(nums["checkpoints"]) == ["tiny-smoke-prompts-only", "tiny-smoke"]
    figures_written = {"tiny-smoke-prompts-only": "figures/rate_slider_strip.png",
                       "tiny-smoke": "figures/rate_slider_strip_tiny-smoke.png"}
    for name, want in (("tiny-smoke-prompts-only", first), ("tiny-smoke", entry)):
        ck = nums["checkpoints"][name]
        assert ck["checkpoint_sha256"] == want.sha256 and "NOT the paper" in ck["budget"] == want.budget
        assert ck["lowest"]["rate"] == 0.0018 and ck["highest"]["rate"] == 0.0483
        for end in ("lowest", "highest"):
            assert ck[end]["bpp"] == pytest.approx(8.0 * ck[end]["bytes"] / (128 * 192))
            assert 12.0 < ck[end]["psnr"] < 60.0
        # the static strip: one panel per trained rate, the figure written where the record says
        assert [p["rate"] for p in ck["strip"]] == [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483]
        assert ck["strip"][0] == ck["lowest"] and ck["strip"][-1] == ck["highest"]
        assert ck["strip_figure"] == figures_written[name]
        png = imagecodecs.png_decode((results / ck["strip_figure"]).read_bytes())
        assert png.shape[1] > 3 * png.shape[0] > 300  # a wide strip of panels
    assert ck["lowest"]["bytes"] < ck["highest"]["bytes"]  # the gain variant's rate moves (prompts alone barely)
    # the record's numbers are those code_at gives for the same crop
    model, info = zoo.load("tiny-smoke")
    a = kodak_like(160, 240, seed=1)
    x = torch.from_numpy(a.transpose(2, 0, 1).copy()).float() / 255.0
    x, im = center_crop(x, ImageInfo(160, 240, 3, 8, False), 128, 192)
    s = RateSlider(model, fileformat.model_id_from_sha256(info["sha256"]), x, im)
    assert s.code_at(0.0018, full=True)["bytes"] == ck["lowest"]["bytes"]
    # the widget was displayed
    nb = nbformat.read(str(tmp_path / "executed.ipynb"), as_version=4)
    mimes = [k for c in nb.cells if c.cell_type == "code" for o in c.outputs for k in o.get("data", {})]
    assert "application/vnd.jupyter.widget-view+json" in mimes


def test_committed_notebook_is_clean_and_parameterised():
    import nbformat

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for name in ("CHECKPOINTS", "DATA_DIR", "RESULTS_DIR", "SMOKE", "RECOMPUTE", "IMAGE", "PREVIEW_SIZE"):
        assert f"\n{name} = " in "\n" + code[0].source
    assert all(not c.outputs and c.execution_count is None for c in code)


def test_a_grey_image_is_shown_and_measured_as_lpm_decompress_writes_it(smoke, tmp_path):
    """The slider showed and measured the codec's raw three channels of a grey image (tinted, 0.5 dB under
    what ``lpm eval`` measures on the decoded grey file)."""
    from lpm.data import read_image
    from lpm.eval.rd import _measure

    model, model_id, _ = smoke
    grey = kodak_like(48, 64)[..., 1]
    path = tmp_path / "grey.png"
    path.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(grey)))
    x, info = read_image(path)
    assert info.channels == 1
    s = RateSlider(model, model_id, x, info, preview_size=PREVIEW)
    rate = model.rates[0]
    res = s.code_at(rate, full=True)
    shown = np.asarray(imagecodecs.png_decode(res["png_bytes"])).astype(int)
    assert (shown.max(-1) == shown.min(-1)).all()  # grey, as the decoded file
    row, _ = _measure(model, model_id, path, rate, torch.device("cpu"))
    assert res["psnr"] == pytest.approx(row["psnr_rgb"], abs=1e-9) and res["bytes"] == row["bytes"]


def test_trained_rates_of_many_digits_are_coded_as_trained():
    """Rates were rounded to 4 digits before anything else: a trained λ of more digits was coded as an
    interpolated one (and labelled trained), the top one labelled untrained, and separate models could not
    code their own rates in the slider at all."""
    from lpm.models.baselines import SeparateModels

    torch.manual_seed(0)
    ladder = [0.0018, 0.00932850470332732, 0.048345000000000006]
    sep = SeparateModels({r: zoo.build("tiny", prompted=False) for r in ladder}).eval()
    sep.update(force=True)
    x = torch.rand(3, 32, 32)
    s = RateSlider(sep, "0123456789abcdef", x, ImageInfo(32, 32, 3, 8, False), preview_size=PREVIEW)
    assert [s.code_at(r, full=True)["rate"] for r in ladder] == ladder
    assert all(p["trained"] for p in s.session_points())
    assert s.code_at(0.009329, full=True)["rate"] == ladder[1]  # the slider's 4-digit position of it


def test_the_cache_keeps_the_last_results_and_every_point(smoke, image, monkeypatch):
    """Every coded position kept its decoded PNG, stream and zoom (6 MB each for a 3.5-megapixel photo) for
    the session; now the last CACHE_SIZE do, and the RD plot still has every rate coded."""
    monkeypatch.setattr(slider_mod, "CACHE_SIZE", 2)
    model, model_id, _ = smoke
    s = RateSlider(model, model_id, *image, preview_size=PREVIEW)
    first = s.code_at(model.rates[0])
    for r in model.rates[1:4]:
        s.code_at(r)
    assert len(s._cache) == 2 and not s.is_cached(model.rates[0]) and s.is_cached(model.rates[3])
    assert [p["rate"] for p in s.session_points(False)] == model.rates[:4]
    again = s.code_at(model.rates[0])  # coded again: the same file
    assert again is not first and again["stream"] == first["stream"] and again["psnr"] == first["psnr"]
