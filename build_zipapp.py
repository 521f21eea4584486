#!/usr/bin/env python3
"""Build dist/opensessions.pyz: a dependency-free zipapp.

The archive holds opensessions.py and, beside it, its bytecode for the building interpreter as an
unchecked-hash .pyc (PEP 552): a client command starts in milliseconds instead of compiling 400 KB
of source every time. __main__.py reads that bytecode once and runs it as the module
`opensessions`: zipimport would read, inflate and unmarshal it twice (its get_filename loads the
code too), about 10 ms of every command. The .pyc and __main__.py are stored, not deflated, for
the same reason (nor is zlib imported); only the source, read when the plugin compares versions,
is deflated. With bytecode for another Python (or none), __main__.py imports the module the usual
way, from the source. After a quick client command (QUICK in MAIN) it exits without the
interpreter's teardown when nothing is left to run. The archive is byte-identical for the same
source and interpreter version: entries are sorted, timestamps and permissions fixed, the .pyc holds no mtime, and the
bytecode is compiled with a fixed PYTHONHASHSEED (the order of a frozenset constant follows string
hashes, which are randomised per process; before 3.11 that reaches the marshalled code).
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


def _load():
    \"\"\"The module from this archive's opensessions.pyc, read and unmarshalled once; None when that
    bytecode is for another Python (then the module is imported from its source).\"\"\"
    import marshal
    from importlib.machinery import ModuleSpec
    from importlib.util import MAGIC_NUMBER
    try:  # __loader__ is the zipimporter of this archive (not when run from an unpacked directory)
        path = __loader__.archive + "/opensessions.pyc"
        data = __loader__.get_data(path)
    except (AttributeError, OSError):
        return None
    if data[:4] != MAGIC_NUMBER:
        return None
    module = type(sys)("opensessions")
    module.__file__, module.__loader__ = path, __loader__
    module.__spec__ = ModuleSpec("opensessions", __loader__, origin=path)
    sys.modules["opensessions"] = module
    try:
        exec(marshal.loads(memoryview(data)[16:]), module.__dict__)
    except BaseException:
        del sys.modules["opensessions"]
        raise
    return module


# Short-lived commands that hooks, key bindings and scripts run many times a day.
QUICK = frozenset(("hook", "set-status", "set-progress", "log", "clear-log", "notify", "mute", "status", "next",
                   "switch", "focus", "toggle", "layout", "popup-open", "reply", "save"))


def _exit(rc):
    \"\"\"Exit with rc. After a quick command, with its output flushed, no other thread and no atexit
    callback, skip the interpreter's teardown: freeing every object of a 400 KB module costs a few
    ms of CPU that nobody waits for.\"\"\"
    import atexit
    import os
    threads = sys.modules.get("threading")
    if opensessions.command_of(sys.argv[1:]) in QUICK and (rc is None or type(rc) is int) \\
            and (threads is None or threads.active_count() == 1) and getattr(atexit, "_ncallbacks", lambda: 1)() == 0:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            sys.exit(rc)
        os._exit(rc or 0)
    sys.exit(rc)


opensessions = _load()
if opensessions is None:
    import opensessions
_exit(opensessions.main())
"""
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


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
            header = zf.read("opensessions.pyc")[:4]
    except FileNotFoundError:
        return "missing"
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        return "unreadable (%s)" % e
    if inside != module:
        return "opensessions.py changed"
    if header != importlib.util.MAGIC_NUMBER:
        return "bytecode for another Python"
    return None


def build(out_path):
    with open(os.path.join(HERE, "opensessions.py"), "rb") as f:
        module = f.read()
    buf = io.BytesIO()
    entries = [("__main__.py", MAIN), ("opensessions.py", module), ("opensessions.pyc", pyc(module))]
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
