"""A wheelhouse: one folder from which a seat of the lab installs with no registry (README, "Offline room").

``make wheelhouse`` writes it once, on a machine that ``make setup`` has set up: every pin of
requirements/lock.txt as a wheel for this platform, with pip and the build backend that the kit's editable
install needs (``wheels/``); the llama.cpp programs the kit compiled (``llama.cpp/``; the binding's wheel
is among the wheels); the model converted for vLLM (``models/``); and the OS tools the notebooks run,
Prometheus, promtool, Alertmanager and kubectl (``bin/``: Go programs that need nothing but the C
library). ``make lab WHEELHOUSE=dir`` on a seat installs the wheels with ``pip install --no-index`` and
copies the rest where ``make setup`` would have compiled and converted it, so the seat compiles nothing,
converts nothing and asks no registry.

Wheels, compiled programs and the model's conversion are only good on a machine like the one that made
them, so ``manifest.json`` records that machine (OS, CPU architecture, Python, C library, the CPU flags
llama.cpp was compiled for) and the lock it was made from, and every seat command compares them with the
seat before it installs anything: a wheelhouse made for another machine is refused with what to do.

The seat's side runs before the seat has a virtualenv, on the Python the Makefile found (``PYTHONPATH=src``):
this module, and what it imports of the kit, use only the standard library. The maker's side runs in the
kit's virtualenv and imports more, inside :func:`make`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servelab import binaries
from servelab.engines import model
from servelab.engines.device import cpu_flags
from servelab.errors import ServelabError
from servelab.paths import repo_root

MANIFEST = "manifest.json"
FORMAT = 1
WHEELS, LLAMACPP, MODELS, TOOLS = "wheels", "llama.cpp", "models", "bin"
# Present while `make wheelhouse` writes: a folder with it (or without a manifest) is not a wheelhouse yet.
WRITING = ".writing"
# The OS tools the preflight checks, but not llama.cpp's (in llama.cpp/) nor kustomize (kubectl bundles it).
OS_TOOLS = tuple(name for name, tool in binaries.TOOLS.items() if not tool.kit_built and not tool.optional)
# The llama.cpp CPU features the Makefile can switch on (-DGGML_<X>=ON), by their /proc/cpuinfo names.
GGML_CPU_FLAGS = {
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_TILE": "amx_tile",
    "AMX_INT8": "amx_int8",
    "AMX_BF16": "amx_bf16",
}
PIP_BATCH = 25  # pins per `pip wheel` call: one progress line each, and one call's timeout stays generous
PIP_TIMEOUT_S = 1800  # a batch of wheels from a registry; one that has only an sdist is built here
SEAT_FIX = (
    "make a wheelhouse for this machine (`make wheelhouse` on one like it), or install from the package "
    "registries with `make lab` (no WHEELHOUSE); on macOS or ARM see README.md, 'Offline room'"
)


@dataclass(frozen=True)
class Machine:
    """What decides whether a wheelhouse's wheels and programs run here."""

    system: str  # platform.system(): "Linux"
    arch: str  # platform.machine(): "x86_64"
    python: str  # "3.11": the wheels are built for one Python minor version (cp311)
    glibc: str  # "2.36"; "" without glibc (musl, macOS): the compiled programs need at least the maker's
    flags: frozenset[str]  # /proc/cpuinfo's flags

    @classmethod
    def here(cls) -> Machine:
        libc, version = platform.libc_ver()
        return cls(
            platform.system(),
            platform.machine(),
            f"{sys.version_info.major}.{sys.version_info.minor}",
            version if libc == "glibc" else "",
            cpu_flags(),
        )


