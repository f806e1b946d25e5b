"""Atomic writes (include/common/io.py): a reader sees the old or the new content, never half."""
from __future__ import annotations

import json
import os
import stat
import tarfile

import pytest

from include.common.config import ConfigError
from include.common.io import atomic_path, publish_dir, publish_tar, uri_to_path, write_json_atomic, write_text_atomic


def test_uri_to_path_reads_file_uris_and_plain_paths_and_refuses_s3(tmp_path):
    assert uri_to_path((tmp_path / "a b").as_uri()) == tmp_path / "a b"
    assert uri_to_path(str(tmp_path)) == tmp_path
    with pytest.raises(ConfigError, match="only file:// URIs"):
        uri_to_path("s3://bucket/key")


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "report.json"
    write_json_atomic(dest, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("crash mid-write")
    assert json.loads(dest.read_text()) == {"v": 1}
    assert os.listdir(tmp_path) == ["report.json"]


def test_secret_files_are_created_private(tmp_path):
    dest = write_text_atomic(tmp_path / "token", "s3cret", mode=0o600)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert stat.S_IMODE(write_text_atomic(tmp_path / "plain", "x").stat().st_mode) == 0o644


def test_publish_dir_replaces_the_whole_folder(tmp_path):
    src1, src2 = tmp_path / "s1", tmp_path / "s2"
    src1.mkdir(), src2.mkdir()
    (src1 / "old.txt").write_text("old")
    (src2 / "new.txt").write_text("new")
    dest = tmp_path / "store" / "out"
    publish_dir(src1, dest.as_uri())
    assert publish_dir(src2, dest.as_uri()) == dest.as_uri()
    assert sorted(os.listdir(dest)) == ["new.txt"], "a re-publish replaces, never merges"
    assert sorted(os.listdir(dest.parent)) == ["out"], "no temporary or old folder left"


def test_publish_tar_writes_the_folder_contents_at_the_archive_root(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    uri = publish_tar(tmp_path / "m", (tmp_path / "out" / "model.tar.gz").as_uri())
    with tarfile.open(uri_to_path(uri)) as tar:
        assert tar.getnames() == ["config.json"]
