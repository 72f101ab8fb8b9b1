"""Instructor copy: the reference solutions to notebook 06's exercises (the learner's notebook never imports it)."""

# Your turn 1: the P95 time to first token per model, as a dashboard panel writes it.
p95_ttft_query = (
    "histogram_quantile(0.95, sum by (model_name, le) "
    "(rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval])))"
)

# Your turn 2: while VLLMServerDown fires, mute the latency pages of the same cluster, and nothing else.
latency_inhibition = """\
inhibit_rules:
  - source_matchers: ['alertname="VLLMServerDown"']
    target_matchers: ['alertname=~"VLLMHighTTFT|VLLMHighInterTokenLatency"']
    equal: [cluster]
"""
