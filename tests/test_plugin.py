"""The tmux plugin as a user's ~/.tmux.conf drives it (issue 24 §2-§3): a real tmux booted from the file
(tmux -f, as at login), the plugin run by `run-shell`, and the file sourced again after an edit."""
import json
import os
import shlex
import signal
import subprocess

import pytest

import opensessions as os_
from conftest import PYTHON, ROOT, SCRIPT, AttachedClient, Env, TmuxServer, requires_tmux, retry_until

pytestmark = requires_tmux


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
                retry_until(lambda: not os_._pid_alive(pid), timeout=10)
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
    assert [k[0] for k in b.keys("opensessions") if "popup-open" in k[1]] == ["g"]
    assert "focus" in b.keys("root", "M-s")[0][1]
    # ~/.tmux.conf edited: another prefix key, popup key and focus key, then sourced
    b.source({"@opensessions-key": "a", "@opensessions-popup-key": "w", "@opensessions-focus-key": "M-f"})
    assert b.keys("prefix", "a") == [["a", "switch-client -T opensessions"]]
    assert b.keys("prefix", "o") == [["o", "select-pane -t :.+"]]  # given back
    assert [k[0] for k in b.keys("opensessions") if "popup-open" in k[1]] == ["w"]  # g is gone
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
