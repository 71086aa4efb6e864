"""Secret redaction: W&B keys, tokens and passwords never reach logs, configs, reports or W&B.

A value is secret when its key names a secret (``api_key``, ``hf_token``, ``db_password``, ...) or
when it contains the value of a secret environment variable (``WANDB_API_KEY``, ``HF_TOKEN``,
anything ``*_KEY``/``*_TOKEN``/``*_SECRET``/``*_PASSWORD``), so a token inside a URL is caught too.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional, Sequence

REDACTED = "***"

# A key names a secret when one of its words is one of these (api_key, hf_token, db_password,
# client_secret, private-key, apiKey, ...). "key" alone is NOT a secret: samples have keys.
_SECRET_KEY_RE = re.compile(
    r"(^|[_\-.\s])(api[_\-]?key|token|password|passwd|secret|credentials?)($|[_\-.\s])"
    r"|[_\-.](key)$",
    re.IGNORECASE,
)
_SECRET_ENV_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
_ALWAYS_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# Env vars whose name says "key" but whose value is a location, not a secret.
_LOCATION_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_HOME")
_MIN_SECRET_LEN = 8
# Credentials written into a location (data.shards: a signed URL, a pipe: command with a header):
# query parameters that sign or authorize, an Authorization header's value, user:password@ in a URL.
_INLINE_SECRETS = (
    (re.compile(r"(?i)([?&](?:[\w-]*token|[\w-]*sig(?:nature)?|[\w-]*key|[\w-]*secret|password|auth|"
                r"[\w-]*credential)=)[^&#\s'\"]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)(authorization\s*:\s*)[^'\"\n]+"), r"\1" + REDACTED),
    (re.compile(r"(://[^/\s:@]+:)[^@/\s]+@"), r"\1" + REDACTED + "@"),
)


def _split_camel(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)


def is_secret_key(name: str) -> bool:
    """True for dict keys whose value should never be written anywhere."""
    return bool(_SECRET_KEY_RE.search(_split_camel(str(name))))


def secret_values(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Secret strings found in the environment, longest first (so replacement is greedy)."""
    environ = os.environ if environ is None else environ
    found = set()
    for name, value in environ.items():
        upper = name.upper()
        named_secret = upper in _ALWAYS_SECRET_ENV or (
            any(word in upper for word in _SECRET_ENV_WORDS) and not upper.endswith(_LOCATION_SUFFIXES)
        )
        if named_secret and value and len(value) >= _MIN_SECRET_LEN:
            found.add(value)
    return sorted(found, key=len, reverse=True)


def redact_secrets(obj: Any, *, environ: Optional[Mapping[str, str]] = None) -> Any:
    """A copy of ``obj`` with secrets replaced by ``"***"``.

    Recurses through dicts, lists and tuples. Values under secret-looking keys are replaced
    (``None``/empty values are kept: they hide nothing), and every occurrence of a secret from
    the environment inside any string is replaced too, and so are credentials written inline
    (a signed URL's signature, an ``Authorization:`` header in a ``pipe:`` command, ``user:pass@``).
    Apply it to everything the run writes: config, logs, metrics, reports, file metadata.
    """
    return _redact(obj, secret_values(environ))


def redact_text(text: str, secrets: Optional[Sequence[str]] = None) -> str:
    """One string with environment secrets and inline credentials (signed URLs, auth headers) replaced."""
    for secret in secret_values() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _INLINE_SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _redact(obj: Any, secrets: Sequence[str]) -> Any:
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            hides_nothing = value is None or value is False or (isinstance(value, str) and not value)
            if isinstance(key, str) and is_secret_key(key) and not hides_nothing:
                out[key] = REDACTED
            else:
                out[key] = _redact(value, secrets)
        return out
    if isinstance(obj, tuple):
        return tuple(_redact(value, secrets) for value in obj)
    if isinstance(obj, list):
        return [_redact(value, secrets) for value in obj]
    return obj
