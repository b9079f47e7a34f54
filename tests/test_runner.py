"""The resumable training runner: configs, exact resume after a kill, data subsets, ledger, CLI, torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lpm.cli import main
from lpm.checkpoints import load_codec
from lpm.train.runner import LEDGER_FIELDS, Runner, RunConfig, TrainingStateError, load_config
from lpm.train.sampler import CropSampler, subset

from conftest import write_fake_bsds500

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A fake 'bsds500' layout with 20 small smooth images."""
    root = tmp_path_factory.mktemp("data")
    write_fake_bsds500(root, {"train": 14, "val": 6})
    return root


def _cfg(tmp_path: Path, data_dir: Path, **kw) -> RunConfig:
    base = dict(
        name="t", kind="base", model="tiny", steps=6, lr=1e-3, checkpoint_every=3, log_every=1,
        out_dir=str(tmp_path / "run"), data={"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False},
    )
    base.update(kw)
    return RunConfig(**base)


def _log(path: Path) -> list[dict]:
    with open(path / "log.csv") as f:
        return list(csv.DictReader(f))


def test_base_run_writes_model_log_ledger(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir)
    written = Runner(cfg, progress=False).run()
    assert [p.name for p in written] == ["model.safetensors"]
    ck = load_codec(written[0])
    assert ck.kind == "tic" and ck.base_rate == 0.0483
    assert "CPU-minutes" in ck.budget and "12 crops" in ck.budget
    rows = _log(tmp_path / "run")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    ledger = [json.loads(l) for l in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 1 and set(LEDGER_FIELDS) <= set(ledger[0])
    assert ledger[0]["images_in_set"] == 20 and ledger[0]["images_seen"] == 20 and ledger[0]["crops_seen"] == 12
    with pytest.raises(ValueError, match="already holds a run"):
        Runner(cfg, progress=False).run()


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kind", ["base", "rate_conditioned"])
def test_resume_after_kill_continues_exactly(tmp_path, data_dir, monkeypatch, kind):
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "kill"
    Runner(_cfg(tmp_path, data_dir, out_dir=str(ref_dir), kind=kind), progress=False).run()
    ref_log = _log(ref_dir)
    ref_w = load_codec(ref_dir / "model.safetensors").model.state_dict()

    real_next = CropSampler.next
    calls = {"n": 0}

    def dying_next(self):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th step dies mid-way; the last saved state is at step 3
            raise _Killed()
        return real_next(self)

    monkeypatch.setattr(CropSampler, "next", dying_next)
    with pytest.raises(_Killed):
        Runner(_cfg(tmp_path, data_dir, out_dir=str(kill_dir), kind=kind), progress=False).run()
    monkeypatch.setattr(CropSampler, "next", real_next)
    assert (kill_dir / "state.pt").exists()
    Runner(_cfg(tmp_path, data_dir, out_dir=str(kill_dir), kind=kind), progress=False).run(resume=True)
    got = _log(kill_dir)
    # steps 4.. after resume repeat exactly the uninterrupted run's losses (step 4 was logged twice: before
    # the kill and again after resuming from step 3)
    after = {int(r["step"]): r["loss"] for r in got[-3:]}
    assert after == {int(r["step"]): r["loss"] for r in ref_log[3:]}
    w = load_codec(kill_dir / "model.safetensors").model.state_dict()
    assert all(torch.equal(ref_w[k], w[k]) for k in ref_w)


def test_max_minutes_stops_and_saves(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, max_minutes=0.0)
    assert Runner(cfg, progress=False).run() == []
    assert (tmp_path / "run" / "state.pt").exists() and not (tmp_path / "run" / "model.safetensors").exists()
    cfg2 = _cfg(tmp_path, data_dir)
    written = Runner(cfg2, progress=False).run(resume=True)
    assert written and written[0].exists()


def test_printed_resume_command_names_the_data_dir_absolute(tmp_path, data_dir, monkeypatch, capsys):
    """The resume commands printed on a stop work from any directory: a relative --data-dir is printed
    absolute (it was printed as given, e.g. ../shared/data, another folder from elsewhere)."""
    monkeypatch.chdir(data_dir.parent)
    cfg = _cfg(tmp_path, data_dir, max_minutes=0.0, data={"crop": 32, "batch": 2, "on_device": False})
    Runner(cfg, data_dir=data_dir.name, progress=False).run()
    out = capsys.readouterr().out
    assert f"--resume --data-dir {data_dir.absolute()}" in out
    assert f"--out-dir NEW_DIR --data-dir {data_dir.absolute()}" in out


def test_max_minutes_counts_each_invocation_not_the_whole_run(tmp_path, data_dir, monkeypatch):
    """`--max-minutes 9` then `--resume --max-minutes 9`: the second invocation trains again (it used to stop
    at once, because the run's restored clock already exceeded the allowance)."""
    import lpm.train.runner as R

    clock = {"t": 0.0}
    monkeypatch.setattr(R.time, "perf_counter", lambda: clock.__setitem__("t", clock["t"] + 10.0) or clock["t"])
    cfg = _cfg(tmp_path, data_dir, steps=50, max_minutes=0.5, log_every=1, checkpoint_every=1000)
    assert Runner(cfg, progress=False).run() == []
    first = int(_log(tmp_path / "run")[-1]["step"])
    assert 0 < first < 50
    Runner(cfg, progress=False).run(resume=True)
    second = int(_log(tmp_path / "run")[-1]["step"])
    assert second - first >= first - 1  # about as many steps again, not an immediate stop


def test_resume_refuses_a_changed_config(tmp_path, data_dir):
    Runner(_cfg(tmp_path, data_dir, max_minutes=0.0), progress=False).run()
    with pytest.raises(ValueError, match="config changed"):
        Runner(_cfg(tmp_path, data_dir, lr=5e-4), progress=False).run(resume=True)


def test_prompt_run_is_progressive_on_a_recorded_subset_and_keeps_base(tmp_path, data_dir):
    base_dir = tmp_path / "base"
    Runner(_cfg(tmp_path, data_dir, out_dir=str(base_dir), steps=4), progress=False).run()
    base_ckpt = base_dir / "model.safetensors"
    cfg = _cfg(
        tmp_path, data_dir, kind="prompts", init=str(base_ckpt), rates=[0.0067, 0.013, 0.0483], steps=3,
        out_dir=str(tmp_path / "prompts"), data={"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False,
                                                 "fraction": 0.25},
    )
    written = Runner(cfg, progress=False).run()
    ck = load_codec(written[0])
    model = ck.model
    assert ck.kind == "prompted" and model.rates == [0.0067, 0.013, 0.0483]
    base = load_codec(base_ckpt).model
    assert all(torch.equal(v, model.base.state_dict()[k]) for k, v in base.state_dict().items())
    chosen = (tmp_path / "prompts" / "subset.txt").read_text().split()
    assert len(chosen) == 5  # 25 % of 20 images, recorded
    paths = sorted((data_dir / "bsds500").rglob("*.png"))
    assert chosen == [str(p.relative_to(data_dir / "bsds500")) for p in subset(paths, 0.25, seed=0)]
    stages = [r["stage"] for r in _log(tmp_path / "prompts")]
    assert stages[0] == "prompt-0.013" and stages[-1] == "prompt-0.0067"  # nearest the base first
    ledger = [json.loads(l) for l in (tmp_path / "prompts" / "ledger.jsonl").read_text().splitlines()]
    assert [r["images_seen"] for r in ledger] == [5, 5]


def test_subset_is_deterministic_and_validated():
    paths = [Path(f"/x/{i:03d}.jpg") for i in range(500)]
    a, b = subset(paths, 0.1, 0), subset(list(reversed(paths)), 0.1, 0)
    assert a == b and len(a) == 50 and a != subset(paths, 0.1, 1)
    assert subset(paths, 1.0, 0) == sorted(paths)
    with pytest.raises(ValueError):
        subset(paths, 0.0, 0)


def test_separate_run_writes_one_model_per_rate(tmp_path, data_dir):
    base_dir = tmp_path / "base"
    Runner(_cfg(tmp_path, data_dir, out_dir=str(base_dir), steps=2), progress=False).run()
    cfg = _cfg(tmp_path, data_dir, kind="separate", init=str(base_dir / "model.safetensors"),
               rates=[0.013, 0.0483], steps=2, out_dir=str(tmp_path / "sep"))
    written = Runner(cfg, progress=False).run()
    assert [p.name for p in written] == ["model-0.013.safetensors"]
    assert load_codec(written[0]).base_rate == 0.013


def test_cli_train_and_config_file(tmp_path, data_dir, capsys):
    cfg = {"name": "cli", "kind": "base", "model": "tiny", "steps": 2, "log_every": 1,
           "out_dir": str(tmp_path / "cli"), "data": {"dir": str(data_dir), "crop": 32, "batch": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path).data.crop == 32
    rc = main(["train", str(path), "--device", "cpu", "--no-progress"])
    assert rc == 0 and "model.safetensors" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**cfg, "bogus": 1}))
    assert main(["train", str(bad), "--device", "cpu"]) == 2


