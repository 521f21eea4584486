"""Resurrect: save -> kill-server -> rebuild panes as tmux-resurrect would -> restore, with fake agents."""
import json
import os
import shlex
import shutil
import subprocess

import pytest

import opensessions as os_
from conftest import PYTHON, SCRIPT, TmuxServer, fake_agents, lab_home, retry_until

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"
U4 = "44444444-4444-4444-8444-444444444444"
CODEX_ID = "01a200ee-fa97-79d0-9e17-4806385eaaf9"
OC_ID = "ses_dff0ffa93ffebtZJZGz5f4eDGC"


def test_launch_flags_drop_every_resume_form_and_prompts():
    f = os_.launch_flags
    assert f("claude", ["claude", "--permission-mode", "default", "--resume", U4, "--model", "opus"]) == \
        (["--permission-mode", "default", "--model", "opus"], ["--resume", U4])
    assert f("claude", ["claude", "--dangerously-skip-permissions", "-c", "fix the bug"]) == \
        (["--dangerously-skip-permissions"], ["-c", "fix the bug"])
    assert f("claude", ["claude", "--session-id=" + U4, "--fork-session", "-r", U1])[0] == []
    assert f("codex", ["codex", "--full-auto", "-c", "model=o3", "resume", CODEX_ID]) == \
        (["--full-auto", "-c", "model=o3"], ["resume", CODEX_ID])
    assert f("opencode", ["opencode", "--port", "0", "-s", OC_ID]) == (["--port", "0"], ["-s", OC_ID])
    assert os_.agent_argv("codex", ["node", "/x/node_modules/.bin/codex", "--full-auto"]) == ["codex", "--full-auto"]
    assert os_.agent_argv("claude", ["/bin/sh", "/t/bin/claude", "-r", U1]) == ["claude", "-r", U1]


def test_resume_command_quotes_and_validates():
    rec = {"agent": "claude", "id": U4, "cwd": "/w/it's $HOME", "flags": ["--model", "a b"], "env": {"VENV": "x'y"}}
    cmd = os_.resume_command(rec)
    assert cmd == "cd '/w/it'\"'\"'s $HOME' && VENV='x'\"'\"'y' command claude --model 'a b' --resume " + U4
    assert shlex.split(cmd)[:2] == ["cd", "/w/it's $HOME"]
    for bad in ("$(reboot)", U4 + "; rm -rf ~", "", None):
        with pytest.raises(ValueError):
            os_.resume_command(dict(rec, id=bad))
    with pytest.raises(ValueError):
        os_.resume_command(dict(rec, env={"BAD NAME": "1"}))
    assert os_.resume_command({"agent": "codex", "id": CODEX_ID, "flags": ["--full-auto"]}) == \
        "command codex --full-auto resume " + CODEX_ID
    assert os_.resume_command({"agent": "opencode", "id": OC_ID}) == "command opencode -s " + OC_ID
    assert os_.resume_command({"agent": "amp", "id": "T-019b9d03-62e3-772f-9780-3e637f90eaec"}) == \
        "command amp threads continue T-019b9d03-62e3-772f-9780-3e637f90eaec"
    assert os_.resume_command({"agent": "opencode", "id": OC_ID, "program": "/opt/my oc/opencode"}) == \
        "'/opt/my oc/opencode' -s " + OC_ID


