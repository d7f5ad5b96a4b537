"""Schema of one LM endpoint config (conf/lm/*.yaml): what to talk to, how hard, and how to start it.

Also the schema of the sweep's rollout cache (`LMCacheConfig`), which is not per LM but per run/sweep."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gepa_lab.api_keys import key_from_env
from gepa_lab.sim.config import SimOptions
from gepa_lab.strict import StrictModel

LMKind = Literal["sim", "openai_compatible", "vllm", "vllm_ray", "llamacpp"]
MANAGED_KINDS = {"sim", "vllm_ray", "llamacpp"}  # gepa_lab starts these itself unless api_base is given


class ServerOptions(StrictModel):
    """A server command gepa_lab launches (vllm_ray replicas, llama.cpp); for kind sim, `replicas` simulators.

    `command` is an argv list; these placeholders are substituted: {model} {model_path} {host} {port}
    {tensor_parallel_size} {max_model_len} {gpu_memory_utilization} {python}. Empty = the kind's default
    command (vllm_ray: `vllm serve`, llamacpp: `python -m llama_cpp.server`)."""

    command: list[str] = Field(default_factory=list)
    replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0)  # Ray GPUs held by each replica actor (vllm_ray)
    num_cpus: float = Field(0, ge=0)  # Ray CPUs held by each replica actor (vllm_ray)
    resources: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per replica
    startup_timeout_s: float = Field(900.0, gt=0)
    keep_running: bool = False  # leave replicas up after the sweep (detached Ray actors, reused by name)
    env: dict[str, str] = Field(default_factory=dict)
    # vllm_ray: flags of the default `vllm serve` command
    model_path: str | None = None  # weights to load (HF id or path); None = `model`. llamacpp: the GGUF (None = Gemma 3 270M)
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enable_prefix_caching: bool = True
    extra_args: list[str] = Field(default_factory=list)  # appended to the command
    host: str | None = None  # where a replica binds (vllm_ray); None: its node's Ray address; llamacpp: 127.0.0.1
    health_interval_s: float = Field(5.0, gt=0)  # replica supervision period (vllm_ray)
    max_restarts: int = Field(5, ge=0)  # per replica slot, over the whole sweep
    # llamacpp: context size and threads of the default llama.cpp command
    n_ctx: int = Field(2048, ge=256)
    n_threads: int | None = Field(None, ge=1)


FAILOVERS_HEADER = "X-Gepa-Lab-Failovers"  # on the router's replies: how often it moved that request to another replica


class RouterOptions(StrictModel):
    """The options of the router in front of an LM's replicas (gepa_lab.servers.router); its command-line flags
    are generated from these fields."""

    host: str | None = Field(None, description="bind address; None: this node's address in the sweep's Ray cluster "
                                               "(every node reaches it; loopback for a local Ray), 127.0.0.1 without Ray")
    port: int | None = Field(None, ge=1, le=65535, description="port to listen on; None: a free port")
    affinity: bool = Field(True, description="send requests with the same system message (a candidate's instruction) "
                                             "to the same replica, so its prefix cache hits")
    affinity_slack: int = Field(4, ge=0, description="leave the preferred replica when it has this many more requests "
                                                     "in flight than the least busy one")
    health_interval_s: float = Field(2.0, gt=0, description="seconds between health checks of every replica")
    queue_timeout_s: float = Field(600.0, gt=0, description="a request waiting this long for a free slot gets 503 + Retry-After")
    request_timeout_s: float = Field(900.0, gt=0, description="upstream timeout per attempt, in seconds")
    max_attempts: int = Field(3, ge=1, description="replicas tried per request (failover)")
    workers: int = Field(1, ge=1, description="router processes serving its one address, each holding an equal share "
                                              "of every replica's max_in_flight slots: one process forwards about "
                                              "2,000 requests/s with a core to itself (docs/benchmarks.md)")


class LMRouterOptions(RouterOptions):
    """An LM config's `router:` block: whether the LM gets a router, and the router's options."""

    enabled: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: when there is more than one replica (vllm_ray: always); always; never")


class LMConfig(StrictModel):
    kind: LMKind
    model: str = Field(min_length=1)  # served model name; dspy talks to "openai/<model>"
    api_base: str | list[str] | None = None  # external endpoint(s) "http://host:port/v1"; None = start one
    api_key_env: str | None = None  # name of the env var holding the key; the key itself never sits in config
    max_in_flight: int = Field(8, ge=1)  # requests one endpoint (replica) takes at once (its capacity)
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(1024, ge=1)
    timeout_s: float = Field(60.0, gt=0)  # per attempt
    num_retries: int = Field(3, ge=0)  # re-sends after a timeout, connection error, 429, 5xx
    retry_backoff_s: float = Field(0.5, ge=0)  # first backoff (doubles, jittered) when no Retry-After is given
    retry_max_wait_s: float = Field(60.0, ge=0)  # cap on any wait between attempts, Retry-After included
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0)
    price_per_1k_completion_tokens: float = Field(0.0, ge=0)
    extra_body: dict = Field(default_factory=dict)  # merged into every request body (e.g. a grammar for llama.cpp)
    response_schema: bool = False  # the server constrains output to a JSON schema: dspy's JSONAdapter sends the signature's
    # how that schema is sent: json_schema = OpenAI's {"type": "json_schema", ...} (vLLM, OpenAI); json_object =
    # {"type": "json_object", "schema": ...} (llama-cpp-python's server); None = json_object for llamacpp, else json_schema
    response_format_style: Literal["json_schema", "json_object"] | None = None
    system_prompt: Literal["keep", "merge"] = "keep"  # merge: fold the system message into the first user message
    # (chat templates without a system role, like Gemma's, would otherwise drop it and with it GEPA's instruction)
    # how dspy writes the task program's prompts and reads the replies: chat = dspy's ChatAdapter ([[ ## field ## ]]
    # markers; on a reply it cannot parse it asks again through the JSONAdapter: two calls); json = the JSONAdapter
    # from the first call (with response_schema the server constrains the reply to the signature's schema)
    adapter: Literal["chat", "json"] = "chat"
    sim: SimOptions = Field(default_factory=SimOptions)
    server: ServerOptions = Field(default_factory=ServerOptions)
    router: LMRouterOptions = Field(default_factory=LMRouterOptions)

    @model_validator(mode="after")
    def _endpoint_given_when_external(self):
        if self.kind not in MANAGED_KINDS and not self.api_base:
            raise ValueError(f"lm kind '{self.kind}' needs api_base (the URL of a running OpenAI-compatible server)")
        if self.router.workers > self.max_in_flight:
            raise ValueError(f"router.workers ({self.router.workers}) exceeds max_in_flight ({self.max_in_flight}): "
                             "each router worker needs at least one slot of every replica")
        return self

    def api_key(self, required: bool = False) -> str | None:
        """The key, from the environment variable api_key_env names (None when it names none). required: an unset
        variable is a MissingKeyError naming it, else it means no key."""
        return key_from_env(self.api_key_env, needed_by=f"lm '{self.model}'" if required else None)

    @property
    def api_bases(self) -> list[str]:
        if self.api_base is None:
            return []
        return [self.api_base] if isinstance(self.api_base, str) else list(self.api_base)

    @property
    def capacity(self) -> int:
        """Requests the endpoint takes at once: the sum of its replicas' max_in_flight."""
        replicas = len(self.api_bases) or (self.server.replicas if self.kind in ("sim", "vllm_ray") else 1)
        return self.max_in_flight * replicas

    def dspy_adapter(self):
        """The dspy adapter the task program's predictors use with this LM (`dspy.context(adapter=...)`)."""
        import dspy

        return dspy.JSONAdapter() if self.adapter == "json" else dspy.ChatAdapter()

    def schema_style(self) -> str:
        return self.response_format_style or ("json_object" if self.kind == "llamacpp" else "json_schema")

    def server_key(self) -> str:
        """What identifies the server(s) behind this config: configs equal here share one endpoint.

        Client-side settings (temperature, max_tokens, timeouts, retries, prices, extra_body) are left out, so a
        sweep over temperature talks to one replica set."""
        return self.model_dump_json(include={"kind", "model", "api_base", "api_key_env", "max_in_flight", "sim", "server", "router"})


class LMCacheConfig(StrictModel):
    """The rollout cache a run or a sweep shares (gepa_lab.lm.cache): identical LM requests are answered once.

    mode: auto = redis when redis_url is set (or start_redis), else disk; disk = a diskcache folder (one machine,
    many processes); redis = a Redis server (a cluster); memory = per process only; off = no caching at all."""

    mode: Literal["auto", "disk", "redis", "memory", "off"] = "auto"
    dir: str | None = None  # disk mode: the folder; None = <output_dir>/.dspy_cache (also DSPY_CACHEDIR)
    redis_url: str | None = None  # redis mode: redis://host:port/db; None + start_redis = the sweep starts one
    start_redis: bool = False  # start a redis-server next to the sweep driver (scripts/ensure_redis.sh installs it)
    namespace: str | None = None  # key prefix in Redis; None = the sweep's output folder name
    memory: bool = True  # keep a per-process in-memory layer in front of the shared one
    size_limit_gb: float = Field(30.0, gt=0)  # disk mode
    ttl_s: float | None = Field(None, gt=0)  # redis mode: expire entries

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "redis" if (self.redis_url or self.start_redis) else "disk"

