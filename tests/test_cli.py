"""The command line: client commands, start/stop, one-line errors, the hook command, --help,
start-up cost and the plain parser (client commands without argparse)."""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

import opensessions as os_
from conftest import PYTHON, ROOT, SCRIPT, SOURCE, end_process, retry_until


def test_client_commands_change_state(server):
    r = server.cli("set-status", "main", "Deploying", "--tone", "warn")
    assert r.returncode == 0, r.stderr
    r = server.cli("set-progress", "main", "3", "10", "--label", "services")
    assert r.returncode == 0, r.stderr
    r = server.cli("log", "main", "Tests passed", "--source", "ci", "--tone", "success")
    assert r.returncode == 0, r.stderr
    meta = server.session("main")["metadata"]
    assert meta["status"] == {"text": "Deploying", "tone": "warn"}
    assert meta["progress"]["current"] == 3 and meta["progress"]["total"] == 10
    assert meta["logs"][-1]["source"] == "ci"
    assert server.cli("set-progress", "main", "--percent", "40").returncode == 0
    assert server.session("main")["metadata"]["progress"]["percent"] == 40
    assert server.cli("set-status", "main", "--clear").returncode == 0
    assert server.cli("clear-log", "main").returncode == 0
    assert server.cli("notify", "hello", "--session", "main").returncode == 0
    meta = server.session("main")["metadata"]
    assert meta["status"] is None and [l["message"] for l in meta["logs"]] == ["hello"]
    out = server.cli("status", "--json")
    assert json.loads(out.stdout)["sessions"][0]["name"] == "main"
    out = server.cli("status")
    assert out.stdout.splitlines()[1].startswith(b"main")  # under the column labels


def test_client_errors_are_clear(server, env):
    r = server.cli("set-status", "main", "x", "--tone", "loud")
    assert r.returncode == 2 and b"invalid choice" in r.stderr
    r = server.cli("set-progress", "main")
    assert r.returncode == 1 and b"CURRENT TOTAL" in r.stderr
    server.stop()
    r = server.cli("set-status", "main", "x")
    assert r.returncode == 1 and b"cannot reach" in r.stderr and b"Traceback" not in r.stderr


def test_start_and_stop(env, tmux):
    def cli(*args):
        return subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "--port", "0"] + list(args), env=env.vars,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    r = cli("start")
    assert r.returncode == 0 and b"started" in r.stdout, r.stderr
    runtime = os_.RuntimeFiles(tmux.socket, env.vars)
    info = runtime.live_info()
    assert info and info["socket"] == tmux.socket
    r = cli("start")
    assert r.returncode == 0 and b"already running" in r.stdout
    assert runtime.live_info()["pid"] == info["pid"]
    r = cli("stop")
    assert r.returncode == 0 and b"stopped" in r.stdout
    assert runtime.live_info() is None
    r = cli("stop")
    assert r.returncode == 0 and b"no opensessions server" in r.stdout


