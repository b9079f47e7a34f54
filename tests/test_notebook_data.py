"""Which images a notebook evaluates and where it writes (issue 13): a named data directory that is missing
is one clear error, relative paths mean the project root, the sample-photo fallback happens only when nothing
is named and then writes under ``results/cache/``, never over the tracked Kodak results; and tracked
notebooks carry no outputs (``scripts/strip_notebooks.py``, ``.githooks/pre-commit``)."""

from __future__ import annotations

import hashlib
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imagecodecs
import nbformat
import numpy as np
import pytest

import lpm.paths
import lpm.zoo
from lpm import data
from lpm import figures as F
from lpm.data import DataDirError, EvalImages, named_data_dir, resolve_eval_images
from lpm.zoo import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
RESULTS = PROJECT_ROOT / "results"
#: Git-ignored caches under results/ (see .gitignore); everything else there is the committed Kodak results.
IGNORED_RESULTS = ("cache", "eval", "runs", "notebooks", ".staging")
STRIP = PROJECT_ROOT / "scripts" / "strip_notebooks.py"


def _pngs(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        (folder / f"im{i}.png").write_bytes(imagecodecs.png_encode(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)))
    return folder


def _trust_as_kodak(monkeypatch, folder: Path) -> Path:
    """Make the fake images in ``folder`` pass as Kodak: a manifest of them stands in for data/kodak.sha256."""
    manifest = folder.parent / "fake-kodak.sha256"
    manifest.write_text("".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n"
                                for p in sorted(folder.glob("*.png"))))
    real = data.manifest_path
    monkeypatch.setattr(data, "manifest_path", lambda name: manifest if name == "kodak" else real(name))
    return manifest


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("LPM_DATA_DIR", raising=False)


# ------------------------------------------------------------------------------------------ data-dir rules
def test_named_but_missing_data_dir_is_one_clear_error(no_env, tmp_path):
    with pytest.raises(DataDirError) as e:
        resolve_eval_images(tmp_path / "kodakk")
    msg = str(e.value)
    assert "data directory not found" in msg and str(tmp_path / "kodakk") in msg and "holding kodak/" in msg
    assert isinstance(e.value, FileNotFoundError) and "\n" not in msg
    with pytest.raises(DataDirError, match="relative: resolved against the project root"):
        resolve_eval_images("no/such/dir")


def test_named_dir_without_kodak_or_images_is_an_error(no_env, tmp_path):
    (tmp_path / "bsds500" / "train").mkdir(parents=True)
    with pytest.raises(DataDirError, match="has no kodak/ folder and no images"):
        resolve_eval_images(tmp_path)
    (tmp_path / "kodak").mkdir()
    with pytest.raises(DataDirError, match=r"kodak holds no image files"):
        resolve_eval_images(tmp_path)


def test_named_dir_with_kodak_or_images(no_env, tmp_path, monkeypatch):
    _trust_as_kodak(monkeypatch, _pngs(tmp_path / "root" / "kodak", 3))
    imgs = resolve_eval_images(tmp_path / "root")
    assert imgs.name == "kodak" and len(imgs.paths) == 3 and imgs.notice is None
    assert imgs.manifest == data.manifest_path("kodak")
    own = resolve_eval_images(_pngs(tmp_path / "mine"), limit=1)
    assert own.name == "mine" and len(own.paths) == 1 and own.manifest is None


def test_relative_data_dir_resolves_against_project_root(no_env, tmp_path, monkeypatch):
    _trust_as_kodak(monkeypatch, _pngs(tmp_path / "d" / "kodak"))
    rel = os.path.relpath(tmp_path / "d", PROJECT_ROOT)
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)  # as a kernel in notebooks/ or papermill started anywhere
    assert named_data_dir(rel)[0] == (tmp_path / "d").resolve()
    imgs = resolve_eval_images(rel)
    assert imgs.name == "kodak" and imgs.paths[0].is_relative_to((tmp_path / "d").resolve())
    monkeypatch.setenv("LPM_DATA_DIR", rel)  # the variable follows the same rule
    assert resolve_eval_images().name == "kodak"
    assert data.locate_dataset("kodak") == (tmp_path / "d" / "kodak").resolve()


