#!/usr/bin/env python3
"""Build dist/opensessions.pyz: a compressed, dependency-free zipapp.

The archive holds opensessions.py and, beside it, its bytecode for the building interpreter as an
unchecked-hash .pyc (PEP 552): zipimport loads that without compiling (a client command starts in
milliseconds instead of compiling 200 KB of source every time), and falls back to the source on
any other Python version. The archive is byte-identical for the same source and interpreter:
entries are sorted, timestamps and permissions fixed, the .pyc holds no mtime.
Usage: python3 build_zipapp.py [--out PATH]
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
    """Unchecked-hash bytecode (PEP 552): no mtime inside, never compared with the source."""
    import _imp
    from importlib import _bootstrap_external
    code = compile(source, "opensessions.py", "exec", dont_inherit=True, optimize=0)
    flags = (0b01).to_bytes(4, "little")  # hash-based, check_source = 0
    digest = _imp.source_hash(_bootstrap_external._RAW_MAGIC_NUMBER, source)
    return importlib.util.MAGIC_NUMBER + flags + digest + marshal.dumps(code)


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
    args = p.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
