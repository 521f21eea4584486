"""Drive the real agents in the lab tmux through `opensessions reply` only (no send-keys here).

Setup (as done for issue 15, results in run-*.txt and server-log-replies.txt next to this file):
  npm install --prefix /tmp/reply-lab/npm @anthropic-ai/claude-code@2.1.330 @openai/codex@0.169.0 opencode-ai@1.18.33
  . labenv.sh && python3 setup_home.py $HOME $FAKE_LLM_PORT && git -C $HOME/work/codex init
  FAKE_LLM_LOG=... python3 ../../../shared/agents-lab/tools/fake_llm.py &      (loopback only)
  $TM new-session -d -s lab ...; one window each in ~/work/{claude,codex,opencode} running
  `claude --permission-mode default`, `codex --dangerously-bypass-hook-trust`,
  `OPENCODE_PERMISSION='{"bash":"ask"}' opencode`; `opensessions install` (hooks, plugin) first;
  python3 opensessions.py -S /tmp/tmux-0/reply-lab server --port 0 --log ... &
  type one prompt in each agent (a thread exists only after one), then: python3 mustshow.py [AGENT...]
"""
import json, subprocess, sys, time
sys.path.insert(0, "/work/wt/reply")
import opensessions as o
SOCK = "/tmp/tmux-0/reply-lab"
OS = [sys.executable, "/work/wt/reply/opensessions.py", "-S", SOCK]
tm = o.Tmux(SOCK)

def threads():
    d = json.loads(subprocess.run(OS + ["status", "--json"], stdout=subprocess.PIPE).stdout)
    out = {}
    for s in d["sessions"]:
        for t in s["threads"]:
            if t["alive"] and t["pane"] and t["link"] == "pid" and (
                    t["agent"] not in out or t["updatedAt"] > out[t["agent"]]["updatedAt"]):
                out[t["agent"]] = t
    return out

def reply(tid, *args):
    t0 = time.monotonic()
    p = subprocess.run(OS + ["reply", tid] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return p.returncode, (p.stdout + p.stderr).decode().strip(), time.monotonic() - t0

def wait(agent, pred, timeout=40):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        t = threads()[agent]
        if pred(t):
            return t, time.monotonic() - t0
        time.sleep(0.1)
    return threads()[agent], None

def screen_change(pane, before, t0, timeout=5):
    while time.monotonic() - t0 < timeout:
        if tm.run("capture-pane", "-p", "-e", "-t", pane) != before:
            return (time.monotonic() - t0) * 1000
        time.sleep(0.005)

def step(agent, label, args, until):
    t = threads()[agent]
    before = tm.run("capture-pane", "-p", "-e", "-t", t["pane"])
    t0 = time.monotonic()
    rc, out, dt = reply(t["id"], *args)
    ms = screen_change(t["pane"], before, t0)
    print("%-8s %-34s rc=%d cli %.0f ms, screen changed %s ms after the call %s" % (
        agent, "reply " + " ".join(args), rc, dt * 1000, "%.0f" % ms if ms else "never", out))
    if rc != 0:
        return None
    mark = len(SEEN)
    t2, waited = wait(agent, until)
    time.sleep(0.3)
    print("%-8s   statuses seen on /events after the reply: %s" % (agent, " -> ".join(
        "%s(+%.1fs)" % (st, ts - t0) for ts, a, st in SEEN if a == agent and ts >= t0)))
    print("%-8s   -> status %s (detail %r) after %s s" % (agent, t2["status"], t2["detail"],
                                                           "%.1f" % waited if waited is not None else "TIMEOUT"))
    return t2

import socket, threading
SEEN = []
def sse():
    import os
    port = o.RuntimeFiles(SOCK, dict(os.environ)).live_info()["port"]
    sk = socket.create_connection(("127.0.0.1", port))
    sk.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    buf = b""
    last = {}
    while True:
        d = sk.recv(65536)
        if not d:
            return
        buf += d
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    st = json.loads(line[6:])
                    for ss in st["sessions"]:
                        for t in ss["threads"]:
                            k = (t["agent"], t["id"])
                            if last.get(k) != t["status"]:
                                last[k] = t["status"]
                                SEEN.append((time.monotonic(), t["agent"], t["status"]))
threading.Thread(target=sse, daemon=True).start()
time.sleep(0.5)

agents = sys.argv[1:] or ["claude", "codex", "opencode"]
for a in agents:
    step(a, "", ["--text", "say hi"], lambda t: t["status"] in ("running", "done"))
    wait(a, lambda t: t["status"] == "done", 20)
    step(a, "", ["--text", "please FAKE_WRITE"], lambda t: t["status"] == "waiting")
    step(a, "", ["--approve"], lambda t: t["status"] == "done")
    step(a, "", ["--text", "please FAKE_WRITE"], lambda t: t["status"] == "waiting")
    step(a, "", ["--deny"], lambda t: t["status"] != "waiting")
    lines = [l for l in tm.run("capture-pane", "-p", "-t", threads()[a]["pane"]).split("\n") if l.strip()]
    print("%-8s   screen after deny: %s" % (a, " | ".join(l.strip()[:70] for l in lines[-12:] if any(
        w in l for w in ("Did not run", "Interrupted", "canceled", "rejected", "reject", "denied", "Error", "✗", "■")))))
    # wrong state: approve when nothing waits
    rc, out, _ = reply(threads()[a]["id"], "--approve")
    print("%-8s reply --approve while %s: rc=%d %s" % (a, threads()[a]["status"], rc, out))
