"""The champion over HTTP: FastAPI on Uvicorn, answering through the same LM edge as trials.

    python -m gepa_lab.serve http model=models:/NAME@champion [host=127.0.0.1] [port=8000] [tracking_uri=URI]
        [api_base=URL] [api_key_env=NAME] [max_in_flight=16] [poll_s=10] [cache=false]

POST /predict takes the program's input fields and returns its output fields (Pydantic models derived from the
signature: types, and the label set of a Literal output, so /docs shows them) plus `model_version`. The program is
called asynchronously (dspy's acall) on an LM built by gepa_lab.lm.endpoint.build_lm from the LM recorded with the
model (retries, accounting; api_base / api_key_env replace the recorded ones), at most max_in_flight calls at once.
GET /health: alive. GET /ready: a model is loaded and its LM answers. GET /metrics: Prometheus text.
A request that does not fit the model gets 422 naming the field; an LM that does not answer gets 503 (the server
stays up, and answers again once the LM does). A models:/NAME@ALIAS model is re-resolved every poll_s seconds: an
alias move is served without a restart. The key comes from the environment variable the LM config names.
"""

import asyncio
import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import dspy
from pydantic import BaseModel, ConfigDict, Field, create_model

from gepa_lab.api_keys import key_from_env
from gepa_lab.serve.model import ServedModel, ServeError, load_model
from gepa_lab.strict import StrictModel

PROBE_EVERY_S = 1.0  # while the LM is out, how often a request may ask it again


class HttpSettings(StrictModel):
    model: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else the project registry
    api_base: str | None = None  # default: the endpoint recorded with the model
    api_key_env: str | None = None  # default: the variable recorded with the model
    max_in_flight: int = Field(16, ge=1)  # program calls (and so LM requests) at once
    poll_s: float = Field(10.0, gt=0)  # how often an alias is re-resolved
    cache: bool = False  # dspy's in-memory cache for identical requests


def io_models(program: dspy.Module, title: str) -> tuple[type[BaseModel], type[BaseModel]]:
    """Request and response models from the program's signature: the first predictor's inputs in, the last one's
    outputs out (with `model_version`), each with its annotation (a Literal keeps its label set)."""
    predictors = [p for _, p in program.named_predictors()]
    if not predictors:
        raise ServeError("the program has no predictor: no signature to serve")
    first, last = predictors[0].signature, predictors[-1].signature

    def fields(found: dict[str, Any]) -> dict[str, Any]:
        described = {name: (f.json_schema_extra or {}).get("desc") or "" for name, f in found.items()}
        # dspy's placeholder description "${name}" says nothing: left out
        return {name: (f.annotation, Field(..., description=None if described[name].startswith("${") else described[name]))
                for name, f in found.items()}

    request = create_model(f"{title}Request", __config__=ConfigDict(extra="forbid"), **fields(first.input_fields))
    response = create_model(f"{title}Response", model_version=(str, ...), **fields(last.output_fields))
    return request, response


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("-", "_").split("_") if part) or "Program"


@dataclass
class Loaded:
    served: ServedModel
    version: str
    request: type[BaseModel]
    response: type[BaseModel]

    @property
    def engine(self):
        return getattr(self.served.lm, "_engine_spec", None)


class Service:
    """What the app serves: the loaded model (swapped when its alias moves), the LM cap, the metrics."""

    def __init__(self, settings: HttpSettings):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from gepa_lab.lm.accounting import UsageMeter

        self.settings = settings
        self.name, self.alias, self.pinned = _parse_uri(settings.model)
        self.meter = UsageMeter()
        self.loaded = self._load(self._resolve())
        self.slots = asyncio.Semaphore(settings.max_in_flight)
        self._probe_lock = threading.Lock()
        self._last_probe = 0.0
        self.metrics = CollectorRegistry()
        self.requests = Counter("gepa_lab_serve_requests", "HTTP requests by path and status", ["path", "status"], registry=self.metrics)
        self.latency = Histogram("gepa_lab_serve_request_seconds", "request latency", ["path"], registry=self.metrics)
        self.in_flight = Gauge("gepa_lab_serve_lm_in_flight", "program calls waiting on the LM now", registry=self.metrics)
        self.version_gauge = Gauge("gepa_lab_serve_model_version", "the version being served", registry=self.metrics)
        self.version_gauge.set(float(self.loaded.version) if self.loaded.version.isdigit() else 0)
        self.metrics.register(_UsageCollector(self.meter))

    # ---- the model -----------------------------------------------------------------------------------------
    def _resolve(self) -> str:
        """The version the model URI means now."""
        if self.pinned is not None:
            return self.pinned
        from gepa_lab.tracking.registry import open_registry

        uri = self.settings.tracking_uri
        try:
            return str(open_registry(uri).get_model_version_by_alias(self.name, self.alias).version)
        except Exception as exc:  # MLflow's own error says what is missing
            raise ServeError(f"cannot resolve {self.settings.model} in {uri}: {type(exc).__name__}: {exc}") from None

    def _load(self, version: str) -> Loaded:
        served = load_model(f"models:/{self.name}/{version}", self.settings.tracking_uri)
        served.bind(api_base=self.settings.api_base, api_key_env=self.settings.api_key_env, cache=self.settings.cache)
        self.meter.add("task", served.lm)
        return Loaded(served, version, *io_models(served.program, _title(self.name)))

    async def follow_alias(self) -> None:
        """Re-resolve the alias every poll_s; load a moved-to version beside the old one, then swap."""
        while True:
            await asyncio.sleep(self.settings.poll_s)
            try:
                version = await asyncio.to_thread(self._resolve)
                if version != self.loaded.version:
                    loaded = await asyncio.to_thread(self._load, version)
                    old, self.loaded = self.loaded.version, loaded
                    self.version_gauge.set(float(version) if version.isdigit() else 0)
                    print(f"[gepa_lab] {self.name}@{self.alias} moved: now serving version {version} (was {old})", file=sys.stderr)
            except Exception as exc:  # keep serving what is loaded; say why the move is not followed
                print(f"[gepa_lab] could not follow {self.settings.model}: {type(exc).__name__}: {exc}", file=sys.stderr)

    # ---- the LM --------------------------------------------------------------------------------------------
    def lm_answers(self, loaded: Loaded) -> bool:
        from gepa_lab.servers.process import EndpointError, check_endpoint

        info = loaded.served.lm_info
        try:
            check_endpoint(info["api_base"], timeout_s=2.0, api_key=key_from_env(info.get("api_key_env")), model=info.get("model"))
            return True
        except EndpointError:
            return False

    def lm_back(self, loaded: Loaded) -> bool:
        """After an outage the LM edge refuses to send (it marks the endpoint lost): probe the endpoint, at most once
        per PROBE_EVERY_S, and clear the mark when it answers again."""
        engine = loaded.engine
        if engine is None or not engine.outage.error:
            return True
        with self._probe_lock:
            if not engine.outage.error:
                return True
            if time.monotonic() - self._last_probe < PROBE_EVERY_S:
                return False
            self._last_probe = time.monotonic()
            if self.lm_answers(loaded):
                engine.outage.error = None
                print("[gepa_lab] the LM answers again", file=sys.stderr)
                return True
        return False


