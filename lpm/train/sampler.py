"""Training crops drawn in the main process from images held in memory (CPU or GPU).

Why not a DataLoader: every random choice (image, crop position, flips) comes from one ``torch.Generator``
whose state is saved in the training checkpoint, so a resumed run draws exactly the batches the
uninterrupted run would have drawn; and with ``device="cuda"`` the whole (small) training set lives on the
GPU and crops are cut there, so the GPU never waits for the CPU. BSDS500 (500 images) is 0.23 GB as uint8.
For sets too large for memory, ``preload=False`` decodes the chosen images on demand (same determinism,
slower).

A data set directory may hold only the seeded subset a run trains on (:func:`write_declared_subset`, the
file :data:`SUBSET_MARKER` beside the splits): a lent GPU machine then needs a tenth of the images. Such a
directory serves only runs of that fraction, seed and splits (:func:`read_declared_subset`,
:meth:`DeclaredSubset.select`); any other run is refused, never silently given a sub-subset.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from lpm.data import find_images, pad_to, read_image, sha256_file
from lpm.fsutil import atomic_write_text
from lpm.limits import default_max_pixels

__all__ = ["CropSampler", "DeclaredSubset", "SUBSET_MARKER", "read_declared_subset", "subset",
           "write_declared_subset"]

#: The file in a data set's directory that says "this directory holds only a seeded subset".
SUBSET_MARKER = "LPM_SUBSET.json"
SUBSET_FORMAT = "lpm-data-subset/1"
#: Largest marker read (a list of a few thousand names with their sha256 is far below this).
SUBSET_MARKER_MAX_BYTES = 4 << 20


def subset(paths: Sequence[Path], fraction: float, seed: int) -> list[Path]:
    """A fixed, seeded subset of ``fraction`` of the images (at least one), in the original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data fraction must be in (0, 1], got {fraction}")
    paths = sorted(Path(p) for p in paths)
    n = max(1, round(len(paths) * fraction))
    if n == len(paths):
        return list(paths)
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(paths), generator=g)[:n].tolist())
    return [paths[i] for i in keep]


@dataclass(frozen=True)
class DeclaredSubset:
    """A data set directory that holds only ``subset(all images of splits, fraction, seed)``.

    ``files`` are the subset's paths relative to the directory (POSIX, sorted), ``images_in_set`` the size
    of the whole set it was drawn from (what a run's ledger records as ``images_in_set``).
    """

    root: Path
    set: str
    splits: tuple[str, ...]
    fraction: float
    seed: int
    images_in_set: int
    files: tuple[str, ...]

    @property
    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]

    def select(self, splits: Sequence[str], fraction: float, seed: int) -> list[Path]:
        """The images of a run with these data settings, or a ``ValueError`` saying why this copy cannot serve it."""
        wanted = (tuple(splits), float(fraction), int(seed))
        have = (self.splits, self.fraction, self.seed)
        if wanted[0] != have[0] or not math.isclose(wanted[1], have[1], rel_tol=0, abs_tol=1e-12) or wanted[2] != have[2]:
            raise ValueError(
                f"{self.root} holds only the seeded subset of {self.set!r} made for splits {list(self.splits)}, "
                f"fraction {self.fraction:g}, seed {self.seed} ({len(self.files)} of {self.images_in_set} images; "
                f"see {SUBSET_MARKER}); this run asks for splits {list(wanted[0])}, fraction {wanted[1]:g}, seed "
                f"{wanted[2]}: give it the whole set (or a subset made for these settings with "
                f"`python scripts/gpu_stretch.py subset`)")
        return self.paths


def _images(directory: Path) -> list[Path]:
    """Image files of ``directory``; none (not an error) when it is missing or holds none."""
    try:
        return find_images(directory)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return []


def _bad(root: Path, why: str) -> ValueError:
    return ValueError(f"{root / SUBSET_MARKER}: {why}; remove the directory and make it again with "
                      f"`python scripts/gpu_stretch.py subset`, or replace it with the whole data set")


