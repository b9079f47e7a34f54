"""Storage and training-data accounting: what one base + prompt modules saves over separate models.

The paper (Qin et al., arXiv:2311.13846) claims in its abstract, against "multiple models, which are optimized
separately for different target rates", "80% savings in parameter storage" and "90% savings in datasets"; how
it counts either is not in the abstract. Our reading: storage is one frozen base plus K − 1 small prompt
modules against K base-sized models; data is the distinct images the prompt modules learn from (a seeded
tenth of the set) against the full set each separate model uses. :func:`parameter_table` / :func:`storage_saving`
count the first from the real tensors; :func:`data_table` / :func:`dataset_saving` count the second from
the budget ledger the training runs write.

Budget ledger
-------------
A ledger is a list of records (``dict``), one per trained model or training stage — the lines of a run's
``ledger.jsonl`` (:mod:`lpm.train.runner` writes them; a checkpoint's ``meta["ledger"]`` holds the same
list). :func:`read_ledger` reads either. Keys:

===============  ======  ============================================================================
key              type    meaning
===============  ======  ============================================================================
``model``        str     which model/stage, e.g. ``"base"``, ``"prompt-0.0035"``, ``"separate-0.0035"``
``rate``         float   the λ it was trained at
``kind``         str     ``"base"`` | ``"prompts"`` | ``"separate"``; optional, else inferred from
                         ``model``'s prefix (``base``, ``prompt``, ``separate``)
``images_in_set`` int    images in the training set the run drew from
``images_seen``  int     **distinct** images this stage drew its crops from (its subset's size)
``crops_seen``   int     training crops processed (steps × batch × processes)
``gpu_minutes``  float   GPU wall minutes × processes spent on the stage
``cpu_minutes``  float   optional: minutes of CPU-only training (counted as compute, not GPU)
``run``          str     optional: the run's name. Stages of one run draw from the *same* seeded subset,
                         so a run's distinct images are the largest ``images_seen`` of its records;
                         different runs are counted as disjoint (an upper bound)
===============  ======  ============================================================================

Further keys (``steps``, ``batch``, ``crop``, ``device``, ``world_size``, …) are kept and ignored.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import pandas as pd
from torch import Tensor

from lpm.models import PromptedCodec, TICCodec

__all__ = [
    "LEDGER_REQUIRED",
    "PAPER_STORAGE_SAVING",
    "PAPER_DATA_SAVING",
    "parameter_table",
    "storage_saving",
    "read_ledger",
    "data_table",
    "dataset_saving",
]

#: Keys every ledger record must have (see the module docstring).
LEDGER_REQUIRED = ("model", "rate", "images_in_set", "images_seen", "crops_seen", "gpu_minutes")
#: The paper's claims, in percent.
PAPER_STORAGE_SAVING = 80.0
PAPER_DATA_SAVING = 90.0

_BASE_PARTS = (
    ("g_a", ("g_a.",)),
    ("g_s", ("g_s.",)),
    ("h_a", ("h_a.",)),
    ("h_s", ("h_s.",)),
    ("entropy_models", ("entropy_bottleneck.", "gaussian_conditional.")),
)
_PROMPT_PARTS = ("encoder", "hyper_decoder", "decoder")

StateLike = Union[Mapping[str, Tensor], str, os.PathLike, None]


# ---------------------------------------------------------------------------------------------- storage
def _load_state(stored: StateLike, model: Union[PromptedCodec, TICCodec]) -> dict[str, Tensor]:
    if stored is None:
        return dict(model.state_dict())
    if isinstance(stored, (str, os.PathLike)):
        from safetensors.torch import load_file

        state = load_file(str(stored))
    else:
        state = dict(stored)
    if isinstance(model, PromptedCodec) and not any(k.startswith(("base.", "prompts.")) for k in state):
        state = {f"base.{k}": v for k, v in state.items()}  # a bare base checkpoint
    return state


def _row(group: str, component: str, rate: Optional[float], params: int, tensors: list[Tensor]) -> dict[str, Any]:
    return {
        "group": group,
        "component": component,
        "rate": rate,
        "params": params,
        "bytes_fp32": 4 * params,
        "stored_numel": sum(t.numel() for t in tensors),
        "bytes_as_stored": sum(t.element_size() * t.numel() for t in tensors),
    }


def parameter_table(model: Union[PromptedCodec, TICCodec], stored: StateLike = None) -> pd.DataFrame:
    """Parameters and bytes per component of the base and of every prompt module, plus a totals row.

    Columns: ``group`` (``"base"``, ``"prompt r<i>"`` or ``"total"``), ``component`` (``g_a``, ``g_s``,
    ``h_a``, ``h_s``, ``entropy_models``; ``encoder``, ``hyper_decoder``, ``decoder``, ``log_gain``;
    ``other`` for anything else), ``rate`` (λ of the prompt module), ``params`` (trainable-parameter
    elements, from the model), ``bytes_fp32`` (4 × params), ``stored_numel`` and ``bytes_as_stored``
    (elements and ``element_size × numel`` of every tensor in the stored state dict under that component,
    buffers such as the entropy coder's CDF tables included, with the dtypes actually stored).

    Args:
        model: the prompted codec (a bare :class:`TICCodec` gives the base rows only).
        stored: what to measure the stored size on: a state dict, or a checkpoint file (safetensors, e.g.
            one saved with ``half=True``). Default: the model's own in-memory state dict.

    The rows other than ``total`` add up to the ``total`` row, which equals the model's parameter count
    and the stored tensors' sizes.
    """
    prompted = isinstance(model, PromptedCodec)
    base: TICCodec = model.base if prompted else model
    prefix = "base." if prompted else ""
    params = {f"{prefix}{n}": p for n, p in base.named_parameters()}
    if prompted:
        params.update({f"prompts.{n}": p for n, p in model.prompts.named_parameters()})
    state = _load_state(stored, model)

    groups: list[tuple[str, str, Optional[float], tuple[str, ...]]] = [
        ("base", part, model.base_rate if prompted else None, tuple(prefix + p for p in prefixes))
        for part, prefixes in _BASE_PARTS
    ]
    if prompted:
        for i, r in enumerate(model.rates):
            key = f"r{i}"
            if key not in model.prompts:
                continue
            parts = list(_PROMPT_PARTS) + (["log_gain"] if model.prompts[key].log_gain is not None else [])
            for part in parts:
                groups.append((f"prompt {key}", part, r, (f"prompts.{key}.{part}",)))

    def match(name: str, prefixes: tuple[str, ...]) -> bool:
        return any(name == p.rstrip(".") or name.startswith(p if p.endswith(".") else p + ".") for p in prefixes)

    rows, used_p, used_s = [], set(), set()
    for group, part, rate, prefixes in groups:
        pn = [n for n in params if match(n, prefixes)]
        sn = [n for n in state if match(n, prefixes)]
        used_p.update(pn)
        used_s.update(sn)
        rows.append(_row(group, part, rate, sum(params[n].numel() for n in pn), [state[n] for n in sn]))
    rest_p = [n for n in params if n not in used_p]
    rest_s = [n for n in state if n not in used_s]
    if rest_p or rest_s:
        rows.append(_row("other", "other", None, sum(params[n].numel() for n in rest_p), [state[n] for n in rest_s]))
    df = pd.DataFrame(rows)
    total = {"group": "total", "component": "total", "rate": None}
    total.update({c: int(df[c].sum()) for c in ("params", "bytes_fp32", "stored_numel", "bytes_as_stored")})
    return pd.concat([df, pd.DataFrame([total])], ignore_index=True)


def storage_saving(model: PromptedCodec) -> dict[str, Any]:
    """Parameters of K separate models (K × base) against ours (base + prompt modules), K = rates.

    Returns ``K``, ``base_params``, ``prompt_params`` (all modules), ``prompt_params_per_module``,
    ``separate_params`` (K × base), ``ours_params``, ``ratio`` (ours / separate), ``saving_percent``
    (100·(1 − ratio)), the fp32 byte counts of both, and ``paper_claim_percent`` (80).
    """
    counts = model.parameter_counts()
    k = len(model.rates)
    base = counts["base"]
    per_module = {key[len("prompt_"):]: v for key, v in counts.items() if key.startswith("prompt_")}
    prompts = sum(per_module.values())
    separate = k * base
    ours = base + prompts
    return {
        "K": k,
        "base_params": base,
        "prompt_params": prompts,
        "prompt_params_per_module": per_module,
        "separate_params": separate,
        "ours_params": ours,
        "separate_bytes_fp32": 4 * separate,
        "ours_bytes_fp32": 4 * ours,
        "ratio": ours / separate,
        "saving_percent": 100.0 * (1.0 - ours / separate),
        "paper_claim_percent": PAPER_STORAGE_SAVING,
    }


# ---------------------------------------------------------------------------------------------- data
def read_ledger(source: Union[str, os.PathLike, Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> list[dict]:
    """A ledger from a ``ledger.jsonl`` file, a checkpoint file (its ``meta["ledger"]``), a checkpoint
    ``info`` dict (from :func:`lpm.train.checkpoint.load_codec`) or a list of records; validated."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".safetensors":
            from lpm.train.checkpoint import read_metadata

            records = json.loads(read_metadata(path).get("meta", "{}")).get("ledger", [])
        else:
            records = []
            for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"{path}: line {n} is not a JSON budget record: {line[:60]!r}") from None
    elif isinstance(source, Mapping):
        records = (source.get("meta") or {}).get("ledger", source.get("ledger", []))
    else:
        records = list(source)
    return [_check_record(r, i) for i, r in enumerate(records)]


