"""What the benchmark sends: prompts of controlled length, and how many tokens each answer must have.

A serving benchmark is only comparable when the token counts are. Two things make that hard:

- Prompt length is measured in *tokens*, not words. Synthetic prompts are therefore cut to N tokens
  with the model's own tokenizer (``tokenizer.json`` of the converted SmolLM2, read with the fast
  ``tokenizers`` library) when it is there, and estimated from characters otherwise.
- A model stops early when it emits its end-of-sequence token, so two runs of "64 output tokens" can
  differ a lot. Each engine has its own switch that forces full-length answers (see
  :func:`length_forcing_body`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from servelab.engines.kinds import EngineKind
from servelab.errors import ServelabError
from servelab.paths import data_path

# How to force full-length answers: an engine the kit knows, or any other OpenAI-compatible server.
ServerKind = Literal[EngineKind, "openai"]
Endpoint = Literal["completions", "chat"]
Lengths = int | tuple[int, int]

SMOLLM2_EOS_ID = 2  # <|im_end|>, also the end-of-text token of SmolLM2's completions
_PREFIX_SEED = 20_231_023  # fixed: the shared prefix is one text, whatever the workload's seed


def dataset_path() -> Path:
    """The kit's prompt set (``data/prompts/bench_prompts.jsonl``, see its README)."""
    return data_path("prompts", "bench_prompts.jsonl")


# Common English words; nearly all are one token in BPE vocabularies, so the estimate stays close
# even without the tokenizer. Prompts are random sentences of them: distinct per request, so a
# prefix cache cannot make one synthetic run look faster than another.
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "it",
    "by",
    "at",
    "from",
    "his",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "one",
    "first",
    "not",
    "their",
    "its",
    "new",
    "after",
    "but",
    "who",
    "they",
    "have",
    "her",
    "she",
    "two",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "team",
    "between",
    "season",
    "he",
    "well",
    "also",
    "early",
    "part",
    "three",
    "this",
    "film",
    "series",
    "system",
    "under",
    "second",
    "year",
    "war",
    "until",
    "high",
    "music",
    "since",
    "both",
    "following",
    "each",
    "group",
    "team",
    "three",
    "river",
    "north",
    "south",
    "east",
    "west",
    "light",
    "water",
    "house",
    "road",
    "small",
    "large",
    "long",
    "short",
    "green",
    "blue",
    "red",
    "old",
    "young",
    "good",
    "great",
    "little",
    "right",
    "left",
    "open",
    "close",
    "book",
    "table",
    "window",
    "garden",
    "morning",
    "evening",
    "summer",
    "winter",
    "market",
    "village",
    "island",
    "mountain",
    "forest",
]


def length_forcing_body(engine_kind: ServerKind, eos_token_id: int = SMOLLM2_EOS_ID) -> dict[str, Any]:
    """Extra request fields that make the engine generate exactly ``max_tokens`` tokens.

    vLLM and llama.cpp's native server have ``ignore_eos``. llama-cpp-python's server does not; a logit
    bias of -100 on the EOS token has the same effect there (the token can no longer be sampled). A
    hosted OpenAI endpoint offers neither reliably, so "openai" sends nothing and answers may be shorter
    than asked.
    """
    if engine_kind in ("vllm", "llama-server"):
        return {"ignore_eos": True}
    if engine_kind == "llamacpp":
        return {"logit_bias": {str(eos_token_id): -100}}
    if engine_kind == "openai":
        return {}
    raise ServelabError(
        f"engine_kind {engine_kind!r} is not one of 'vllm', 'llamacpp', 'llama-server', 'openai'.",
        "pass engine_kind=engine.kind, or 'openai' for any other server",
    )


class TokenCounter:
    """Counts and cuts tokens with the model's tokenizer, or estimates (~4 characters a token)."""

    def __init__(self, tokenizer_file: Path | None = None) -> None:
        self._tok = None
        path = tokenizer_file if tokenizer_file is not None else _default_tokenizer_file()
        if path is not None and path.is_file():
            try:
                from tokenizers import Tokenizer

                self._tok = Tokenizer.from_file(str(path))
            except Exception:  # noqa: BLE001
                # tokenizers raises a bare Exception for a broken or foreign file: fall back to the estimate,
                # never fail a run.
                self._tok = None

    @property
    def exact(self) -> bool:
        """True when counts come from a real tokenizer rather than the character estimate."""
        return self._tok is not None

    def count(self, text: str) -> int:
        if self._tok is not None:
            return len(self._tok.encode(text, add_special_tokens=False).ids)
        return max(1, round(len(text) / 4))

    def truncate(self, text: str, n_tokens: int) -> str:
        """The first ``n_tokens`` tokens of ``text`` as text."""
        if self._tok is not None:
            ids = self._tok.encode(text, add_special_tokens=False).ids[:n_tokens]
            return self._tok.decode(ids)
        cut = text[: n_tokens * 4]
        return cut.rsplit(" ", 1)[0] if " " in cut else cut