def test_resurrect_dir_found_as_resurrect_does(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    assert os_.resurrect_dir(lambda n: "", env) == str(tmp_path / "data" / "tmux" / "resurrect")
    (tmp_path / ".tmux" / "resurrect").mkdir(parents=True)
    assert os_.resurrect_dir(lambda n: "", env) == str(tmp_path / ".tmux" / "resurrect")
    assert os_.resurrect_dir(lambda n: "~/r", env) == str(tmp_path / "r")
    assert os_.resurrect_dir(lambda n: "$HOME/s", env) == str(tmp_path / "s")


def test_assistant_sessions_schema_round_trip():
    rec = {"session": "my proj", "window": 0, "paneIndex": 1, "pane": "%3", "agent": "claude", "id": U4,
           "cwd": "/w", "pid": 42, "model": "opus", "flags": ["--model", "a b"], "env": {"VENV": "/v"}}
    doc = os_.assistant_sessions_doc([rec], "2026-11-22T03:00:00Z")
    s = doc["sessions"][0]
    assert s == {"pane": "my proj:0.1", "tool": "claude", "session_id": U4, "cwd": "/w", "pid": "42",
                 "model": "opus", "cli_args": "--model 'a b'", "env": {"VENV": "/v", "tmux_pane": "%3"}}
    back = os_.records_from_assistant_sessions(doc)[0]
    assert (back["session"], back["window"], back["paneIndex"], back["id"], back["flags"], back["env"]) == \
        ("my proj", 0, 1, U4, ["--model", "a b"], {"VENV": "/v"})


# ---- the full cycle ------------------------------------------------------------------------------

class World(object):
    def __init__(self, env):
        self.env = env
        shutil.rmtree(env.home)
        lab_home(env.home)
        self.bin = fake_agents(os.path.join(env.base, "bin"))
        self.log = os.path.join(env.base, "agents.log")
        env.vars["PATH"] = self.bin + os.pathsep + env.vars["PATH"]
        env.vars["FAKE_LOG"] = self.log
        self.input = os.path.join(env.base, "typed.log")  # every line typed into a running fake agent
        env.vars["FAKE_INPUT"] = self.input
        self.rdir = os.path.join(env.base, "resurrect")
        os.makedirs(self.rdir)
        self.claude_dir = os.path.join(env.home, "work", "claude")
        os.makedirs(self.claude_dir)
        self.odd_dir = os.path.join(env.base, "dir with space & $x 'q'")
        os.makedirs(self.odd_dir)
        self.tmux = TmuxServer(env, "res")
        self.registry = os.path.join(env.home, ".claude", "sessions")

    def start_server(self):
        self.tmux.new_session("seed", cwd=self.env.home)
        self.configure()

    def configure(self):
        # panes inherit PATH (with the fake agents) instead of a login shell's profile
        self.tmux.run("set-option", "-g", "default-command", "bash --norc --noprofile")
        self.tmux.run("set-option", "-g", "@resurrect-dir", self.rdir)
        self.tmux.run("set-option", "-g", "@opensessions-resurrect-env", "MY_VENV")

    def pane(self, session, cwd, command, env=None, split=False):
        if split:
            self.tmux.run("split-window", "-t", "=%s:0" % session, "-c", cwd)
            target = "=%s:0.1" % session
        else:
            self.tmux.run("new-session", "-d", "-s", session, "-c", cwd, "-x", "150", "-y", "40")
            target = "=%s:0.0" % session
        exports = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in (env or {}).items())
        retry_until(lambda: self.tmux.run("display-message", "-p", "-t", target, "#{pane_current_command}").strip() in os_.SHELLS)
        self.tmux.run("send-keys", "-t", target, "-l", ("env %s " % exports if exports else "") + command)
        self.tmux.run("send-keys", "-t", target, "Enter")
        return target

    def cli(self, *args):
        return subprocess.run([PYTHON, SCRIPT, "-S", self.tmux.socket] + list(args), env=self.env.vars,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)

    def log_lines(self):
        try:
            with open(self.log) as f:
                return [l.rstrip("\n").split("\t") for l in f if l.strip()]
        except OSError:
            return []

    def restore_log(self):
        p = os.path.join(self.env.home, ".local", "state", "opensessions", "opensessions.log")
        return open(p).read() if os.path.exists(p) else ""


@pytest.fixture
def world(env):
    w = World(env)
    yield w
    w.tmux.kill()


