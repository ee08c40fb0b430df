"""Fetching weight files: sources in order, verified, atomic, one download per file across processes.

Where a file is looked for, in order:
1. folders named by ``$CITYSEG_ZOO_WEIGHTS_DIR`` (``os.pathsep``-separated): files the user put there by hand.
   They are verified too, but never deleted or replaced.
2. the cache, ``$CITYSEG_ZOO_CACHE`` (default ``~/.cache/cityseg_zoo``): verified on every read; a bad file there is
   deleted and downloaded again once.
3. the mirror (``mirror=`` or ``$CITYSEG_ZOO_MIRROR``: a base URL or a local folder holding ``<filename>``), then
   the manifest's sources in order: direct HTTP(S), Google Drive (with its large-file confirm page), Hugging Face
   (through ``hf_hub_download``, which owns its cache, locks and ``HF_ENDPOINT``).

Offline (``offline=True``, ``$CITYSEG_ZOO_OFFLINE=1`` or ``$HF_HUB_OFFLINE=1``) stops at step 2 with a message that
names the file and where to get it. Downloads go to a temporary file in the cache folder and are renamed into place
only after the size and sha256 check, under a file lock, so a killed process never leaves a file a later run
trusts, and concurrent processes download once.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import requests
from filelock import FileLock  # a dependency of huggingface_hub

from ..errors import CheckpointError, WeightsUnavailableError

if TYPE_CHECKING:  # the hub takes weight specs as arguments; it never imports the registry
    from ..specs import WeightSpec

WEIGHTS_DIR_ENV = "CITYSEG_ZOO_WEIGHTS_DIR"
CACHE_ENV = "CITYSEG_ZOO_CACHE"
MIRROR_ENV = "CITYSEG_ZOO_MIRROR"
OFFLINE_ENVS = ("CITYSEG_ZOO_OFFLINE", "HF_HUB_OFFLINE")
CHUNK = 1 << 20


class HashMismatchError(CheckpointError):
    """A weight file whose size or sha256 differs from the manifest."""


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cityseg_zoo"
    return Path(os.environ.get(CACHE_ENV, default))


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_ENVS)


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def pin_path(weight: WeightSpec) -> Path:
    """Where the sha256 seen on first use of a weight without a published hash is kept."""
    return cache_dir() / "weights" / (weight.filename + ".sha256")


def expected_sha256(weight: WeightSpec) -> str | None:
    """What a file of ``weight`` must hash to (a full sha256 or a prefix of one), the one rule every check uses:
    the manifest's sha256, else its published prefix, else the hash pinned on first use; ``None`` before that."""
    if weight.sha256 or weight.sha256_prefix:
        return (weight.sha256 or weight.sha256_prefix).lower()
    pin = pin_path(weight)
    return pin.read_text().strip() if pin.is_file() else None


def verify(path: Path, weight: WeightSpec) -> str:
    """Check size and sha256 (:func:`expected_sha256`) of ``path``; return the full sha256.

    A weight with no published hash is trust-on-first-use: it warns, and the hash seen first is what later reads
    and downloads must match (kept in the cache as ``<filename>.sha256``).
    """
    size = path.stat().st_size
    if weight.size is not None and size != weight.size:
        raise HashMismatchError(f"{path}: size {size} bytes, manifest says {weight.size} for {weight.name!r}")
    actual = sha256sum(path)
    expected = expected_sha256(weight)
    if expected is None:
        warnings.warn(f"{weight.name!r} has no published hash: trusting {weight.filename} on first use "
                      f"(sha256 {actual}); later files must match it", stacklevel=3)
        return actual
    if not actual.startswith(expected):
        raise HashMismatchError(f"{path}: sha256 {actual} does not match {expected} expected for {weight.name!r}")
    return actual


def _pin_first_use(weight: WeightSpec, digest: str) -> None:
    if expected_sha256(weight) is None:
        pin_path(weight).write_text(digest + "\n")


def _http_get(url: str, dest: Path, progress: bool, session: requests.Session | None = None,
              params: dict | None = None) -> requests.Response:
    session = session or requests.Session()
    with session.get(url, params=params, stream=True, timeout=(10, 60)) as response:
        response.raise_for_status()
        if "text/html" in response.headers.get("Content-Type", ""):
            response.content  # read the page before the stream closes; the caller decides (Google Drive)
            return response
        total = int(response.headers.get("Content-Length") or 0) or None
        from tqdm.auto import tqdm
        written = 0
        with open(dest, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name.split(".tmp")[0],
                                         disable=not progress) as bar:
            for block in response.iter_content(CHUNK):
                f.write(block)
                written += len(block)
                bar.update(len(block))
        if total is not None and written != total:
            raise IOError(f"connection closed after {written} of {total} bytes")
        return response


def _google_drive(source: dict, dest: Path, progress: bool) -> None:
    """Google Drive: large files answer with an HTML page whose form carries a ``confirm`` token."""
    session = requests.Session()
    url = source.get("url") or f"https://drive.google.com/uc?export=download&id={source['id']}"
    response = _http_get(url, dest, progress, session, params={"export": "download"})
    if "text/html" not in response.headers.get("Content-Type", ""):
        return
    page = response.text
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"', page)
    fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))
    token = fields.get("confirm") or next((v for k, v in response.cookies.items()
                                           if k.startswith("download_warning")), None)
    if token is None:
        match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
        token = match.group(1) if match else None
    if token is None:
        raise IOError("Google Drive answered with a page that has no download confirmation (quota exceeded, "
                      "file removed, or access denied)")
    action = urljoin(url, form.group(1).replace("&amp;", "&")) if form else url
    fields.setdefault("id", source.get("id", ""))
    fields["confirm"] = token
    response = _http_get(action, dest, progress, session, params=fields)
    if "text/html" in response.headers.get("Content-Type", ""):
        raise IOError("Google Drive returned a web page instead of the file after confirmation")


