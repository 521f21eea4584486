"""Resurrect, case by case against tmux-assistant-resurrect (TAR): each case is a real tmux with fake
agents that record their argv: save -> kill-server -> rebuild the panes as tmux-resurrect would ->
restore, then what the pane received (the fake agent's argv and cwd, the pane's screen)."""
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile

import pytest

import opensessions as os_
from conftest import fake_agents, retry_until
from test_resurrect import CODEX_ID, OC_ID, U2, U4, World

BASH = "bash --norc --noprofile"


@pytest.fixture
def world(env):
    w = World(env)
    yield w
    w.tmux.kill()


# ---- helpers ---------------------------------------------------------------------------------------

def shell_pane(w, session, cwd, typed=None, rc=None, env=None):
    """A new session whose shell runs `rc` first (the user's .bashrc), then `typed` at the prompt."""
    command = BASH
    if rc:
        path = os.path.join(w.env.base, "rc-%s" % session.replace(" ", "_"))
        with open(path, "w") as f:
            f.write(rc + "\n")
        command = "bash --noprofile --rcfile %s" % shlex.quote(path)
    w.tmux.run("new-session", "-d", "-s", session, "-c", cwd, "-x", "150", "-y", "40", command)
    target = "=%s:0.0" % session
    retry_until(lambda: w.tmux.run("display-message", "-p", "-t", target, "#{pane_current_command}").strip()
                in os_.SHELLS and w.tmux.run("capture-pane", "-p", "-t", target).strip())
    if typed:
        exports = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in (env or {}).items())
        w.tmux.run("send-keys", "-t", target, "-l", ("export %s; " % exports if exports else "") + typed)
        w.tmux.run("send-keys", "-t", target, "Enter")
    return target


def started(w, n, before=0, timeout=15):
    """The next n fake-agent starts: [(pane id, cwd, name, args)]."""
    return retry_until(lambda: (lambda l: l if len(l) >= n else None)(w.log_lines()[before:]), timeout=timeout)


def pane_id(w, target):
    return w.tmux.run("display-message", "-p", "-t", target, "#{pane_id}").strip()


def screen(w, target, history=False):
    args = ["capture-pane", "-p", "-J", "-t", target] + (["-S", "-", "-E", "-"] if history else [])
    return w.tmux.run(*args)


def save(w, snapshot="tmux_resurrect_20261122T030000.txt"):
    if snapshot and not os.path.lexists(os.path.join(w.rdir, "last")):
        os.symlink(snapshot, os.path.join(w.rdir, "last"))
    r = w.cli("save")
    assert r.returncode == 0, r.stderr
    return json.load(open(os.path.realpath(os.path.join(w.rdir, "opensessions_last"))))


def write_sidecar(w, doc):
    with open(os.path.realpath(os.path.join(w.rdir, "opensessions_last")), "w") as f:
        json.dump(doc, f)


def rebuild(w, panes):
    """After kill-server: the seed session, then one session per (name, cwd[, command]) as resurrect
    creates them (`cat <captured contents>; exec <shell>` when it has a pane's contents)."""
    w.tmux.run("new-session", "-d", "-s", "seed", "-c", w.env.home)
    w.configure()
    for p in panes:
        name, cwd = p[0], p[1]
        command = p[2] if len(p) > 2 else None
        w.tmux.run("new-session", "-d", "-s", name, "-c", cwd, "-x", "150", "-y", "40", *([command] if command else []))
    for p in panes:
        target = "=%s:0.0" % p[0]
        retry_until(lambda: w.tmux.run("display-message", "-p", "-t", target, "#{pane_current_command}").strip()
                    in os_.SHELLS and w.tmux.run("capture-pane", "-p", "-t", target).strip())


def agent_pid(w, target):
    """The agent process in that pane (this test's tmux only: other tests run fake agents too)."""
    root = int(w.tmux.run("display-message", "-p", "-t", target, "#{pane_pid}"))
    table = os_.process_table()
    found = os_.agent_in_tree(root, table, os_.children_index(table))
    assert found, "no agent in %s" % target
    return found[1]


def restore(w, *args):
    r = w.cli("restore", *args)
    assert r.returncode == 0, r.stderr
    return r


def claude_pane(w, session, cwd, tid, typed="claude", rc=None):
    return shell_pane(w, session, cwd, typed, rc=rc, env={"FAKE_REGISTRY": w.registry, "FAKE_SESSION": tid})


def wait_registry(w, n):
    retry_until(lambda: len(os.listdir(w.registry)) >= 2 + n)  # 2 from the lab


