"""Notebook context and outputs: what every notebook starts from and where what it makes is written.

:func:`setup` loads the checkpoints (:class:`Checkpoint`; the first is ours), resolves the eval images
(:func:`lpm.data.resolve_eval_images`) and picks the output folder (:func:`results_dir`); the
:class:`Context` it returns carries them and writes the footnote every figure gets (checkpoint, training
budget, images). :func:`save_figure`, :func:`save_table` (with :func:`markdown_table`), :func:`record` /
:func:`read_record` and :func:`show` write or display what a notebook made.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lpm.fsutil import atomic_write, atomic_write_text
from lpm.jsonio import strict_json, write_json
from lpm.staging import output_folder, staged_record

PathLike = Union[str, os.PathLike]

#: Kodak has 24 images; the published anchors are means over all of them.
KODAK_COUNT = 24


# =========================================================================================== output helpers
def _full_kodak(images: Any) -> bool:
    return images.name == "kodak" and len(images.paths) == KODAK_COUNT


def results_dir(RESULTS_DIR: Optional[PathLike] = None, smoke: bool = False, images: Any = None) -> Path:
    """The output folder (created if missing). The committed results in ``<project>/results`` hold Kodak
    numbers only, so anything else goes to ``results/cache/`` (git-ignored) unless ``RESULTS_DIR`` says where:

    * ``RESULTS_DIR`` if given; a relative path is resolved against the project root (not the current
      directory, which is ``notebooks/`` in a notebook kernel) — except that naming the committed
      ``results/`` itself for a smoke run or for images that are not the 24 Kodak images gives the
      folder below instead, with a warning: figures, tables and records there come from Kodak only;
    * else ``results/cache/smoke`` for a smoke run;
    * else ``results/cache/<images>/`` when ``images`` (:class:`lpm.data.EvalImages`) are not the 24 Kodak
      images — e.g. ``results/cache/sample-photos/`` for the fallback photographs, ``results/cache/<folder>/``
      for a folder of your own images;
    * else ``results/``.
    """
    from lpm.paths import PROJECT_ROOT

    committed = (PROJECT_ROOT / "results").resolve()
    not_kodak = smoke or (images is not None and not isinstance(images, str) and not _full_kodak(images))
    if RESULTS_DIR is not None and not isinstance(RESULTS_DIR, (str, os.PathLike)):
        raise ValueError(f"RESULTS_DIR must be a folder (a path) or None, got {RESULTS_DIR!r:.60}")
    if RESULTS_DIR is not None and str(RESULTS_DIR) != "":
        out = Path(RESULTS_DIR).expanduser()
        out = out if out.is_absolute() else PROJECT_ROOT / out
        if not (not_kodak and out.resolve() == committed):
            out.mkdir(parents=True, exist_ok=True)
            return out.resolve()
        moved = results_dir(None, smoke, images)
        what = "a smoke run" if smoke else f"'{images.name}' ({len(images.paths)} images, not the 24 Kodak images)"
        warnings.warn(f"RESULTS_DIR {str(RESULTS_DIR)!r} is the committed results folder, which holds Kodak results "
                      f"only; the figures, tables and records of {what} go to {moved}", stacklevel=2)
        return moved
    if smoke:
        out = PROJECT_ROOT / "results" / "cache" / "smoke"
    elif images is not None and not _full_kodak(images):
        name = images.name if images.name != "kodak" else f"kodak-{len(images.paths)}-images"
        out = PROJECT_ROOT / "results" / "cache" / _safe(name)
    else:
        out = PROJECT_ROOT / "results"
    out.mkdir(parents=True, exist_ok=True)
    return out.resolve()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "x"


def _shrink_png(path: Path, max_bytes: int) -> None:
    """Re-encode a PNG as 256-colour palette PNG (visually the same for plots) if it is above ``max_bytes``."""
    if path.stat().st_size <= max_bytes:
        return
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    pal = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buf = io.BytesIO()
    pal.save(buf, format="PNG", optimize=True)
    if buf.tell() < path.stat().st_size:
        atomic_write(path, buf.getvalue())


def save_figure(fig: Figure, name: str, results_dir: Optional[PathLike] = None, *, dpi: int = 110,
                formats: Sequence[str] = ("png", "pdf"), max_png_bytes: int = 290_000) -> dict[str, Path]:
    """Write ``fig`` to ``results_dir/figures/<name>.<fmt>`` for every format; returns ``{fmt: path}``.

    A PNG above ``max_png_bytes`` (image-heavy figures: attention and bit maps) is re-encoded with a
    256-colour palette, then re-rendered at lower resolution while still too large."""
    out = Path(results_dir) if results_dir is not None else globals()["results_dir"]()
    folder = output_folder(out, "figures")
    paths = {}
    for fmt in formats:
        path = folder / f"{_safe(name)}.{fmt}"
        kw = dict(format=fmt, bbox_inches="tight", pad_inches=0.08)
        if fmt == "png":
            kw["metadata"] = {"Software": None}
        d = dpi
        fig.savefig(path, dpi=d, **kw)
        if fmt == "png" and max_png_bytes:
            _shrink_png(path, max_png_bytes)
            while path.stat().st_size > max_png_bytes and d > 60:
                d = int(d * 0.85)
                fig.savefig(path, dpi=d, **kw)
                _shrink_png(path, max_png_bytes)
        paths[fmt] = path
    return paths


def _fmt_cell(value: Any, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return format(v, floatfmt) if math.isfinite(v) else ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_cell(v, floatfmt) for v in value)
    return str(value).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(df: pd.DataFrame, floatfmt: Union[str, Mapping[str, str]] = ".4g") -> str:
    """A GitHub-flavoured Markdown table of ``df`` (no index), written without ``tabulate``.

    ``floatfmt``: a format spec for floats, or ``{column: spec}`` (others ``.4g``). ``None``/NaN cells are
    empty; ``|`` in text is escaped; numeric columns are right-aligned.
    """
    cols = [str(c) for c in df.columns]
    fmts = {c: (floatfmt.get(c, ".4g") if isinstance(floatfmt, Mapping) else floatfmt) for c in cols}
    numeric = {c: pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
               for c, col in zip(cols, df.columns)}
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "|" + "|".join("---:" if numeric[c] else "---" for c in cols) + "|"]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_fmt_cell(v, fmts[c]) for c, v in zip(cols, row)) + " |")
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, results_dir: Optional[PathLike] = None, *,
               floatfmt: Union[str, Mapping[str, str]] = ".4g", caption: Optional[str] = None) -> dict[str, Path]:
    """Write ``df`` to ``results_dir/tables/<name>.csv`` (full precision) and ``.md`` (formatted, with an
    optional caption line under the table); returns ``{"csv": path, "md": path}``."""
    out = Path(results_dir) if results_dir is not None else globals()["results_dir"]()
    folder = output_folder(out, "tables")
    csv_path, md_path = folder / f"{_safe(name)}.csv", folder / f"{_safe(name)}.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    text = markdown_table(df, floatfmt)
    if caption:
        text += "\n" + caption.strip() + "\n"
    atomic_write_text(md_path, text)
    return {"csv": csv_path, "md": md_path}


def show(obj: Any) -> None:
    """Display a figure (as PNG) or a table inline when running under IPython/Jupyter; otherwise nothing."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is None:
        return
    if isinstance(obj, Figure):
        buf = io.BytesIO()
        obj.savefig(buf, format="png", dpi=90, bbox_inches="tight", pad_inches=0.08)
        display(Image(data=buf.getvalue(), format="png"))
    else:
        display(obj)


