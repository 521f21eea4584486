#!/usr/bin/env python3
"""Build dist/opensessions.pyz: a dependency-free zipapp.

The archive holds opensessions.py and, beside it, its bytecode for the building interpreter as
unchecked-hash .pyc files (PEP 552): a command starts in milliseconds instead of compiling 900 KB
of source every time. The bytecode is in two parts, split where the module's Client section ends
(its map says each section uses only those above it, and tests/test_structure.py holds that):
bytecode/client.pyc, the sections down to Client, and bytecode/rest.pyc, the others (compiled with
the line numbers they have in opensessions.py). __main__.py runs the first part as the module
`opensessions` and gives the command line to its run_client: a hook, a key binding or a
set-status runs there without reading, unmarshalling or running the rest of the module (three
quarters of its bytecode, ~10 ms a command). Any other command (the server, the sidebar, help) runs the
second part into the same module, then main(). The .pyc files and __main__.py are stored, not
deflated (nor is zlib imported); only the source, read when the plugin compares versions, is
deflated. With bytecode for another Python (or none), __main__.py imports the module the usual
way, from the source. After a client command it exits without the interpreter's teardown when
nothing is left to run. The archive is byte-identical for the same source and interpreter version:
entries are sorted, timestamps and permissions fixed, the .pyc holds no mtime, and the bytecode is
compiled with a fixed PYTHONHASHSEED (the order of a frozenset constant follows string hashes,
which are randomised per process; before 3.11 that reaches the marshalled code).
Usage: python3 build_zipapp.py [--out PATH] [--if-stale]
  --if-stale: build only when PATH is missing, holds another opensessions.py, or holds bytecode
  for another interpreter (a Python upgrade: every command would compile from source again).
"""
import argparse
import importlib.util
import io
import marshal
import os
import stat
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = b"""import sys


def _code(name):
    \"\"\"The code object in this archive's bytecode/NAME.pyc, or None when that bytecode is for
    another Python or missing (then the module is imported from its source).\"\"\"
    import marshal
    from importlib.util import MAGIC_NUMBER
    try:  # __loader__ is the zipimporter of this archive (not when run from an unpacked directory)
        data = __loader__.get_data(__loader__.archive + "/bytecode/" + name + ".pyc")
    except (AttributeError, OSError):
        return None
    return marshal.loads(memoryview(data)[16:]) if data[:4] == MAGIC_NUMBER else None


def _module(code):
    \"\"\"A module `opensessions` made by running the client part of its bytecode.\"\"\"
    from importlib.machinery import ModuleSpec
    module = type(sys)("opensessions")
    module.__file__ = path = __loader__.archive + "/opensessions.py"
    module.__loader__ = __loader__
    module.__spec__ = ModuleSpec("opensessions", __loader__, origin=path)
    sys.modules["opensessions"] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules["opensessions"]
        raise
    return module


def _rest(module):
    \"\"\"Run the rest of the module's bytecode into it: then it is the whole module.\"\"\"
    code = _code("rest")
    if code is None:  # a partial archive: the module from its source instead
        del sys.modules["opensessions"]
        import opensessions as module
        return module
    exec(code, module.__dict__)
    return module


def _exit(rc, quick):
    \"\"\"Exit with rc. After a client command, with its output flushed, no other thread and no
    atexit callback, skip the interpreter's teardown: freeing every object of the module costs a
    few ms of CPU that nobody waits for.\"\"\"
    import atexit
    import os
    threads = sys.modules.get("threading")
    if quick and (rc is None or type(rc) is int) and (threads is None or threads.active_count() == 1) \\
            and getattr(atexit, "_ncallbacks", lambda: 1)() == 0:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(rc)
        os._exit(rc or 0)
    sys.exit(rc)


_client = _code("client")
if _client is None:
    import opensessions
    _exit(opensessions.main(), False)
opensessions = _module(_client)
del _client
_rc = opensessions.run_client(sys.argv[1:])
if _rc is not None:
    _exit(_rc, True)
opensessions = _rest(opensessions)
_exit(opensessions.main(), opensessions.command_of(sys.argv[1:]) in ("status", "next", "layout", "save"))
"""
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def split(source):
    """-> (client, rest): the module's source down to the end of its Client section, and the rest with
    as many blank lines before it as `client` has lines (its code keeps its line numbers)."""
    lines = source.splitlines(keepends=True)
    banner = b"#" * 78 + b"\n"
    starts = [i for i in range(1, len(lines) - 1) if lines[i - 1] == banner and lines[i].startswith(b"# ")
              and lines[i + 1] == banner]
    client = [i for i in starts if lines[i].startswith(b"# Client")]
    if len(client) != 1 or client[0] == starts[-1]:
        raise SystemExit("build_zipapp: opensessions.py has no Client section followed by another one")
    end = starts[starts.index(client[0]) + 1] - 1
    return b"".join(lines[:end]), b"\n" * end + b"".join(lines[end:])


def pyc(source):
    """Unchecked-hash bytecode (PEP 552): no mtime inside, never compared with the source.
    Compiled in a child with PYTHONHASHSEED=0 unless this process already has that seed."""
    if os.environ.get("PYTHONHASHSEED") != "0":
        import subprocess
        env = dict(os.environ, PYTHONHASHSEED="0")
        return subprocess.run([sys.executable, os.path.abspath(__file__), "--pyc"], input=source, env=env,
                              stdout=subprocess.PIPE, check=True).stdout
    import _imp
    from importlib import _bootstrap_external
    code = compile(source, "opensessions.py", "exec", dont_inherit=True, optimize=0)
    flags = (0b01).to_bytes(4, "little")  # hash-based, check_source = 0
    digest = _imp.source_hash(_bootstrap_external._RAW_MAGIC_NUMBER, source)
    return importlib.util.MAGIC_NUMBER + flags + digest + marshal.dumps(code)


def stale(out_path):
    """-> None when out_path is current, else why it needs a build."""
    try:
        with open(os.path.join(HERE, "opensessions.py"), "rb") as f:
            module = f.read()
        with zipfile.ZipFile(out_path) as zf:
            inside = zf.read("opensessions.py")
            headers = {zf.read("bytecode/%s.pyc" % part)[:4] for part in ("client", "rest")}
    except FileNotFoundError:
        return "missing"
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        return "unreadable (%s)" % e
    if inside != module:
        return "opensessions.py changed"
    if headers != {importlib.util.MAGIC_NUMBER}:
        return "bytecode for another Python"
    return None


def build(out_path):
    with open(os.path.join(HERE, "opensessions.py"), "rb") as f:
        module = f.read()
    buf = io.BytesIO()
    client, rest = split(module)
    entries = [("__main__.py", MAIN), ("opensessions.py", module), ("bytecode/client.pyc", pyc(client)),
               ("bytecode/rest.pyc", pyc(rest))]
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED if name == "opensessions.py" else zipfile.ZIP_STORED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3
            zf.writestr(info, data)
    payload = SHEBANG + buf.getvalue()
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.chmod(tmp, 0o755)
    os.replace(tmp, out_path)
    return out_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "dist", "opensessions.pyz"))
    p.add_argument("--if-stale", action="store_true", help="build only if the archive is missing or out of date")
    p.add_argument("--pyc", action="store_true", help=argparse.SUPPRESS)  # source on stdin -> .pyc on stdout
    args = p.parse_args(argv)
    if args.pyc:
        sys.stdout.buffer.write(pyc(sys.stdin.buffer.read()))
        return 0
    if args.if_stale and stale(args.out) is None:
        return 0
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