class LMOutage(Exception):
    pass


class _UsageCollector:
    """The LM edge's accounting (UsageMeter) as Prometheus counters."""

    FIELDS = ("requests", "errors", "retries", "failed_requests", "prompt_tokens", "completion_tokens", "cache_hits")

    def __init__(self, meter):
        self.meter = meter

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        usage = self.meter.snapshot().get("task", {})
        for field in self.FIELDS:
            family = CounterMetricFamily(f"gepa_lab_serve_lm_{field}", f"LM {field.replace('_', ' ')} (the LM edge's count)")
            family.add_metric([], float(usage.get(field, 0)))
            yield family


def _parse_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS -> (NAME, ALIAS, None); models:/NAME/VERSION -> (NAME, None, VERSION)."""
    if not model_uri.startswith("models:/"):
        raise ServeError(f"model={model_uri}: give models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = model_uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.partition("/")
    if not version.isdigit():
        raise ServeError(f"model={model_uri}: give models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, None, version


def build_app(service: Service):
    from fastapi import FastAPI, HTTPException, Request as HttpRequest
    from fastapi.responses import JSONResponse, PlainTextResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    request_model, response_model = service.loaded.request, service.loaded.response

    @contextlib.asynccontextmanager
    async def lifespan(app):
        follower = asyncio.create_task(service.follow_alias()) if service.alias else None
        yield
        if follower:
            follower.cancel()

    app = FastAPI(title=f"gepa_lab: {service.settings.model}", lifespan=lifespan)

    @app.middleware("http")
    async def count(request: HttpRequest, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")  # the route's path, not the URL: unknown URLs share one label
        path = getattr(route, "path", "unmatched")
        service.requests.labels(path, str(response.status_code)).inc()
        service.latency.labels(path).observe(time.perf_counter() - started)
        return response

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        loaded = service.loaded
        if not await asyncio.to_thread(service.lm_answers, loaded):
            return JSONResponse({"ready": False, "reason": f"the LM at {loaded.served.lm_info['api_base']} does not answer"}, 503)
        if loaded.engine is not None:
            loaded.engine.outage.error = None  # it answers: let requests through again
        return {"ready": True, "model_version": loaded.version, "lm": loaded.served.lm_info.get("model")}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(service.metrics), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=response_model)
    async def predict(body: request_model):  # type: ignore[valid-type]
        loaded = service.loaded
        try:
            outputs = await answer(service, loaded, body.model_dump())
        except LMOutage as exc:
            raise HTTPException(503, f"the LM does not answer: {exc}", headers={"Retry-After": "1"}) from None
        return {"model_version": loaded.version, **outputs}

    return app


async def answer(service: Service, loaded: Loaded, inputs: dict[str, Any]) -> dict[str, Any]:
    """The program's outputs for one input, through the LM edge; LMOutage when the LM does not answer."""
    if not await asyncio.to_thread(service.lm_back, loaded):
        raise LMOutage(loaded.engine.outage.error)
    async with service.slots:
        service.in_flight.inc()
        try:
            with dspy.context(lm=loaded.served.lm, callbacks=[*dspy.settings.callbacks, service.meter]):
                pred = await loaded.served.program.acall(**inputs)
        except Exception:
            engine = loaded.engine
            if engine is not None and engine.outage.error:
                raise LMOutage(engine.outage.error) from None
            raise
        finally:
            service.in_flight.dec()
    return {name: getattr(pred, name, None) for name in loaded.response.model_fields if name != "model_version"}


def serve_http(settings: HttpSettings) -> int:
    import uvicorn

    service = Service(settings)
    print(f"[gepa_lab] serving {settings.model} (version {service.loaded.version}) on http://{settings.host}:{settings.port}",
          file=sys.stderr)
    uvicorn.run(build_app(service), host=settings.host, port=settings.port, log_level="warning")
    return 0

