"""How hdfs://, hf:// and modelscope:// URLs become requests to their services' HTTP APIs, and errors that show the
user's URL without tokens."""

from __future__ import annotations

import pytest
from dragonfly_api import common_pb2

from dragonfly.daemon.backends.base import SourceOptions
from dragonfly.daemon.backends.web_apis import (
    HuggingFaceBackend,
    ModelScopeBackend,
    WebHDFSBackend,
    _Repository,
    _rewrap,
)
from dragonfly.daemon.errors import BackendError


def test_webhdfs_requests() -> None:
    options = SourceOptions(hdfs=common_pb2.HDFS(delegation_token="tok en"))
    assert (
        WebHDFSBackend._api("hdfs://nn:8020/a b/c", "OPEN", options, offset=4, length=8)
        == "http://nn:8020/webhdfs/v1/a%20b/c?op=OPEN&offset=4&length=8&delegation=tok+en"
    )
    assert WebHDFSBackend._api("hdfs://nn/x", "GETFILESTATUS", SourceOptions()) == (
        "http://nn:9870/webhdfs/v1/x?op=GETFILESTATUS"
    )
    with pytest.raises(BackendError, match="expected hdfs://namenode"):
        WebHDFSBackend._api("hdfs:///x", "OPEN", SourceOptions())


def test_hugging_face_requests() -> None:
    backend = HuggingFaceBackend(None)  # type: ignore[arg-type]
    options = SourceOptions(hugging_face=common_pb2.HuggingFace(revision="refs/pr/1", base_url="http://hub/"))
    api, repo, _ = backend._target("hf://datasets/acme/corpus/train/a b.json", options)
    assert repo.kind == "datasets"
    assert api == "http://hub/datasets/acme/corpus/resolve/refs%2Fpr%2F1/train/a%20b.json"
    api, repo, _ = backend._target("hf://acme/model/w.bin", SourceOptions())
    assert api == "https://huggingface.co/acme/model/resolve/main/w.bin"
    assert repo.url_of("x/y.bin", backend.kinds) == "hf://acme/model/x/y.bin"
    explicit = _Repository("hf://models/acme/model", backend.kinds)
    assert explicit.url_of("x", backend.kinds) == "hf://models/acme/model/x"
    with pytest.raises(BackendError, match="not a file"):
        backend._target("hf://acme/model", SourceOptions())
    with pytest.raises(BackendError, match="expected hf://"):
        _Repository("hf://acme", backend.kinds)
    with pytest.raises(BackendError, match=r"\.\. are not allowed"):
        _Repository("hf://acme/model/../other/x", backend.kinds)


def test_modelscope_requests() -> None:
    backend = ModelScopeBackend(None)  # type: ignore[arg-type]
    api, _, _ = backend._target("modelscope://qwen/q7b/sub/w.bin", SourceOptions())
    assert api == "https://modelscope.cn/api/v1/models/qwen/q7b/repo?Revision=master&FilePath=sub%2Fw.bin"


def test_errors_name_the_users_url_and_mask_tokens() -> None:
    api = "http://nn:9870/webhdfs/v1/x?op=OPEN&delegation=s3cr3t%2Ftok"
    error = BackendError(f"origin returned HTTP 401 for {api}", status_code=401)
    rewrapped = _rewrap(error, api, "hdfs://nn/x", ["s3cr3t/tok"])
    assert rewrapped.message == "origin returned HTTP 401 for hdfs://nn/x"
    other = _rewrap(BackendError("token s3cr3t/tok and s3cr3t%2Ftok leaked"), api, "hdfs://nn/x", ["s3cr3t/tok"])
    assert "s3cr3t" not in other.message
    assert rewrapped.status_code == 401
