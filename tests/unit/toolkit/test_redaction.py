"""Credentials are masked wherever a text may carry one: each form in a shard location or an
override, secrets by key name in nested structures, and secret values from the environment."""

from __future__ import annotations

import pytest

from toolkit.redaction import REDACTED, is_secret_key, redact_secrets, secret_values

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex chars, the shape of a real W&B key

CREDENTIAL_FORMS = [  # (id, shard location, the secret in it); one per form of curl, wget, aws/gsutil, env, URL
    ("curl-oauth2-bearer", "pipe:curl -s --oauth2-bearer S3cr3tBearer https://h/x.tar", "S3cr3tBearer"),
    ("curl-u", "pipe:curl -u alice:S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("curl-u-attached", "pipe:curl -ualice:S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("curl-user=", "pipe:curl --user=alice:S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("curl-proxy-user", "pipe:curl -U bob:S3cr3tProxy -x http://p:3128 https://h/x.tar", "S3cr3tProxy"),
    ("curl-H-api-key", 'pipe:curl -H "X-Api-Key: S3cr3tApiKey" https://h/x.tar', "S3cr3tApiKey"),
    ("curl-H-authorization", "pipe:curl -H 'Authorization: Bearer S3cr3tAuth' https://h/x.tar", "S3cr3tAuth"),
    ("curl-header-token", "pipe:curl --header X-Auth-Token:S3cr3tTok https://h/x.tar", "S3cr3tTok"),
    ("curl-cookie", 'pipe:curl --cookie "session=S3cr3tCookie" https://h/x.tar', "S3cr3tCookie"),
    ("curl-b", "pipe:curl -b sid=S3cr3tCookie https://h/x.tar", "S3cr3tCookie"),
    ("wget-password", "pipe:wget -qO- --user=alice --password=S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("wget-http-password", "pipe:wget -qO- --http-password S3cr3tPass https://h/x.tar", "S3cr3tPass"),
    ("wget-header", "pipe:wget -qO- --header='Authorization: Bearer S3cr3tAuth' https://h/x.tar", "S3cr3tAuth"),
    (
        "aws-env-secret",
        "pipe:AWS_SECRET_ACCESS_KEY=S3cr3t/Aws+Key aws s3 cp --profile prod s3://b/x.tar -",
        "S3cr3t/Aws+Key",
    ),
    ("aws-env-session", 'pipe:env AWS_SESSION_TOKEN="S3cr3t Session" aws s3 cp s3://b/x.tar -', "S3cr3t Session"),
    ("aws-sse-c-key", "pipe:aws s3 cp --sse-c AES256 --sse-c-key S3cr3tSseKey s3://b/x.tar -", "S3cr3tSseKey"),
    (
        "gsutil-o",
        'pipe:gsutil -o "Credentials:gs_oauth2_refresh_token=S3cr3tRefresh" cat gs://b/x.tar',
        "S3cr3tRefresh",
    ),
    ("env-password", "pipe:PGPASSWORD=S3cr3tPg fetch-shard x.tar", "S3cr3tPg"),
    ("env-api-key", "pipe:MY_API_KEY=S3cr3tMyKey fetch-shard x.tar", "S3cr3tMyKey"),
    ("url-userinfo", "https://alice:S3cr3tPass@h/x.tar", "S3cr3tPass"),
    ("url-token-user", "pipe:curl https://S3cr3tGhToken@h/x.tar", "S3cr3tGhToken"),
    ("url-query-signature", "https://h/x.tar?X-Amz-Credential=AKIA1&X-Amz-Signature=S3cr3tSig&v=1", "S3cr3tSig"),
    ("url-query-token", "https://h/x.tar?access_token=S3cr3tQuery", "S3cr3tQuery"),
]


@pytest.mark.parametrize("location, secret", [c[1:] for c in CREDENTIAL_FORMS], ids=[c[0] for c in CREDENTIAL_FORMS])
def test_each_credential_form_in_a_shard_location_is_masked(location: str, secret: str):
    from toolkit.redaction import REDACTED, redact_text

    masked = redact_text(location, secrets=[])  # nothing from the environment: the form alone must give it away
    assert secret not in masked and REDACTED in masked, masked
    assert masked.endswith(location.split(secret, 1)[1])  # what follows the secret stays readable


@pytest.mark.parametrize(
    "text",
    [
        "pipe:aws s3 cp --profile prod s3://b/train-000000.tar -",
        'pipe:curl -s -H "Accept: */*" --user-agent pets https://h/x.tar',
        "key=Abyssinian_1",
        "optimizer.weight_decay=0.001",
        "shards/pets/{split}.tar",
    ],
)
def test_what_is_no_credential_stays(text: str):
    from toolkit.redaction import redact_text

    assert redact_text(text, secrets=[]) == text


def test_a_credential_inside_a_quoted_override_is_masked():
    """The command line W&B copies: data.shards='pipe:AWS_SECRET_ACCESS_KEY=... aws ...' as one argument."""
    from toolkit.redaction import redact_text

    masked = redact_text("data.shards='pipe:AWS_SECRET_ACCESS_KEY=S3cr3tAws aws s3 cp s3://b/x.tar -'", secrets=[])
    assert masked == "data.shards='pipe:AWS_SECRET_ACCESS_KEY=*** aws s3 cp s3://b/x.tar -'"


def test_redact_secrets_by_key_name_in_nested_structures():
    original = {
        "api_key": "abc",
        "hf_token": "abc",
        "db_password": "abc",
        "client_secret": "abc",
        "private_key": "abc",
        "apiKey": "abc",
        "credentials": {"user": "u", "pass": "p"},
        "key": "Abyssinian_1",
        "__key__": "Abyssinian_1",
        "num_tokens": 3,
        "keys": ["a"],
        "token": None,
        "password": "",
        "runs": [{"name": "a", "access_token": "abc"}, ("tuple", {"secret": 1})],
    }
    redacted = redact_secrets(original)
    for name in ("api_key", "hf_token", "db_password", "client_secret", "private_key", "apiKey", "credentials"):
        assert redacted[name] == REDACTED, name
    assert redacted["key"] == redacted["__key__"] == "Abyssinian_1"
    assert redacted["num_tokens"] == 3 and redacted["keys"] == ["a"]
    assert redacted["token"] is None and redacted["password"] == ""  # nothing hidden, kept as is
    assert redacted["runs"] == [{"name": "a", "access_token": REDACTED}, ("tuple", {"secret": REDACTED})]
    assert original["api_key"] == "abc" and original["runs"][0]["access_token"] == "abc"  # input untouched


def test_redact_secrets_replaces_environment_secrets_inside_any_string():
    environ = {
        "WANDB_API_KEY": FAKE_KEY,
        "MY_SERVICE_TOKEN": "s3cr3t-value",
        "HF_TOKEN": "hf_abcdefgh",
        "SHORT_KEY": "abc",
        "SSH_KEY_PATH": "/home/me/.ssh/id_rsa",
        "HOME": "/home/me/secret-place",
        "TOKENIZERS_PARALLELISM": "false",
    }
    assert set(secret_values(environ)) == {FAKE_KEY, "s3cr3t-value", "hf_abcdefgh"}
    obj = {
        "log": [f"wandb login {FAKE_KEY}", "curl -H s3cr3t-value", "abc", "/home/me/.ssh/id_rsa"],
        "n": 1.5,
        "flag": True,
        "url": "https://hf_abcdefgh@huggingface.co",
    }
    assert redact_secrets(obj, environ=environ) == {
        "log": [f"wandb login {REDACTED}", f"curl -H {REDACTED}", "abc", "/home/me/.ssh/id_rsa"],
        "n": 1.5,
        "flag": True,
        "url": f"https://{REDACTED}@huggingface.co",
    }


def test_secret_key_names():
    assert all(is_secret_key(k) for k in ("API_KEY", "wandb-api-key", "github.token", "refreshToken", "passwd"))
    assert not any(is_secret_key(k) for k in ("key", "sort_keys", "monkey", "tokens_per_s", "keyframe"))
