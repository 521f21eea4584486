"""Issue 12: loud failures, promises checked (the .pyz, old Pythons, macOS paths), rules that tests pin."""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import opensessions as os_
from conftest import PYTHON, ROOT, SCRIPT, retry_until


def _clone(tmp_path):
    for name in ("opensessions.py", "build_zipapp.py"):
        shutil.copy(os.path.join(ROOT, name), str(tmp_path / name))
    return str(tmp_path / "dist" / "opensessions.pyz")


def _build(tmp_path, *extra, env=None):
    return subprocess.run([PYTHON, str(tmp_path / "build_zipapp.py")] + list(extra), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True).stdout


def test_pyz_is_identical_whatever_the_hash_seed(tmp_path):
    out = _clone(tmp_path)
    digests = set()
    for seed in ("1", "2", "random"):
        _build(tmp_path, env=dict(os.environ, PYTHONHASHSEED=seed))
        with open(out, "rb") as f:
            digests.add(f.read())
    assert len(digests) == 1


def test_if_stale_rebuilds_for_another_python_and_for_new_source(tmp_path):
    out = _clone(tmp_path)
    assert _build(tmp_path, "--if-stale").strip() == out.encode()  # missing: built
    assert _build(tmp_path, "--if-stale") == b""  # current: left alone
    # a Python upgrade: the bytecode inside carries another interpreter's magic number
    with zipfile.ZipFile(out) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries["opensessions.pyc"] = b"\x00\x00\r\n" + entries["opensessions.pyc"][4:]
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    assert _build(tmp_path, "--if-stale").strip() == out.encode()
    with zipfile.ZipFile(out) as zf:
        assert zf.read("opensessions.pyc")[:4] == importlib.util.MAGIC_NUMBER
    assert _build(tmp_path, "--if-stale") == b""
    with open(str(tmp_path / "opensessions.py"), "a") as f:
        f.write("\n# an update\n")
    assert _build(tmp_path, "--if-stale").strip() == out.encode()