def _default_tokenizer_file() -> Path | None:
    try:
        from servelab.engines.model import hf_dir

        return hf_dir() / "tokenizer.json"
    except (ImportError, OSError, RuntimeError):  # no package, or no writable cache folder (home() creates it)
        return None


@lru_cache(maxsize=4)
def token_counter(tokenizer_file: Path | None = None) -> TokenCounter:
    """One shared counter per tokenizer file (loading it takes ~0.1 s)."""
    return TokenCounter(tokenizer_file)


@dataclass(frozen=True)
class Request:
    """One request to send: the prompt, how many tokens to generate, and engine-specific fields."""

    prompt: str
    max_tokens: int
    extra_body: dict[str, Any] = field(default_factory=dict)
    # The workload's count of the prompt text (the chat template's few extra tokens not included);
    # the server's ``usage`` replaces it when the server sends one (vLLM does, llama.cpp does not).
    input_tokens: int | None = None

    def body(self, model: str, endpoint: Endpoint) -> dict[str, Any]:
        """The JSON body for ``/v1/completions`` or ``/v1/chat/completions`` (always streamed)."""
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": self.prompt}]
        else:
            body["prompt"] = self.prompt
        body.update(self.extra_body)
        return body


def _draw(lengths: Lengths, rng: np.random.Generator) -> int:
    if isinstance(lengths, int):
        return lengths
    low, high = lengths
    return int(rng.integers(low, high + 1))


def _check_lengths(name: str, lengths: Lengths | None) -> None:
    values = [lengths] if isinstance(lengths, int) else list(lengths or [])
    if (
        len(values) not in (1, 2)
        or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values)
        or values != sorted(values)
    ):
        raise ServelabError(
            f"{name}={lengths!r} is not a positive length or a (low, high) range.",
            f"use e.g. {name}=128 or {name}=(32, 512)",
        )


@dataclass
class Workload:
    """A recipe for an endless, seeded stream of :class:`Request` objects.

    The same seed always gives the same requests, so two engines (or two settings of one engine)
    are measured on identical prompts.
    """

    kind: Literal["fixed", "random", "dataset"]
    input_tokens: Lengths | None = None
    output_tokens: Lengths | None = None
    engine_kind: ServerKind = "openai"
    force_length: bool = True
    eos_token_id: int = SMOLLM2_EOS_ID
    dataset_path: Path | None = None
    tokenizer_file: Path | None = None
    # Tokens of one text every prompt starts with (a long system prompt, a shared document): what
    # prefix caching reuses. 0: every prompt is distinct from its first token.
    shared_prefix_tokens: int = 0

    def __post_init__(self) -> None:
        length_forcing_body(self.engine_kind)  # validates engine_kind early
        if self.shared_prefix_tokens < 0:
            raise ServelabError(
                f"shared_prefix_tokens={self.shared_prefix_tokens} is negative",
                "use 0 (no shared prefix) or a token count such as 512",
            )
        if self.output_tokens is not None:
            _check_lengths("output_tokens", self.output_tokens)
        if self.kind != "dataset":
            _check_lengths("input_tokens", self.input_tokens)

    @property
    def extra_body(self) -> dict[str, Any]:
        return length_forcing_body(self.engine_kind, self.eos_token_id) if self.force_length else {}

    def requests(self, seed: int = 0) -> Iterator[Request]:
        """Requests without end; the load generator decides how many to take."""
        rng = np.random.default_rng(seed)
        counter = token_counter(self.tokenizer_file)
        extra = self.extra_body
        if self.shared_prefix_tokens:
            yield from self._with_prefix(seed, counter)
            return
        if self.kind == "dataset":
            rows = load_dataset(self.dataset_path)
            while True:
                for i in rng.permutation(len(rows)):
                    row = rows[int(i)]
                    out = _draw(self.output_tokens, rng) if self.output_tokens is not None else row["output_tokens"]
                    yield Request(row["prompt"], int(out), extra, counter.count(row["prompt"]))
        assert self.input_tokens is not None, "__post_init__ checks input_tokens for every kind but dataset"
        while True:
            n_in = _draw(self.input_tokens, rng)
            prompt = synthetic_prompt(n_in, rng, counter)
            yield Request(prompt, _draw(self.output_tokens or 64, rng), extra, counter.count(prompt))

    def _with_prefix(self, seed: int, counter: TokenCounter) -> Iterator[Request]:
        """The same requests with one shared text in front (the same text for every seed)."""
        prefix = synthetic_prompt(self.shared_prefix_tokens, np.random.default_rng(_PREFIX_SEED), counter) + "\n\n"
        inner = Workload(**{**self.__dict__, "shared_prefix_tokens": 0})
        for request in inner.requests(seed):
            prompt = prefix + request.prompt
            yield Request(prompt, request.max_tokens, request.extra_body, counter.count(prompt))

    def take(self, n: int, seed: int = 0) -> list[Request]:
        """The first ``n`` requests for ``seed`` (handy to look at what will be sent)."""
        it = self.requests(seed)
        return [next(it) for _ in range(n)]

    def describe(self) -> dict[str, Any]:
        """Settings for the result's config, so a saved result says what load produced it."""
        return {
            "kind": self.kind,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "engine_kind": self.engine_kind,
            "extra_body": self.extra_body,
            "dataset": str(self.dataset_path or dataset_path()) if self.kind == "dataset" else None,
            "exact_token_counts": token_counter(self.tokenizer_file).exact,
            "shared_prefix_tokens": self.shared_prefix_tokens,
        }


