"""Reference solutions to notebook 02's "Your turn" exercises (the instructor copy)."""

from __future__ import annotations

from servelab.observe import metrics


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum every sample called ``name`` whose labels include ``labels``: PromQL's ``sum(name{labels})``."""
    wanted = labels or {}
    return float(
        sum(
            value
            for sample, have, value in metrics.samples(text)
            if sample == name and all(have.get(key) == want for key, want in wanted.items())
        )
    )


def max_concurrency(text: str, max_model_len: int) -> float:
    """KV-cache tokens (a label of ``vllm:cache_config_info``) over the tokens one request may grow to."""
    info = next(labels for name, labels, _ in metrics.samples(text) if name == "vllm:cache_config_info")
    return int(info["kv_cache_size_tokens"]) / max_model_len


vllm_deployment = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: vllm
  labels:
    app.kubernetes.io/name: vllm
spec:
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/name: vllm
  template:
    metadata:
      labels:
        app.kubernetes.io/name: vllm
    spec:
      containers:
        - name: vllm
          image: vllm/vllm-openai:v0.32.0
          args: ["--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--max-model-len", "2048", "--port", "8000"]
          ports:
            - name: http
              containerPort: 8000
          resources:
            requests:
              cpu: "2"
              memory: 6Gi
            limits:
              memory: 8Gi
          startupProbe:
            httpGet: {path: /health, port: http}
            periodSeconds: 10
            failureThreshold: 60
          readinessProbe:
            httpGet: {path: /health, port: http}
            periodSeconds: 5
          livenessProbe:
            httpGet: {path: /health, port: http}
            periodSeconds: 10
            failureThreshold: 6
"""
