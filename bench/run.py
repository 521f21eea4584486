#!/usr/bin/env python3
"""Measure what users feel, against targets: `python3 bench/run.py --quick` (fewer samples, 2,000
rather than 20,000 conversations, 10 s idle windows: 524 s on an idle 2-core machine) or the full run
(longer); `--only GROUP` runs one group.

Builds its own workloads in a temp HOME and a private tmux socket from the real record shapes in
tests/fixtures (the captures), runs the real program (dist/opensessions.pyz, built fresh), and
prints a table (figure, median, p95 / spread, target, pass) plus bench/results.json.
Nothing here touches your tmux server or your home.
"""
import argparse
import atexit
import json
import os
import random
import shutil
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIX = os.path.join(ROOT, "tests", "fixtures")  # the real captures the tests use
PY = sys.executable
sys.path.insert(0, ROOT)
import opensessions  # noqa: E402  (only for its pure helpers: encodings, ids)


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def proc_cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # MB
    return float("nan")


def proc_rchar(pid):
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


class Results(object):
    def __init__(self):
        self.rows = []

    def add(self, figure, workload, values, unit, target, op, median=None, note=""):
        """One row; a row with no value (not measured in this run) is skipped, neither pass nor miss."""
        values = [v for v in values if v == v]
        if not values and median is None:
            self.rows.append({"figure": figure, "workload": workload, "n": 0, "median": float("nan"),
                              "p95": float("nan"), "spread": float("nan"), "unit": unit,
                              "target": "%s %s %s" % (op.replace("p95", "p95 "), target, unit), "pass": None,
                              "note": note or "not measured in this run", "values": []})
            return
        med = statistics.median(values) if values and median is None else median
        p95 = pct(values, 95) if values else float("nan")
        spread = (max(values) - min(values)) if len(values) > 1 else 0.0
        limit = p95 if op == "p95<=" else med
        ok = limit <= target if op in ("<=", "p95<=") else limit >= target
        self.rows.append({"figure": figure, "workload": workload, "n": len(values), "median": med, "p95": p95,
                          "spread": spread, "unit": unit, "target": "%s %s %s" % (op.replace("p95", "p95 "), target, unit),
                          "pass": bool(ok), "note": note, "values": [round(v, 4) for v in values]})

    def table(self):
        head = "%-44s %10s %10s %10s %-18s %s" % ("figure", "median", "p95", "spread", "target", "result")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append("%-44s %10s %10s %10s %-18s %s" % (
                r["figure"][:44], fmt(r["median"]), fmt(r["p95"]), fmt(r["spread"]), r["target"],
                {True: "pass", False: "MISS", None: "skip"}[r["pass"]] + ("  " + r["note"] if r["note"] else "")))
        return "\n".join(lines)


def fmt(v):
    if v is None or v != v:
        return "-"
    return "%.3g" % v if abs(v) < 100 else "%.0f" % v


# ---- workloads from the real record shapes -------------------------------------------------------

def load_lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


CLAUDE_RECS = load_lines(os.path.join(FIX, "claude", "transcript-interactive-permission-interrupt-rename.jsonl"))
CODEX_RECS = load_lines(os.path.join(FIX, "codex", "rollout-interactive.jsonl"))


def claude_transcript(path, sid, cwd, size):
    """A transcript of ~size bytes: the captured interactive session's records, repeated, re-pointed."""
    out, total, stamp = [], 0, iso_now()
    while total < size:
        for rec in CLAUDE_RECS:
            r = dict(rec)
            if "sessionId" in r:
                r["sessionId"] = sid
            if "cwd" in r:
                r["cwd"] = cwd
            if "timestamp" in r:  # written today: older finished threads are not listed (LIST_HOURS)
                r["timestamp"] = stamp
            line = json.dumps(r) + "\n"
            out.append(line)
            total += len(line)
    with open(path, "w") as f:
        f.writelines(out)


def codex_rollout(path, tid, cwd, size):
    out, total, stamp = [], 0, iso_now()
    while total < size:
        for rec in CODEX_RECS:
            r = json.loads(json.dumps(rec))
            p = r.get("payload") or {}
            if r["type"] == "session_meta":
                p["id"] = p["session_id"] = tid
            if "cwd" in p:
                p["cwd"] = cwd
            if "timestamp" in r:
                r["timestamp"] = stamp
            line = json.dumps(r) + "\n"
            out.append(line)
            total += len(line)
    with open(path, "w") as f:
        f.writelines(out)


WORLDS = []


@atexit.register
def _close_all_worlds():
    """However the bench ends, nothing it started keeps running."""
    for w in list(WORLDS):
        w.close()


class World(object):
    """A temp HOME with agent files, a private tmux server with N sessions, the .pyz."""

    def __init__(self, sessions, claude=100, codex=50, size=200 * 1024, old=0, old_size=0, dev_home=False):
        self.base = tempfile.mkdtemp(prefix="osbench-")
        self.socket = os.path.join(self.base, "tmux.sock")
        self.server = None
        WORLDS.append(self)
        self.home = os.path.join(self.base, "home")
        os.makedirs(self.home)
        if dev_home:  # a HOME laid out like a real one (the captures, placed so their paths are real)
            subprocess.run([PY, os.path.join(FIX, "tools", "make_homes.py"), FIX, self.home,
                            "--home-path", self.home], check=True, stdout=subprocess.DEVNULL)
        os.makedirs(os.path.join(self.base, "run"), mode=0o700)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("TMUX", "XDG_", "CLAUDE", "CODEX", "OPENCODE"))}
        self.env.update(HOME=self.home, XDG_RUNTIME_DIR=os.path.join(self.base, "run"), TMUX_TMPDIR=self.base,
                        XDG_CONFIG_HOME=os.path.join(self.home, ".config"), XDG_STATE_HOME=os.path.join(self.home, ".state"),
                        XDG_DATA_HOME=os.path.join(self.home, ".data"), LANG="C.UTF-8")
        self.env.pop("OPENSESSIONS_PORT", None)
        if dev_home:
            self.env["XDG_DATA_HOME"] = os.path.join(self.home, ".local", "share")  # where OpenCode keeps its DB
        self.pyz = os.path.join(self.base, "opensessions.pyz")
        subprocess.run([PY, os.path.join(ROOT, "build_zipapp.py"), "--out", self.pyz], check=True, stdout=subprocess.DEVNULL)
        self.cwd = os.path.join(self.home, "work")
        os.makedirs(self.cwd, exist_ok=True)
        proj = os.path.join(self.home, ".claude", "projects", opensessions.claude_project_dir_name(self.cwd))
        os.makedirs(proj, exist_ok=True)
        self.claude_ids = []
        for i in range(claude):
            sid = str(uuid.uuid4())
            claude_transcript(os.path.join(proj, sid + ".jsonl"), sid, self.cwd, size)
            self.claude_ids.append(sid)
        day = os.path.join(self.home, ".codex", "sessions", time.strftime("%Y/%m/%d"))
        os.makedirs(day, exist_ok=True)
        self.codex_ids = []
        for i in range(codex):
            tid = "01a200ee-%04x-7%03x-9e17-%012x" % (i, i, i)
            codex_rollout(os.path.join(day, "rollout-%s-%s.jsonl" % (time.strftime("%Y-%m-%dT%H-%M-%S"), tid)), tid, self.cwd, size)
            self.codex_ids.append(tid)
        self.old_ids = []
        if old:
            week_ago = time.time() - 30 * 86400
            for i in range(old):
                sid = str(uuid.uuid4())
                p = os.path.join(proj, sid + ".jsonl")
                claude_transcript(p, sid, self.cwd, old_size)
                os.utime(p, (week_ago, week_ago))
                self.old_ids.append(sid)
        self.proj = proj
        self.tmux("new-session", "-d", "-s", "s000", "-x", "200", "-y", "50", "-c", self.cwd)
        self.tmux("set-option", "-g", "default-command", "sh")
        for i in range(1, sessions):
            self.tmux("new-session", "-d", "-s", "s%03d" % i, "-c", self.cwd)

    def tmux(self, *args):
        return subprocess.run(["tmux", "-S", self.socket, "-f", "/dev/null"] + list(args), env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True).stdout.decode()

    def start_server(self):
        t0 = time.monotonic()
        self.server = subprocess.Popen([PY, self.pyz, "-S", self.socket, "server", "--port", "0", "--log",
                                        os.path.join(self.base, "server.log")], env=self.env)
        info_dir = os.path.join(self.base, "run", "opensessions")
        while True:
            for name in os.listdir(info_dir) if os.path.isdir(info_dir) else []:
                if name.endswith(".json") and not name.startswith("."):
                    try:
                        with open(os.path.join(info_dir, name)) as f:
                            info = json.load(f)
                    except (ValueError, OSError):
                        continue
                    if info.get("pid") == self.server.pid:  # not a previous run's file
                        self.port = info["port"]
                        return time.monotonic() - t0
            if self.server.poll() is not None:
                raise RuntimeError("server exited")
            time.sleep(0.002)

    def state(self):
        return json.loads(http(self.port, "GET", "/state")[1])

    def close(self):
        if self in WORLDS:
            WORLDS.remove(self)
        if self.server and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(10)
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.base, ignore_errors=True)