def needed_cpu_flags(cmake_args: str, maker_flags: frozenset[str]) -> list[str]:
    """The CPU flags llama.cpp's build needs, from the Makefile's LLAMA_CMAKE_ARGS.

    A portable build (``-DGGML_NATIVE=OFF``) needs the features switched on; a native build (llama.cpp's
    default) was compiled for every feature of the maker's CPU, so a seat needs them all.
    """
    if "-DGGML_NATIVE=OFF" in cmake_args.split():
        on = re.findall(r"-DGGML_(\w+)=ON", cmake_args)
        return sorted({GGML_CPU_FLAGS[name] for name in on if name in GGML_CPU_FLAGS})
    return sorted(maker_flags.intersection(GGML_CPU_FLAGS.values()))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.0f} MB"


def _say(text: str) -> None:
    print(text, flush=True)


# --- the maker's side: make wheelhouse ------------------------------------------------------------


def _clear(dest: Path) -> None:
    """Empty ``dest`` for a new wheelhouse; refuse a folder that holds anything else."""
    if dest.exists():
        ours = dest.is_dir() and ((dest / MANIFEST).is_file() or (dest / WRITING).exists() or not any(dest.iterdir()))
        if not ours:
            raise ServelabError(
                f"{dest} exists and is not a wheelhouse (no {MANIFEST}); it is left as it is.",
                "pass an empty or new folder: make wheelhouse WHEELHOUSE=build/wheelhouse",
            )
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / WRITING).touch()


def _wheels(dest: Path, specs: list[str], find_links: Path, pip_args: Sequence[str]) -> dict[str, int]:
    """``pip wheel --no-deps`` every spec into ``dest``: a registry's wheel is saved as it is, an sdist is built."""
    from servelab.procs import run_command

    dest.mkdir()
    began = time.monotonic()
    files: dict[str, int] = {}
    for start in range(0, len(specs), PIP_BATCH):
        batch = specs[start : start + PIP_BATCH]
        command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest)]
        done = run_command(
            [*command, "--find-links", str(find_links), *pip_args, *batch],
            PIP_TIMEOUT_S,
            f"pip wheel ({batch[0]} ...)",
            "check the network to the package registry, then run make wheelhouse again",
        )
        if done.returncode != 0:
            said = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise ServelabError(
                f"pip could not get a wheel for one of {', '.join(batch)}:\n{said}",
                "a pin with neither a wheel for this platform nor an sdist that builds here cannot go in a "
                "wheelhouse; fix the pin, or run make wheelhouse where pip reaches the registry it came from",
            )
        files = {p.name: p.stat().st_size for p in dest.iterdir()}
        _say(
            f"  wheels: {min(start + PIP_BATCH, len(specs))}/{len(specs)} "
            f"({_gb(sum(files.values()))}, {time.monotonic() - began:.0f} s)"
        )
    return dict(sorted(files.items()))


def _copy_part(source: Path, dest: Path, what: str) -> int:
    began = time.monotonic()
    shutil.copytree(source, dest, symlinks=True)
    size = _size(dest)
    _say(f"  {what}: {_gb(size)} ({time.monotonic() - began:.0f} s)")
    return size


def _os_tools(dest: Path) -> dict[str, int]:
    """Copy the OS tools this machine has, under the name the kit found each by (binaries accepts all)."""
    dest.mkdir()
    copied = {}
    for tool in OS_TOOLS:
        found = binaries.find(tool)
        if found is None:
            _say(
                f"  {tool}: not installed here, so left out; seats need it from the OS: {binaries.TOOLS[tool].install}"
            )
            continue
        target = dest / Path(found).name
        shutil.copy2(Path(found).resolve(), target)
        copied[target.name] = target.stat().st_size
    _say(f"  OS tools: {', '.join(copied) or 'none'} ({_gb(sum(copied.values()))})")
    return copied


def _commit() -> dict[str, Any]:
    """The checkout's commit, for a seat's messages (a copy without git says "unknown")."""
    from servelab.procs import run_command

    if shutil.which("git") is None:
        return {"commit": "unknown", "uncommitted_changes": False}
    head = run_command(["git", "-C", str(repo_root()), "rev-parse", "HEAD"], 30, "git rev-parse", "is git installed?")
    status = run_command(["git", "-C", str(repo_root()), "status", "--porcelain"], 30, "git status", "")
    return {"commit": head.stdout.strip() or "unknown", "uncommitted_changes": bool(status.stdout.strip())}


