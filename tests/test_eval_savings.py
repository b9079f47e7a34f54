"""Storage and training-data accounting: tables add up to the real tensors; savings from a budget ledger."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from conftest import make_tiny_codec
from lpm import zoo
from lpm.eval.savings import (
    LEDGER_REQUIRED,
    data_table,
    dataset_saving,
    parameter_table,
    read_ledger,
    storage_saving,
)
from lpm.train.checkpoint import load_codec, save_codec

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _parts(df):
    return df[df["group"] != "total"], df[df["group"] == "total"].iloc[0]


def test_parameter_table_adds_up_to_the_model(tiny_codec):
    df = parameter_table(tiny_codec)
    parts, total = _parts(df)
    assert list(df.columns) == ["group", "component", "rate", "params", "bytes_fp32", "stored_numel",
                                "bytes_as_stored"]
    for col in ("params", "bytes_fp32", "stored_numel", "bytes_as_stored"):
        assert parts[col].sum() == total[col], col
    assert total["params"] == sum(p.numel() for p in tiny_codec.parameters())
    assert total["bytes_fp32"] == 4 * total["params"]
    state = tiny_codec.state_dict()
    assert total["stored_numel"] == sum(t.numel() for t in state.values())
    assert total["bytes_as_stored"] == sum(t.element_size() * t.numel() for t in state.values())
    assert "other" not in set(df["group"])
    base = parts[parts["group"] == "base"].set_index("component")
    assert list(base.index) == ["g_a", "g_s", "h_a", "h_s", "entropy_models"]
    for comp in ("g_a", "g_s", "h_a", "h_s"):
        assert base.loc[comp, "params"] == sum(p.numel() for p in getattr(tiny_codec.base, comp).parameters())
    eb = tiny_codec.base.entropy_bottleneck
    assert base.loc["entropy_models", "params"] == sum(p.numel() for p in eb.parameters())
    assert base["params"].sum() == tiny_codec.base.num_parameters()
    for key, module in tiny_codec.prompts.items():
        rows = parts[parts["group"] == f"prompt {key}"].set_index("component")
        assert list(rows.index) == ["encoder", "hyper_decoder", "decoder"]
        for comp in rows.index:
            assert rows.loc[comp, "params"] == sum(p.numel() for p in getattr(module, comp).parameters())
        assert rows["rate"].iloc[0] in tiny_codec.rates


def test_parameter_table_bytes_as_stored_in_checkpoints(tmp_path):
    model = make_tiny_codec()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_codec(full, model)
    save_codec(half, model, half=True)
    sizes = {}
    for path in (full, half):
        stored = load_file(str(path))
        _, total = _parts(parameter_table(model, path))
        assert total["bytes_as_stored"] == sum(t.element_size() * t.numel() for t in stored.values())
        assert total["stored_numel"] == sum(t.numel() for t in stored.values())
        sizes[path.name] = parameter_table(model, path)
        # from a state dict, the same
        _, total2 = _parts(parameter_table(model, stored))
        assert total2["bytes_as_stored"] == total["bytes_as_stored"]
    # weights are stored as fp16 / fp32; the entropy models (CDF tables, densities) stay as they are
    for name, width in (("full.safetensors", 4), ("half.safetensors", 2)):
        parts, _ = _parts(sizes[name])
        net = parts[parts["component"] != "entropy_models"]
        assert (net["bytes_as_stored"] == width * net["stored_numel"]).all()
        assert (net["stored_numel"] == net["params"]).all()
    ent = [_parts(sizes[n])[0].set_index("component").loc["entropy_models", "bytes_as_stored"] for n in sizes]
    assert ent[0] == ent[1]
    # a bare base checkpoint is attributed to the base rows
    save_codec(tmp_path / "base.safetensors", model.base, meta={"base_rate": model.base_rate})
    df = parameter_table(model, tmp_path / "base.safetensors")
    parts, total = _parts(df)
    assert parts[parts["group"] != "base"]["bytes_as_stored"].sum() == 0
    assert total["bytes_as_stored"] == sum(
        t.element_size() * t.numel() for t in load_file(str(tmp_path / "base.safetensors")).values())


def test_storage_saving(tiny_codec):
    s = storage_saving(tiny_codec)
    counts = tiny_codec.parameter_counts()
    assert s["K"] == len(tiny_codec.rates) == 3
    assert s["separate_params"] == 3 * counts["base"]
    assert s["ours_params"] == counts["total"]
    assert s["ratio"] == pytest.approx(tiny_codec.storage_ratio())
    assert s["saving_percent"] == pytest.approx(100 * (1 - counts["total"] / (3 * counts["base"])))
    assert s["paper_claim_percent"] == 80.0
    assert sum(s["prompt_params_per_module"].values()) == s["prompt_params"]


def test_storage_saving_paper_size_model():
    """The default-size model with its 6 rates: base + 5 prompt modules stay within the paper's 80 %."""
    s = storage_saving(zoo.build("tic"))
    assert s["K"] == 6
    assert s["saving_percent"] >= 80.0