def _kind(rec: Mapping[str, Any]) -> str:
    kind = rec.get("kind")
    if kind in ("base", "prompts", "separate"):
        return kind
    if kind == "lora":  # low-rank rate adapters: per-rate modules on a frozen base, trained like prompts
        return "prompts"
    m = str(rec.get("model", "")).lower()
    for prefix, k in (("prompt", "prompts"), ("separate", "separate"), ("base", "base")):
        if m.startswith(prefix):
            return k
    raise ValueError(f"ledger record {dict(rec)} has no kind and its model name does not say it")


def _check_record(rec: Mapping[str, Any], i: int) -> dict[str, Any]:
    if not isinstance(rec, Mapping):
        raise ValueError(f"ledger record {i} is not a dict: {rec!r:.80}")
    missing = [k for k in LEDGER_REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"ledger record {i} lacks {missing} (required: {list(LEDGER_REQUIRED)})")
    out = dict(rec)
    out["kind"] = _kind(rec)
    for k in ("images_in_set", "images_seen", "crops_seen"):
        out[k] = int(rec[k])
    out["rate"] = float(rec["rate"])
    out["gpu_minutes"] = float(rec["gpu_minutes"])
    out["cpu_minutes"] = float(rec.get("cpu_minutes", 0.0) or 0.0)
    if not 0 <= out["images_seen"] <= out["images_in_set"]:
        raise ValueError(f"ledger record {i}: images_seen {out['images_seen']} not in [0, images_in_set]")
    return out