def http(port, method, path, body=None):
    data = b"" if body is None else json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(("%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % (method, path, len(data))).encode() + data)
    chunks = []
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        chunks.append(d)
    s.close()
    raw = b"".join(chunks)
    head, _, content = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), content


class Events(object):
    """/events reader: (arrival time, raw data) per event, in a thread."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.events = []
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        buf = b""
        while True:
            try:
                d = self.sock.recv(1 << 20)
            except OSError:
                return
            if not d:
                return
            buf += d
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                i = block.find(b"data: ")
                if i >= 0:
                    with self.cond:
                        self.events.append((time.monotonic(), block[i + 6:]))
                        self.cond.notify_all()

    def wait(self, since_index, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        i = since_index
        with self.cond:
            while True:
                while i < len(self.events):
                    t, raw = self.events[i]
                    i += 1
                    if predicate(raw):
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self):
        self.sock.close()


def thread_status(raw, agent, tid):
    state = json.loads(raw)
    for s in state["sessions"]:
        for t in s["threads"]:
            if t["agent"] == agent and t["id"] == tid:
                return t["status"]
    for t in state["threads"]:
        if t["agent"] == agent and t["id"] == tid:
            return t["status"]
    return None


# ---- figures -------------------------------------------------------------------------------------

def bench_update_latency(w, res, n, label="30 sessions, 100+50 transcripts of 200 KB"):
    ev = Events(w.port)
    time.sleep(0.3)
    lat = []
    for i in range(n):
        sid = w.claude_ids[i % len(w.claude_ids)]
        path = os.path.join(w.proj, sid + ".jsonl")
        rec = {"type": "user", "message": {"role": "user", "content": "bench prompt %d" % i}, "sessionId": sid,
               "cwd": w.cwd, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
        done = {"type": "assistant", "message": {"model": "m", "stop_reason": "end_turn", "content": []},
                "sessionId": sid, "timestamp": rec["timestamp"]}
        start = len(ev.events)
        t0 = time.monotonic()
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        t = ev.wait(start, lambda raw: thread_status(raw, "claude", sid) == "running")
        lat.append((t - t0) * 1000 if t else float("nan"))
        with open(path, "a") as f:
            f.write(json.dumps(done) + "\n")
        ev.wait(len(ev.events) - 1, lambda raw: thread_status(raw, "claude", sid) == "done")
        time.sleep(0.05)
    ev.close()
    res.add("update latency: transcript append -> /events", label, lat, "ms", 100, "p95<=")
    return lat


def bench_tmux_latency(w, res, n, label="30 sessions"):
    ev = Events(w.port)
    time.sleep(0.3)
    lat = []
    for i in range(n):
        name = "bench%03d" % i
        start = len(ev.events)
        t0 = time.monotonic()
        if i % 2 == 0:
            w.tmux("new-session", "-d", "-s", name)
            key = ('"name":"%s"' % name).encode()
        else:
            w.tmux("rename-session", "-t", "=bench%03d" % (i - 1), name)
            key = ('"name":"%s"' % name).encode()
        t = ev.wait(start, lambda raw: key in raw)
        lat.append((t - t0) * 1000 if t else float("nan"))
    ev.close()
    res.add("tmux change latency: new/rename -> /events", label, lat, "ms", 100, "p95<=")
    return lat


def bench_idle_cpu(pid, seconds):
    c0, t0 = proc_cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return (proc_cpu_s(pid) - c0) / (time.monotonic() - t0) * 100


def bench_cli(w, res, n):
    """As hooks and key bindings call it (python3 -S …pyz, see _self_command), and plain. The plain
    row is judged on what the program adds to the interpreter's own start: with `site`, that start
    is the machine's site-packages (.pth files, editable installs), which no program can make
    faster; the total is in the row's note."""
    out = {}
    for label, pre in (("as generated: python3 -S pyz", ["-S"]), ("plain: over python3 alone", [])):
        times = []
        for i in range(n):
            t0 = time.monotonic()
            subprocess.run([PY] + pre + [w.pyz, "-S", w.socket, "set-status", "s000", "bench %d" % i], env=w.env, check=True)
            times.append((time.monotonic() - t0) * 1000)
        bare = []
        for i in range(max(5, n // 2)):
            t0 = time.monotonic()
            subprocess.run([PY] + pre + ["-c", "pass"], check=True)
            bare.append((time.monotonic() - t0) * 1000)
        alone = statistics.median(bare)
        if pre:
            res.add("CLI set-status, %s" % label, "interpreter alone: %.0f ms" % alone, times, "ms", 60, "<=")
        else:
            res.add("CLI set-status, %s" % label, "interpreter alone (with site): %.0f ms" % alone,
                    [t - alone for t in times], "ms", 60, "<=",
                    note="total p50 %.0f ms, p95 %.0f ms" % (statistics.median(times), pct(times, 95)))
        out[label] = times
    return out


def bench_bytes_per_append(res, quick):
    size = (20 if quick else 100) * 1024 * 1024
    w = World(1, claude=0, codex=0)
    try:
        sid = str(uuid.uuid4())
        path = os.path.join(w.proj, sid + ".jsonl")
        claude_transcript(path, sid, w.cwd, size)
        w.start_server()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(t["id"] == sid for t in w.state()["threads"]):
            time.sleep(0.05)
        reads = []
        for i in range(5):
            r0 = proc_rchar(w.server.pid)
            line = json.dumps({"type": "user", "message": {"role": "user", "content": "x" * 900}, "sessionId": sid,
                               "timestamp": "2026-11-22T03:00:00.000Z"}) + "\n"
            ev = Events(w.port)
            time.sleep(0.2)
            r0 = proc_rchar(w.server.pid)
            with open(path, "a") as f:
                f.write(line)
            ev.wait(0, lambda raw: thread_status(raw, "claude", sid) == "running" and b"bench-%d" % i not in raw, 5)
            time.sleep(0.3)
            reads.append((proc_rchar(w.server.pid) - r0) / 1024.0)
            ev.close()
            with open(path, "a") as f:
                f.write(json.dumps({"type": "assistant", "message": {"stop_reason": "end_turn", "content": []},
                                    "sessionId": sid}) + "\n")
            time.sleep(0.3)
        res.add("bytes read per 1 KB append", "%d MB transcript (rchar incl. /proc reads)" % (size >> 20), reads, "KB", 64, "<=")
    finally:
        w.close()


def bench_cold_start(res, quick):
    out = []
    configs = [("150 recent transcripts (30 MB)", 0, 0)]
    old, old_size = (190, 512 * 1024) if quick else (1900, 512 * 1024)
    configs.append(("+ %d old transcripts (%d MB)" % (old, old * old_size >> 20), old, old_size))
    for label, n_old, sz in configs:
        w = World(30, old=n_old, old_size=sz)
        try:
            subprocess.run(["sync"])
            times, peaks = [], []
            for run in range(1 if quick else 3):
                log = os.path.join(w.base, "server.log")
                if os.path.exists(log):
                    os.unlink(log)
                # the runtime file appears only once the full state is published
                times.append(w.start_server())
                want = len(w.claude_ids) + len(w.codex_ids)
                deadline = time.monotonic() + 10
                lines = []
                while not lines and time.monotonic() < deadline:
                    lines = [l for l in open(log) if "cold start:" in l] if os.path.exists(log) else []
                    time.sleep(0.01)
                line = lines[-1]
                loaded = int(line.split("cold start: ")[1].split()[0])
                if loaded < want:
                    raise RuntimeError("cold start listed %d threads, want %d" % (loaded, want))
                peaks.append(proc_status(w.server.pid, "VmHWM"))
                w.server.terminate()
                w.server.wait()
            short = "150 recent" if not n_old else "+%d old" % n_old
            res.add("cold start to full state (%s)" % short, "30 sessions, " + label, times, "s", 1.5, "<=")
            res.add("cold start peak RSS (%s)" % short, "30 sessions, " + label, peaks, "MB", 60, "<=")
            out.append((label, times, peaks))
        finally:
            w.close()
    return out


def bench_cold_start_many(res, quick):
    """Cold start with 20,000 recent Claude transcripts (it took 22.5 s before, one scan of every
    thread per file)."""
    n = 2000 if quick else 20000
    w = World(1, claude=0, codex=0)
    try:
        for i in range(n):
            sid = str(uuid.uuid4())
            with open(os.path.join(w.proj, sid + ".jsonl"), "w") as f:
                for rec in CLAUDE_RECS[:6]:
                    r = dict(rec)
                    if "sessionId" in r:
                        r["sessionId"] = sid
                    if "cwd" in r:
                        r["cwd"] = w.cwd
                    f.write(json.dumps(r) + "\n")
        subprocess.run(["sync"])
        times, cpus = [], []
        for run in range(1 if quick else 2):
            times.append(w.start_server())
            cpus.append(proc_cpu_s(w.server.pid))  # CPU seconds to full state: what load on the machine does not change
            peak = proc_status(w.server.pid, "VmHWM")
            w.server.terminate()
            w.server.wait()
        res.add("cold start, %d recent transcripts" % n, "1 session, %d small Claude transcripts" % n, times, "s",
                3.0 if n >= 20000 else 0.5, "<=", note="server CPU %.1f s, peak RSS %.0f MB" % (max(cpus), peak))
    finally:
        w.close()


def bench_long_line(res, quick):
    """A single 400 MB line appended to a transcript (it stalled the server 122 s, 1.24 GB):
    the longest /health answer while it is consumed, the time to consume it, the server's peak RSS."""
    size = (100 if quick else 400) * 1024 * 1024
    w = World(1, claude=1, codex=0, size=20 * 1024)
    try:
        w.start_server()
        sid = w.claude_ids[0]
        path = os.path.join(w.proj, sid + ".jsonl")
        http(w.port, "GET", "/health")
        rss0 = proc_status(w.server.pid, "VmHWM")
        block = b'{"type":"user","message":{"content":"' + b"x" * (1024 * 1024 - 40)
        stalls, done = [], threading.Event()

        def poll_health():  # while the line is written and read: how long /health takes
            while not done.is_set():
                a = time.monotonic()
                http(w.port, "GET", "/health")
                stalls.append((time.monotonic() - a) * 1000)
                time.sleep(0.02)
        poller = threading.Thread(target=poll_health, daemon=True)
        t0 = time.monotonic()
        poller.start()
        with open(path, "ab") as f:
            for _ in range(size // len(block)):
                f.write(block)
            f.write(b'"}}\n')
            f.write(json.dumps({"type": "custom-title", "customTitle": "after-long-line", "timestamp":
                                time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}).encode() + b"\n")
        written = time.monotonic() - t0
        while time.monotonic() - t0 < 300:
            st = w.state()
            if json.loads(http(w.port, "GET", "/health")[1]).get("skippedLongLines", 0) >= 1 and any(
                    t.get("title") == "after-long-line" for t in st["threads"] + [t for x in st["sessions"] for t in x["threads"]]):
                break
            time.sleep(0.02)
        done.set()
        poller.join()
        consumed = time.monotonic() - t0
        peak = proc_status(w.server.pid, "VmHWM")
        res.add("/health while a %d MB line is read" % (size >> 20), "max of %d requests; consumed in %.1f s"
                % (len(stalls), consumed), [max(stalls)], "ms", 100, "<=",
                note="written in %.1f s, read by %.1f s" % (written, consumed))
        res.add("peak RSS after a %d MB line" % (size >> 20), "server VmHWM (%.0f MB before)" % rss0, [peak], "MB", 100, "<=")
    finally:
        w.close()


def attach_client(w, size=None):
    """A real tmux client attached to s000 on a pty (size: rows, cols), its output drained.
    -> (pty master, client process)"""
    import pty
    master, slave = pty.openpty()
    if size:
        import fcntl
        import struct
        import termios
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    client = subprocess.Popen(["tmux", "-S", w.socket, "attach-session", "-t", "=s000"], stdin=slave, stdout=slave,
                              stderr=slave, env=dict(w.env, TERM="xterm-256color"), start_new_session=True)
    os.close(slave)

    def drain():
        try:
            while os.read(master, 65536):
                pass
        except OSError:
            pass
    threading.Thread(target=drain, daemon=True).start()
    return master, client


def bench_sidebar(w, res, seconds):
    # a real client attached on a pty; the sidebar shown in every window
    master, client = attach_client(w)
    http(w.port, "POST", "/ui", {"visible": True})
    deadline = time.monotonic() + 20
    sb = None
    while time.monotonic() < deadline:
        rows = [l.split() for l in w.tmux("list-panes", "-a", "-F", "#{session_name} #{pane_id} #{pane_pid} #{@opensessions-sidebar} "
                                          "#{?#{@opensessions-asleep},asleep,running}").splitlines()]
        sbs = [r for r in rows if len(r) == 5 and r[3] == "1"]
        # the shown window's running sidebar (the others may hold a sleeping placeholder)
        sb = next((r for r in sbs if r[0] == "s000" and r[4] == "running"), None)
        if len(sbs) >= 30 and sb is not None:
            break
        time.sleep(0.1)
    if sb is None:
        raise RuntimeError("sidebars did not appear")
    time.sleep(2)
    pid = int(sb[2])
    # the sidebar process is the pane's process (sh -c exec …) or its child
    kids = subprocess.run(["pgrep", "-P", str(pid)], stdout=subprocess.PIPE).stdout.split()
    if kids:
        pid = int(kids[0])
    cpu = bench_idle_cpu(pid, seconds)
    rss = proc_status(pid, "VmRSS")
    res.add("sidebar idle CPU", "30 sessions, attached, %ds" % seconds, [cpu], "%", 0.1, "<=")
    res.add("sidebar RSS", "30 sessions", [rss], "MB", 30, "<=")
    # session switch: 1-9 / Enter in the sidebar -> the tmux client switched (seen by a control client)
    ctl = subprocess.Popen(["tmux", "-S", w.socket, "-C", "attach-session", "-t", "=s029", "-f", "no-output,read-only,ignore-size"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=w.env)
    seen = []
    cond = threading.Condition()

    def read():
        for line in ctl.stdout:
            if line.startswith(b"%client-session-changed") or line.startswith(b"%session-changed"):
                with cond:
                    seen.append((time.monotonic(), line))
                    cond.notify_all()
    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    lat = []
    for i in range(10 if seconds < 30 else 20):
        key = "2" if i % 2 == 0 else "1"
        want = b"s001" if key == "2" else b"s000"
        with cond:
            n0 = len(seen)
        t0 = time.monotonic()
        w.tmux("send-keys", "-t", sb[1], key)
        with cond:
            ok = cond.wait_for(lambda: any(want in l for _, l in seen[n0:] if l.startswith(b"%client-session-changed")), 5)
            t = next((t for t, l in seen[n0:] if want in l and l.startswith(b"%client-session-changed")), None)
        lat.append((t - t0) * 1000 if ok and t else float("nan"))
        time.sleep(0.2)
    ctl.terminate()
    res.add("session switch: key in sidebar -> client switched", "30 sessions", lat, "ms", 50, "p95<=")
    client.terminate()
    os.close(master)
    return cpu, rss, lat


def _tree_memory(pids):
    """(PSS MB, RSS MB, process count) of these processes and all their descendants."""
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    seen, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(kids.get(pid, []))
    pss = rss = 0
    for pid in seen:
        try:
            with open("/proc/%d/smaps_rollup" % pid) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            pass
    return pss / 1024.0, rss / 1024.0, len(seen)


def bench_sidebar_windows(res, quick):
    """30 windows (10 sessions of 3), one client on a pty: the memory of every sidebar pane's
    processes together, and how soon a window's sidebar shows the session list after the client
    switches to it (select-window in its session, or switch-client to another session)."""
    w = World(10, claude=0, codex=0)
    master = client = None
    try:
        for i in range(10):
            for _ in range(2):
                w.tmux("new-window", "-d", "-t", "=s%03d" % i, "-c", w.cwd)
        w.start_server()
        master, client = attach_client(w, size=(50, 200))
        http(w.port, "POST", "/ui", {"visible": True})

        def sidebar_pids():
            rows = [l.split() for l in w.tmux("list-panes", "-a", "-F", "#{session_name} #{pane_pid} "
                                              "#{@opensessions-sidebar}").splitlines()]
            return [int(r[1]) for r in rows if len(r) == 3 and r[2] == "1"], \
                len([r for r in rows if len(r) == 3 and r[2] == "1" and not r[0].startswith("_os_")])

        def drawn(target):
            try:
                text = w.tmux("capture-pane", "-p", "-t", target + ".0")
            except subprocess.CalledProcessError:
                return False
            return len({"s%03d" % i for i in range(10) if "s%03d" % i in text}) >= 3

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (sidebar_pids()[1] >= 30 and drawn("=s000:0")):
            time.sleep(0.05)
        if not drawn("=s000:0"):
            raise RuntimeError("sidebars did not appear")
        time.sleep(3)  # every pane settled (sidebars started, placeholders if any in place)
        pids, n_windows = sidebar_pids()
        pss, rss, nproc = _tree_memory(pids)
        res.add("30 windows: all sidebars PSS", "10 sessions x 3 windows, 1 client", [pss], "MB", 120, "<=",
                note="RSS %.0f MB, %d processes" % (rss, nproc))
        rng = random.Random(7)
        current = ("s000", 0)
        lat = []
        for i in range(12 if quick else 40):
            if i % 2 == 0:
                target = (current[0], rng.choice([x for x in range(3) if x != current[1]]))
                cmd = ["select-window", "-t", "=%s:%d" % target]
            else:
                target = ("s%03d" % rng.choice([x for x in range(10) if "s%03d" % x != current[0]]), rng.randrange(3))
                w.tmux("select-window", "-t", "=%s:%d" % target)  # that session's current window
                cmd = ["switch-client", "-t", "=%s" % target[0]]
            t0 = time.monotonic()
            w.tmux(*cmd)
            end = t0 + 5
            while time.monotonic() < end and not drawn("=%s:%d" % target):
                time.sleep(0.001)
            lat.append((time.monotonic() - t0) * 1000 if drawn("=%s:%d" % target) else float("nan"))
            current = target
            time.sleep(0.3)
        res.add("window switch -> sidebar drawn", "30 windows, 1 client; p50 %.0f ms" % pct(lat, 50), lat, "ms",
                100, "p95<=")
        pss_after, _, _ = _tree_memory(sidebar_pids()[0])
        res.add("30 windows: all sidebars PSS after switching", "after %d switches" % len(lat), [pss_after], "MB",
                120, "<=")
        return pss, lat
    finally:
        if client is not None:
            client.terminate()
            client.wait(5)
        if master is not None:
            os.close(master)
        w.close()


def bench_notify(res, n):
    w = World(5, claude=0, codex=0)
    try:
        bin_dir = os.path.join(w.base, "bin")
        os.makedirs(bin_dir)
        log = os.path.join(w.base, "notify.log")
        with open(os.path.join(bin_dir, "notify-send"), "w") as f:
            f.write("#!/bin/sh\ndate +%%s.%%N >> %s\n" % log)
        os.chmod(os.path.join(bin_dir, "notify-send"), 0o755)
        w.env["PATH"] = bin_dir + os.pathsep + w.env["PATH"]
        w.start_server()
        lat = []
        for i in range(n):
            http(w.port, "POST", "/api/agent-event", {"agent": "claude", "status": "running", "threadId": "n%d" % i, "tmuxSession": "s001"})
            before = open(log).read().count("\n") if os.path.exists(log) else 0
            t0 = time.time()
            http(w.port, "POST", "/api/agent-event", {"agent": "claude", "status": "done", "threadId": "n%d" % i, "tmuxSession": "s001"})
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                lines = open(log).read().split() if os.path.exists(log) else []
                if len(lines) > before:
                    lat.append((float(lines[before]) - t0) * 1000)
                    break
                time.sleep(0.002)
            time.sleep(2.1)  # past the 2 s quiet window, so each sample is a first notification
        res.add("notification: state change -> command started", "background thread done, fake notify-send", lat, "ms", 100, "<=")
        return lat
    finally:
        w.close()


def thread_field(raw, agent, tid, field):
    state = json.loads(raw)
    for t in [t for s in state["sessions"] for t in s["threads"]] + state["threads"]:
        if t["agent"] == agent and t["id"] == tid:
            return t.get(field)
    return None


def sqlite_leftovers(home):
    """-wal/-shm files next to the agents' databases."""
    out = []
    for d in (os.path.join(home, ".codex"), os.path.join(home, ".local", "share", "opencode")):
        out.extend(n for n in (os.listdir(d) if os.path.isdir(d) else ()) if n.endswith(("-wal", "-shm")))
    return sorted(out)


def iso_now():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def fresh_codex_rollout(path, tid, cwd):
    """A short rollout of the captured records, re-pointed and stamped now (written at once)."""
    out = []
    for rec in CODEX_RECS[:6]:
        r = json.loads(json.dumps(rec))
        r["timestamp"] = iso_now()
        p = r.get("payload") or {}
        if r["type"] == "session_meta":
            p["id"] = p["session_id"] = tid
        if "cwd" in p:
            p["cwd"] = cwd
        out.append(json.dumps(r) + "\n")
    with open(path, "w") as f:
        f.writelines(out)


def missed(values):
    n = sum(1 for v in values if v != v)
    return "%d of %d never arrived" % (n, len(values)) if n else ""


FAKE_CLAUDE = """#!/bin/sh
# a fake Claude Code: its registry entry says busy (mid-turn) until it is killed
mkdir -p "$FAKE_REGISTRY"
printf '{"pid": %s, "sessionId": "%s", "cwd": "%s", "status": "busy", "kind": "interactive"}' \\
  "$$" "$FAKE_SESSION" "$PWD" > "$FAKE_REGISTRY/$$.json.tmp" && mv "$FAKE_REGISTRY/$$.json.tmp" "$FAKE_REGISTRY/$$.json"
while read -r line; do :; done
"""


def bench_agent_killed(w, ev, res, n):
    """kill -9 of an agent mid-turn (its registry file stays behind) -> /events says interrupted."""
    fake = os.path.join(w.base, "bin", "claude")
    os.makedirs(os.path.dirname(fake), exist_ok=True)
    with open(fake, "w") as f:
        f.write(FAKE_CLAUDE)
    os.chmod(fake, 0o755)
    reg = os.path.join(w.home, ".claude", "sessions")
    lat = []
    for i in range(n):
        sid = str(uuid.uuid4())
        start = len(ev.events)
        w.tmux("send-keys", "-t", "=s001:", "FAKE_REGISTRY=%s FAKE_SESSION=%s %s" % (reg, sid, fake), "Enter")
        if not ev.wait(start, lambda raw: thread_field(raw, "claude", sid, "alive") is True
                       and thread_field(raw, "claude", sid, "status") == "running", 10):
            raise RuntimeError("the fake agent's thread did not appear: %s %s %s" % (
                w.tmux("capture-pane", "-p", "-t", "=s001:"), os.listdir(reg), [t for t in json.loads(http(w.port, "GET", "/state")[1])["threads"] if t["id"] == sid]))
        pid = thread_field(ev.events[-1][1], "claude", sid, "pid")
        start = len(ev.events)
        t0 = time.monotonic()
        os.kill(pid, 9)
        t = ev.wait(start, lambda raw: thread_field(raw, "claude", sid, "status") == "interrupted", 5)
        lat.append((t - t0) * 1000 if t else float("nan"))
        time.sleep(0.3)
    res.add("agent killed mid-turn -> /events interrupted", "homes/dev, fake Claude in a pane, kill -9", lat, "ms",
            2000, "p95<=", note=missed(lat))


def bench_dev_home(res, quick):
    """The real-shaped HOME (homes/dev): idle CPU, live database writers, a rollout in a new day dir."""
    import sqlite3
    w = World(3, claude=0, codex=0, dev_home=True)
    try:
        before = sqlite_leftovers(w.home)
        w.start_server()
        time.sleep(3)
        idle_s = 10 if quick else 60
        cpu = bench_idle_cpu(w.server.pid, idle_s)
        left = [n for n in sqlite_leftovers(w.home) if n not in before]
        res.add("server idle CPU (homes/dev copy)", "real-shaped HOME, %ds" % idle_s, [cpu], "%", 0.2, "<=",
                note="left behind: " + " ".join(left) if left else "")
        # live writers: each DB held open by a writer (as a running agent holds it), a commit every ~2 s
        codex_db = os.path.join(w.home, ".codex", "state_5.sqlite")
        oc_db = os.path.join(w.home, ".local", "share", "opencode", "opencode.db")
        cw, ow = sqlite3.connect(codex_db), sqlite3.connect(oc_db)
        ctid, rollout = cw.execute("SELECT id, rollout_path FROM threads WHERE name IS NULL LIMIT 1").fetchone()
        osid = ow.execute("SELECT id FROM session WHERE parent_id IS NULL LIMIT 1").fetchone()[0]
        ev = Events(w.port)
        time.sleep(0.3)
        # the captures are older than the window (their day directory too): a conversation resumed
        # there is appended to its rollout, which must make it live again before its renames count
        with open(rollout, "a") as f:
            f.write(json.dumps({"timestamp": iso_now(), "type": "event_msg",
                                "payload": {"type": "user_message", "message": "bench live"}}) + "\n")
        if ev.wait(0, lambda raw: thread_field(raw, "codex", ctid, "title") is not None, 5) is None:
            raise RuntimeError("an append to the rollout of Codex thread %s (in %s) never reached /events"
                               % (ctid, os.path.dirname(rollout)))
        clat, olat = [], []
        for i in range(4 if quick else 10):
            name = "live name %d" % i
            start = len(ev.events)
            t0 = time.monotonic()
            cw.execute("UPDATE threads SET name = ? WHERE id = ?", (name, ctid))
            cw.commit()
            t = ev.wait(start, lambda raw: thread_field(raw, "codex", ctid, "title") == name, 3)
            clat.append((t - t0) * 1000 if t else float("nan"))
            time.sleep(1.0)
            start = len(ev.events)
            t0 = time.monotonic()
            ow.execute("UPDATE session SET title = ?, time_updated = ? WHERE id = ?", (name, int(time.time() * 1000), osid))
            ow.commit()
            t = ev.wait(start, lambda raw: thread_field(raw, "opencode", osid, "title") == name, 3)
            olat.append((t - t0) * 1000 if t else float("nan"))
            time.sleep(1.0)
        res.add("live writer: state_5.sqlite commit -> /events", "homes/dev, Codex thread renamed every 2 s", clat, "ms",
                100, "p95<=", note=missed(clat))
        res.add("live writer: opencode.db commit -> /events", "homes/dev, OpenCode session retitled every 2 s", olat, "ms",
                100, "p95<=", note=missed(olat))
        # a Codex rollout in a day directory made at that moment (the first thread of a day)
        sessions = os.path.join(w.home, ".codex", "sessions")
        dlat = []
        for i in range(6 if quick else 12):
            day = os.path.join(sessions, "2026", "11", "%02d" % (1 + i)) if i % 2 == 0 else \
                os.path.join(sessions, "%d" % (2030 + i), "01", "01")
            tid = "01a200ee-%04x-7%03x-9e17-%012x" % (0xd00 + i, i, i)
            start = len(ev.events)
            t0 = time.monotonic()
            os.makedirs(day)
            fresh_codex_rollout(os.path.join(day, "rollout-%s-%s.jsonl" % (time.strftime("%Y-%m-%dT%H-%M-%S"), tid)),
                                tid, w.cwd)
            t = ev.wait(start, lambda raw: tid.encode() in raw and thread_field(raw, "codex", tid, "id") == tid, 3)
            dlat.append((t - t0) * 1000 if t else float("nan"))
            time.sleep(0.3)
        res.add("new Codex rollout in a new day dir -> /events", "homes/dev, sessions/Y/M/D made at that moment", dlat, "ms",
                100, "p95<=", note=missed(dlat))
        bench_agent_killed(w, ev, res, 3 if quick else 8)
        ev.close()
        cw.close()
        ow.close()
        return cpu
    finally:
        w.close()


def recent_transcripts(w, n, projects=20, rng=None):
    """n conversations in the window, made from the captured records: 3/4 Claude transcripts over
    `projects` project directories, 1/4 Codex rollouts in their day directories, last changed at
    times spread over the last 7 days (what a user with many conversations has; none is active)."""
    rng = rng or random.Random(n)
    now = time.time()
    claude_n = n * 3 // 4
    for i in range(n):
        t = now - 120 - rng.random() * 7 * 86400 * 0.98
        if i < claude_n:
            cwd = os.path.join(w.home, "work", "p%02d" % (i % projects))
            d = os.path.join(w.home, ".claude", "projects", opensessions.claude_project_dir_name(cwd))
            sid = str(uuid.uuid4())
            path = os.path.join(d, sid + ".jsonl")
            recs = []
            for rec in CLAUDE_RECS[:6]:
                r = dict(rec)
                if "sessionId" in r:
                    r["sessionId"] = sid
                if "cwd" in r:
                    r["cwd"] = cwd
                recs.append(r)
        else:
            d = os.path.join(w.home, ".codex", "sessions", time.strftime("%Y/%m/%d", time.localtime(t)))
            tid = "01a200ee-%04x-7%03x-9e17-%012x" % (i % 0xffff, i % 0xfff, i)
            path = os.path.join(d, "rollout-%s-%s.jsonl" % (time.strftime("%Y-%m-%dT%H-%M-%S", time.localtime(t)), tid))
            recs = []
            for rec in CODEX_RECS[:6]:
                r = json.loads(json.dumps(rec))
                if r["type"] == "session_meta":
                    r["payload"]["id"] = r["payload"]["session_id"] = tid
                recs.append(r)
        os.makedirs(d, exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        os.utime(path, (t, t))
    for top in (os.path.join(w.home, ".codex", "sessions"), os.path.join(w.home, ".claude", "projects")):
        for dirpath, dirnames, _ in os.walk(top, topdown=False):
            for dn in dirnames:  # a directory changed when its newest entry was made
                p = os.path.join(dirpath, dn)
                newest = max([os.stat(os.path.join(p, x)).st_mtime for x in os.listdir(p)] or [now - 86400])
                os.utime(p, (newest, newest))


def health_watch(w):
    return json.loads(http(w.port, "GET", "/health")[1])["watch"]


def idle_with_stats(w, seconds):
    """-> (idle CPU %, stat calls per second) of the running server over `seconds`."""
    s0, t0, c0 = health_watch(w)["statCalls"], time.monotonic(), proc_cpu_s(w.server.pid)
    time.sleep(seconds)
    c1, t1, s1 = proc_cpu_s(w.server.pid), time.monotonic(), health_watch(w)["statCalls"]
    return (c1 - c0) / (t1 - t0) * 100, (s1 - s0) / (t1 - t0)


def settle(w, limit=60.0):
    """Wait until the server's cold start is over (a whole second under 2% CPU, at least 5 s after
    its start; a cold page cache makes 20,000 transcripts take longer) -> seconds waited."""
    t0 = time.monotonic()
    time.sleep(4)
    while time.monotonic() - t0 < limit:
        c0, s0 = proc_cpu_s(w.server.pid), time.monotonic()
        time.sleep(1)
        if (proc_cpu_s(w.server.pid) - c0) / (time.monotonic() - s0) < 0.02:
            break
    return time.monotonic() - t0


def bench_poll_idle(res, quick):
    """Idle CPU of the server by stat (OPENSESSIONS_WATCH=poll, the macOS fallback) and by inotify,
    with 150 / 2,000 / 20,000 conversations in the window; stat calls per second."""
    idle_s = 10 if quick else 30
    out = {}
    for n in (150, 2000, 20000):
        w = World(1, claude=0, codex=0)
        try:
            recent_transcripts(w, n)
            subprocess.run(["sync"])
            for mode in ("poll", "inotify"):
                w.env.pop("OPENSESSIONS_WATCH", None)
                if mode == "poll":
                    w.env["OPENSESSIONS_WATCH"] = "poll"
                w.start_server()
                settled = settle(w)  # past the cold start's own work
                cpu, stats = idle_with_stats(w, idle_s)
                watch = health_watch(w)
                w.server.terminate()
                w.server.wait()
                out[(mode, n)] = (cpu, stats)
                note = "%s: %d dirs, %d files; %.0f stat calls/s; cold start settled in %.0f s" % (
                    watch["backend"], watch["dirs"], watch["files"], stats, settled)
                res.add("%s idle CPU, %d recent transcripts" % ("poll path" if mode == "poll" else "inotify", n),
                        "%d transcripts over 7 days, %ds" % (n, idle_s), [cpu], "%", 0.2, "<=", note=note)
                if mode == "poll" and n == 20000:
                    res.add("poll path: stat calls per second", "%d recent transcripts, idle" % n, [stats], "/s",
                            float("inf"), "<=", note="reported")
        finally:
            w.close()
    return out


FAKE_CLAUDE_IDLE = """#!/bin/sh
# a fake Claude Code resuming a conversation: its registry names the session, as the real one's does
mkdir -p "$FAKE_REGISTRY"
printf '{"pid": %s, "sessionId": "%s", "cwd": "%s", "status": "idle", "kind": "interactive"}' \\
  "$$" "$FAKE_SESSION" "$PWD" > "$FAKE_REGISTRY/$$.json.tmp" && mv "$FAKE_REGISTRY/$$.json.tmp" "$FAKE_REGISTRY/$$.json"
trap 'rm -f "$FAKE_REGISTRY/$$.json"; exit 0' INT TERM
while read -r line; do :; done
"""


def bench_poll_latency(res, quick):
    """By stat: an append to an active transcript, and to one idle for a week whose agent was just
    started on it (`claude --resume <id>`: its registry names the session) -> /events."""
    w = World(2, claude=0, codex=0)
    try:
        recent_transcripts(w, 2000)
        cwd = os.path.join(w.home, "work", "resumed")
        os.makedirs(cwd)
        proj = os.path.join(w.home, ".claude", "projects", opensessions.claude_project_dir_name(cwd))
        os.makedirs(proj)
        week_ago = time.time() - 7 * 86400
        old = []
        for i in range(4 if quick else 10):
            sid = str(uuid.uuid4())
            claude_transcript(os.path.join(proj, sid + ".jsonl"), sid, cwd, 20 * 1024)
            os.utime(os.path.join(proj, sid + ".jsonl"), (week_ago, week_ago))
            old.append(sid)
        os.utime(proj, (week_ago, week_ago))
        active_sid = str(uuid.uuid4())
        active = os.path.join(proj, active_sid + ".jsonl")
        claude_transcript(active, active_sid, cwd, 20 * 1024)
        w.env["OPENSESSIONS_WATCH"] = "poll"
        w.start_server()
        ev = Events(w.port)
        time.sleep(0.5)
        lat = []
        for i in range(10 if quick else 30):
            name = "active %d" % i
            start = len(ev.events)
            t0 = time.monotonic()
            with open(active, "a") as f:
                f.write(json.dumps({"type": "custom-title", "customTitle": name, "sessionId": active_sid}) + "\n")
            t = ev.wait(start, lambda raw: thread_field(raw, "claude", active_sid, "title") == name, 10)
            lat.append((t - t0) * 1000 if t else float("nan"))
            time.sleep(random.uniform(0.2, 1.5))  # appends at any phase of the 1 s tick
        res.add("poll path: append to an active transcript", "2,000 recent transcripts, OPENSESSIONS_WATCH=poll",
                lat, "ms", 1200, "p95<=", note=missed(lat))
        fake = os.path.join(w.base, "bin", "claude")
        os.makedirs(os.path.dirname(fake))
        with open(fake, "w") as f:
            f.write(FAKE_CLAUDE_IDLE)
        os.chmod(fake, 0o755)
        reg = os.path.join(w.home, ".claude", "sessions")
        wlat = []
        for sid in old:
            start = len(ev.events)
            w.tmux("send-keys", "-t", "=s001:", "cd %s && FAKE_REGISTRY=%s FAKE_SESSION=%s %s --resume %s" % (cwd, reg, sid, fake, sid), "Enter")
            if ev.wait(start, lambda raw: thread_field(raw, "claude", sid, "alive") is True, 10) is None:
                raise RuntimeError("the fake Claude's registry never made thread %s live" % sid)
            time.sleep(random.uniform(0.2, 1.0))  # the user types a first prompt
            name = "resumed %s" % sid[:8]
            start = len(ev.events)
            t0 = time.monotonic()
            with open(os.path.join(proj, sid + ".jsonl"), "a") as f:
                f.write(json.dumps({"type": "custom-title", "customTitle": name, "sessionId": sid}) + "\n")
            t = ev.wait(start, lambda raw: thread_field(raw, "claude", sid, "title") == name, 10)
            wlat.append((t - t0) * 1000 if t else float("nan"))
            w.tmux("send-keys", "-t", "=s001:", "C-c", "")
            time.sleep(0.3)
        res.add("poll path: append to a transcript idle a week", "its agent just started on it: the registry holds it",
                wlat, "ms", 5000, "p95<=", note=missed(wlat))
        ev.close()
    finally:
        w.close()


def bench_save(res, n):
    w = World(10, claude=20, codex=0, size=4096)
    try:
        bin_dir = os.path.join(w.base, "bin")
        os.makedirs(bin_dir)
        fake = os.path.join(bin_dir, "claude")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\nmkdir -p "$REG"; printf \'{"pid": %s, "sessionId": "%s", "cwd": "%s", "status": "idle"}\' "$$" "$SID" "$PWD" > "$REG/$$.json"\nwhile read -r l; do :; done\n')
        os.chmod(fake, 0o755)
        reg = os.path.join(w.home, ".claude", "sessions")
        # 50 panes: 10 sessions x 5 panes; 20 run a Claude with its own conversation
        panes = []
        for s in range(10):
            for p in range(4):
                w.tmux("split-window", "-t", "=s%03d:0" % s, "-c", w.cwd)
                w.tmux("select-layout", "-t", "=s%03d:0" % s, "tiled")
        for line in w.tmux("list-panes", "-a", "-F", "#{session_name}:#{window_index}.#{pane_index} #{pane_id}").splitlines():
            panes.append(line.split())
        expect = {}
        for i, (target, pane_id) in enumerate(panes[:20]):
            sid = w.claude_ids[i]
            w.tmux("send-keys", "-t", pane_id, "REG=%s SID=%s %s" % (reg, sid, fake), "Enter")
            expect[target] = sid
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len([n for n in os.listdir(reg)] if os.path.isdir(reg) else []) < 20:
            time.sleep(0.05)
        w.tmux("set-option", "-g", "@resurrect-dir", os.path.join(w.base, "resurrect"))
        times = []
        for i in range(n):
            t0 = time.monotonic()
            # as the resurrect hook runs it (python3 -S …pyz save, see tmux_setup_resurrect)
            subprocess.run([PY, "-S", w.pyz, "-S", w.socket, "save"], env=w.env, check=True, stdout=subprocess.DEVNULL)
            times.append((time.monotonic() - t0) * 1000)
        doc = json.load(open(os.path.join(w.base, "resurrect", "opensessions_last")))
        got = {"%s:%s.%s" % (r["session"], r["window"], r["paneIndex"]): r["id"] for r in doc["records"]}
        right = sum(1 for k, v in expect.items() if got.get(k) == v)
        res.add("resurrect save", "50 panes, 20 agents (%d/20 right)" % right, times, "ms", 100, "<=",
                note="" if right == 20 else "WRONG ATTRIBUTION")
        return times, right
    finally:
        w.close()


def bench_keepalive(res, n):
    """Requests with a body on one keep-alive connection: headers and body written apart wait for the
    client's delayed ACK (Nagle), ~40 ms each."""
    w = World(3, claude=0, codex=0)
    try:
        w.start_server()
        s = socket.create_connection(("127.0.0.1", w.port), timeout=10)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf or len(buf.partition(b"\r\n\r\n")[2]) < int(
                    buf.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                buf += s.recv(65536)
            times.append((time.perf_counter() - t0) * 1000)
        s.close()
        res.add("keep-alive GET /health", "one connection, %d requests" % n, times, "ms", 5, "<=")
        return times
    finally:
        w.close()


def bench_many_threads(res, quick):
    """Hostile load: N distinct threads from POST /api/agent-event. Per-event cost at the
    start and at the end (must not grow with the number of threads), RSS, the state file."""
    n = 10000 if quick else 30000
    w = World(3, claude=0, codex=0)
    try:
        w.start_server()
        state_file = None
        costs = []
        cpu0 = proc_cpu_s(w.server.pid)
        t_all = time.monotonic()
        for i in range(n):
            t0 = time.perf_counter()
            http(w.port, "POST", "/api/agent-event", {"agent": "claude", "status": "running" if i % 2 else "done",
                                                      "threadId": "t%06d" % i, "tmuxSession": "s001",
                                                      "threadName": "thread %d" % i})
            costs.append((time.perf_counter() - t0) * 1000)
        wall = time.monotonic() - t_all
        cpu = proc_cpu_s(w.server.pid) - cpu0
        sdir = os.path.join(w.home, ".state", "opensessions")
        time.sleep(6)  # the debounced save
        sizes = [os.path.getsize(os.path.join(sdir, f)) for f in os.listdir(sdir) if f.startswith("state-")] \
            if os.path.isdir(sdir) else [0]
        first, last = costs[:1000], costs[-1000:]
        res.add("agent-event: first 1,000 threads", "%d threads posted, per event" % n, first, "ms", 20, "p95<=")
        res.add("agent-event: last 1,000 threads", "%d threads posted, per event (%.0f s, %.0f s CPU)"
                % (n, wall, cpu), last, "ms", 20, "p95<=")
        res.add("server RSS after %d threads" % n, "agent-event, distinct thread ids", [proc_status(w.server.pid, "VmRSS")],
                "MB", 60, "<=")
        res.add("state file after %d threads" % n, "agent-event, distinct thread ids", [max(sizes) / 1e6], "MB", 5, "<=")
        return costs
    finally:
        w.close()


FOREIGN_KINDS = ("fifo", "zero", "sparse")


def _plant(path, kind):
    """Where a reader expects a small regular file: a FIFO, a symlink to /dev/zero, or a 1 GB sparse file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.lexists(path):
        os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        os.symlink("/dev/zero", path)
    else:
        with open(path, "wb") as f:
            f.truncate(1 << 30)


def _foreign_readers(w):
    """reader -> (path at start, path planted while the server runs): what the server reads of the
    agents' files and the panes' repositories. The same path twice: removed, planted again."""
    paths = opensessions.agent_paths(w.env)
    day = os.path.join(paths["codex"]["home"], "sessions", time.strftime("%Y/%m/%d"))
    u = "6f1c3a52-1d0b-4c1e-9a57-%012d"
    two = lambda f: (f % 0, f % 1)
    return {
        "claude registry": two(os.path.join(paths["claude"]["home"], "sessions", "40000%02d.json")),
        "claude transcript": two(os.path.join(w.proj, u + ".jsonl")),
        "codex rollout": two(os.path.join(day, "rollout-2026-11-22T01-46-31-01a200ee-0000-7000-9e17-%012d.jsonl")),
        "codex session_index": (os.path.join(paths["codex"]["home"], "session_index.jsonl"),) * 2,
        "codex state_5.sqlite": (os.path.join(paths["codex"]["home"], "state_5.sqlite"),) * 2,
        "opencode.db": (paths["opencode"]["db"],) * 2,
        "opencode.db-journal": (paths["opencode"]["db"] + "-journal",) * 2,
        "amp thread": two(os.path.join(paths["amp"]["threads"], "T-019b9d03-62e3-772f-9780-%012d.json")),
        "gemini projects.json": (os.path.join(paths["gemini"]["home"], "projects.json"),) * 2,
        "gemini chat (1st line)": two(os.path.join(paths["gemini"]["home"], "tmp", "p", "chats",
                                                   "session-2026-11-27T22-08-%08x.jsonl")),
        "qwen registry": two(os.path.join(paths["qwen"]["home"], "sessions", "40000%02d.json")),
        "qwen chat": two(os.path.join(paths["qwen"]["home"], "projects", "-w", "chats", u + ".jsonl")),
        "pi session": two(os.path.join(paths["pi"]["home"], "sessions", "--w--", "2026-11-22T01-46-31-000Z_" + u + ".jsonl")),
        "git HEAD (pane cwd)": (os.path.join(w.cwd, ".git", "HEAD"),) * 2,
    }


def _start_within(w, seconds):
    """Start the server; -> seconds until its runtime file appeared, or None (it never answered)."""
    t0 = time.monotonic()
    w.server = subprocess.Popen([PY, w.pyz, "-S", w.socket, "server", "--port", "0", "--log",
                                 os.path.join(w.base, "server.log")], env=w.env)
    info_dir = os.path.join(w.base, "run", "opensessions")
    while time.monotonic() - t0 < seconds:
        for name in os.listdir(info_dir) if os.path.isdir(info_dir) else []:
            if name.endswith(".json") and not name.startswith("."):
                try:
                    with open(os.path.join(info_dir, name)) as f:
                        info = json.load(f)
                except (ValueError, OSError):
                    continue
                if info.get("pid") == w.server.pid:
                    w.port = info["port"]
                    return time.monotonic() - t0
        time.sleep(0.01)
    return None


def _stop(w):
    if w.server and w.server.poll() is None:
        w.server.kill()
        w.server.wait(10)
    info_dir = os.path.join(w.base, "run", "opensessions")
    for name in os.listdir(info_dir) if os.path.isdir(info_dir) else []:
        os.unlink(os.path.join(info_dir, name))


def bench_foreign_files(res, quick, detail=True):
    """Files that never end where the server expects an agent's small file: for each
    reader and each of a FIFO, a symlink to /dev/zero and a 1 GB sparse file, planted before the
    server starts (its cold start) and again while it runs (inotify): /health answer times while it
    meets them (polled every 10 ms: p95 and max), and the server's peak RSS (VmHWM). A server that
    never answers counts 10 s. The first row is the same with no such file (the machine's own noise)."""
    w = World(1, claude=1, codex=0, size=20 * 1024)
    worst_p95, worst_max, worst_rss, rows = 0.0, 0.0, 0.0, []
    seconds = 0.5 if quick else 1.0
    try:
        readers = _foreign_readers(w)
        cases = [("(no such file: baseline)", None, None, "-")] + [
            (reader, first, later, kind) for reader, (first, later) in sorted(readers.items()) for kind in FOREIGN_KINDS]
        for reader, first, later, kind in cases:
            if first and first.endswith("-journal"):  # a database beside it: SQLite looks for a hot journal
                import sqlite3
                conn = sqlite3.connect(first[:-len("-journal")])
                conn.execute("CREATE TABLE IF NOT EXISTS session (id TEXT)")
                conn.commit()
                conn.close()
            if first:
                _plant(first, kind)
            started = _start_within(w, 10.0)
            stalls, rss = [], float("nan")
            if started is None:
                stalls = [10000.0]
            else:
                done = threading.Event()

                def poll():
                    while not done.is_set():
                        a = time.monotonic()
                        try:
                            http(w.port, "GET", "/health")
                            stalls.append((time.monotonic() - a) * 1000)
                        except OSError:
                            stalls.append(10000.0)
                        time.sleep(0.01)
                poller = threading.Thread(target=poll, daemon=True)
                poller.start()
                if later:
                    _plant(later, kind)
                time.sleep(seconds)
                done.set()
                poller.join(15)
                rss = proc_status(w.server.pid, "VmHWM")
            _stop(w)
            for p in set((first, later)) - {None}:
                if os.path.lexists(p):
                    os.unlink(p)
            p95, top = pct(stalls, 95), max(stalls)
            if first:
                worst_p95, worst_max = max(worst_p95, p95), max(worst_max, top)
                worst_rss = max(worst_rss, rss if rss == rss else 0)
            rows.append({"reader": reader, "kind": kind, "start_s": started, "p95_ms": p95, "max_ms": top,
                         "peak_rss_mb": rss, "requests": len(stalls)})
            if detail or not first:
                res.add("/health: %s, %s" % (reader, kind), "%d requests, start %s" % (
                    len(stalls), "%.2f s" % started if started is not None else "never"), stalls, "ms", 100, "p95<=",
                    note="max %.0f ms, peak RSS %s" % (top, "%.0f MB" % rss if rss == rss else "- (did not start)"))
        res.add("/health beside files that never end", "worst p95 of %d readers x FIFO, /dev/zero, 1 GB sparse"
                % len(readers), [worst_p95], "ms", 100, "<=", note="worst max %.0f ms" % worst_max)
        res.add("peak RSS beside files that never end", "worst server VmHWM of the same", [worst_rss], "MB", 100, "<=")
        return rows
    finally:
        w.close()


PRINTER = r"""
import sys, time
line = "%06d the quick brown fox jumps over the lazy dog 0123456789 abcdefghij"
n, t0 = 0, time.monotonic()
while True:  # 1,000 lines a second, in batches of 10
    sys.stdout.write("".join(line % (n + i) + "\n" for i in range(10)))
    sys.stdout.flush()
    n += 10
    time.sleep(max(0.0, t0 + n / 1000.0 - time.monotonic()))
"""


class PreviewStreamReader(object):
    """GET /api/preview?…&follow=1: (arrival time, doc) per pushed preview, in a thread."""

    def __init__(self, port, thread):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(("GET /api/preview?thread=%s&lines=40&follow=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                           % thread).encode())
        self.docs = []
        self.cond = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        buf = b""
        while True:
            try:
                d = self.sock.recv(1 << 20)
            except OSError:
                return
            if not d:
                return
            buf += d
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                i = block.find(b"data: ")
                if i >= 0:
                    with self.cond:
                        self.docs.append((time.monotonic(), json.loads(block[i + 6:])))
                        self.cond.notify_all()

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def bench_preview(res, quick):
    """A preview shown over a pane printing 1,000 lines a second: the CPU it costs (our server, and
    what tmux spends more than without it), how many times a second it is pushed; and how soon a
    line printed in a quiet pane reaches the client."""
    secs = 10 if quick else 60
    w = World(2, claude=0, codex=0)
    try:
        w.start_server()
        tmux_pid = int(w.tmux("display-message", "-p", "#{pid}").strip())
        # a preview is shown only while the thread's agent is the pane's foreground process: the
        # printer and the quiet pane's shell run under the name `claude` (a link: comm is its name)
        agent_bin = os.path.join(w.base, "agent-bin")
        os.makedirs(agent_bin)
        os.symlink(os.path.realpath(PY), os.path.join(agent_bin, "claude"))
        os.makedirs(os.path.join(w.base, "agent-sh"))
        os.symlink("/bin/sh", os.path.join(w.base, "agent-sh", "claude"))
        printer = shlex.quote(os.path.join(agent_bin, "claude")) + " -c " + shlex.quote(PRINTER)
        loud = w.tmux("new-window", "-d", "-P", "-F", "#{pane_id}", "-t", "s001", printer).strip()
        quiet = w.tmux("new-window", "-d", "-P", "-F", "#{pane_id}", "-t", "s001",
                       shlex.quote(os.path.join(w.base, "agent-sh", "claude"))).strip()
        ids = {loud: str(uuid.uuid4()), quiet: str(uuid.uuid4())}
        for pane, tid in ids.items():
            http(w.port, "POST", "/api/agent-event", {"agent": "claude", "status": "running", "threadId": tid, "paneId": pane})
        time.sleep(2.0)
        base_srv, base_tmux = proc_cpu_s(w.server.pid), proc_cpu_s(tmux_pid)
        t0 = time.monotonic()
        time.sleep(secs)
        span = time.monotonic() - t0
        srv_idle = (proc_cpu_s(w.server.pid) - base_srv) / span * 100
        tmux_idle = (proc_cpu_s(tmux_pid) - base_tmux) / span * 100
        reader = PreviewStreamReader(w.port, ids[loud])
        time.sleep(1.0)
        n0 = len(reader.docs)
        base_srv, base_tmux = proc_cpu_s(w.server.pid), proc_cpu_s(tmux_pid)
        t0 = time.monotonic()
        time.sleep(secs)
        span = time.monotonic() - t0
        srv = (proc_cpu_s(w.server.pid) - base_srv) / span * 100
        tmux_more = (proc_cpu_s(tmux_pid) - base_tmux) / span * 100 - tmux_idle
        pushes = (len(reader.docs) - n0) / span
        health = json.loads(http(w.port, "GET", "/health")[1])["previews"]
        reader.close()
        # what the sidebar did before: GET /api/preview every 0.3 s while shown (a tmux process per read)
        base_srv, base_tmux = proc_cpu_s(w.server.pid), proc_cpu_s(tmux_pid)
        t0 = time.monotonic()
        while time.monotonic() - t0 < secs:
            http(w.port, "GET", "/api/preview?thread=%s&lines=40" % ids[loud])
            time.sleep(0.3)
        span = time.monotonic() - t0
        polled = (proc_cpu_s(w.server.pid) - base_srv) / span * 100
        polled_tmux = (proc_cpu_s(tmux_pid) - base_tmux) / span * 100 - tmux_idle
        label = "pane printing 1,000 lines/s, %ds, load %.1f" % (secs, os.getloadavg()[0])
        res.add("preview: server CPU while shown", label + " (%.2f%% before it was shown)" % srv_idle, [srv], "%", 5, "<=")
        res.add("preview: server + tmux CPU it adds", label + " (tmux %+.2f%%)" % tmux_more,
                [srv - srv_idle + tmux_more], "%", 5, "<=")
        res.add("preview: pushes per second", label + " (followed %s)" % ("yes" if health["followed"] == loud else "NO"),
                [pushes], "/s", 5, ">=")
        res.add("preview polled every 0.3 s (before): server + tmux CPU", label + " (tmux %+.2f%%; 3.3 reads/s)"
                % polled_tmux, [polled - srv_idle + polled_tmux], "%", 5, "<=")
        # a quiet pane: a printed line reaches the client this soon
        reader = PreviewStreamReader(w.port, ids[quiet])
        time.sleep(1.0)
        lat = []
        for i in range(10 if quick else 20):
            marker = "marker-%d-%d" % (i, random.randint(0, 1 << 30))
            with reader.cond:
                n = len(reader.docs)
            t = time.monotonic()
            w.tmux("send-keys", "-t", quiet, "echo " + marker, "Enter")
            with reader.cond:
                ok = reader.cond.wait_for(lambda: any(marker in l.split()[-1:] for _, d in reader.docs[n:]
                                                      for l in d["lines"] if l.strip() == marker), 5)
                got = next((a for a, d in reader.docs[n:] if any(l.strip() == marker for l in d["lines"])), None)
            lat.append((got - t) * 1000 if ok and got else float("nan"))
            time.sleep(0.2)
        reader.close()
        res.add("preview: a printed line reaches the client", "quiet pane (tmux send-keys -> the pushed doc)", lat,
                "ms", 100, "p95<=")
    finally:
        w.close()


# ---- remote hosts over real OpenSSH (tests/sshlab.py: sshd per host on 127.0.0.N, a user each) ---------

POST_EVENTS = r"""
import glob, json, os, sys, urllib.request
d = "/tmp/opensessions-%d" % os.getuid()
info = json.load(open(glob.glob(os.path.join(d, "server-*.json"))[0]))
for s in range(int(sys.argv[1])):
    for t in range(int(sys.argv[2])):
        body = json.dumps({"agent": "claude", "status": "done", "threadId": "bench-%d-%d" % (s, t),
                           "threadName": "thread %d of s%d" % (t, s), "tmuxSession": "s%d" % s}).encode()
        req = urllib.request.Request("http://127.0.0.1:%d/api/agent-event" % info["port"], body,
                                     {"X-Opensessions-Token": info["token"]})
        urllib.request.urlopen(req).read()
"""


def _remote_thread(raw, host, tid, field="status"):
    state = json.loads(raw)
    for t in [t for s in state["sessions"] for t in s["threads"]] + state["threads"]:
        if t.get("host") == host and t["id"] == tid:
            return t.get(field)
    return None


def _host(raw, name):
    return next((h for h in json.loads(raw)["hosts"] if h["name"] == name), {})


def _claude_line(sid, cwd, done=False):
    with open(os.path.join(ROOT, "tests", "fixtures", "remote", "claude-turn.jsonl")) as f:
        recs = [json.loads(l) for l in f]
    rec = json.loads(json.dumps(recs[3] if done else recs[0]))
    rec["sessionId"] = sid
    if "cwd" in rec:
        rec["cwd"] = cwd
    rec["timestamp"] = iso_now()
    return json.dumps(rec) + "\n"


def bench_remote(res, quick):
    """10 hosts x 50 threads (5 sessions x 10 each), each an sshd on 127.0.0.N for its own user, all
    followed by one local server (the .pyz): zero-install first connects, append and wait latency,
    idle CPU and RSS, processes per host, a hung host, an sshd restart."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import sshlab
    why = sshlab.missing()
    if why:
        for row in ("remote: zero-install first connect", "remote: transcript append -> local /events",
                    "remote: agent waiting -> local notification", "remote: local idle CPU, 10 hosts x 50 threads",
                    "remote: local RSS, 10 hosts x 50 threads", "remote: ssh processes per host",
                    "remote: sshd restarted -> reconnected, resynced", "remote: host hung: local /health",
                    "remote: host hung: other host append -> /events"):
            res.add(row, "real ssh", [], "", 0, "<=", note="skipped: " + why)
        return
    n_hosts = 10
    lab = sshlab.SshLab()
    w = World(1, claude=0, codex=0)
    try:
        notify_log = os.path.join(w.base, "notify.log")
        bin_dir = os.path.join(w.base, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        with open(os.path.join(bin_dir, "notify-send"), "w") as f:
            f.write('#!/bin/sh\necho "$(date +%%s.%%N) $*" >> %s\n' % notify_log)
        os.chmod(os.path.join(bin_dir, "notify-send"), 0o755)
        w.env = lab.env(w.env)
        w.env["PATH"] = bin_dir + os.pathsep + w.env["PATH"]
        hosts = [lab.add("host%d" % i, "127.0.0.%d" % (10 + i)) for i in range(n_hosts)]
        sids = {}
        for h in hosts:
            h.tmux("new-session", "-d", "-s", "s0", "-x", "160", "-y", "40", "-c", h.path("proj"))
            for s in range(1, 5):
                h.tmux("new-session", "-d", "-s", "s%d" % s, "-c", h.path("proj"))
            sid = str(uuid.uuid4())  # a transcript-only thread for the append figures
            proj = h.path(".claude", "projects", opensessions.claude_project_dir_name(h.path("proj")))
            os.makedirs(proj, exist_ok=True)
            with open(os.path.join(proj, sid + ".jsonl"), "w") as f:
                f.write(_claude_line(sid, h.path("proj"), done=True))
            h.chown()
            sids[h.alias] = (sid, os.path.join(proj, sid + ".jsonl"))
        w.start_server()
        ev = Events(w.port)
        idle_s = 10 if quick else 30
        time.sleep(2)
        base_cpu = bench_idle_cpu(w.server.pid, idle_s)  # the same server with no host: this machine's noise
        # zero-install: each host is new (no cached program): add it, wait for connected + first snapshot
        first = []
        for h in hosts:
            start = len(ev.events)
            t0 = time.monotonic()
            names = [x.alias for x in hosts[:hosts.index(h) + 1]]
            http(w.port, "POST", "/ui", {"hosts": names})
            t = ev.wait(start, lambda raw: _host(raw, h.alias).get("state") == "connected"
                        and _host(raw, h.alias).get("lastEvent"), timeout=30)
            first.append((t - t0) if t else float("nan"))
        res.add("remote: zero-install first connect", "ssh + .pyz shipped + host server started, 10 hosts",
                first, "s", 3, "p95<=", note=missed(first))
        # 50 threads per host, reported to each host's own server
        for h in hosts:
            h.ssh("python3 -c %s 5 10" % shlex_quote(POST_EVENTS))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = w.state()
            counts = [sum(len(s["threads"]) for s in st["sessions"] if s.get("host") == h.alias) for h in hosts]
            if min(counts) >= 50:
                break
            time.sleep(0.2)
        # processes per host on this side: ssh children of the server, by host
        table = sshlab.proc_table()
        per_host = []
        for h in hosts:
            n = 0
            for pid in sshlab.descendants(w.server.pid, table):
                try:
                    argv = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
                except OSError:
                    continue
                if table[pid][1] == "ssh" and h.alias.encode() in argv:
                    n += 1
            per_host.append(n)
        others = [p for p in sshlab.descendants(w.server.pid, table) if table[p][1] not in ("ssh", "tmux")]
        res.add("remote: ssh processes per host", "local side, 10 hosts (other children: %d)" % len(others),
                [max(per_host)], "procs", 1, "<=", note="" if min(per_host) == 1 else "min %d" % min(per_host))
        # idle: CPU and RSS with 10 hosts x 50 threads
        time.sleep(3)
        cpu = bench_idle_cpu(w.server.pid, idle_s)
        res.add("remote: local idle CPU, 10 hosts x 50 threads", "%d s, heartbeats only" % idle_s, [cpu], "%",
                0.5, "<=", note="%d threads per host listed; no hosts: %.2f %%" % (min(counts), base_cpu))
        res.add("remote: local RSS, 10 hosts x 50 threads", "after the figures above",
                [proc_status(w.server.pid, "VmRSS")], "MB", 60, "<=")
        # a host's transcript append -> local /events
        def append_latency(pool, n):
            lat = []
            for i in range(n):
                h = pool[i % len(pool)]
                sid, path = sids[h.alias]
                for done in (False, True):
                    start = len(ev.events)
                    t0 = time.monotonic()
                    with open(path, "a") as f:
                        f.write(_claude_line(sid, h.path("proj"), done))
                    want = "done" if done else "running"
                    t = ev.wait(start, lambda raw: _remote_thread(raw, h.alias, sid) == want, timeout=10)
                    if not done:
                        lat.append((t - t0) * 1000 if t else float("nan"))
                time.sleep(0.05)
            return lat
        lat = append_latency(hosts, 10 if quick else 20)
        res.add("remote: transcript append -> local /events", "10 hosts x 50 threads, over ssh", lat, "ms", 50,
                "p95<=", note=missed(lat))
        # a host's agent waits -> local notification (the fake agent notes when its registry says so)
        waits = []
        for i in range(3 if quick else 5):
            h = hosts[i % len(hosts)]
            before = open(notify_log).read().count("\n") if os.path.exists(notify_log) else 0
            want = "%s:s0" % h.alias
            if os.path.exists(h.path("keys.log")):
                os.unlink(h.path("keys.log"))  # the host's user writes it (not root)
            sid = str(uuid.uuid4())
            h.tmux("new-window", "-d", "-t", "=s0:", "-c", h.path("proj"),
                   "exec %s %s wait" % (h.path("bin", "claude"), sid))
            deadline = time.monotonic() + 10
            got = float("nan")
            while time.monotonic() < deadline:
                lines = open(notify_log).read().splitlines()[before:] if os.path.exists(notify_log) else []
                lines = [l.split()[0] for l in lines if want in l and "needs you" in l]
                if lines:
                    marks = [json.loads(l) for l in open(h.path("keys.log")) if '"waiting"' in l] \
                        if os.path.exists(h.path("keys.log")) else []
                    if marks:
                        got = (float(lines[0]) - marks[0]["t"]) * 1000
                        break
                time.sleep(0.005)
            waits.append(got)
            time.sleep(2.1)  # past the notifier's 2 s quiet window: each sample is a first notification
        res.add("remote: agent waiting -> local notification", "fake Claude registry 'waiting' -> notify-send",
                waits, "ms", 1000, "<=", note=missed(waits))
        # one host hung (every sshd process of it SIGSTOPped): /health and the other hosts' appends
        hung = hosts[0]
        hung.stop()
        try:
            health = []
            for i in range(20):
                t0 = time.monotonic()
                code, _ = http(w.port, "GET", "/health")
                health.append((time.monotonic() - t0) * 1000 if code == 200 else float("nan"))
                time.sleep(0.05)
            lat = append_latency(hosts[1:], 10 if quick else 20)
            down = ev.wait(0, lambda raw: _host(raw, hung.alias).get("state") != "connected", timeout=30)
        finally:
            hung.cont()
        res.add("remote: host hung: local /health", "one of 10 hosts SIGSTOPped", health, "ms", 50, "p95<=")
        res.add("remote: host hung: other host append -> /events", "9 hosts answering, 1 hung", lat, "ms", 50,
                "p95<=", note=missed(lat) + ("" if down else " (the hung host was never noticed)"))
        # sshd restarted on a host: connected and resynced after it is back
        back = []
        for i in range(2 if quick else 4):
            h = hosts[1 + i]
            h.kill()
            start = len(ev.events)
            ev.wait(start, lambda raw: _host(raw, h.alias).get("state") == "unreachable", timeout=20)
            time.sleep(random.uniform(0.0, 2.0))
            start = len(ev.events)
            h.start()
            t_back = time.monotonic()
            wall_back = time.time() * 1000
            t = ev.wait(start, lambda raw: _host(raw, h.alias).get("state") == "connected"
                        and (_host(raw, h.alias).get("lastEvent") or 0) > wall_back, timeout=40)
            back.append((t - t_back) if t else float("nan"))
        res.add("remote: sshd restarted -> reconnected, resynced", "after it is back (backoff 1, 2, 4 ... s)",
                back, "s", 5, "<=", note=missed(back))
        ev.close()
    finally:
        w.close()
        lab.close()


def shlex_quote(s):
    import shlex
    return shlex.quote(s)


def _history_generator():
    import importlib.util
    spec = importlib.util.spec_from_file_location("history_home", os.path.join(ROOT, "tests", "fixtures", "tools",
                                                                               "history_home.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class PtyClient(object):
    """A real tmux client on a pty (keys typed into it as a user types them), its output drained."""

    def __init__(self, w, rows=50, cols=200):
        import fcntl
        import pty
        import struct
        import termios
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(["tmux", "-S", w.socket, "attach-session", "-t", "=s000"], stdin=slave, stdout=slave,
                                     stderr=slave, env=dict(w.env, TERM="xterm-256color"), start_new_session=True)
        os.close(slave)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while os.read(self.master, 65536):
                pass
        except OSError:
            return

    def type(self, data):
        os.write(self.master, data)

    def close(self):
        self.proc.terminate()
        try:
            os.close(self.master)
        except OSError:
            pass


def bench_history(res, quick):
    """History: every past conversation on a HOME with 20,000 of them across six agents (made from the
    captured formats, tests/fixtures/tools/history_home.py): cold start to a full index (first build,
    and with the saved index), its memory, /api/history for one directory, the picker's first screen
    and one typed character."""
    total = 2000 if quick else 20000
    w = World(1, claude=0, codex=0)
    try:
        w.env["XDG_DATA_HOME"] = os.path.join(w.home, ".local", "share")
        t0 = time.monotonic()
        made = _history_generator().build(FIX, w.home, total=total, seed=1)
        print("history bench: %d conversations generated in %.0f s" % (total, time.monotonic() - t0), file=sys.stderr)
        subprocess.run(["sync"])
        w.tmux("set-option", "-g", "default-command", "sh")

        during = []  # /health answered while the index is being built (the event loop is not blocked)

        def complete(timeout=300):
            t_start = time.monotonic()
            while time.monotonic() - t_start < timeout:
                try:
                    status, body = http(w.port, "GET", "/api/history?limit=1")
                    doc = json.loads(body)
                    if status == 200 and doc.get("complete"):
                        return doc
                    t1 = time.monotonic()
                    http(w.port, "GET", "/health")
                    during.append((time.monotonic() - t1) * 1000)
                except (OSError, ValueError):
                    pass
                time.sleep(0.05)
            raise RuntimeError("the history index did not complete")

        # the same HOME without the index: the baseline RSS
        w.env["OPENSESSIONS_HISTORY"] = "off"
        w.start_server()
        time.sleep(3)
        base_rss = proc_status(w.server.pid, "VmRSS")
        w.server.terminate()
        w.server.wait()
        del w.env["OPENSESSIONS_HISTORY"]
        state = os.path.join(w.env["XDG_STATE_HOME"], "opensessions", "history.jsonl")
        firsts, restarts, rss = [], [], []
        for run in range(1 if quick else 2):
            if os.path.exists(state):
                os.unlink(state)
            t0 = time.monotonic()
            w.start_server()
            doc = complete()
            firsts.append(time.monotonic() - t0)
            if doc["count"] != total:
                raise RuntimeError("the index holds %d conversations, want %d" % (doc["count"], total))
            time.sleep(HISTORY_SETTLE)
            rss.append(proc_status(w.server.pid, "VmRSS") - base_rss)
            w.server.terminate()
            w.server.wait()
            for again in range(2 if quick else 3):  # the saved index: only changed files are read
                t0 = time.monotonic()
                w.start_server()
                complete()
                restarts.append(time.monotonic() - t0)
                w.server.terminate()
                w.server.wait()
        w.start_server()  # for the rest: the API and the picker
        complete()
        time.sleep(HISTORY_SETTLE)
        rss_saved = [proc_status(w.server.pid, "VmRSS") - base_rss]
        load = os.getloadavg()[0]
        res.add("history: cold start, first index build", "%d conversations, 6 agents, no saved index" % total, firsts,
                "s", 60, "<=", note="runs in a worker thread: the server serves from its start; load %.1f" % load)
        res.add("history: /health while the first index is built", "%d conversations" % total, during, "ms", 100,
                "p95<=", note="the worker thread shares the interpreter lock with the loop")
        res.add("history: cold start with the index built", "%d conversations, saved index" % total, restarts, "s", 3.0,
                "<=", note="start to index complete; load %.1f" % load)
        res.add("history: extra server RSS for the index", "%d conversations, saved index" % total, rss_saved, "MB",
                20, "<=", note="vs the same HOME with OPENSESSIONS_HISTORY=off (%.0f MB)" % base_rss)
        res.add("history: extra server RSS, first build", "%d conversations, built from the files" % total, rss, "MB",
                20, "<=", note="what parsing 20,000 files leaves behind in the allocator")
        # /api/history for one directory (the picker's first request)
        counts = {}
        for agent, convs in made.items():
            for _, cwd, _, _ in convs:
                counts[cwd] = counts.get(cwd, 0) + 1
        busiest = max(counts, key=counts.get)
        lat = []
        for i in range(30 if quick else 100):
            t0 = time.monotonic()
            status, body = http(w.port, "GET", "/api/history?limit=100&dir=" + busiest)
            lat.append((time.monotonic() - t0) * 1000)
            if status != 200:
                raise RuntimeError(body)
        res.add("history: /api/history for one directory", "%d in the busiest dir of %d, 100 rows" % (counts[busiest], total),
                lat, "ms", 20, "p95<=", note="load %.1f" % os.getloadavg()[0])
        # the picker on a real client: prefix o r -> its first screen; one typed character -> the list redrawn.
        # When: the picker writes a line per draw of its history tab once curses has written it to the
        # terminal (OPENSESSIONS_TRACE, CLOCK_MONOTONIC as ours), matched to when we typed.
        pane = w.tmux("display-message", "-p", "-t", "=s000", "#{pane_id}").strip()
        w.tmux("send-keys", "-t", pane, "-l", "cd %s" % busiest)
        w.tmux("send-keys", "-t", pane, "Enter")
        trace = os.path.join(w.base, "picker-trace.txt")
        w.tmux("set-environment", "-g", "OPENSESSIONS_TRACE", trace)
        import shlex
        for bind in opensessions.tmux_bindings(" ".join(shlex.quote(a) for a in (PY, "-S", w.pyz)), {}, ("80%", "75%")):
            w.tmux("bind-key", "-T", bind[0], bind[1], *bind[2:])  # the plugin's bindings
        time.sleep(0.5)
        client = PtyClient(w)
        time.sleep(1.0)
        opens, keys, keys_all = [], [], []
        word = _picker_word(made, busiest)

        cpu = {"open": [], "key": []}  # the picker's own CPU seconds: to its first list / per key

        def drawn(t0, pred, timeout=10.0, what=None):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    with open(trace) as f:
                        prev = None
                        for line in f:
                            t, loaded, found, used, query = line.rstrip("\n").split(" ", 4)
                            if float(t) >= t0 and pred(int(loaded), int(found), json.loads(query)):
                                if what == "open":
                                    cpu["open"].append(float(used))
                                elif what == "key" and prev is not None:
                                    cpu["key"].append(float(used) - prev)
                                return float(t)
                            prev = float(used)
                except (OSError, ValueError):
                    pass
                time.sleep(0.002)
            return None
        try:
            for attempt in range(3 if quick else 8):
                client.type(b"\x02")  # C-b o r, as typed: tmux takes the three bytes at once for something else
                time.sleep(0.05)
                client.type(b"o")
                time.sleep(0.05)
                t0 = time.monotonic()
                client.type(b"r")
                t = drawn(t0, lambda loaded, found, q: loaded, what="open")
                opens.append((t - t0) * 1000 if t else float("nan"))
                time.sleep(0.8)  # its preview is read; then type
                for scope, out in (("dir", keys), ("all", keys_all)):
                    if scope == "all":
                        client.type(b"\x12")  # C-r: every directory
                        time.sleep(0.5)
                    typed = ""
                    for ch in word + "\x7f" * 3:
                        typed = typed[:-1] if ch == "\x7f" else typed + ch
                        t0 = time.monotonic()
                        client.type(ch.encode())
                        t = drawn(t0, lambda loaded, found, q, typed=typed: q == typed, 5, what="key")
                        out.append((t - t0) * 1000 if t else float("nan"))
                        time.sleep(0.15)
                    client.type(b"\x15")  # C-u
                    time.sleep(0.3)
                client.type(b"\x1b")
                time.sleep(0.1)
                client.type(b"q")
                time.sleep(0.8)
        finally:
            client.close()
        load = os.getloadavg()[0]
        res.add("history: prefix o r -> picker's first screen", "%d conversations, a real client" % total, opens, "ms",
                150, "p95<=", note="picker CPU to it %.0f ms (python start included); load %.1f"
                % (1000 * statistics.median(cpu["open"] or [float("nan")]), load))
        res.add("history: one typed character -> list redrawn", "this directory and below (%d)" % counts[busiest], keys,
                "ms", 30, "p95<=", note=(missed(keys) + " " if missed(keys) else "") + "picker CPU a key %.1f ms; load %.1f"
                % (1000 * statistics.median(cpu["key"] or [float("nan")]), load))
        res.add("history: one typed character -> list redrawn (all)", "every directory (%d)" % total, keys_all, "ms",
                30, "p95<=", note=missed(keys_all))
    finally:
        w.close()


HISTORY_SETTLE = 3.0  # seconds after the index completes before its RSS is read


def _picker_word(made, cwd):
    """A word typed into the picker: the first prompt word of a conversation in cwd."""
    for convs in made.values():
        for _, d, prompt, _ in convs:
            if d == cwd:
                return prompt.split()[0][:6]
    return "fix"


def main():
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--quick", action="store_true", help="fewer samples, smaller homes and 10 s idle windows (about 9 minutes on 2 cores)")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--only", choices=["threads", "keepalive", "hostile", "cold-many", "long-line", "dev-home", "cli",
                                       "save", "remote", "foreign", "poll", "preview", "history"],
                    help="run one group of figures")
    args = ap.parse_args()
    quick = args.quick
    res = Results()
    if args.only:
        if args.only in ("keepalive", "hostile"):
            bench_keepalive(res, 50 if quick else 200)
        if args.only in ("threads", "hostile"):
            bench_many_threads(res, quick)
        if args.only in ("cold-many", "hostile"):
            bench_cold_start_many(res, quick)
        if args.only in ("long-line", "hostile"):
            bench_long_line(res, quick)
        if args.only == "dev-home":
            bench_dev_home(res, quick)
        if args.only in ("foreign", "hostile"):
            bench_foreign_files(res, quick, detail=args.only == "foreign")
        if args.only == "remote":
            bench_remote(res, quick)
        if args.only == "history":
            bench_history(res, quick)
        if args.only == "cli":
            w = World(30)
            try:
                w.start_server()
                time.sleep(4.0)  # as in the full run: not while the server reads its 150 transcripts
                bench_cli(w, res, 10 if quick else 20)
            finally:
                w.close()
        if args.only == "save":
            bench_save(res, 5 if quick else 10)
        if args.only == "poll":
            bench_poll_latency(res, quick)
            bench_poll_idle(res, quick)
        if args.only == "preview":
            bench_preview(res, quick)
        print(res.table())
        return 0 if all(r["pass"] for r in res.rows) else 1
    idle_s = 10 if quick else 60
    t_all = time.monotonic()

    w = World(30)
    try:
        w.start_server()
        time.sleep(1.0)
        bench_update_latency(w, res, 10 if quick else 20)
        bench_tmux_latency(w, res, 10 if quick else 20)
        time.sleep(3)  # let the server settle (closed /events clients, pending refreshes)
        cpu = bench_idle_cpu(w.server.pid, idle_s)
        res.add("server idle CPU", "30 sessions, 150 transcripts, %ds" % idle_s, [cpu], "%", 0.2, "<=")
        res.add("server RSS", "30 sessions, 150 transcripts", [proc_status(w.server.pid, "VmRSS")], "MB", 40, "<=")
        bench_cli(w, res, 10 if quick else 20)
        bench_sidebar(w, res, idle_s)
    finally:
        w.close()
    bench_sidebar_windows(res, quick)
    bench_dev_home(res, quick)
    bench_poll_latency(res, quick)
    bench_poll_idle(res, quick)
    bench_bytes_per_append(res, quick)
    bench_cold_start(res, quick)
    bench_cold_start_many(res, quick)
    bench_long_line(res, quick)
    bench_foreign_files(res, quick, detail=False)
    bench_notify(res, 5 if quick else 20)
    bench_save(res, 5 if quick else 10)
    bench_keepalive(res, 50 if quick else 200)
    bench_many_threads(res, quick)
    bench_remote(res, quick)
    bench_preview(res, quick)
    bench_history(res, quick)

    # scaling: latency and idle CPU at 10, 30, 100 sessions
    scaling = []
    for n in (10, 20, 30, 100):
        w = World(n, claude=20, codex=10, size=50 * 1024)
        try:
            w.start_server()
            time.sleep(1.0)
            sub = Results()
            lat = bench_update_latency(w, sub, 5 if quick else 10)
            tl = bench_tmux_latency(w, sub, 4 if quick else 10)
            time.sleep(3)
            cpu = bench_idle_cpu(w.server.pid, 10 if quick else 30)
            scaling.append({"sessions": n, "update_p95_ms": pct(lat, 95), "tmux_p95_ms": pct(tl, 95),
                            "idle_cpu_pct": cpu, "rss_mb": proc_status(w.server.pid, "VmRSS")})
        finally:
            w.close()

    print(res.table())
    print()
    print("scaling (sessions: update p95 ms, tmux p95 ms, idle CPU %, RSS MB)")
    for s in scaling:
        print("  %4d: %8.1f %8.1f %8.3f %8.1f" % (s["sessions"], s["update_p95_ms"], s["tmux_p95_ms"], s["idle_cpu_pct"], s["rss_mb"]))
    noisy = [r["figure"] for r in res.rows if r["n"] > 2 and r["median"] and r["spread"] > 2 * r["median"]]
    print("\nnoise: %s" % ("spread above 2x median for: " + ", ".join(noisy) if noisy else "every figure's spread within 2x its median"))
    print("total bench time: %.0f s (%s)" % (time.monotonic() - t_all, "quick" if quick else "full"))
    with open(args.out, "w") as f:
        json.dump({"quick": quick, "python": sys.version.split()[0], "rows": res.rows, "scaling": scaling,
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, f, indent=1)
    return 0 if all(r["pass"] is not False for r in res.rows) else 1  # a skipped row is no failure


if __name__ == "__main__":
    sys.exit(main())
