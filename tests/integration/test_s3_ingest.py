"""Ingest from S3 through boto3 against a real S3 API: moto in server mode on a loopback port."""

from __future__ import annotations

import csv
import socket

import pytest

from cvplatform.data import sources
from cvplatform.data.ingest import run_ingest
from cvplatform.data.manifest import CORE_COLUMNS, read_manifest
from cvplatform.errors import SourceError
from tests.conftest import build_params
from tests.fixtures.corpus import png_bytes, random_rgb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    """A boto3 client on the moto server; the code under test finds it through the standard env vars."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.client("s3")


def _report(root) -> dict[str, str]:
    with (root / "data/quarantine/report.csv").open(encoding="utf-8", newline="") as fh:
        return {r["file"]: r["reason"] for r in csv.DictReader(fh)}


def test_image_folder_layout_from_s3(s3, project_root, monkeypatch):
    monkeypatch.setattr(sources, "_S3_PAGE_SIZE", 2)  # force several ListObjectsV2 pages
    s3.create_bucket(Bucket="pets-bucket")
    objects = {
        "datasets/pets/cats/a.png": png_bytes(random_rgb(1)),
        "datasets/pets/cats/nested/b.png": png_bytes(random_rgb(2)),
        "datasets/pets/cats/z-copy.png": png_bytes(random_rgb(1)),
        "datasets/pets/dogs/c d é.png": png_bytes(random_rgb(3)),
        "datasets/pets/dogs/broken.jpg": b"not an image",
        "datasets/pets/dogs/": b"",  # a "folder" marker object
        "datasets/pets/cats/../../escape.png": png_bytes(random_rgb(4)),  # S3 allows it; we must not follow it
        "datasets/pets-other/cats/x.png": png_bytes(random_rgb(5)),  # sibling prefix: not part of the source
    }
    for key, body in objects.items():
        s3.put_object(Bucket="pets-bucket", Key=key, Body=body)

    result = run_ingest(build_params("ingest.source=s3://pets-bucket/datasets/pets", "ingest.workers=1"),
                        root=project_root)
    assert (result.seen, result.accepted, result.quarantined, result.duplicates) == (6, 3, 2, 1)
    df = read_manifest(project_root / "data/processed/manifest.parquet")
    assert list(df.columns) == list(CORE_COLUMNS)
    assert sorted(zip(df["origin"], df["label"], strict=True)) == [
        ("cats/a.png", "cats"), ("cats/nested/b.png", "cats"), ("dogs/c d é.png", "dogs")]
    assert set(df["source"]) == {"s3://pets-bucket/datasets/pets"}
    assert all((project_root / p).is_file() for p in df["path"])
    assert _report(project_root) == {"dogs/broken.jpg": "undecodable", "cats/../../escape.png": "path_escape"}
    assert not any(p.name == "escape.png" for p in project_root.rglob("*"))  # never downloaded


def test_labels_csv_layout_from_s3(s3, project_root):
    s3.create_bucket(Bucket="csv-bucket")
    s3.put_object(Bucket="csv-bucket", Key="set1/images/1.png", Body=png_bytes(random_rgb(11)))
    s3.put_object(Bucket="csv-bucket", Key="set1/images/2.png", Body=png_bytes(random_rgb(12)))
    s3.put_object(Bucket="csv-bucket", Key="set1/labels.csv",
                  Body=b"path,label,camera,lighting\nimages/1.png,circle,a,dim\nimages/2.png,star,b,bright\n"
                       b"images/3.png,star,b,bright\n")
    result = run_ingest(build_params("ingest.source=s3://csv-bucket/set1", "ingest.labels_csv=labels.csv",
                                     "ingest.workers=1"), root=project_root)
    assert (result.seen, result.accepted, result.quarantined) == (3, 2, 1)
    df = read_manifest(project_root / "data/processed/manifest.parquet").set_index("origin")
    assert df.loc["images/1.png", ["label", "camera", "lighting"]].tolist() == ["circle", "a", "dim"]
    assert df.loc["images/2.png", ["label", "camera", "lighting"]].tolist() == ["star", "b", "bright"]
    assert _report(project_root) == {"images/3.png": "missing_file"}


def test_missing_bucket_is_a_source_error_naming_it(s3, project_root):
    with pytest.raises(SourceError) as e:
        run_ingest(build_params("ingest.source=s3://no-such-bucket-here/x"), root=project_root)
    msg = str(e.value)
    assert "no-such-bucket-here" in msg and "does not exist" in msg and "AWS_ENDPOINT_URL" in msg


def test_unreachable_endpoint_is_a_source_error(s3, project_root, monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(SourceError) as e:
        run_ingest(build_params("ingest.source=s3://some-bucket/p"), root=project_root)
    assert f"127.0.0.1:{port}" in str(e.value) and "s3://some-bucket/p" in str(e.value)
