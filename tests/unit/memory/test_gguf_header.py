"""The GGUF header reader finds the attention shape past arrays it must skip, and refuses other files."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from servelab.engines.model import gguf_path
from servelab.memory import gguf_header


def _write_gguf(path: Path, key_length: int | None = None) -> None:
    """A header-only GGUF with a vocabulary array before the shape keys, as converters write tokenizers."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_token_list(["<s>", "hello", "world"])
    writer.add_array("test.floats", [0.5, 1.5])
    writer.add_block_count(4)
    writer.add_head_count(8)
    writer.add_head_count_kv(2)
    writer.add_embedding_length(256)
    if key_length is not None:
        writer.add_key_length(key_length)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()


@pytest.mark.parametrize(("key_length", "head_dim"), [(None, 32), (48, 48)])
def test_kv_shape_reads_the_shape_past_a_vocabulary(tmp_path: Path, key_length: int | None, head_dim: int) -> None:
    _write_gguf(tmp_path / "m.gguf", key_length)
    shape = gguf_header.kv_shape(tmp_path / "m.gguf")
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (4, 2, head_dim)


def test_kv_shape_refuses_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a GGUF"):
        gguf_header.kv_shape(tmp_path / "x.gguf")


def test_kv_shape_of_the_shipped_model_is_smollm2s_30_layers_of_3_kv_heads() -> None:
    shape = gguf_header.kv_shape(gguf_path())
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (30, 3, 64)
