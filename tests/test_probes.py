"""System probes: the process table, agent processes and listening ports, on Linux (/proc) and on
the macOS paths (no /proc: ps and lsof), the latter on Linux by injection."""
import json
import os
import subprocess

import opensessions as os_
from conftest import PYTHON, SCRIPT, retry_until


PS_TABLE = """  100     1 -zsh
  200   100 /usr/local/bin/claude
  201   200 node
  300     1 /bin/zsh
  301   300 vite
"""


LSOF = """p201
n127.0.0.1:5173
n*:9229
p301
n192.168.1.5:8080
n[::1]:3000
"""


def fake_macos(calls):
    def run(argv):
        calls.append(argv)
        if argv[:2] == ["ps", "-axo"]:
            return PS_TABLE
        if argv[:3] == ["ps", "-o", "args="]:
            return {"200": "/usr/local/bin/claude --resume 0d3b3f4e-5f4e-4b8e-9a51-5f0c2c1a7e11 'a b'\n"}.get(argv[-1], "")
        if argv[0] == "lsof":
            return LSOF
        raise OSError("no %s here" % argv[0])
    return run


def test_probes_without_proc_use_ps_and_lsof(tmp_path):
    calls = []
    probes = os_.SystemProbes(proc_root=str(tmp_path), run=fake_macos(calls))
    assert not probes.has_proc and probes.listening() is None and probes.open_files(200) == []
    table = probes.processes()
    assert {p: (t.ppid, t.comm) for p, t in table.items()} == {
        100: (1, "-zsh"), 200: (100, "claude"), 201: (200, "node"), 300: (1, "zsh"), 301: (300, "vite")}
    assert probes.args(200) == ["/usr/local/bin/claude", "--resume", "0d3b3f4e-5f4e-4b8e-9a51-5f0c2c1a7e11", "a b"]
    assert probes.ports({"s1": [100, 200, 201], "s2": [300, 301]}) == {"s1": [5173, 9229], "s2": [3000]}
    assert ["lsof", "-nP", "-a", "-iTCP", "-sTCP:LISTEN", "-Fpn", "-p", "100,200,201,300,301"] in calls
    # neither ps nor lsof: empty answers, never an exception
    def missing(argv):
        raise OSError("%s: not found" % argv[0])
    none = os_.SystemProbes(proc_root=str(tmp_path), run=missing)
    assert none.processes() == {} and none.args(1) == [] and none.ports({"s": [1]}) == {}


def test_server_links_agents_and_ports_through_injected_probes(tmp_path):
    calls = []
    probes = os_.SystemProbes(proc_root=str(tmp_path), run=fake_macos(calls))
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path)}
    s = os_.Server(os_.Tmux(str(tmp_path / "no.sock")), 0, False, env, clock=lambda: 1000.0, probes=probes)
    try:
        s.store.sessions = [
            {"id": "$1", "name": "api", "windows": [{"id": "@1", "panes": [{"id": "%1", "pid": 100}]}]},
            {"id": "$2", "name": "web", "windows": [{"id": "@2", "panes": [{"id": "%2", "pid": 300}]}]}]
        s.linker.read_processes()
        assert s.linker.pane_agents["%1"][:2] == ("claude", 200) and "%2" not in s.linker.pane_agents
        assert s.linker.pane_of_pid[201] == "%1" and s.linker.pane_of_pid[301] == "%2"
        assert s.linker.read_at == 1000.0  # the injected clock, not the machine's
        s.facts.update_ports()
        assert s.store.ports == {"$1": [5173, 9229], "$2": [3000]}
        assert not any("/proc" in " ".join(c) for c in calls)
    finally:
        s.loop.close()


def test_claude_registry_match_is_pure():
    e = {"pid": 42, "sessionId": "x", "procStart": 777}
    assert os_.claude_registry_matches(e, True, 777)
    assert not os_.claude_registry_matches(e, True, 778)  # the pid was reused by another process
    assert not os_.claude_registry_matches(e, True, -1)  # gone between the two looks
    assert not os_.claude_registry_matches(e, False, 777)
    assert os_.claude_registry_matches(e, True, None)  # no /proc (macOS): the pid is all we know
    assert os_.claude_registry_matches(dict(e, procStart=None), True, 5)
    me = {"pid": os.getpid(), "procStart": os_.process_start(os.getpid())}
    assert os_.claude_registry_alive(me) and not os_.claude_registry_alive(dict(me, procStart=me["procStart"] + 1))


def test_hook_finds_its_agent_without_proc(tmp_path):
    """macOS: the hook's shell (pid 202, under node 201) finds the agent above it with one ps table."""
    calls = []
    table = PS_TABLE + "  202   201 sh\n"

    def run(argv):
        calls.append(argv)
        return table if argv[:2] == ["ps", "-axo"] else fake_macos([])(argv)
    probes = os_.SystemProbes(proc_root=str(tmp_path), run=run)
    assert os_._agent_ancestor("claude", 202, probes) == 200
    assert os_._agent_ancestor("codex", 202, probes) is None
    assert [c[:2] for c in calls].count(["ps", "-axo"]) == 2  # one table per hook call
    assert all(c[-1] in ("200", "201") for c in calls if c[:3] == ["ps", "-o", "args="])  # args of agent-named only


def test_hook_finds_its_agent_with_proc(tmp_path):
    from conftest import fake_agents
    bin_dir = fake_agents(str(tmp_path / "bin"), names=("codex",))
    agent = subprocess.Popen([os.path.join(bin_dir, "codex")], stdin=subprocess.PIPE)
    try:
        assert os_._agent_ancestor("codex", agent.pid) == agent.pid
        assert os_._agent_ancestor("claude", agent.pid) is None
        assert os_._agent_ancestor("codex", os.getpid()) is None  # pytest is no agent, nor its parents
    finally:
        agent.stdin.close()
        agent.wait(10)


def test_our_own_api_port_is_never_a_sessions_port(env, tmux):
    """A server run in a pane listens under that pane: its own port is not the session's."""
    log = os.path.join(env.base, "pane-server.log")
    portfile = os.path.join(env.base, "listener.port")
    tmux.run("new-session", "-d", "-s", "srv", "-c", env.home,
             " ".join([PYTHON, SCRIPT, "-S", tmux.socket, "server", "--port", "0", "--log", log]))
    listener = ("import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
                "open(%r,'w').write(str(s.getsockname()[1])); time.sleep(600)" % portfile)
    tmux.run("new-window", "-d", "-t", "=srv:", "%s -c \"%s\"" % (PYTHON, listener))
    runtime = os_.RuntimeFiles(tmux.socket, env.vars)
    info = retry_until(runtime.live_info, timeout=10)
    other = int(retry_until(lambda: os.path.exists(portfile) and open(portfile).read()))
    client = os_.Client(info["port"])

    def srv_ports():
        state = json.loads(client.request("GET", "/state")[1].decode())
        return next(s for s in state["sessions"] if s["name"] == "srv")["ports"]
    assert retry_until(lambda: srv_ports() == [other] and srv_ports(), timeout=10) == [other]
    assert info["port"] not in srv_ports()
    tmux.run("kill-session", "-t", "=srv")
    retry_until(lambda: runtime.live_info() is None or not os_._pid_alive(info["pid"]), timeout=10)
