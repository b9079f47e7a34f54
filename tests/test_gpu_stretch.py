"""scripts/gpu_stretch.py: one GPU stretch in one command, run here on the CPU the way the GPU machine runs it
(no imagecodecs importable), then joined back (issue 9)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lpm.checkpoints import file_sha256, load_codec
from lpm.paths import PROJECT_ROOT

from conftest import write_fake_bsds500

SCRIPT = PROJECT_ROOT / "scripts" / "gpu_stretch.py"

BLOCK = '''import sys
class _NoImagecodecs:
    def find_spec(self, name, path=None, target=None):
        if name == "imagecodecs" or name.startswith("imagecodecs."):
            raise ImportError("imagecodecs is blocked here: the GPU machine has none")
        return None
sys.meta_path.insert(0, _NoImagecodecs())
'''

# a train step whose own clean stop comes too late (an overlong start-up, a step slower than the margin): here it
# has no --max-minutes at all, so only the stretch's deadline stops it
NO_CLEAN_STOP = '''
if sys.orig_argv[1:4] == ["-m", "lpm.cli", "train"] and "--max-minutes" in sys.argv:
    _i = sys.argv.index("--max-minutes")
    del sys.argv[_i:_i + 2]
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("stretch")
    (root / "data").mkdir()
    write_fake_bsds500(root / "data", {"train": 6, "val": 2}, seed=2)
    (root / "block").mkdir()
    (root / "block" / "sitecustomize.py").write_text(BLOCK)
    return root


def _config(root: Path, steps: int) -> Path:
    path = root / f"run-{steps}.yaml"
    path.write_text(yaml.safe_dump({"name": "stretch-test", "kind": "base", "model": "tiny", "steps": steps,
                                    "lr": 1e-3, "log_every": 1, "checkpoint_every": 1000,
                                    "data": {"crop": 32, "batch": 2, "on_device": False}}))
    return path


def _stretch(root: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "block"), str(PROJECT_ROOT)]),
           "OMP_NUM_THREADS": "1", "LPM_GIT_COMMIT": "0123abcd"}
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--data-dir", str(root / "data"), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_imagecodecs_is_really_blocked(setup):
    env = {**os.environ, "PYTHONPATH": str(setup / "block")}
    r = subprocess.run([sys.executable, "-c", "import imagecodecs"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "blocked" in r.stderr


def test_a_finished_run_comes_back_in_half_precision_with_its_records(setup, tmp_path):
    out = tmp_path / "OUT"
    r = _stretch(setup, out, "--minutes", "3", "--train", str(_config(setup, 3)), "--throughput",
                 "--throughput-config", "tiny", "--throughput-batches", "2", "--throughput-steps", "1",
                 "--cross-device", str(setup / "data" / "bsds500" / "val"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "stretch.json").read_text())
    assert report["steps"]["train"]["rc"] == 0 and report["steps"]["throughput-2"]["rc"] == 0
    assert report["steps"]["cross_device"] == {"skipped": "no CUDA GPU here"}
    assert {(row["what"], row["variant"]) for row in report["throughput"]} == {
        (what, v) for what in ("base training", "prompt learning") for v in ("eager", "channels-last")}
    assert all(row["img_per_s"] > 0 and row["batch"] == 2 for row in report["throughput"])
    assert report["environment"]["git_commit"] != "unknown"
    assert [rec["model"] for rec in report["ledger"]] == ["base"] and "step" in report["log_csv"][0].split(",")
    assert list(report["weights"]) == ["model-fp16.safetensors", "model.safetensors"]  # fp16, then the original
    name = "model-fp16.safetensors"
    assert (out / name).exists() and (out / "model.safetensors").exists()
    ck = load_codec(out / name)
    assert ck.kind == "tic" and "CPU-minutes" in ck.budget and ck.meta["saved_from_sha256"]
    # and back on this machine
    into = tmp_path / "joined"
    subprocess.run([sys.executable, str(SCRIPT), "join", str(out), "--into", str(into)], check=True, timeout=120)
    assert file_sha256(into / name) == file_sha256(out / name)
    assert file_sha256(into / "fp32" / "model.safetensors") == file_sha256(out / "model.safetensors")
    assert not (into / "model.safetensors").exists()
    assert (into / "ledger.jsonl").exists() and (into / "config.yaml").exists() and (into / "log.csv").exists()


def test_a_cut_run_brings_back_its_partial_checkpoint_in_parts_and_continues(setup, tmp_path):
    out = tmp_path / "OUT"
    r = _stretch(setup, out, "--minutes", "1.4", "--train", str(_config(setup, 100000)), "--part-mib", "0.2")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "stretch.json").read_text())
    parts = report["weights"]["partial.safetensors"]
    assert len(parts) > 1 and all((out / p["file"]).stat().st_size <= 0.2 * 2**20 for p in parts)
    assert report["ledger"] == [] and "stopped at step" in report["steps"]["train"]["tail"]
    into = tmp_path / "joined"
    subprocess.run([sys.executable, str(SCRIPT), "join", str(out), "--into", str(into)], check=True, timeout=120)
    ck = load_codec(into / "partial.safetensors")
    step = ck.meta["partial"]["step"]
    assert step > 0
    # the next stretch goes on from there
    out2 = tmp_path / "OUT2"
    r = _stretch(setup, out2, "--minutes", "1.4", "--train", str(_config(setup, 100000)),
                 "--continue-from", str(into / "partial.safetensors"))
    assert r.returncode == 0, r.stdout + r.stderr
    again = json.loads((out2 / "stretch.json").read_text())
    assert f"continuing stage base at step {step}" in again["steps"]["train"]["tail"]
    ck2 = load_codec(out2 / "partial.safetensors")
    assert ck2.meta["partial"]["step"] > step and ck2.meta["partial"]["restarts"][0]["at_step"] == step
    # joined into the same folder, its log.csv goes on after the first stretch's rows (was: only its own)
    first_log = (into / "log.csv").read_text().splitlines()
    subprocess.run([sys.executable, str(SCRIPT), "join", str(out2), "--into", str(into)], check=True, timeout=120)
    log = (into / "log.csv").read_text().splitlines()
    assert log[:len(first_log)] == first_log and log[len(first_log):] == again["log_csv"][1:]
    steps = [int(line.split(",")[2]) for line in log[1:]]
    assert steps == sorted(steps) and steps[len(first_log) - 2] <= step < steps[len(first_log) - 1]
    # joining the same harvest again changes nothing; a harvest that did not continue this folder's partial
    # replaces the log, as before
    subprocess.run([sys.executable, str(SCRIPT), "join", str(out2), "--into", str(into)], check=True, timeout=120)
    assert (into / "log.csv").read_text().splitlines() == log
    subprocess.run([sys.executable, str(SCRIPT), "join", str(out), "--into", str(into)], check=True, timeout=120)
    assert (into / "log.csv").read_text().splitlines() == first_log
    # a corrupted part is refused, nothing joined
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in out.iterdir():
        bad.joinpath(p.name).write_bytes(p.read_bytes())
    first = bad / parts[0]["file"]
    first.write_bytes(b"x" + first.read_bytes()[1:])
    r = subprocess.run([sys.executable, str(SCRIPT), "join", str(bad), "--into", str(tmp_path / "j2")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "sha256" in r.stderr and not (tmp_path / "j2" / "partial.safetensors").exists()


def test_a_train_step_past_its_deadline_gets_sigterm_and_still_brings_back_its_partial(setup, tmp_path):
    """At its deadline the train step gets SIGTERM (SIGKILL only TERM_GRACE_S later): the trainer saves its
    partial checkpoint and that comes back (with SIGKILL at once, nothing of the stretch's training did)."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to(setup / "data")
    (root / "block").mkdir()
    (root / "block" / "sitecustomize.py").write_text(BLOCK + NO_CLEAN_STOP)
    out = tmp_path / "OUT"
    r = _stretch(root, out, "--minutes", "0.8", "--train", str(_config(setup, 100000)))
    report = json.loads((out / "stretch.json").read_text())
    train = report["steps"]["train"]
    assert r.returncode == 1 and train["rc"] == "timeout", r.stdout + r.stderr
    assert "SIGTERM received" in train["tail"] and "max_minutes" not in train["tail"]
    assert list(report["weights"]) == ["partial.safetensors"]
    assert load_codec(out / "partial.safetensors").meta["partial"]["step"] > 0


def test_the_reach_probe_runs_on_the_weights_the_train_step_just_left(setup, tmp_path):
    """``--reach-images``: the train step (cut at its share of the minutes) leaves a partial base; the reach
    probe trains its probes from it and its JSON comes back inside stretch.json, the weights as before."""
    root = tmp_path / "root"  # the probes read all three splits, as the real bsds500 has
    (root / "data").mkdir(parents=True)
    write_fake_bsds500(root / "data", {"train": 6, "val": 2, "test": 2}, seed=3)
    shutil.copytree(setup / "block", root / "block")
    out = tmp_path / "OUT"
    r = _stretch(root, out, "--minutes", "3", "--train", str(_config(setup, 100000)), "--reach-minutes", "1.5",
                 "--reach-images", str(root / "data" / "bsds500" / "val"), "--reach-model", "tiny",
                 "--reach-steps", "2", "--reach-batch", "2", "--reach-crop", "32", "--reach-limit", "1",
                 "--reach-rates", "0.025", "--reach-variants", "prompts", "separate", "--reach-prompt", "additive=true")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "stretch.json").read_text())
    assert report["steps"]["train"]["rc"] == 0 and report["steps"]["reach"]["rc"] == 0
    assert report["steps"]["train"]["max_minutes"] <= 3 - 1.5  # the probe's minutes were kept back
    assert report["steps"]["reach"]["init"].endswith("partial.safetensors")
    reach = report["reach"]
    assert reach["meta"]["complete"] is True and reach["meta"]["eval_device"] == "cpu"  # no CUDA here
    # the probed base is the partial checkpoint that came back (one file: the tiny model is under --part-mib)
    assert reach["meta"]["init_sha256"] == file_sha256(out / "partial.safetensors")
    assert [(row["rate"], row["variant"]) for row in reach["rows"]] == [(0.025, "prompts"), (0.025, "separate")]
    assert reach["rows"][0]["prompt_settings"] == {"additive": True} and reach["rows"][0]["bpp"] > 0
    assert "reach:" in r.stdout