def synthetic_prompt(n_tokens: int, rng: np.random.Generator, counter: TokenCounter | None = None) -> str:
    """Random sentences of common words, cut to about ``n_tokens`` tokens."""
    counter = counter or token_counter()
    words: list[str] = []
    # ~1.2 words per token is generous for these words; the cut below makes it exact.
    while len(words) < int(n_tokens * 1.2) + 8:
        sentence = rng.choice(_WORDS, size=int(rng.integers(6, 14))).tolist()
        sentence[0] = sentence[0].capitalize()
        words.extend([*sentence[:-1], sentence[-1] + "."])
    return counter.truncate(" ".join(words), n_tokens)


def fixed_workload(
    input_tokens: int = 128, output_tokens: int = 64, engine_kind: ServerKind = "openai", **options: Any
) -> Workload:
    """Every request has the same prompt length and answer length: the cleanest comparison."""
    return Workload("fixed", input_tokens, output_tokens, engine_kind, **options)


def random_workload(
    input_tokens: tuple[int, int] = (32, 512),
    output_tokens: tuple[int, int] = (16, 128),
    engine_kind: ServerKind = "openai",
    **options: Any,
) -> Workload:
    """Lengths drawn uniformly from inclusive ranges: closer to real traffic, still reproducible."""
    return Workload("random", input_tokens, output_tokens, engine_kind, **options)


def dataset_workload(
    path: Path | str | None = None,
    output_tokens: Lengths | None = None,
    engine_kind: ServerKind = "openai",
    **options: Any,
) -> Workload:
    """Prompts from a JSONL file (default: the kit's ``data/prompts/bench_prompts.jsonl``).

    Each row has ``prompt`` and ``output_tokens`` (the length a good answer would have);
    ``output_tokens`` here overrides the rows when given.
    """
    return Workload(
        "dataset", None, output_tokens, engine_kind, dataset_path=Path(path) if path is not None else None, **options
    )


def load_dataset(path: Path | None = None) -> list[dict[str, Any]]:
    """Rows of a prompt JSONL file: ``{"prompt": str, "output_tokens": int, ...}`` per line."""
    path = path or dataset_path()
    if not path.is_file():
        raise ServelabError(
            f"The prompt dataset {path} does not exist.",
            "pass path= to a JSONL file with 'prompt' and 'output_tokens' per line",
        )
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "prompt" not in row:
            raise ServelabError(f"{path}:{number} has no 'prompt'.", "every line needs a 'prompt' field")
        row.setdefault("output_tokens", 128)
        rows.append(row)
    if not rows:
        raise ServelabError(f"{path} has no prompts.", "add one JSON object per line")
    return rows
