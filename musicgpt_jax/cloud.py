"""gs:// paths: the one check that the cloud extra is installed, and what an object store does instead of
appending, renaming and writing a folder in place.

Every tool calls `require_access(path, ...)` on the paths it was given before it reads or writes them, so a
`gs://` path without gcsfs installed is one line naming the extra, never an ImportError from deep inside etils.
Reading and writing whole files goes through `etils.epath` (gcsfs underneath); this module holds the three
operations an object store does differently:

- `append_bytes`: objects cannot be appended to; the new bytes go to a temporary object that Cloud Storage
  composes onto the end of the old one, server side, so logging N lines costs N small uploads, not N^2 bytes;
- `move`: there is no rename; each object is copied, the copy checked, then the original deleted, so an
  interruption at any point leaves every byte in at least one place;
- `upload_tree`: a folder built locally is copied up with the files that mark it complete written last.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from etils import epath

CLOUD_EXTRA = "cloud"
INSTALL_HINT = f'pip install "musicgpt-jax[{CLOUD_EXTRA}]" (from a checkout: pip install -e ".[{CLOUD_EXTRA}]")'
SUPPORTED_SCHEMES = ("gs",)


class CloudError(RuntimeError):
    """A remote path that cannot be used here; the message is one line naming the path."""


def is_remote(path: str | os.PathLike | None) -> bool:
    """Whether `path` is an object-store URI (gs://, s3://, ...) rather than a local path."""
    return path is not None and "://" in os.fspath(path)


def require_access(*paths: str | os.PathLike | None) -> None:
    """CloudError (one line) for the first remote path this installation cannot use: a scheme other than gs://,
    or gs:// without the cloud extra (gcsfs). Local paths and None pass."""
    for path in paths:
        if not is_remote(path):
            continue
        text = os.fspath(path)  # type: ignore[arg-type]
        scheme = text.split("://", 1)[0]
        if scheme not in SUPPORTED_SCHEMES:
            raise CloudError(f"{text}: {scheme}:// paths are not supported (local paths and gs:// are)")
        try:
            import gcsfs  # noqa: F401 - what etils.epath opens gs:// with
        except ImportError:
            raise CloudError(f"{text}: gs:// paths need the {CLOUD_EXTRA} extra: {INSTALL_HINT}") from None


def _filesystem(path: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of a remote path."""
    import fsspec

    return fsspec.core.url_to_fs(os.fspath(path))


def forget_listings(path: str | os.PathLike) -> None:
    """Drop the cached listings of every client of `path`'s store (etils.epath, Orbax and this module each keep
    their own gcsfs instance), so that objects just written or deleted are seen as they are."""
    fs, _ = _filesystem(path)
    for client in list(getattr(type(fs), "_cache", {}).values()) or [fs]:
        client.invalidate_cache()


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Add `data` to the end of object `path` (creating it): a temporary object composed onto it, then deleted."""
    if not data:
        return
    fs, target = _filesystem(path)
    if not fs.exists(target):
        fs.pipe_file(target, data)
        return
    part = f"{target}.append-{uuid.uuid4().hex}"
    fs.pipe_file(part, data)
    try:
        fs.merge(target, [target, part])
    finally:
        fs.rm_file(part)
    forget_listings(path)


def move(source: epath.Path, target: epath.Path) -> None:
    """Move file or folder `source` to `target`: a rename locally; on an object store every object is copied, the
    copies' sizes checked, and only then are the originals deleted."""
    if not is_remote(source):
        source.rename(target)
        return
    fs, src = _filesystem(source)
    _, dst = _filesystem(target)
    fs.invalidate_cache()
    sizes = {name[len(src) :]: info["size"] for name, info in fs.find(src, detail=True).items()}
    fs.copy(src, dst, recursive=True)
    fs.invalidate_cache()
    copied = {name[len(dst) :]: info["size"] for name, info in fs.find(dst, detail=True).items()}
    missing = [name for name, size in sizes.items() if copied.get(name) != size]
    if missing:
        raise CloudError(f"{source}: copying to {target} left out {len(missing)} objects (e.g. {missing[0]}); kept")
    fs.rm(src, recursive=True)
    forget_listings(source)


def list_files(remote: str | os.PathLike) -> list[str]:
    """Every object under remote folder `remote`, as paths relative to it, sorted (one listing, not one a level)."""
    fs, root = _filesystem(remote)
    root = root.rstrip("/") + "/"
    return sorted(name[len(root) :] for name in fs.find(root) if name.startswith(root))


def upload_tree(local: Path, remote: epath.Path, last: Iterable[str] = ()) -> None:
    """Copy every file under `local` to the same relative path under `remote`; the relative paths in `last` (the
    files whose presence marks the folder complete) are written after all the others."""
    last = list(last)
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for relative in [f for f in files if f not in last] + [f for f in last if f in files]:
        target = remote / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((local / relative).read_bytes())