def tar_sidecar(w, sessions):
    with open(os.path.join(w.rdir, "assistant-sessions.json"), "w") as f:
        json.dump({"timestamp": "2026-02-15T20:34:28Z", "sessions": sessions}, f)


# ---- captured pane contents -------------------------------------------------------------------------

def resurrect_archive(w, contents):
    """pane_contents.tar.gz made exactly as tmux-resurrect makes it (save.sh: tar | gzip)."""
    d = os.path.join(w.rdir, "save", "pane_contents")
    os.makedirs(d)
    for target, text in contents.items():
        with open(os.path.join(d, "pane-" + target), "w") as f:
            f.write(text)
    subprocess.run("tar cf - -C %s ./pane_contents/ | gzip > %s" % (
        shlex.quote(os.path.join(w.rdir, "save")), shlex.quote(os.path.join(w.rdir, "pane_contents.tar.gz"))),
        shell=True, check=True)
    shutil.rmtree(os.path.join(w.rdir, "save"))


def archive_members(w):
    with tarfile.open(os.path.join(w.rdir, "pane_contents.tar.gz")) as t:
        return sorted(m.name for m in t.getmembers() if m.isfile())


def test_captured_pane_contents_stripped_on_save_and_pane_cleared_before_typing(world):
    w = world
    w.start_server()
    claude_pane(w, "pc", w.claude_dir, U4)
    shell_pane(w, "oc", w.env.home, "opencode -s " + OC_ID)
    shell_pane(w, "plain", w.env.home, "echo plain")
    started(w, 2)
    wait_registry(w, 1)
    resurrect_archive(w, {"pc:0.0": "STALE CLAUDE SCREEN\n", "oc:0.0": "STALE OPENCODE SCREEN\n",
                          "plain:0.0": "plain text kept\n", "seed:0.0": "seed\n"})
    inode = os.stat(os.path.join(w.rdir, "pane_contents.tar.gz")).st_ino
    doc = save(w)
    assert {r["session"] for r in doc["records"]} == {"pc", "oc"}
    assert archive_members(w) == ["./pane_contents/pane-plain:0.0", "./pane_contents/pane-seed:0.0"]
    assert os.stat(os.path.join(w.rdir, "pane_contents.tar.gz")).st_ino != inode  # a new file renamed over
    assert "removed 2 agent pane(s) from %s" % os.path.join(w.rdir, "pane_contents.tar.gz") in w.restore_log()

    w.tmux.kill()
    before = len(w.log_lines())
    restore_dir = os.path.join(w.rdir, "restore")
    os.makedirs(restore_dir)
    subprocess.run("gzip -d < %s | tar xf - -C %s" % (shlex.quote(os.path.join(w.rdir, "pane_contents.tar.gz")),
                                                       shlex.quote(restore_dir)), shell=True, check=True)
    plain_file = os.path.join(restore_dir, "pane_contents", "pane-plain:0.0")
    # resurrect prints what it has; an archive from before opensessions took part still holds the
    # old agent screen, as the oc pane shows (screen and scrollback)
    rebuild(w, [("pc", w.claude_dir), ("plain", w.env.home, "cat %s; exec %s" % (shlex.quote(plain_file), BASH)),
                ("oc", w.env.home, "for i in $(seq 1 80); do echo STALE OPENCODE SCREEN $i; done; exec %s" % BASH)])
    assert "STALE" in screen(w, "=oc:0.0", history=True)
    restore(w)
    got = {(p, cwd, name, args) for p, cwd, name, args in started(w, 2, before)}
    assert got == {(pane_id(w, "=pc:0.0"), w.claude_dir, "claude", "--resume " + U4),
                   (pane_id(w, "=oc:0.0"), w.env.home, "opencode", "-s " + OC_ID)}
    for target in ("=oc:0.0", "=pc:0.0"):
        text = screen(w, target, history=True)
        assert "STALE" not in text and "clear" not in text
        assert ("/bin/claude --resume " + U4 if target == "=pc:0.0" else "/bin/opencode -s " + OC_ID) in text
    assert "plain text kept" in screen(w, "=plain:0.0")  # a pane without an agent keeps its contents


# ---- same judgement on save and restore --------------------------------------------------------------

