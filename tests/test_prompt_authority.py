"""bench/prompt_authority.py: can the prompt nets scale the latent (encoder half) and undo it (decoder half)?"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from lpm.paths import PROJECT_ROOT

from conftest import tiny_base_checkpoint

pytestmark = pytest.mark.usefixtures("torch_single_thread")

spec = importlib.util.spec_from_file_location("prompt_authority", PROJECT_ROOT / "bench" / "prompt_authority.py")
authority = importlib.util.module_from_spec(spec)
spec.loader.exec_module(authority)


def test_normalised_error_is_the_share_of_the_change_left():
    start, want = torch.zeros(10), torch.full((10,), 2.0)
    assert authority.normalised_error(start, want, start).item() == pytest.approx(1.0)
    assert authority.normalised_error(want, want, start).item() == 0.0
    assert authority.normalised_error(torch.ones(10), want, start).item() == pytest.approx(0.25)


def test_both_halves_train_and_report(tmp_path):
    base = tiny_base_checkpoint(tmp_path)
    out = tmp_path / "a.json"
    rc = authority.main(["--init", str(base), "--model", "tiny", "--data-dir", str(tmp_path),
                         "--steps", "3", "--batch", "2", "--crop", "64", "--fraction", "0.5", "--scales", "2",
                         "--prompt", "head_init_scale=1.0", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert [(r["part"], r["scale"]) for r in data["rows"]] == [("encoder", 2.0), ("decoder", 2.0)]
    enc, dec = data["rows"]
    assert 0 <= enc["unexplained"] and enc["y_rms_ratio"] > 0
    assert 0 <= dec["unexplained"] and dec["psnr_without_prompts"] > 0
    assert data["meta"]["prompt_config"]["head_init_scale"] == 1.0 and "3 Adam steps" in data["meta"]["budget"]


@pytest.mark.parametrize("argv", [["--scales", "1"], ["--scales", "-2"], ["--prompt", "nope=1"]])
def test_bad_arguments_stop_before_anything_runs(argv, capsys):
    with pytest.raises(SystemExit) as e:
        authority.main(["--init", "missing.safetensors", "--data-dir", "nowhere", *argv])
    assert e.value.code == 2 and capsys.readouterr().err
