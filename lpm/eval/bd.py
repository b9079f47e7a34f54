"""Bjøntegaard delta: average rate saving (BD-rate) and quality gain (BD-PSNR) between two RD curves.

G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", ITU-T SG16 Q.6
VCEG-M33, Austin, April 2001. Each curve is a handful of ``(rate, quality)`` points; the two curves
are compared on the quality (for BD-rate) or log-rate (for BD-PSNR) interval that both cover::

    BD-rate:  x = PSNR, y = ln(rate)        BD-PSNR:  x = ln(rate), y = PSNR
              fit y_ref(x), y_test(x) on each curve's points
              [lo, hi] = overlap of the two x ranges
              d = (∫_lo^hi y_test - ∫_lo^hi y_ref) / (hi - lo)     (mean vertical gap)
    BD-rate = (exp(d) - 1) * 100  [%]        BD-PSNR = d  [dB]

Two ways to fit ``y(x)``:

- ``"cubic"``: the original VCEG-M33 method, one least-squares cubic polynomial per curve (needs at
  least 4 points with distinct ``x``), integrated exactly;
- ``"pchip"``: piecewise cubic Hermite interpolation through the points
  (:class:`scipy.interpolate.PchipInterpolator`, needs at least 2 distinct ``x``), integrated exactly
  over the overlap. It passes through every point and never overshoots, so it is the safer choice for
  curves whose points are unevenly spaced; on well-behaved curves the two agree within a point or so.

A negative BD-rate means the test curve needs fewer bits for the same PSNR; a positive BD-PSNR means
the test curve has higher PSNR at the same rate. The natural logarithm is used; the result is the same
with ``log10`` and ``10**d`` as in the original spreadsheet. Points are sorted internally, so their order
does not matter. Rates are any positive unit (bpp here); the ratio is what counts. Each curve must be monotone
(PSNR rising with the rate; a point given twice counts once): a curve that falls somewhere is refused with a
``ValueError`` saying where, since its fit — and so its delta — is not an RD comparison (lpm < 0.3 computed it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.polynomial import Polynomial
from scipy.interpolate import PchipInterpolator

__all__ = ["BD_METHODS", "bd_psnr", "bd_rate"]

#: The fitting methods :func:`bd_rate` and :func:`bd_psnr` accept.
BD_METHODS: tuple[str, ...] = ("cubic", "pchip")

Method = Literal["cubic", "pchip"]
ArrayLike = Sequence[float] | np.ndarray

_MIN_POINTS = {"cubic": 4, "pchip": 2}


def bd_rate(
    ref_bpp: ArrayLike,
    ref_psnr: ArrayLike,
    test_bpp: ArrayLike,
    test_psnr: ArrayLike,
    method: Method = "cubic",
) -> float:
    """Bjøntegaard delta rate of the test curve against the reference curve, in percent.

    ``ln(bpp)`` is fitted as a function of PSNR on each curve (see the module docstring), and the mean
    gap over the PSNR interval both curves cover gives ``(exp(gap) - 1) * 100``. Negative: the test
    codec saves bits; ``-50`` means half the rate at equal PSNR.

    Args:
        ref_bpp, ref_psnr: the reference curve's rates (positive) and PSNRs (dB), equal lengths.
        test_bpp, test_psnr: the test curve's, same rules (the two curves may have different lengths).
        method: ``"cubic"`` (VCEG-M33, >= 4 points per curve) or ``"pchip"`` (>= 2 points).

    Raises:
        ValueError: unknown method; too few points; mismatched lengths; non-finite values; a rate
            that is not positive; repeated PSNR values that leave too few distinct points; or PSNR
            ranges that do not overlap.
    """
    rx, ry, tx, ty = _curves(ref_bpp, ref_psnr, test_bpp, test_psnr, method, on_psnr=True)
    # x = PSNR, y = ln(rate)
    gap = _mean_gap(ry, np.log(rx), ty, np.log(tx), method, what="PSNR", unit="dB")
    return float((np.exp(gap) - 1.0) * 100.0)


def bd_psnr(
    ref_bpp: ArrayLike,
    ref_psnr: ArrayLike,
    test_bpp: ArrayLike,
    test_psnr: ArrayLike,
    method: Method = "cubic",
) -> float:
    """Bjøntegaard delta PSNR of the test curve against the reference curve, in dB.

    PSNR is fitted as a function of ``ln(bpp)`` on each curve, and the result is the mean PSNR gap over
    the log-rate interval both curves cover. Positive: the test codec has higher quality at equal rate.
    Arguments and errors as for :func:`bd_rate` (here the rates must overlap and be distinct).
    """
    rx, ry, tx, ty = _curves(ref_bpp, ref_psnr, test_bpp, test_psnr, method, on_psnr=False)
    # x = ln(rate), y = PSNR
    return float(_mean_gap(np.log(rx), ry, np.log(tx), ty, method, what="log-rate", unit="ln(bpp)"))


def _curves(ref_bpp: ArrayLike, ref_psnr: ArrayLike, test_bpp: ArrayLike, test_psnr: ArrayLike, method: str,
            on_psnr: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both curves validated; no overlap (in PSNR or log-rate, ``on_psnr``) is reported before a curve that is
    not monotone (the more telling reason where both hold); then each curve's distinct points by rising rate."""
    rx, ry = _curve("reference", ref_bpp, ref_psnr, method)
    tx, ty = _curve("test", test_bpp, test_psnr, method)
    if on_psnr:
        _overlap(ry, ty, "PSNR", "dB")
    else:
        _overlap(np.log(rx), np.log(tx), "log-rate", "ln(bpp)")
    return (*_monotone("reference", rx, ry), *_monotone("test", tx, ty))


