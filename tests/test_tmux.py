"""tmux gateway and parsers against a real tmux server on a private socket; our @opensessions-*
options."""
import os
import socket
import subprocess
import time

import opensessions as os_
from conftest import retry_until


def test_snapshot_reads_sessions_windows_panes(tmux, env):
    tmux.new_session("two words", cwd="/")
    tmux.run("new-window", "-t", "=two words", "-c", env.home)
    tmux.run("rename-window", "-t", "=two words:1", "we\x1fird")
    sessions, clients = tmux.tmux.snapshot()
    names = [s["name"] for s in sessions]
    assert names == ["main", "two words"]
    two = sessions[1]
    assert two["id"].startswith("$") and two["created"] > 0 and two["attached"] == 0
    assert [w["index"] for w in two["windows"]] == [0, 1]
    assert two["windows"][1]["name"] == "we\\037ird"  # control chars come escaped: FS stays safe
    pane = two["windows"][1]["panes"][0]
    assert pane["id"].startswith("%") and pane["pid"] > 0 and pane["tty"].startswith("/dev/")
    assert pane["cwd"] == env.home and pane["command"] and pane["active"] is True
    assert two["dir"] == env.home  # the active window's active pane
    assert clients == []


def test_gateway_reports_gone_server(env):
    t = os_.Tmux(os.path.join(env.base, "nothing.sock"))
    assert not t.alive()
    try:
        t.snapshot()
    except os_.TmuxGone:
        pass
    else:
        raise AssertionError("expected TmuxGone")


def test_gateway_error_keeps_message(tmux):
    try:
        tmux.tmux.run("kill-session", "-t", "=no-such-session")
    except os_.TmuxGone:
        raise AssertionError("a failing command is not a gone server")
    except os_.TmuxError as e:
        assert "no-such-session" in str(e) or "can't find" in str(e)


def test_parse_control_lines():
    assert os_.parse_control_line("%sessions-changed") == ("sessions-changed", "")
    assert os_.parse_control_line("%session-renamed $1 new name") == ("session-renamed", "$1 new name")
    assert os_.parse_control_line("%subscription-changed os $0 - - - : %0=1=bash=/a b;") == \
        ("subscription-changed", ("os", "%0=1=bash=/a b;"))
    assert os_.parse_control_line("%begin 1 2 1")[0] == "begin"
    assert os_.parse_control_line("plain output") is None


class _LengthPrefixed(object):
    """Builds records as tmux prints PANES_FORMAT / CLIENTS_FORMAT: each field '<bytes>:<value>'."""

    @staticmethod
    def join(parts):
        return parts[0] + "".join("%d:%s" % (len(v.encode()), v) for v in parts[1:])


def test_parse_snapshot_hides_control_clients_from_attached():
    fs = _LengthPrefixed
    out = "\n".join([
        fs.join(["P", "$1", "s", "100", "@1", "0", "w", "1", "%1", "0", "11", "/dev/pts/1", "/x", "bash", "t", "1",
                 "80", "24", "", "80", "", "33", "0", "24", ""]),
        fs.join(["P", "$1", "s", "100", "@1", "0", "w", "1", "%2", "1", "12", "/dev/pts/2", "/y", "python3", "os", "0",
                 "32", "24", "1", "80", "@1", "0", "0", "24", "1"]),
        fs.join(["C", "/dev/pts/9", "/dev/pts/9", "0", "50", "$1", "s", "@1", "%1", "5", "attached,focused,UTF-8"]),
        fs.join(["C", "client-77", "", "1", "77", "$1", "s", "@1", "%1", "5",
                 "attached,control-mode,ignore-size,no-output,read-only"]),
        "garbage line",
    ])
    sessions, clients = os_.parse_snapshot(out)
    assert sessions[0]["attached"] == 1
    panes = sessions[0]["windows"][0]["panes"]
    assert [p["sidebar"] for p in panes] == [False, True] and panes[1]["width"] == 32
    assert sessions[0]["dir"] == "/x"  # a sidebar pane is never the session's directory
    assert [c["control"] for c in clients] == [False, True]
    assert [p["sidebarAsleep"] for p in panes] == [False, True] and [c["noOutput"] for c in clients] == [False, True]


def test_proc_stat_parser_handles_odd_comm():
    pid, comm, ppid, start = os_.parse_proc_stat("42 (a) b (c)) S 7 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 999 0 0")
    assert (pid, comm, ppid, start) == (42, "a) b (c)", 7, 999)


def test_process_table_and_descendants():
    table = os_.process_table()
    me = table[os.getpid()]
    assert me.ppid == os.getppid()
    kids = os_.children_index(table)
    assert os.getpid() in os_.descendants(os.getppid(), kids)
    assert os_.process_args(os.getpid())