def build(world):
    w = world
    w.start_server()
    rollout = [os.path.join(dp, n) for dp, _, ns in os.walk(os.path.join(w.env.home, ".codex", "sessions"))
               for n in ns if CODEX_ID in n][0]
    # two Claude agents of one kind in one directory: only the registry tells them apart
    w.pane("proj a", w.claude_dir, "claude --permission-mode default",
           {"FAKE_REGISTRY": w.registry, "FAKE_SESSION": U4, "MY_VENV": "/venv/a b"})
    w.pane("proj a", w.claude_dir, "claude --model opus 'write the tests'",
           {"FAKE_REGISTRY": w.registry, "FAKE_SESSION": U2}, split=True)
    # odd names and paths; Codex found by its open rollout file; its -c is --config and stays
    w.pane("it's odd & done", w.odd_dir, "codex --full-auto -c 'model=o 3'", {"FAKE_HOLD": rollout})
    w.pane("oc", w.env.home, "opencode --print-logs -s " + OC_ID)
    w.pane("busy", w.claude_dir, "claude --resume " + U1)
    w.pane("gone", w.claude_dir, "claude", {"FAKE_REGISTRY": w.registry, "FAKE_SESSION": U3})
    w.pane("plain", w.env.home, "true")  # no agent at all
    retry_until(lambda: len(w.log_lines()) == 6, timeout=10)
    retry_until(lambda: len(os.listdir(w.registry)) >= 5)  # 2 from the lab + our 3


def rebuild_as_resurrect_would(world, records):
    w = world
    w.tmux.run("new-session", "-d", "-s", "seed")
    w.configure()
    done = set()
    for r in sorted(records, key=lambda r: (r["session"], r["paneIndex"])):
        if r["session"] not in done:
            command = ["sleep 1000"] if r["session"] == "busy" else []  # a pane busy with something else
            w.tmux.run("new-session", "-d", "-s", r["session"], "-c", r["cwd"], "-x", "150", "-y", "40", *command)
            done.add(r["session"])
        else:
            w.tmux.run("split-window", "-t", "=%s:0" % r["session"], "-c", r["cwd"])


