"""A data directory holding only a run's seeded subset (for a lent GPU machine's 64 MiB travel limit).

`scripts/gpu_stretch.py subset` copies the images a prompts/LoRA/reach run trains on and declares them in
LPM_SUBSET.json; the trainer then uses exactly those images (same weights as a run on the whole set) and
refuses any run the copy cannot serve, or a copy whose files differ from its declaration.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lpm.checkpoints import load_codec
from lpm.train.runner import Runner, RunConfig
from lpm.train.sampler import SUBSET_MARKER, read_declared_subset, subset, write_declared_subset

from conftest import write_fake_bsds500

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ["train", "val"]


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full")
    write_fake_bsds500(root, {"train": 14, "val": 6})
    return root


def _copy(full: Path, dest_root: Path, fraction: float = 0.25, seed: int = 0):
    return write_declared_subset(full / "bsds500", dest_root / "bsds500", set_name="bsds500", splits=SPLITS,
                                 fraction=fraction, seed=seed)


def _cfg(tmp: Path, data_dir: Path, name: str, **kw) -> RunConfig:
    base = dict(name=name, kind="base", model="tiny", steps=3, lr=1e-3, checkpoint_every=3, log_every=1,
                out_dir=str(tmp / name),
                data={"dir": str(data_dir), "splits": SPLITS, "crop": 32, "batch": 2, "on_device": False})
    base.update(kw)
    return RunConfig(**base)


def test_copy_holds_exactly_the_seeded_subset(full, tmp_path):
    declared = _copy(full, tmp_path / "gpu")
    everything = sorted(p for s in SPLITS for p in (full / "bsds500" / s).glob("*.png"))
    want = [p.relative_to(full / "bsds500").as_posix() for p in subset(everything, 0.25, 0)]
    assert list(declared.files) == want and len(want) == 5
    assert declared.images_in_set == 20 and declared.fraction == 0.25 and declared.seed == 0
    on_disk = sorted(p.relative_to(tmp_path / "gpu" / "bsds500").as_posix()
                     for p in (tmp_path / "gpu" / "bsds500").rglob("*.png"))
    assert on_disk == want
    for rel in want:
        assert (tmp_path / "gpu" / "bsds500" / rel).read_bytes() == (full / "bsds500" / rel).read_bytes()
    assert read_declared_subset(full / "bsds500") is None  # a whole set has no marker


def test_prompt_run_on_the_copy_equals_the_run_on_the_whole_set(full, tmp_path):
    base = tmp_path / "base"
    Runner(_cfg(tmp_path, full, "base", steps=2), progress=False).run()
    _copy(full, tmp_path / "gpu")
    data = {"splits": SPLITS, "crop": 32, "batch": 2, "on_device": False, "fraction": 0.25}
    runs = {}
    for where, d in (("whole", full), ("copy", tmp_path / "gpu")):
        cfg = _cfg(tmp_path, d, f"prompts-{where}", kind="prompts", init=str(base / "model.safetensors"),
                   rates=[0.013, 0.0483], steps=3, data={"dir": str(d), **data})
        runs[where] = Runner(cfg, progress=False).run()
    a, b = (load_codec(runs[w][0]).model.state_dict() for w in ("whole", "copy"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    subsets = [(tmp_path / f"prompts-{w}" / "subset.txt").read_text() for w in ("whole", "copy")]
    assert subsets[0] == subsets[1] and len(subsets[0].split()) == 5
    for w in ("whole", "copy"):
        (rec,) = [json.loads(x) for x in (tmp_path / f"prompts-{w}" / "ledger.jsonl").read_text().splitlines()]
        assert rec["images_in_set"] == 20 and rec["images_seen"] == 5  # the whole set's size is recorded


@pytest.mark.parametrize("change,needle", [
    (dict(kind="base"), "fraction 1"),                       # a base run needs every image
    (dict(seed=1), "seed 1"),                                # another seed draws other images
    (dict(splits=["train"]), "splits ['train']"),
])
def test_runs_the_copy_cannot_serve_are_refused(full, tmp_path, change, needle):
    _copy(full, tmp_path / "gpu")
    data = {"dir": str(tmp_path / "gpu"), "splits": change.pop("splits", SPLITS), "crop": 32, "batch": 2,
            "on_device": False}
    kind = change.pop("kind", "prompts")
    kw = dict(init="unused.safetensors", rates=[0.013, 0.0483]) if kind == "prompts" else {}
    if kind == "prompts":
        data["fraction"] = 0.25
    with pytest.raises(ValueError, match="holds only the seeded subset") as e:
        Runner(_cfg(tmp_path, tmp_path / "gpu", "r", kind=kind, data=data, **kw, **change), progress=False)
    assert needle in str(e.value)


def _tamper_marker(root: Path, edit) -> None:
    marker = root / SUBSET_MARKER
    doc = json.loads(marker.read_text())
    edit(doc)
    marker.write_text(json.dumps(doc))


def _first(doc):
    return next(iter(doc["files"]))


@pytest.mark.parametrize("attack,needle", [
    ("changed image", "does not match its sha256"),
    ("extra image", "differ from the list"),
    ("missing image", "differ from the list"),
    ("hash recomputed for a foreign image", "differ from the list"),
    ("path traversal", "bad entry"),
    ("absolute path", "bad entry"),
    ("not json", "not valid JSON"),
    ("wrong format", "not a lpm-data-subset/1 marker"),
    ("bool fraction", "'fraction'"),
    ("fraction above 1", "'fraction'"),
    ("more files than the set", "'files'"),
    ("marker is a directory", "not a regular file"),
    ("huge marker", "larger than"),
])
def test_a_copy_that_differs_from_its_declaration_is_refused(full, tmp_path, attack, needle):
    _copy(full, tmp_path / "gpu")
    root = tmp_path / "gpu" / "bsds500"
    if attack == "changed image":
        doc = json.loads((root / SUBSET_MARKER).read_text())
        p = root / _first(doc)
        p.write_bytes(p.read_bytes()[:-1] + b"\0")
    elif attack == "extra image":
        (root / "val" / "zzz.png").write_bytes((full / "bsds500" / "val" / "val00.png").read_bytes())
    elif attack == "missing image":
        doc = json.loads((root / SUBSET_MARKER).read_text())
        (root / _first(doc)).unlink()
    elif attack == "hash recomputed for a foreign image":  # a checksum stops accidents, not people: the list still must match
        import hashlib
        foreign = root / "train" / "other.png"
        foreign.write_bytes(b"x")
        _tamper_marker(root, lambda d: d["files"].update({"train/other2.png": hashlib.sha256(b"x").hexdigest()}))
    elif attack == "path traversal":
        _tamper_marker(root, lambda d: d["files"].update({"train/../../etc/passwd": "0" * 64}))
    elif attack == "absolute path":
        _tamper_marker(root, lambda d: d["files"].update({"/etc/passwd": "0" * 64}))
    elif attack == "not json":
        (root / SUBSET_MARKER).write_text("{not json")
    elif attack == "wrong format":
        _tamper_marker(root, lambda d: d.update(format="lpm-data-subset/9"))
    elif attack == "bool fraction":
        _tamper_marker(root, lambda d: d.update(fraction=True))
    elif attack == "fraction above 1":
        _tamper_marker(root, lambda d: d.update(fraction=1.5))
    elif attack == "more files than the set":
        _tamper_marker(root, lambda d: d.update(images_in_set=1))
    elif attack == "marker is a directory":
        (root / SUBSET_MARKER).unlink()
        (root / SUBSET_MARKER).mkdir()
    elif attack == "huge marker":
        (root / SUBSET_MARKER).write_bytes(b" " * (5 << 20))
    with pytest.raises(ValueError, match=needle):
        read_declared_subset(root)
    data = {"dir": str(tmp_path / "gpu"), "splits": SPLITS, "crop": 32, "batch": 2, "on_device": False,
            "fraction": 0.25}
    with pytest.raises(ValueError, match="gpu_stretch.py subset"):  # the trainer refuses it too, saying how to fix it
        Runner(_cfg(tmp_path, tmp_path / "gpu", "r", kind="prompts", init="unused.safetensors",
                    rates=[0.013, 0.0483], data=data), progress=False)


def test_write_refuses_an_existing_destination_and_a_subset_of_a_subset(full, tmp_path):
    _copy(full, tmp_path / "gpu")
    with pytest.raises(FileExistsError):
        _copy(full, tmp_path / "gpu")
    with pytest.raises(ValueError, match="itself a declared subset"):
        _copy(tmp_path / "gpu", tmp_path / "again")


def test_cli_makes_the_copy_and_refuses_to_overwrite(full, tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_stretch.py"), "subset", "--data-dir", str(full),
           "--into", str(tmp_path / "gpu"), "--splits", *SPLITS, "--fraction", "0.25"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "wrote 5 of 20 images" in r.stdout and "seed 0 only" in r.stdout
    assert read_declared_subset(tmp_path / "gpu" / "bsds500").files
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "exists" in r.stderr and "Traceback" not in r.stderr


def test_a_partial_copy_without_a_marker_is_named_and_a_declared_one_is_not(tmp_path, capsys):
    """Without LPM_SUBSET.json a partial copy of the real set is just a smaller set (the subset would be drawn
    from it, not from the published one): the trainer says so. A declared subset is what it says, and a set
    holding none of the manifest's names (another set under that name) gets no warning."""
    from lpm.data import manifest_path, read_manifest

    names = sorted(rel for rel in read_manifest(manifest_path("bsds500")) if rel.startswith(("train/", "val/")))
    assert len(names) == 300
    write_fake_bsds500(tmp_path / "fake", {"train": 3, "val": 2})
    part = tmp_path / "part"  # fake pixels under five real names: what a real copy that lost files looks like
    for src, rel in zip(sorted((tmp_path / "fake" / "bsds500").rglob("*.png")), names[:2] + names[200:203]):
        (part / "bsds500" / rel).parent.mkdir(parents=True, exist_ok=True)
        (part / "bsds500" / rel).write_bytes(src.read_bytes())
    data = {"dir": str(part), "splits": SPLITS, "crop": 32, "batch": 2, "on_device": False}
    Runner(_cfg(tmp_path, part, "w", data=data), progress=False)
    assert "lacks 295 of the 300 images its manifest lists under ['train', 'val']" in capsys.readouterr().err
    Runner(_cfg(tmp_path, tmp_path / "fake", "f", data={**data, "dir": str(tmp_path / "fake")}), progress=False)
    assert "lacks" not in capsys.readouterr().err  # none of the names: another set, as in the other tests
    write_fake_bsds500(tmp_path / "full", {"train": 14, "val": 6})
    _copy(tmp_path / "full", tmp_path / "gpu")
    data = {**data, "dir": str(tmp_path / "gpu"), "fraction": 0.25}
    Runner(_cfg(tmp_path, tmp_path / "gpu", "d", kind="prompts", init="unused.safetensors", rates=[0.013, 0.0483],
                data=data), progress=False)
    assert "lacks" not in capsys.readouterr().err


def test_training_images_are_read_with_a_pixel_limit(tmp_path, monkeypatch):
    """The trainer read every image with no limit at all: a small file declaring a huge image was decoded
    whole while the sampler preloaded the set. Now the CLI's default limit applies (or the one given)."""
    import numpy as np
    from PIL import Image

    from lpm import limits
    from lpm.data import ImageTooLargeError
    from lpm.train.sampler import CropSampler

    paths = []
    for i, (h, w) in enumerate([(40, 48), (64, 80)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((h, w, 3), 9 * i, np.uint8)).save(paths[-1])
    assert CropSampler(paths, 32, 2).next().shape == (2, 3, 32, 32)
    with pytest.raises(ImageTooLargeError, match=r"1.png: 64x80 \(HxW\) image has 5120 pixels"):
        CropSampler(paths, 32, 2, max_pixels=5000)
    monkeypatch.setattr(limits, "available_memory", lambda: 0)  # default: the floor, 2048² pixels
    assert CropSampler(paths, 32, 2).max_pixels == limits.MIN_DEFAULT_MAX_PIXELS