def test_listening_port_is_found_for_own_pid():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        assert port in os_.listening_sockets().values()
        assert os_.ports_for_pids({"me": [os.getpid()]}) == {"me": [port]}
    finally:
        s.close()


def test_netlink_and_proc_agree_on_listeners():
    s4, s6, far = socket.socket(), socket.socket(socket.AF_INET6), socket.socket()
    try:
        s4.bind(("127.0.0.1", 0))
        s6.bind(("::1", 0))
        s4.listen(1)
        s6.listen(1)
        via_proc = {}
        for name in ("tcp", "tcp6"):
            with open("/proc/net/" + name) as f:
                via_proc.update(os_.parse_proc_net_tcp(f.read()))
        via_netlink = os_.listening_sockets_netlink()
        assert via_netlink == via_proc
        assert {s4.getsockname()[1], s6.getsockname()[1]} <= set(via_netlink.values())
    finally:
        for s in (s4, s6, far):
            s.close()


def test_proc_net_tcp_parser_keeps_loopback_and_any_only():
    text = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
            "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 111 1\n"
            "   1: 00000000:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 222 1\n"
            "   2: 0A00020F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 333 1\n"
            "   3: 0100007F:1F91 0100007F:D431 01 00000000:00000000 00:00000000 00000000  0 0 444 1\n")
    assert os_.parse_proc_net_tcp(text) == {111: 8080, 222: 3000}


def test_git_branch_and_worktree(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/feature/x\n")
    (repo / "sub").mkdir()
    root, gitdir = os_.find_git_dir(str(repo / "sub"))
    assert root == str(repo) and os_.read_git_branch(gitdir) == "feature/x"
    wt = tmp_path / "wt"
    wt.mkdir()
    (repo / ".git" / "worktrees" / "wt").mkdir(parents=True)
    (repo / ".git" / "worktrees" / "wt" / "HEAD").write_text("0123456789abcdef\n")
    (wt / ".git").write_text("gitdir: %s\n" % (repo / ".git" / "worktrees" / "wt"))
    assert os_.GitProbe().branch(str(wt)) == "0123456"
    assert os_.find_git_dir(str(tmp_path / "nowhere")) == (None, None)


def test_git_dirty_runs_git_only_when_index_changes(tmp_path):
    import subprocess
    repo = str(tmp_path / "r")
    subprocess.run(["git", "init", "-q", repo], check=True)
    probe = os_.GitProbe(clock=lambda: 1000.0, min_interval=0)
    assert probe.dirty_cached(repo) == (None, True)
    assert probe.check_dirty(repo) is False
    assert probe.dirty_cached(repo) == (False, False)  # nothing changed: no new git run needed
    with open(os.path.join(repo, "f"), "w") as f:
        f.write("x")
    subprocess.run(["git", "-C", repo, "add", "f"], check=True)
    assert probe.dirty_cached(repo)[1] is True  # index changed
    assert probe.check_dirty(repo) is True


def test_ui_from_tmux_options_is_what_the_options_say():
    opts = dict(os_.TMUX_OPTIONS)
    assert os_.ui_from_tmux_options(opts) == {}  # nothing set: no preference of the file's
    opts.update({"@opensessions-width": "40", "@opensessions-theme": "nord", "@opensessions-notify": "none",
                 "@opensessions-notify-on": "done, error", "@opensessions-position": "left"})
    assert os_.ui_from_tmux_options(opts) == {"width": 40, "position": "left", "theme": "nord", "notify": [],
                                              "notifyOn": ["done", "error"]}
    opts.update({"@opensessions-width": "5", "@opensessions-theme": "no-such"})
    assert os_.ui_from_tmux_options(opts) == {"position": "left", "notify": [], "notifyOn": ["done", "error"]}


def test_a_tmux_command_is_done_when_its_client_exits():
    """The gateway (and conftest's tmux runs) wait for the client to exit, not for its pipes to
    close: the tmux server holds a copy of a client's stdio until it handles the client's leaving.
    Here a child of the command keeps the pipes open; the output is still whole, the wait ends at
    the grace, and a command that never exits is killed at the timeout."""
    import signal
    p = subprocess.Popen(["sh", "-c", "echo out; echo err >&2; sleep 30 & exit 3"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        t0 = time.monotonic()
        assert os_.command_output(p, 10, grace=0.2) == (b"out\n", b"err\n") and p.returncode == 3
        assert time.monotonic() - t0 < 5
    finally:
        os.killpg(p.pid, signal.SIGKILL)
    p = subprocess.Popen(["sleep", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os_.command_output(p, 0.3)
        raise AssertionError("no timeout")
    except subprocess.TimeoutExpired:
        assert p.returncode == -9
