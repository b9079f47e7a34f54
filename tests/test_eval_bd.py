"""Bjøntegaard delta (lpm.eval.bd) and the published Kodak anchors (lpm.eval.anchors)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lpm.eval.anchors import ANCHOR_COLUMNS, anchor_codecs, load_anchors
from lpm.eval.bd import BD_METHODS, bd_psnr, bd_rate

SHARED_ANCHORS = Path("/work/shared/anchors/kodak_rd.csv")

# BD-rate against VTM (cubic, PSNR), reference values from the shared anchors README; codec names exactly
# as in anchors.csv.
REFERENCE_BD_RATE = {
    "BPG 8b 444 x265 ycbcr": 22.0,
    "mbt2018-mean": 21.0,
    "mbt2018": 11.0,
    "cheng2020-attn": 6.0,
    "STF (Zou et al. CVPR 2022)": -4.5,
    "elic2022": -7.0,
    "TCM-L (Liu et al. CVPR 2023)": -12.0,
    "SFT variable-rate (Song et al. ICCV 2021)": 17.0,
}


def _curve(codec: str) -> tuple[np.ndarray, np.ndarray]:
    df = load_anchors(codec)
    return df["bpp"].to_numpy(), df["psnr_rgb"].to_numpy()


VTM = _curve("VTM")


# ------------------------------------------------------------------------------------------------ anchors
def test_anchor_table_shape_and_sources():
    df = load_anchors()
    assert tuple(df.columns) == ANCHOR_COLUMNS
    assert len(df) == 190
    assert df["source"].notna().all() and (df["source"].str.len() > 0).all()
    assert (df["bpp"] > 0).all() and df["psnr_rgb"].between(15, 60).all()
    assert anchor_codecs()[0] == "VTM"
    for name in REFERENCE_BD_RATE:
        assert name in anchor_codecs()
    # ms_ssim is given for CompressAI's measurements and absent for the paper-only points
    assert load_anchors("VTM")["ms_ssim_rgb"].notna().all()
    assert load_anchors("elic2022")["ms_ssim_rgb"].isna().all()


@pytest.mark.skipif(not SHARED_ANCHORS.exists(), reason="shared anchor transcription not present")
def test_anchor_csv_is_a_faithful_copy():
    packaged = Path(__file__).resolve().parents[1] / "lpm" / "eval" / "anchors.csv"
    assert packaged.read_bytes() == SHARED_ANCHORS.read_bytes()


def test_load_anchors_one_codec_sorted_and_independent():
    df = load_anchors("JPEG2000")  # listed high-to-low rate in the file
    assert (df["codec"] == "JPEG2000").all()
    assert df["bpp"].is_monotonic_increasing and list(df.index) == list(range(len(df)))
    df.loc[0, "bpp"] = -1.0
    assert load_anchors("JPEG2000")["bpp"].min() > 0  # callers get copies


def test_load_anchors_unknown_codec():
    with pytest.raises(ValueError, match="known codecs: VTM"):
        load_anchors("vtm")  # names are exact


# ------------------------------------------------------------------------------------------------ BD-rate
@pytest.mark.parametrize("codec, expected", sorted(REFERENCE_BD_RATE.items()))
def test_bd_rate_reproduces_reference_values(codec: str, expected: float):
    value = bd_rate(*VTM, *_curve(codec), method="cubic")
    assert value == pytest.approx(expected, abs=1.0), f"{codec}: {value:+.2f} %"


@pytest.mark.parametrize("codec", sorted(REFERENCE_BD_RATE))
def test_pchip_agrees_with_cubic_on_anchors(codec: str):
    cubic = bd_rate(*VTM, *_curve(codec), method="cubic")
    pchip = bd_rate(*VTM, *_curve(codec), method="pchip")
    assert pchip == pytest.approx(cubic, abs=1.5)
    assert bd_psnr(*VTM, *_curve(codec), method="pchip") == pytest.approx(
        bd_psnr(*VTM, *_curve(codec), method="cubic"), abs=0.1
    )


def test_bd_psnr_sign_matches_bd_rate_on_anchors():
    for codec in REFERENCE_BD_RATE:
        r = bd_rate(*VTM, *_curve(codec))
        p = bd_psnr(*VTM, *_curve(codec))
        assert math.copysign(1, r) == -math.copysign(1, p), codec


@pytest.mark.parametrize("method", BD_METHODS)
def test_identical_curves_give_zero(method: str):
    assert bd_rate(*VTM, *VTM, method=method) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(*VTM, *VTM, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", BD_METHODS)
def test_half_the_rate_is_minus_fifty_percent(method: str):
    bpp, q = VTM
    assert bd_rate(bpp, q, bpp / 2, q, method=method) == pytest.approx(-50.0, abs=1e-6)
    assert bd_rate(bpp / 2, q, bpp, q, method=method) == pytest.approx(100.0, abs=1e-6)


@pytest.mark.parametrize("method", BD_METHODS)
def test_one_db_higher_gives_plus_one_db(method: str):
    bpp, q = VTM
    assert bd_psnr(bpp, q, bpp, q + 1.0, method=method) == pytest.approx(1.0, abs=1e-9)
    assert bd_psnr(bpp, q + 1.0, bpp, q, method=method) == pytest.approx(-1.0, abs=1e-9)


def test_exact_on_a_known_analytic_curve():
    # PSNR = 10 log10(bpp) + 40 exactly: a cubic (here linear) fits without error; the test curve needs
    # 10**(-0.1) of the rate for the same PSNR, i.e. -20.57 % at every point.
    bpp = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    q = 10 * np.log10(bpp) + 40
    factor = 10 ** (-0.1)
    expected = (factor - 1) * 100
    for method in BD_METHODS:
        assert bd_rate(bpp, q, bpp * factor, q, method=method) == pytest.approx(expected, abs=1e-9)
        assert bd_psnr(bpp, q, bpp * factor, q, method=method) == pytest.approx(1.0, abs=1e-9)


def test_point_order_does_not_matter():
    rng = np.random.default_rng(0)
    bpp, q = _curve("mbt2018")
    perm = rng.permutation(len(bpp))
    for method in BD_METHODS:
        assert bd_rate(*VTM, bpp[perm], q[perm], method=method) == pytest.approx(
            bd_rate(*VTM, bpp, q, method=method), abs=1e-12
        )


def test_accepts_lists_and_pandas_series():
    df = load_anchors("mbt2018")
    as_lists = bd_rate(list(VTM[0]), list(VTM[1]), df["bpp"].tolist(), df["psnr_rgb"].tolist())
    as_series = bd_rate(*VTM, df["bpp"], df["psnr_rgb"])
    assert isinstance(as_lists, float) and as_lists == pytest.approx(as_series)


# ----------------------------------------------------------------------------------------- input checks
BPP4 = [0.1, 0.2, 0.4, 0.8]
Q4 = [28.0, 31.0, 34.0, 37.0]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((BPP4[:3], Q4[:3], BPP4, Q4), {}, "at least 4 points"),
        ((BPP4[:1], Q4[:1], BPP4, Q4), {"method": "pchip"}, "at least 2 points"),
        ((BPP4, Q4[:3], BPP4, Q4), {}, "bpp has 4 points but PSNR has 3"),
        ((BPP4, Q4, BPP4, [28.0, float("nan"), 34.0, 37.0]), {}, "finite"),
        ((BPP4, Q4, [0.1, 0.2, float("inf"), 0.8], Q4), {}, "finite"),
        ((BPP4, Q4, [0.0, 0.2, 0.4, 0.8], Q4), {}, "positive"),
        ((BPP4, Q4, [-0.1, 0.2, 0.4, 0.8], Q4), {}, "positive"),
        ((BPP4, Q4, BPP4, Q4), {"method": "linear"}, "unknown BD method"),
        ((BPP4, Q4, BPP4, [[28.0, 31.0, 34.0, 37.0]]), {}, "1-D"),
        ((BPP4, Q4, BPP4, ["a", "b", "c", "d"]), {}, "numbers"),
        ((BPP4, Q4, BPP4, [28.0, 28.0, 28.0, 37.0]), {}, "PSNR does not rise with the rate"),
        ((BPP4, Q4, BPP4, [28.0, 28.0, 34.0, 37.0]), {"method": "pchip"}, "PSNR does not rise with the rate"),
        ((BPP4, Q4, BPP4, [28.0, 31.0, 30.0, 37.0]), {}, r"falls: 31 dB at 0.2 bpp, 30 dB at 0.4 bpp"),
        ((BPP4, Q4, BPP4, [28.0, 31.0, 30.0, 37.0]), {"method": "pchip"}, "monotone RD curves"),
        (([0.1, 0.1, 0.4, 0.8], [28.0, 31.0, 34.0, 37.0], BPP4, Q4), {}, "the same bpp twice"),
    ],
)
def test_invalid_inputs_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bd_rate(*args, **kwargs)


def test_no_overlap_raises_with_ranges():
    high = [q + 20 for q in Q4]
    with pytest.raises(ValueError, match=r"do not overlap in PSNR.*reference covers \[28, 37\] dB"):
        bd_rate(BPP4, Q4, BPP4, high)
    with pytest.raises(ValueError, match="do not overlap in log-rate"):
        bd_psnr(BPP4, Q4, [b * 100 for b in BPP4], Q4)
    # touching at a single point is no overlap either
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(BPP4, Q4, BPP4, [37.0, 38.0, 39.0, 40.0], method="pchip")


def test_bd_psnr_validates_too():
    with pytest.raises(ValueError, match="at least 4 points"):
        bd_psnr(BPP4[:3], Q4[:3], BPP4, Q4)
    with pytest.raises(ValueError, match="PSNR does not rise with the rate"):
        bd_psnr(BPP4, Q4, [0.1, 0.1, 0.1, 0.8], Q4)
    with pytest.raises(ValueError, match="monotone"):
        bd_psnr(BPP4, Q4, BPP4, [28.0, 31.0, 30.0, 37.0])


def test_a_point_given_twice_is_one_point():
    assert bd_rate(BPP4, Q4, BPP4 + BPP4[:1], Q4 + Q4[:1], method="pchip") == pytest.approx(0.0, abs=1e-9)


def test_every_published_anchor_curve_is_monotone():
    """The check refuses no published curve: every anchor has a BD-rate against VTM."""
    from lpm.eval import anchor_codecs, load_anchors

    vtm = load_anchors("VTM")
    for name in anchor_codecs():
        a = load_anchors(name)
        bd_rate(vtm["bpp"], vtm["psnr_rgb"], a["bpp"], a["psnr_rgb"])
