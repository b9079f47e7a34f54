"""Published rate-distortion points on Kodak, to compare against (see ``lpm/eval/ANCHORS.md``).

``anchors.csv`` (package data) holds one row per published operating point::

    codec, bpp, psnr_rgb, ms_ssim_rgb, source

on the 24 Kodak images, PSNR over RGB averaged per image; ``ms_ssim_rgb`` is empty (NaN) where the
source gives none. ``source`` names the public file each number was read from
(``owner/repo[@commit]:path``): keep it wherever the numbers are shown. Typical use::

    vtm = load_anchors("VTM")
    bd_rate(vtm.bpp, vtm.psnr_rgb, ours_bpp, ours_psnr)   # percent, negative = fewer bits than VTM
"""

from __future__ import annotations

import functools
import io
from importlib import resources

import pandas as pd

__all__ = ["ANCHOR_COLUMNS", "ANCHORS_RESOURCE", "anchor_codecs", "load_anchors"]

#: Columns of the anchors table, in order.
ANCHOR_COLUMNS: tuple[str, ...] = ("codec", "bpp", "psnr_rgb", "ms_ssim_rgb", "source")
#: Name of the package-data file in ``lpm.eval``.
ANCHORS_RESOURCE = "anchors.csv"


@functools.lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    text = resources.files("lpm.eval").joinpath(ANCHORS_RESOURCE).read_text(encoding="utf-8")
    df = pd.read_csv(
        io.StringIO(text),
        dtype={"codec": str, "bpp": float, "psnr_rgb": float, "ms_ssim_rgb": float, "source": str},
    )
    if tuple(df.columns) != ANCHOR_COLUMNS:
        raise RuntimeError(f"{ANCHORS_RESOURCE}: expected columns {ANCHOR_COLUMNS}, found {tuple(df.columns)}")
    return df


def anchor_codecs() -> list[str]:
    """Names of the codecs in the anchors table, in the order they first appear (``VTM`` first)."""
    return list(dict.fromkeys(_table()["codec"]))


def load_anchors(codec: str | None = None) -> pd.DataFrame:
    """The published Kodak RD points: all of them, or one codec's sorted by ``bpp``.

    Returns a fresh :class:`pandas.DataFrame` (safe to modify) with columns :data:`ANCHOR_COLUMNS`
    and a fresh ``0..n-1`` index.

    Args:
        codec: an exact name from :func:`anchor_codecs` (e.g. ``"VTM"``,
            ``"TCM-L (Liu et al. CVPR 2023)"``), or ``None`` for the whole table in file order.

    Raises:
        ValueError: ``codec`` is not in the table (the message lists the known names).
    """
    df = _table()
    if codec is None:
        return df.copy()
    rows = df[df["codec"] == codec]
    if rows.empty:
        raise ValueError(f"no anchor points for codec {codec!r}; known codecs: {', '.join(anchor_codecs())}")
    return rows.sort_values("bpp", kind="stable").reset_index(drop=True)