def _hugging_face(source: dict) -> Path:
    from huggingface_hub import hf_hub_download
    try:
        return Path(hf_hub_download(source["repo_id"], source["filename"], revision=source.get("revision"),
                                    cache_dir=cache_dir() / "huggingface", endpoint=os.environ.get("HF_ENDPOINT")))
    except Exception as err:  # huggingface_hub's own HTTP/offline/not-found errors
        raise IOError(f"{type(err).__name__}: {err}") from err


def _describe(source: dict) -> str:
    if source["kind"] == "huggingface":
        return f"hf://{source['repo_id']}/{source['filename']}@{source.get('revision', 'main')}"
    return source.get("url") or source.get("path") or source.get("id", "?")


def _mirror_source(mirror: str, filename: str) -> dict:
    if re.match(r"^https?://", mirror):
        return {"kind": "http", "url": mirror.rstrip("/") + "/" + filename}
    return {"kind": "local", "path": str(Path(mirror) / filename)}


def passing(option: str, path: str) -> str:
    """How to give ``path`` with the caller's ``option``: ``pretrained='path'`` in Python, ``--weights path`` in the
    CLI."""
    return f"{option}{path!r}" if option.endswith("=") else f"{option}{path}"


def where_to_get(weight: WeightSpec) -> str:
    return "; ".join(_describe(s) for s in weight.sources) or "nowhere (never released)"


def fetch_weights(weight: WeightSpec, *, mirror: str | None = None, offline: bool | None = None,
                  progress: bool = True, option: str = "pretrained=") -> Path:
    """Return a verified local path of ``weight``'s file, downloading it if needed (see module docstring)."""
    return fetch_verified(weight, mirror=mirror, offline=offline, progress=progress, option=option)[0]


def fetch_verified(weight: WeightSpec, *, mirror: str | None = None, offline: bool | None = None,
                   progress: bool = True, option: str = "pretrained=") -> tuple[Path, str]:
    """:func:`fetch_weights`, also returning the file's sha256 computed while verifying it.

    ``option``: how the caller names the weights argument (``pretrained=`` in Python, ``--weights`` in the CLI),
    for the message that says how to use a file fetched by hand."""
    filename = weight.filename
    for folder in [Path(d) for d in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if d]:
        if (folder / filename).is_file():
            return folder / filename, verify(folder / filename, weight)  # checked but never deleted

    target = cache_dir() / "weights" / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    offline = is_offline() if offline is None else offline
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    with FileLock(str(target) + ".lock"):
        if target.is_file():
            try:
                return target, verify(target, weight)
            except HashMismatchError as err:
                warnings.warn(f"{err}; downloading it again", stacklevel=2)
                target.unlink()
        if offline:
            raise WeightsUnavailableError(
                f"offline and {filename} ({weight.name}) is not cached in {target.parent}. On a machine with "
                f"internet run `cityseg-zoo download {weight.name}` or fetch it from {where_to_get(weight)}, "
                f"then copy it into {target.parent} or a folder named by ${WEIGHTS_DIR_ENV}, or pass "
                f"{passing(option, 'path/to/' + filename)}.")
        sources = ([_mirror_source(mirror, filename)] if mirror else []) + [dict(s) for s in weight.sources]
        failures, mismatched = [], False
        for source in sources:
            try:
                return _fetch_one(source, target, weight, progress)
            except HashMismatchError as err:
                mismatched = True
                failures.append(f"{_describe(source)}: {err}")
            except (requests.RequestException, OSError) as err:
                failures.append(f"{_describe(source)}: {type(err).__name__}: {err}")
        error = HashMismatchError if mismatched else WeightsUnavailableError
        raise error(f"could not get a verified {filename} ({weight.name}): " + " | ".join(failures)
                    + f". To install it by hand, download {filename} from {where_to_get(weight)} and put it in a "
                    f"folder named by ${WEIGHTS_DIR_ENV}, or pass {passing(option, 'path/to/' + filename)}.")


@contextmanager
def _temporary_beside(target: Path):
    """A temporary file in ``target``'s folder (same filesystem, so ``os.replace`` is atomic); removed on exit."""
    fd, name = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _fetch_one(source: dict, target: Path, weight: WeightSpec, progress: bool) -> tuple[Path, str]:
    """Put ``source``'s bytes in a temporary file, verify them, then rename the file to ``target``."""
    kind = source["kind"]
    with _temporary_beside(target) as tmp:
        if kind == "http":
            _http_get(source["url"], tmp, progress)
        elif kind == "google_drive":
            _google_drive(source, tmp, progress)
        elif kind == "huggingface":
            shutil.copyfile(_hugging_face(source), tmp)  # hf keeps its own copy in its cache
        elif kind == "local":
            shutil.copyfile(source["path"], tmp)
        else:
            raise ValueError(f"unknown source kind {kind!r}")
        digest = verify(tmp, weight)
        os.replace(tmp, target)
    _pin_first_use(weight, digest)
    return target, digest