def test_background_one_shots_make_no_pane_busy_on_save_or_restore(world):
    w = world
    w.start_server()
    claude_pane(w, "bg", w.claude_dir, U4)
    shell_pane(w, "oneshot", w.claude_dir, "tail -f /dev/null | claude -p 'one shot' &")
    started(w, 2)
    wait_registry(w, 1)
    doc = save(w)
    assert [r["session"] for r in doc["records"]] == ["bg"]  # save: a background `claude -p` is no agent

    w.tmux.kill()
    rebuild(w, [("bg", w.claude_dir)])
    before = len(w.log_lines())
    for typed in ("tail -f /dev/null | claude -p 'summarize' &", "tail -f /dev/null | opencode run 'fix it' &"):
        w.tmux.run("send-keys", "-t", "=bg:0.0", "-l", typed)
        w.tmux.run("send-keys", "-t", "=bg:0.0", "Enter")
    started(w, 2, before)
    restore(w)
    lines = started(w, 3, before)
    assert [l[1:] for l in lines if "--resume" in l[3]] == [[w.claude_dir, "claude", "--resume " + U4]]
    assert "busy" not in w.restore_log()


# ---- every skipped record logged; bad records skipped, the rest restored -------------------------

def test_bad_records_are_skipped_with_their_reason_and_the_rest_restored(world):
    w = world
    w.start_server()
    shell_pane(w, "good", w.env.home, "opencode -s " + OC_ID)
    started(w, 1)
    doc = save(w)
    good = doc["records"][0]
    doc["records"] = [None, dict(good, cwd=5), dict(good, env=["A=1"]), dict(good, flags=7),
                      {k: v for k, v in good.items() if k != "session"}, dict(good, agent="aider"),
                      dict(good, window="0"), good]
    write_sidecar(w, doc)

    w.tmux.kill()
    rebuild(w, [("good", w.env.home)])
    before = len(w.log_lines())
    r = restore(w, "--dry-run")
    out = r.stdout.decode().splitlines()
    assert out[-1] == "=good:0.0\tcd %s && %s -s %s" % (w.env.home, os.path.join(w.bin, "opencode"), OC_ID)
    assert len([l for l in out if "# skipped:" in l]) == 7
    restore(w)
    assert [l[1:] for l in started(w, 1, before)] == [[w.env.home, "opencode", "-s " + OC_ID]]
    log = w.restore_log()
    for reason in ("record 0: not an object (NoneType); skipped", "record 1 (=good:0.0): cwd is not a string (5); skipped",
                   "record 2 (=good:0.0): env is not an object of strings (['A=1']); skipped",
                   "record 3 (=good:0.0): flags is not a list of strings (7); skipped",
                   "record 4: no session name; skipped", "record 5 (=good:0.0): unknown agent 'aider'; skipped",
                   "record 6: window is not a pane number ('0'); skipped"):
        assert reason in log
    assert "typed 1 of 8" in log

    write_sidecar(w, dict(doc, records=[None]))  # nothing usable: logged, no traceback
    assert restore(w).stderr == b""
    assert "typed 0 of 1" in w.restore_log()


def test_bad_entries_in_assistant_sessions_json_are_skipped_with_their_reason(world):
    w = world
    w.start_server()
    claude_pane(w, "tar", w.claude_dir, U4)  # the agent tmux-assistant-resurrect saved
    started(w, 1)
    entry = {"pane": "tar:0.0", "tool": "claude", "session_id": U4, "cwd": w.claude_dir, "pid": "1",
             "model": "", "cli_args": "--verbose", "env": {"tmux_pane": "%1", "shell": "/bin/zsh"}}
    tar_sidecar(w, [None, dict(entry, tool="aider"), dict(entry, pane="tar"), dict(entry, pane=7),
                    dict(entry, cli_args=3), dict(entry, env=["X=1"]), dict(entry, cwd=5), entry])

    w.tmux.kill()
    rebuild(w, [("tar", w.claude_dir)])
    before = len(w.log_lines())
    restore(w)
    assert [l[1:] for l in started(w, 1, before)] == [[w.claude_dir, "claude", "--verbose --resume " + U4]]
    log = w.restore_log()
    for reason in ("entry 0 is not an object (None); skipped", "entry 1 (tar:0.0): unknown tool 'aider'; skipped",
                   "entry 2: unparsable pane name 'tar' (want session:window.pane); skipped",
                   "entry 3: unparsable pane name 7", "entry 4 (tar:0.0): cli_args is not a string (3); skipped",
                   "entry 5 (tar:0.0): env is not an object (['X=1']); skipped",
                   "entry 6 (tar:0.0): cwd is not a string (5); skipped", "typed 1 of 1"):
        assert reason in log

    with open(os.path.join(w.rdir, "assistant-sessions.json"), "w") as f:
        json.dump([entry], f)
    assert restore(w).stderr == b""
    assert "assistant-sessions.json is a list, not an object" in w.restore_log()


