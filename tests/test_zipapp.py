"""dist/opensessions.pyz (build_zipapp.py): what it holds, that it rebuilds only when it must, that
it runs the same program, and how it starts and ends a client command (the client part of the
bytecode only)."""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import opensessions as os_
from conftest import PYTHON, ROOT, SCRIPT, SOURCE, ServerProc


RUN_PYZ = r"""
import marshal, runpy, sys, zipfile
pyz = sys.argv[1]
sys.argv = sys.argv[1:]
sizes = {len(zipfile.ZipFile(pyz).read("bytecode/%s.pyc" % part)) - 16: part for part in ("client", "rest")}
loads = marshal.loads
def counting(data):
    if len(data) in sizes:
        sys.stderr.write("unmarshal %s\n" % sizes[len(data)])
    return loads(data)
marshal.loads = counting
class Probe(object):
    def __del__(self):
        sys.stderr.write("teardown ran\n")
sys.modules["probe"] = Probe()
runpy.run_path(pyz, run_name="__main__")
"""


def run_pyz(pyz, *argv):
    return subprocess.run([PYTHON, "-S", "-c", RUN_PYZ, pyz] + list(argv), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


def test_each_part_of_the_bytecode_is_read_and_unmarshalled_once(pyz):
    """zipimport would load the module's code twice (get_filename loads it too): ~10 ms a command.
    A command that is not a client command runs both parts, each once."""
    r = run_pyz(pyz, "--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("opensessions "), r.stderr
    assert r.stderr.decode() == "unmarshal client\nunmarshal rest\nteardown ran\n"


def test_a_client_command_runs_the_client_part_only_and_skips_the_teardown(pyz, tmp_path):
    env_missing = ["-S", str(tmp_path / "no-tmux.sock"), "--port", "9"]  # port 9: nothing listens
    r = run_pyz(pyz, *env_missing + ["set-status", "main", "x"])
    assert r.returncode == 1 and "teardown" not in r.stderr.decode()
    assert r.stderr.decode() == "unmarshal client\nopensessions: cannot reach the opensessions server ([Errno " \
                                "111] Connection refused); start it with `opensessions start`\n", r.stderr
    # help is argparse's, from the rest of the module: the interpreter ends as usual
    r = run_pyz(pyz, "set-status", "--help")
    assert r.returncode == 0 and b"usage:" in r.stdout
    assert r.stderr == b"unmarshal client\nunmarshal rest\nteardown ran\n"
    # a hook with no server to tell: the client part only, silent
    r = subprocess.run([PYTHON, "-S", "-c", RUN_PYZ, pyz] + env_missing + ["hook", "claude"], input=b"{}",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"unmarshal client\n")


def test_the_client_part_ends_where_the_client_section_does():
    """bytecode/client.pyc is the module down to the end of its Client section; the rest keeps its
    line numbers (a traceback from the server names the right line of opensessions.py)."""
    sys.path.insert(0, ROOT)
    import build_zipapp
    with open(SOURCE, "rb") as f:
        source = f.read()
    client, rest = build_zipapp.split(source)
    lines = client.splitlines()
    assert lines[-1] != b"#" * 78 and b"\ndef run_client(argv):\n" in client
    assert client + rest[len(lines):] == source and rest[:len(lines)] == b"\n" * len(lines)
    namespace = {"__name__": "opensessions"}
    exec(compile(client, "opensessions.py", "exec"), namespace)
    assert namespace["run_client"].__code__.co_firstlineno == os_.run_client.__code__.co_firstlineno
    exec(compile(rest, "opensessions.py", "exec"), namespace)
    assert namespace["main"].__code__.co_firstlineno == os_.main.__code__.co_firstlineno
    assert sorted(k for k in namespace if not k.startswith("__")) == sorted(k for k in vars(os_) if not k.startswith("__"))


def test_quick_output_through_a_pipe_is_whole(pyz, server):
    """A quick command's output is flushed before it exits without the teardown."""
    for i in range(60):
        assert server.post("/log", {"session": "main", "message": "line %d %s" % (i, "x" * 200)})[0] == 204
    as_py = server.cli("status", "--json")
    r = subprocess.run([PYTHON, "-S", pyz, "-S", server.tmux.socket, "status", "--json"], env=server.vars,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0 and len(r.stdout) > 10000, r.stderr
    assert r.stdout.count(b"line ") == as_py.stdout.count(b"line ") == 50  # MAX_LOGS


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
    entries["bytecode/rest.pyc"] = b"\x00\x00\r\n" + entries["bytecode/rest.pyc"][4:]
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    assert _build(tmp_path, "--if-stale").strip() == out.encode()
    with zipfile.ZipFile(out) as zf:
        assert zf.read("bytecode/rest.pyc")[:4] == importlib.util.MAGIC_NUMBER
    assert _build(tmp_path, "--if-stale") == b""
    with open(str(tmp_path / "opensessions.py"), "a") as f:
        f.write("\n# an update\n")
    assert _build(tmp_path, "--if-stale").strip() == out.encode()


def test_pyz_runs_the_server_and_clients(env, tmux, pyz):
    with open(pyz, "rb") as f:
        assert f.read(23) == b"#!/usr/bin/env python3\n"
    s = ServerProc(env, tmux, argv=[PYTHON, pyz])
    try:
        r = s.cli("set-status", "main", "from pyz")
        assert r.returncode == 0, r.stderr
        assert s.session("main")["metadata"]["status"]["text"] == "from pyz"
    finally:
        s.stop()


def test_pyz_is_byte_identical_on_rebuild(tmp_path, pyz):
    other = str(tmp_path / "again.pyz")
    subprocess.run([PYTHON, os.path.join(ROOT, "build_zipapp.py"), "--out", other], check=True,
                   stdout=subprocess.DEVNULL)
    with open(pyz, "rb") as a, open(other, "rb") as b:
        assert a.read() == b.read()


def test_same_source_is_the_same_version(tmp_path):
    sys.path.insert(0, ROOT)
    import build_zipapp
    pyz = build_zipapp.build(str(tmp_path / "opensessions.pyz"))
    assert os_.program_digest(SOURCE) == os_.program_digest(pyz) == os_.program_digest(SCRIPT) == \
        os_.program_digest(os.path.join(pyz, "opensessions.py"))
    changed = tmp_path / "opensessions.py"
    changed.write_bytes(open(SOURCE, "rb").read() + b"\n# edited\n")
    assert os_.program_digest(str(changed)) != os_.program_digest(SOURCE)
