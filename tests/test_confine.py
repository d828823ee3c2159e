"""tests/confine.py can fail: a case that reads or writes outside its tmp_path, by Python or by
the native libraries it wraps, through a symlink, a descriptor or another thread, or that starts
a process, is caught; one that stays inside passes; and the `confined` marker fails such a test."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.confine import REPO, Event, Seen, confined, unwatched


@pytest.fixture
def elsewhere(tmp_path_factory) -> Path:
    """A folder outside the case's tmp_path (beside it, in the same pytest base folder)."""
    folder = tmp_path_factory.mktemp("elsewhere")
    (folder / "secret.txt").write_text("user data")
    return folder


def _caught(*words: str):
    """Expect the confinement to fail, naming ``words`` (in this order, on one line)."""
    return pytest.raises(AssertionError, match=".*".join(map(re.escape, words)))


def test_a_write_outside_is_caught(tmp_path, elsewhere):
    with _caught("write", str(elsewhere / "out.txt")), confined([tmp_path]):
        (tmp_path / "fine.txt").write_text("inside")
        (elsewhere / "out.txt").write_text("leak")


def test_a_read_outside_is_caught(tmp_path, elsewhere):
    with _caught("read", str(elsewhere / "secret.txt")), confined([tmp_path]):
        (elsewhere / "secret.txt").read_text()


@pytest.mark.parametrize(
    "look",
    [
        lambda e, t: os.listdir(e),
        lambda e, t: list(os.scandir(e)),
        lambda e, t: list(os.walk(e)),
        lambda e, t: glob.glob("*.txt", root_dir=e),
        lambda e, t: list(e.rglob("*.txt")),
        lambda e, t: shutil.copy(e / "secret.txt", t),  # into tmp_path
    ],
    ids=["listdir", "scandir", "walk", "glob-root-dir", "rglob", "copy-source"],
)
def test_each_kind_of_read_outside_is_caught(tmp_path, elsewhere, look):
    with _caught("read", str(elsewhere)), confined([tmp_path]):
        look(elsewhere, tmp_path)


def test_reads_given_as_inputs_pass_and_may_not_be_written(tmp_path, elsewhere):
    with confined([tmp_path], reads=[elsewhere]):
        (elsewhere / "secret.txt").read_text()
    with _caught("write", "secret.txt"), confined([tmp_path], reads=[elsewhere]):
        (elsewhere / "secret.txt").write_text("changed")


@pytest.mark.parametrize(
    "leak",
    [
        lambda e: save_file({"x": torch.zeros(1)}, str(e / "w.safetensors")),
        lambda e: os.mkdir(e / "new"),
        lambda e: os.replace(e / "secret.txt", e / "moved.txt"),
        lambda e: os.remove(e / "secret.txt"),
        lambda e: shutil.rmtree(e),
        lambda e: os.symlink("/etc/passwd", e / "link"),
        lambda e: os.truncate(e / "secret.txt", 0),
        lambda e: os.chmod(e / "secret.txt", 0o600),
        lambda e: os.utime(e / "secret.txt"),
        lambda e: os.close(os.open(e / "secret.txt", os.O_WRONLY | os.O_APPEND)),
        lambda e: shutil.copy(e / "secret.txt", e / "copy.txt"),
    ],
    ids=["safetensors", "mkdir", "replace", "remove", "rmtree", "symlink", "truncate", "chmod",
         "utime", "os-open", "copy"],
)  # fmt: skip
def test_each_kind_of_write_outside_is_caught(tmp_path, elsewhere, leak):
    with _caught("write", str(elsewhere)), confined([tmp_path]):
        leak(elsewhere)


