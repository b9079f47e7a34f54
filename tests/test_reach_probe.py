"""bench/reach_probe.py: prompt modules one notch away from a frozen base, measured with real bitstreams."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lpm.checkpoints import load_codec
from lpm.paths import PROJECT_ROOT

from conftest import tiny_base_checkpoint

pytestmark = pytest.mark.usefixtures("torch_single_thread")

spec = importlib.util.spec_from_file_location("reach_probe", PROJECT_ROOT / "bench" / "reach_probe.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_neighbours_are_one_notch_each_side():
    assert probe.neighbours(0.013, probe.LADDER) == [0.0067, 0.025]
    assert probe.neighbours(0.0483, probe.LADDER) == [0.025]
    assert probe.neighbours(0.0018, probe.LADDER) == [0.0035]


def test_rd_cost_matches_the_training_loss_scale():
    # PSNR 20 dB: MSE 0.01 of [0, 1] images; λ·255²·MSE + bpp
    assert probe.rd_cost(0.01, 20.0, 0.5) == pytest.approx(0.01 * 65025 * 0.01 + 0.5)


def _probe(tmp_path, *extra: str) -> tuple[Path, Path]:
    """A 2-step tiny base at λ=0.013 on fake images, then the probe with 2-step runs; (base file, JSON)."""
    base = tiny_base_checkpoint(tmp_path)
    out = tmp_path / "probe.json"
    rc = probe.main(["--init", str(base), "--model", "tiny", "--data-dir", str(tmp_path),
                     "--images", str(tmp_path / "bsds500" / "val"), "--steps", "2", "--batch", "2", "--crop", "32",
                     "--fraction", "0.5", "--device", "cpu", "--out-dir", str(tmp_path / "runs"), "--json", str(out),
                     *extra])
    assert rc == 0
    return base, out


def test_probe_trains_both_variants_and_measures_real_bytes(tmp_path):
    _, out = _probe(tmp_path)
    data = json.loads(out.read_text())
    assert data["meta"]["base_rate"] == 0.013 and data["base"]["bpp"] > 0
    assert [(r["rate"], r["variant"]) for r in data["rows"]] == [(0.0067, "prompts"), (0.0067, "gain"),
                                                                 (0.025, "prompts"), (0.025, "gain")]
    for r in data["rows"]:
        ck = load_codec(r["checkpoint"])
        assert ck.kind == "prompted" and sorted(ck.model.rates) == sorted([r["rate"], 0.013])
        assert (ck.model.module(r["rate"]).log_gain is not None) == (r["variant"] == "gain")
        assert r["bpp"] > 0 and "2 steps" in data["meta"]["budget"]


def test_json_is_complete_at_the_end_and_keeps_finished_probes_when_cut(tmp_path):
    import os
    import subprocess
    import sys
    import time

    base, out = _probe(tmp_path, "--rates", "0.025", "--variants", "prompts")
    data = json.loads(out.read_text())
    assert data["meta"]["complete"] is True and data["meta"]["probes_planned"] == [[0.025, "prompts"]]
    assert data["meta"]["eval_device"] == "cpu" and len(data["rows"]) == 1
    # cut after the first probe (a stretch's deadline): the JSON holds that probe, marked incomplete
    cut = tmp_path / "cut.json"
    cmd = [sys.executable, str(PROJECT_ROOT / "bench" / "reach_probe.py"), "--init", str(base),
           "--model", "tiny", "--data-dir", str(tmp_path), "--images", str(tmp_path / "bsds500" / "val"),
           "--rates", "0.0067", "0.025", "--variants", "prompts", "--steps", "2", "--batch", "2", "--crop", "32",
           "--fraction", "0.5", "--device", "cpu", "--out-dir", str(tmp_path / "runs-cut"), "--json", str(cut)]
    # the second probe is slowed down by a sitecustomize that sleeps in the Runner's second construction
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        "import time\nimport lpm.train.runner as r\n_init = r.Runner.__init__\n_n = [0]\n"
        "def _slow(self, *a, **k):\n    _n[0] += 1\n    if _n[0] == 2:\n        time.sleep(60)\n"
        "    _init(self, *a, **k)\nr.Runner.__init__ = _slow\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(slow), str(PROJECT_ROOT)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        until = time.time() + 300
        while time.time() < until and proc.poll() is None:
            if cut.exists() and json.loads(cut.read_text())["rows"]:
                break
            time.sleep(0.1)
    finally:
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace")
    data = json.loads(cut.read_text())
    assert data["meta"]["complete"] is False, err[-2000:]
    assert [(r["rate"], r["variant"]) for r in data["rows"]] == [(0.0067, "prompts")]
    assert not list(tmp_path.glob("cut.json.tmp"))


def test_separate_control_fine_tunes_all_parameters_of_a_base_copy(tmp_path):
    base, out = _probe(tmp_path, "--rates", "0.025", "--variants", "separate", "--control-lr", "3e-4")
    (row,) = json.loads(out.read_text())["rows"]
    assert row["variant"] == "separate" and row["rate"] == 0.025 and row["lr"] == 3e-4
    assert [e["step"] for e in row["training_log"]] == [1, 2] and all(e["bpp"] > 0 for e in row["training_log"])
    ck = load_codec(row["checkpoint"])
    assert ck.kind == "tic" and ck.base_rate == pytest.approx(0.025)
    before = load_codec(base).model.state_dict()
    after = ck.model.state_dict()
    changed = [k for k in before if not before[k].equal(after[k].to(before[k].dtype))]
    assert len(changed) > len(before) // 2  # all parameters trained, not a frozen base


def test_lora_probe_trains_low_rank_adapters_of_the_given_rank_on_the_frozen_base(tmp_path):
    base, out = _probe(tmp_path, "--rates", "0.025", "--variants", "lora", "--lora-rank", "2",
                       "--lora-transforms", "g_a", "h_a", "--lora-targets", "qkv", "proj")
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["variant"] == "lora" and row["lora_rank"] == 2 and row["prompt_settings"] == {} and row["bpp"] > 0
    assert row["lora_transforms"] == ["g_a", "h_a"] and row["lora_targets"] == ["qkv", "proj"]
    ck = load_codec(row["checkpoint"])
    assert ck.kind == "lora" and sorted(ck.model.rates) == [0.013, 0.025]
    assert ck.model.lora_config.rank == 2 and list(ck.model.lora_config.transforms) == ["g_a", "h_a"]
    assert list(ck.model.lora_config.targets) == ["qkv", "proj"]
    before = load_codec(base).model.state_dict()
    assert all(torch.equal(v, ck.model.base.state_dict()[k]) for k, v in before.items())  # the base stays frozen
    assert "low-rank adapters (rank 2, g_a/h_a only, qkv/proj layers only)" in probe.markdown_table(data)


def test_prompt_settings_reach_the_probed_modules_and_bad_ones_stop_first(tmp_path, capsys):
    _, out = _probe(tmp_path, "--rates", "0.025", "--variants", "prompts", "--prompt", "enc_head_hidden=4",
                    "--prompt", "head_init_scale=1.0")
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["prompt_settings"] == {"enc_head_hidden": 4, "head_init_scale": 1.0}
    assert "enc_head_hidden=4" in data["meta"]["budget"]
    ck = load_codec(row["checkpoint"])
    assert ck.model.prompt_config.enc_head_hidden == 4 and ck.model.prompt_config.head_init_scale == 1.0
    from lpm.models import prompt_settings

    assert prompt_settings(["additive=true", "additive=0"]) == {"additive": False}  # the last one counts
    assert prompt_settings(["additive=True"]) == {"additive": True}
    for bad in ("latent_gain=1", "enc_head_hidden", "enc_head_hidden=x", "enc_channels=0", "additive=yes"):
        with pytest.raises(SystemExit) as e:
            probe.main(["--init", "nowhere", "--data-dir", "x", "--images", "x", "--prompt", bad])
        assert e.value.code == 2 and "--prompt" in capsys.readouterr().err


def test_shares_of_the_control_and_the_table():
    rows = [
        {"rate": 0.025, "variant": "prompts", "bpp": 0.11, "psnr": 30.0, "bpp_change_vs_base_rate": 0.1,
         "psnr_change_db": 0.5, "rd_cost": 9.0, "rd_cost_base_alone": 10.0},
        {"rate": 0.025, "variant": "separate", "bpp": 0.14, "psnr": 30.5, "bpp_change_vs_base_rate": 0.4,
         "psnr_change_db": 1.0, "rd_cost": 6.0, "rd_cost_base_alone": 10.0},
        {"rate": 0.0067, "variant": "gain", "bpp": 0.09, "psnr": 29.0, "bpp_change_vs_base_rate": -0.1,
         "psnr_change_db": -0.5, "rd_cost": 3.0, "rd_cost_base_alone": 3.1},
    ]
    out = probe.against_control(rows)
    assert out[0]["reach_share"] == pytest.approx(0.25) and out[0]["rd_gain_share"] == pytest.approx(0.25)
    assert "reach_share" not in out[1]
    assert out[2]["reach_share"] is None and out[2]["rd_gain_share"] is None  # no control at that rate
    table = probe.markdown_table({"base": {"bpp": 0.1, "psnr": 29.5}, "rows": rows})
    lines = table.splitlines()
    assert len(lines) == 5 and "| λ=0.025, prompts alone | 0.1100 | +10.0 % | +0.50 dB |" in lines[2]
    assert lines[2].endswith("| 25 % | 25 % | — |") and lines[4].endswith("| — | — | — |")


def _fake(sha: str, rows: list[dict], complete: bool = True) -> dict:
    return {"meta": {"init": "base.safetensors", "init_sha256": sha, "init_budget": "b", "base_rate": 0.013,
                     "complete": complete, "budget": "x"},
            "base": {"bpp": 0.25, "psnr": 26.0}, "rows": rows}


def _row(variant: str, bpp_change: float, rd: float, **extra) -> dict:
    return {"rate": 0.0067, "variant": variant, "bpp": 0.25 * (1 + bpp_change), "psnr": 26.0,
            "bpp_change_vs_base_rate": bpp_change, "psnr_change_db": 0.0, "rd_cost": rd, "rd_cost_base_alone": 1.2,
            "prompt_settings": {}, **extra}


def test_merge_joins_probes_of_one_base_and_recomputes_the_control_shares(tmp_path, capsys):
    a = _fake("s1", [_row("prompts", -0.003, 1.199), _row("separate", -0.12, 1.188)])
    b = _fake("s1", [_row("prompts", -0.007, 1.198, prompt_settings={"enc_source": "hidden"}),
                     _row("lora", -0.08, 1.192, lora_rank=6, lora_transforms=["g_a", "h_a", "h_s", "g_s"],
                          lora_targets=["fc1", "fc2"])])
    merged = probe.merge([a, b], ["a.json", "b.json"])
    assert [r["source"] for r in merged["rows"]] == ["a.json", "a.json", "b.json", "b.json"]
    lora = merged["rows"][3]
    assert lora["reach_share"] == pytest.approx(0.08 / 0.12) and lora["rd_gain_share"] == pytest.approx(0.008 / 0.012)
    assert [m["file"] for m in merged["meta"]["merged_from"]] == ["a.json", "b.json"]
    table = probe.markdown_table(merged)
    assert "prompts alone (enc_source=hidden)" in table and "fc1/fc2 layers only" in table
    # a probe on a restrided copy of the same base (same weights) merges; its rows say their stride
    c = _fake("copy", [_row("prompts", -0.055, 1.195, prompt_settings={"additive": True})])
    c["meta"].update(restrided_from_sha256="s1", prompt_stride=1)
    both = probe.merge([a, c], ["a.json", "c.json"])
    assert [r["prompt_stride"] for r in both["rows"]] == [None, None, 1]
    assert "prompts alone (additive=True, prompt stride 1)" in probe.markdown_table(both)
    for bad, why in ((_fake("s2", []), "another base"), (_fake("s1", [], complete=False), "unfinished"),
                     (_fake("s1", [_row("separate", -0.1, 1.19)]), "two separate controls")):
        with pytest.raises(ValueError, match=why):
            probe.merge([a, bad], ["a.json", "bad.json"])
    # the command line writes the merged file and prints its table; a bad merge is a usage error
    fa, fb, out = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "m.json"
    fa.write_text(json.dumps(a)), fb.write_text(json.dumps(b))
    assert probe.main(["--merge", str(fa), str(fb), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][3]["reach_share"] == pytest.approx(0.08 / 0.12)
    assert "low-rank adapters (rank 6, fc1/fc2 layers only)" in capsys.readouterr().out
    fb.write_text(json.dumps(_fake("s2", [])))
    with pytest.raises(SystemExit):
        probe.main(["--merge", str(fa), str(fb), "--json", str(out)])
    assert "another base" in capsys.readouterr().err


def test_probe_with_prompts_from_the_blocks_own_tokens(tmp_path):
    _, out = _probe(tmp_path, "--rates", "0.025", "--variants", "prompts", "--prompt", "enc_source=hidden",
                    "--prompt", "dec_source=hidden", "--prompt", "enc_channels=3")
    (row,) = json.loads(out.read_text())["rows"]
    assert row["prompt_settings"] == {"enc_source": "hidden", "dec_source": "hidden", "enc_channels": 3}
    ck = load_codec(row["checkpoint"])
    cfg = ck.model.prompt_config
    assert (cfg.enc_source, cfg.dec_source, cfg.enc_channels) == ("hidden", "hidden", 3)
    assert type(ck.model.module(0.025).decoder).__name__ == "HiddenPromptNet" and row["bpp"] > 0


def test_prompt_stride_probes_run_on_a_restrided_copy_with_the_same_weights(tmp_path, capsys):
    base, out = _probe(tmp_path, "--rates", "0.025", "--variants", "prompts", "--prompt-stride", "1")
    data = json.loads(out.read_text())
    assert data["meta"]["prompt_stride"] == 1 and data["meta"]["restrided_from"] == str(base)
    assert "prompt stride 1" in data["meta"]["budget"]
    copy = load_codec(data["meta"]["init"])
    assert copy.config.prompt_stride == 1 and copy.sha256 == data["meta"]["init_sha256"]
    original = load_codec(base).model.state_dict()
    assert all(torch.equal(v, copy.model.state_dict()[k]) for k, v in original.items())
    (row,) = data["rows"]
    ck = load_codec(row["checkpoint"])
    assert ck.config.prompt_stride == 1 and row["bpp"] > 0
    # the base itself codes the same at either stride (no prompts at the base rate)
    from lpm.data import find_images
    from lpm.eval.rd import evaluate_codec

    images = find_images(tmp_path / "bsds500" / "val")
    from lpm import zoo

    res = evaluate_codec(zoo.load(str(base)), images, [0.013], progress=False)["results"]
    assert (res["bpp"][0], res["psnr-rgb"][0]) == (data["base"]["bpp"], data["base"]["psnr"])
    # a merge counts the parameters of rows written before rows counted them, from their checkpoints
    counted = row["trained_parameters"]
    del row["trained_parameters"]
    assert probe.merge([data], ["p.json"])["rows"][0]["trained_parameters"] == counted > 0
    with pytest.raises(SystemExit):
        _probe(tmp_path / "bad", "--prompt-stride", "3")
    assert "--prompt-stride 3" in capsys.readouterr().err


def test_hidden_probe_trains_token_fed_additive_prompts_at_stride_one_of_a_prompt_modules_size(tmp_path):
    base, out = _probe(tmp_path, "--rates", "0.025", "--variants", "prompts", "hidden", "hidden_add")
    data = json.loads(out.read_text())
    prompts, hidden, add_only = data["rows"]
    assert hidden["variant"] == "hidden" and hidden["prompt_stride"] == 1 and prompts["prompt_stride"] == 2
    width = data["meta"]["hidden"]["hidden"]["width"]
    assert hidden["prompt_settings"] == probe.hidden_settings(width)
    ck = load_codec(hidden["checkpoint"])
    cfg = ck.model.prompt_config
    assert (cfg.enc_source, cfg.dec_source, cfg.additive, ck.config.prompt_stride) == ("hidden", "hidden", True, 1)
    # the widest module that does not exceed a tiny prompt module, and the next width would
    n_prompt = data["meta"]["hidden"]["hidden"]["prompt_module_parameters"]
    assert prompts["trained_parameters"] == n_prompt
    assert hidden["trained_parameters"] <= n_prompt
    assert n_prompt - hidden["trained_parameters"] < hidden["trained_parameters"] / width * 1.5
    assert all(torch.equal(v, ck.model.base.state_dict()[k]) for k, v in load_codec(base).model.state_dict().items())
    assert f"token-fed additive prompts (width {width}, prompt stride 1)" in probe.markdown_table(data)
    # additive only: the same heads without prompt keys/values, wider for the same count
    w2 = data["meta"]["hidden"]["hidden_add"]["width"]
    assert add_only["prompt_settings"] == probe.hidden_settings(w2, kv=False) and w2 > width
    assert add_only["trained_parameters"] <= n_prompt and add_only["prompt_stride"] == 1
    ck2 = load_codec(add_only["checkpoint"])
    assert ck2.model.prompt_config.kv_prompts is False
    assert all(h.adds_only for heads in ck2.model.module(0.025).decoder(None).values() for h in heads)
    assert "token-fed additive-only prompts (no keys/values) (width" in probe.markdown_table(data)
    _, out2 = _probe(tmp_path / "w", "--rates", "0.025", "--variants", "hidden", "--hidden-width", "3")
    assert json.loads(out2.read_text())["rows"][0]["prompt_settings"]["enc_channels"] == 3


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "results" / "bench").glob("reach_probe_*.json")),
                         ids=lambda p: p.name)
def test_every_committed_probe_file_prints_its_table(path):
    """The README cites these files; `reach_probe.py --table FILE` must print each (an older file's variant
    names included), one row per probe."""
    data = json.loads(path.read_text())
    table = probe.markdown_table(data)
    assert len(table.splitlines()) == 2 + len(data["rows"])