def test_save_kill_restore_cycle(world):
    w = world
    build(w)
    os.symlink("tmux_resurrect_20261122T030000.txt", os.path.join(w.rdir, "last"))
    r = w.cli("save")
    assert r.returncode == 0, r.stderr
    doc = json.load(open(os.path.join(w.rdir, "opensessions_20261122T030000.json")))
    assert os.readlink(os.path.join(w.rdir, "opensessions_last")) == "opensessions_20261122T030000.json"
    recs = {(r["session"], r["paneIndex"]): r for r in doc["records"]}
    assert set(recs) == {("proj a", 0), ("proj a", 1), ("it's odd & done", 0), ("oc", 0), ("busy", 0), ("gone", 0)}
    a0, a1 = recs[("proj a", 0)], recs[("proj a", 1)]
    assert (a0["id"], a0["idSource"], a0["flags"], a0["env"]) == (U4, "claude-registry", ["--permission-mode", "default"],
                                                                  {"MY_VENV": "/venv/a b"})
    assert (a1["id"], a1["flags"], a1["model"]) == (U2, ["--model", "opus"], "opus")  # the prompt is not kept
    cx = recs[("it's odd & done", 0)]
    assert (cx["id"], cx["idSource"], cx["flags"], cx["cwd"]) == (CODEX_ID, "codex-open-rollout",
                                                                  ["--full-auto", "-c", "model=o 3"], w.odd_dir)
    assert (recs[("oc", 0)]["id"], recs[("oc", 0)]["idSource"], recs[("oc", 0)]["flags"]) == (OC_ID, "argv", ["--print-logs"])
    assert all(not r["guess"] for r in doc["records"])
    legacy = json.load(open(os.path.join(w.rdir, "assistant-sessions.json")))
    assert {s["session_id"] for s in legacy["sessions"]} == {U4, U2, U1, U3, CODEX_ID, OC_ID}

    w.tmux.kill()
    os.unlink(os.path.join(w.env.home, ".claude", "projects", os_.claude_project_dir_name(w.claude_dir), U3 + ".jsonl"))
    before = len(w.log_lines())
    rebuild_as_resurrect_would(w, doc["records"])
    r = w.cli("restore")
    assert r.returncode == 0, r.stderr
    started = retry_until(lambda: (lambda l: l if len(l) == 4 else None)(w.log_lines()[before:]), timeout=15)
    pane_of = lambda target: w.tmux.run("display-message", "-p", "-t", target, "#{pane_id}").strip()
    got = {(p, cwd, name, args) for p, cwd, name, args in started}
    assert got == {
        (pane_of("=proj a:0.0"), w.claude_dir, "claude", "--permission-mode default --resume " + U4),
        (pane_of("=proj a:0.1"), w.claude_dir, "claude", "--model opus --resume " + U2),
        (pane_of("=it's odd & done:0.0"), w.odd_dir, "codex", "--full-auto -c model=o 3 resume " + CODEX_ID),
        (pane_of("=oc:0.0"), w.env.home, "opencode", "--print-logs -s " + OC_ID),
    }
    log = w.restore_log()
    assert "busy with sleep" in log and U3 + " no longer exists" in log
    # the environment variable asked for came back too
    def ours(pid):  # this test's fakes (others' test runs on the machine may run the same command)
        try:
            return ("FAKE_LOG=%s\0" % w.log).encode() in open("/proc/%d/environ" % pid, "rb").read()
        except OSError:
            return False
    resumed = [p.pid for p in os_.process_table().values() if p.comm == "claude"
               and "--permission-mode default --resume" in " ".join(os_.process_args(p.pid)) and ours(p.pid)]
    assert len(resumed) == 1
    assert b"MY_VENV=/venv/a b\0" in open("/proc/%d/environ" % resumed[0], "rb").read()
    # a second restore types nothing: a sentinel line typed into each resumed agent after it is the
    # first thing each one reads (tmux hands a pane its keys in order)
    r = w.cli("restore")
    assert r.returncode == 0
    for target in ("=proj a:0.0", "=proj a:0.1", "=it's odd & done:0.0", "=oc:0.0"):
        w.tmux.run("send-keys", "-t", target, "-l", "sentinel " + target)
        w.tmux.run("send-keys", "-t", target, "Enter")
    typed = lambda: [l.rstrip("\n").split("\t", 1)[1] for l in open(w.input)] if os.path.exists(w.input) else []
    retry_until(lambda: sum(l.startswith("sentinel ") for l in typed()) == 4, timeout=10)
    assert sorted(typed()) == sorted("sentinel " + t for t in ("=proj a:0.0", "=proj a:0.1", "=it's odd & done:0.0",
                                                                 "=oc:0.0"))
    assert len(w.log_lines()) == before + 4
    assert "not typing twice" in w.restore_log() or "busy with" in w.restore_log()


def test_empty_save_during_startup_keeps_the_last_one(world):
    w = world
    build(w)
    assert w.cli("save").returncode == 0
    pointer = os.path.join(w.rdir, "opensessions_last")
    first = os.path.realpath(pointer)
    w.tmux.kill()
    w.tmux.new_session("fresh")  # continuum saving right after start: no agents yet
    w.configure()
    r = w.cli("save")
    assert r.returncode == 0
    assert os.path.realpath(pointer) == first
    assert len(json.load(open(first))["records"]) == 6
    assert "keeping it (start-up race)" in w.restore_log()


