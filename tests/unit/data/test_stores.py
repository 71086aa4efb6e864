"""Shard locations and the store opener, without a server: schemes, credentials, the pipe: manifest, error kinds."""

from __future__ import annotations

import errno
import http.client
import sys
import urllib.error

import pytest

from toolkit.data import stores
from toolkit.data.locations import check_location, manifest_location, pipe_manifest_command, split_urls
from toolkit.errors import UsageError


@pytest.mark.parametrize("location", ["gcs://b/pets", "ftp://h/pets", "file:///tmp/pets", "ais://b/pets", "S4://b/x"])
def test_unknown_schemes_are_refused_in_one_line(location: str):
    with pytest.raises(UsageError) as caught:
        check_location(location)
    message = str(caught.value)
    assert "\n" not in message and "is not a shard location this toolkit reads" in message
    assert "s3://BUCKET/PREFIX" in message


@pytest.mark.parametrize(
    "location, scheme",
    [
        ("shards/pets", "local"),
        ("/abs/shards/{split}-{000000..000003}.tar", "local"),
        ("s3://b/pets", "s3"),
        ("gs://b/pets", "gs"),
        ("hf://datasets/org/name/pets", "hf"),
        ("https://h/pets", "https"),
        ("pipe:curl -s https://h/{split}-{0..3}.tar", "pipe"),
    ],
)
def test_supported_locations(location: str, scheme: str):
    check_location(location)
    assert stores.scheme_of(location) == scheme


@pytest.mark.parametrize(
    "location, secret",
    [
        ("s3://AKIAEXAMPLE:S3cr3tValue123@bucket/pets", "S3cr3tValue123"),
        ("s3://bucket/pets?X-Amz-Signature=S3cr3tSig999", "S3cr3tSig999"),
        ("https://alice:S3cr3tPass777@h/pets", "S3cr3tPass777"),
        ("gs://bucket/pets?access_token=S3cr3tTok555", "S3cr3tTok555"),
    ],
)
def test_a_location_carrying_credentials_is_refused(location: str, secret: str):
    with pytest.raises(UsageError) as caught:
        check_location(location)
    assert "must not carry credentials" in str(caught.value) and secret not in str(caught.value)


def test_an_endpoint_with_credentials_or_no_scheme_is_refused():
    class Data:
        endpoint_url = "http://AK:S3cr3tEndpoint1@127.0.0.1:8333"
        retry_deadline_s = 5.0

    with pytest.raises(UsageError) as caught:
        stores.options_from(Data)
    assert "S3cr3tEndpoint1" not in str(caught.value)
    Data.endpoint_url = "127.0.0.1:8333"
    with pytest.raises(UsageError, match="must be an http"):
        stores.options_from(Data)
    Data.endpoint_url = "http://127.0.0.1:8333"
    assert stores.options_from(Data) == stores.StoreOptions(endpoint_url="http://127.0.0.1:8333", retry_deadline_s=5.0)


def test_object_store_folders_join_with_slashes():
    info = {"splits": {"train": {"num_samples": 3, "shards": [{"name": "train-000000.tar", "num_samples": 3}]}}}
    assert split_urls("s3://b/pets/", "train", info) == ["s3://b/pets/train-000000.tar"]
    assert manifest_location("s3://b/pets") == "s3://b/pets/info.json"
    assert manifest_location("hf://datasets/o/n/{split}-{000000..000001}.tar") == "hf://datasets/o/n/info.json"


def test_the_pipe_command_for_info_json_replaces_only_the_shard_word():
    aws = "pipe:aws s3 cp --profile prod s3://b/pets/{split}-{000000..000003}.tar -"
    assert pipe_manifest_command(aws) == "aws s3 cp --profile prod s3://b/pets/info.json -"
    commented = "pipe:cat /d/{split}-{000000..000000}.tar # curl https://h/x"
    assert pipe_manifest_command(commented) == "cat /d/info.json # curl https://h/x"  # the comment stays a comment
    quoted = 'pipe:curl -s "https://h/my pets/{split}-{0..3}.tar"'
    assert pipe_manifest_command(quoted) == 'curl -s "https://h/my pets/info.json"'


def test_a_missing_extra_is_one_line_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if not installed: import raises ImportError
    monkeypatch.setattr(stores, "_clients", {})
    with pytest.raises(UsageError) as caught:
        stores.filesystem("s3://b/pets/info.json")
    assert str(caught.value) == 's3:// shards need s3fs, which is not installed: pip install -e ".[s3]"'


def _client_error(status: int, code: str) -> Exception:
    class ClientError(Exception):  # botocore's shape: .response with the status and the error code
        def __init__(self):
            super().__init__(code)
            self.response = {"ResponseMetadata": {"HTTPStatusCode": status}, "Error": {"Code": code}}

    return ClientError()


def _wrapped(cause: Exception, outer: Exception) -> Exception:
    outer.__cause__ = cause  # as s3fs translates a botocore error into an OSError
    return outer


def _with_status(status: int) -> Exception:
    class HfHubHTTPError(Exception):  # huggingface_hub's shape: .response.status_code
        def __init__(self):
            super().__init__(f"{status}")
            self.response = type("Response", (), {"status_code": status})()

    return HfHubHTTPError()


@pytest.mark.parametrize(
    "err, transient",
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), True),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (TimeoutError("timed out"), True),
        (http.client.IncompleteRead(b"x", 10), True),
        (stores.BodyCut("cut"), True),
        (urllib.error.HTTPError("u", 503, "Service Unavailable", None, None), True),
        (urllib.error.HTTPError("u", 429, "Too Many Requests", None, None), True),
        (_wrapped(_client_error(503, "SlowDown"), OSError(errno.EBUSY, "SlowDown")), True),
        (_wrapped(_client_error(500, "InternalError"), OSError(errno.EIO, "internal")), True),
        (_client_error(400, "Throttling"), True),
        (type("ClientPayloadError", (Exception,), {})("payload"), True),
        (type("EndpointConnectionError", (Exception,), {})("down"), True),
        (_with_status(503), True),
        (_with_status(429), True),
        (_with_status(404), False),
        (FileNotFoundError("pets/train-000000.tar"), False),
        (PermissionError("Forbidden"), False),
        (urllib.error.HTTPError("u", 404, "Not Found", None, None), False),
        (urllib.error.HTTPError("u", 403, "Forbidden", None, None), False),
        (_client_error(400, "InvalidArgument"), False),
        (ValueError("bug"), False),
    ],
)
def test_transient_errors_are_told_from_lasting_ones(err: Exception, transient: bool):
    assert stores.is_transient(err) is transient


def test_denied_errors_become_one_line_naming_the_store_without_the_secret():
    err = stores.credential_error("s3://bucket/pets/info.json", PermissionError("SignatureDoesNotMatch"))
    assert isinstance(err, UsageError) and "\n" not in str(err)
    assert str(err).startswith("s3://bucket refused the credentials (PermissionError: SignatureDoesNotMatch)")
    assert stores.is_denied(urllib.error.HTTPError("u", 401, "Unauthorized", None, None))
    assert stores.is_denied(_with_status(403)) and not stores.is_denied(_with_status(503))
