"""Downloading the official GPT-2 checkpoints: `fetch(name)` puts config.json + model.safetensors from the Hugging
Face Hub into minimech's download folder, resumable, each file checked against the shipped manifest's checksums.

load() never touches the network; this module is the only one that does.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import minimech

from .errors import MinimechError, UsageError
from . import loading  # looked up at call time, so a test (or a user) can point weights_dir elsewhere
from .loading import ALIASES, ChecksumError, sha256_file
from .published import read_manifest

HF_BASE_URL = "https://huggingface.co"


class FetchError(MinimechError):
    """A download that failed (most often: this machine is offline)."""


# ---- Downloading the official checkpoints --------------------------------------------------------------------------

def _offline(url: str, err, part: Path) -> FetchError:
    folder = part.parent  # fetch downloads into DEST.partial: the files belong in DEST
    folder = folder.with_name(folder.name.removesuffix(".partial"))
    kept = part.exists() and part.stat().st_size > 0
    return FetchError(
        f"could not download {url} ({err}). This machine may be offline (fetch needs the internet). Either run "
        f"`minimech fetch` on a machine with internet and copy the folder it prints, or download config.json and "
        f"model.safetensors by hand from the Hub into {folder}. "
        + (f"The partial file {part} is kept; the next fetch resumes it." if kept else "Nothing was left behind."))


def download(url: str, target, *, size: int | None = None, sha256: str | None = None, progress: bool = True) -> Path:
    """Download `url` to `target` through `target.part`, resuming a partial .part with an HTTP Range request.

    The finished file is checked against `size` and `sha256` (when given) before it is renamed into place: a file that
    fails is deleted and ChecksumError raised, so a bad file never sits where load() would find it.
    """
    from .notebook import tqdm  # a widget in Jupyter, text elsewhere

    target = Path(target)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()  # longer than the real file: it cannot be a prefix of it
        have = 0
    if size is None or have < size:
        headers = {"User-Agent": f"minimech/{minimech.__version__}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as resp:
                if resp.status == 200 and have:  # the server ignored Range and sends everything: start over
                    have = 0
                total = have + int(resp.headers["Content-Length"]) if resp.headers.get("Content-Length") else size
                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=target.name, disable=not progress)
                with open(part, "ab" if have else "wb") as f, bar:
                    while chunk := resp.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            # 416 "range not satisfiable" answers a Range that starts at the file's end: the .part is already whole
            # if the server's length ("bytes */LENGTH") is what we have; otherwise the .part is not this file.
            if e.code != 416 or not (e.headers.get("Content-Range") or "").endswith(f"/{have}"):
                if e.code == 416:
                    part.unlink()
                raise _offline(url, f"HTTP {e.code} {e.reason}", part) from None
        except (OSError, http.client.HTTPException, ValueError) as e:  # no network, DNS, reset, timeout, short read
            raise _offline(url, e, part) from None
    got = part.stat().st_size
    if size is not None and got != size:
        if got < size:
            raise _offline(url, f"the transfer stopped at {got} of {size} bytes", part)
        part.unlink()
        raise ChecksumError(f"{url} gave {got} bytes but the manifest says {size}; deleted it. Run fetch again; if "
                            "this repeats, the file on the Hub changed: update weights/gpt2-manifest.json")
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise ChecksumError(f"{url}: the download's sha256 is {actual} but the manifest expects {sha256}; the "
                                "corrupt file was deleted. Run fetch again; if this repeats, the file on the Hub "
                                "changed: update weights/gpt2-manifest.json")
    os.replace(part, target)
    return target


def _intact(path: Path, size, sha256, git_blob_sha1) -> bool:
    """Whether `path` matches every checksum given. git_blob_sha1 is the id git (and the Hub) gives a small file
    stored in git rather than LFS: sha1 of "blob <size>\\0" + content."""
    if size is not None and path.stat().st_size != size or sha256 is not None and sha256_file(path) != sha256:
        return False
    data = path.read_bytes() if git_blob_sha1 is not None else b""
    return git_blob_sha1 is None or hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == git_blob_sha1


def fetch(name: str, dest=None, progress: bool = True, *, base_url: str = HF_BASE_URL) -> Path:
    """Download config.json + model.safetensors of an official GPT-2 checkpoint; returns the folder.

    dest: default $MINIMECH_WEIGHTS/<name> if set, else ~/.cache/minimech/<name> (where load(name) looks).
    Checked against weights/gpt2-manifest.json; files it has no checksum for are reported as unverified.
    Files download into the folder DEST.partial and move into DEST only when every one is complete and checked, so a
    failed fetch never leaves a half checkpoint where load() looks. On failure the .partial folder is removed (with any
    folder fetch created for it), unless it holds part of a transfer: then it is kept, and the next fetch resumes it.
    """
    name = ALIASES.get(name, name)
    manifest = read_manifest()
    if name.startswith("_") or name not in manifest:
        known = ", ".join(k for k in manifest if not k.startswith("_"))
        raise FetchError(f"no checkpoint called {name!r} in the manifest; known: {known}")
    entry = manifest[name]
    dest = Path(dest) if dest is not None else loading.download_dir(name)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is a file: fetch writes a folder (config.json + model.safetensors)")
    # A manifest entry may pin the commit its checksums were taken at, so that a later change on `main` cannot turn
    # into a checksum failure.
    revision = entry.get("revision", "main")
    todo = {filename: spec for filename, spec in entry["files"].items()
            if not ((dest / filename).exists() and _intact(dest / filename, spec.get("size"), spec.get("sha256"),
                                                           spec.get("git_blob_sha1")))}  # a second fetch: nothing
    if not todo:
        return dest
    staging = dest.with_name(dest.name + ".partial")
    made = [p for p in (staging, *staging.parents) if not p.exists()]  # what fetch creates, removed on failure
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for filename, spec in todo.items():
            url = f"{base_url.rstrip('/')}/{entry['repo']}/resolve/{revision}/{filename}"
            size, sha256, sha1 = spec.get("size"), spec.get("sha256"), spec.get("git_blob_sha1")
            part = staging / filename
            if not (part.exists() and _intact(part, size, sha256, sha1)):  # a whole file from an earlier failed run
                download(url, part, size=size, sha256=sha256, progress=progress)
            if sha1 is not None and not _intact(part, None, None, sha1):  # size and sha256: checked by download()
                part.unlink()
                raise ChecksumError(f"{url}: git blob id differs from the manifest's {sha1}; deleted it; run fetch "
                                    "again")
    except BaseException:  # also Ctrl-C: a transfer under way stays resumable, anything else goes
        _clean_up(staging, made)
        raise
    dest.mkdir(parents=True, exist_ok=True)
    for filename, spec in todo.items():
        os.replace(staging / filename, dest / filename)
        if spec.get("sha256") is None and spec.get("git_blob_sha1") is None:
            warnings.warn(f"{dest / filename}: unverified: no published checksum in the manifest", stacklevel=2)
    _clean_up(staging, made)
    return dest


def _clean_up(staging: Path, made: list[Path]) -> None:
    """Remove the staging folder unless a partial transfer (a non-empty .part) is in it, then the now-empty folders
    fetch created for it."""
    if any(p.suffix == ".part" and p.stat().st_size > 0 for p in staging.iterdir()):
        return
    for leftover in staging.iterdir():
        leftover.unlink()
    for folder in made:  # innermost first
        try:
            folder.rmdir()
        except OSError:  # not empty (another file arrived) or already gone: leave it
            break
