"""Figures, tables and records for the notebooks (the notebooks stay thin: they call this package).

Every notebook follows the same pattern (see ``docs/DESIGN.md`` of the shared docs)::

    ctx = figures.setup(CHECKPOINTS, DATA_DIR, RESULTS_DIR, SMOKE)    # ours, eval images, output folder
    ...compute or load cached numbers (lpm.eval), build a figure/table here...
    figures.save_figure(fig, "rd_psnr", ctx.results_dir)               # figures/<name>.png + .pdf
    figures.save_table(df, "bd_rates", ctx.results_dir)                # tables/<name>.csv + .md
    figures.record("rd_curves", numbers, ctx.results_dir, context=ctx) # records/<notebook>.json

Where what goes (one job per module; every public name is re-exported here, so ``figures.setup`` and
``from lpm import figures as F`` keep working):

===================================  ====================================================================
:mod:`lpm.figures.context`           notebook set-up: :func:`setup` → :class:`Context` (checkpoints, eval
                                     images, output folder, footnotes); writing outputs: :func:`save_figure`,
                                     :func:`save_table`, :func:`markdown_table`, :func:`record`,
                                     :func:`read_record`, :func:`show`, :func:`results_dir`
:mod:`lpm.figures.curves`            RD curves: :class:`Curve`, cached curves of checkpoints
                                     (:func:`checkpoint_curve`), classical codecs measured live, the
                                     published anchors and their groups
:mod:`lpm.figures.tables`            tables and the numbers behind them: BD-rate table, anchor sources, a
                                     curve's points, attention-map numbers, storage and training data
:mod:`lpm.figures.claims`            the claims table and its verdict thresholds
:mod:`lpm.figures.plots`             plotting only: RD (with a zoom on ours and a legend grouped by
                                     family), attention, bit allocation, savings
:mod:`lpm.figures.rate_strip`        plotting only: the rate slider's static strip (imported from there)
===================================  ====================================================================

Outputs under ``results_dir``: ``figures/``, ``tables/``, ``records/`` and the evaluation cache ``eval/``
(CompressAI-format JSON written by :func:`lpm.eval.evaluate_codec` / :func:`lpm.eval.save_results_json`).
The committed ``results/`` holds the 24 Kodak images' results only: without a ``RESULTS_DIR``, a smoke run
writes to ``results/cache/smoke/`` (its evaluation cache under names ending in ``_smoke``) and any other
images to ``results/cache/<images>/`` (e.g. ``sample-photos``), see :func:`results_dir`. ``DATA_DIR`` and
``RESULTS_DIR`` given as relative paths are resolved against the project root (:func:`setup`).

Every figure names the checkpoint ("ours") and its training budget (``info["meta"]["budget"]``) in a
footnote; figures and tables of published numbers keep their ``source``.
"""

from __future__ import annotations

import os
import sys

import matplotlib

if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # not interactive: render to files only

from lpm.figures.context import (  # noqa: E402
    KODAK_COUNT, Checkpoint, Context, PathLike, bool_param, checkpoint_params, checkpoint_spec, choice_param, classical_names, clean_numbers,
    index_params, int_param, load_checkpoint, markdown_table, rate_params, read_record, record,
    results_dir, save_figure, save_table, setup, show,
)
from lpm.figures.curves import (  # noqa: E402
    ANCHOR_GROUPS, DEFAULT_ANCHORS, FIXED_RATE_SOTA, VARIABLE_RATE_ANCHORS, Curve, anchor_curves, anchor_group,
    checkpoint_curve, classical_curve, classical_curves, codec_results, continuous_rates, eval_cache_path, ours_rates,
)
from lpm.figures.tables import (  # noqa: E402
    anchor_sources_table, attention_numbers, bd_against, bd_table, curve_table, default_attention_layer,
    ledger_from_meta, storage_summary, training_data,
)
from lpm.figures.claims import (  # noqa: E402
    APPROACH_BD_RATE, DATA_TOLERANCE, SAME_RD_BD_RATE, STORAGE_TOLERANCE, claims_table,
)
from lpm.figures.plots import ANCHOR_STYLE, plot_attention, plot_bit_allocation, plot_rd, plot_savings  # noqa: E402
from lpm.staging import published_path  # noqa: E402

__all__ = [
    "ANCHOR_GROUPS",
    "ANCHOR_STYLE",
    "APPROACH_BD_RATE",
    "Checkpoint",
    "Context",
    "Curve",
    "DATA_TOLERANCE",
    "DEFAULT_ANCHORS",
    "FIXED_RATE_SOTA",
    "KODAK_COUNT",
    "PathLike",
    "SAME_RD_BD_RATE",
    "STORAGE_TOLERANCE",
    "VARIABLE_RATE_ANCHORS",
    "anchor_curves",
    "anchor_group",
    "anchor_sources_table",
    "attention_numbers",
    "bd_against",
    "bd_table",
    "bool_param",
    "checkpoint_curve",
    "checkpoint_params",
    "checkpoint_spec",
    "choice_param",
    "classical_names",
    "claims_table",
    "classical_curve",
    "classical_curves",
    "clean_numbers",
    "codec_results",
    "continuous_rates",
    "curve_table",
    "default_attention_layer",
    "eval_cache_path",
    "ledger_from_meta",
    "index_params",
    "int_param",
    "load_checkpoint",
    "markdown_table",
    "ours_rates",
    "plot_attention",
    "plot_bit_allocation",
    "plot_rd",
    "plot_savings",
    "rate_params",
    "read_record",
    "record",
    "results_dir",
    "save_figure",
    "published_path",
    "save_table",
    "setup",
    "show",
    "storage_summary",
    "training_data",
]
