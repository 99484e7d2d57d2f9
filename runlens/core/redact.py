"""Secret redaction for everything runlens stores or shows: configs, environments, URLs.

A key is secret when its name contains token, secret, password, passwd, key (api_key, access_key, ...),
credential or auth; its value is replaced before it is stored, so neither the database nor a report can leak it.
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
    """Return a copy of ``value`` (dicts, lists, scalars) with secret-named keys' values replaced."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value
    return value


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