def read_declared_subset(root: Union[str, os.PathLike], *, check_hashes: bool = True) -> Optional[DeclaredSubset]:
    """The subset declared by ``root/LPM_SUBSET.json``, or ``None`` when ``root`` has no such file.

    Checked: the marker's form (size-bounded JSON of the expected fields, relative paths that stay inside
    ``root``), that the image files under the declared splits are exactly the listed ones, and (with
    ``check_hashes``) each file's sha256.

    Raises:
        ValueError: the marker is malformed or does not describe the directory's content.
    """
    root = Path(root)
    marker = root / SUBSET_MARKER
    if not marker.exists():
        return None
    if not marker.is_file():
        raise _bad(root, "not a regular file")
    if marker.stat().st_size > SUBSET_MARKER_MAX_BYTES:
        raise _bad(root, f"larger than {SUBSET_MARKER_MAX_BYTES} bytes")
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(root, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != SUBSET_FORMAT:
        raise _bad(root, f"not a {SUBSET_FORMAT} marker")
    try:
        splits = doc["splits"]
        fraction, seed, in_set, files = doc["fraction"], doc["seed"], doc["images_in_set"], doc["files"]
        name = doc["set"]
    except KeyError as e:
        raise _bad(root, f"field {e} missing") from None
    if not (isinstance(name, str) and isinstance(splits, list) and splits
            and all(isinstance(x, str) and x and "/" not in x and x not in (".", "..") for x in splits)):
        raise _bad(root, "'set' must be a name and 'splits' a list of folder names")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise _bad(root, "'fraction' must be a number in (0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, int) or isinstance(in_set, bool) or not isinstance(in_set, int):
        raise _bad(root, "'seed' and 'images_in_set' must be integers")
    if not isinstance(files, dict) or not files or in_set < len(files):
        raise _bad(root, "'files' must map at least one and at most 'images_in_set' names to their sha256")
    rels = []
    for rel, digest in files.items():
        pure = PurePosixPath(rel)
        if (not isinstance(digest, str) or len(digest) != 64 or pure.is_absolute() or ".." in pure.parts
                or len(pure.parts) != 2 or pure.parts[0] not in splits or "\\" in rel):
            raise _bad(root, f"bad entry {rel!r}: want SPLIT/NAME inside a declared split with a sha256")
        rels.append(rel)
    present = sorted(p.relative_to(root).as_posix() for s in splits for p in _images(root / s))
    if present != sorted(rels):
        extra, missing = sorted(set(present) - set(rels)), sorted(set(rels) - set(present))
        raise _bad(root, f"the images present differ from the list (unlisted: {extra[:3]}, missing: {missing[:3]})")
    if check_hashes:
        for rel in rels:
            if sha256_file(root / rel) != files[rel].lower():
                raise _bad(root, f"{rel} does not match its sha256")
    return DeclaredSubset(root, name, tuple(splits), float(fraction), seed, in_set, tuple(sorted(rels)))


def write_declared_subset(source: Union[str, os.PathLike], dest: Union[str, os.PathLike], *, set_name: str,
                          splits: Sequence[str], fraction: float, seed: int) -> DeclaredSubset:
    """Copy ``subset(images of splits under source, fraction, seed)`` to ``dest`` and declare it there.

    ``dest`` must not exist yet (nothing is overwritten). The marker is written last, so an interrupted
    copy leaves a directory that :func:`read_declared_subset` refuses rather than a silently smaller set.
    """
    source, dest = Path(source), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists: remove it first (nothing is overwritten)")
    if read_declared_subset(source, check_hashes=False) is not None:
        raise ValueError(f"{source} is itself a declared subset: make subsets from the whole set")
    everything = sorted(p for s in splits for p in find_images(source / s))
    chosen = subset(everything, fraction, seed)
    files = {}
    for p in chosen:
        rel = p.relative_to(source)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dest / rel)
        files[rel.as_posix()] = sha256_file(dest / rel)
    doc = {"format": SUBSET_FORMAT, "set": set_name, "splits": list(splits), "fraction": float(fraction),
           "seed": int(seed), "images_in_set": len(everything), "files": files,
           "note": "only this subset is here: runs of other splits/fraction/seed are refused"}
    atomic_write_text(dest / SUBSET_MARKER, json.dumps(doc, indent=1) + "\n")
    declared = read_declared_subset(dest)
    assert declared is not None
    return declared


class CropSampler:
    """Random ``crop``² crops with random flips, ``batch`` at a time, from in-memory uint8 images.

    Each image is read with a pixel limit (``max_pixels``; default :func:`lpm.limits.default_max_pixels`,
    the CLI's): a training folder is a directory of files like any other, and a small file declaring a
    huge image is refused from its header instead of being decoded.
    """

    def __init__(
        self,
        paths: Sequence[Union[str, os.PathLike]],
        crop: int,
        batch: int,
        *,
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
        preload: bool = True,
        max_pixels: Optional[int] = None,
    ) -> None:
        if not paths:
            raise ValueError("no training images")
        self.max_pixels = int(default_max_pixels() if max_pixels is None else max_pixels)
        self.paths = [Path(p) for p in paths]
        self.crop, self.batch, self.device = int(crop), int(batch), torch.device(device)
        self.preload = preload
        self.generator = torch.Generator().manual_seed(seed)
        self.images: Optional[list[Tensor]] = [self._load(p) for p in self.paths] if preload else None

    def _load(self, path: Path) -> Tensor:
        x, _ = read_image(path, max_pixels=self.max_pixels)
        x = pad_to(x, self.crop, self.crop)
        return torch.round(x * 255).to(torch.uint8).to(self.device)

    def __len__(self) -> int:
        return len(self.paths)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def next(self) -> Tensor:
        """A batch ``(batch, 3, crop, crop)`` float in [0, 1] on the sampler's device."""
        g, c = self.generator, self.crop
        idx = torch.randint(0, len(self.paths), (self.batch,), generator=g).tolist()
        u = torch.rand(self.batch, 4, generator=g).tolist()
        out = []
        for i, (a, b, fh, fv) in zip(idx, u):
            img = self.images[i] if self.images is not None else self._load(self.paths[i])
            h, w = img.shape[-2:]
            top, left = int(a * (h - c + 1)), int(b * (w - c + 1))
            x = img[:, top : top + c, left : left + c]
            if fh < 0.5:
                x = x.flip(-1)
            if fv < 0.5:
                x = x.flip(-2)
            out.append(x)
        return torch.stack(out).float().div_(255)