@pytest.mark.skipif(not (PROJECT_ROOT.parent / "shared" / "data" / "kodak").is_dir(), reason="no ../shared/data")
def test_readme_shared_data_from_notebooks_dir(no_env, monkeypatch):
    monkeypatch.chdir(NOTEBOOK_DIR)
    imgs = resolve_eval_images("../shared/data")
    assert imgs.name == "kodak" and len(imgs.paths) == 24


def test_env_var_named_but_missing_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LPM_DATA_DIR", str(tmp_path / "gone"))
    with pytest.raises(DataDirError, match=r"\$LPM_DATA_DIR"):
        resolve_eval_images()


def test_fallback_only_when_nothing_is_named(no_env, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_DIR", tmp_path / "empty-data")  # no data/kodak
    imgs = resolve_eval_images(None, cache_dir=tmp_path / "photos", limit=2)
    assert imgs.name == "sample-photos" and len(imgs.paths) == 2 and "NOT comparable" in imgs.notice
    assert all(p.parent == tmp_path / "photos" for p in imgs.paths)
    assert resolve_eval_images("", cache_dir=tmp_path / "photos").name == "sample-photos"  # "" names nothing
    _trust_as_kodak(monkeypatch, _pngs(tmp_path / "empty-data" / "kodak"))
    assert resolve_eval_images(None).name == "kodak"  # data/kodak beats the fallback


def test_a_kodak_folder_of_other_images_is_not_taken_for_kodak(no_env, tmp_path, monkeypatch):
    """A folder named kodak was Kodak by its name alone: 24 other images named kodim01..24 had every curve
    taken from the real Kodak cache and their figures written into the committed results/."""
    folder = tmp_path / "fake" / "kodak"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, 25):
        (folder / f"kodim{i:02d}.png").write_bytes(imagecodecs.png_encode(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)))
    imgs = resolve_eval_images(tmp_path / "fake")
    assert imgs.name == data.KODAK_UNVERIFIED and imgs.manifest is None and len(imgs.paths) == 24
    assert "24 of the 24 images" in imgs.notice and "NOT comparable" in imgs.notice
    assert F.results_dir(None, False, imgs) == (RESULTS / "cache" / data.KODAK_UNVERIFIED).resolve()
    _trust_as_kodak(monkeypatch, folder)
    assert resolve_eval_images(tmp_path / "fake").name == "kodak"
    (folder / "kodim07.png").write_bytes((folder / "kodim07.png").read_bytes() + b"\0")  # one file changed
    imgs = resolve_eval_images(tmp_path / "fake")
    assert imgs.name == data.KODAK_UNVERIFIED and "1 of the 24 images" in imgs.notice and "kodim07.png" in imgs.notice


def test_naming_the_committed_results_for_other_images_writes_below_it(no_env, tmp_path):
    """RESULTS_DIR="results" with images that are not Kodak sent figures and tables over the committed Kodak
    ones (only the record was diverted)."""
    own = resolve_eval_images(_pngs(tmp_path / "mine"))
    for name in ("results", str(RESULTS), str(RESULTS) + "/"):
        with pytest.warns(UserWarning, match="holds Kodak results only"):
            assert F.results_dir(name, False, own) == (RESULTS / "cache" / "mine").resolve()
    with pytest.warns(UserWarning, match="a smoke run"):
        assert F.results_dir("results", True, own) == (RESULTS / "cache" / "smoke").resolve()
    assert F.results_dir(tmp_path / "elsewhere", False, own) == (tmp_path / "elsewhere").resolve()