def make(
    dest: Path,
    *,
    lock: Path,
    llama_wheels: Path,
    llama_tools: Path,
    cmake_args: str,
    pip_pin: str,
    pip_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Write a wheelhouse for this machine into ``dest`` (emptied first) and return its manifest.

    The manifest is written last, so a folder whose writing was interrupted is refused by a seat.
    """
    from servelab.course import environment

    llama_wheel = sorted(llama_wheels.glob("*.whl"))
    if not llama_wheel or not (llama_tools / "bin" / "llama-server").is_file():
        raise ServelabError(f"llama.cpp is not compiled into {llama_tools}.", "make setup")
    hf_dir = model.require_hf_model()
    _clear(dest)
    began = time.monotonic()
    here = Machine.here()
    _say(f"Writing a wheelhouse for {here.system} {here.arch}, Python {here.python} into {dest} (~2 GB)...")

    pins = environment.read_pins(lock.read_text().splitlines())
    build_requires = tomllib.loads((repo_root() / "pyproject.toml").read_text())["build-system"]["requires"]
    specs = [f"{name}=={version}" for name, version in pins.items()] + [pip_pin, *build_requires]
    wheels = _wheels(dest / WHEELS, specs, llama_wheels, pip_args)
    if llama_wheel[0].name not in wheels:
        raise ServelabError(
            f"pip took llama-cpp-python from elsewhere instead of the kit's build, {llama_wheel[0]}.",
            "remove the other llama_cpp_python wheel from pip's find-links (see `pip config list`), then "
            "make the wheelhouse again",
        )
    parts = {WHEELS: sum(wheels.values())}
    parts[LLAMACPP] = _copy_part(llama_tools, dest / LLAMACPP / llama_tools.name, f"llama.cpp ({llama_tools.name})")
    parts[MODELS] = _copy_part(hf_dir, dest / MODELS / hf_dir.name, f"model ({hf_dir.name})")
    tools = _os_tools(dest / TOOLS)
    parts[TOOLS] = sum(tools.values())
    manifest = {
        "format": FORMAT,
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **_commit(),
        "lock_sha256": _sha256(lock),
        "machine": {
            "system": here.system,
            "arch": here.arch,
            "python": here.python,
            "glibc": here.glibc,
            "cpu_flags_needed": needed_cpu_flags(cmake_args, here.flags),
        },
        "llama": {
            "wheels": llama_wheels.name,
            "wheel": llama_wheel[0].name,
            "tools": llama_tools.name,
            "cmake_args": cmake_args,
        },
        "model": hf_dir.name,
        "os_tools": sorted(tools),
        "bytes": {**parts, "total": sum(parts.values())},
        "wheel_files": wheels,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (dest / WRITING).unlink()
    _say(
        f"Wrote {dest}: {len(wheels)} wheels, llama.cpp, the model and {len(tools)} OS tools, "
        f"{_gb(manifest['bytes']['total'])} in {time.monotonic() - began:.0f} s. On each seat, with a "
        f"checkout of the same commit: make lab WHEELHOUSE=<this folder>"
    )
    return manifest


# --- the seat's side: make lab WHEELHOUSE=dir ------------------------------------------------------


def load(wheelhouse: Path) -> dict[str, Any]:
    """The manifest of a complete wheelhouse."""
    if not wheelhouse.is_dir():
        raise ServelabError(f"{wheelhouse} does not exist.", "pass the folder `make wheelhouse` wrote: WHEELHOUSE=dir")
    path = wheelhouse / MANIFEST
    if (wheelhouse / WRITING).exists() or not path.is_file():
        raise ServelabError(
            f"{wheelhouse} is not a complete wheelhouse (no {MANIFEST}): its writing was interrupted, "
            "or this is not the folder `make wheelhouse` wrote.",
            "copy the whole folder again, or make it again with `make wheelhouse`",
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError:
        manifest = {}
    if manifest.get("format") != FORMAT:
        raise ServelabError(
            f"{path} is damaged or was written by another version of the kit (format {manifest.get('format')}).",
            "make it again with `make wheelhouse` from a checkout of this commit",
        )
    return manifest


def _glibc(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def mismatches(manifest: dict[str, Any], here: Machine) -> list[str]:
    """How this machine differs from the one the wheelhouse was made for, one line each (none: it fits)."""
    made = manifest["machine"]
    found = []
    if (here.system, here.arch) != (made["system"], made["arch"]):
        found.append(f"it is for {made['system']} {made['arch']}; this machine is {here.system} {here.arch}")
    if here.python != made["python"]:
        found.append(f"its wheels are for Python {made['python']}; the Python here is {here.python}")
    if made["glibc"] and (not here.glibc or _glibc(here.glibc) < _glibc(made["glibc"])):
        found.append(f"its programs need glibc {made['glibc']} or newer; here: {here.glibc or 'no glibc'}")
    missing = [flag for flag in made["cpu_flags_needed"] if flag not in here.flags]
    if missing:
        found.append(f"its llama.cpp build needs CPU features this CPU lacks: {', '.join(missing)}")
    return found


def check(wheelhouse: Path, lock: Path, llama_wheels: Path, llama_tools: Path) -> dict[str, Any]:
    """The wheelhouse's manifest, once it is known to fit this machine, this checkout and its copy is whole."""
    manifest = load(wheelhouse)
    problems = mismatches(manifest, Machine.here())
    if problems:
        raise ServelabError(
            f"The wheelhouse {wheelhouse} was made for another kind of machine: " + "; ".join(problems) + ".",
            SEAT_FIX,
        )
    dirty = " with uncommitted changes" if manifest["uncommitted_changes"] else ""
    made_from = f"commit {manifest['commit'][:10]}{dirty}"
    if manifest["lock_sha256"] != _sha256(lock):
        raise ServelabError(
            f"The wheelhouse {wheelhouse} holds other pins than this checkout's {lock} (it was made from {made_from}).",
            "check out that commit on this seat, or make the wheelhouse again from this checkout",
        )
    llama = manifest["llama"]
    if (llama["wheels"], llama["tools"]) != (llama_wheels.name, llama_tools.name):
        raise ServelabError(
            f"The wheelhouse's llama.cpp ({llama['tools']}, LLAMA_CMAKE_ARGS={llama['cmake_args']}) is not the "
            f"build this checkout asks for ({llama_tools.name}).",
            "run make with the LLAMA_CMAKE_ARGS the wheelhouse was made with, or make it again from this checkout",
        )
    wheels = wheelhouse / WHEELS
    damaged = [
        name
        for name, size in manifest["wheel_files"].items()
        if not (wheels / name).is_file() or (wheels / name).stat().st_size != size
    ]
    if damaged:
        raise ServelabError(
            f"{len(damaged)} wheel(s) of {wheelhouse} are missing or truncated, e.g. {damaged[0]}.",
            "copy the whole folder again",
        )
    return manifest


def _restore_tree(source: Path, dest: Path, what: str) -> None:
    """Copy ``source`` to ``dest`` unless it is there; through a temporary name, so no half copy is ever used."""
    if dest.exists():
        _say(f"{what}: already in {dest}")
        return
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, partial, symlinks=True)
    partial.rename(dest)
    _say(f"{what}: copied from the wheelhouse into {dest}")


