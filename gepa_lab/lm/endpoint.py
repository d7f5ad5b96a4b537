"""An LM config + a live endpoint URL -> a dspy.LM (task or reflection role).

The dspy.LM runs on gepa_lab's own engine (`OpenAIEngine`, a dspy custom engine: `complete(Request) ->
Response`): one OpenAI-compatible endpoint (a server, or the sweep's router) over HTTP with

- a timeout per attempt, and retries with exponential backoff (jittered) that honour `Retry-After`
  (429/503), for timeouts, connection errors, 429, 408 and 5xx; never for other 4xx;
- errors that name the endpoint URL and the model, and say how many attempts were made (behind the router: the
  replicas it could not reach);
- one report per LM call to gepa_lab.lm.accounting (attempts, failed attempts, the router's failovers, billed tokens);
- an outage ends the trial: a call that still fails after its last retry on an availability error (no answer,
  a timeout, 429, 5xx) marks the endpoint lost; later calls of that LM (and its copies) fail at once without
  being sent, and the trial raises `LMUnavailable`, one line naming the endpoint (`raise_if_unavailable`), instead
  of scoring the rest of its examples `failure_score` against an endpoint that is gone.

dspy keeps what it owns: its cache (the sweep's rollout cache plugs in there, gepa_lab.lm.cache),
callbacks, history. dspy's own retry loop is switched off (num_retries=0) so that retries happen
once, here, where they can be counted.

The API key is read from the environment variable named by `api_key_env` at every call; it is never
stored on the engine, the LM or in anything pickled or saved. Behind a sweep's router a trial presents the
router's token instead (`build_lm(..., token=...)`: the key need not exist where the trial runs); the token lives
on the engine in memory only: copies in this process keep it, pickles and saved programs leave it out.
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import dspy
import httpx
from dspy import lm15
from dspy.clients._http import retry_after_seconds
from dspy.clients.lm15_boundary import request_kwargs, response_value

from gepa_lab.api_keys import MissingKeyError, key_from_env
from gepa_lab.cli import stop_requested
from gepa_lab.errors import TrialFailed
from gepa_lab.lm import accounting
from gepa_lab.lm.cache import release_failed_call
from gepa_lab.lm.config import FAILOVERS_HEADER, LMConfig

_EXTRA_KEY = "gepa_lab"  # metadata key that carries extra_body (so it is part of dspy's cache key)
_RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}


@dataclass
class _Call:
    """What one LM call's attempts add up to, for accounting."""

    attempts: int = 0
    errors: int = 0
    failovers: int = 0  # the router moved an attempt to another replica after that replica's error
    waited: float = 0.0
    raw: dict[str, Any] | None = None
    failed: bool = True


def _error_text(resp: httpx.Response, limit: int = 300) -> str:
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else None
        text = str(msg if msg is not None else err)
    except ValueError:
        text = resp.text
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _merge_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """System message(s) folded into the first user message, for chat templates without a system role."""
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    rest = [dict(m) for m in messages if m.get("role") not in ("system", "developer")]
    texts = [m["content"] for m in system if isinstance(m.get("content"), str) and m["content"]]
    if not texts:
        return rest
    for m in rest:
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            m["content"] = "\n\n".join([*texts, m["content"]])
            return rest
    return [{"role": "user", "content": "\n\n".join(texts)}, *rest]


class LMUnavailable(TrialFailed):
    """An LM endpoint stopped answering: a call failed on an availability error after all its retries."""


class Outage:
    """Shared by an engine and its copies: the first call that gave up on an availability error, as its message."""

    def __init__(self) -> None:
        self.error: str | None = None


