"""bench/prompt_takeover.py: prompts-only modules from a latent gain that is annealed away or distilled."""

from __future__ import annotations

import importlib.util
import json

import pytest

from lpm.checkpoints import load_codec
from lpm.paths import PROJECT_ROOT

from conftest import tiny_base_checkpoint

pytestmark = pytest.mark.usefixtures("torch_single_thread")

spec = importlib.util.spec_from_file_location("prompt_takeover", PROJECT_ROOT / "bench" / "prompt_takeover.py")
takeover = importlib.util.module_from_spec(spec)
spec.loader.exec_module(takeover)

COMMON = ["--steps", "3", "--batch", "2", "--crop", "32", "--fraction", "0.5", "--model", "tiny"]


def test_gain_factor_schedule():
    f = [takeover.gain_factor(s, 100, 0.4) for s in (0, 39, 40, 65, 90, 99)]
    assert f == [1.0, 1.0, 1.0, pytest.approx(0.5), 0.0, 0.0]


def test_anneal_then_distill_end_in_prompts_only_modules(tmp_path):
    base = tiny_base_checkpoint(tmp_path)
    data = ["--data-dir", str(tmp_path), "--images", str(tmp_path / "bsds500" / "val")]
    out = tmp_path / "anneal.json"
    assert takeover.main(["--mode", "anneal", "--init", str(base), "--rate", "0.0067", *data, *COMMON,
                          "--out-dir", str(tmp_path / "m"), "--json", str(out)]) == 0
    row = json.loads(out.read_text())["row"]
    assert row["mode"] == "anneal" and row["bpp"] > 0 and row["base_bpp"] > 0 and row["training_log"]
    ck = load_codec(row["checkpoint"])
    assert ck.kind == "prompted" and ck.model.module(0.0067).log_gain is None  # prompts only
    # a teacher with a gain: a 2-step prompts run with latent_gain (the reach probe's "gain" variant)
    from lpm.train.runner import Runner, RunConfig

    teacher_dir = tmp_path / "teacher"
    (teacher,) = Runner(RunConfig(name="g", kind="prompts", model="tiny", init=str(base), rates=[0.0067, 0.013],
                                  base_rate=0.013, prompt={"latent_gain": True}, steps=2, out_dir=str(teacher_dir),
                                  data={"dir": str(tmp_path), "crop": 32, "batch": 2, "on_device": False}),
                        progress=False).run()
    out = tmp_path / "distill.json"
    assert takeover.main(["--mode", "distill", "--teacher", str(teacher), "--rate", "0.0067", *data, *COMMON,
                          "--out-dir", str(tmp_path / "m"), "--json", str(out)]) == 0
    row = json.loads(out.read_text())["row"]
    ck = load_codec(row["checkpoint"])
    assert row["mode"] == "distill" and ck.model.module(0.0067).log_gain is None
    # a teacher without a gain has nothing to distil
    with pytest.raises(SystemExit):
        takeover.main(["--mode", "distill", "--teacher", row["checkpoint"], "--rate", "0.0067", *data, *COMMON])


@pytest.mark.parametrize("argv", [["--mode", "anneal"], ["--mode", "distill"], ["--mode", "anneal", "--init", "x",
                                                                                  "--free", "0.95"]])
def test_missing_or_bad_arguments_stop_first(argv, capsys):
    with pytest.raises(SystemExit) as e:
        takeover.main([*argv, "--rate", "0.01", "--data-dir", "x", "--images", "x"])
    assert e.value.code == 2 and capsys.readouterr().err