def restore_llamacpp(wheelhouse: Path, manifest: dict[str, Any], llama_wheels: Path, llama_tools: Path) -> None:
    """Put the compiled llama.cpp where scripts/build-llamacpp caches it, so that it finds it and compiles nothing."""
    llama = manifest["llama"]
    _restore_tree(wheelhouse / LLAMACPP / llama["tools"], llama_tools, f"llama.cpp {llama['tools']}")
    if not any(llama_wheels.glob("*.whl")):
        llama_wheels.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheelhouse / WHEELS / llama["wheel"], llama_wheels / llama["wheel"])


def restore_model(wheelhouse: Path, manifest: dict[str, Any]) -> None:
    """Put the converted model where :func:`servelab.engines.model.hf_dir` looks, so `make model` converts nothing."""
    _restore_tree(wheelhouse / MODELS / manifest["model"], model.hf_dir(), f"model {manifest['model']}")


def restore_tools(wheelhouse: Path, manifest: dict[str, Any], bin_dir: Path) -> None:
    """Copy the OS tools beside the venv's Python, where :func:`servelab.binaries.find` looks after PATH.

    Always copied, so a seat runs the versions the wheelhouse's maker ran, whatever its OS offers; a tool
    on PATH still comes first. What the wheelhouse cannot carry is named with how to install it.
    """
    for name in manifest["os_tools"]:
        if not (bin_dir / name).is_file():
            shutil.copy2(wheelhouse / TOOLS / name, bin_dir / name)
    _say(f"OS tools: {', '.join(manifest['os_tools']) or 'none'} in {bin_dir}")
    carried = {tool for tool in OS_TOOLS if set(binaries.TOOLS[tool].names) & set(manifest["os_tools"])}
    for tool in sorted(set(OS_TOOLS) - carried):
        if binaries.find(tool) is None:
            _say(f"NOTE: the wheelhouse has no {tool} and this machine neither: {binaries.TOOLS[tool].install}")
    if shutil.which("dot") is None:
        _say("NOTE: graphviz's `dot` is not installed: the notebooks' diagrams show how to install it instead.")


