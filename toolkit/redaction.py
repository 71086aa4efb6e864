"""Secret redaction: W&B keys, tokens and passwords never reach logs, configs, reports or W&B.

A value is secret when its key names a secret (``api_key``, ``hf_token``, ``db_password``, ...) or
when it contains the value of a secret environment variable (``WANDB_API_KEY``, ``HF_TOKEN``,
anything ``*_KEY``/``*_TOKEN``/``*_SECRET``/``*_PASSWORD``), so a token inside a URL is caught too.

Credentials written into a shard location (``data.shards``: a signed URL, a ``pipe:`` command) are
masked by form, since they need not be in this process's environment: the argument after a
credential flag of curl, wget, aws and the like (``-u``/``--user``, ``--oauth2-bearer``,
``--cookie``, ``--password``, ``--http-password``, ``--sse-c-key``, any ``--*-token``/``--*-secret``),
the value of a credential header (``-H "X-Api-Key: ..."``, ``Authorization``, ``Cookie``), the value
of an assignment whose name says secret (``AWS_SECRET_ACCESS_KEY=...``, ``gs_oauth2_refresh_token=...``),
a URL's userinfo (``https://user:pass@``, ``https://TOKEN@``) and signing query parameters.
Masking a harmless argument now and then (``sort -u FILE``) is the price of never storing a real one.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional, Sequence

from toolkit.errors import UsageError

REDACTED = "***"

# A key names a secret when one of its words is one of these (api_key, hf_token, db_password,
# client_secret, private-key, apiKey, ...). "key" alone is NOT a secret: samples have keys.
_SECRET_KEY_RE = re.compile(
    r"(^|[_\-.\s])(api[_\-]?key|token|password|passwd|passphrase|secret|credentials?|pat)($|[_\-.\s])"
    r"|[_\-.](key)$",
    re.IGNORECASE,
)
_SECRET_ENV_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSPHRASE")
_SECRET_ENV_NAME_WORDS = ("PAT", "PASS", "PWD")  # whole words only (GH_PAT, not PATH)
_ALWAYS_SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
# Env vars whose name says "key" but whose value is a location, not a secret.
_LOCATION_SUFFIXES = ("_FILE", "_PATH", "_DIR", "_HOME")
_MIN_SECRET_LEN = 8
# Credentials written into a location (data.shards: a signed URL, a pipe: command with a header):
# query parameters that sign or authorize, an Authorization header's value, user:password@ in a URL.
_INLINE_SECRETS = (
    (
        re.compile(
            r"(?i)([?&](?:[\w-]*token|[\w-]*sig(?:nature)?|[\w-]*key|[\w-]*secret|pass(?:word|wd)?|pwd|"
            r"[\w-]*auth[\w-]*|[\w-]*credential)=)[^&#\s'\"]+"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)((?:proxy-)?authorization\s*:\s*)[^'\"\n]+"), r"\1" + REDACTED),
    # JSON-quoted: "Authorization": "Bearer ..."
    (re.compile(r"(?i)(\"(?:proxy-)?authorization\"\s*:\s*\")(?:[^\"\\]|\\.)*"), r"\1" + REDACTED),
    # userinfo up to the last '@' before a host: user:password (an AWS secret key holds '/'; a raw '@'), a token
    (re.compile(r"(?<=://)[^\s'\"]*@(?=[\w.\-\[\]:]+(?:[/?#\s'\"]|$))"), REDACTED + "@"),
    (re.compile(r"(?<![\w-])(pass:)[^\s'\"]+"), r"\1" + REDACTED),  # openssl -pass pass:SECRET
)

# One shell word of a command line: a quoted string, or a run of characters up to a space or an operator.
_WORD = r"""(?:"[^"]*"|'[^']*'|[^\s'"|;&]+)"""
_FLAG_START = r"(?<![^\s'\"])"  # at the start of a word
# Flags whose next argument (or =value) is a credential: curl -u/--user, -U/--proxy-user, --oauth2-bearer,
# -b/--cookie, -E/--cert (cert:password), --pass, --tlspassword; wget --password, --http-password, --ftp-password;
# aws --sse-c-key; and any --*-token, --*-secret, --*-password, --*-key flag (not --no-* or --ask-*, which take none).
_LONG_CREDENTIAL_FLAG = re.compile(
    _FLAG_START + r"(--(?!no-|ask-)(?:\w+-)*(?:user|bearer|cookie|cert|pass|password|passwd|tlspassword|secret|"
    r"token|key|apikey|credentials?))(=|\s+)(" + _WORD + ")",
    re.IGNORECASE,
)
_SHORT_CREDENTIAL_FLAG = re.compile(_FLAG_START + r"(-[ubUE])(\s*)(" + _WORD + ")")  # also attached: -uuser:pass
# -p is a password for sshpass and the mysql/mariadb clients (mysql -pSECRET), a port or a path elsewhere
_PASSWORD_P_FLAG = re.compile(r"(\b(?:sshpass|mysql\w*|mariadb[\w-]*)\s(?:[^|;&]*?\s)?)(-p)(\s*)(" + _WORD + ")")
# -h is gsutil's header flag (-h "x-goog-encryption-key:...")
_HEADER_FLAG = re.compile(_FLAG_START + r"(-H|-h|--header|--proxy-header)(=|\s*)(" + _WORD + ")")
# "name": "value" in a JSON-quoted header or body, when the name says secret
_JSON_PAIR = re.compile(r"(\"([\w.\-]+)\"\s*:\s*\")((?:[^\"\\]|\\.)*)(\")")
# NAME=value in a command (AWS_SECRET_ACCESS_KEY=..., gsutil -o Credentials:gs_oauth2_refresh_token=...)
_ASSIGNMENT = re.compile(r"(?<![\w.:/-])([A-Za-z_][\w.:-]*)=(" + _WORD + ")")
_SECRET_NAME_PARTS = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "credential",
    "apikey",
    "bearer",
    "cookie",
    "signature",
)
_SECRET_NAME_WORDS = ("pwd", "pass", "pat", "auth", "authorization", "session", "sig")


_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.\-]*)://[^\s/@'\"]*:[^\s'\"]*@[\w.\-\[\]]", re.IGNORECASE)


_LOCATION_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SIGNED_QUERY_SCHEMES = ("s3", "gs", "gcs", "hf")  # a query on these carries a signature or a token, never data
CREDENTIAL_CHAINS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
    "gs": "gcloud auth application-default login or GOOGLE_APPLICATION_CREDENTIALS",
    "hf": "HF_TOKEN or huggingface-cli login",
}
NETRC_CHAIN = "a ~/.netrc entry for the host (curl and webdataset read it)"


def url_password(location: str) -> Optional[str]:
    """The scheme of a URL in ``location`` that carries a password (``https://user:password@host``), else None."""
    match = _URL_PASSWORD.search(location)
    return match.group(1).lower() if match else None


def check_no_credentials(location: str, what: str) -> None:
    """Refuse a location holding a secret (``user:password@``, ``TOKEN@``, a signed query on a store): it would
    be stored (masked) with every run and sent with every read, while each store's own credential chain keeps
    it out of configs and command lines altogether. A ``pipe:`` command is masked by form instead."""
    match = _LOCATION_SCHEME.match(location)
    if match is None:
        return
    scheme = match.group(1).lower()
    authority = location[match.end() :].split("/", 1)[0]
    signed = scheme in _SIGNED_QUERY_SCHEMES and bool(location.partition("?")[2])
    if "@" in authority or url_password(location) or signed:
        chain = CREDENTIAL_CHAINS.get("gs" if scheme == "gcs" else scheme, NETRC_CHAIN)
        raise UsageError(
            f"{what} must not carry credentials ({redact_text(location)}): remove the user, password or signature "
            f"from the {scheme}:// URL and give them through the store's credential chain: {chain}"
        )


def _split_camel(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)


def is_secret_key(name: str) -> bool:
    """True for dict keys whose value should never be written anywhere."""
    return bool(_SECRET_KEY_RE.search(_split_camel(str(name))))


def is_secret_name(name: str) -> bool:
    """True for a variable or header name that holds a credential in a command line: ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ACCESS_KEY_ID``, ``X-Api-Key``, ``gs_oauth2_refresh_token``, ``PGPASSWORD``; not ``key`` or ``monkey``."""
    words = [w for w in re.split(r"[_.:\-\s]+", _split_camel(name).lower()) if w]
    return (
        any(part in word for word in words for part in _SECRET_NAME_PARTS)
        or any(word in _SECRET_NAME_WORDS for word in words)
        or any(word == "key" for word in words[1:])
    )  # api_key, access_key_id; a bare "key" is a sample's


def _masked(word: str) -> str:
    """A shell word replaced by the mask, its quotes kept."""
    return word[0] + REDACTED + word[0] if word[:1] in ("'", '"') else REDACTED


def _mask_header(match: re.Match) -> str:
    """``-H "Name: value"`` with the value masked when the name says credential (Accept: stays)."""
    flag, sep, word = match.groups()
    quote = word[0] if word[:1] in ("'", '"') else ""
    name, colon, value = word[len(quote) : len(word) - len(quote)].partition(":")
    if not colon or not is_secret_name(name.strip()):
        return match.group(0)
    space = " " if value.startswith(" ") else ""
    return f"{flag}{sep}{quote}{name}:{space}{REDACTED}{quote}"


def _mask_assignment(match: re.Match) -> str:
    """``NAME=value`` with the value masked when NAME says secret; else the value is searched in turn
    (``data.shards='pipe:AWS_SECRET_ACCESS_KEY=... aws ...'`` on a command line)."""
    name, word = match.groups()
    if is_secret_name(name):
        return f"{name}={_masked(word)}"
    return f"{name}={_ASSIGNMENT.sub(_mask_assignment, word)}"


def redact_command(text: str) -> str:
    """Credentials written into a command line (a ``pipe:`` shard location) replaced by the mask, by form."""
    text = _LONG_CREDENTIAL_FLAG.sub(lambda m: f"{m.group(1)}{m.group(2)}{_masked(m.group(3))}", text)
    text = _SHORT_CREDENTIAL_FLAG.sub(lambda m: f"{m.group(1)}{m.group(2)}{_masked(m.group(3))}", text)
    text = _PASSWORD_P_FLAG.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{_masked(m.group(4))}", text)
    text = _HEADER_FLAG.sub(_mask_header, text)
    text = _JSON_PAIR.sub(
        lambda m: m.group(1) + REDACTED + m.group(4) if is_secret_name(m.group(2)) else m.group(0), text
    )
    return _ASSIGNMENT.sub(_mask_assignment, text)


def secret_values(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Secret strings found in the environment, longest first (so replacement is greedy)."""
    environ = os.environ if environ is None else environ
    found = set()
    for name, value in environ.items():
        upper = name.upper()
        named_secret = upper in _ALWAYS_SECRET_ENV or (
            (
                any(word in upper for word in _SECRET_ENV_WORDS)
                or any(word in _SECRET_ENV_NAME_WORDS for word in upper.split("_"))
            )
            and not upper.endswith(_LOCATION_SUFFIXES)
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
    """One string with environment secrets and inline credentials (signed URLs, auth headers, credential
    flags and assignments in a command line) replaced."""
    for secret in secret_values() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _INLINE_SECRETS:
        text = pattern.sub(replacement, text)
    return redact_command(text)


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