class OpenAIEngine:
    """A dspy custom engine for one OpenAI-compatible endpoint (chat completions), sync.

    Capability hints (read by dspy's adapters): with `response_schema=True` dspy's JSONAdapter sends the
    signature's JSON schema as `response_format`, which llama.cpp and vLLM enforce while decoding."""

    supports_function_calling = False
    supports_reasoning = False

    def __init__(
        self,
        *,
        model: str,
        api_base: str,
        api_key_env: str | None = None,
        timeout_s: float = 60.0,
        num_retries: int = 3,
        backoff_s: float = 0.5,
        max_wait_s: float = 60.0,
        response_schema: bool = False,
        schema_style: str = "json_schema",
        merge_system: bool = False,
        role: str | None = None,
        token: str | None = None,
    ):
        self.model = model
        self.api_base = api_base.rstrip("/")
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.num_retries = int(num_retries)
        self.backoff_s = float(backoff_s)
        self.max_wait_s = float(max_wait_s)
        self.response_schema = bool(response_schema)
        self.schema_style = schema_style
        self.merge_system = bool(merge_system)
        self.role = role
        self._init_runtime(token)

    def _init_runtime(self, token: str | None = None) -> None:
        self._token = token
        self.outage = Outage()
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self.stats = {"calls": 0, "attempts": 0, "errors": 0, "failed_calls": 0, "waited_s": 0.0}

    # capability hints for dspy (dspy.clients.capabilities) ------------------------------------------
    @property
    def supports_response_schema(self) -> bool:
        return self.response_schema

    @property
    def supported_params(self) -> set[str]:
        return {"response_format"} if self.response_schema else set()

    @property
    def url(self) -> str:
        return f"{self.api_base}/chat/completions"

    # pickling / saving: no client, no lock, no key, no token ----------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return self.dump_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __deepcopy__(self, memo: dict) -> "OpenAIEngine":
        copy = type(self)(**self.dump_state(), token=self._token)  # a copy in this process still reaches the router
        copy.outage = self.outage  # and knows the endpoint is lost
        return copy

    def dump_state(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("model", "api_base", "api_key_env", "timeout_s", "num_retries", "backoff_s", "max_wait_s", "response_schema",
                      "schema_style", "merge_system", "role")
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> "OpenAIEngine":
        return cls(**state)

    # request shaping -------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._token:
            return {**headers, "Authorization": f"Bearer {self._token}"}
        try:
            key = key_from_env(self.api_key_env, needed_by=f"LM endpoint {self.api_base} (model {self.model})")
        except MissingKeyError as e:
            raise lm15.AuthError(str(e)) from None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def body(self, request: lm15.Request) -> dict[str, Any]:
        """The JSON body sent for a canonical dspy request (public for tests and the benchmark)."""
        kwargs = request_kwargs(request, "chat")
        extra: dict[str, Any] = {}
        meta = kwargs.pop("metadata", None)
        if isinstance(meta, dict):
            meta = dict(meta)
            extra = dict((meta.pop(_EXTRA_KEY, None) or {}).get("extra_body") or {})
            if meta:
                kwargs["metadata"] = meta
        # max_tokens is what every OpenAI-compatible server understands (llama.cpp ignores max_completion_tokens)
        if "max_completion_tokens" in kwargs:
            kwargs["max_tokens"] = kwargs.pop("max_completion_tokens")
        fmt = kwargs.get("response_format")
        if self.schema_style == "json_object" and isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            kwargs["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
        if self.merge_system:
            kwargs["messages"] = _merge_system(kwargs.get("messages") or [])
        return {"model": self.model, **kwargs, **extra}

    def _wait_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait_s)
        return min(self.backoff_s * (2**attempt) * random.uniform(0.5, 1.0), self.max_wait_s)

    def _where(self, replicas: list[str] | None = None) -> str:
        if replicas:  # the router could reach none of them: name them, not the router
            return f"LM endpoint {', '.join(replicas)} (model {self.model}, through the router {self.api_base})"
        return f"LM endpoint {self.api_base} (model {self.model})"

    def _classify(self, resp: httpx.Response) -> lm15.LM15Error:
        status = resp.status_code
        text = _error_text(resp)
        retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
        msg = f"{self._where(_unreachable_replicas(resp))}: HTTP {status}: {text}"
        kw = {"status": status, "retry_after": retry_after, "provider": "openai-compatible"}
        if status == 429:
            return lm15.RateLimitError(msg, **kw)
        if status in (401, 403):
            return lm15.AuthError(msg, **kw)
        if status in (408, 504):
            return lm15.TimeoutError(msg, **kw)
        if status >= 500 or status in _RETRY_STATUSES:
            return lm15.ServerError(msg, **kw)
        if status == 400 and "context" in text.lower() and ("length" in text.lower() or "window" in text.lower()):
            return lm15.ContextLengthError(msg, **kw)
        if status == 404:
            return lm15.UnsupportedModelError(msg, **kw)
        return lm15.InvalidRequestError(msg, **kw)

    def _parse(self, resp: httpx.Response, request: lm15.Request) -> tuple[lm15.Response, dict[str, Any]]:
        try:
            raw = resp.json()
            if not isinstance(raw, dict) or not raw.get("choices"):
                raise ValueError("no choices in the reply")
            return response_value(raw, "chat", request), raw
        except (ValueError, TypeError, KeyError, lm15.LM15Error) as e:
            raise lm15.ServerError(f"{self._where()}: unreadable reply ({type(e).__name__}: {e}): {resp.text[:200]!r}") from None

    def _gave_up(self, err: lm15.LM15Error, attempts: int) -> lm15.LM15Error:
        err.message = f"{err.message} [gave up after {attempts} attempt{'s' if attempts != 1 else ''}]"
        err.args = (err.message,)
        return err

    def _record(self, call: _Call) -> None:
        """Account one finished call (all its attempts); a failed one hands its rollout-cache claim on."""
        usage = (call.raw or {}).get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        with self._lock:
            self.stats["calls"] += 1
            self.stats["attempts"] += call.attempts
            self.stats["errors"] += call.errors
            self.stats["failed_calls"] += int(call.failed)
            self.stats["waited_s"] += call.waited
        if call.attempts:  # a call refused because the endpoint is lost sent nothing: no server saw it
            accounting.report_attempts(attempts=call.attempts, errors=call.errors, failovers=call.failovers,
                                       prompt_tokens=prompt, completion_tokens=completion, endpoint=self.api_base)
        if call.failed:
            release_failed_call()

    # the engine contract ------------------------------------------------------------------------------
    def _client_sync(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                    limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                )
            return self._client

    def _judge(self, call: _Call, request: lm15.Request, resp: httpx.Response | None, exc: Exception | None):
        """One attempt's outcome: the response, or the seconds to wait before the next attempt; raises when
        giving up. complete() and acomplete() differ only in how they post and sleep."""
        call.attempts += 1
        if resp is not None:
            call.failovers += int(resp.headers.get(FAILOVERS_HEADER) or 0)
        if exc is not None:
            err: lm15.LM15Error = (
                lm15.TimeoutError(f"{self._where()}: no answer within {self.timeout_s:g}s (timeout_s)")
                if isinstance(exc, httpx.TimeoutException)
                else lm15.TransportError(f"{self._where()}: cannot reach it: {type(exc).__name__}: {exc}")
            )
        elif resp.status_code == 200:
            try:
                response, call.raw = self._parse(resp, request)
                call.failed = False
                return response
            except lm15.ServerError as e:
                err = e
        else:
            err = self._classify(resp)
            if resp.status_code not in _RETRY_STATUSES:
                call.errors += 1
                raise self._gave_up(err, call.attempts)
        call.errors += 1
        if call.attempts > self.num_retries:
            err = self._gave_up(err, call.attempts)
            with self._lock:
                self.outage.error = self.outage.error or err.message
            raise err
        pause = float(self._wait_s(call.attempts - 1, err.retry_after))
        call.waited += pause
        return pause

    def _refuse_if_lost(self) -> None:
        """Checked before every attempt: an endpoint lost, or the process stopping (gepa_lab.cli.stop_requested: the
        evaluation under way ends at once, its results unused), sends nothing more."""
        if self.outage.error:
            raise lm15.TransportError(f"{self.outage.error} (earlier; not sent again)")
        if stop_requested():
            raise lm15.TransportError(f"{self._where()}: not sent: stopping")

    def complete(self, request: lm15.Request) -> lm15.Response:
        payload, headers, client = json.dumps(self.body(request)).encode(), self._headers(), self._client_sync()
        call = _Call()
        try:
            while True:
                self._refuse_if_lost()
                try:
                    outcome = self._judge(call, request, client.post(self.url, content=payload, headers=headers), None)
                except httpx.TransportError as e:  # timeouts included
                    outcome = self._judge(call, request, None, e)
                if not isinstance(outcome, float):
                    return outcome
                time.sleep(outcome)
        finally:
            self._record(call)

    async def acomplete(self, request: lm15.Request) -> lm15.Response:
        import asyncio

        payload, headers = json.dumps(self.body(request)).encode(), self._headers()
        call = _Call()
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))) as client:
                while True:
                    self._refuse_if_lost()
                    try:
                        outcome = self._judge(call, request, await client.post(self.url, content=payload, headers=headers), None)
                    except httpx.TransportError as e:
                        outcome = self._judge(call, request, None, e)
                    if not isinstance(outcome, float):
                        return outcome
                    await asyncio.sleep(outcome)
        finally:
            self._record(call)

    def stream(self, request: lm15.Request):
        # gepa_lab never streams; answer in one piece as a stream of events
        return lm15.response_to_events(self.complete(request))

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, api_base={self.api_base!r}, role={self.role!r})"