# ---- TAR's cli_args and env ---------------------------------------------------------------------------

def test_tar_cli_args_plain_words_and_only_captured_env(world):
    w = world
    w.start_server()
    # the user reaches claude through an alias that adds --model opus; TAR saved the flags from ps
    alias = "alias claude='claude --model opus'"
    claude_pane(w, "tar", w.claude_dir, U4, rc=alias)
    assert started(w, 1)[0][3] == "--model opus"
    tar_sidecar(w, [{"pane": "tar:0.0", "tool": "claude", "session_id": U4, "cwd": w.claude_dir, "pid": "1",
                     "model": "claude-opus-4-6", "cli_args": "--model opus --append-system-prompt don't",
                     "env": {"tmux_pane": "%1", "shell": "/bin/zsh", "MY_VENV": "/venv/a b", "NODE_ENV": "",
                             "timestamp": "2026-02-15T20:34:28Z"}}])

    w.tmux.kill()
    rebuild(w, [("tar", w.claude_dir, "bash --noprofile --rcfile %s" % shlex.quote(os.path.join(w.env.base, "rc-tar")))])
    before = len(w.log_lines())
    restore(w)
    line = started(w, 1, before)[0]
    # every flag, once (TAR's words split at spaces; `command claude` passes the alias by)
    assert line[1:] == [w.claude_dir, "claude", "--model opus --append-system-prompt don't --resume " + U4]
    log = w.restore_log()
    assert "are not shell-quoted; split at spaces as TAR wrote them" in log
    assert "env timestamp not set again" in log
    assert "MY_VENV='/venv/a b' command claude --model opus --append-system-prompt 'don'\"'\"'t' --resume" in log
    pid = agent_pid(w, "=tar:0.0")
    environ = open("/proc/%d/environ" % pid, "rb").read().split(b"\0")
    assert b"MY_VENV=/venv/a b" in environ
    assert not [e for e in environ if e.startswith((b"shell=", b"tmux_pane=", b"timestamp=", b"NODE_ENV="))]


def test_tar_env_follows_its_capture_option_when_set():
    doc = {"sessions": [{"pane": "s:0.0", "tool": "codex", "session_id": CODEX_ID, "cli_args": "",
                         "env": {"tmux_pane": "%1", "shell": "/bin/sh", "VIRTUAL_ENV": "/v", "http_proxy": "p",
                                 "EDITOR": "vi", "NODE_ENV": ""}}]}
    assert os_.records_from_assistant_sessions(doc)[0]["env"] == {"VIRTUAL_ENV": "/v", "EDITOR": "vi"}
    assert os_.records_from_assistant_sessions(doc, capture_env={"VIRTUAL_ENV", "http_proxy", "NODE_ENV"})[0]["env"] == \
        {"VIRTUAL_ENV": "/v", "http_proxy": "p"}
    assert os_.tar_cli_args("--model 'a b'") == (["--model", "a b"], "shell")
    assert os_.tar_cli_args("--x it's  --y") == (["--x", "it's", "--y"], "whitespace")


# ---- the directory is gone ------------------------------------------------------------------------------

def test_directory_gone_codex_and_opencode_resume_by_id_claude_leaves_the_shell(world):
    w = world
    w.start_server()
    doomed = {a: os.path.join(w.env.base, "doomed-" + a) for a in ("claude", "codex", "opencode")}
    for d in doomed.values():
        os.makedirs(d)
    claude_pane(w, "cl", doomed["claude"], U4)
    shell_pane(w, "cx", doomed["codex"], "codex --full-auto resume " + CODEX_ID)
    shell_pane(w, "oc", doomed["opencode"], "opencode -s " + OC_ID)
    started(w, 3)
    wait_registry(w, 1)
    doc = save(w)
    assert {r["session"]: r["cwd"] for r in doc["records"]} == {"cl": doomed["claude"], "cx": doomed["codex"],
                                                                "oc": doomed["opencode"]}
    w.tmux.kill()
    for d in doomed.values():
        shutil.rmtree(d)
    rebuild(w, [(s, w.env.home) for s in ("cl", "cx", "oc")])  # resurrect's -c falls back too
    before = len(w.log_lines())
    restore(w)
    got = {(p, cwd, name, args) for p, cwd, name, args in started(w, 2, before)}
    assert got == {(pane_id(w, "=cx:0.0"), w.env.home, "codex", "--full-auto resume " + CODEX_ID),
                   (pane_id(w, "=oc:0.0"), w.env.home, "opencode", "-s " + OC_ID)}
    why = "not resuming claude %s: its directory %s is gone" % (U4, doomed["claude"])
    retry_until(lambda: why in screen(w, "=cl:0.0").replace("\n", ""))
    log = w.restore_log()
    assert log.count(why) == 1 and "=cl:0.0: " + why in log
    assert "directory %s is gone; codex resumes by id from the pane's directory" % doomed["codex"] in log
    assert w.tmux.run("show-options", "-pqv", "-t", "=cl:0.0", "@opensessions-restored").strip() == ""
    assert w.tmux.run("display-message", "-p", "-t", "=cl:0.0", "#{pane_current_command}").strip() == "bash"
    assert "claude" not in screen(w, "=cl:0.0", history=True).replace(why, "")  # nothing typed


