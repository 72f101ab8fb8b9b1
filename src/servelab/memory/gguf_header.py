"""The attention shape a GGUF file declares (layers, KV heads, head size), read from its header alone.

Why a header reader and not the ``gguf`` package's ``GGUFReader`` (which :mod:`.quantize` uses for the
tensors): the reader parses the whole vocabulary into arrays, about ten seconds on these 2-core machines,
and loading the file with llama.cpp prints its log; the shape is a handful of scalars near the start.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import IO, Any

from servelab.memory.kvcache import ModelShape

# GGUF metadata value types (ggml's gguf.h): fixed-size scalars by struct format, plus strings and arrays.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _read(f: IO[bytes], fmt: str) -> Any:
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _gguf_value(f: IO[bytes], kind: int) -> Any:
    """One metadata value; arrays (the tokenizer's vocabulary) are skipped, the shape needs none."""
    if kind == _GGUF_STRING:
        return f.read(_read(f, "<Q")).decode("utf-8", "replace")
    if kind == _GGUF_ARRAY:
        item, count = _read(f, "<I"), _read(f, "<Q")
        if item in _GGUF_SCALARS:
            f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
        else:
            for _ in range(count):
                _gguf_value(f, item)
        return None
    return _read(f, _GGUF_SCALARS[kind])


def kv_shape(path: str | Path) -> ModelShape:
    """The layers, KV heads and head size a GGUF file declares: what llama.cpp sizes its KV cache from.

    Why a header reader: the ``gguf`` package parses the whole vocabulary into arrays (seconds on a busy
    machine) and loading the file with llama.cpp prints its log; the shape is a handful of scalars.
    """
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        _read(f, "<I")  # format version
        _read(f, "<Q")  # tensor count
        metadata: dict[str, Any] = {}
        for _ in range(_read(f, "<Q")):
            key = f.read(_read(f, "<Q")).decode("utf-8", "replace")
            metadata[key] = _gguf_value(f, _read(f, "<I"))
    arch = metadata["general.architecture"]
    heads = metadata[f"{arch}.attention.head_count"]
    return ModelShape(
        name=str(metadata.get("general.name", Path(path).stem)),
        layers=metadata[f"{arch}.block_count"],
        kv_heads=metadata.get(f"{arch}.attention.head_count_kv", heads),
        head_dim=metadata.get(f"{arch}.attention.key_length") or metadata[f"{arch}.embedding_length"] // heads,
        source=str(path),
    )
