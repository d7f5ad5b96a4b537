"""The simulator's options, defined once: `python -m gepa_lab.sim` generates its flags from `SimConfig`, and an LM
config's `sim:` block is `SimOptions`, the part of them that is per LM (latency and faults). The rest of gepa_lab
may import this module and nothing else from gepa_lab.sim."""
from __future__ import annotations

from pydantic import Field, model_validator

from gepa_lab.cli import LoggingOptions
from gepa_lab.strict import StrictModel


class SimOptions(StrictModel):
    """How the simulator answers: latency and faults (an LM config's `sim:` block)."""

    latency_ms: float = Field(0.0, ge=0, description="fixed latency per request, in ms, spent holding a slot")
    per_token_ms: float = Field(0.0, ge=0, description="extra latency per completion token, in ms")
    error_rate: float = Field(0.0, ge=0, le=1, description="share of requests answered HTTP 500 (after the latency)")
    rate_limit_rate: float = Field(0.0, ge=0, le=1,
                                   description="share of requests answered HTTP 429 with Retry-After (at once, no slot used)")
    retry_after_s: float = Field(1.0, ge=0, description="the Retry-After of those 429 replies, in seconds")
    hang_rate: float = Field(0.0, ge=0, le=1, description="share of requests that get no answer for hang_s seconds "
                                                          "(no slot held; the client's timeout ends them), then HTTP 504")
    hang_s: float = Field(600.0, ge=0, description="how long a hanging request hangs, in seconds")
    seed: int = Field(0, description="seed of the fault draws (the same requests fail at the same places)")

    @model_validator(mode="after")
    def _rates_fit(self):
        if self.error_rate + self.rate_limit_rate + self.hang_rate > 1:
            raise ValueError("the fault rates (error_rate + rate_limit_rate + hang_rate) add up to more than 1")
        return self


class SimConfig(SimOptions, LoggingOptions):
    """Everything `python -m gepa_lab.sim` reads. gepa_lab starts it with the LM config's model, max_in_flight and
    api_key_env (gepa_lab.servers.simulator); the API key itself only ever travels in the environment."""

    port: int = Field(ge=1, le=65535, description="port to listen on")
    host: str = Field("127.0.0.1", description="address to listen on")
    model: str = Field("sim", min_length=1, description="model id served by /v1/models")
    max_in_flight: int = Field(8, ge=1, description="requests processed at once; the rest wait in a queue")
    api_key_env: str | None = Field(None, description="require 'Authorization: Bearer KEY' on /v1/*, KEY read from "
                                                      "this environment variable (the key is never printed or logged)")
