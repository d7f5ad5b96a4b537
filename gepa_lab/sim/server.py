"""The simulator's HTTP server (aiohttp): OpenAI chat-completions API, capacity, latency, faults, stats.

Endpoints
---------
``POST /v1/chat/completions``  OpenAI schema (``choices[].message.content``, ``usage``); ``stream: true``
                               gets the same reply as one SSE chunk followed by ``[DONE]``.
``GET  /v1/models``            ``{"object": "list", "data": [{"id": MODEL, ...}]}``
``GET  /health``               ``{"status": "ok", ...}`` (never needs the API key)
``GET  /stats``                counters, see ``Stats.snapshot``; ``POST /stats/reset`` zeroes them.

Capacity: at most ``max_in_flight`` requests are processed at once (an ``asyncio.Semaphore``); the rest
wait in a queue. "In flight" counts requests holding a slot (being processed), not queued ones.
Latency: each processed request sleeps ``latency_ms + per_token_ms * completion_tokens`` in its slot.

Faults are decided per request from sha256(seed, body, n) where n counts how often this exact body has
been received, so a retry of a failed request gets a fresh draw and can succeed, and a rerun of the
same request sequence with the same seed fails at the same places:
  * ``error_rate``: HTTP 500 (after the normal latency, in a slot),
  * ``rate_limit_rate``: HTTP 429 with ``Retry-After: retry_after_s`` (immediately, no slot used),
  * ``hang_rate``: no answer for ``hang_s`` seconds (no slot held), then HTTP 504 if anyone still listens.

The API key (read from the environment variable ``--api-key-env`` names) is only compared, never printed or logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

from aiohttp import web

from .config import SimConfig
from .engine import respond
from .text import count_tokens, prompt_token_count

log = logging.getLogger("gepa_lab.sim")


class Stats:
    """Request counters and a time-weighted in-flight gauge.

    ``mean_in_flight`` is time-weighted over *busy* time (time with at least one request in flight);
    ``mean_in_flight_over_uptime`` is the same integral divided by the whole uptime.
    """

    def __init__(self) -> None:
        self.in_flight = 0  # gauges survive a reset; counters do not
        self.queued = 0
        self.reset()

    def reset(self) -> None:
        now = time.monotonic()
        self.started = now
        self.received = 0
        self.served = 0
        self.errors: dict[str, int] = {"500": 0, "429": 0, "hang": 0, "401": 0, "400": 0}
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.peak_in_flight = self.in_flight
        self.peak_queued = self.queued
        self.busy_seconds = 0.0
        self.in_flight_integral = 0.0
        self._last_change = now
        self.kinds: dict[str, int] = {}

    def _advance(self) -> None:
        now = time.monotonic()
        dt = now - self._last_change
        if self.in_flight > 0:
            self.busy_seconds += dt
            self.in_flight_integral += dt * self.in_flight
        self._last_change = now

    def enter(self) -> None:
        self._advance()
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def leave(self) -> None:
        self._advance()
        self.in_flight -= 1

    def snapshot(self) -> dict[str, Any]:
        self._advance()
        uptime = time.monotonic() - self.started
        return {
            "requests_received": self.received,
            "requests_served": self.served,
            "errors": dict(self.errors),
            "errors_total": sum(self.errors.values()),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "peak_in_flight": self.peak_in_flight,
            "peak_queued": self.peak_queued,
            "mean_in_flight": (self.in_flight_integral / self.busy_seconds) if self.busy_seconds > 0 else 0.0,
            "mean_in_flight_over_uptime": (self.in_flight_integral / uptime) if uptime > 0 else 0.0,
            "busy_seconds": self.busy_seconds,
            "uptime": uptime,
            "requests_by_kind": dict(self.kinds),
        }


def _json_error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": status}}
    return web.json_response(body, status=status, headers=headers)


class SimServer:
    def __init__(self, config: SimConfig, api_key: str | None = None):
        self.config = config
        self.api_key = api_key
        self.stats = Stats()
        self._sem: asyncio.Semaphore | None = None
        self._seen: dict[str, int] = {}
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes(
            [
                web.post("/v1/chat/completions", self.chat),
                web.post("/chat/completions", self.chat),
                web.get("/v1/models", self.models),
                web.get("/models", self.models),
                web.get("/health", self.health),
                web.get("/stats", self.get_stats),
                web.post("/stats/reset", self.reset_stats),
            ]
        )
        self.app.on_startup.append(self._on_startup)

    async def _on_startup(self, app: web.Application) -> None:
        self._sem = asyncio.Semaphore(self.config.max_in_flight)

    # ---- helpers -------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        key = self.api_key
        if not key:
            return True
        header = request.headers.get("Authorization", "")
        expected = f"Bearer {key}"
        return hmac.compare_digest(header.encode(), expected.encode())

    def _draw(self, raw: bytes) -> float:
        """A deterministic uniform number in [0, 1) for this request (body + seed + repeat count)."""
        digest = hashlib.sha256(raw).hexdigest()
        n = self._seen.get(digest, 0)
        self._seen[digest] = n + 1
        h = hashlib.sha256(f"{self.config.seed}:{digest}:{n}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    # ---- handlers ------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.config.model})

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.stats.errors["401"] += 1
            return _json_error(401, "Invalid or missing API key.", "invalid_request_error")
        return web.json_response(
            {"object": "list", "data": [{"id": self.config.model, "object": "model", "created": 0, "owned_by": "gepa_lab"}]}
        )

    async def get_stats(self, request: web.Request) -> web.Response:
        snap = self.stats.snapshot()
        snap["config"] = {**self.config.model_dump(), "api_key": "set" if self.api_key else None}  # never the key
        return web.json_response(snap)

    async def reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        self._seen.clear()
        return web.json_response({"status": "reset"})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats.received += 1
        if not self._authorized(request):
            self.stats.errors["401"] += 1
            return _json_error(401, "Invalid or missing API key.", "invalid_request_error")
        raw = await request.read()
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            self.stats.errors["400"] += 1
            return _json_error(400, f"Bad request body: {exc}", "invalid_request_error")

        cfg = self.config
        u = self._draw(raw)
        if u < cfg.rate_limit_rate:
            self.stats.errors["429"] += 1
            return _json_error(
                429, "Rate limit reached (simulated).", "rate_limit_error",
                headers={"Retry-After": _fmt_seconds(cfg.retry_after_s)},
            )
        u -= cfg.rate_limit_rate
        if u < cfg.hang_rate:
            self.stats.errors["hang"] += 1
            await asyncio.sleep(cfg.hang_s)
            return _json_error(504, "Simulated hang ended.", "timeout")
        u -= cfg.hang_rate
        fail = u < cfg.error_rate

        assert self._sem is not None
        if self._sem.locked():  # queued = waiting for a slot; a request that gets one at once never waited
            self.stats.queued += 1
            self.stats.peak_queued = max(self.stats.peak_queued, self.stats.queued)
            try:
                await self._sem.acquire()
            finally:
                self.stats.queued -= 1
        else:
            await self._sem.acquire()
        self.stats.enter()
        try:
            try:
                content = respond(body)
            except Exception as exc:  # never crash on an odd prompt
                log.warning("simulator could not answer a request: %s", type(exc).__name__)
                content = "I could not understand the request."
            prompt_tokens = prompt_token_count(body.get("messages") or [])
            completion_tokens = count_tokens(content)
            delay = (cfg.latency_ms + cfg.per_token_ms * completion_tokens) / 1000.0
            if delay > 0:
                await asyncio.sleep(delay)
        finally:
            self.stats.leave()
            self._sem.release()
        if fail:
            self.stats.errors["500"] += 1
            return _json_error(500, "Internal server error (simulated).", "server_error")

        self.stats.served += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        kind = "json" if content.startswith("{") else "chat"
        self.stats.kinds[kind] = self.stats.kinds.get(kind, 0) + 1

        model = body.get("model") or cfg.model
        n = body.get("n") or 1
        try:
            n = max(1, min(int(n), 16))
        except (TypeError, ValueError):
            n = 1
        rid = "chatcmpl-" + hashlib.sha256(raw).hexdigest()[:24]
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * n,
            "total_tokens": prompt_tokens + completion_tokens * n,
        }
        created = int(time.time())
        if body.get("stream"):
            return await self._stream(request, rid, created, model, content, usage)
        reply = {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
                for i in range(n)
            ],
            "usage": usage,
            "system_fingerprint": "gepa-lab-sim",
        }
        return web.json_response(reply)

    async def _stream(self, request, rid, created, model, content, usage) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}
        first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None}]}
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
        for chunk in (first, last):
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _fmt_seconds(s: float) -> str:
    return str(int(s)) if float(s).is_integer() else f"{s:g}"


def run_server(config: SimConfig, api_key: str | None = None) -> None:
    server = SimServer(config, api_key)
    print(
        f"gepa_lab LM simulator serving model {config.model!r} on http://{config.host}:{config.port}/v1 "
        f"(max_in_flight={config.max_in_flight}, latency_ms={config.latency_ms}, per_token_ms={config.per_token_ms}, "
        f"error_rate={config.error_rate}, rate_limit_rate={config.rate_limit_rate}, hang_rate={config.hang_rate}, "
        f"seed={config.seed}, api key {'required' if api_key else 'not required'})",
        flush=True,
    )
    web.run_app(
        server.app,
        host=config.host,
        port=config.port,
        access_log=None,
        print=None,
        backlog=1024,
        handle_signals=True,
        shutdown_timeout=0.5,
    )
