"""Keep secrets out of everything gepa_lab records (W&B config, MLflow params/tags/artifacts, Parquet).

Two rules, applied recursively to dicts, lists and strings:

1. a mapping key that looks like a secret (contains key / token / secret / password / credential,
   any case) with a string value has its value masked -- except ``*_env`` keys whose value is a
   plain environment-variable *name* (``api_key_env: OPENAI_API_KEY`` says where a key lives, it is not one);
2. any string that contains the value of an environment variable whose *name* looks like a secret
   (``OPENAI_API_KEY``, ``WANDB_API_KEY``, ``HF_TOKEN`` ...) has that value masked, wherever it sits.

``secret_values()`` lists the values of rule 2, ``find_secrets(blob)`` tells which of them occur in some
bytes -- the registry uses it to refuse to log a model whose pickle would carry a key.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
SECRET_NAME = re.compile(r"key|token|secret|password|passwd|credential", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Shorter values are too likely to be ordinary words or flags (TOKENIZERS_PARALLELISM=false).
MIN_SECRET_LEN = 8
# Secret-looking names whose values are known not to be secrets.
NOT_SECRET_NAMES = {"TOKENIZERS_PARALLELISM", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"}
_NOT_SECRET_VALUES = {"true", "false", "none", "null", "empty", "disabled", "offline", "online"}


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(str(name)))


def _environ_snapshot() -> dict[str, str]:
    while True:  # other threads (mlflow's telemetry) change os.environ while we copy it
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue


def secret_values(environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> list[str]:
    """Values of secret-looking environment variables (plus `extra`), longest first."""
    environ = _environ_snapshot() if environ is None else environ
    found = {
        v
        for k, v in environ.items()
        if is_secret_name(k) and k.upper() not in NOT_SECRET_NAMES and _could_be_secret(v)
    }
    found |= {v for v in extra if v and _could_be_secret(v)}
    return sorted(found, key=len, reverse=True)


def _could_be_secret(value: str) -> bool:
    return isinstance(value, str) and len(value) >= MIN_SECRET_LEN and value.strip().lower() not in _NOT_SECRET_VALUES


def _is_env_reference(key: str, value: str) -> bool:
    return str(key).lower().endswith("_env") and bool(ENV_NAME.match(value))


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    for secret in secret_values() if secrets is None else secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return text


def redact(config: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of `config` with secret-looking entries and known secret values masked (see module doc)."""
    values = secret_values() if secrets is None else list(secrets)
    return _redact(config, values)


def _redact(obj: Any, values: list[str]) -> Any:
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(v, str) and is_secret_name(k) and not _is_env_reference(k, v):
                out[k] = MASK if v else v
            else:
                out[k] = _redact(v, values)
        return out
    if isinstance(obj, (list, tuple)):
        items = [_redact(v, values) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, str):
        return redact_text(obj, values)
    return obj


def find_secrets(blob: bytes | str, secrets: Iterable[str] | None = None) -> list[str]:
    """Which secret values occur in `blob` (masked for display: first 4 characters + length)."""
    data = blob.encode() if isinstance(blob, str) else blob
    hits = [s for s in (secret_values() if secrets is None else secrets) if s and s.encode() in data]
    return [describe(s) for s in hits]


def describe(secret: str) -> str:
    return f"{secret[:4]}...({len(secret)} chars)"
