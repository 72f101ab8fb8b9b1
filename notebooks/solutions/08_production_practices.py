"""Reference solutions to notebook 08's "Your turn" exercises: the instructor copy, graded on request."""

from __future__ import annotations

import math
from typing import Any

from servelab.gateway import KeyConfig

# Your turn 1. Each request of the notebook's carol_body is charged at admission its prompt's estimated
# tokens (4 characters each, rounded up: servelab/gateway/validate.py) plus its max_tokens. Three of them
# fit the budget exactly; the fourth would exceed it. requests_per_minute stays at its default, far above.
_CAROL_PROMPT, _CAROL_MAX_TOKENS = "Name three primary colours.", 8
carol_token_budget = KeyConfig.from_secret(
    "carol", "sk-exercise-carol", tokens_per_minute=3 * (math.ceil(len(_CAROL_PROMPT) / 4) + _CAROL_MAX_TOKENS)
)


def refused_requests(lines: list[dict[str, Any]], key_id: str) -> set[str]:
    """Your turn 2. Refused by the gateway itself: an error status, and no replica ever got the request
    (``replica`` is None). An error *with* a replica reached an engine: it failed, timed out or its
    client hung up, which cost the engine work."""
    return {
        line["request_id"]
        for line in lines
        if line["key_id"] == key_id and line["status"] >= 400 and line["replica"] is None
    }


# Your turn 3. maxUnavailable 1 means one pod at a time whatever the replica count; minAvailable 1 (the
# shipped value, right for 2 pods) would let a drain take 3 of 4 at once.
launch_pdb = """
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: gateway
  namespace: llm-serving
  labels:
    app.kubernetes.io/name: gateway
    app.kubernetes.io/part-of: servelab
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: gateway
"""