#: JSON-safe copy of numbers (numpy/pandas/torch → Python, non-finite → ``None``): :func:`lpm.jsonio.strict_json`.
clean_numbers = strict_json


def record(notebook_name: str, numbers: Mapping[str, Any], results_dir: Optional[PathLike] = None, *,
           context: Optional["Context"] = None, checkpoint_info: Optional[Mapping[str, Any]] = None,
           images: Any = None, smoke: Optional[bool] = None) -> Path:
    """Write ``results_dir/records/<notebook_name>.json``: the key ``numbers`` (finite floats only, NaN →
    ``None``) with their provenance — checkpoint (name, sha256, budget), images (name, count, notice), the
    smoke flag, lpm version and git commit. ``context`` (from :func:`setup`) supplies all of these;
    ``checkpoint_info``/``images``/``smoke`` override or stand in for it."""
    from lpm import __version__
    from lpm.provenance import git_commit

    out = Path(results_dir) if results_dir is not None else (context.results_dir if context else globals()["results_dir"]())
    info = checkpoint_info if checkpoint_info is not None else (context.info if context else None)
    imgs = images if images is not None else (context.images if context else None)
    if smoke is None:
        smoke = bool(context.smoke) if context else False
    out = _keep_kodak_results(out, imgs, bool(smoke))
    ckpt = None
    if info is not None:
        ckpt = {
            "name": context.label if context else Path(str(info.get("path", ""))).stem or None,
            "sha256": info.get("sha256"),
            "budget": (info.get("meta") or {}).get("budget") or "unknown (no training budget recorded)",
            "path": str(info.get("path")) if info.get("path") else None,
        }
    img = None
    if imgs is not None:
        if isinstance(imgs, str):
            img = {"name": imgs}
        else:
            img = {"name": imgs.name, "count": len(imgs.paths), "notice": imgs.notice}
    payload = {
        "notebook": notebook_name,
        "smoke": bool(smoke),
        "checkpoint": ckpt,
        "images": img,
        "numbers": clean_numbers(dict(numbers)),
        "lpm_version": __version__,
        "git_commit": git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = output_folder(out, "records") / f"{_safe(notebook_name)}.json"
    return write_json(path, payload)


def _keep_kodak_results(out: Path, images: Any, smoke: bool) -> Path:
    """``out``, unless it is the committed ``results/`` folder and ``images`` are not the 24 Kodak images:
    then :func:`results_dir`'s folder for them under ``results/cache/`` (with a warning), so that a record of
    other images never replaces a Kodak record."""
    from lpm.paths import PROJECT_ROOT

    if images is None or isinstance(images, str) or _full_kodak(images) or \
            Path(out).resolve() != (PROJECT_ROOT / "results").resolve():
        return Path(out)
    moved = globals()["results_dir"](None, smoke, images)
    warnings.warn(f"records of '{images.name}' ({len(images.paths)} images) are not written over the Kodak "
                  f"results in {out}; writing to {moved}", stacklevel=3)
    return moved


def read_record(notebook_name: str, results_dir: PathLike) -> Optional[dict[str, Any]]:
    """The record a notebook wrote in ``results_dir`` (``None`` if there is none); inside ``lpm reproduce``, the
    one an earlier notebook of the batch wrote, if any (:func:`lpm.staging.staged_record`)."""
    name = f"{_safe(notebook_name)}.json"
    path = staged_record(Path(results_dir), name) or Path(results_dir) / "records" / name
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


# =========================================================================================== set-up
@dataclass
class Checkpoint:
    """One entry of ``CHECKPOINTS``: a zoo name, a checkpoint file, or a folder of per-rate files (the
    separate-models baseline writes ``model-<λ>.safetensors``). ``models`` holds one
    :class:`lpm.checkpoints.LoadedCodec` per file (each also unpacks as ``model, info``)."""

    spec: str
    label: str
    models: list[Any]  # list[LoadedCodec], sorted by base rate
    separate: bool = False

    @property
    def model(self) -> Any:
        return self.models[0].model

    @property
    def info(self) -> dict[str, Any]:
        return self.models[0].info

    @property
    def kind(self) -> str:
        return "separate" if self.separate else self.models[0].kind

    @property
    def budget(self) -> str:
        return "; ".join(dict.fromkeys(m.budget or "unknown (no budget recorded)" for m in self.models))

    @property
    def sha256(self) -> str:
        return ",".join(m.sha256[:12] for m in self.models)


def _label(spec: str, path: Optional[Path]) -> str:
    from lpm.zoo import CHECKPOINTS as ZOO

    if spec in ZOO or path is None:
        return spec
    if path.is_dir():
        return path.name
    return path.parent.name if path.stem == "model" else path.stem


def int_param(name: str, value: Any, *, low: int = 0, high: Optional[int] = None) -> int:
    """A notebook's integer parameter, checked: an ``int`` (not a bool, not ``2.5`` or ``"3"``) in
    ``low..high``; anything else is a ``ValueError`` that names the parameter and what it takes."""
    span = f"{low}..{high}" if high is not None else f"{low} or more"
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) \
            or not (low <= value and (high is None or value <= high)):
        raise ValueError(f"{name} must be an integer {span}, got {value!r:.60}")
    return int(value)


