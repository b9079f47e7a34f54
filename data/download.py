#!/usr/bin/env python3
"""Fetch the image sets lpm uses and check them against the sha256 manifests beside this script.

Standalone (standard library only), so it runs before lpm is installed. Files land in
``DEST/<set>/`` (default ``DEST``: this ``data/`` directory, whose image folders git ignores):

    python data/download.py kodak   [--dest DIR]     # 24 PNGs from r0k.us
    python data/download.py bsds500 [--dest DIR]     # BSR tarball from Berkeley, extract the JPEGs
    python data/download.py bsds500 --tarball BSR_bsds500.tgz [--dest DIR]   # tarball at hand
    python data/download.py kodak --from-dir SRC [--dest DIR]   # copy from a local copy, verify

Every file is checked against ``<set>.sha256`` (or ``--manifest``) before it is put in place;
the exit status is 0 when the whole set verifies, 1 otherwise. Downloads are bounded: a response larger than
the set's files can be (``MAX_BYTES``), or slower than about 20 kB/s on average, is cut off and refused before
it fills the disk; a tarball you placed in DEST yourself is used and never deleted; a set that already
verifies is not downloaded again; an interrupted download leaves no partial file.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import secrets
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
KODAK_BASE_URL = "http://r0k.us/graphics/kodak/kodak/"
BSDS500_URL = (
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz"
)
# members of the BSR tarball that make up the set: BSR/BSDS500/data/images/<split>/<id>.jpg
BSDS500_MEMBER = re.compile(r"^(?:\./)?BSR/BSDS500/data/images/(train|val|test)/([^/]+\.jpg)$")
SETS = ("kodak", "bsds500")
# Upper bounds on what one download or one archive member may be (the real files: Kodak PNGs 0.4-0.8 MB,
# BSDS500 JPEGs under 0.2 MB, the BSR tarball about 70 MB): anything larger is not the set's file.
MAX_BYTES = {"kodak": 8 << 20, "bsds500": 4 << 20, "tarball": 256 << 20}
MIN_AVERAGE_RATE = 20_000  # bytes/s: a download may take 2 min + its size at this rate, then it is cut off


class DownloadError(Exception):
    """A download that cannot succeed by retrying (too large) or that failed every attempt."""

BSDS500_INSTRUCTIONS = f"""\
BSDS500 (Martin et al.; Arbelaez et al., TPAMI 2011; research use, cite the paper):
  1. download the official BSR tarball (about 70 MB):
       {BSDS500_URL}
  2. extract BSR/BSDS500/data/images/{{train,val,test}}/*.jpg into DEST/bsds500/{{train,val,test}}/
  3. verify against bsds500.sha256 (paths relative to DEST/bsds500).
Steps 2 and 3 are what `python data/download.py bsds500 --tarball BSR_bsds500.tgz --dest DEST` does."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict[str, str]:
    """``sha256sum``-style lines ``<hex>  <path>`` -> ``{path: hex}`` (``./`` dropped)."""
    entries: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        digest, _, rest = line.partition(" ")
        rel = rest[1:] if rest[:1] in (" ", "*") else rest
        while rel.startswith("./"):
            rel = rel[2:]
        if not re.fullmatch(r"[0-9a-fA-F]{64}", digest) or not rel:
            raise SystemExit(f"error: {path}:{lineno}: malformed manifest line: {line!r}")
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise SystemExit(f"error: {path}:{lineno}: path leaves the data directory: {rel!r}")
        entries[rel] = digest.lower()
    if not entries:
        raise SystemExit(f"error: manifest {path} lists no files")
    return entries


def verify(directory: Path, manifest: dict[str, str]) -> list[str]:
    problems = []
    for rel, digest in manifest.items():
        file = directory / rel
        if not file.is_file():
            problems.append(f"missing: {rel}")
        elif sha256_file(file) != digest:
            problems.append(f"sha256 mismatch: {rel}")
    return problems


def _temp_beside(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.{secrets.token_hex(6)}.part"


def place_checked(tmp: Path, target: Path, digest: str) -> bool:
    """Move ``tmp`` to ``target`` if its sha256 is ``digest``; otherwise delete it."""
    if sha256_file(tmp) != digest:
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, target)
    return True


def already_ok(target: Path, digest: str) -> bool:
    return target.is_file() and sha256_file(target) == digest


def from_dir(src: Path, dest: Path, name: str, manifest: dict[str, str]) -> list[str]:
    """Copy every manifest file from ``src`` (the set's folder, or a folder holding ``<name>/``)."""
    first = next(iter(manifest))
    if not (src / first).exists() and (src / name).is_dir():
        src = src / name
    if not src.is_dir():
        raise SystemExit(f"error: --from-dir {src} is not a directory")
    if src.resolve() == dest.resolve():
        return verify(dest, manifest)
    problems = []
    for rel, digest in manifest.items():
        source, target = src / rel, dest / rel
        if already_ok(target, digest):
            continue
        if not source.is_file():
            problems.append(f"missing in {src}: {rel}")
            continue
        tmp = _temp_beside(target)
        try:
            shutil.copyfile(source, tmp)
            if not place_checked(tmp, target, digest):
                problems.append(f"sha256 mismatch: {rel} (from {source})")
        finally:
            tmp.unlink(missing_ok=True)
    return problems


def _copy_bounded(src, out, limit: int, what: str, deadline: float | None = None) -> int:
    """Copy ``src`` to ``out`` in blocks; refuse more than ``limit`` bytes, or going past ``deadline``."""
    total = 0
    while True:
        block = src.read(1 << 20)
        if not block:
            return total
        total += len(block)
        if total > limit:
            raise DownloadError(f"{what} is larger than {limit >> 20} MiB, more than the file can be; refused")
        if deadline is not None and time.monotonic() > deadline:
            raise DownloadError(f"{what} is too slow (under {MIN_AVERAGE_RATE // 1000} kB/s on average); cut off "
                                f"after {total} bytes")
        out.write(block)


def fetch(url: str, tmp: Path, max_bytes: int, attempts: int = 3) -> None:
    """Download ``url`` to ``tmp``: at most ``max_bytes``, within 2 min + ``max_bytes`` at ``MIN_AVERAGE_RATE``,
    all of a declared ``Content-Length``; ``tmp`` is removed on any failure (also Ctrl-C)."""
    request = urllib.request.Request(url, headers={"User-Agent": "lpm-data-download/1"})
    for attempt in range(1, attempts + 1):
        try:
            deadline = time.monotonic() + 120 + max_bytes / MIN_AVERAGE_RATE
            with urllib.request.urlopen(request, timeout=60) as response, open(tmp, "wb") as out:
                declared = response.headers.get("Content-Length")
                declared = int(declared) if declared and declared.strip().isdigit() else None
                if declared is not None and declared > max_bytes:
                    raise DownloadError(f"{url} declares {declared} bytes, more than its file can be "
                                        f"({max_bytes >> 20} MiB); refused")
                got = _copy_bounded(response, out, max_bytes, url, deadline)
            if declared is not None and got != declared:
                raise http.client.IncompleteRead(b"", declared - got)
            return
        except DownloadError:
            tmp.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, http.client.IncompleteRead):
                exc = DownloadError(f"the connection closed early ({exc.expected} bytes short)")
            if attempt == attempts or isinstance(exc, urllib.error.HTTPError):
                raise exc
            print(f"  retrying {url} ({exc})", file=sys.stderr)
            time.sleep(2 * attempt)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def download_kodak(dest: Path, manifest: dict[str, str]) -> list[str]:
    problems = []
    for rel, digest in manifest.items():
        target = dest / rel
        if already_ok(target, digest):
            continue
        url = KODAK_BASE_URL + rel
        print(f"  {url}")
        tmp = _temp_beside(target)
        try:
            try:
                fetch(url, tmp, MAX_BYTES["kodak"])
            except (urllib.error.HTTPError, DownloadError) as exc:
                problems.append(f"download failed: {rel} ({exc})")
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                # no network: stop rather than try 24 times
                raise SystemExit(
                    f"error: cannot download {url} ({exc}); without network, copy a local copy with "
                    "--from-dir SRC"
                ) from exc
            if not place_checked(tmp, target, digest):
                problems.append(f"sha256 mismatch: {rel} (from {url})")
        finally:
            tmp.unlink(missing_ok=True)  # gone already once placed; an interrupted download leaves no part file
    return problems


def extract_bsds500(tarball: Path, dest: Path, manifest: dict[str, str]) -> list[str]:
    """Write the manifest's JPEGs from the BSR tarball to ``dest/<split>/<id>.jpg``, verified."""
    if not tarball.is_file():
        raise SystemExit(f"error: tarball not found: {tarball}")
    bad: dict[str, str] = {}  # rel -> the problem; a member stored twice is fine once one copy verified
    seen = set()
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for member in tar:
                match = BSDS500_MEMBER.match(member.name)
                if not match or not member.isfile():
                    continue
                rel = f"{match.group(1)}/{match.group(2)}"
                if rel not in manifest:
                    continue  # only files the manifest vouches for
                seen.add(rel)
                target = dest / rel
                if already_ok(target, manifest[rel]):
                    continue
                if member.size > MAX_BYTES["bsds500"]:
                    bad[rel] = (f"refused: {rel} in {tarball} is {member.size} bytes, larger than a BSDS500 image "
                                f"can be ({MAX_BYTES['bsds500'] >> 20} MiB)")
                    continue
                tmp = _temp_beside(target)
                try:
                    with tar.extractfile(member) as data, open(tmp, "wb") as out:  # type: ignore[union-attr]
                        _copy_bounded(data, out, MAX_BYTES["bsds500"], f"{rel} in {tarball}")
                    if place_checked(tmp, target, manifest[rel]):
                        bad.pop(rel, None)
                    else:
                        bad[rel] = f"sha256 mismatch: {rel} (from {tarball})"
                finally:
                    tmp.unlink(missing_ok=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SystemExit(f"error: extracting from {tarball} failed: {exc}") from exc
    except DownloadError as exc:
        raise SystemExit(f"error: {exc}") from exc
    problems = list(bad.values())
    for rel, digest in manifest.items():
        if rel not in seen and not already_ok(dest / rel, digest):
            problems.append(f"missing from tarball: {rel}")
    return problems


def download_bsds500(dest: Path, manifest: dict[str, str]) -> list[str]:
    if not verify(dest, manifest):
        return []  # the whole set is there and verifies: nothing to download
    placed = dest.parent / "BSR_bsds500.tgz"
    if placed.is_file():  # a tarball the user put there: used as with --tarball, and kept
        print(f"using {placed} (already there; kept)")
        return extract_bsds500(placed, dest, manifest)
    print(BSDS500_INSTRUCTIONS.replace("DEST", str(dest.parent)))
    tmp = _temp_beside(placed)
    print(f"downloading {BSDS500_URL} ...")
    try:
        try:
            fetch(BSDS500_URL, tmp, MAX_BYTES["tarball"])
        except (urllib.error.URLError, http.client.HTTPException, OSError, DownloadError) as exc:
            raise SystemExit(
                f"error: download failed ({exc}); fetch the tarball by hand and rerun with --tarball PATH"
            ) from exc
        return extract_bsds500(tmp, dest, manifest)
    finally:
        tmp.unlink(missing_ok=True)  # the download only: never a file the script did not write


def _remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders below it that hold no file (bottom-up); never a file."""
    for folder in sorted((p for p in top.rglob("*") if p.is_dir() and not p.is_symlink()), key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()
        except OSError:
            pass
    try:
        top.rmdir()
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Download or copy an image set and verify it against its sha256 manifest."
    )
    parser.add_argument("name", choices=SETS, help="which image set")
    parser.add_argument(
        "--dest", type=Path, default=HERE, help="directory that receives DEST/<name>/ (default: %(default)s)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-dir", type=Path, help="copy from a local copy of the set instead of downloading")
    source.add_argument("--tarball", type=Path, help="bsds500 only: extract from an already downloaded BSR_bsds500.tgz")
    parser.add_argument(
        "--manifest", type=Path, help="sha256 manifest to check against (default: <name>.sha256 beside this script)"
    )
    args = parser.parse_args(argv)
    if args.tarball is not None and args.name != "bsds500":
        parser.error("--tarball applies to bsds500 only")

    manifest_file = args.manifest or HERE / f"{args.name}.sha256"
    if not manifest_file.is_file():
        parser.error(f"manifest not found: {manifest_file}")
    manifest = read_manifest(manifest_file)
    dest = (args.dest / args.name).resolve()
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if args.from_dir is not None:
            problems = from_dir(args.from_dir, dest, args.name, manifest)
        elif args.tarball is not None:
            problems = extract_bsds500(args.tarball, dest, manifest)
        elif args.name == "kodak":
            problems = download_kodak(dest, manifest)
        else:
            problems = download_bsds500(dest, manifest)
        if not problems:  # a final pass over everything, including files that were already there
            problems = verify(dest, manifest)
    finally:
        if created:
            _remove_empty_folders(dest)  # a failed first attempt leaves no empty DEST/<name>/ behind
    if problems:
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print(f"{args.name}: {len(problems)} problem(s) in {dest}", file=sys.stderr)
        return 1
    print(f"{args.name}: {len(manifest)} files verified in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
