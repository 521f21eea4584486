"""The tmux plugin (opensessions.tmux, tmux-setup) through a week in a user's life, on a real tmux
booted from a ~/.tmux.conf (tmux -f), in order: each test is one step and starts where the one
before left off (a failed step fails the ones after it); then the plugin's first run.

boot with options -> an agent finishes unseen -> looked at -> killed mid-turn -> tmux kill-server
and a fresh server -> `opensessions stop` with sidebars shown -> `uninstall-tmux` with sidebars shown.

Then ~/.tmux.conf edited and sourced again (Booted, one tmux per test): which wins, an option or a
choice made in the sidebar, and the keys a changed @opensessions-key gives back.
"""
import json
import os
import shlex
import signal
import subprocess

import pytest

import opensessions as os_
from conftest import (PYTHON, ROOT, SCRIPT, AttachedClient, Env, TmuxServer, fake_agents, requires_tmux,
                      retry_until)

pytestmark = requires_tmux

THREAD = "5b0c2f4e-6d1a-4c3e-9f2b-7a8d9e0f1a2b"
STATUS_RIGHT = "mine #{@opensessions-status} %H:%M"


class Week(object):
    def __init__(self, base):
        self.env = Env(base)
        self.bin = fake_agents(os.path.join(base, "bin"))
        self.env.vars["PATH"] = self.bin + os.pathsep + self.env.vars["PATH"]
        self.env.vars["OPENSESSIONS_PORT"] = "0"  # any free port: the plugin's server finds it in its runtime file
        self.work = os.path.join(self.env.home, "work", "app")
        os.makedirs(self.work)
        self.conf = os.path.join(self.env.home, ".tmux.conf")
        with open(self.conf, "w") as f:
            f.write("set -g default-command 'bash --norc --noprofile'\n"
                    "set -g @opensessions-width 40\n"
                    "set -g @opensessions-theme nord\n"
                    "set -g status-right %s\n"
                    "run-shell %s\n" % (shlex.quote(STATUS_RIGHT), shlex.quote(os.path.join(ROOT, "opensessions.tmux"))))
        # a returning user: the sidebar was shown last time (and had the default width)
        cfg = os.path.join(self.env.home, ".config", "opensessions")
        os.makedirs(cfg)
        with open(os.path.join(cfg, "ui.json"), "w") as f:
            json.dump({"visible": True, "width": 32}, f)
        self.tmux = TmuxServer(self.env, "week")
        self.runtime = os_.RuntimeFiles(self.tmux.socket, self.env.vars)
        self.server_pids = []
        self.clients = []
        self.agent_pid = None

    # -- tmux ------------------------------------------------------------------------------
    def boot(self, session):
        """What a user's terminal does: the first tmux command starts the server from ~/.tmux.conf."""
        p = subprocess.run(["tmux", "-S", self.tmux.socket, "-f", self.conf, "new-session", "-d", "-s", session,
                            "-x", "200", "-y", "50", "-c", self.work], env=self.env.vars,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert p.returncode == 0 and p.stderr == b"", p.stderr

    def opt(self, *args):
        return self.tmux.run("show-options", "-v", *args, check=False).rstrip("\n")

    def panes(self):
        """[(pane id, session, window, width, sidebar flag, command)] of every pane."""
        out = self.tmux.run("list-panes", "-a", "-F",
                            "#{pane_id}\t#{session_name}\t#{window_id}\t#{pane_width}\t#{@opensessions-sidebar}"
                            "\t#{pane_current_command}")
        return [tuple(l.split("\t")) for l in out.splitlines() if l]

    def sidebars(self):
        return [p for p in self.panes() if p[4] == "1" and not p[1].startswith("_os_")]

    def screen(self, pane):
        return self.tmux.run("capture-pane", "-p", "-t", pane, check=False)

    def attach(self, target):
        c = AttachedClient(self.tmux, target)
        self.clients.append(c)
        return retry_until(self.user_client)

    def back_to_main(self, client):
        """The user goes back to main, and the server knows it (nobody looks at `work` any more)."""
        self.tmux.run("switch-client", "-c", client, "-t", "=main")
        retry_until(lambda: [c["session"] for c in self.state()["clients"]] == ["main"])

    def user_client(self):
        """The attached terminal (not the server's control-mode client)."""
        out = self.tmux.run("list-clients", "-F", "#{client_control_mode} #{client_name}")
        return next((l.split(" ", 1)[1] for l in out.splitlines() if l.startswith("0 ")), None)

    # -- opensessions -----------------------------------------------------------------------
    def server(self):
        info = self.runtime.live_info()
        if info and info["pid"] not in self.server_pids:
            self.server_pids.append(info["pid"])
        return info

    def client(self):
        return os_.Client(retry_until(self.server, timeout=15)["port"])

    def state(self):
        status, body = self.client().request("GET", "/state")
        assert status == 200, body
        return json.loads(body.decode())

    def post(self, path, body):
        status, content = self.client().request("POST", path, body)
        return status, (json.loads(content.decode()) if content.strip() else None)

    def cli(self, *args):
        return subprocess.run([PYTHON, SCRIPT, "-S", self.tmux.socket] + list(args), env=self.env.vars,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)

    def thread(self, state=None):
        state = state or self.state()
        for s in state["sessions"]:
            for t in s["threads"]:
                if t["id"] == THREAD:
                    return dict(t, _session=s["name"])
        for t in state["threads"]:
            if t["id"] == THREAD:
                return dict(t, _session=None)
        return None

    def start_agent(self, session):
        """A process named claude in a fresh window of session: -> (pane id, its pid)."""
        pane = self.tmux.run("new-window", "-d", "-t", "=%s:" % session, "-c", self.work, "-P", "-F",
                             "#{pane_id}", os.path.join(self.bin, "claude")).strip()
        pid = int(retry_until(lambda: self.tmux.run("display-message", "-p", "-t", pane, "#{pane_pid}").strip()))
        retry_until(lambda: any(p["id"] == pane for s in self.state()["sessions"] for w in s["windows"]
                                for p in w["panes"]))  # the server has seen the pane
        return pane, pid

    def close(self):
        for c in self.clients:
            c.close()
        self.tmux.kill()
        for pid in self.server_pids:  # a server the plugin started exits with its tmux server
            try:
                retry_until(lambda: not os_._pid_alive(pid) or _zombie(pid), timeout=10)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ")[1].startswith("Z")
    except OSError:
        return True


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    w = Week(str(tmp_path_factory.mktemp("week")))
    yield w
    w.close()


def test_1_boot_from_tmux_conf_with_options(week):
    week.boot("main")
    info = retry_until(week.server, timeout=15, message="the plugin started no server")
    # from the first session on: the first sidebar is 40 wide, the theme is nord
    first = retry_until(week.sidebars, timeout=10, message="no sidebar appeared")
    assert [p[3] for p in first] == ["40"], first
    ui = week.state()["ui"]
    assert (ui["width"], ui["theme"]) == (40, "nord")
    # no error at boot, and the one-shot hook that waited for the first session is gone
    messages = week.tmux.run("show-messages")
    assert "no sessions" not in messages and "opensessions:" not in messages, messages
    assert [l for l in messages.splitlines() if " command: " not in l] == [], messages  # no message at all
    assert os_.BOOT_HOOK not in week.tmux.run("show-hooks", "-g")
    assert week.opt("-g", "status-right") == STATUS_RIGHT
    assert info["digest"] == os_.program_digest(SCRIPT)  # the .pyz it runs is the same source
    # the README's first command, run now, does not restart the server (same source, same version)
    r = week.cli()
    assert r.returncode == 0, r.stderr
    assert week.server()["pid"] == info["pid"]


def test_2_an_agent_finishes_unseen(week):
    week.attach("main")  # the user looks at main; the agent works in another session
    week.tmux.run("new-session", "-d", "-s", "work", "-c", week.work)
    week.pane, week.agent_pid = week.start_agent("work")
    assert week.post("/api/agent-event", {"agent": "claude", "status": "running", "threadId": THREAD,
                                          "pid": week.agent_pid, "projectDir": week.work,
                                          "prompt": "fix the login bug"})[0] == 204
    t = retry_until(lambda: (lambda t: t if t and t["pane"] == week.pane else None)(week.thread()))
    assert t["_session"] == "work" and t["status"] == "running" and t["alive"]
    assert retry_until(lambda: week.opt("-g", "@opensessions-running") == "1")
    assert week.post("/api/agent-event", {"agent": "claude", "status": "done", "threadId": THREAD,
                                          "pid": week.agent_pid})[0] == 204
    t = retry_until(lambda: (lambda t: t if t["status"] == "done" else None)(week.thread()))
    assert t["unseen"] is True
    assert retry_until(lambda: week.opt("-g", "@opensessions-unseen") == "1")
    assert week.opt("-g", "@opensessions-running") == "0"


def test_3_looked_at(week):
    client = week.user_client()
    week.tmux.run("select-window", "-t", week.pane)
    week.tmux.run("switch-client", "-c", client, "-t", "=work")
    t = retry_until(lambda: (lambda t: t if not t["unseen"] else None)(week.thread()))
    assert t["status"] == "done" and t["_session"] == "work"
    assert retry_until(lambda: week.opt("-g", "@opensessions-unseen") == "0")
    week.back_to_main(client)


def test_4_killed_mid_turn(week):
    assert week.post("/api/agent-event", {"agent": "claude", "status": "running", "threadId": THREAD,
                                          "pid": week.agent_pid})[0] == 204
    retry_until(lambda: week.thread()["status"] == "running")
    os.kill(week.agent_pid, signal.SIGKILL)
    retry_until(lambda: not os_._pid_alive(week.agent_pid) or _zombie(week.agent_pid))
    # within 2 s of its death the thread says so and leaves the running count; it stays in its session
    t = retry_until(lambda: (lambda t: t if not t["alive"] else None)(week.thread()), timeout=2.5,
                    message="the killed agent still counts as alive")
    assert t["status"] == "interrupted" and t["_session"] == "work", t
    assert retry_until(lambda: week.opt("-g", "@opensessions-running") == "0")
    assert t["unseen"] is True  # interrupted while nobody looked
    client = week.user_client()  # the user looks at it: its pane closed with it, so at its session
    week.tmux.run("switch-client", "-c", client, "-t", "=work")
    retry_until(lambda: not week.thread()["unseen"])
    week.back_to_main(client)


def test_5_tmux_kill_server_and_a_fresh_server(week):
    before = week.thread()
    old_pane = before["pane"] or week.pane
    old_server = week.server()["pid"]
    week.tmux.kill()
    retry_until(lambda: not os_._pid_alive(old_server) or _zombie(old_server), timeout=10,
                message="the server outlived its tmux server")
    # a fresh tmux server from the same ~/.tmux.conf: pane ids start again at %0
    week.boot("fresh")
    retry_until(week.server, timeout=15)
    while int(week.tmux.run("new-window", "-d", "-t", "=fresh:", "-P", "-F", "#{pane_id}")[1:]) \
            < int(old_pane[1:]):
        pass
    assert any(p[0] == old_pane and p[1] == "fresh" for p in week.panes())  # someone else's pane now
    t = week.thread()
    # keeps its session name, points at no pane; seen stays seen, its age is not reset
    assert t["session"] == "work" and t["pane"] is None and t["alive"] is False, t
    assert t["unseen"] is False and t["updatedAt"] == before["updatedAt"]
    # `next` and the sidebar's Enter have no pane to jump to: nothing sends the user to `fresh`
    assert all(x.get("pane") != old_pane for s in week.state()["sessions"] for x in s["threads"])


def test_6_stop_with_sidebars_shown(week):
    retry_until(lambda: len(week.sidebars()) >= 2, timeout=10)  # one per window of `fresh`
    client = week.attach("fresh")
    pid = week.server()["pid"]
    r = week.cli("stop")
    assert r.returncode == 0 and "stopped" in r.stdout.decode(), r.stderr
    panes = [p[0] for p in week.sidebars()]
    # every sidebar says so, calmly, on one line (and nothing of a log in its pane)
    for pane in panes:
        retry_until(lambda: "stopped: prefix o s starts it" in week.screen(pane), timeout=5,
                    message="sidebar %s shows no stopped line: %r" % (pane, week.screen(pane)))
    assert not os_._pid_alive(pid) or _zombie(pid)
    assert week.runtime.live_info() is None  # no sidebar started it again
    for pane in panes:
        text = week.screen(pane)
        assert "could not" not in text and "20" not in text and text.count("stopped") == 1, text
    # the key it names starts it again: prefix o s, typed into the real client
    for key, table in ((b"\x02", "prefix"), (b"o", "opensessions"), (b"s", "root")):
        os.write(week.clients[-1].master, key)
        retry_until(lambda: week.tmux.run("display-message", "-p", "-c", client, "#{client_key_table}").strip() == table)
    info = retry_until(week.server, timeout=15, message="prefix o s did not start the server")
    assert info["pid"] != pid
    for pane in panes:
        retry_until(lambda: "stopped" not in week.screen(pane) and "fresh" in week.screen(pane), timeout=10)
    assert client


def test_7_uninstall_tmux_with_sidebars_shown(week):
    # things to take away: a parked sidebar's helper session, live window options, a session option
    assert week.post("/ui", {"visible": False})[0] == 204
    retry_until(lambda: any(p[1].startswith("_os_") for p in week.panes()))
    assert week.post("/ui", {"visible": True})[0] == 204
    retry_until(lambda: len(week.sidebars()) >= 2)
    pane, pid = week.start_agent("fresh")
    assert week.post("/api/agent-event", {"agent": "claude", "status": "running", "threadId": "week-2",
                                          "pid": pid})[0] == 204
    window = week.tmux.run("display-message", "-p", "-t", pane, "#{window_id}").strip()
    retry_until(lambda: week.opt("-w", "-t", window, "@agent_session") == "claude:week-2")
    week.tmux.run("set-option", "-t", "fresh", "@opensessions-theme", "nord")
    sidebar_pids = [int(week.tmux.run("display-message", "-p", "-t", p[0], "#{pane_pid}").strip())
                    for p in week.sidebars()]
    port = week.server()["port"]

    r = week.cli("uninstall-tmux")
    assert r.returncode == 0, r.stderr
    for spid in sidebar_pids:
        retry_until(lambda: not os_._pid_alive(spid) or _zombie(spid), timeout=10)
    # no server (and none comes back), no sidebar pane, no helper session
    assert week.runtime.live_info() is None
    with pytest.raises(OSError):
        os_.Client(port, timeout=1).request("GET", "/health")
    assert not any(p[4] == "1" for p in week.panes())
    assert not any(name.startswith("_os_") for name in week.tmux.run("list-sessions", "-F", "#{session_name}").split())
    # no option of ours anywhere: global, global window, session, window, pane
    scopes = [("-g",), ("-gw",)]
    scopes += [("-s", "-t", s) for s in week.tmux.run("list-sessions", "-F", "#{session_id}").split()]
    scopes += [("-w", "-t", w) for w in week.tmux.run("list-windows", "-a", "-F", "#{window_id}").split()]
    scopes += [("-p", "-t", p) for p in week.tmux.run("list-panes", "-a", "-F", "#{pane_id}").split()]
    for scope in scopes:
        names = [l.split(" ", 1)[0] for l in week.tmux.run("show-options", *scope).splitlines()]
        assert not [n for n in names if n.startswith("@opensessions") or n == "@agent_session"], (scope, names)
    # no key table, no binding of ours; tmux's own `prefix o` is back; hooks and status-right as found
    assert week.tmux.run("list-keys", "-T", "opensessions", check=False) == ""
    keys = week.tmux.run("list-keys")
    assert "opensessions" not in keys
    assert "select-pane -t :.+" in week.tmux.run("list-keys", "-T", "prefix", "o")
    assert os_.BOOT_HOOK not in week.tmux.run("show-hooks", "-g")
    assert [l for l in week.tmux.run("show-options", "-g").splitlines() if "opensessions" in l] == \
        ["status-right %s" % shlex.quote(STATUS_RIGHT).replace("'", '"')]  # the user's own: given back as found
    assert week.opt("-g", "status-right") == STATUS_RIGHT
    # and it stays gone: whatever was still running has ended, nothing came back
    assert week.runtime.live_info() is None and not any(p[4] == "1" for p in week.panes())


def test_the_plugins_first_run_shows_the_sidebars(tmp_path):
    """A new user (no ui.json): the sidebars are there from the first session the plugin sees, and
    the choice is kept; a user who hid them (visible false) keeps them hidden."""
    w = Week(str(tmp_path))
    try:
        os.unlink(os.path.join(w.env.home, ".config", "opensessions", "ui.json"))
        w.boot("main")
        first = retry_until(w.sidebars, timeout=15, message="no sidebar on the plugin's first run")
        assert [p[3] for p in first] == ["40"]
        assert retry_until(lambda: w.state()["ui"]["visible"]) is True
        retry_until(lambda: not os_._first_run(w.env.vars), message="the choice was not kept in ui.json")
    finally:
        w.close()


def test_first_run_is_only_when_the_user_never_chose(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert os_._first_run(env) is True
    d = tmp_path / "cfg" / "opensessions"
    d.mkdir(parents=True)
    (d / "ui.json").write_text('{"width": 40}')
    assert os_._first_run(env) is True
    (d / "ui.json").write_text('{"visible": false}')
    assert os_._first_run(env) is False
    (d / "ui.json").write_text('{"visible": tru')  # broken: the user's to mend, not a first run
    assert os_._first_run(env) is False


class Booted(object):
    """A tmux server started from ~/.tmux.conf, as a user's terminal starts it."""

    def __init__(self, base, options, head=""):
        self.env = Env(base)
        self.env.vars["OPENSESSIONS_PORT"] = "0"  # any free port: found through the runtime file
        self.conf = os.path.join(self.env.home, ".tmux.conf")
        self.head = head
        self.write_conf(options)
        self.tmux = TmuxServer(self.env, "boot")
        self.runtime = os_.RuntimeFiles(self.tmux.socket, self.env.vars)
        self.pids = set()
        self.clients = []
        p = subprocess.run(["tmux", "-S", self.tmux.socket, "-f", self.conf, "new-session", "-d", "-s", "main",
                            "-x", "200", "-y", "50", "-c", self.env.home], env=self.env.vars,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        assert p.returncode == 0 and p.stderr == b"", p.stderr
        self.server()

    def write_conf(self, options):
        with open(self.conf, "w") as f:
            f.write("set -g default-command 'sh'\n" + self.head)
            for name, value in options.items():
                f.write("set -g %s %s\n" % (name, shlex.quote(value)))
            f.write("run-shell %s\n" % shlex.quote(os.path.join(ROOT, "opensessions.tmux")))

    def source(self, options):
        """The user edits ~/.tmux.conf and sources it again (prefix : source-file ~/.tmux.conf)."""
        self.write_conf(options)
        p = subprocess.run(["tmux", "-S", self.tmux.socket, "source-file", self.conf], env=self.env.vars,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert p.returncode == 0 and p.stderr == b"", p.stderr

    def server(self):
        info = retry_until(self.runtime.live_info, timeout=15, message="the plugin started no server")
        self.pids.add(info["pid"])
        return info

    def ui(self):
        status, body = os_.Client(self.server()["port"]).request("GET", "/state")
        assert status == 200
        return json.loads(body.decode())["ui"]

    def post(self, path, body):
        return os_.Client(self.server()["port"]).request("POST", path, body)[0]

    def cli(self, *args):
        return subprocess.run([PYTHON, SCRIPT, "-S", self.tmux.socket] + list(args), env=self.env.vars,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)

    def keys(self, table, key=None):
        out = self.tmux.run("list-keys", "-T", table, *([key] if key else []), check=False)
        return [l.split(None, 4)[3:] for l in out.splitlines()]

    def close(self):
        for c in self.clients:
            c.close()
        self.tmux.kill()
        for pid in self.pids:  # a server the plugin started exits with its tmux server
            try:
                retry_until(lambda: not os_._pid_alive(pid) or _zombie(pid), timeout=10)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def boot(tmp_path):
    made = []

    def start(options, head=""):
        b = Booted(str(tmp_path / ("boot%d" % len(made))), options, head)
        made.append(b)
        return b
    yield start
    for b in made:
        b.close()


def test_an_option_is_applied_when_it_changes_and_an_in_app_choice_holds_otherwise():
    last = {"theme": "nord", "width": 40}
    ui = {"theme": "dracula", "width": 50}  # picked with t, set through POST /ui
    assert os_.tmux_ui_change({"theme": "nord", "width": 40}, last, ui) == ({}, last)  # a restart, a re-source
    assert os_.tmux_ui_change({"theme": "gruvbox-dark", "width": 40}, last, ui) == \
        ({"theme": "gruvbox-dark"}, {"theme": "gruvbox-dark", "width": 40})  # the option was edited
    # an option taken out of ~/.tmux.conf is forgotten: put back, it is applied again
    assert os_.tmux_ui_change({"theme": "nord"}, last, ui) == ({}, {"theme": "nord"})
    assert os_.tmux_ui_change({"theme": "nord", "width": 40}, {"theme": "nord"}, ui) == \
        ({"width": 40}, {"theme": "nord", "width": 40})
    assert os_.tmux_ui_change({"theme": "nord"}, None, {"theme": "nord"}) == ({}, {"theme": "nord"})
    # unset options are not preferences: the defaults of width, side and theme are empty
    assert os_.ui_from_tmux_options(dict(os_.TMUX_OPTIONS)) == {}


def test_a_theme_picked_with_t_and_a_width_set_by_post_ui_hold_across_restarts(boot):
    b = boot({"@opensessions-theme": "nord", "@opensessions-width": "40"})
    assert (b.ui()["theme"], b.ui()["width"]) == ("nord", 40)  # the file, at boot
    # the user shows the sidebar, focuses it and picks dracula with t (themes are listed by name)
    client = AttachedClient(b.tmux, "=main")
    b.clients.append(client)
    assert b.cli("focus").returncode == 0
    sb = retry_until(lambda: [l.split()[0] for l in b.tmux.run("list-panes", "-t", "=main:", "-F",
                                                                  "#{pane_id} #{@opensessions-sidebar} "
                                                                  "#{pane_current_command}").splitlines()
                              if l.split()[1:] == ["1", "python3"]], timeout=15)[0]
    retry_until(lambda: "opensessions" in b.tmux.run("capture-pane", "-p", "-t", sb))
    b.tmux.run("send-keys", "-t", sb, "t")
    retry_until(lambda: "> nord" in b.tmux.run("capture-pane", "-p", "-t", sb))
    b.tmux.run("send-keys", "-t", sb, "k")
    b.tmux.run("send-keys", "-t", sb, "k")
    retry_until(lambda: "> dracula" in b.tmux.run("capture-pane", "-p", "-t", sb))
    b.tmux.run("send-keys", "-t", sb, "Enter")
    retry_until(lambda: b.ui()["theme"] == "dracula")
    assert b.post("/ui", {"width": 50}) == 204
    # the server restarts (stop / start, as after an update): both hold
    first = b.server()["pid"]
    assert b.cli("stop").returncode == 0
    assert b.cli("start").returncode == 0
    assert b.server()["pid"] != first
    assert (b.ui()["theme"], b.ui()["width"]) == ("dracula", 50)
    retry_until(lambda: b.tmux.run("display-message", "-p", "-t", sb, "#{pane_width}").strip() == "50")
    # ~/.tmux.conf sourced again, unchanged: both still hold
    b.source({"@opensessions-theme": "nord", "@opensessions-width": "40"})
    assert (b.ui()["theme"], b.ui()["width"]) == ("dracula", 50)
    # the user edits the theme option: it is applied (the width option did not change: 50 holds)
    b.source({"@opensessions-theme": "gruvbox-dark", "@opensessions-width": "40"})
    retry_until(lambda: b.ui()["theme"] == "gruvbox-dark")
    assert b.ui()["width"] == 50
    # and at the next boot of tmux itself, the same: the last in-app choice (now the file's) holds
    b.tmux.kill()
    b.__init__(b.env.base, {"@opensessions-theme": "gruvbox-dark", "@opensessions-width": "40"})
    assert (b.ui()["theme"], b.ui()["width"]) == ("gruvbox-dark", 50)


def test_a_changed_prefix_or_popup_key_gives_back_the_old_one(boot):
    b = boot({"@opensessions-focus-key": "M-s"})
    assert b.keys("prefix", "o") == [["o", "switch-client -T opensessions"]]
    assert b.tmux.run("show-options", "-gv", "@opensessions-saved-binding").split() == \
        "bind-key -T prefix o select-pane -t :.+".split()  # tmux's own, which ours replaced
    assert [k[0] for k in b.keys("opensessions") if "popup-open" in k[1] and k[0] != "?"] == ["g"]
    assert '"agents popup" g ' in b.keys("opensessions", "?")[0][1]  # prefix o ?: the menu of the keys
    assert "focus" in b.keys("root", "M-s")[0][1]
    # ~/.tmux.conf edited: another prefix key, popup key and focus key, then sourced
    b.source({"@opensessions-key": "a", "@opensessions-popup-key": "w", "@opensessions-focus-key": "M-f"})
    assert b.keys("prefix", "a") == [["a", "switch-client -T opensessions"]]
    assert b.keys("prefix", "o") == [["o", "select-pane -t :.+"]]  # given back
    assert [k[0] for k in b.keys("opensessions") if "popup-open" in k[1] and k[0] != "?"] == ["w"]  # g is gone
    assert '"agents popup" w ' in b.keys("opensessions", "?")[0][1]
    assert b.keys("root", "M-s") == [] and "focus" in b.keys("root", "M-f")[0][1]
    # back to o, no focus key (a line taken out of the file leaves its option set until tmux restarts:
    # the user writes the default, or an empty value): a, unbound before us, is unbound again
    b.source({"@opensessions-key": "o", "@opensessions-popup-key": "w", "@opensessions-focus-key": ""})
    assert b.keys("prefix", "o") == [["o", "switch-client -T opensessions"]]
    assert b.keys("prefix", "a") == [] and b.keys("root", "M-f") == []
    assert "opensessions" not in b.tmux.run("list-keys", "-T", "root")
    # uninstall-tmux gives o back once more
    assert b.cli("uninstall-tmux").returncode == 0
    assert b.keys("prefix", "o") == [["o", "select-pane -t :.+"]]


def test_the_users_own_o_binding_comes_back(boot):
    b = boot({}, head="bind-key o display-message 'my own o'\n")
    assert b.keys("prefix", "o") == [["o", "switch-client -T opensessions"]]
    # the user moves our key to a and takes the o line out of the file: sourcing it again gives o
    # back the binding ours replaced at boot
    b.head = ""
    b.source({"@opensessions-key": "a"})
    assert b.keys("prefix", "o") == [["o", 'display-message "my own o"']]
    assert b.keys("prefix", "a") == [["a", "switch-client -T opensessions"]]
