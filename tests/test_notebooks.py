"""The figure notebooks: executed with papermill under SMOKE on two generated images, then their recorded
numbers are checked (finite, in range, and equal to what the library gives when called directly), and the
committed notebooks are checked to carry no outputs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import imagecodecs
import nbformat
import numpy as np
import pytest
import torch

from lpm.zoo import PROJECT_ROOT

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
#: Ours, in batch order (claims reads what the others wrote).
NOTEBOOKS = ("rd_curves", "attention_maps", "savings", "claims")
COMMON_PARAMETERS = ("CHECKPOINTS", "DATA_DIR", "RESULTS_DIR", "SMOKE", "RECOMPUTE")


def _ensure_python3_kernel() -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if "python3" not in KernelSpecManager().find_kernel_specs():
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run the four notebooks once (SMOKE, two 176x192 PNGs, tiny-smoke); returns (results dir, data dir,
    executed notebooks)."""
    import papermill as pm

    _ensure_python3_kernel()
    root = tmp_path_factory.mktemp("nb")
    data = root / "images"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        yy, xx = np.mgrid[0:176, 0:192]
        img = np.stack([np.sin(xx / (6 + 2 * i)) * 90 + 125, np.cos(yy / 9) * 80 + 120, (xx + yy) / 1.6], -1)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        (data / f"pic{i}.png").write_bytes(imagecodecs.png_encode(img))
    results = root / "results"
    out = {}
    # DATA_DIR relative to the project root, as the notebooks document (the kernel runs in notebooks/)
    rel_data = os.path.relpath(data, PROJECT_ROOT)
    for name in NOTEBOOKS:
        out[name] = root / f"{name}.ipynb"
        pm.execute_notebook(
            str(NOTEBOOK_DIR / f"{name}.ipynb"), str(out[name]),
            parameters=dict(SMOKE=True, RESULTS_DIR=str(results), DATA_DIR=rel_data, CHECKPOINTS=["tiny-smoke"]),
            kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOK_DIR),
        )
    return results, data, out


def _record(results: Path, name: str) -> dict:
    path = results / "records" / f"{name}.json"
    assert path.is_file(), f"{name} wrote no record"
    rec = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{name}: non-finite number {c}"))
    assert rec["smoke"] is True and rec["notebook"] == name
    assert rec["checkpoint"]["name"] == "tiny-smoke" and len(rec["checkpoint"]["sha256"]) == 64
    assert "NOT the paper's" in rec["checkpoint"]["budget"]
    assert rec["images"]["name"] == "images" and rec["images"]["count"] == 2
    return rec["numbers"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.fixture(scope="module")
def smoke_model():
    from lpm import zoo

    return tuple(zoo.load("tiny-smoke"))  # (model, info)


# ------------------------------------------------------------------------------------------ committed files
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean_and_parameterised(name):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:
        assert c.get("outputs", []) == [], f"{name}: committed with outputs"
        assert c.get("execution_count") is None, f"{name}: committed with execution counts"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), f"{name}: first code cell is not tagged 'parameters'"
    for p in COMMON_PARAMETERS:
        assert f"\n{p} = " in "\n" + first.source, f"{name}: parameter {p} missing"
    assert "figures.record(" in code[-1].source, f"{name}: the last cell must record the key numbers"
    assert "import matplotlib" not in "".join(c.source for c in code), f"{name}: plotting belongs in lpm/figures.py"


# ------------------------------------------------------------------------------------------ executed
def test_outputs_written(executed):
    results, _, out = executed
    for name in ("rd_psnr", "rd_msssim", "attention_maps_pic0", "bit_allocation_pic0", "savings"):
        png = results / "figures" / f"{name}.png"
        assert png.is_file() and 10_000 < png.stat().st_size < 300_000, name
        assert (results / "figures" / f"{name}.pdf").is_file()
    for name in ("rd_ours", "rd_bd_rates", "rd_anchor_sources", "attention_summary", "storage_parameters",
                 "storage_summary", "training_data", "claims"):
        assert (results / "tables" / f"{name}.csv").is_file() and (results / "tables" / f"{name}.md").is_file()
    # smoke results never take the names of real ones
    evals = sorted(p.name for p in (results / "eval").glob("*.json"))
    assert evals and all(n.endswith("_smoke.json") for n in evals), evals
    # figures are shown inline
    nb = nbformat.read(str(out["rd_curves"]), as_version=4)
    assert sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])) >= 2


