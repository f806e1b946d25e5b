"""io.local_copy / io.publish_file on s3:// (moto's server): what the aws register and deploy steps read and write."""
from __future__ import annotations

import boto3
import pytest

from include.common.io import local_copy, publish_file
from tests.aws.conftest import BUCKET, REGION


def _put(key: str, body: bytes) -> None:
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=key, Body=body)


def test_an_object_is_one_local_file_and_a_folder_keeps_its_layout(aws_account):
    _put("rs/run/model.tar.gz", b"package")
    _put("rs/run/model.tar.gz.bak", b"old")  # a sibling sharing the prefix is not the object
    _put("rs/run/test/part-00000.parquet", b"p0")
    _put("rs/run/test/sub/part-00001.parquet", b"p1")
    _put("rs/run/testing/other.parquet", b"not the test folder")
    with local_copy(f"s3://{BUCKET}/rs/run/model.tar.gz") as path:
        assert path.is_file() and path.read_bytes() == b"package"
    with local_copy(f"s3://{BUCKET}/rs/run/test") as folder:
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert files == ["part-00000.parquet", "sub/part-00001.parquet"]
    assert not folder.exists(), "the download is removed after the block"
    with pytest.raises(FileNotFoundError, match="no such object or folder"), local_copy(f"s3://{BUCKET}/rs/none"):
        pass


def test_publish_file_uploads_to_s3_and_renames_locally(aws_account, tmp_path):
    src = tmp_path / "model.tar.gz"
    src.write_bytes(b"pkg")
    assert publish_file(src, f"s3://{BUCKET}/rs/pkg/model.tar.gz") == f"s3://{BUCKET}/rs/pkg/model.tar.gz"
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key="rs/pkg/model.tar.gz")["Body"]
    assert body.read() == b"pkg"
    dest = publish_file(src, (tmp_path / "out" / "model.tar.gz").as_uri())
    assert (tmp_path / "out" / "model.tar.gz").read_bytes() == b"pkg" and dest.startswith("file://")
