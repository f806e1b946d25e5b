"""Object-store paths and atomic writes: every file the project publishes goes through here.

A reader never sees a half-written file or folder: the content is written under a temporary
name next to its destination, then renamed over it (``os.replace`` is atomic on one file
system). ``file://`` URIs are the local object store's addresses.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from include.common.config import ConfigError

GZIP_LEVEL = 1  # float weights barely compress; level 1 is ~3x faster than 9 for ~1% size


def is_s3(uri: str) -> bool:
    """Whether ``uri`` addresses S3 (the aws backend's object store)."""
    return str(uri).startswith("s3://")


def read_bytes(uri: str) -> bytes:
    """The bytes at ``uri``: a ``file://`` URI / path, or an ``s3://`` object (aws backend)."""
    if is_s3(uri):
        from include.common.aws import load_aws_config
        from include.common.aws import read_bytes as s3_read

        return s3_read(load_aws_config(), uri)
    return uri_to_path(uri).read_bytes()


def read_json(uri: str) -> Any:
    """The JSON document at ``uri`` (``file://``, path or ``s3://``)."""
    return json.loads(read_bytes(uri))


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[Path]:
    """A local path holding the object or folder at ``uri`` while the block runs: the path
    itself for ``file://``, a temporary download (removed afterwards) for ``s3://``."""
    if not is_s3(uri):
        yield uri_to_path(uri)
        return
    import tempfile

    from botocore.exceptions import ClientError

    from include.common.aws import download_prefix, load_aws_config, split_s3_uri

    cfg = load_aws_config()
    bucket, key = split_s3_uri(uri)
    name = key.rstrip("/").rsplit("/", 1)[-1] or bucket
    with tempfile.TemporaryDirectory(prefix="reviews-in-") as tmp:
        target = Path(tmp) / name
        try:
            if key.endswith("/") or not key:
                raise FileNotFoundError(uri)
            cfg.client("s3").head_object(Bucket=bucket, Key=key)
        except (ClientError, FileNotFoundError):  # not one object: a folder (prefix) then
            if not download_prefix(cfg, uri.rstrip("/") + "/", target):
                raise FileNotFoundError(f"{uri}: no such object or folder on S3") from None
        else:
            cfg.client("s3").download_file(bucket, key, str(target))
        yield target


def publish_file(src: Path, dest_uri: str) -> str:
    """Put the file ``src`` at ``dest_uri`` (temp name then rename; on S3 one upload)."""
    if is_s3(dest_uri):
        from include.common.aws import load_aws_config, split_s3_uri

        cfg = load_aws_config()
        bucket, key = split_s3_uri(dest_uri)
        extra = cfg.sse() or None
        cfg.client("s3").upload_file(str(src), bucket, key, ExtraArgs=extra)
        return dest_uri
    dest = uri_to_path(dest_uri)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return dest.as_uri()


def write_bytes(uri: str, data: bytes) -> str:
    """Write ``data`` at ``uri`` atomically: rename locally, one PUT on S3."""
    if is_s3(uri):
        from include.common.aws import load_aws_config
        from include.common.aws import write_bytes as s3_write

        return s3_write(load_aws_config(), uri, data)
    dest = uri_to_path(uri)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return dest.as_uri()


def write_json(uri: str, data: Any, indent: int | None = 1) -> str:
    """Write ``data`` as JSON at ``uri`` atomically (``file://``, path or ``s3://``)."""
    return write_bytes(uri, json.dumps(data, indent=indent, default=str).encode())


@contextlib.contextmanager
def local_dir(uri: str) -> Iterator[Path]:
    """A local folder with what lies under the prefix ``uri``: the folder itself for a
    ``file://`` URI, a temporary download (deleted after the block) for ``s3://``."""
    if not is_s3(uri):
        yield uri_to_path(uri)
        return
    import tempfile

    from include.common.aws import download_prefix, load_aws_config

    with tempfile.TemporaryDirectory(prefix="s3-") as tmp:
        download_prefix(load_aws_config(), uri.rstrip("/") + "/", Path(tmp))
        yield Path(tmp)


@contextlib.contextmanager
def edit_dir(uri: str) -> Iterator[Path]:
    """A local folder mirroring the prefix ``uri`` whose new or changed files are published to
    ``uri`` when the block succeeds: the folder itself for ``file://``; for ``s3://`` a
    temporary download, and each new or changed file uploaded (one PUT each) afterwards."""
    if not is_s3(uri):
        yield uri_to_path(uri)
        return

    def signature(root: Path) -> dict[str, tuple[int, int]]:
        return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in root.rglob("*") if p.is_file()}

    with local_dir(uri) as folder:
        before = signature(folder)
        yield folder
        for rel, sig in sorted(signature(folder).items()):
            if before.get(rel) != sig:
                write_bytes(f"{uri.rstrip('/')}/{rel}", (folder / rel).read_bytes())