# ------------------------------------------------------------------------------------------ output folder
def test_results_dir_keeps_kodak_results_for_kodak(tmp_path, monkeypatch):
    monkeypatch.setattr(lpm.paths, "PROJECT_ROOT", tmp_path)
    kodak = EvalImages(tuple(Path(f"kodim{i:02d}.png") for i in range(1, 25)), "kodak", None, None)
    photos = EvalImages((Path("a.png"),), "sample-photos", None, "not Kodak")
    assert F.results_dir(None, False, kodak) == tmp_path / "results"
    assert F.results_dir(None, False, photos) == tmp_path / "results" / "cache" / "sample-photos"
    assert F.results_dir(None, False, EvalImages(kodak.paths[:5], "kodak", None, None)) == \
        tmp_path / "results" / "cache" / "kodak-5-images"
    assert F.results_dir(None, True, kodak) == tmp_path / "results" / "cache" / "smoke"
    assert F.results_dir("out/here", False, photos) == tmp_path / "out" / "here"  # relative: project root
    # a record of other images aimed at results/ lands in results/cache/<images>/ instead
    with pytest.warns(UserWarning, match="not written over the Kodak results"):
        path = F.record("nb", {"x": 1}, tmp_path / "results", images=photos)
    assert path == tmp_path / "results" / "cache" / "sample-photos" / "records" / "nb.json"
    assert F.record("nb", {"x": 1}, tmp_path / "results", images=kodak) == tmp_path / "results" / "records" / "nb.json"


# ------------------------------------------------------------------------------------------ notebooks
def _ensure_python3_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True, capture_output=True)


def _run(name: str, out: Path, **parameters) -> None:
    import papermill as pm

    _ensure_python3_kernel()
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out / f"{name}.ipynb"), parameters=parameters,
                        kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOK_DIR))


def _tracked_results() -> dict[str, str]:
    """sha256 of every file under results/ outside its git-ignored caches (the committed Kodak results)."""
    out = {}
    for p in sorted(RESULTS.rglob("*")):
        rel = p.relative_to(RESULTS)
        if p.is_file() and rel.parts[0] not in IGNORED_RESULTS:
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_notebook_with_misspelt_data_dir_fails_with_the_message(no_env, tmp_path):
    from papermill.exceptions import PapermillExecutionError

    with pytest.raises(PapermillExecutionError) as e:
        _run("rd_curves", tmp_path, SMOKE=True, DATA_DIR="../shared/dataa", RESULTS_DIR=str(tmp_path / "res"))
    assert e.value.ename == "DataDirError"
    assert "data directory not found" in e.value.evalue and str(PROJECT_ROOT.parent / "shared" / "dataa") in e.value.evalue
    assert not (tmp_path / "res" / "records").exists()


@pytest.mark.skipif((PROJECT_ROOT / "data" / "kodak").is_dir(), reason="data/kodak exists: nothing-named means Kodak")
def test_notebook_with_nothing_named_writes_only_under_cache(no_env, tmp_path):
    before = _tracked_results()
    _run("savings", tmp_path)  # not SMOKE: what "Run All" in JupyterLab does
    assert _tracked_results() == before
    rec = json.loads((RESULTS / "cache" / "sample-photos" / "records" / "savings.json").read_text())
    assert rec["images"]["name"] == "sample-photos" and rec["smoke"] is False and "NOT comparable" in rec["images"]["notice"]
    assert (RESULTS / "cache" / "sample-photos" / "figures" / "savings.png").is_file()


@pytest.mark.skipif((PROJECT_ROOT / "data" / "kodak").is_dir(), reason="data/kodak exists: nothing-named means Kodak")
def test_rd_curves_with_nothing_named_writes_only_under_cache(no_env, tmp_path):
    before = _tracked_results()
    _run("rd_curves", tmp_path, N_CONTINUOUS=0, CLASSICAL=[])
    assert _tracked_results() == before
    folder = RESULTS / "cache" / "sample-photos"
    assert json.loads((folder / "records" / "rd_curves.json").read_text())["images"]["name"] == "sample-photos"
    assert (folder / "figures" / "rd_psnr.png").is_file() and (folder / "eval" / "tiny-smoke_sample-photos.json").is_file()


