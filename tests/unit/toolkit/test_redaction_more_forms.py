"""Secrets that used to pass redaction (issue 33, item 5), a password in a shard URL refused (item 5's
other half), and compare_recipes' ``--shards VALUE`` holding ``=`` (item 6)."""

from __future__ import annotations

import dataclasses

import pytest

from toolkit.compare_recipes import parse_args
from toolkit.config import Config, validate_config
from toolkit.errors import UsageError
from toolkit.redaction import redact_secrets, redact_text, secret_values

FORMS = [  # (id, text, the secret in it)
    ("userinfo-with-slash", "pipe:aws s3 cp s3://AKIAX:wJalr/K7MDENG+bPxRf@host/x.tar -", "wJalr/K7MDENG+bPxRf"),
    ("userinfo-raw-at", "https://alice:S3cr@tPass@host.example.com/x.tar", "S3cr@tPass"),
    ("sshpass-p", "pipe:sshpass -p S3cr3tPass ssh h cat x.tar", "S3cr3tPass"),
    ("mysql-p-attached", "pipe:mysql -pS3cr3tPass -e 'select 1'", "S3cr3tPass"),
    ("openssl-pass", "pipe:openssl enc -d -aes256 -pass pass:S3cr3tPass -in x.tar", "S3cr3tPass"),
    ("gsutil-h", "pipe:gsutil -h 'x-goog-encryption-key:S3cr3tKey' cat gs://b/x.tar", "S3cr3tKey"),
    ("json-authorization", '{"Authorization": "Bearer S3cr3tTok"}', "S3cr3tTok"),
    ("json-api-key", 'pipe:curl -d \'{"api_key": "S3cr3tKey"}\' https://h/x.tar', "S3cr3tKey"),
    ("gpg-passphrase", "pipe:GPG_PASSPHRASE=S3cr3tPass gpg -d x.tar.gpg", "S3cr3tPass"),
    ("gh-pat", "pipe:GH_PAT=S3cr3tTok curl https://h/x.tar", "S3cr3tTok"),
]


@pytest.mark.parametrize("text,secret", [f[1:] for f in FORMS], ids=[f[0] for f in FORMS])
def test_each_form_is_masked(text, secret):
    assert secret not in redact_text(text, [])


def test_a_passphrase_key_and_pat_variables_are_secret():
    assert redact_secrets({"wandb_passphrase": "abc", "gh_pat": "x", "path": "/a"}, environ={}) == {
        "wandb_passphrase": "***",
        "gh_pat": "***",
        "path": "/a",
    }
    found = secret_values({"GH_PAT": "ghp_S3cr3tTok", "GPG_PASSPHRASE": "S3cr3tPass", "PATH": "/usr/bin:/bin"})
    assert sorted(found) == ["S3cr3tPass", "ghp_S3cr3tTok"]


@pytest.mark.parametrize(
    "text",
    ["https://host/path/a.tar", "pipe:mkdir -p /tmp/x && ssh -p 22 h cat x.tar", "pipe:curl -s https://h/x.tar"],
)
def test_what_is_no_credential_stays(text):
    assert redact_text(text, []) == text


def test_a_password_in_a_shard_url_is_refused_pointing_at_the_credential_chain():
    shards = "https://alice:S3cr3tPass@host/shards/{train,val}-{000000..000003}.tar"
    with pytest.raises(UsageError, match="data.shards must not carry credentials.*https://.*~/.netrc") as err:
        validate_config(with_shards(shards))
    assert "S3cr3tPass" not in str(err.value)
    with pytest.raises(UsageError, match="AWS_PROFILE") as err:  # an AWS secret key holds '/'
        validate_config(with_shards("s3://AKIAX:wJalr/K7MDENG@bucket/x.tar"))
    assert "K7MDENG" not in str(err.value)
    validate_config(with_shards("hf://datasets/org/pets@main/shards"))  # a revision, not a credential


def with_shards(shards: str) -> Config:
    return dataclasses.replace(Config(), data=dataclasses.replace(Config().data, shards=shards))


def test_compare_recipes_takes_a_shards_value_holding_equals_signs():
    location = "pipe:curl -s https://h/x.tar?X-Amz-Signature=abc&a=b"
    args, overrides = parse_args(["--shards", location, "--epochs", "1", "--seeds", "0", "train.batch_size=4"])
    assert args.shards == location and overrides == ["train.batch_size=4"]