def _overlap(x_ref: np.ndarray, x_test: np.ndarray, what: str, unit: str) -> tuple[float, float]:
    lo, hi = max(x_ref.min(), x_test.min()), min(x_ref.max(), x_test.max())
    if not hi > lo:
        raise ValueError(
            f"the curves do not overlap in {what}: reference covers [{x_ref.min():.4g}, {x_ref.max():.4g}] "
            f"{unit}, test covers [{x_test.min():.4g}, {x_test.max():.4g}] {unit}; "
            "a Bjøntegaard delta needs a common interval"
        )
    return lo, hi


def _curve(label: str, bpp: ArrayLike, psnr: ArrayLike, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one curve; return ``(bpp, psnr)`` as float64 1-D arrays."""
    if method not in _MIN_POINTS:
        raise ValueError(f"unknown BD method {method!r}; choose one of {BD_METHODS}")
    try:
        r = np.asarray(bpp, dtype=np.float64)
        q = np.asarray(psnr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label} curve: bpp and PSNR must be sequences of numbers ({exc})") from None
    if r.ndim != 1 or q.ndim != 1:
        raise ValueError(f"{label} curve: bpp and PSNR must be 1-D sequences, got shapes {r.shape} and {q.shape}")
    if r.shape != q.shape:
        raise ValueError(f"{label} curve: bpp has {r.size} points but PSNR has {q.size}")
    need = _MIN_POINTS[method]
    if r.size < need:
        raise ValueError(f"{label} curve: method {method!r} needs at least {need} points, got {r.size}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError(f"{label} curve: bpp and PSNR must be finite (no NaN or inf)")
    if np.any(r <= 0):
        raise ValueError(f"{label} curve: bpp must be positive (its logarithm is taken), got min {r.min():g}")
    return r, q


def _monotone(label: str, r: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The curve's distinct points by rising rate; ``ValueError`` unless PSNR rises with the rate along the curve
    (a point given twice is one point): the Bjøntegaard method reads each curve as one rate per quality and back;
    on a curve that falls somewhere, the fit is of noise — PSNR 28, 31, 30, 37 gave +240 %, and the smoke ladders' values swung from −39 % to +4 %
    by dropping one point."""
    pts = sorted(set(zip(r.tolist(), q.tolist())))
    for (b0, p0), (b1, p1) in zip(pts, pts[1:]):
        if not (b1 > b0 and p1 > p0):
            what = "the same bpp twice" if b1 == b0 else ("falls" if p1 < p0 else "stays level")
            raise ValueError(
                f"{label} curve: PSNR does not rise with the rate ({what}: {p0:.6g} dB at {b0:.6g} bpp, {p1:.6g} dB "
                f"at {b1:.6g} bpp); a Bjøntegaard delta needs monotone RD curves"
            )
    return np.array([b for b, _ in pts]), np.array([p for _, p in pts])


def _mean_gap(
    x_ref: np.ndarray,
    y_ref: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    method: str,
    *,
    what: str,
    unit: str,
) -> float:
    """Mean of ``y_test(x) - y_ref(x)`` over the overlap of the two x ranges, each curve fitted by ``method``."""
    lo, hi = _overlap(x_ref, x_test, what, unit)
    area_ref = _integral(x_ref, y_ref, lo, hi, method, "reference", what)
    area_test = _integral(x_test, y_test, lo, hi, method, "test", what)
    return (area_test - area_ref) / (hi - lo)


def _integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str, label: str, what: str) -> float:
    """Integral over ``[lo, hi]`` of the curve through ``(x, y)`` fitted by ``method``."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    distinct = np.unique(x).size
    need = _MIN_POINTS[method]
    if method == "cubic":
        if distinct < need:
            raise ValueError(
                f"{label} curve: a cubic fit needs at least {need} distinct {what} values, got {distinct}"
            )
        # Polynomial.fit maps x onto [-1, 1] before the least-squares fit (well conditioned even at
        # PSNR ~ 40, where x**3 ~ 6e4); the fitted curve is the same as np.polyfit's.
        antiderivative = Polynomial.fit(x, y, deg=3).integ()
        return float(antiderivative(hi) - antiderivative(lo))
    if distinct != x.size:
        raise ValueError(
            f"{label} curve: pchip interpolation needs distinct {what} values; "
            f"{x.size - distinct} repeated value(s) found"
        )
    return float(PchipInterpolator(x, y, extrapolate=False).integrate(lo, hi))