# ------------------------------------------------------------------------------------------ no outputs in git
def _strip(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STRIP), *args], input=stdin, capture_output=True, text=True)


def test_tracked_notebooks_carry_no_outputs():
    notebooks = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    assert len(notebooks) >= 5
    r = _strip("--check", *map(str, notebooks))
    assert r.returncode == 0, r.stdout  # outputs, execution counts, widget state: strip them before committing
    import importlib.util

    spec = importlib.util.spec_from_file_location("strip_notebooks", STRIP)
    strip = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(strip)
    for nb in notebooks:  # and the stripper would leave a clean notebook byte-identical
        text = nb.read_text(encoding="utf-8")
        assert strip.dumps(json.loads(text)) == text


def _dirty_copy(tmp_path: Path) -> Path:
    nb = nbformat.read(str(NOTEBOOK_DIR / "savings.ipynb"), as_version=4)
    for i, c in enumerate(c for c in nb.cells if c.cell_type == "code"):
        c.execution_count = i + 1
        c.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
        c.metadata["execution"] = {"iopub.status.busy": "2024-01-01T00:00:00Z"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"}
    path = tmp_path / "savings.ipynb"
    path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
    return path


def test_strip_script_removes_what_jupyterlab_saves(tmp_path):
    path = _dirty_copy(tmp_path)
    r = _strip("--check", str(path))
    assert r.returncode == 1 and "outputs" in r.stdout and "widgets" in r.stdout
    assert _strip(str(path)).returncode == 0
    assert path.read_text(encoding="utf-8") == (NOTEBOOK_DIR / "savings.ipynb").read_text(encoding="utf-8")
    assert _strip("--check", str(path)).returncode == 0


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_pre_commit_hook_refuses_outputs(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(STRIP, repo / "scripts")
    shutil.copytree(PROJECT_ROOT / ".githooks", repo / ".githooks")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "config", "core.hooksPath", ".githooks"], check=True)
    nb = _dirty_copy(repo)
    subprocess.run([*git, "add", "."], check=True)
    r = subprocess.run([*git, "commit", "-q", "-m", "x"], capture_output=True, text=True)
    assert r.returncode != 0 and "savings.ipynb carries outputs" in r.stderr
    subprocess.run([sys.executable, str(repo / "scripts" / "strip_notebooks.py"), str(nb)], check=True,
                   capture_output=True)
    subprocess.run([*git, "add", "."], check=True)
    r = subprocess.run([*git, "commit", "-q", "-m", "x"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_relative_checkpoint_paths_are_from_the_project_root(no_env, tmp_path, monkeypatch):
    """CHECKPOINTS: [results/checkpoints/x.safetensors] worked from the project root and failed in a kernel
    in notebooks/ (the current directory decided, unlike DATA_DIR and RESULTS_DIR)."""
    rel = "results/checkpoints/tiny-smoke.safetensors"
    monkeypatch.chdir(NOTEBOOK_DIR)
    ck = F.load_checkpoint(rel)
    assert ck.label == "tiny-smoke" and ck.models[0].sha256 == lpm.zoo.CHECKPOINTS["tiny-smoke"].sha256
    assert F.checkpoint_spec(rel) == str(PROJECT_ROOT / rel) and F.checkpoint_spec("tiny-smoke") == "tiny-smoke"
    assert F.checkpoint_spec(tmp_path / "x.safetensors") == str(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match=str(PROJECT_ROOT / "results" / "checkpoints" / "nope.safetensors")):
        F.load_checkpoint("results/checkpoints/nope.safetensors")


def test_notebook_number_parameters_are_checked_by_name():
    """IMAGE=30 gave "IndexError: tuple index out of range", IMAGE=1.0 a TypeError, PER_GAP=-1 and
    N_CONTINUOUS=-2 ran as 0 and recorded the negative number, a codec typo surfaced after minutes of measuring."""
    assert F.int_param("IMAGE", 3, high=23) == 3 and F.int_param("PER_GAP", np.int64(2)) == 2
    for bad in (30, -1, 1.0, 2.5, "3", True, None):
        with pytest.raises(ValueError, match=r"IMAGE must be an integer 0\.\.23, got"):
            F.int_param("IMAGE", bad, high=23)
    with pytest.raises(ValueError, match=r"PER_GAP must be an integer 0 or more, got -1"):
        F.int_param("PER_GAP", -1)
    assert F.index_params("IMAGES", 1, 3) == [1] and F.index_params("IMAGES", [0, 2], 3) == [0, 2]
    for bad in ([], [3], [0, 1.0], "0", None):
        with pytest.raises(ValueError, match="IMAGES"):
            F.index_params("IMAGES", bad, 3)
    assert F.classical_names(["jpg", "JPEG-XL", "webp"]) == ["jpeg", "jpegxl", "webp"]
    with pytest.raises(ValueError, match="unknown classical codec 'webpp'; known: "):
        F.classical_names(["jpg", "webpp"])
    with pytest.raises(ValueError, match="CLASSICAL must be a list"):
        F.classical_names("jpeg")
    from lpm.eval.compare import between_rates

    with pytest.raises(ValueError, match="per_gap must be an integer 0 or more"):
        between_rates([0.1, 0.2], -1)
    with pytest.raises(ValueError, match="continuous rates must be an integer 0 or more"):
        F.continuous_rates(F.load_checkpoint("tiny-smoke").model, -2)


def test_notebook_switch_text_and_list_parameters_are_checked_by_name(tmp_path):
    """`papermill -p SMOKE false` passes the text "false", which ran as a smoke run (and `-p RECOMPUTE false`
    recomputed everything); RATES=0.01 was "'float' object is not iterable", RATES=[5] and a misspelt LAYER
    failed in the next cell after the first maps; CHECKPOINTS="tiny-smoke" made rate_slider load "t", "i", ...;
    ANCHORS="VTM" said "unknown anchor 'V'"; RESULTS_DIR=3 a TypeError."""
    assert F.bool_param("SMOKE", True) is True and F.bool_param("SMOKE", 0) is False
    for bad in ("false", "False", "no", 2, None, 1.0):
        with pytest.raises(ValueError, match=r"SMOKE must be True or False, got .*-p SMOKE False"):
            F.bool_param("SMOKE", bad)
    with pytest.raises(ValueError, match="SMOKE must be True or False, got 'false'"):
        F.setup(["tiny-smoke"], str(_pngs(tmp_path / "imgs")), str(tmp_path / "res"), "false")
    assert not (tmp_path / "res").exists()
    model = F.load_checkpoint("tiny-smoke").model
    lo, hi = model.rate_range
    assert F.rate_params("RATES", None, model) == list(model.rates)
    assert F.rate_params("RATES", lo, model) == [lo] and F.rate_params("RATES", [hi, np.float64(lo)], model)[0] == hi
    for bad, needle in ((hi * 10, "outside the trained range"), ([lo, -1], "outside the trained range"),
                        (float("nan"), "outside the trained range"), ("0.01", "a rate λ or a non-empty list"),
                        ([], "non-empty list"), (["0.01"], "a rate must be a number"), (True, "non-empty list")):
        with pytest.raises(ValueError, match=f"RATES.*{bad!r:.0}{needle}"):
            F.rate_params("RATES", bad, model)
    assert F.choice_param("LAYER", "b", ["a", "b"]) == "b"
    for bad in ("c", 1, ""):
        with pytest.raises(ValueError, match=r"LAYER must be one of \['a', 'b'\]"):
            F.choice_param("LAYER", bad, ["a", "b"])
    assert F.checkpoint_params("tiny-smoke") == ["tiny-smoke"] and F.checkpoint_params(("a", "b")) == ["a", "b"]
    for bad, needle in ((3, "must be a list"), (["a", 3], "must be a list"), ([], "is empty")):
        with pytest.raises(ValueError, match=f"CHECKPOINTS {needle}"):
            F.checkpoint_params(bad)
    with pytest.raises(ValueError, match="ANCHORS must be None .* or a list of anchor names, got 'VTM'"):
        F.anchor_curves("VTM")
    with pytest.raises(ValueError, match="RESULTS_DIR must be a folder"):
        F.results_dir(3)


def _calls(name: str):
    """``(notebook path, cell source, call node)`` of every call of ``name`` (``f(...)`` or ``x.f(...)``) in the
    code cells of the project's notebooks."""
    import ast

    for p in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        for cell in nbformat.read(str(p), as_version=4).cells:
            if cell.cell_type != "code" or f"{name}(" not in cell.source:
                continue
            for node in ast.walk(ast.parse(cell.source)):
                if isinstance(node, ast.Call) and name in (getattr(node.func, "attr", None),
                                                          getattr(node.func, "id", None)):
                    yield p, cell.source, node


def test_every_table_of_our_numbers_names_the_training_budget():
    """storage_parameters, storage_summary, training_data and comparison_points were written to results/ with
    numbers of the smoke checkpoints and no word of their (reduced) training budget."""
    import ast

    # published numbers with their sources, none of ours; tables with a budget column on every row
    exempt = {"rd_anchor_sources", "claims", "comparison", "comparison_full"}
    seen = set()
    for p, source, node in _calls("save_table"):
        name = node.args[1].value
        seen.add(name)
        if name in exempt:
            continue
        caption = next((k.value for k in node.keywords if k.arg == "caption"), None)
        src = ast.get_source_segment(source, caption) if caption is not None else ""
        assert "ctx.budget" in src or "c.budget" in src, f"{p.name}: table {name} says nothing of the training budget"
    assert {"rd_ours", "storage_summary", "training_data", "comparison_points", "claims"} <= seen


def test_every_image_a_notebook_reads_is_bounded_in_pixels():
    """rate_slider and attention_maps read the chosen image with no pixel limit: a huge PNG in DATA_DIR was
    decoded whole (the CLI and the evaluation refuse it by the machine's memory first)."""
    import ast

    calls = 0
    for p, source, node in _calls("read_image"):
        calls += 1
        assert any(k.arg == "max_pixels" for k in node.keywords), \
            f"{p.name}: {ast.get_source_segment(source, node)} reads without a pixel limit"
    assert calls >= 3


@pytest.mark.parametrize("notebook, params, needle", [
    ("rate_slider", {"IMAGE": 30}, "IMAGE must be an integer 0..1, got 30"),
    ("rd_curves", {"CLASSICAL": ["jpg", "webpp"]}, "unknown classical codec 'webpp'"),
    ("rd_curves", {"ANCHORS": ["VTM", "TCM"]}, "unknown anchor 'TCM'"),
    ("rd_curves", {"SMOKE": "false"}, "SMOKE must be True or False, got 'false'"),
    ("attention_maps", {"RATES": [5.0]}, "RATES: rate 5 is outside the trained range"),
])
def test_a_bad_notebook_parameter_stops_at_once_with_its_name(tmp_path, notebook, params, needle):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match=re.escape(needle)) as e:
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{notebook}.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"SMOKE": True, "DATA_DIR": str(_pngs(tmp_path / "imgs")),
                                               "RESULTS_DIR": str(tmp_path / "res"), **params},
                                   kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOK_DIR))
    assert e.value.exec_count <= 3  # the parameter check, not minutes of measuring first
    assert not (tmp_path / "res" / "eval").exists()