def test_the_step3_stretch_runs_from_a_committed_base_on_a_subset_only_copy(setup, tmp_path):
    """The campaign's step-3 command as CAMPAIGN.md gives it: no train step, ``--reach-init`` a committed base,
    and ``--data-dir`` a copy holding only the probes' seeded 10 % subset (``gpu_stretch.py subset``), so that
    the base, the subset and Kodak fit the 64 MiB that may travel."""
    from conftest import tiny_base_checkpoint

    whole = tmp_path / "whole"
    whole.mkdir()
    base = tiny_base_checkpoint(whole)  # fake bsds500 (train 6, val 2, test 2) under whole/, a tiny base
    gpu = tmp_path / "gpu"
    r = subprocess.run([sys.executable, str(SCRIPT), "subset", "--data-dir", str(whole), "--into", str(gpu)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "wrote 1 of 10 images" in r.stdout, r.stdout + r.stderr
    root = tmp_path / "root"
    root.mkdir()
    (root / "data").symlink_to(gpu)
    shutil.copytree(setup / "block", root / "block")
    out = tmp_path / "OUT"
    r = _stretch(root, out, "--minutes", "2", "--reach-init", str(base), "--reach-minutes", "2",
                 "--reach-images", str(whole / "bsds500" / "val"), "--reach-model", "tiny", "--reach-steps", "2",
                 "--reach-batch", "2", "--reach-crop", "32", "--reach-limit", "1", "--reach-rates", "0.025",
                 "--reach-variants", "prompts", "separate", "lora", "hidden_add", "--reach-lora-rank", "2",
                 "--reach-lora-targets", "fc1", "fc2")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "stretch.json").read_text())
    assert "train" not in report["steps"] and report["steps"]["reach"]["rc"] == 0, report["steps"]
    rows = report["reach"]["rows"]
    assert [(row["rate"], row["variant"]) for row in rows] == [(0.025, "prompts"), (0.025, "separate"), (0.025, "lora"),
                                                               (0.025, "hidden_add")]
    assert rows[2]["lora_rank"] == 2 and rows[3]["prompt_stride"] == 1 and rows[0]["prompt_stride"] == 2
    assert rows[2]["lora_targets"] == ["fc1", "fc2"]  # --reach-lora-targets reaches the probe
    # the prompt module, the all-weights control, the adapters and the token-fed module (on its restrided copy
    # of the base) trained on the one subset image, and say so
    assert [(row["images_seen"], row["images_in_set"]) for row in rows] == [(1, 10)] * 4
    assert report["reach"]["meta"]["init_sha256"] == file_sha256(base)