def bool_param(name: str, value: Any) -> bool:
    """A notebook's on/off parameter, checked: ``True``/``False`` (or ``0``/``1``). A string is a ``ValueError``
    that names the parameter: ``papermill -p SMOKE false`` passes the text ``"false"``, which Python takes as
    true (papermill turns only ``True``, ``False`` and ``None`` into Python values)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r:.60} (papermill: -p {name} True or -p {name} "
                     f"False, capitalised; or -y '{name}: false')")


def rate_params(name: str, value: Any, model: Any) -> list[float]:
    """The λ values a notebook is asked for: ``None`` (the model's trained rates), one number or a non-empty
    list of numbers, each one the model codes (:meth:`check_rate`: inside its trained range); anything else
    is a ``ValueError`` that names the parameter."""
    if value is None:
        return [float(r) for r in model.rates]
    number = (int, float, np.integer, np.floating)
    values = [value] if isinstance(value, number) and not isinstance(value, (bool, np.bool_)) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be None (the trained rates), a rate λ or a non-empty list of them, "
                         f"got {value!r:.60}")
    out = []
    for v in values:
        if not isinstance(v, number) or isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name}: a rate must be a number, got {v!r:.60}")
        try:
            out.append(float(model.scalar_rate(float(v))))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return out


def choice_param(name: str, value: Any, choices: Sequence[str]) -> str:
    """A notebook's parameter that names one of ``choices`` (e.g. a layer); anything else is a
    ``ValueError`` that lists them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r:.80}")
    return value