def test_corrupt_sidecar_falls_back_to_older_good_one(world):
    w = world
    build(w)
    assert w.cli("save").returncode == 0
    good = os.path.realpath(os.path.join(w.rdir, "opensessions_last"))
    newer = os.path.join(w.rdir, "opensessions_99999999T999999.json")
    with open(newer, "w") as f:
        f.write('{"records": [')
    os.unlink(os.path.join(w.rdir, "opensessions_last"))
    os.symlink(os.path.basename(newer), os.path.join(w.rdir, "opensessions_last"))
    w.tmux.kill()
    rebuild_as_resurrect_would(w, json.load(open(good))["records"])
    r = w.cli("restore", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "is corrupt" in w.restore_log() and "older good sidecar" in w.restore_log()
    lines = r.stdout.decode().splitlines()
    assert any(l.startswith("=proj a:0.0\tcd ") and l.endswith("--resume " + U4) for l in lines)
    assert len(w.log_lines()) == 6  # dry run typed nothing


def test_restore_reads_the_assistant_resurrect_schema(world):
    w = world
    w.start_server()
    doc = {"timestamp": "2026-02-15T20:34:28Z", "sessions": [
        {"pane": "legacy:0.0", "tool": "claude", "session_id": U4, "cwd": w.claude_dir, "pid": "1",
         "model": "", "cli_args": "--dangerously-skip-permissions", "env": {"tmux_pane": "%1", "shell": "/bin/zsh"}}]}
    with open(os.path.join(w.rdir, "assistant-sessions.json"), "w") as f:
        json.dump(doc, f)
    w.tmux.run("new-session", "-d", "-s", "legacy", "-c", w.claude_dir)
    r = w.cli("restore")
    assert r.returncode == 0, r.stderr
    line = retry_until(lambda: w.log_lines())[0]
    assert line[1:] == [w.claude_dir, "claude", "--dangerously-skip-permissions --resume " + U4]


def test_cwd_guess_is_marked_and_never_given_twice(world):
    w = world
    w.start_server()
    w.pane("g1", w.claude_dir, "claude")
    w.pane("g2", w.claude_dir, "claude")
    retry_until(lambda: len(w.log_lines()) == 2)
    assert w.cli("save").returncode == 0
    doc = json.load(open(os.path.realpath(os.path.join(w.rdir, "opensessions_last"))))
    ids = [r["id"] for r in doc["records"]]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(r["guess"] and r["idSource"] == "cwd-guess" for r in doc["records"])


def test_kitty_session_file(env, tmux, server):
    tmux.new_session("two words", cwd="/tmp")
    path = os.path.join(env.base, "kitty.session")
    r = server.cli("kitty", "--session-file", path)
    assert r.returncode == 0, r.stderr
    text = open(path).read()
    assert "new_tab two words\ncd /tmp\nlaunch tmux -S %s attach-session -t '=two words'" % shlex.quote(tmux.socket) in text
    assert "new_tab main" in text
    r = subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "kitty"], env=dict(server.vars, PATH="/nonexistent"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert r.returncode == 1 and b"kitten" in r.stderr


def test_a_save_reads_tmux_once(world):
    """Server check, options and panes come from one tmux process (each one more costs a save,
    which tmux-resurrect waits for, a process start)."""
    w = world
    w.start_server()
    lab_entries = set(os.listdir(w.registry))  # the lab HOME's own registry names U4 too
    w.pane("proj a", w.claude_dir, "claude", {"FAKE_REGISTRY": w.registry, "FAKE_SESSION": U4})
    # the fake writes <pid>.json.tmp, then renames it: only the renamed file is the registry's
    retry_until(lambda: any(U4 in open(os.path.join(w.registry, n)).read()
                            for n in os.listdir(w.registry) if n.endswith(".json") and n not in lab_entries))
    calls = []

    class CountingTmux(os_.Tmux):
        def run(self, *args, **kw):
            calls.append(args[0])
            return os_.Tmux.run(self, *args, **kw)
    records, rdir = os_.Resurrect(CountingTmux(w.tmux.socket), environ=w.env.vars).save()
    assert [r["id"] for r in records] == [U4] and rdir == w.rdir
    assert calls == ["display-message"]  # display-message -p OPTIONS ; list-panes -a -F PANES