# ---- the same program, once ------------------------------------------------------------------------------

def test_the_program_the_agent_ran_with_its_flags_once(world):
    w = world
    w.start_server()
    only = fake_agents(os.path.join(w.env.base, "alias-only"), names=("claude",))  # not on PATH
    alias_rc = "alias claude='%s --dangerously-skip-permissions'" % os.path.join(only, "claude")
    func_rc = 'claude() { command claude --model opus "$@"; }'
    claude_pane(w, "alias", w.claude_dir, U4, rc=alias_rc)
    claude_pane(w, "func", w.claude_dir, U2, rc=func_rc)
    lines = started(w, 2)
    assert sorted(l[3] for l in lines) == ["--dangerously-skip-permissions", "--model opus"]
    wait_registry(w, 2)
    doc = save(w)
    progs = {r["session"]: (r["program"], r["flags"]) for r in doc["records"]}
    assert progs == {"alias": (os.path.join(only, "claude"), ["--dangerously-skip-permissions"]),
                     "func": (os.path.join(w.bin, "claude"), ["--model", "opus"])}

    w.tmux.kill()
    rebuild(w, [(s, w.claude_dir, "bash --noprofile --rcfile %s" % shlex.quote(os.path.join(w.env.base, "rc-" + s)))
                for s in ("alias", "func")])
    before = len(w.log_lines())
    restore(w)
    got = {(p, name, args) for p, cwd, name, args in started(w, 2, before)}
    assert got == {(pane_id(w, "=alias:0.0"), "claude", "--dangerously-skip-permissions --resume " + U4),
                   (pane_id(w, "=func:0.0"), "claude", "--model opus --resume " + U2)}
    typed = screen(w, "=alias:0.0")
    assert "%s --dangerously-skip-permissions --resume %s" % (os.path.join(only, "claude"), U4) in typed


def test_a_program_gone_since_the_save_is_reached_by_command_name(world):
    w = world
    w.start_server()
    moved = fake_agents(os.path.join(w.env.base, "old-install"), names=("opencode",))
    shell_pane(w, "oc", w.env.home, "%s -s %s" % (os.path.join(moved, "opencode"), OC_ID))
    started(w, 1)
    doc = save(w)
    assert doc["records"][0]["program"] == os.path.join(moved, "opencode")
    w.tmux.kill()
    shutil.rmtree(moved)
    rebuild(w, [("oc", w.env.home)])
    before = len(w.log_lines())
    restore(w)
    assert [l[1:] for l in started(w, 1, before)] == [[w.env.home, "opencode", "-s " + OC_ID]]
    assert "program %s is gone; typed `command opencode`" % os.path.join(moved, "opencode") in w.restore_log()


# ---- sidecar name, save without tmux ------------------------------------------------------------------

def test_sidecar_named_by_the_save_time_without_resurrects_last_link(world):
    w = world
    w.start_server()
    shell_pane(w, "oc", w.env.home, "opencode -s " + OC_ID)
    started(w, 1)
    save(w, snapshot=None)
    name = os.readlink(os.path.join(w.rdir, "opensessions_last"))
    assert name != "opensessions_0.json"
    assert re.match(r"^opensessions_\d{8}T\d{6}\.json$", name), name
    w.tmux.kill()
    rebuild(w, [("oc", w.env.home)])
    before = len(w.log_lines())
    restore(w)
    assert [l[1:] for l in started(w, 1, before)] == [[w.env.home, "opencode", "-s " + OC_ID]]