def index_params(name: str, value: Any, count: int, what: str = "images") -> list[int]:
    """Indices into ``count`` items (one integer or a list of them), each checked as :func:`int_param`."""
    if count < 1:
        raise ValueError(f"{name}: there are no {what} to index")
    values = [value] if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be an index 0..{count - 1} into the {count} {what} or a non-empty list of "
                         f"them, got {value!r:.60}")
    return [int_param(name, v, low=0, high=count - 1) for v in values]


def classical_names(names: Any) -> list[str]:
    """The classical codecs a notebook is asked for, checked before anything is measured: canonical names
    (aliases such as ``jpg``, ``jxl`` accepted); an unknown one is a ``ValueError`` listing the known ones."""
    from lpm.eval.classical import lookup_spec

    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"CLASSICAL must be a list of codec names, got {names!r:.60}")
    return [lookup_spec(n).name for n in names]


def checkpoint_spec(spec: PathLike) -> str:
    """A notebook's checkpoint parameter as :func:`lpm.zoo.load` takes it: a zoo name as it is; a path with
    ``~`` expanded and, if relative, resolved against the project root — as ``DATA_DIR`` and ``RESULTS_DIR``
    are, so that ``results/checkpoints/x.safetensors`` means one file from a kernel in ``notebooks/`` and from
    papermill started anywhere."""
    from lpm import zoo
    from lpm.paths import PROJECT_ROOT

    spec = str(spec)
    if spec in zoo.CHECKPOINTS:
        return spec
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() else PROJECT_ROOT / path)


def checkpoint_params(value: Any, name: str = "CHECKPOINTS") -> list[PathLike]:
    """A notebook's checkpoint list, checked: one name or path (a list of one), or a non-empty list of them
    (a text is one checkpoint, never its characters); anything else is a ``ValueError``."""
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, os.PathLike)) for v in value):
        raise ValueError(f"{name} must be a list of zoo names, checkpoint files or folders, got {value!r:.80}")
    if not value:
        raise ValueError(f"{name} is empty: name at least one checkpoint (the first is ours)")
    return list(value)


def load_checkpoint(spec: PathLike, device: str = "cpu") -> Checkpoint:
    """Load a zoo name, a checkpoint file (any kind :func:`lpm.checkpoints.load_codec` reads) or a
    folder of checkpoint files (one per rate: a separate-models curve); a relative path is taken from the
    project root (:func:`checkpoint_spec`)."""
    from lpm import zoo

    spec = str(spec)
    if spec in zoo.CHECKPOINTS:
        return Checkpoint(spec, spec, [zoo.load(spec, device=device)], False)
    path = Path(checkpoint_spec(spec))
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors checkpoint files in this folder")
        models = sorted((zoo.load(str(f), device=device) for f in files), key=lambda m: m.base_rate)
        separate = len(models) > 1 or models[0].meta.get("kind") == "separate"
        return Checkpoint(spec, _label(spec, path), models, separate)
    loaded = zoo.load(str(path), device=device)
    return Checkpoint(spec, _label(spec, path), [loaded], loaded.meta.get("kind") == "separate")