class AsyncOpenAIEngine:
    """The async counterpart dspy wants beside a custom engine (for `lm.acall`): same endpoint, same policy."""

    supports_function_calling = False
    supports_reasoning = False

    def __init__(self, sync: OpenAIEngine):
        self.sync = sync

    @property
    def supports_response_schema(self) -> bool:
        return self.sync.supports_response_schema

    @property
    def supported_params(self) -> set[str]:
        return self.sync.supported_params

    async def complete(self, request: lm15.Request) -> lm15.Response:
        return await self.sync.acomplete(request)

    async def stream(self, request: lm15.Request):
        response = await self.sync.acomplete(request)
        for event in lm15.response_to_events(response):
            yield event

    async def aclose(self) -> None:
        pass

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> "AsyncOpenAIEngine":
        return cls(OpenAIEngine.load_state(state))


def _unreachable_replicas(resp: httpx.Response) -> list[str] | None:
    """The replicas a router says it could not reach (its 503 replicas_unavailable), else None."""
    try:
        err = resp.json().get("error") or {}
        replicas = err.get("replicas") if err.get("type") == "replicas_unavailable" else None
    except (ValueError, AttributeError):
        return None
    return [str(r) for r in replicas] if isinstance(replicas, list) and replicas else None


def lost_endpoint(lms: dict[str, dspy.LM]) -> str | None:
    """Why the trial cannot go on, naming the role and the endpoint, if the endpoint of any of these LMs
    ({role: lm}) is lost (a call gave up on an availability error); else None."""
    for role, lm in lms.items():
        engine = getattr(lm, "_engine_spec", None)
        if isinstance(engine, OpenAIEngine) and engine.outage.error:
            return f"the {role} LM stopped answering, so the trial ended: {engine.outage.error}"
    return None