# --- python -m servelab.course.wheelhouse -----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m servelab.course.wheelhouse", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("make", "write a wheelhouse for this machine (make wheelhouse)"),
        ("check", "does the wheelhouse fit this machine and checkout?"),
        ("restore-llamacpp", "copy the compiled llama.cpp into the cache"),
        ("restore-model", "copy the converted model into the cache"),
        ("restore-tools", "copy the OS tools beside the venv's Python"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("wheelhouse", type=Path)
        command.add_argument("--lock", type=Path, required=True)
        command.add_argument("--llama-wheels", type=Path, required=True)
        command.add_argument("--llama-tools", type=Path, required=True)
        if name == "make":
            command.add_argument("--cmake-args", required=True, help="the Makefile's LLAMA_CMAKE_ARGS")
            command.add_argument("--pip", required=True, help="the pip the Makefile installs, e.g. pip==25.3")
            command.add_argument("--torch-index", default="", help="the Makefile's TORCH_INDEX")
        if name == "restore-tools":
            command.add_argument("--bin", type=Path, required=True, help="the venv's bin folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    where = args.wheelhouse.resolve()
    try:
        if args.command == "make":
            make(
                where,
                lock=args.lock,
                llama_wheels=args.llama_wheels,
                llama_tools=args.llama_tools,
                cmake_args=args.cmake_args,
                pip_pin=args.pip,
                pip_args=["--extra-index-url", args.torch_index] if args.torch_index else [],
            )
            return 0
        manifest = check(where, args.lock, args.llama_wheels, args.llama_tools)
        if args.command == "check":
            made = manifest["machine"]
            _say(
                f"wheelhouse {where}: made {manifest['made']} from commit {manifest['commit'][:10]} for "
                f"{made['system']} {made['arch']}, Python {made['python']}; it fits this machine"
            )
        elif args.command == "restore-llamacpp":
            restore_llamacpp(where, manifest, args.llama_wheels, args.llama_tools)
        elif args.command == "restore-model":
            restore_model(where, manifest)
        else:
            restore_tools(where, manifest, args.bin)
    except ServelabError as err:
        print(f"wheelhouse: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
