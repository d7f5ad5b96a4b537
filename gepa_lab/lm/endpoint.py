"""An LM config + a live endpoint URL -> a dspy.LM (task or reflection role)."""
from __future__ import annotations

import os

import dspy

from gepa_lab.lm.config import LMConfig


def api_key(cfg: LMConfig) -> str:
    """The key comes from the environment only; servers that want none get a placeholder."""
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ValueError(f"lm '{cfg.model}': environment variable {cfg.api_key_env} (api_key_env) is not set")
        return key
    return "EMPTY"


def build_lm(cfg: LMConfig, api_base: str) -> dspy.LM:
    return dspy.LM(
        f"openai/{cfg.model}",
        api_base=api_base,
        api_key=api_key(cfg),
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        timeout=cfg.timeout_s,
        num_retries=cfg.num_retries,
        **({"extra_body": cfg.extra_body} if cfg.extra_body else {}),
    )
