"""The module's shape: the map in its docstring names the sections in order, and no section uses a
name defined in a section below it (the map's claim, checked with ast)."""
import ast
import functools
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "opensessions.py")


@functools.lru_cache(maxsize=4)
def _parse(src):
    """The module's tree, parsed once for the tests here (a second each); nothing changes it."""
    return ast.parse(src)


def _source():
    with open(SOURCE, encoding="utf-8") as f:
        return f.read()


def sections(src):
    """[(first line number, title)] of the banner comments: a line of '#' then '# Title'."""
    lines = src.splitlines()
    out = []
    for i in range(1, len(lines) - 1):
        if lines[i - 1].startswith("#####") and lines[i].startswith("# ") and lines[i + 1].startswith("#####"):
            out.append((i + 1, lines[i][2:].strip()))
    return out


def map_names(src):
    doc = ast.get_docstring(_parse(src))
    return [m.group(1).strip() for m in re.finditer(r"^\s*\d+\.\s+(\S.*?)(?:\s{2,}|$)", doc, re.M)]


def top_level_names(tree, section_of):
    defined = {}
    for node in tree.body:
        names = []
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names = [node.name]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        for name in names:
            defined.setdefault(name, section_of(node.lineno))
    return defined


def upward_uses(src):
    """[(using section, name, defining section)] for every name used above its section."""
    secs = sections(src)
    starts = [line for line, _ in secs]

    def section_of(lineno):
        return max([k for k, start in enumerate(starts) if start <= lineno] or [0])

    tree = _parse(src)
    defined = top_level_names(tree, section_of)
    found = set()
    for node in tree.body:
        here = section_of(node.lineno)
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and defined.get(n.id, -1) > here:
                found.add((secs[here][1], n.id, secs[defined[n.id]][1]))
    return sorted(found)


def test_the_map_names_every_section_in_order():
    src = _source()
    titles = [title for _, title in sections(src)]
    names = map_names(src)
    assert len(names) == len(titles) >= 10, (names, titles)
    for name, title in zip(names, titles):
        assert title.lower().startswith(name.lower()), (name, title)


NUMBERS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
           "nineteen", "twenty")


def test_the_readme_points_to_the_map_and_counts_its_sections():
    """One map, in the module: the README's Development section points to it and says how many
    sections it has, and keeps no map of its own."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    dev = readme[readme.index("## Development"):]
    count = len(map_names(_source()))
    said = re.search(r"Its docstring is the map: (\w+) sections", dev)
    assert said and said.group(1) == NUMBERS[count - 10], (said and said.group(1), count)
    assert not re.search(r"^\s*\d+\.\s+\w", dev, re.M)  # no numbered list of sections here


def test_no_section_uses_a_name_from_a_section_below_it():
    assert upward_uses(_source()) == []


def test_the_checker_finds_an_upward_use():
    src = ("'''map'''\n#####\n# A\n#####\nX = 1\ndef f():\n    return Y\n"
           "#####\n# B\n#####\nY = 2\ndef g():\n    return X\n")
    assert upward_uses(src) == [("A", "Y", "B")]


def test_only_the_gateway_runs_tmux():
    """Every tmux process starts in the gateway section (Tmux.run/spawn/argv, exec_tmux)."""
    src = _source()
    secs = sections(src)
    gateway = next(k for k, (_, t) in enumerate(secs) if t.startswith("tmux gateway"))
    start, end = secs[gateway][0], secs[gateway + 1][0]
    tree = _parse(src)
    runners = {"run", "Popen", "check_output", "check_call", "call", "execvp", "execv", "execlp", "spawnvp"}
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or start <= node.lineno < end:
            continue
        fn = node.func
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
        if name not in runners or not node.args:
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and first.value == "tmux":
            bad.append(node.lineno)
        if isinstance(first, ast.List) and first.elts and isinstance(first.elts[0], ast.Constant) \
                and first.elts[0].value == "tmux":
            bad.append(node.lineno)
    assert bad == []


def test_tests_are_named_by_what_they_test_and_cite_no_issue():
    """A newcomer finds a test by the part it tests: no file named after a stage of the project's
    history, and no issue number in a test's text (the issue tracker is not in the repository)."""
    here = os.path.dirname(os.path.abspath(__file__))
    files = sorted(f for f in os.listdir(here) if f.startswith("test_") and f.endswith(".py"))
    assert not [f for f in files if re.search(r"house|life|rooms|week|issue|stop\d", f)]
    cited = []
    for f in files + ["conftest.py", "sshlab.py"]:
        with open(os.path.join(here, f), encoding="utf-8") as fh:
            cited += ["%s:%d" % (f, n) for n, line in enumerate(fh, 1) if re.search(r"(?i)\bissues? \d", line)]
    assert cited == []