def test_commit_from_the_environment_where_there_is_no_git(monkeypatch):
    from lpm import provenance

    def no_git(*a, **k):
        raise OSError("no git here")

    provenance.git_commit.cache_clear()
    monkeypatch.setattr(provenance.subprocess, "run", no_git)
    monkeypatch.setenv("LPM_GIT_COMMIT", "0123abcd")
    try:
        assert provenance.git_commit() == "0123abcd"
        provenance.git_commit.cache_clear()
        monkeypatch.delenv("LPM_GIT_COMMIT")
        assert provenance.git_commit() == "unknown"
    finally:
        provenance.git_commit.cache_clear()


def test_codec_evaluation_and_training_import_without_imagecodecs(setup, tmp_path):
    """What the GPU machine runs (training, the evaluation of learned codecs on PNGs, the CLI) needs no
    imagecodecs; the classical codecs then say why they are missing."""
    code = (
        "import lpm.cli, lpm.train.runner, lpm.eval, lpm.codec\n"
        "from lpm import zoo\n"
        "from lpm.eval import evaluate_codec, UNAVAILABLE_CODECS, available_classical_codecs\n"
        "assert available_classical_codecs() == [] and 'not installed' in UNAVAILABLE_CODECS['jpeg']\n"
        f"r = evaluate_codec(zoo.load('tiny-smoke'), [{str(setup / 'data' / 'bsds500' / 'val' / 'val00.png')!r}], [0.0483, 0.005], progress=False)\n"
        "assert all(b > 0 for b in r['results']['bpp'])\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(setup / "block"), str(PROJECT_ROOT)]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_half_check_compares_a_half_copy_with_its_original(tmp_path):
    import importlib.util

    from lpm import zoo
    from lpm.checkpoints import save_codec

    spec = importlib.util.spec_from_file_location("half_check", PROJECT_ROOT / "bench" / "half_check.py")
    half_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(half_check)
    write_fake_bsds500(tmp_path, {"val": 2})
    ck = zoo.load("tiny-smoke")
    save_codec(tmp_path / "h.safetensors", ck.model, meta=ck.meta, half=True)
    out = tmp_path / "half.json"
    assert half_check.main([str(ck.path), str(tmp_path / "h.safetensors"), "--images", str(tmp_path / "bsds500" / "val"),
                            "--rates", "0.0483", "0.005", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["n_images"] == 2 and [r["rate"] for r in d["rows"]] == [0.0483, 0.005]
    assert all(abs(r["bpp_change_percent"]) < 2 and abs(r["psnr_change_db"]) < 0.1 for r in d["rows"])
    other = tmp_path / "other.safetensors"
    save_codec(other, ck.model.base, meta={"base_rate": 0.0483})  # the bare base: one rate only
    with pytest.raises(SystemExit, match="not the same codec"):
        half_check.main([str(ck.path), str(other), "--images", str(tmp_path / "bsds500" / "val")])