def _ledger(prompt_seen=50, set_size=500, separate=False):
    recs = [{"run": "base", "kind": "base", "model": "base", "rate": 0.0483, "steps": 1000, "batch": 8,
             "images_in_set": set_size, "images_seen": set_size, "crops_seen": 8000, "gpu_minutes": 30.0,
             "cpu_minutes": 0.0}]
    for r in (0.025, 0.013, 0.0067):
        recs.append({"run": "lpm", "kind": "prompts", "model": f"prompt-{r:g}", "rate": r,
                     "images_in_set": set_size, "images_seen": prompt_seen, "crops_seen": 1600,
                     "gpu_minutes": 5.0, "cpu_minutes": 0.0})
        if separate:
            recs.append({"run": "sep", "kind": "separate", "model": f"separate-{r:g}", "rate": r,
                         "images_in_set": set_size, "images_seen": set_size, "crops_seen": 8000,
                         "gpu_minutes": 20.0})
    return recs


def test_dataset_saving_from_ledger():
    s = dataset_saving(_ledger())
    assert s["prompt_images"] == 50 and s["separate_images"] == 500
    assert s["separate_source"] == "assumed: full set"
    assert s["data_percent"] == pytest.approx(10.0) and s["saving_percent"] == pytest.approx(90.0)
    assert s["paper_claim_percent"] == 90.0
    assert s["prompt_image_uses"] == 150 and s["separate_image_uses"] == 1500
    assert s["prompt_crops"] == 4800 and s["prompt_minutes"] == pytest.approx(15.0)
    assert s["base_images"] == 500
    s2 = dataset_saving(_ledger(prompt_seen=100, separate=True))
    assert s2["separate_source"] == "ledger"
    assert s2["saving_percent"] == pytest.approx(80.0)
    assert s2["separate_crops"] == 24000 and s2["separate_minutes"] == pytest.approx(60.0)
    # without run names every record counts as its own subset (an upper bound on distinct images)
    anon = [{k: v for k, v in r.items() if k not in ("run", "kind")} for r in _ledger()]
    assert dataset_saving(anon)["prompt_images"] == 150


def test_data_table():
    df = data_table(_ledger(separate=True))
    assert len(df) == 1 + 3 + 3 + 3  # records + one total per kind
    totals = df[df["model"].str.startswith("total ")].set_index("kind")
    recs = df[~df["model"].str.startswith("total ")]
    for kind in ("base", "prompts", "separate"):
        sel = recs[recs["kind"] == kind]
        assert totals.loc[kind, "crops_seen"] == sel["crops_seen"].sum()
        assert totals.loc[kind, "gpu_minutes"] == pytest.approx(sel["gpu_minutes"].sum())
    assert totals.loc["prompts", "images_seen"] == 50 and totals.loc["prompts", "data_percent"] == 10.0
    assert (recs[recs["kind"] == "prompts"]["data_percent"] == 10.0).all()


def test_read_ledger_sources_and_validation(tmp_path):
    recs = _ledger()
    jsonl = tmp_path / "ledger.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert read_ledger(jsonl) == read_ledger(recs)
    ckpt = tmp_path / "m.safetensors"
    save_codec(ckpt, make_tiny_codec(), meta={"budget": "x", "ledger": recs})
    assert read_ledger(ckpt) == read_ledger(recs)
    _, info = load_codec(ckpt)
    assert read_ledger(info) == read_ledger(recs)
    bad = [dict(recs[0])]
    del bad[0]["images_seen"]
    with pytest.raises(ValueError, match="images_seen"):
        read_ledger(bad)
    with pytest.raises(ValueError, match="kind"):
        read_ledger([{**{k: recs[1][k] for k in LEDGER_REQUIRED}, "model": "mystery"}])
    with pytest.raises(ValueError, match="prompt"):
        dataset_saving(recs[:1])
    jsonl.write_text(json.dumps(recs[0]) + "\n{junk\n")
    with pytest.raises(ValueError, match=r"ledger\.jsonl: line 2 is not a JSON budget record"):
        read_ledger(jsonl)


def test_ledger_format_matches_the_training_runner():
    runner = pytest.importorskip("lpm.train.runner")
    assert set(LEDGER_REQUIRED) <= set(runner.LEDGER_FIELDS)
