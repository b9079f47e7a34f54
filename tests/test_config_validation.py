"""Run configs are type- and range-checked before a run creates or writes anything (lpm.train.config)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import yaml

from lpm.cli import main
from lpm.paths import PROJECT_ROOT
from lpm.train.config import MAX_CROP, DataConfig, RunConfig, load_config

CONFIGS = PROJECT_ROOT / "configs"


def _base(**kw) -> dict:
    cfg = {"name": "cv", "kind": "base", "model": "tiny", "steps": 2, "log_every": 1, "checkpoint_every": 1,
           "data": {"crop": 32, "batch": 1, "on_device": False}}
    cfg.update(kw)
    return cfg


def _data(**kw) -> dict:
    return {"crop": 32, "batch": 1, "on_device": False, **kw}


PROMPTS = {"kind": "prompts", "init": "base.safetensors", "rates": [0.013, 0.025], "base_rate": 0.013}

# (key named in the error, the offending settings)
BAD = [
    ("steps", {"steps": "1e18"}),
    ("steps", {"steps": 1e18}),
    ("steps", {"steps": 2.5}),
    ("steps", {"steps": 1000.0}),  # integral floats are refused too: counts are written in digits
    ("steps", {"steps": 0}),
    ("steps", {"steps": True}),
    ("steps", {"steps": 10**20}),  # a typo, not a plan: it ran with a 2e15-hour estimate
    ("steps", {"steps": 10**9 + 1}),
    ("checkpoint_every", {"checkpoint_every": 2**63}),
    ("log_every", {"log_every": 2**70}),
    ("restart_warmup", {"restart_warmup": 10**10}),
    ("checkpoint_every", {"checkpoint_every": 0}),
    ("checkpoint_every", {"checkpoint_every": 1.5}),
    ("log_every", {"log_every": "10"}),
    ("restart_warmup", {"restart_warmup": -1}),
    ("restart_warmup", {"restart_warmup": 2.0}),
    ("seed", {"seed": 1.5}),
    ("seed", {"seed": "0"}),
    ("seed", {"seed": -1}),
    ("seed", {"seed": 2**64}),
    ("lmbda", {"lmbda": -1}),
    ("lmbda", {"lmbda": 0}),
    ("lmbda", {"lmbda": math.nan}),
    ("lmbda", {"lmbda": math.inf}),
    ("lmbda", {"lmbda": "0.01"}),
    ("lmbda", {"lmbda": True}),
    ("base_rate", {"base_rate": -0.013}),
    ("base_rate", {"base_rate": None}),
    ("rates", {"rates": [0.013, -0.025]}),
    ("rates", {"rates": [0.013, math.nan]}),
    ("rates", {"rates": [0.013, "0.025"]}),
    ("rates", {"rates": [0.013, 0.013]}),
    ("rates", {"rates": []}),
    ("rates", {"rates": 0.013}),
    ("rates", {"rates": [0.001 * (i + 1) for i in range(65)]}),
    ("base_rate", {**PROMPTS, "base_rate": 0.0483}),  # a prompts run's base rate must be on its ladder
    ("2 rates", {"kind": "rate_conditioned", "rates": [0.013]}),  # was an error after the out_dir was made
    ("2 rates", {"kind": "gain_units", "rates": [0.013]}),
    ("prompt", {"kind": "rate_conditioned", "prompt": {"latent_gain": True}}),
    ("prompt", {"kind": "rate_conditioned", "prompt": {"additive": True}}),
    ("lr", {"lr": -1e-3}),
    ("lr", {"lr": math.nan}),
    ("lr", {"lr": "1e-3"}),
    ("aux_lr", {"aux_lr": math.inf}),
    ("aux_lr", {"aux_lr": -0.5}),
    ("clip", {"clip": -1.0}),
    ("clip", {"clip": None}),
    ("clip", {"clip": math.nan}),
    ("lr_drops", {"lr_drops": [0.95, 0.8]}),
    ("lr_drops", {"lr_drops": [0.0]}),
    ("lr_drops", {"lr_drops": [1.0]}),
    ("lr_drops", {"lr_drops": [1.5]}),
    ("lr_drops", {"lr_drops": ["0.5"]}),
    ("lr_drops", {"lr_drops": 0.8}),
    ("metric", {"metric": "psnr"}),
    ("metric", {"metric": ["mse"]}),
    ("data.crop", {"metric": "ms-ssim"}),  # 32-pixel crops are too small for five MS-SSIM scales
    ("bf16", {"bf16": "yes"}),
    ("compile", {"compile": 1}),
    ("channels_last", {"channels_last": "false"}),
    ("partial_half", {"partial_half": None}),
    ("max_minutes", {"max_minutes": -1}),
    ("max_minutes", {"max_minutes": math.nan}),
    ("max_minutes", {"max_minutes": math.inf}),
    ("max_minutes", {"max_minutes": "5"}),
    ("name", {"name": "../../../../tmp/x"}),
    ("name", {"name": "a/b"}),
    ("name", {"name": "a\\b"}),
    ("name", {"name": ".."}),
    ("name", {"name": "."}),
    ("name", {"name": ".hidden"}),
    ("name", {"name": ""}),
    ("name", {"name": "run\x1b[2J"}),
    ("name", {"name": "run\n2"}),
    ("name", {"name": " run"}),
    ("name", {"name": "x" * 256}),
    ("name", {"name": 7}),
    ("name", {"name": None}),
    ("kind", {"kind": ["base"]}),
    ("kind", {"kind": "bases"}),
    ("model", {"model": "huge"}),
    ("model", {"model": 3}),
    ("out_dir", {"out_dir": 5}),
    ("out_dir", {"out_dir": ""}),
    ("out_dir", {"out_dir": "a\0b"}),
    ("init", {"init": ["a.safetensors"]}),
    ("continue_from", {"continue_from": 1.0}),
    ("prompt", {"prompt": [1]}),
    ("prompt", {"prompt": {"no_such_setting": 1}}),
    ("prompt_stride", {**PROMPTS, "prompt_stride": 1.0}),
    ("prompt_stride", {**PROMPTS, "prompt_stride": True}),
    ("prompt_stride", {**PROMPTS, "prompt_stride": 3}),
    ("lora", {**PROMPTS, "kind": "lora", "lora": [2]}),
    ("data", {"data": [1, 2]}),
    ("data", {"data": "bsds500"}),
    ("data", {"data": _data(cropp=32)}),
    ("data.crop", {"data": _data(crop=0)}),
    ("data.crop", {"data": _data(crop=-5)}),
    ("data.crop", {"data": _data(crop=60000)}),
    ("data.crop", {"data": _data(crop=MAX_CROP + 1)}),
    ("data.crop", {"data": _data(crop=32.0)}),
    ("data.crop", {"data": _data(crop="32")}),
    ("data.batch", {"data": _data(batch=0)}),
    ("data.batch", {"data": _data(batch=2.5)}),
    ("data.batch", {"data": _data(batch=10**12)}),
    ("data.batch", {"data": _data(batch=False)}),
    ("data.fraction", {"data": _data(fraction=5)}),
    ("data.fraction", {"data": _data(fraction=0)}),
    ("data.fraction", {"data": _data(fraction=-0.1)}),
    ("data.fraction", {"data": _data(fraction=math.nan)}),
    ("data.fraction", {"data": _data(fraction="0.1")}),
    ("data.splits", {"data": _data(splits="train")}),
    ("data.splits", {"data": _data(splits=[])}),
    ("data.splits", {"data": _data(splits=["train", 3])}),
    ("data.splits", {"data": _data(splits=["../train"])}),
    ("data.splits", {"data": _data(splits=["train", "train"])}),
    ("data.set", {"data": _data(set=["bsds500"])}),
    ("data.set", {"data": _data(set="imagenet")}),
    ("data.dir", {"data": _data(dir=3)}),
    ("data.on_device", {"data": _data(on_device="no")}),
    ("data.preload", {"data": _data(preload=0)}),
]


@pytest.mark.parametrize("key, bad", BAD, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BAD)])
def test_a_bad_value_is_a_value_error_naming_the_key(key, bad):
    with pytest.raises(ValueError) as info:
        RunConfig(**_base(**bad))
    msg = str(info.value)
    assert key in msg, msg
    assert "\n" not in msg and len(msg) < 400, msg  # one line; the offending value is cut short


SOME = BAD[:8] + BAD[-12:]


@pytest.mark.parametrize("key, bad", SOME, ids=[f"{k}-{i}" for i, (k, _) in enumerate(SOME)])
def test_load_config_prefixes_the_file(tmp_path, key, bad):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_base(**bad)))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: .*{re.escape(key)}"):
        load_config(path)


@pytest.mark.parametrize("text, key, hint", [
    ("steps: 1e18", "steps", "a string"),  # YAML 1.1: no dot, so a string
    ("steps: 1.0e+18", "steps", "a float"),
    ("steps: 2.5", "steps", "got 2.5"),
    ("lr: 1e-3", "lr", "e.g. 0.001"),
    ("lmbda: -1", "lmbda", "got -1"),
    ("bf16: 'yes'", "bf16", "true or false"),
    ("lr: .nan", "lr", "got nan"),
    ("data: [1, 2]", "data", "mapping"),
])
def test_yaml_pitfalls_get_a_clear_message(tmp_path, text, key, hint):
    cfg = _base()
    cfg.pop(key, None)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg) + text + "\n")
    with pytest.raises(ValueError, match=re.escape(key)) as info:
        load_config(path)
    assert hint in str(info.value)


@pytest.mark.parametrize("text, what", [
    ("kind: base\nmodel: tiny\n", "missing keys ['name']"),
    ("name: x\n", "missing keys ['kind']"),
    ("name: x\nkind: base\n1: 2\nfoo: 3\n", "unknown keys ['1', 'foo']"),
    ("name: x\nkind: base\ndata: {crop: 32, cropp: 3}\n", "data: unknown keys ['cropp']"),
    ("name: [x\n", "not valid YAML"),
    ("name: !!python/object:os.system x\n", "not valid YAML"),
    ("- 1\n- 2\n", "YAML mapping"),
])
def test_malformed_files_are_value_errors(tmp_path, text, what):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(what)):
        load_config(path)
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ValueError, match="UTF-8"):
        load_config(path)


def test_good_values_pass_and_keep_their_meaning(tmp_path):
    cfg = RunConfig(**_base(name="probe-lora-0.0067", lmbda=1, max_minutes=0, clip=0, lr=0, lr_drops=[0.5, 0.5],
                            out_dir=tmp_path / "run", seed=2**32 - 1,
                            data=_data(crop=MAX_CROP, fraction=1, splits=("train",), dir=tmp_path)))
    assert cfg.lmbda == 1.0 and isinstance(cfg.lmbda, float)
    assert cfg.lr == 0.0 and cfg.max_minutes == 0.0 and cfg.clip == 0.0 and cfg.lr_drops == [0.5, 0.5]
    assert cfg.out_dir == str(tmp_path / "run") and cfg.data.dir == str(tmp_path)  # PathLike -> str
    assert cfg.data.splits == ["train"] and cfg.data.fraction == 1.0
    ms = RunConfig(**_base(metric="ms-ssim", data=_data(crop=161)))
    assert ms.metric == "ms-ssim"
    prompts = RunConfig(**_base(**PROMPTS, prompt_stride=2, prompt={"enc_channels": 4}))
    assert prompts.prompt_stride == 2 and prompts.rates == [0.013, 0.025]
    # the YAML the runner writes as config.yaml reads back as the same config
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(prompts.to_dict(), sort_keys=False))
    assert load_config(path) == prompts
    assert isinstance(DataConfig().crop, int)


def test_the_shipped_configs_load():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = load_config(path)
        assert cfg.name == path.stem


@pytest.mark.parametrize("text", [
    "steps: 1e18", "steps: 1.0e+18", "steps: 2.5", "lmbda: -1", "data: [1, 2]", "data: {batch: 0, crop: 32}",
    "data: {batch: 2, crop: -5}", "data: {batch: 1, crop: 60000}", "name: ../../../../tmp/x", "lr: .nan",
])
def test_cli_refuses_in_one_line_before_writing(tmp_path, capsys, text):
    cfg = _base()
    key = text.split(":", 1)[0]
    cfg.pop(key, None)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg) + text + "\n")
    out = tmp_path / "run"
    rc = main(["train", str(path), "--data-dir", str(tmp_path / "nodata"), "--out-dir", str(out), "--device", "cpu",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lpm: error: {path}: "), err
    assert key in lines[0]
    assert not out.exists()  # not even an empty folder: nothing of it was written


def test_a_name_cannot_move_the_default_out_dir(tmp_path, capsys):
    target = tmp_path / "escaped"
    name = os.path.relpath(target, PROJECT_ROOT / "results" / "runs")
    assert ".." in Path(name).parts
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_base(name=name)))
    rc = main(["train", str(path), "--data-dir", str(tmp_path), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "name must be a plain name" in err and "path separator" in err
    assert not target.exists()