def data_table(ledger: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per ledger record (``kind``, ``model``, ``rate``, ``images_in_set``, ``images_seen``,
    ``data_percent`` = 100·seen/in set, ``crops_seen``, ``gpu_minutes``, ``cpu_minutes``) followed by one
    ``total <kind>`` row per kind (sums; ``images_seen`` there is the kind's *distinct* images, see
    :func:`dataset_saving`)."""
    recs = read_ledger(ledger)
    cols = ["kind", "model", "rate", "images_in_set", "images_seen", "data_percent", "crops_seen", "gpu_minutes",
            "cpu_minutes"]
    rows = []
    for r in recs:
        row = {c: r.get(c) for c in cols}
        row["data_percent"] = 100.0 * r["images_seen"] / r["images_in_set"] if r["images_in_set"] else float("nan")
        rows.append(row)
    for kind in ("base", "prompts", "separate"):
        sel = [r for r in recs if r["kind"] == kind]
        if not sel:
            continue
        distinct = _distinct_images(sel)
        in_set = max(r["images_in_set"] for r in sel)
        rows.append({
            "kind": kind, "model": f"total {kind}", "rate": None, "images_in_set": in_set, "images_seen": distinct,
            "data_percent": 100.0 * distinct / in_set if in_set else float("nan"),
            "crops_seen": sum(r["crops_seen"] for r in sel), "gpu_minutes": sum(r["gpu_minutes"] for r in sel),
            "cpu_minutes": sum(r["cpu_minutes"] for r in sel),
        })
    return pd.DataFrame(rows, columns=cols)


def _distinct_images(records: Sequence[Mapping[str, Any]]) -> int:
    """Distinct images of records: max ``images_seen`` per run (a run shares one subset), summed over runs."""
    per_run: dict[str, int] = defaultdict(int)
    for i, r in enumerate(records):
        run = r.get("run")
        key = str(run) if run is not None else f"#record{i}"  # no run name: every record is its own
        per_run[key] = max(per_run[key], r["images_seen"])
    return sum(per_run.values())


def dataset_saving(ledger: Sequence[Mapping[str, Any]], *, num_rates: Optional[int] = None) -> dict[str, Any]:
    """Training data of the prompt modules against separate models, from a ledger.

    ``prompt_images``: distinct images the prompt modules were trained on. ``separate_images``: distinct
    images of the separate models — from their ledger records when there are any (``separate_source =
    "ledger"``), otherwise the full training set (``images_in_set``), which is how the paper's separate
    models are trained (``separate_source = "assumed: full set"``). ``data_percent`` = 100·prompt /
    separate and ``saving_percent`` = 100 − that (paper: 90). Also per-model image uses (Σ images_seen;
    without separate records: ``num_rates − 1`` models, default as many as prompt records, × the set),
    crops and compute minutes per kind, and the base's own data (it is shared, trained once).
    """
    recs = read_ledger(ledger)
    by = {k: [r for r in recs if r["kind"] == k] for k in ("base", "prompts", "separate")}
    if not by["prompts"]:
        raise ValueError("the ledger has no prompt-module records (kind 'prompts')")
    in_set = max(r["images_in_set"] for r in by["prompts"])
    prompt_images = _distinct_images(by["prompts"])
    n_models = (num_rates - 1) if num_rates is not None else len(by["prompts"])
    if by["separate"]:
        separate_images = _distinct_images(by["separate"])
        separate_uses = sum(r["images_seen"] for r in by["separate"])
        source = "ledger"
    else:
        separate_images = in_set
        separate_uses = n_models * in_set
        source = "assumed: full set"
    frac = prompt_images / separate_images if separate_images else float("nan")

    def minutes(sel: list[dict]) -> float:
        return sum(r["gpu_minutes"] + r["cpu_minutes"] for r in sel)

    return {
        "images_in_set": in_set,
        "prompt_images": prompt_images,
        "separate_images": separate_images,
        "separate_source": source,
        "data_percent": 100.0 * frac,
        "saving_percent": 100.0 * (1.0 - frac),
        "paper_claim_percent": PAPER_DATA_SAVING,
        "prompt_image_uses": sum(r["images_seen"] for r in by["prompts"]),
        "separate_image_uses": separate_uses,
        "prompt_crops": sum(r["crops_seen"] for r in by["prompts"]),
        "separate_crops": sum(r["crops_seen"] for r in by["separate"]) if by["separate"] else None,
        "prompt_minutes": minutes(by["prompts"]),
        "separate_minutes": minutes(by["separate"]) if by["separate"] else None,
        "base_images": _distinct_images(by["base"]) if by["base"] else None,
        "base_minutes": minutes(by["base"]) if by["base"] else None,
        "num_prompt_records": len(by["prompts"]),
        "num_separate_records": len(by["separate"]),
    }
