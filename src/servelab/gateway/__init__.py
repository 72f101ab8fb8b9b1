"""An OpenAI-compatible gateway in front of engine replicas: API keys, an allow-list of request fields,
per-key rate limits and concurrency caps with fair queueing, timeouts,
client-disconnect cancellation, health-checked load balancing with failover, an audit log and
Prometheus metrics. Notebook 08 shows each of these working and failing.

Why the kit has its own instead of an existing gateway (checked in 2026, see notebook 08):

- LiteLLM proxy: its virtual keys (per-key budgets and rate limits) need a PostgreSQL database
  (``DATABASE_URL``; docs.litellm.ai/docs/proxy/virtual_keys), and rate limits shared between its
  replicas need Redis: two more servers to run, and not installable from the package registries here.
- Envoy AI Gateway: runs only as a Kubernetes controller on top of Envoy Gateway (Kubernetes 1.32+;
  aigateway.envoyproxy.io/docs/getting-started/prerequisites), so not on a laptop without a cluster.
- A plain Envoy or nginx can balance and time out, but has no per-key token budgets and no
  OpenAI-aware audit log without plugins.

The gateway here is small on purpose (FastAPI + httpx + ``limits`` + ``prometheus_client``), with
one module per job, so a learner can read every decision: :mod:`.config`, :mod:`.auth`,
:mod:`.validate` (what is forwarded), :mod:`.ratelimit`, :mod:`.replicas`, :mod:`.proxy`, :mod:`.breaker`
(requests of death), :mod:`.audit`, :mod:`.metrics`, :mod:`.app`, :mod:`.server` (the client port, the
admin port with the probes and metrics, connection limits);
:mod:`.launch` starts it as a managed process for notebooks and tests. The deployable part imports
nothing else of the kit but :mod:`servelab.errors` and :mod:`servelab.sse` (``pip install .[gateway]``).
In production with a cluster and a database, LiteLLM or Envoy AI Gateway are sound choices; the
practices are the same.

Typical use::

    from servelab.gateway import GatewayConfig, KeyConfig, ReplicaConfig
    from servelab.gateway.launch import start_gateway
    config = GatewayConfig(replicas=[ReplicaConfig(name="a", url=engine.url)],
                           keys=[KeyConfig.from_secret("alice", "sk-demo-alice")])
    with start_gateway(config) as gateway:
        ...  # an OpenAI client with base_url=gateway.base_url, api_key="sk-demo-alice"
"""

from servelab.gateway.audit import read_audit
from servelab.gateway.config import GatewayConfig, KeyConfig, ReplicaConfig, hash_key, load_config, write_config

__all__ = ["GatewayConfig", "KeyConfig", "ReplicaConfig", "hash_key", "load_config", "read_audit", "write_config"]
