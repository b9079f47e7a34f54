"""scripts/make_smoke_checkpoint.py: the smoke checkpoints' driver, on tiny configs and fake images — the gain
variant first, then the paper's method (prompts alone) on the very base inside it (``--prompts-only``)."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from lpm.checkpoints import load_codec, save_codec
from lpm.eval.compare import base_state_sha256
from lpm.paths import PROJECT_ROOT

from conftest import make_tiny_codec, write_fake_bsds500

pytestmark = pytest.mark.usefixtures("torch_single_thread")

spec = importlib.util.spec_from_file_location("make_smoke", PROJECT_ROOT / "scripts" / "make_smoke_checkpoint.py")
smoke = importlib.util.module_from_spec(spec)
spec.loader.exec_module(smoke)

RATES = [0.0067, 0.013, 0.0483]


def _configs(root):
    data = {"set": "bsds500", "splits": ["train", "val", "test"], "crop": 32, "batch": 2, "on_device": False}
    common = {"model": "tiny", "lr": 1e-3, "lr_drops": [], "log_every": 1, "checkpoint_every": 100, "seed": 0}
    paths = {}
    for name, extra in (
        ("base", {"kind": "base", "lmbda": 0.0483, "steps": 2, "data": data}),
        ("gain", {"kind": "prompts", "init": "set-by-the-script.safetensors", "rates": RATES, "base_rate": 0.0483, "steps": 1,
                  "prompt": {"latent_gain": True}, "data": {**data, "fraction": 0.5}}),
        ("only", {"kind": "prompts", "init": "set-by-the-script.safetensors", "rates": RATES, "base_rate": 0.0483, "steps": 1,
                  "prompt": {"latent_gain": False}, "data": {**data, "fraction": 0.5}}),
    ):
        paths[name] = root / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump({"name": f"smoke-{name}", **common, **extra}))
    return paths


def test_prompts_only_reuses_the_base_inside_the_gain_checkpoint_and_its_ledger(tmp_path):
    write_fake_bsds500(tmp_path, {"train": 4, "val": 2, "test": 2})
    cfg = _configs(tmp_path)
    gain, only = tmp_path / "gain.safetensors", tmp_path / "only.safetensors"
    common = ["--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]
    assert smoke.main([*common, "--base-config", str(cfg["base"]), "--prompts-config", str(cfg["gain"]),
                       "--out", str(gain)]) == 0
    assert smoke.main([*common, "--prompts-only", "--base-from", str(gain), "--prompts-only-config",
                       str(cfg["only"]), "--prompts-only-out", str(only)]) == 0
    g, o = load_codec(gain), load_codec(only)
    assert base_state_sha256(g.model) == base_state_sha256(o.model)  # the same frozen base, bit for bit
    assert g.model.prompt_config.latent_gain is True and o.model.prompt_config.latent_gain is False
    assert "+ per-rate latent gain (beyond the paper)" in g.meta["budget"]
    assert "the paper's method: prompts alone (no latent gain)" in o.meta["budget"]
    base_records = [r for r in g.meta["ledger"] if r["kind"] == "base"]
    assert [r for r in o.meta["ledger"] if r["kind"] == "base"] == base_records  # the base's ledger, carried over
    assert [r["kind"] for r in o.meta["ledger"]] == ["base", "prompts", "prompts"]
    assert f"({base_records[0]['cpu_minutes']:.1f} min)" in o.meta["budget"]  # the base's minutes, not retrained
    assert o.meta["made_by"].startswith("scripts/make_smoke_checkpoint.py --prompts-only")
    assert o.meta["runs"]["base"] == g.meta["runs"]["base"] and o.meta["base_steps"] == 2
    assert len(o.meta["prompt_images"]) == len(g.meta["prompt_images"]) == 4  # half of 8, the same seeded subset


def test_prompts_only_refuses_a_base_without_its_ledger_and_lora_together(tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    save_codec(bare, make_tiny_codec(seed=1), meta={"budget": "untrained test model"})
    with pytest.raises(SystemExit, match="no base ledger"):
        smoke.main(["--prompts-only", "--base-from", str(bare), "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        smoke.main(["--prompts-only", "--lora", "--data-dir", str(tmp_path)])
    assert e.value.code == 2 and "pick one" in capsys.readouterr().err