def test_native_reads_outside_are_caught(tmp_path, elsewhere):
    import pyarrow as pa
    import pyarrow.parquet as pq

    save_file({"x": torch.zeros(1)}, str(elsewhere / "w.safetensors"))
    pq.write_table(pa.table({"a": [1]}), str(elsewhere / "d.parquet"))
    with _caught("read", "w.safetensors"), confined([tmp_path]):
        load_file(str(elsewhere / "w.safetensors"))
    with _caught("read", "d.parquet"), confined([tmp_path]):
        pq.read_table(str(elsewhere / "d.parquet"))
    with confined([tmp_path]):  # and the same calls inside pass
        save_file({"x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
        load_file(str(tmp_path / "w.safetensors"))


def test_a_symlink_inside_pointing_out_is_outside(tmp_path, elsewhere):
    (tmp_path / "link.txt").symlink_to(elsewhere / "secret.txt")
    with _caught("read", str(elsewhere / "secret.txt")), confined([tmp_path]):
        (tmp_path / "link.txt").read_text()


def test_a_dir_fd_and_a_descriptor_resolve_to_where_they_point(tmp_path, elsewhere):
    fd = os.open(elsewhere, os.O_RDONLY)
    try:
        with _caught("write", str(elsewhere / "secret.txt")), confined([tmp_path]):
            os.unlink("secret.txt", dir_fd=fd)
    finally:
        os.close(fd)
    # entered in order: the file is opened before the case starts, then truncated inside it
    with (
        open(elsewhere / "f", "wb") as f,
        _caught("write", str(elsewhere / "f")),
        confined([tmp_path]),
    ):
        os.ftruncate(f.fileno(), 0)


def test_another_thread_is_seen(tmp_path, elsewhere):
    thread = threading.Thread(target=(elsewhere / "secret.txt").read_text)
    with _caught("read", "secret.txt"), confined([tmp_path]):
        thread.start()
        thread.join()


def test_a_process_is_caught(tmp_path):
    with _caught("process"), confined([tmp_path]):
        subprocess.run(["true"], check=True)


def test_a_refused_case_is_checked_too(tmp_path, elsewhere):
    with pytest.raises(AssertionError) as caught, confined([tmp_path]):
        (elsewhere / "out.txt").write_text("leak")
        raise ValueError("refused")
    assert isinstance(caught.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="refused"), confined([tmp_path]):
        raise ValueError("refused")  # no leak: the case's own error


def test_inside_and_the_allowed_places_pass(tmp_path, elsewhere):
    with confined([tmp_path]) as seen:
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "f.txt").write_text("x")
        os.replace(tmp_path / "a" / "f.txt", tmp_path / "g.txt")
        shutil.rmtree(tmp_path / "a")
        (REPO / "sigma_core" / "__init__.py").read_text()  # the project's own code
        Path(os.__file__).read_text()  # the standard library
        with unwatched():
            (elsewhere / "secret.txt").read_text()  # the test's own look is not recorded
    kinds = {(e.kind, e.name) for e in seen.events}
    assert {("write", "os.mkdir"), ("write", "os.rename"), ("write", "shutil.rmtree")} <= kinds
    assert not any("secret" in e.path for e in seen.events)


def test_python_bytecode_beside_code_is_allowed_and_only_there(tmp_path, elsewhere):
    seen = Seen((str(tmp_path),), ())
    pyc = REPO / "sigma_core" / "__pycache__" / "cli.cpython-311.pyc.1234"
    assert seen.allowed(Event("open", "write", str(pyc)))
    assert not seen.allowed(Event("open", "write", str(elsewhere / "__pycache__" / "x.pyc")))
    assert not seen.allowed(Event("open", "write", str(REPO / "sigma_core" / "cli.py")))


LEAKY = """
import os, pytest
pytestmark = pytest.mark.confined()
def test_leaks(tmp_path):
    (tmp_path / "fine").write_text("x")
    with open(os.environ["LEAK"], "w") as f:
        f.write("leak")
def test_stays(tmp_path):
    (tmp_path / "fine").write_text("x")
"""


def test_the_marker_fails_a_test_that_writes_outside(tmp_path, elsewhere):
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEAK": str(elsewhere / "leak.txt")}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "tests.confine", "-p", "no:randomly",
            "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning",
            f"--basetemp={tmp_path / 'base'}", "test_leaky.py"]  # fmt: skip
    run = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 passed" in run.stdout, run.stdout + run.stderr
    assert f"write {elsewhere / 'leak.txt'} (open)" in run.stdout