def test_help_lists_every_command():
    # the source run as a script (the README's first command) and the zipapp the other tests run
    out = subprocess.run([PYTHON, SOURCE, "--help"], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert subprocess.run([PYTHON, SCRIPT, "--help"], stdout=subprocess.PIPE, check=True).stdout.decode() == out
    for cmd in ("server", "start", "stop", "status", "set-status", "set-progress", "log", "clear-log", "notify"):
        assert cmd in out


AGENTS = ("Claude Code", "Codex", "OpenCode", "Amp", "Gemini CLI", "Qwen Code", "Pi")


def test_help_and_the_package_name_all_seven_agents():
    # --help names them from the specs (in AGENT_SPECS order); pyproject.toml says the same
    assert tuple(spec.title for spec in os_.AGENT_SPECS.values()) == AGENTS
    out = subprocess.run([PYTHON, SCRIPT, "--help"], stdout=subprocess.PIPE, check=True).stdout.decode()
    description = " ".join(out.split("\n\n")[1].split())
    assert description.startswith("Live status of AI coding agents (%s)" % ", ".join(AGENTS)), description
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert "(%s)" % ", ".join(AGENTS) in f.read()


def test_usage_of_an_empty_period_and_of_a_negative_one(server):
    r = server.cli("usage", "--since", "0d")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert lines[-2].split() == ["TOTAL", "0", "0", "0", "0", "$0.00"]
    assert lines[-1].startswith("nothing in this period (since ") and lines[-1].endswith(")")
    for argv in (("--since", "-1d"), ("--since=-1d",), ("--since", "-2h", "--json")):
        r = server.cli("usage", *argv)
        assert (r.returncode, r.stdout) == (1, b""), argv
        assert r.stderr.decode() == ("opensessions: --since -%s: how far back cannot be negative; give a duration "
                                     "such as 1d, 7d, 12h (0d: from now, nothing)\n" % argv[-1 if len(argv) < 3 else 1]
                                     .lstrip("-").replace("since=-", "")), argv
    assert os_.negative_since_joined(["usage", "--since", "-1d", "--json"]) == ["usage", "--since=-1d", "--json"]
    assert os_.negative_since_joined(["usage", "--since", "--json"]) == ["usage", "--since", "--json"]


def test_the_sidebar_without_a_terminal_says_so(server, env):
    for argv, what in ((("sidebar",), "sidebar"), (("popup", "-c", "/dev/pts/99"), "popup")):
        r = subprocess.run([PYTHON, SCRIPT, "-S", server.tmux.socket, "--port", str(server.port)] + list(argv),
                           env=server.vars, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=20)
        assert r.returncode == 1 and r.stdout == b"", (argv, r.stdout)  # no curses escape codes
        assert r.stderr.decode().startswith("opensessions: the %s needs a terminal (" % what), r.stderr
        assert b"\x1b" not in r.stderr


def test_client_command_imports_nothing_heavy(server):
    code = ("import sys; sys.argv=['opensessions','-S',%r,'set-status','main','x'];"
            "import opensessions; rc=opensessions.main();"
            "heavy=[m for m in ('curses','sqlite3','http.server','http.client','subprocess','email','argparse',"
            "'socket','shutil') if m in sys.modules]; print(rc, heavy)") % server.tmux.socket
    # -S as hooks and key bindings run it (site's own imports would hide ours)
    r = subprocess.run([PYTHON, "-S", "-c", code], cwd=ROOT, env=server.vars, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20)
    assert r.stdout.decode().strip() == "0 []", r.stdout + r.stderr


def test_import_compiles_no_pattern():
    """The module's regular expressions are compiled on first use, not by importing it."""
    code = ("import opensessions as o; lazy=[n for n, v in vars(o).items() if isinstance(v, o.LazyPattern)];"
            "print(len(lazy), [n for n in lazy if len(vars(getattr(o, n))) > 1])")
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, check=True)
    count, compiled = r.stdout.decode().split(" ", 1)
    assert int(count) >= 10 and compiled.strip() == "[]"
    p = os_.LazyPattern(r"^a(\d+)$")
    assert p.match("a12").group(1) == "12" and p.sub("x", "a1") == "x" and p.match("b") is None
    assert p.match.__self__ is p.search.__self__  # one compiled pattern, its methods kept on the instance


def test_import_has_no_side_effects(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    code = "import opensessions, sys; print(sorted(m for m in ('curses','sqlite3','http.server','subprocess') if m in sys.modules))"
    r = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, check=True)
    assert r.stdout.decode().strip() == "[]"
    assert os.listdir(str(tmp_path)) == []


def _install(env, *args):
    return subprocess.run([PYTHON, SCRIPT] + list(args), env=env.vars, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=20)


