#!/usr/bin/env python3
"""Build dist/opensessions.pyz: a compressed, dependency-free zipapp.

The archive holds opensessions.py and, beside it, its bytecode for the building interpreter as an
unchecked-hash .pyc (PEP 552): zipimport loads that without compiling (a client command starts in
milliseconds instead of compiling 200 KB of source every time), and falls back to the source on
any other Python version. The archive is byte-identical for the same source and interpreter
version: entries are sorted, timestamps and permissions fixed, the .pyc holds no mtime, and the
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
MAIN = b"import sys\nimport opensessions\nsys.exit(opensessions.main())\n"
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
            info.compress_type = zipfile.ZIP_DEFLATED
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