def raise_if_unavailable(lms: dict[str, dspy.LM]) -> None:
    if reason := lost_endpoint(lms):
        raise LMUnavailable(reason)


def build_lm(cfg: LMConfig, api_base: str, *, role: str | None = None, seed: int | None = None,
             token: str | None = None) -> dspy.LM:
    """A dspy.LM for `cfg` talking to `api_base` (a server, or the sweep's router).

    seed: the trial's sampling seed. With temperature > 0 it becomes dspy's rollout_id (so the rollout cache
    keeps trials with different seeds apart) and the request's `seed` (so a server that honours it, like vLLM,
    samples reproducibly and cached answers equal fresh ones). Ignored at temperature 0.
    token: the router's token (Endpoint.token), sent instead of the key, which the router adds upstream."""
    if token is None:
        cfg.api_key(required=True)  # fail now, naming the variable, if the key is missing
    engine = OpenAIEngine(
        model=cfg.model,
        api_base=api_base,
        api_key_env=cfg.api_key_env,
        timeout_s=cfg.timeout_s,
        num_retries=cfg.num_retries,
        backoff_s=cfg.retry_backoff_s,
        max_wait_s=cfg.retry_max_wait_s,
        response_schema=cfg.response_schema,
        schema_style=cfg.schema_style(),
        merge_system=cfg.system_prompt == "merge",
        role=role,
        token=token,
    )
    kwargs: dict[str, Any] = {}
    if cfg.extra_body:
        kwargs["metadata"] = {_EXTRA_KEY: {"extra_body": cfg.extra_body}}
    if seed is not None and cfg.temperature > 0:
        kwargs["rollout_id"] = int(seed)
        kwargs["seed"] = int(seed)
    return dspy.LM(
        f"openai/{cfg.model}",
        engine=engine,
        async_engine=AsyncOpenAIEngine(engine),
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        num_retries=0,  # the engine retries (and counts)
        cache=True,
        **kwargs,
    )
