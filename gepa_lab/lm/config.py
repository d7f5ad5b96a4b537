"""Schema of one LM endpoint config (conf/lm/*.yaml): what to talk to, how hard, and how to start it."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LMKind = Literal["sim", "openai_compatible", "vllm", "vllm_ray", "llamacpp"]
MANAGED_KINDS = {"sim", "vllm_ray", "llamacpp"}  # gepa_lab starts these itself unless api_base is given


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimOptions(_Strict):
    """Behaviour of the LM simulator (gepa_lab.lm.sim) when gepa_lab starts it."""

    latency_ms: float = Field(0.0, ge=0)
    per_token_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    retry_after_s: float = Field(1.0, ge=0)
    hang_rate: float = Field(0.0, ge=0, le=1)
    hang_s: float = Field(600.0, ge=0)
    seed: int = 0


class ServerOptions(_Strict):
    """A server command gepa_lab launches (vllm_ray replicas, llama.cpp)."""

    command: list[str] = Field(default_factory=list)  # argv; {model} {port} {host} are substituted
    replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0)  # Ray GPUs held by each replica actor
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per replica
    startup_timeout_s: float = Field(900.0, gt=0)
    keep_running: bool = False  # leave replicas up after the sweep
    env: dict[str, str] = Field(default_factory=dict)


class LMConfig(_Strict):
    kind: LMKind
    model: str = Field(min_length=1)  # served model name; dspy talks to "openai/<model>"
    api_base: str | list[str] | None = None  # external endpoint(s) "http://host:port/v1"; None = start one
    api_key_env: str | None = None  # name of the env var holding the key; the key itself never sits in config
    max_in_flight: int = Field(8, ge=1)  # requests one endpoint takes at once (its capacity)
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(1024, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    num_retries: int = Field(3, ge=0)
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0)
    price_per_1k_completion_tokens: float = Field(0.0, ge=0)
    extra_body: dict = Field(default_factory=dict)  # sent with every request (e.g. a JSON schema for llama.cpp)
    sim: SimOptions = Field(default_factory=SimOptions)
    server: ServerOptions = Field(default_factory=ServerOptions)

    @model_validator(mode="after")
    def _endpoint_given_when_external(self):
        if self.kind not in MANAGED_KINDS and not self.api_base:
            raise ValueError(f"lm kind '{self.kind}' needs api_base (the URL of a running OpenAI-compatible server)")
        return self

    @property
    def api_bases(self) -> list[str]:
        if self.api_base is None:
            return []
        return [self.api_base] if isinstance(self.api_base, str) else list(self.api_base)