def test_sidecar_stamp():
    assert os_.sidecar_stamp(None, 0) == "19700101T000000"
    assert os_.sidecar_stamp(None, 86400 + 3661) == "19700102T010101"
    assert os_.sidecar_stamp("tmux_resurrect_20261122T030000.txt", 0) == "20261122T030000"
    assert os_.sidecar_stamp("tmux_resurrect_2015-11-22T03:04:05.txt", 0) == "20151122T030405"
    assert os_.sidecar_stamp("custom.txt", 0) == "19700101T000000"


def test_save_without_a_tmux_server_fails_and_writes_nothing(world):
    w = world
    w.start_server()
    shell_pane(w, "oc", w.env.home, "opencode -s " + OC_ID)
    started(w, 1)
    save(w)
    files = {n: open(os.path.join(w.rdir, n), "rb").read() for n in os.listdir(w.rdir) if n.endswith(".json")}
    w.tmux.kill()
    r = w.cli("save")
    assert r.returncode == 1
    assert b"cannot save: no tmux server" in r.stderr and b"nothing written" in r.stderr
    assert r.stdout == b""
    assert {n: open(os.path.join(w.rdir, n), "rb").read() for n in os.listdir(w.rdir) if n.endswith(".json")} == files
    assert not os.path.exists(os.path.join(w.env.home, ".local", "share", "tmux", "resurrect"))
    rebuild(w, [("oc", w.env.home)])  # the earlier save still restores
    before = len(w.log_lines())
    restore(w)
    assert [l[1:] for l in started(w, 1, before)] == [[w.env.home, "opencode", "-s " + OC_ID]]


# ---- control characters -------------------------------------------------------------------------

def test_control_characters_refused_and_shown_escaped(world):
    w = world
    w.start_server()
    pwned = os.path.join(w.env.base, "PWNED")
    evil = os.path.join(w.env.base, "a\x15cd;touch %s;#" % "PWNED")  # ^U erases what was typed before it
    os.makedirs(evil)
    shell_pane(w, "cwd", evil, "claude --resume " + U4)  # (the fake's registry entry would not be JSON here)
    shell_pane(w, "flag", w.env.home, "opencode --port $'1\\x15touch %s' -s %s" % (pwned, OC_ID))
    claude_pane(w, "env", w.claude_dir, U2)
    started(w, 3)
    wait_registry(w, 1)
    doc = save(w)
    recs = {r["session"]: r for r in doc["records"]}
    assert recs["cwd"]["cwd"] == evil and recs["flag"]["flags"] == ["--port", "1\x15touch " + pwned]
    recs["env"]["env"] = {"MY_VENV": "/v\x1b[2J"}
    recs["env"]["model"] = "opus\x9b"
    write_sidecar(w, doc)

    w.tmux.kill()
    rebuild(w, [("cwd", w.env.home), ("flag", w.env.home), ("env", w.claude_dir)])
    before = len(w.log_lines())
    r = restore(w, "--dry-run")
    out = r.stdout.decode()
    assert not os_.CONTROL_CHARS.search(out.replace("\t", "").replace("\n", ""))
    assert "(=cwd:0.0)\t# skipped: control character in cwd" in out and "\\x15cd;touch PWNED;#" in out
    assert "(=flag:0.0)\t# skipped: control character in flag" in out
    assert "(=env:0.0)\t# skipped: control character in model" in out
    recs["env"]["model"] = None
    write_sidecar(w, doc)
    restore(w)
    log = w.restore_log()
    assert "control character in env 'MY_VENV=/v\\x1b[2J'; skipped" in log
    assert "control character in cwd" in log and "control character in flag" in log
    assert not os_.CONTROL_CHARS.search(log.replace("\n", ""))
    assert "typed 0 of 3" in log
    assert w.log_lines()[before:] == [] and not os.path.exists(pwned)
    for s in ("cwd", "flag", "env"):
        assert w.tmux.run("show-options", "-pqv", "-t", "=%s:0.0" % s, "@opensessions-restored").strip() == ""


def test_classification_reads_a_scripts_own_arguments():
    c = os_.classify_agent_process
    assert c("opencode", ["/bin/sh", "/usr/local/bin/opencode", "run", "x"]) is None
    assert c("opencode", ["/bin/sh", "/usr/local/bin/opencode", "-s", OC_ID]) == "opencode"
    assert c("claude", ["/bin/bash", "/opt/claude", "-p", "hi"]) is None
    assert c("codex", ["sh", "/x/codex", "exec", "y"]) is None
