"""The gateway's settings: one YAML file, checked by pydantic before the gateway starts.

Why keys are stored as SHA-256 hashes: the config (a ConfigMap, a file in git, a log of the start-up)
then never holds a usable key; a leaked config does not leak access. The gateway hashes what a
client sends and looks the hash up. ``KeyConfig.from_secret`` builds an entry from a raw key.

Keys can also come from a second file (``keys_file``), so that in Kubernetes the settings live in a
ConfigMap and the keys in a Secret (see manifests/gateway/).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from servelab.errors import ServelabError


def hash_key(raw: str) -> str:
    """The SHA-256 hex digest of an API key: what the config stores instead of the key."""
    return hashlib.sha256(raw.encode()).hexdigest()


class _Strict(BaseModel):
    # A misspelled setting ("request_timeout" for "request_timeout_s") must fail, not be ignored.
    model_config = ConfigDict(extra="forbid")


class KeyConfig(_Strict):
    """One API key: the id the audit log and metrics show, its hash, and its per-minute budgets."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_minute: int = Field(60, gt=0)
    tokens_per_minute: int = Field(20_000, gt=0)
    max_concurrent: int = Field(4, gt=0)  # requests in the gateway at a time (waiting or running)

    @classmethod
    def from_secret(cls, id: str, raw_key: str, **limits: int) -> KeyConfig:
        """An entry for ``raw_key`` (hashed here; the raw key is not kept)."""
        return cls(id=id, sha256=hash_key(raw_key), **limits)


class ReplicaConfig(_Strict):
    """One upstream engine: its root URL (no ``/v1``) and the path its health check asks."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    # vLLM and the native llama-server answer /health. llama-cpp-python's server has none, and its
    # /v1/models waits behind the running request (measured ~3 s during a 150-token answer), which would
    # mark a busy replica dead; its /docs page is served by the event loop and answers in ~20 ms.
    health_path: str = "/health"
    # vLLM aborts a request whose connection closes; llama-cpp-python's server finishes a non-streamed
    # answer anyway (~15 s of work for nobody). False (the safe default): after a client leaves or a
    # timeout, the gateway keeps the replica counted busy until the engine is done.
    stops_on_disconnect: bool = False

    @field_validator("url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")


class GatewayConfig(_Strict):
    """Everything the gateway process needs; see data/gateway/config.yaml for a commented example."""

    replicas: list[ReplicaConfig] = Field(min_length=1)
    keys: list[KeyConfig] = Field(default_factory=list)
    keys_file: Path | None = None  # more keys, e.g. a mounted Kubernetes Secret
    models: list[str] | None = None  # model names served (others: 404); None accepts any name
    context_tokens: int = Field(2048, gt=0)  # the engines' context: prompt estimate + max_tokens must fit
    # Timeouts. A non-streamed request gets request_timeout_s in all (queueing in the gateway included). A
    # stream gets first_chunk_timeout_s (queueing included) for its first chunk, then stream_idle_timeout_s
    # between chunks and stream_timeout_s in all: a long answer at a slow TPOT is legitimate, a stalled one
    # is not.
    request_timeout_s: float = Field(60.0, gt=0)
    first_chunk_timeout_s: float = Field(60.0, gt=0)
    stream_idle_timeout_s: float = Field(15.0, gt=0)
    stream_timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(2.0, gt=0)
    health_interval_s: float = Field(1.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)
    unhealthy_after: int = Field(1, ge=1)  # failed health checks in a row before a replica is taken out
    max_outstanding_per_replica: int | None = Field(None, ge=1)  # None: send everything, the engine queues
    max_attempts: int = Field(2, ge=1)  # replicas tried per request when one could not be reached
    # A request during which a replica died is not sent again for this long (0: off), see proxy.py.
    poison_quarantine_s: float = Field(600.0, ge=0)
    max_body_bytes: int = Field(256 * 1024, gt=0)
    default_max_tokens: int = Field(256, gt=0)  # set when a request names none, so the token budget is bounded
    # /ready and /metrics are served on this port only, never on the client port (servelab.gateway.server):
    # a probe or a scrape needs no API key, and what it shows (keys' traffic, replicas) is not for clients.
    admin_port: int = Field(8081, gt=0, lt=65536)
    # The server's own limits (uvicorn): what an idle or slow client may hold.
    max_connections: int = Field(512, gt=0)  # open connections; more get a 503 (keep below the fd limit)
    header_timeout_s: float = Field(10.0, gt=0)  # from connect (or the last answer) to a full request head
    body_timeout_s: float = Field(10.0, gt=0)  # to read the whole body (408 past it)
    keep_alive_s: int = Field(5, gt=0)  # an idle keep-alive connection is closed after this
    auth_failures_per_minute: int = Field(30, gt=0)  # per source address; more get a 429
    audit_path: str = "results/gateway-audit.jsonl"  # "-" writes the lines to stdout (a pod's log)
    audit_prompts: bool = False  # prompts may hold personal data: off unless switched on

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        for what, names in (("replica", [r.name for r in self.replicas]), ("key id", [k.id for k in self.keys])):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what} names must be unique; repeated: {dupes}")
        return self

    def all_keys(self) -> list[KeyConfig]:
        """``keys`` plus those of ``keys_file`` (a YAML list, or a mapping with a ``keys`` list)."""
        if self.keys_file is None:
            return list(self.keys)
        data = _read_yaml(self.keys_file)
        entries = data.get("keys", []) if isinstance(data, dict) else data
        try:
            extra = [KeyConfig.model_validate(e) for e in entries or []]
        except ValidationError as err:
            raise ServelabError(
                f"{self.keys_file} has an invalid key entry:\n{err}",
                "each key needs id, sha256 (servelab gateway hash-key KEY) and optional limits",
            ) from None
        return self.keys + extra


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        raise ServelabError(f"gateway config file {path} does not exist", "check the path (--config)")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ServelabError(f"{path} is not valid YAML: {err}", "fix the line it names") from None


def load_config(path: Path | str) -> GatewayConfig:
    """Read and check a gateway config; a mistake is a ServelabError naming the field."""
    path = Path(path)
    try:
        config = GatewayConfig.model_validate(_read_yaml(path) or {})
    except ValidationError as err:
        raise ServelabError(
            f"{path} is not a valid gateway config:\n{err}", "compare it with data/gateway/config.yaml"
        ) from None
    if config.keys_file is not None and not config.keys_file.is_absolute():
        config.keys_file = path.parent / config.keys_file
    ids = [k.id for k in config.all_keys()]
    if len(set(ids)) != len(ids) or not ids:
        raise ServelabError(
            f"{path}: key ids must be unique and at least one key is needed (found {ids})", "give every key its own id"
        )
    return config


def write_config(config: GatewayConfig, path: Path | str) -> Path:
    """Save ``config`` as YAML (what ``start_gateway`` hands to the gateway process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False))
    return path