@dataclass
class Context:
    """What every notebook starts from: ours (the first checkpoint), the others, the images, the output
    folder and the smoke flag."""

    checkpoints: list[Checkpoint]
    images: Any  # lpm.data.EvalImages
    results_dir: Path
    smoke: bool
    device: str = "cpu"

    @property
    def ours(self) -> Checkpoint:
        return self.checkpoints[0]

    @property
    def model(self) -> Any:
        return self.ours.model

    @property
    def info(self) -> dict[str, Any]:
        return self.ours.info

    @property
    def label(self) -> str:
        return self.ours.label

    @property
    def budget(self) -> str:
        return self.ours.budget

    @property
    def others(self) -> list[Checkpoint]:
        return self.checkpoints[1:]

    @property
    def separate(self) -> Optional[Checkpoint]:
        """The first separate-models checkpoint among the others (the "same RD" reference), if any."""
        return next((c for c in self.others if c.separate), None)

    @property
    def full_kodak(self) -> bool:
        return _full_kodak(self.images)

    @property
    def comparability(self) -> str:
        """Whether published (Kodak) anchors can be compared with numbers on these images, and why not."""
        n = len(self.images.paths)
        if self.full_kodak:
            return "comparable: all 24 Kodak images, as the published anchors"
        if self.images.name == "kodak":
            return f"NOT comparable: {n} of the 24 Kodak images (the anchors are means over all 24)"
        return f"NOT comparable: eval images are '{self.images.name}' ({n} images), the anchors are Kodak-only"

    @property
    def images_line(self) -> str:
        return f"images: {self.images.name} ({len(self.images.paths)} images)" + (" [SMOKE run]" if self.smoke else "")

    def footnote(self, extra: str = "") -> str:
        """Which checkpoint and which training budget produced a figure (and on which images)."""
        lines = [f"ours = {self.label} (sha256 {str(self.info.get('sha256', ''))[:12]}): training budget: {self.budget}"]
        for c in self.others:
            lines.append(f"{c.label} ({c.kind}): training budget: {c.budget}")
        lines.append(self.images_line + (f"; {extra}" if extra else ""))
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [f"ours: {self.label} ({type(self.model).__name__}, rates {list(getattr(self.model, 'rates', []))})",
                 f"  budget: {self.budget}"]
        for c in self.others:
            lines.append(f"other: {c.label} ({c.kind}, {len(c.models)} file(s)); budget: {c.budget}")
        lines.append(self.images_line)
        lines.append(f"results: {self.results_dir}")
        if self.images.notice:
            lines.append(self.images.notice)
        return "\n".join(lines)


def setup(CHECKPOINTS: Sequence[PathLike], DATA_DIR: Optional[PathLike] = None, RESULTS_DIR: Optional[PathLike] = None,
          SMOKE: bool = False, *, device: str = "cpu") -> Context:
    """Resolve the eval images (:func:`lpm.data.resolve_eval_images`; 2 images with ``SMOKE``), load the
    checkpoints (the first is ours) and pick the output folder (:func:`results_dir`).

    ``DATA_DIR``: the directory holding ``kodak/`` (or a folder of images); relative paths are resolved
    against the project root. A named directory that is missing or holds no images raises
    :class:`lpm.data.DataDirError`; only when nothing is named (no ``DATA_DIR``, no ``$LPM_DATA_DIR``, no
    ``data/kodak``) are scikit-image's sample photographs used, and then everything is written under
    ``results/cache/sample-photos/`` unless ``RESULTS_DIR`` is given."""
    from lpm.data import resolve_eval_images

    SMOKE = bool_param("SMOKE", SMOKE)
    CHECKPOINTS = checkpoint_params(CHECKPOINTS)
    images = resolve_eval_images(DATA_DIR, limit=2 if SMOKE else None)  # first: a wrong DATA_DIR fails fast
    ckpts = [load_checkpoint(c, device=device) for c in CHECKPOINTS]
    if ckpts[0].separate or len(ckpts[0].models) != 1:
        raise ValueError(f"the first checkpoint ({ckpts[0].spec}) must be one variable-rate model (ours)")
    return Context(ckpts, images, results_dir(RESULTS_DIR, bool(SMOKE), images), bool(SMOKE), device)
