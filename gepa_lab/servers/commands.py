"""The command line of each kind of LM server gepa_lab starts as a server command (vLLM, llama.cpp), from an LMConfig.

The simulator is started by gepa_lab.servers.simulator, with the flags its own options model generates.

`server.command` overrides the kind's default; its {placeholders} are filled in by `format_command`."""
from __future__ import annotations

import sys
from typing import Any

from gepa_lab.lm.config import LMConfig


def format_command(template: list[str], values: dict[str, Any]) -> list[str]:
    """Substitute {name} placeholders; an argument that is exactly a placeholder whose value is None is
    dropped together with the flag before it (e.g. --max-model-len {max_model_len} when unset)."""
    out: list[str] = []
    for arg in template:
        stripped = arg.strip()
        if stripped.startswith("{") and stripped.endswith("}") and stripped[1:-1] in values and values[stripped[1:-1]] is None:
            if out and out[-1].startswith("-"):
                out.pop()
            continue
        out.append(arg.format(**{k: ("" if v is None else v) for k, v in values.items()}))
    return out


def command_values(cfg: LMConfig, host: str, port: int) -> dict[str, Any]:
    s = cfg.server
    return {
        "model": cfg.model,
        "model_path": s.model_path or cfg.model,
        "host": host,
        "port": port,
        "tensor_parallel_size": s.tensor_parallel_size,
        "max_model_len": s.max_model_len,
        "gpu_memory_utilization": s.gpu_memory_utilization,
        "max_in_flight": cfg.max_in_flight,
        "n_ctx": s.n_ctx,
        "n_threads": s.n_threads,
        "python": sys.executable,
    }


def vllm_command(cfg: LMConfig) -> list[str]:
    """`vllm serve` with the flags from config (the default command of kind vllm_ray)."""
    cmd = ["vllm", "serve", "{model_path}", "--served-model-name", "{model}", "--host", "{host}", "--port", "{port}",
           "--tensor-parallel-size", "{tensor_parallel_size}", "--gpu-memory-utilization", "{gpu_memory_utilization}",
           "--max-model-len", "{max_model_len}", "--max-num-seqs", "{max_in_flight}", "--distributed-executor-backend", "mp"]
    if cfg.server.enable_prefix_caching:
        cmd.append("--enable-prefix-caching")
    return cmd


def llamacpp_command(cfg: LMConfig) -> list[str]:
    """python -m llama_cpp.server with the model, alias, context size and the chat format (Gemma's by default)."""
    cmd = ["{python}", "-m", "llama_cpp.server", "--model", "{model_path}", "--model_alias", "{model}",
           "--host", "{host}", "--port", "{port}", "--n_ctx", "{n_ctx}", "--chat_format", "gemma",
           "--interrupt_requests", "False", "--n_threads", "{n_threads}"]
    return cmd


def server_command(cfg: LMConfig) -> list[str]:
    if cfg.server.command:
        return list(cfg.server.command) + list(cfg.server.extra_args)
    if cfg.kind == "vllm_ray":
        return vllm_command(cfg) + list(cfg.server.extra_args)
    if cfg.kind == "llamacpp":
        return llamacpp_command(cfg) + list(cfg.server.extra_args)
    raise ValueError(f"lm kind {cfg.kind!r} has no server command")
