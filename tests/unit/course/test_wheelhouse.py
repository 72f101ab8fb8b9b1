"""The offline room's wheelhouse: a seat refuses one made for another machine or lock, restores the rest into
its caches without a half copy, and the Makefile's seat path gives pip no index. tests/live/test_wheelhouse.py
makes a real one and installs a seat from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servelab.course import wheelhouse
from servelab.errors import ServelabError
from servelab.paths import repo_root

MAKEFILE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
LINUX = wheelhouse.Machine("Linux", "x86_64", "3.11", "2.36", frozenset({"avx", "avx2", "fma", "f16c", "bmi2"}))


def _manifest(**machine: object) -> dict[str, object]:
    return {
        "format": wheelhouse.FORMAT,
        "made": "2026-12-01T00:00:00Z",
        "commit": "0123456789abcdef",
        "uncommitted_changes": False,
        "lock_sha256": "",
        "machine": {"system": "Linux", "arch": "x86_64", "python": "3.11", "glibc": "2.36"}
        | {"cpu_flags_needed": ["avx2", "fma"]}
        | machine,
        "llama": {"wheels": "llama-cpp-python-1-7", "wheel": "llama_cpp.whl", "tools": "b1-7", "cmake_args": "x"},
        "model": "M-f32",
        "os_tools": ["promtool"],
        "wheel_files": {"a-1-py3-none-any.whl": 3, "llama_cpp.whl": 4},
    }


@pytest.fixture
def house(tmp_path: Path) -> tuple[Path, Path]:
    """A small wheelhouse made for this machine, and the lock it was made from."""
    lock = tmp_path / "lock.txt"
    lock.write_text("a==1\n")
    here = wheelhouse.Machine.here()
    manifest = _manifest(system=here.system, arch=here.arch, python=here.python, glibc=here.glibc, cpu_flags_needed=[])
    manifest["lock_sha256"] = wheelhouse._sha256(lock)
    root = tmp_path / "wheelhouse"
    (root / "wheels").mkdir(parents=True)
    (root / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"abc")
    (root / "wheels" / "llama_cpp.whl").write_bytes(b"llam")
    (root / "llama.cpp" / "b1-7" / "bin").mkdir(parents=True)
    (root / "llama.cpp" / "b1-7" / "bin" / "llama-server").write_text("#!/bin/sh\n")
    (root / "models" / "M-f32").mkdir(parents=True)
    (root / "models" / "M-f32" / "config.json").write_text("{}")
    (root / "bin").mkdir()
    (root / "bin" / "promtool").write_text("#!/bin/sh\n")
    (root / wheelhouse.MANIFEST).write_text(json.dumps(manifest))
    return root, lock


def _llama(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "cache" / "wheels" / "llama-cpp-python-1-7", tmp_path / "cache" / "llama.cpp" / "b1-7"


def test_a_portable_build_needs_the_flags_it_switches_on_and_a_native_one_all_of_the_makers() -> None:
    assert wheelhouse.needed_cpu_flags(MAKEFILE_ARGS, frozenset()) == ["avx", "avx2", "bmi2", "f16c", "fma"]
    maker = frozenset({"avx2", "avx512f", "amx_tile", "sse2", "ht"})
    assert wheelhouse.needed_cpu_flags("-DGGML_AVX2=ON", maker) == ["amx_tile", "avx2", "avx512f"]


def test_a_wheelhouse_for_linux_x86_refuses_a_mac_and_says_each_difference() -> None:
    mac = wheelhouse.Machine("Darwin", "arm64", "3.12", "", frozenset({"neon"}))
    found = wheelhouse.mismatches(_manifest(), mac)
    assert len(found) == 4
    assert "Linux x86_64; this machine is Darwin arm64" in found[0] and "Python 3.11" in found[1]
    assert "glibc 2.36" in found[2] and "avx2, fma" in found[3]
    assert wheelhouse.mismatches(_manifest(), LINUX) == []
    older = wheelhouse.Machine("Linux", "x86_64", "3.11", "2.31", LINUX.flags)
    assert wheelhouse.mismatches(_manifest(), older) == ["its programs need glibc 2.36 or newer; here: 2.31"]
    newer = wheelhouse.Machine("Linux", "x86_64", "3.11", "2.40", LINUX.flags)
    assert wheelhouse.mismatches(_manifest(), newer) == []


def test_the_seat_check_names_the_fix(
    house: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, lock = house
    wheels, tools = _llama(tmp_path)
    assert wheelhouse.check(root, lock, wheels, tools)["model"] == "M-f32"

    other = tmp_path / "other-lock.txt"
    other.write_text("a==2\n")
    with pytest.raises(ServelabError, match="made from commit 0123456789") as err:
        wheelhouse.check(root, other, wheels, tools)
    assert err.value.fix and "check out that commit" in err.value.fix
    with pytest.raises(ServelabError, match="LLAMA_CMAKE_ARGS"):
        wheelhouse.check(root, lock, wheels, tools.with_name("b1-8"))

    (root / "wheels" / "a-1-py3-none-any.whl").write_bytes(b"a")  # an interrupted copy to the seat
    with pytest.raises(ServelabError, match=r"missing or truncated, e\.g\. a-1-py3-none-any\.whl"):
        wheelhouse.check(root, lock, wheels, tools)

    manifest = json.loads((root / wheelhouse.MANIFEST).read_text())
    manifest["machine"]["python"] = "3.99"
    (root / wheelhouse.MANIFEST).write_text(json.dumps(manifest))
    args = ["check", str(root), "--lock", str(lock), "--llama-wheels", str(wheels), "--llama-tools", str(tools)]
    assert wheelhouse.main(args) == 2
    said = capsys.readouterr().err
    assert "made for another kind of machine" in said and "Python 3.99" in said and "make wheelhouse" in said


def test_a_folder_being_written_or_damaged_is_not_a_wheelhouse(house: tuple[Path, Path]) -> None:
    root, _ = house
    (root / wheelhouse.WRITING).touch()
    with pytest.raises(ServelabError, match="not a complete wheelhouse"):
        wheelhouse.load(root)
    with pytest.raises(ServelabError, match="not a complete wheelhouse"):
        wheelhouse.load(root.parent)
    with pytest.raises(ServelabError, match="does not exist"):
        wheelhouse.load(root / "nowhere")
    (root / wheelhouse.WRITING).unlink()
    (root / wheelhouse.MANIFEST).write_text("{")  # cut off
    with pytest.raises(ServelabError, match="damaged"):
        wheelhouse.load(root)


def test_restore_fills_the_caches_once(
    house: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root, lock = house
    wheels, tools = _llama(tmp_path)
    monkeypatch.setenv("SERVELAB_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(wheelhouse.model, "hf_dir", lambda: tmp_path / "cache" / "models" / "M-f32")
    manifest = wheelhouse.check(root, lock, wheels, tools)
    wheelhouse.restore_llamacpp(root, manifest, wheels, tools)
    wheelhouse.restore_model(root, manifest)
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    wheelhouse.restore_tools(root, manifest, venv_bin)
    assert (tools / "bin" / "llama-server").is_file() and (wheels / "llama_cpp.whl").read_bytes() == b"llam"
    assert (tmp_path / "cache" / "models" / "M-f32" / "config.json").is_file()
    assert (venv_bin / "promtool").is_file()
    assert not list(tools.parent.glob("*.partial"))

    (tools / "bin" / "llama-server").write_text("kept")  # already there: a second restore copies nothing
    wheelhouse.restore_llamacpp(root, manifest, wheels, tools)
    assert (tools / "bin" / "llama-server").read_text() == "kept"
    assert "already in" in capsys.readouterr().out


def test_make_never_empties_a_folder_that_is_not_a_wheelhouse(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ServelabError, match="is not a wheelhouse"):
        wheelhouse._clear(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    old = tmp_path / "old"
    old.mkdir()
    (old / wheelhouse.MANIFEST).write_text("{}")
    wheelhouse._clear(old)
    assert sorted(p.name for p in old.iterdir()) == [wheelhouse.WRITING]


def test_the_seat_side_needs_only_the_standard_library() -> None:
    """It runs on the plain Python that creates the seat's venv: -S leaves out every site-packages."""
    code = f"import sys; sys.path.insert(0, {str(repo_root() / 'src')!r}); import servelab.course.wheelhouse"
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def _make_n(*args: str) -> list[str]:
    done = subprocess.run(
        ["make", "-n", "setup", *args], cwd=repo_root(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_makefile_seat_path_gives_pip_no_index_and_checks_first(tmp_path: Path) -> None:
    seat = _make_n(f"WHEELHOUSE={tmp_path}/wh", f"ENV_DIR={tmp_path}/venv", f"SERVELAB_HOME={tmp_path}/cache")
    pip = [line for line in seat if "pip install" in line]
    assert len(pip) == 3 and all(f"--no-index --find-links {tmp_path}/wh/wheels" in line for line in pip)
    steps = [next(i for i, line in enumerate(seat) if mark in line) for mark in (" check ", "-m venv", "pip install")]
    assert steps == sorted(steps), "the wheelhouse is checked before the venv is made"
    assert not any("build-llamacpp" in line and "restore-llamacpp" not in line for line in seat)
    assert not any("apt-get" in line for line in seat) and any("restore-tools" in line for line in seat)
    normal = _make_n(f"ENV_DIR={tmp_path}/venv", f"SERVELAB_HOME={tmp_path}/cache")
    assert not any("--no-index" in line or "wheelhouse" in line for line in normal)