def test_rd_record_matches_direct_evaluation(executed, smoke_model):
    from lpm.eval import evaluate_codec

    results, data, _ = executed
    n = _record(results, "rd_curves")
    model, info = smoke_model
    ours = n["ours"]
    trained = [r for r in ours if r["trained"]]
    assert [r["rate"] for r in trained] == pytest.approx(list(model.rates))
    assert len(ours) == len(trained) + 1  # SMOKE: one continuous rate
    for r in ours:
        assert _finite(r["bpp"]) and r["bpp"] > 0
        assert _finite(r["psnr_rgb"]) and 5 < r["psnr_rgb"] < 60
        assert r["ms_ssim_rgb"] is None or 0 < r["ms_ssim_rgb"] <= 1
    torch.set_num_threads(1)
    direct = evaluate_codec(model, data, [model.rates[0]], checkpoint_info=info, progress=False)["results"]
    first = next(r for r in ours if math.isclose(r["rate"], model.rates[0]))
    assert first["bpp"] == pytest.approx(direct["bpp"][0], rel=1e-12)
    assert first["psnr_rgb"] == pytest.approx(direct["psnr-rgb"][0], abs=1e-6)
    # classical codecs in SMOKE: jpeg and webp, 3 qualities each
    assert set(n["classical"]) == {"JPEG (measured)", "WebP (measured)"}
    assert all(len(v) == 3 and all(p["bpp"] > 0 for p in v) for v in n["classical"].values())
    # BD-rates: a number or None with the reason; the images are not Kodak, so nothing is compared with VTM
    assert n["anchors_comparable"] is False
    bd = {row["curve"]: row for row in n["bd_rates"]}
    assert bd["VTM"]["bd_rate_vs_vtm_percent"] == 0.0
    for row in n["bd_rates"]:
        v = row["bd_rate_vs_vtm_percent"]
        assert (v is None and row["vs_vtm_note"]) or _finite(v)
        if row["kind"] != "anchor":
            assert v is None and row["vs_vtm_note"].startswith("not comparable")
    assert bd["TCM-L (Liu et al. CVPR 2023)"]["bd_rate_vs_vtm_percent"] == pytest.approx(-12, abs=1.5)


def test_attention_record(executed, smoke_model):
    results, _, _ = executed
    n = _record(results, "attention_maps")
    model, _ = smoke_model
    assert n["layer"].startswith("g_a.") and n["layer_choice"]
    per_rate = n["per_rate"]
    assert [r["rate"] for r in per_rate] == pytest.approx(list(model.rates))
    for r in per_rate:
        assert 0 <= r["mean_prompt_mass"] < 1 and 0 <= r["mean_shift"] <= 1
        assert r["estimated_bpp"] > 0 and r["real_bpp"] > 0
        assert abs(r["real_bpp"] / r["estimated_bpp"] - 1) < 0.5  # header/CRC and coder overhead only
    base = next(r for r in per_rate if math.isclose(r["rate"], model.base_rate))
    assert base["mean_prompt_mass"] == 0.0 and base["mean_shift"] < 1e-6
    assert max(r["mean_prompt_mass"] for r in per_rate) > 0.01


def test_savings_record_equals_storage_saving(executed, smoke_model):
    from lpm import figures
    from lpm.eval import storage_saving

    results, _, _ = executed
    n = _record(results, "savings")
    s = storage_saving(smoke_model[0])
    assert n["storage_saving_percent"] == s["saving_percent"]
    assert n["storage_ours_params"] == s["ours_params"] and n["storage_separate_params"] == s["separate_params"]
    assert n["paper_size_storage_saving_percent"] == pytest.approx(80.03, abs=0.01)
    # the smoke checkpoint was made by `lpm train`: its ledger (in the checkpoint's meta) gives the images seen
    _, direct, note = figures.training_data(smoke_model[1], num_rates=len(smoke_model[0].rates))
    assert n["data_saving_percent"] == direct["saving_percent"] == pytest.approx(90.0)
    assert n["data_note"] == note and "ledger" in note
    assert n["paper_storage_percent"] == 80.0 and n["paper_data_percent"] == 90.0


def test_claims_record(executed, smoke_model):
    from lpm.eval import storage_saving

    results, _, _ = executed
    claims = _record(results, "claims")["claims"]
    assert len(claims) == 7
    by = {c["claim"]: c for c in claims}
    for c in claims:
        assert c["verdict"].split(":")[0] in ("supported", "not supported", "not measurable yet") or \
            c["verdict"].startswith("not supported"), c["verdict"]
        assert c["budget"]
    storage = by["80 % less parameter storage than separate models (this checkpoint)"]
    assert storage["value"] == storage_saving(smoke_model[0])["saving_percent"]
    rd = by["better RD than all variable-rate methods"]
    assert rd["verdict"].startswith("not measurable yet") and "Kodak" in rd["verdict"]
    assert by["same RD as separately optimised models"]["verdict"].startswith("not measurable yet")
    data = by["90 % less training data than separate models"]
    assert data["value"] == pytest.approx(90.0) and "image count only" in data["verdict"]
    # the range claim reads the same evaluation cache as rd_curves: its span is that of the recorded curve
    span = by["one frozen base covers a wide range of rates"]
    rd_rec = [p for p in _record(results, "rd_curves")["ours"] if p["trained"]]
    bpps = [p["bpp"] for p in rd_rec]
    assert span["value"] == pytest.approx(max(bpps) / min(bpps)) and "span" in span["measurement"]
