"""Bring up what an LM config needs (start a simulator, check an external endpoint) for a run."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import httpx

from gepa_lab.lm.config import LMConfig


@dataclass(frozen=True)
class Endpoint:
    cfg: LMConfig
    api_base: str  # what dspy.LM talks to: http://host:port/v1


class EndpointError(RuntimeError):
    pass


def check_endpoint(api_base: str, timeout_s: float = 10.0) -> None:
    url = api_base.rstrip("/") + "/models"
    try:
        httpx.get(url, timeout=timeout_s).raise_for_status()
    except httpx.HTTPError as e:
        raise EndpointError(f"LM endpoint {url} does not answer: {e}") from None


@contextlib.contextmanager
def serve(cfg: LMConfig) -> Iterator[Endpoint]:
    if cfg.api_bases:
        for base in cfg.api_bases:
            check_endpoint(base)
        yield Endpoint(cfg, cfg.api_bases[0])
    elif cfg.kind == "sim":
        from gepa_lab.lm.sim.launch import start_simulator

        with start_simulator(
            model=cfg.model, max_in_flight=cfg.max_in_flight, api_key_env=cfg.api_key_env, **cfg.sim.model_dump()
        ) as sim:
            yield Endpoint(cfg, sim.url)
    else:
        raise EndpointError(f"lm kind '{cfg.kind}' cannot be started yet")


@contextlib.contextmanager
def serve_all(configs: dict[str, LMConfig]) -> Iterator[dict[str, Endpoint]]:
    """Serve each role's LM; roles with identical configs share one endpoint."""
    with contextlib.ExitStack() as stack:
        by_config: dict[str, Endpoint] = {}
        endpoints = {}
        for role, cfg in configs.items():
            key = cfg.model_dump_json()
            if key not in by_config:
                by_config[key] = stack.enter_context(serve(cfg))
            endpoints[role] = by_config[key]
        yield endpoints
