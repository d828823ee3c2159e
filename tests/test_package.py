"""Packaging and architecture checks: the requirement files match pyproject.toml, the public API
resolves, importing is silent, the import layers and the complexity budget hold, the preview
cache key follows the source, the shipped assets are served from the checkout's assets/ and
from inside the installed package, and the wheel ships the package data (and nothing else)."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import sigma_core
from sigma_core import user_cache
from sigma_core.inputs import PROJECT_ASSETS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sigma_core"

PUBLIC_NAMES = {
    "SigmaPipeline",
    "SigmaOutput",
    "Composition",
    "Reference",
    "Settings",
    "load_preset",
    "save_preset",
    "build_plan",
    "estimate_memory",
    "MemoryEstimate",
    "ATTRIBUTES",
    "SigmaError",
    "SigmaInputError",
    "CheckpointError",
    "SigmaOutOfMemoryError",
    "GenerationCancelled",
}
SUBPACKAGES = ["inputs", "planning", "model", "runtime", "report", "training"]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the same parser, as a package
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirement_lines(name: str) -> set[str]:
    lines = set()
    for raw in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.add("".join(line.split()))
    return lines


def _normalized(requirements: list[str]) -> set[str]:
    return {"".join(r.split()) for r in requirements}


# --- requirement files ---------------------------------------------------------------------------


def test_requirements_txt_is_pyproject_dependencies_plus_studio_quant_train_and_eval(pyproject):
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    expected = _normalized(
        project["dependencies"]
        + extras["studio"]
        + extras["quant"]
        + extras["train"]
        + extras["eval"]
    )
    assert _requirement_lines("requirements.txt") == expected


def test_requirements_dev_txt_is_the_dev_extra(pyproject):
    dev = pyproject["project"]["optional-dependencies"]["dev"]
    assert _requirement_lines("requirements-dev.txt") == _normalized(dev)


def test_every_extra_is_in_a_requirement_file_but_fp8(pyproject):
    # fp8 (torchao) only helps on GPUs of compute capability >= 8.9; CPU installs skip it.
    extras = {"studio", "quant", "train", "eval", "fp8", "dev"}
    assert set(pyproject["project"]["optional-dependencies"]) == extras


# --- the public API ------------------------------------------------------------------------------


def test_public_api_names_resolve():
    missing = PUBLIC_NAMES - set(sigma_core.__all__)
    assert not missing, f"missing from sigma_core.__all__: {sorted(missing)}"
    for name in sigma_core.__all__:
        assert getattr(sigma_core, name) is not None, name


def test_unknown_public_name_is_an_attribute_error():
    with pytest.raises(AttributeError):
        _ = sigma_core.NoSuchName


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_subpackage_all_resolves(sub):
    module = importlib.import_module(f"sigma_core.{sub}")
    names = getattr(module, "__all__", None)
    assert names, f"sigma_core.{sub} has no __all__"
    unresolved = [name for name in names if not hasattr(module, name)]
    assert not unresolved, f"sigma_core.{sub}.__all__ names missing attributes: {unresolved}"


@pytest.mark.slow  # a fresh interpreter imports torch, diffusers and bitsandbytes (~5-8 s)
def test_import_prints_nothing():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "import sigma_core; from sigma_core import SigmaPipeline"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


# --- architecture --------------------------------------------------------------------------------


def _lint_imports() -> str:
    beside_python = Path(sys.executable).parent / "lint-imports"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("lint-imports")
    assert found, "lint-imports (import-linter, requirements-dev.txt) is not installed"
    return found


def test_import_layers_hold(pyproject):
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [_lint_imports(), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    counts = re.search(r"Contracts: (\d+) kept, (\d+) broken", output)
    assert counts, output
    kept, broken = int(counts[1]), int(counts[2])
    assert result.returncode == 0, output
    assert broken == 0, output
    assert kept == len(contracts), output


def _blocks(blocks):
    for block in blocks:
        yield block
        yield from _blocks(getattr(block, "closures", []))


def test_cyclomatic_complexity_is_at_most_c():
    from radon.complexity import cc_rank, cc_visit

    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        for block in _blocks(cc_visit(path.read_text(encoding="utf-8"))):
            rank = cc_rank(block.complexity)
            if rank not in "ABC":
                where = f"{path.relative_to(ROOT).as_posix()}:{block.lineno}"
                offenders.append(f"{where} {block.fullname} {rank} ({block.complexity})")
    assert not offenders, "radon rank worse than C:\n" + "\n".join(offenders)


# --- the preview cache key -----------------------------------------------------------------------


def _copy_package(dest: Path) -> Path:
    return Path(shutil.copytree(PACKAGE, dest, ignore=shutil.ignore_patterns("__pycache__")))


def test_source_digest_is_stable_and_location_independent(tmp_path):
    first = _copy_package(tmp_path / "a" / "sigma_core")
    second = _copy_package(tmp_path / "b" / "sigma_core")
    digest = user_cache.source_digest(first)
    assert user_cache.source_digest(second) == digest
    assert user_cache.source_digest(first) == digest
    assert user_cache.source_digest(PACKAGE) == digest  # __pycache__ is not part of it


@pytest.mark.parametrize(
    "relative",
    [
        "__init__.py",
        "inputs/attributes.py",
        "model/config.py",
        "runtime/tiny.py",
        "planning/tokenizer.py",
        "model/flux_vae/vae/config.json",
    ],
)
def test_source_digest_changes_with_any_source_byte(tmp_path, relative):
    copy = _copy_package(tmp_path / "sigma_core")
    before = user_cache.source_digest(copy)
    path = copy / relative
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] = ord("#") if data[middle] != ord("#") else ord("$")
    path.write_bytes(bytes(data))
    assert user_cache.source_digest(copy) != before


def test_package_digest_is_the_digest_of_the_sigma_core_package():
    package_dir = Path(sigma_core.__file__).resolve().parent
    assert user_cache.package_digest() == user_cache.source_digest(package_dir), (
        f"package_digest() hashes {user_cache.PACKAGE_ROOT}, not the package {package_dir}: "
        "files outside sigma_core (a virtual environment, tests, tool caches, the rest of "
        "site-packages) change the preview cache key"
    )


def test_cached_folder_is_named_by_the_package_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = user_cache.cached_folder("x", lambda p: (p / "f").write_text("1"))
    assert folder.name.endswith(user_cache.package_digest())
    assert folder.name == f"x-{user_cache.package_digest()}"
    assert folder.parent == tmp_path / "sigma-studio"
    assert (folder / "f").read_text() == "1"

    def must_not_write(path: Path) -> None:
        raise AssertionError("an existing cache folder was written again")

    assert user_cache.cached_folder("x", must_not_write) == folder


# --- the shipped assets and the package list ----------------------------------------------------


def test_a_checkout_serves_the_top_level_assets():
    assert PROJECT_ASSETS == ROOT / "assets"
    assert not (PACKAGE / "assets").exists(), "the shipped images live in assets/ only"
    assert (PROJECT_ASSETS / "LICENSES.md").is_file()


def test_pyproject_lists_every_package_and_maps_the_assets(pyproject):
    # The mapped assets/ folder is not found by setuptools' package discovery, so pyproject
    # lists the packages: one added under sigma_core/ or studio/ must be listed too.
    from setuptools import find_packages

    setuptools_config = pyproject["tool"]["setuptools"]
    found = find_packages(where=str(ROOT), include=["sigma_core*", "studio*"])
    assert sorted(setuptools_config["packages"]) == sorted([*found, "sigma_core.assets"])
    assert setuptools_config["package-dir"] == {"sigma_core.assets": "assets"}


# --- the wheel -----------------------------------------------------------------------------------

WHEEL_MUST_HOLD = [
    "sigma_core/__init__.py",
    "sigma_core/model/flux_vae/vae/config.json",
    *sorted(f"sigma_core/assets/{p.name}" for p in PROJECT_ASSETS.iterdir() if p.is_file()),
]
# Run from outside the checkout against the unpacked wheel: a preset naming a shipped image
# finds it inside the installed package.
LOAD_FROM_INSTALLED = """
import sys
from pathlib import Path
import sigma_core
from sigma_core import load_preset
installed = Path(sigma_core.__file__).resolve().parent
comp = load_preset(sys.argv[1])
path = comp.resolve_path("astronaut.png")
assert path == installed / "assets" / "astronaut.png", (path, installed)
assert comp.load_images()[1].size == (512, 512)
print(path)
"""
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "__pycache__", "build", "dist", "*.egg-info", ".*cache", ".hypothesis"
)


@pytest.mark.slow
def test_wheel_ships_package_data_and_no_tests(tmp_path):
    # No build isolation, so nothing is downloaded: the build backend must be installed. It is
    # wherever requirements.txt is: torch==2.13.0 requires setuptools>=77.0.3.
    try:
        setuptools_version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("setuptools (pyproject's build backend) is not installed")
    assert int(setuptools_version.split(".")[0]) >= 77, setuptools_version

    # pip builds a local folder in place (build/, *.egg-info): build a copy, so the checkout
    # stays clean and a stale build/lib cannot leak into the wheel.
    source = Path(shutil.copytree(ROOT, tmp_path / "src", ignore=NOT_SOURCE))
    out = tmp_path / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--no-cache-dir", "-w", str(out), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr

    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    missing = [name for name in WHEEL_MUST_HOLD if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    top_levels = {name.split("/", 1)[0] for name in names}
    assert all(t in {"sigma_core", "studio"} or t.endswith(".dist-info") for t in top_levels), (
        top_levels
    )

    installed = tmp_path / "site-packages"
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extractall(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    preset = shutil.copy(ROOT / "presets" / "combine_astronaut_cat_rocket.json", elsewhere)
    env = {**os.environ, "PYTHONPATH": str(installed), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", LOAD_FROM_INSTALLED, str(preset)]
    result = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == str(installed / "sigma_core" / "assets" / "astronaut.png")
