"""Do two engines serve the same model? Compare their greedy first tokens over fixed prompts.

Whole greedy texts are the wrong test: llama.cpp multiplies Q4_1 weights with quantized activations
while vLLM uses the dequantized float32 weights, so after a few tokens the texts drift apart even
though the model is the same. The first token(s) of a greedy continuation, over many prompts, are
what must agree; a different model would disagree on most of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from servelab.engines.launch import Engine
from servelab.paths import data_path


def default_prompts() -> list[str]:
    """The kit's fixed prompts (``data/prompts/same_model.txt``, one per line, written for the kit)."""
    path = data_path("prompts", "same_model.txt")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Comparison:
    prompt: str
    first: str
    second: str

    @property
    def first_token_agrees(self) -> bool:
        return self.first == self.second


def compare(a: Engine, b: Engine, prompts: list[str] | None = None, max_tokens: int = 1) -> list[Comparison]:
    """Greedy ``max_tokens`` continuations of each prompt from both engines, side by side."""
    rows = []
    for prompt in prompts or default_prompts():
        ta = a.complete(prompt, max_tokens=max_tokens)["choices"][0]["text"]
        tb = b.complete(prompt, max_tokens=max_tokens)["choices"][0]["text"]
        rows.append(Comparison(prompt, ta, tb))
    return rows


def agreement_rate(rows: list[Comparison]) -> float:
    """Share of prompts whose first greedy token is identical on both engines."""
    return sum(r.first_token_agrees for r in rows) / len(rows) if rows else 0.0