def test_install_is_idempotent_keeps_user_entries_and_uninstalls_cleanly(env):
    settings = os.path.join(env.home, ".claude", "settings.json")
    os.makedirs(os.path.dirname(settings))
    user = {"model": "opus", "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "say done"}]}],
                                       "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "lint"}]}]}}
    with open(settings, "w") as f:
        json.dump(user, f)
    r = _install(env, "install")
    assert r.returncode == 0, r.stderr
    cfg = json.load(open(settings))
    assert cfg["model"] == "opus"
    for event in os_.CLAUDE_HOOK_EVENTS:
        ours = [h for g in cfg["hooks"][event] for h in g["hooks"] if h["command"].endswith(" hook claude")]
        assert len(ours) == 1 and "opensessions" in ours[0]["command"]
    assert {"type": "command", "command": "say done"} in [h for g in cfg["hooks"]["Stop"] for h in g["hooks"]]
    assert json.load(open(settings + ".opensessions.bak")) == user
    codex = json.load(open(os.path.join(env.home, ".codex", "hooks.json")))
    assert set(codex["hooks"]) == set(os_.CODEX_HOOK_EVENTS)
    plugin = os.path.join(env.home, ".config", "opencode", "plugins", "opensessions.js")
    assert open(plugin).read() == os_.OPENCODE_PLUGIN
    # again: nothing changes
    before = open(settings).read()
    r = _install(env, "install")
    assert r.returncode == 0 and b"nothing changed" in r.stdout and open(settings).read() == before
    # uninstall leaves exactly the user's entries
    r = _install(env, "uninstall")
    assert r.returncode == 0, r.stderr
    assert json.load(open(settings)) == user
    assert not os.path.exists(plugin)
    assert not os.path.exists(os.path.join(env.home, ".codex", "hooks.json"))  # install created it: gone


def test_install_refuses_invalid_json_and_touches_nothing(env):
    settings = os.path.join(env.home, ".claude", "settings.json")
    os.makedirs(os.path.dirname(settings))
    with open(settings, "w") as f:
        f.write('{"hooks": {,}')
    r = _install(env, "install")
    assert r.returncode == 1 and b"not valid JSON" in r.stderr and b"Traceback" not in r.stderr
    assert open(settings).read() == '{"hooks": {,}'
    assert not os.path.exists(settings + ".opensessions.bak")


def test_installed_hook_command_reports_to_the_server(server, env):
    r = server.cli("install")
    assert r.returncode == 0
    cfg = json.load(open(os.path.join(env.home, ".claude", "settings.json")))
    command = cfg["hooks"]["UserPromptSubmit"][0]["hooks"][0]["command"]
    pane = server.session("main")["windows"][0]["panes"][0]["id"]
    payload = {"session_id": "55555555-5555-4555-8555-555555555555", "hook_event_name": "UserPromptSubmit",
               "prompt": "add tests", "cwd": env.home}
    vars_ = dict(server.vars, TMUX="%s,1,0" % server.tmux.socket, TMUX_PANE=pane)
    r = subprocess.run(command, shell=True, input=json.dumps(payload).encode(), env=vars_,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    assert (r.returncode, r.stderr) == (0, b"")
    t = server.session("main")["threads"][0]
    assert (t["agent"], t["status"], t["title"], t["pane"]) == ("claude", "running", "add tests", pane)


def test_pyz_falls_back_to_source_on_another_python(tmp_path, pyz):
    """The bytecode inside is for the building interpreter; any other one must still run the source
    (both parts for another Python, or only the rest: a command that needs it still runs)."""
    import zipfile
    for bad in (("bytecode/client.pyc", "bytecode/rest.pyc"), ("bytecode/rest.pyc",)):
        other = str(tmp_path / "other.pyz")
        with zipfile.ZipFile(pyz) as src, zipfile.ZipFile(other, "w") as dst:
            for info in src.infolist():
                data = src.read(info.filename)
                if info.filename in bad:
                    data = b"\x00\x00\r\n" + data[4:]  # a magic number no Python has
                dst.writestr(info, data)
        r = subprocess.run([PYTHON, other, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        assert r.returncode == 0 and r.stdout.strip() == b"opensessions " + os_.__version__.encode(), r.stderr
    code = "import sys; sys.path.insert(0, %r); import opensessions; print(type(opensessions.__loader__).__name__)" % pyz
    r = subprocess.run([PYTHON, "-c", code], stdout=subprocess.PIPE, check=True)
    assert r.stdout.strip() == b"zipimporter"


def test_tmux_plugin_builds_the_pyz_and_starts_the_server(env, tmux, tmp_path):
    import shutil as sh
    clone = tmp_path / "plugin"
    clone.mkdir()
    for name in ("opensessions.py", "opensessions.tmux", "build_zipapp.py"):
        sh.copy(os.path.join(ROOT, name), str(clone / name))
    r = subprocess.run(["bash", str(clone / "opensessions.tmux")], env=dict(env.vars, TMUX="%s,1,0" % tmux.socket),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    assert (clone / "dist" / "opensessions.pyz").exists()
    info = retry_until(lambda: os_.RuntimeFiles(tmux.socket, env.vars).live_info(), timeout=10)
    try:
        assert info["digest"] == os_.program_digest(str(clone / "dist" / "opensessions.pyz"))
        keys = tmux.run("list-keys", "-T", "opensessions")
        for key in ("s", "t", "e", "n", "p", "1", "9"):
            assert " %s " % key in keys
        assert "switch-client -T opensessions" in tmux.run("list-keys", "-T", "prefix", "o")
        assert tmux.run("show-options", "-gqv", "@resurrect-hook-post-save-all").strip().endswith(" save")
        # uninstall-tmux: tmux is as before the plugin
        r = subprocess.run([PYTHON, str(clone / "dist" / "opensessions.pyz"), "-S", tmux.socket, "uninstall-tmux"],
                           env=env.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert r.returncode == 0, r.stderr
        assert os_.RuntimeFiles(tmux.socket, env.vars).live_info() is None
        assert "opensessions" not in tmux.run("list-keys")
        assert "@opensessions" not in tmux.run("show-options", "-g")
        assert "@resurrect-hook" not in tmux.run("show-options", "-g")
    finally:
        if os_.RuntimeFiles(tmux.socket, env.vars).live_info():
            os.kill(info["pid"], 15)


def test_lazy_parser_knows_every_command():
    full = os_.build_parser()._subparsers._group_actions[0].choices
    assert set(full) == set(os_.COMMANDS)
    assert os_.command_of(["-S", "/x", "--port", "5", "set-status", "a", "b"]) == "set-status"
    assert os_.command_of(["-S", "status", "log"]) == "log"  # "status" was the socket path
    assert os_.command_of(["--help"]) is None and os_.command_of(["bogus"]) is None
    for name in os_.COMMANDS:
        assert set(os_.build_parser(name)._subparsers._group_actions[0].choices) == {name}


def test_generated_commands_skip_site():
    assert " -S " in os_._self_command()


def test_resurrect_hooks_chain_with_the_users_own(env, tmux):
    assert os_.chain_hook("", "p -S /a/opensessions.pyz save") == "p -S /a/opensessions.pyz save"
    assert os_.chain_hook("my-save.sh", "p /a/opensessions.pyz save") == "my-save.sh ; p /a/opensessions.pyz save"
    assert os_.chain_hook("my.sh ; p /old/opensessions.py save", "p /new/opensessions.pyz save") == \
        "my.sh ; p /new/opensessions.pyz save"
    assert os_.unchain_hook("my.sh ; p /new/opensessions.pyz save") == "my.sh"
    tmux.run("set-option", "-g", "@resurrect-hook-post-save-all", "my-save.sh")
    vars_ = dict(env.vars, TMUX="%s,1,0" % tmux.socket)
    r = subprocess.run([PYTHON, SCRIPT, "--port", "0", "tmux-setup"], env=vars_, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    try:
        value = tmux.run("show-options", "-gqv", "@resurrect-hook-post-save-all").strip()
        assert value.startswith("my-save.sh ; ") and value.endswith(" save")
    finally:
        r = subprocess.run([PYTHON, SCRIPT, "uninstall-tmux"], env=vars_, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        assert r.returncode == 0, r.stderr
    assert tmux.run("show-options", "-gqv", "@resurrect-hook-post-save-all").strip() == "my-save.sh"
    assert tmux.run("show-options", "-gqv", "@resurrect-hook-post-restore-all").strip() == ""


def test_default_command_inside_tmux_shows_the_sidebar(env, tmux):
    vars_ = dict(env.vars, TMUX="%s,1,0" % tmux.socket)
    r = subprocess.run([PYTHON, SCRIPT, "--port", "0"], env=vars_, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    try:
        retry_until(lambda: "1" in tmux.run("list-panes", "-a", "-F", "#{@opensessions-sidebar}").split(), timeout=10)
        assert "switch-client -T opensessions" in tmux.run("list-keys", "-T", "prefix", "o")
    finally:
        subprocess.run([PYTHON, SCRIPT, "uninstall-tmux"], env=vars_, stdout=subprocess.PIPE, timeout=30)
    assert "1" not in tmux.run("list-panes", "-a", "-F", "#{@opensessions-sidebar}").split()


@pytest.mark.skipif(not __import__("shutil").which("node"), reason="node is not installed")
def test_opencode_plugin_finds_the_server_like_python_does(env, tmp_path):
    """The plugin's JavaScript computes the runtime file's name as socket_key() does."""
    sock = str(tmp_path / "odd dir" / "tmux-sock")
    run_dir = os.path.join(env.base, "run", "opensessions")
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    info_path = os.path.join(run_dir, "server-%s.json" % os_.socket_key(sock))
    with open(os.open(info_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:  # a live server: this process
        json.dump({"port": 45678, "token": "ab12", "pid": os.getpid(), "procStart": os_.process_start(os.getpid())}, f)
    plugin = tmp_path / "plugin.mjs"
    plugin.write_text(os_.OPENCODE_PLUGIN + "\nexport { server };\n")
    script = "import(%s).then(m => console.log(JSON.stringify(m.server())))" % json.dumps(plugin.as_uri())

    def run():
        r = subprocess.run(["node", "-e", script], env=dict(env.vars, TMUX=sock + ",123,0"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    assert {k: v for k, v in run().items() if k in ("port", "token")} == {"port": 45678, "token": "ab12"}
    os.chmod(info_path, 0o644)  # a file others could have written: nobody vouches for that port
    assert run() is None


def test_main_job_outside_tmux_starts_a_session_with_the_sidebar(env):
    """The README's first command, run in a terminal outside tmux."""
    import pty
    vars_ = {k: v for k, v in env.vars.items() if not k.startswith("TMUX")}
    vars_.update(TERM="xterm-256color", TMUX_TMPDIR=os.path.join(env.base, "tmp"))
    master, slave = pty.openpty()
    proc = subprocess.Popen([PYTHON, SCRIPT], env=vars_, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)

    def read_terminal():
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass
    drain = __import__("threading").Thread(target=read_terminal, daemon=True)
    tmux = os_.Tmux(os_.tmux_socket_path(environ=vars_))

    def sessions():
        try:  # the socket file is there a moment before the server answers on it ("no server running")
            return tmux.run("list-sessions", "-F", "#{session_name}").split()
        except os_.TmuxError:
            return []
    try:
        drain.start()
        retry_until(lambda: "agents" in sessions(), timeout=15)
        # the name fits tmux's default status-left ("[#{session_name}] ", cut at 10): "[agents] ", not "[opensessi"
        left = tmux.run("display-message", "-p", "-t", "=agents:", "#{T:status-left}")
        assert left.rstrip("\n") == "[agents] " and len(left.rstrip("\n")) <= int(
            tmux.run("show-options", "-gv", "status-left-length"))
        retry_until(lambda: "1" in tmux.run("list-panes", "-a", "-F", "#{@opensessions-sidebar}").split(),
                    timeout=15)
    finally:
        subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket_path, "uninstall-tmux"], env=vars_,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        subprocess.run(["tmux", "-S", tmux.socket_path, "kill-server"], stderr=subprocess.DEVNULL)
        proc.kill()
        proc.wait()
        os.close(master)


# -- the plain parser: the same answers as argparse, or none -----------------------------------------

_PARSERS = {}  # command -> its argparse parser, built once (parse_args leaves a parser as it was)


def _argparse(argv):
    import contextlib
    import io
    command = os_.command_of(argv)
    if command not in _PARSERS:
        _PARSERS[command] = os_.build_parser(command)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return vars(_PARSERS[command].parse_args(argv))
        except SystemExit:
            return None


def _tokens(name):
    flags = [f for e in os_._command_table() if e[0] == name for flags, kw in e[3] for f in flags
             if f.startswith("-")]
    return flags + ["-S", "-L", "--port", "s", "hi there", "3", "2.5", "-5", "nan", "", "-", "--", "warn", "loud",
                    "claude", "=x", "-h", "--help", "--tone=warn", "--tone=", "--clear=1", "--po", "-Sx", "@3", "7391"]


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_plain_parser_agrees_with_argparse(data):
    name = data.draw(st.sampled_from(os_.COMMANDS))
    before = data.draw(st.lists(st.sampled_from(["-S", "/tmp/s", "-L", "x", "--port", "80", "-5", "--tone"]),
                                max_size=4))
    after = data.draw(st.lists(st.sampled_from(_tokens(name)), max_size=7))
    argv = before + [name] + after
    plain = os_.parse_plainly(argv, os_._command_table())
    expected = _argparse(argv)
    if plain is not None:
        assert expected is not None, argv
        assert {k: repr(v) for k, v in vars(plain).items()} == {k: repr(v) for k, v in expected.items()}, argv


@pytest.mark.parametrize("argv", [
    ["-S", "/tmp/s", "set-status", "main", "Deploying", "--tone", "warn"], ["set-status", "main", "--clear"],
    ["set-progress", "main", "3", "10", "--label=services"], ["log", "main", "done", "--source", "ci"],
    ["notify", "hi", "--session", "main"], ["hook", "claude"], ["next", "--display", "-c", "/dev/pts/1"],
    ["switch", "2"], ["status", "--json"], ["mute", "main", "--off"], ["reply", "claude:x", "--text", "go on"],
    ["save"], ["--port", "7391", "clear-log", "main"],
])
def test_the_plain_parser_takes_what_hooks_and_keys_send(argv):
    plain = os_.parse_plainly(argv, os_._command_table())
    assert plain is not None and vars(plain) == _argparse(argv)


def test_the_client_section_runs_its_commands_and_hands_the_rest_to_main(monkeypatch):
    """run_client runs a client command alone (the .pyz runs only the sections down to Client for
    it); anything else is None, before anything is done, so main() parses it with the whole table."""
    table = dict((e[0], e) for e in os_._command_table())
    assert tuple(table) == os_.COMMANDS
    for entry in os_.client_commands():
        assert table[entry[0]] == entry
    ran = []
    monkeypatch.setattr(os_, "cmd_set_status", lambda args: ran.append(vars(args)) or 0)
    clients = os_.client_commands()
    monkeypatch.setattr(os_, "client_commands", lambda: tuple(
        (e[0], os_.cmd_set_status if e[0] == "set-status" else e[1]) + e[2:] for e in clients))
    for argv in (["status", "--json"], ["--version"], ["set-status", "--help"], ["set-status"], [],
                 ["set-status", "main", "--tone", "loud"], ["sidebar"], ["hook", "--help"], ["nope"]):
        assert os_.run_client(argv) is None, argv
    assert ran == []
    assert os_.run_client(["-S", "/tmp/s", "set-status", "main", "hi", "--tone", "warn"]) == 0
    assert ran == [dict(socket_name=None, socket_path="/tmp/s", port=None, session="main", text="hi", tone="warn",
                        clear=False, command="set-status", func=os_.cmd_set_status)]


def test_a_negative_since_is_joined_before_either_parser():
    """`usage --since -1d` is joined into --since=-1d (so parse_since can say why it is refused)
    before main parses it; the plain parser and argparse then read it alike."""
    argv = os_.negative_since_joined(["usage", "--since", "-1d", "--json"])
    assert argv == ["usage", "--since=-1d", "--json"]
    plain = os_.parse_plainly(argv, os_._command_table())
    assert plain is not None and vars(plain) == _argparse(argv) and plain.since == "-1d"
    assert os_.negative_since_joined(["usage", "--since", "1d"]) == ["usage", "--since", "1d"]


def _run(env, argv, extra=None, stdin=None):
    vars_ = dict(env.vars, **(extra or {}))
    vars_.pop("TMUX", None)
    return subprocess.run([PYTHON, SCRIPT] + argv, env=vars_, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


@pytest.mark.parametrize("argv,extra", [
    (["kitty"], None), (["next"], None), (["layout"], None), (["toggle"], None), (["tmux-setup"], None),
    (["uninstall-tmux"], None), (["focus"], None), (["switch", "1"], None),
    (["--port", "99999", "status"], None), (["status", "--port", "-3"], None),
    (["server"], {"OPENSESSIONS_RECENT_DAYS": "abc"}), (["server"], {"OPENSESSIONS_LIST_HOURS": "-1"}),
    (["status"], {"OPENSESSIONS_PORT": "abc"}), (["start"], {"OPENSESSIONS_PORT": "70000"}),
])
def test_user_failures_are_one_line_and_non_zero(env, argv, extra):
    """Without a tmux server (or with a bad setting): one line, no traceback, no doubled prefix."""
    r = _run(env, ["-S", os.path.join(env.base, "no-tmux.sock")] + argv, extra)
    err = r.stderr.decode()
    assert r.returncode != 0, (argv, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("opensessions: ") and "opensessions: opensessions:" not in err, err
    if extra:
        assert list(extra)[0] in err


def test_port_from_the_environment_is_used_not_ignored(env):
    assert os_.env_port({"OPENSESSIONS_PORT": "8123"}) == 8123
    assert os_.env_port({"OPENSESSIONS_PORT": ""}) is None
    assert os_.find_server("/nonexistent/sock", {"OPENSESSIONS_PORT": "8123", "XDG_RUNTIME_DIR": env.base})[0] == 8123
    for bad in ("abc", "-1", "65536", "1.5"):
        with pytest.raises(os_.OpensessionsError, match="OPENSESSIONS_PORT=" + re_escape(bad)):
            os_.env_port({"OPENSESSIONS_PORT": bad})


def re_escape(s):
    import re
    return re.escape(s)


def test_hook_never_fails_the_agent_and_writes_bugs_to_a_bounded_log(env):
    log_path = os.path.join(env.home, ".local/state/opensessions/hook.log")
    # no server: nothing to tell, nothing wrong, nothing logged
    r = _run(env, ["-S", os.path.join(env.base, "x.sock"), "hook", "claude"],
             stdin=b'{"hook_event_name": "Stop", "session_id": "0d3b3f4e-5f4e-4b8e-9a51-5f0c2c1a7e11"}')
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    assert not os.path.exists(log_path)
    # a payload that is not JSON (a bug on one side or the other): exit 0, silent, written down
    r = _run(env, ["-S", os.path.join(env.base, "x.sock"), "hook", "codex"], stdin=b"{not json")
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    with open(log_path) as f:
        text = f.read()
    assert "hook codex failed" in text and "Traceback" in text
    # bounded: many failures never grow it past the limit, and the newest one is kept
    envd = dict(env.vars)
    for i in range(200):
        os_.hook_log("failure %d %s" % (i, "x" * 300), envd, limit=8192)
    assert os.path.getsize(log_path) <= 8192
    with open(log_path) as f:
        lines = f.read().splitlines()
    assert lines[-1].split(" ")[2] == "199" and all(l.count(" ") >= 2 for l in lines)


def test_a_server_stopped_on_purpose_is_not_started_by_a_sidebar(env, tmux, monkeypatch):
    class Args(object):
        socket_name = None
        socket_path = tmux.socket
        port = 0
    monkeypatch.setattr(sys, "argv", [SCRIPT])
    for k in list(os.environ):
        monkeypatch.delenv(k)
    for k, v in env.vars.items():
        monkeypatch.setenv(k, v)
    runtime = os_.RuntimeFiles(tmux.socket)
    runtime.mark_stopped()
    try:
        os_.start_background(Args(), respect_stop=True)
    except os_.ServerStopped:
        pass
    else:
        raise AssertionError("a sidebar started a server stopped on purpose")
    assert runtime.stopped() and runtime.live_info() is None
    port, started = os_.start_background(Args())  # the user's command starts it, and clears the mark
    info = runtime.live_info()
    try:
        assert started and not runtime.stopped()
        assert os_.Client(port).request("GET", "/health")[0] == 200
    finally:
        os.kill(info["pid"], 15)
    retry_until(lambda: runtime.live_info() is None, timeout=10)


def test_a_log_outside_our_dirs_leaves_its_directory_as_it_is(env, tmux, tmp_path):
    # `server --log /tmp/x.log` as root made /tmp 0700: only our own state and runtime dirs are made
    # private. A temp dir stands for the shared one (sticky, world-writable; ours, as /tmp is root's).
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(str(shared), 0o1777)
    log = shared / "x.log"
    proc = subprocess.Popen([PYTHON, SCRIPT, "-S", tmux.socket, "server", "--port", "0", "--log", str(log)],
                            env=env.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        runtime = os_.RuntimeFiles(tmux.socket, env.vars)

        def started():
            assert proc.poll() is None, proc.stderr.read().decode()
            return runtime.live_info()
        retry_until(started, timeout=10, message="server did not start")
        retry_until(lambda: "serving" in log.read_text(), message="nothing logged")
        assert oct(os.stat(str(shared)).st_mode & 0o7777) == oct(0o1777)  # as it was
        assert oct(os.stat(str(log)).st_mode & 0o777) == oct(0o600)  # the log itself is ours alone
    finally:
        end_process(proc)
        for f in (proc.stdout, proc.stderr):
            f.close()
    # our own state dir (and one inside it) is still made private
    state = os_.state_dir(env.vars)
    os.makedirs(os.path.join(state, "logs"), exist_ok=True)
    for d in (state, os.path.join(state, "logs")):
        os.chmod(d, 0o755)
        os_.log_dir_ready(os.path.join(d, "server.log"), env.vars)
        assert oct(os.stat(d).st_mode & 0o777) == oct(0o700)
    # a missing directory elsewhere is made (private: it is new and ours); a symlink planted where the
    # log goes is not written through
    os_.log_dir_ready(str(shared / "new" / "x.log"), env.vars)
    assert oct(os.stat(str(shared / "new")).st_mode & 0o777) == oct(0o700)
    target = tmp_path / "target"
    target.write_text("")
    os.symlink(str(target), str(shared / "planted.log"))
    with pytest.raises(OSError):
        open(str(shared / "planted.log"), "a", opener=os_._log_opener)
    assert target.read_text() == ""


def test_the_readme_command_line_names_every_option_of_each_command():
    """The README's Command line block and `opensessions COMMAND --help` agree: each option of a
    command (its short or long form) is on that command's line there (history's --limit and
    history-popup's -t / --here were missing). --display, --hook and --alive are for the plugin's
    key bindings, its boot hook and the ssh relay, not typed by hand."""
    import argparse
    import re
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        block = f.read().split("\n## Command line", 1)[1].split("```", 2)[1]
    parser = os_.build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    internal = {"--display", "--hook", "--alive", "--help", "-L", "-S", "--port"}
    missing = []
    for name, sub in commands.items():
        lines = " ".join(l for l in block.splitlines()
                         if l.startswith("opensessions ") and re.search(r"(?<![\w-])%s(?![\w-])" % re.escape(name), l))
        assert lines, "no line for %s" % name
        for action in sub._actions:
            strings = set(action.option_strings)
            if strings and not strings & internal and not any(s in lines for s in strings):
                missing.append((name, sorted(strings)))
    assert missing == []
