"""Observing a running fleet: alert rules and PromQL, promtool, local Prometheus and Alertmanager,
a webhook receiver, the Grafana dashboard, and scraping ``/metrics`` (notebook 06; notebook 02 reads
``/metrics``, notebook 04 records KV-cache usage through :mod:`.metrics`).
"""