def test_repository_configs_parse():
    root = Path(__file__).resolve().parent.parent / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "configs/ holds the run recipes"
    for f in files:
        load_config(f)


def test_torchrun_gloo_two_processes_stay_in_sync(tmp_path, data_dir):
    """Two CPU processes under torchrun (gloo): DDP averages gradients, so both end with equal weights."""
    out = tmp_path / "ddp"
    cfg = {"name": "ddp", "kind": "base", "model": "tiny", "steps": 3, "log_every": 1, "checkpoint_every": 2,
           "out_dir": str(out), "data": {"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False}}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "lpm.train.ddp_check", str(path), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    h0 = (tmp_path / "rank0.sha").read_text()
    h1 = (tmp_path / "rank1.sha").read_text()
    assert h0 == h1
    run = tmp_path / "run"  # the check trains into OUT/run, never into the config's out_dir
    assert (run / "model.safetensors").exists() and not out.exists()
    ledger = json.loads((run / "ledger.jsonl").read_text().splitlines()[0])
    assert ledger["world_size"] == 2 and ledger["crops_seen"] == 3 * 2 * 2


def test_torchrun_resume_gives_each_rank_its_own_crops_back(tmp_path, data_dir):
    """Stopped at step 2 of 4 and resumed, two processes draw exactly the crops of a run never stopped, each
    its own (rank 1 resumed with rank 0's crops and noise: every GPU then trained on the same batches), and
    end with its weights; a state of 2 processes is refused to 1 (steps and budget would not continue)."""
    cfg = {"name": "ddp", "kind": "base", "model": "tiny", "steps": 4, "log_every": 1, "checkpoint_every": 10,
           "data": {"dir": str(data_dir), "crop": 32, "batch": 2, "on_device": False}}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(out, *mode):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518",
               "-m", "lpm.train.ddp_check", str(path), str(out), *mode]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-3000:]

    torchrun(tmp_path / "ref")
    torchrun(tmp_path / "stopped", "2")
    torchrun(tmp_path / "stopped", "resume")
    ref = [(tmp_path / "ref" / f"rank{r}.crops").read_text().split() for r in (0, 1)]
    got = [(tmp_path / "stopped" / f"rank{r}.crops").read_text().split() for r in (0, 1)]
    assert len(ref[0]) == 4 and ref[0] != ref[1]
    assert got == ref
    for r in (0, 1):
        assert (tmp_path / "stopped" / f"rank{r}.sha").read_text() == (tmp_path / "ref" / f"rank{r}.sha").read_text()
    # the stop left a state of 2 processes: 1 process may not resume it
    torchrun(tmp_path / "again", "2")
    with pytest.raises(TrainingStateError, match="saved by 2 training process"):
        Runner(load_config(path, out_dir=str(tmp_path / "again" / "run")), device="cpu", progress=False).run(resume=True)