def exists(uri: str) -> bool:
    """Whether there is a file (``file://``) or an object (``s3://``) at ``uri``."""
    if is_s3(uri):
        from include.common.aws import list_keys, load_aws_config, split_s3_uri

        key = split_s3_uri(uri)[1]
        return key in list_keys(load_aws_config(), uri)
    return uri_to_path(uri).is_file()


def delete_prefix(uri: str) -> None:
    """Remove the folder (or every object under the prefix) ``uri``; nothing there is fine."""
    if is_s3(uri):
        from include.common.aws import delete_prefix as s3_delete
        from include.common.aws import load_aws_config

        s3_delete(load_aws_config(), uri.rstrip("/") + "/")
        return
    _remove(uri_to_path(uri))


def uri_to_path(uri: str) -> Path:
    """Local path of a ``file://`` URI or a plain path; other schemes are an error here."""
    parsed = urlparse(str(uri))
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path) if parsed.scheme else str(uri))
    raise ConfigError(f"{uri!r}: only file:// URIs are readable by the local backend")


def _tmp_name(dest: Path, kind: str = "tmp") -> Path:
    return dest.with_name(f".{dest.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of ``dest`` to write (a file or a folder); rename it over
    ``dest`` when the block succeeds, delete it when the block raises."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(dest)
    try:
        yield tmp
        if tmp.is_dir() and dest.is_dir():  # a folder cannot be renamed over a folder: swap
            old = _tmp_name(dest, "old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            _remove(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def write_text_atomic(dest: Path | str, text: str, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``dest`` atomically; ``mode`` sets the permissions first."""
    with atomic_path(dest) as tmp:
        # created with its final mode, so a secret (mode 0o600) is never readable by others
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if mode is None else mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644 if mode is None else mode)
    return Path(dest)


def write_json_atomic(dest: Path | str, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as JSON to ``dest`` atomically (non-JSON values via ``str``)."""
    return write_text_atomic(dest, json.dumps(data, indent=indent, default=str))


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (free for big inputs such as weights); copy across devices."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish_dir(src: Path, dest_uri: str) -> str:
    """Replace the folder at ``dest_uri`` by the contents of ``src`` (temp copy, then rename;
    on S3: upload, then delete the objects the new contents do not have)."""
    if is_s3(dest_uri):
        from include.common.aws import load_aws_config, upload_dir

        upload_dir(load_aws_config(), Path(src), dest_uri)
        return dest_uri.rstrip("/")
    dest = uri_to_path(dest_uri)
    with atomic_path(dest) as tmp:
        shutil.copytree(src, tmp, copy_function=link_or_copy)
    return dest.as_uri()


def location(uri: str) -> str:
    """Where a user reads ``uri``: the local path of a ``file://`` URI, the ``s3://`` URI itself."""
    return str(uri).rstrip("/") if is_s3(uri) else str(uri_to_path(uri))


@contextlib.contextmanager
def output_dir(uri: str) -> Iterator[Path]:
    """A local folder for a step to write the folder ``uri`` into.

    ``file://``: the folder itself (the step publishes atomically into it). ``s3://``: a
    temporary folder, uploaded to ``uri`` when the block ends - also when it raises, so that a
    failed quality gate's report is there to read - if the step created it.
    """
    if not is_s3(uri):
        yield uri_to_path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="reviews-out-") as tmp:
        out = Path(tmp) / "out"
        try:
            yield out
        finally:
            if out.is_dir():
                publish_dir(out, uri)


def publish_tar(src: Path, dest_uri: str, arc_root: str = "") -> str:
    """Write ``src``'s contents as a gzip tarball at ``dest_uri`` (temp name, then rename)."""
    dest = uri_to_path(dest_uri)
    with atomic_path(dest) as tmp, tarfile.open(tmp, "w:gz", compresslevel=GZIP_LEVEL) as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=f"{arc_root}{child.name}")
    return dest.as_uri()
