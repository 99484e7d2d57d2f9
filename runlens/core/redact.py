"""Secret redaction for everything runlens stores or shows: configs, environments, command lines, event
details, URLs.

A key is secret when its name contains token, secret, password, passwd, key (api_key, access_key, ...),
credential or auth; its value is replaced before it is stored, so neither the database nor a report can leak it.
The store applies ``redact_job_fields`` and ``redact`` to every job row and event it writes, whatever the
collector already did, so a secret given on the command line (``--api-key X``, ``--token=X``, ``key=X``) or
in a config is hidden in one place for every way a run can be recorded.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***REDACTED***"

_SECRET_WORDS = frozenset({
    "token", "secret", "password", "passwd", "pwd", "passphrase", "key", "apikey", "credential", "credentials",
    "auth", "authorization", "cookie", "private",
})
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def is_secret_key(key: object) -> bool:
    """True for names like HF_TOKEN, api_key, dbPassword; False for tokenizer_name or max_tokens.

    Words are compared whole so that counters and settings that merely contain "token" or "key" stay visible.
    """
    if not isinstance(key, str):
        return False
    words = {w.lower() for w in _WORD_SPLIT.split(key) if w}
    return not words.isdisjoint(_SECRET_WORDS)


def redact(value: Any) -> Any:
    """Return a copy of ``value`` (dicts, lists, scalars) with secret-named keys' values replaced.

    A list of strings is read as a command line (``["--token", "X"]`` hides X), and a string has its
    secret-named ``key=value`` pairs, ``--secret-option value`` pairs and URL passwords hidden
    (``redact_text``).
    """
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return redact_argv(value)
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_argv(argv: Any) -> list[str]:
    """A command line as stored: values of secret-named options (``--hf-token X``, ``--api_key=X``,
    ``wandb_key=X``) hidden, and URL passwords."""
    out: list[str] = []
    hide_next = False
    for arg in (str(a) for a in argv):
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        key, eq, _ = arg.lstrip("-").partition("=")
        if is_secret_key(key) and (arg.startswith("-") or eq):
            if eq:
                out.append(arg.split("=", 1)[0] + "=" + REDACTED)
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact_text(arg) if "=" in arg or "://" in arg or " " in arg else arg)
    return out


# ``name=value`` (``--token=X``, ``api_key=X``) and ``--name value`` inside free text (a shell command line, an
# exception message); the name is then judged by ``is_secret_key``.
_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][\w.-]*)(?P<sep>=)(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&]+)")
_OPTION = re.compile(r"(?<![\w-])(?P<name>--?[A-Za-z][\w.-]*)(?P<sep>\s+)(?P<value>[^\s-][^\s]*)")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_HINT = re.compile(r"token|secret|passw|pwd|passphrase|key|credential|auth|cookie|private|://", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with the values of secret-named assignments and options and the passwords of URLs hidden.

    Cheap for the common case: a text that mentions none of the secret words is returned as it is.
    """
    if not _HINT.search(text):
        return text
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)

    def hide(m: re.Match[str]) -> str:
        if not is_secret_key(m.group("name")) or m.group("value") == REDACTED:
            return m.group(0)
        return f"{m.group('name')}{m.group('sep')}{REDACTED}"

    return _OPTION.sub(hide, _ASSIGNMENT.sub(hide, text))


# The job row's fields that can hold what the user typed or configured.
_JOB_TEXT_FIELDS = ("status_reason",)


def redact_job_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A job row's fields (a new row or an update) with argv, config, environment, settings and free text
    redacted; other fields as given."""
    out = dict(fields)
    if out.get("argv") is not None:
        out["argv"] = redact_argv(out["argv"]) if isinstance(out["argv"], (list, tuple)) else redact(out["argv"])
    for name in ("config", "environment", "settings"):
        if out.get(name) is not None:
            out[name] = redact(out[name])
    for name in _JOB_TEXT_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = redact_text(out[name])
    return out


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_key(k) else redact_url(v) if "://" in v else v) for k, v in env.items()}


# Slack (/services/T/B/secret), Discord and most others (/webhooks/id/secret) carry the secret in the path.
_WEBHOOK_PATH_SECRET = re.compile(r"^(.*?/(?:services|webhooks?|hooks)/)(.+)$", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Hide a URL's password, secret-looking query values and the secret tail of webhook paths."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in userinfo else f"{REDACTED}@{host}"
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            k, sep, v = pair.partition("=")
            pairs.append(f"{k}={REDACTED}" if sep and is_secret_key(k) else pair)
        query = "&".join(pairs)
    path = _WEBHOOK_PATH_SECRET.sub(lambda m: m.group(1) + REDACTED, parts.path)
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))