@pytest.mark.parametrize("kind", ["rate_conditioned", "gain_units"])
def test_variable_rate_baseline_runs(tmp_path, data_dir, kind):
    base_dir = tmp_path / "base"
    Runner(_cfg(tmp_path, data_dir, out_dir=str(base_dir), steps=2), progress=False).run()
    cfg = _cfg(tmp_path, data_dir, kind=kind, init=str(base_dir / "model.safetensors"),
               rates=[0.0035, 0.013, 0.0483], steps=3, out_dir=str(tmp_path / kind))
    written = Runner(cfg, progress=False).run()
    ck = load_codec(written[0])
    model = ck.model
    assert ck.kind == kind and model.rates == [0.0035, 0.013, 0.0483]
    x = torch.rand(1, 3, 40, 48)
    c = model.compress(x, 0.007)
    y = model.decompress(c["strings"], c["shape"], 0.007, size=(40, 48))["x_hat"]
    assert (y - model(x, 0.007)["x_hat"].clamp(0, 1)).abs().max() <= 1e-5
    ledger = json.loads((tmp_path / kind / "ledger.jsonl").read_text())
    assert ledger["rate"] is None and ledger["crops_seen"] == 6


@pytest.mark.parametrize("kind", ["base", "prompts"])
def test_channels_last_trains_the_same_model_and_resumes(tmp_path, data_dir, kind, monkeypatch):
    """``channels_last: true`` is a speed setting: the weights it trains match the default's up to float
    rounding, it saves and resumes (also from a state written without it) and the checkpoint loads as usual."""
    from lpm.train.step import TrainStep

    seen = []  # (crops in channels-last, every 4-d trained weight in channels-last) per step
    real_call = TrainStep.__call__

    def spy(self, x):
        four_d = [p for p in self.params if p.dim() == 4]
        seen.append((x.is_contiguous(memory_format=torch.channels_last),
                     all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d) and bool(four_d)))
        return real_call(self, x)

    monkeypatch.setattr(TrainStep, "__call__", spy)
    extra = {}
    if kind == "prompts":
        Runner(_cfg(tmp_path, data_dir, out_dir=str(tmp_path / "b"), steps=2), progress=False).run()
        extra = dict(init=str(tmp_path / "b" / "model.safetensors"), rates=[0.025, 0.0483], steps=4)
    ref = Runner(_cfg(tmp_path, data_dir, kind=kind, out_dir=str(tmp_path / "ref"), **extra), progress=False).run()
    assert seen and not any(x for x, _ in seen)
    seen.clear()
    cl_dir = tmp_path / "cl"
    assert Runner(_cfg(tmp_path, data_dir, kind=kind, out_dir=str(cl_dir), channels_last=True, max_minutes=0.0,
                       **extra), progress=False).run() == []
    # resumed with the setting on; the stop above saved a state without any steps
    got = Runner(_cfg(tmp_path, data_dir, kind=kind, out_dir=str(cl_dir), channels_last=True, **extra),
                 progress=False).run(resume=True)
    assert seen and all(x and w for x, w in seen)
    a, b = load_codec(ref[0]).model.state_dict(), load_codec(got[0]).model.state_dict()
    assert a.keys() == b.keys()
    assert all(b[k].is_contiguous() for k in b)
    # Adam moves a weight by about lr per step whatever the size of its gradient, so a rounding difference
    # in a near-zero gradient can show as up to steps x lr in that weight; the losses must agree closely
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= 1.5 * 1e-3 * 6
    ref_log, cl_log = _log(tmp_path / "ref"), _log(cl_dir)
    assert [r["step"] for r in ref_log] == [r["step"] for r in cl_log]
    for r, s in zip(ref_log, cl_log):
        assert float(s["loss"]) == pytest.approx(float(r["loss"]), rel=2e-3), (r, s)
