#!/usr/bin/env python3
"""opensessions: live status of AI coding agents across tmux sessions.

One module, standard library only.  Sections, from the pure core to the I/O edges
(each uses only those above it):

    constants and paths -> model -> agent parsers -> tmux gateway -> system probes
    -> watchers -> server -> notifications -> resurrect and kitty -> sidebar -> CLI

Importing this module has no side effects: nothing runs, nothing is written, no
heavy module is imported until a function needs it (client commands must start fast).
"""

import json
import os
import re
import sys
import time

__version__ = "0.1.0"

##############################################################################
# Constants and paths
##############################################################################

DEFAULT_PORT = 7391
HOST = "127.0.0.1"
MAX_BODY = 64 * 1024
MAX_LOGS = 50
MAX_LOG_MESSAGE = 500
MAX_STATUS_TEXT = 200
MAX_METADATA_SESSIONS = 500
SSE_MIN_INTERVAL = 1.0 / 30  # at most ~30 events per second per client
SSE_KEEPALIVE = 15.0
TONES = ("neutral", "info", "success", "warn", "error")
FS = "\x1f"  # tmux escapes control characters in names, so this never appears in a field
HIDDEN_SESSION_PREFIX = "_os_"  # helper sessions we create (sidebar stash) are not shown


class OpensessionsError(Exception):
    """An error with a message meant for the user (no traceback)."""


def _env(name, default=None, environ=None):
    env = os.environ if environ is None else environ
    value = env.get(name)
    return value if value else default


def home_dir(environ=None):
    return _env("HOME", os.path.expanduser("~"), environ)


def xdg_dir(kind, environ=None):
    """XDG base directory: kind is CONFIG, STATE, DATA or CACHE."""
    defaults = {"CONFIG": ".config", "STATE": ".local/state", "DATA": ".local/share", "CACHE": ".cache"}
    return _env("XDG_%s_HOME" % kind, os.path.join(home_dir(environ), defaults[kind]), environ)


def runtime_dir(environ=None):
    """Where the lock and runtime file live: $XDG_RUNTIME_DIR/opensessions or a per-user temp dir."""
    base = _env("XDG_RUNTIME_DIR", None, environ)
    if base and os.path.isdir(base):
        return os.path.join(base, "opensessions")
    tmp = _env("TMPDIR", "/tmp", environ)
    return os.path.join(tmp, "opensessions-%d" % os.getuid())


def config_dir(environ=None):
    return os.path.join(xdg_dir("CONFIG", environ), "opensessions")


def state_dir(environ=None):
    return os.path.join(xdg_dir("STATE", environ), "opensessions")


def ensure_private_dir(path):
    """Create path (0700) if needed; refuse a directory owned by someone else."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise OpensessionsError("%s is owned by uid %d, not by you; refusing to use it" % (path, st.st_uid))
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def atomic_write(path, data, mode=0o600):
    """Write bytes or str to path through a temp file and rename: readers never see half a file."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json_file(path, default=None):
    """Read a JSON file we own. Missing -> default; corrupt -> OpensessionsError naming the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return default
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise OpensessionsError("%s is not valid JSON (%s)" % (path, e))


def now_ms(clock=time.time):
    return int(clock() * 1000)


##############################################################################
# Model: threads, statuses, attention, metadata validation (pure)
##############################################################################

STATUSES = ("running", "waiting", "retry", "done", "error", "interrupted", "idle")
# The session's overall state follows attention priority: what most needs the user wins.
ATTENTION_ORDER = ("error", "waiting", "interrupted", "done-unseen", "running", "retry", "done", "idle")
UNSEEN_STATUSES = ("done", "error", "interrupted", "waiting")
ACTIVE_STATUSES = ("running", "retry")
STATUS_ALIASES = {
    "busy": "running", "working": "running", "thinking": "running", "started": "running",
    "completed": "done", "complete": "done", "finished": "done", "stop": "done", "stopped": "done",
    "failed": "error", "failure": "error", "errored": "error",
    "aborted": "interrupted", "cancelled": "interrupted", "canceled": "interrupted",
    "permission": "waiting", "input": "waiting", "needs-input": "waiting", "question": "waiting",
    "retrying": "retry", "ready": "idle",
}
AGENTS = ("claude", "codex", "opencode", "amp")
_AGENT_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ApiError(Exception):
    """A request the API refuses: HTTP status and a reason for the JSON body."""

    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status
        self.message = message


def normalize_status(value):
    """Map an agent or script status word to one of STATUSES, or None."""
    if not isinstance(value, str):
        return None
    word = value.strip().lower()
    if word in STATUSES:
        return word
    return STATUS_ALIASES.get(word)


class Thread(object):
    """One agent conversation. Plain attributes; to_json() gives the /state shape."""

    __slots__ = ("agent", "id", "title", "status", "detail", "attempt", "cwd", "model", "pane",
                 "session", "pid", "alive", "unseen", "updated_at", "hidden", "source")

    def __init__(self, agent, id, title="", status="idle", detail=None, attempt=None, cwd=None,
                 model=None, pane=None, session=None, pid=None, alive=True, unseen=False,
                 updated_at=0, hidden=False, source=None):
        self.agent = agent
        self.id = id
        self.title = title
        self.status = status
        self.detail = detail
        self.attempt = attempt
        self.cwd = cwd
        self.model = model
        self.pane = pane
        self.session = session
        self.pid = pid
        self.alive = alive
        self.unseen = unseen
        self.updated_at = updated_at
        self.hidden = hidden
        self.source = source

    @property
    def key(self):
        return (self.agent, self.id)

    def to_json(self):
        return {
            "agent": self.agent, "id": self.id, "title": self.title, "status": self.status,
            "detail": self.detail, "attempt": self.attempt, "cwd": self.cwd, "model": self.model,
            "pane": self.pane, "session": self.session, "pid": self.pid, "alive": self.alive,
            "unseen": self.unseen, "updatedAt": self.updated_at,
        }


def thread_attention(thread):
    """The attention class of one thread (an element of ATTENTION_ORDER)."""
    if thread.status == "done" and thread.unseen:
        return "done-unseen"
    return thread.status


def session_state(threads):
    """Overall state of a session's threads by attention priority; None when it has none."""
    best = None
    for t in threads:
        if t.hidden:
            continue
        a = thread_attention(t)
        if best is None or ATTENTION_ORDER.index(a) < ATTENTION_ORDER.index(best):
            best = a
    return best


def becomes_unseen(old_status, new_status, viewed):
    """A thread turning done/error/interrupted/waiting while nobody looks at it is unseen."""
    return (not viewed) and new_status in UNSEEN_STATUSES and new_status != old_status


def _require_session(body):
    name = body.get("session")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "'session' must be a non-empty string (the tmux session name)")
    return name


def _tone(body):
    tone = body.get("tone", "neutral")
    if tone is None:
        tone = "neutral"
    if tone not in TONES:
        raise ApiError(400, "unknown tone %r; use one of: %s" % (tone, ", ".join(TONES)))
    return tone


def _number(body, key, required=True):
    value = body.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ApiError(400, "'%s' must be a number" % key)
    return value


def _optional_text(body, key, limit):
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "'%s' must be a string" % key)
    return value[:limit]


def validate_set_status(body):
    """-> (session, status dict or None to clear)."""
    session = _require_session(body)
    if "text" not in body:
        raise ApiError(400, "'text' is required (a string, or null to clear)")
    text = body["text"]
    if text is None:
        return session, None
    if not isinstance(text, str):
        raise ApiError(400, "'text' must be a string or null")
    return session, {"text": text[:MAX_STATUS_TEXT], "tone": _tone(body)}


def validate_set_progress(body):
    """-> (session, progress dict or None to clear)."""
    session = _require_session(body)
    if body.get("clear") is True:
        return session, None
    label = _optional_text(body, "label", MAX_STATUS_TEXT)
    if "percent" in body:
        percent = _number(body, "percent")
        if not 0 <= percent <= 100:
            raise ApiError(400, "'percent' must be between 0 and 100")
        return session, {"percent": percent, "label": label}
    if "current" in body or "total" in body:
        current = _number(body, "current")
        total = _number(body, "total")
        if total <= 0 or current < 0:
            raise ApiError(400, "'total' must be > 0 and 'current' >= 0")
        return session, {"current": current, "total": total, "label": label,
                         "percent": round(min(current, total) * 100.0 / total, 1)}
    raise ApiError(400, "give 'current' and 'total', or 'percent', or 'clear': true")


def validate_log(body, clock=time.time):
    session = _require_session(body)
    message = body.get("message")
    if not isinstance(message, str) or not message:
        raise ApiError(400, "'message' must be a non-empty string")
    source = _optional_text(body, "source", 64)
    return session, {"message": message[:MAX_LOG_MESSAGE], "source": source, "tone": _tone(body),
                     "ts": now_ms(clock)}


def validate_notify(body):
    session = body.get("session")
    if session is not None and not isinstance(session, str):
        raise ApiError(400, "'session' must be a string")
    message = body.get("message")
    if not isinstance(message, str) or not message:
        raise ApiError(400, "'message' must be a non-empty string")
    return session, {"message": message[:MAX_LOG_MESSAGE], "tone": _tone(body)}


def validate_agent_event(body):
    """Validate POST /api/agent-event; -> dict with normalized keys."""
    agent = body.get("agent")
    if not isinstance(agent, str) or not _AGENT_NAME_RE.match(agent.strip().lower()):
        raise ApiError(400, "'agent' must be a short lowercase name such as claude, codex, opencode, amp")
    status = normalize_status(body.get("status"))
    if status is None:
        raise ApiError(400, "'status' must be one of: %s" % ", ".join(STATUSES))
    out = {"agent": agent.strip().lower(), "status": status}
    for key in ("threadId", "threadName", "paneId", "tmuxSession", "projectDir", "detail", "model"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, "'%s' must be a string" % key)
        out[key] = value[:MAX_LOG_MESSAGE] if isinstance(value, str) else None
    attempt = body.get("attempt")
    if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int)):
        raise ApiError(400, "'attempt' must be an integer")
    out["attempt"] = attempt
    pid = body.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
        raise ApiError(400, "'pid' must be a positive integer")
    out["pid"] = pid
    if out["paneId"] is not None and not re.match(r"^%\d+$", out["paneId"]):
        raise ApiError(400, "'paneId' must look like %12")
    return out


def apply_log(logs, entry):
    """Append a log entry, keeping at most MAX_LOGS (oldest dropped). Returns a new list."""
    return (list(logs) + [entry])[-MAX_LOGS:]


def most_specific_dir(path, candidates):
    """Of candidate directories, the longest one that contains path (or equals it); None if none."""
    if not path:
        return None
    path = os.path.normpath(path)
    best = None
    for c in candidates:
        if not c:
            continue
        c_norm = os.path.normpath(c)
        if path == c_norm or path.startswith(c_norm.rstrip("/") + "/"):
            if best is None or len(c_norm) > len(os.path.normpath(best)):
                best = c
    return best


def parse_tmux_env(value):
    """$TMUX is 'socket_path,server_pid,session_index'; -> socket path or None."""
    if not value:
        return None
    return value.rsplit(",", 2)[0] or None


def tmux_socket_path(socket_name=None, socket_path=None, environ=None):
    """The socket a tmux client would use, resolved exactly as tmux does (-S, -L, $TMUX, default)."""
    env = os.environ if environ is None else environ
    if socket_path:
        return os.path.abspath(socket_path)
    if not socket_name:
        from_env = parse_tmux_env(env.get("TMUX"))
        if from_env:
            return from_env
        socket_name = "default"
    base = env.get("TMUX_TMPDIR") or "/tmp"
    return os.path.join(base, "tmux-%d" % os.getuid(), socket_name)


def socket_key(socket_path):
    """A short stable name for per-tmux-server files."""
    import hashlib
    return hashlib.sha1(socket_path.encode("utf-8", "surrogateescape")).hexdigest()[:12]


##############################################################################
# Agent parsers (pure: bytes in, records out)
##############################################################################

# (Filled by the watchers issue: Claude Code, Codex, OpenCode and Amp record parsers.)


##############################################################################
# tmux gateway (the only place that runs tmux)
##############################################################################

PANE_FIELDS = (
    ("session_id", "session_id"), ("session_name", "session_name"),
    ("session_created", "session_created"), ("window_id", "window_id"),
    ("window_index", "window_index"), ("window_name", "window_name"),
    ("window_active", "window_active"), ("pane_id", "pane_id"), ("pane_index", "pane_index"),
    ("pane_pid", "pane_pid"), ("pane_tty", "pane_tty"), ("pane_current_path", "pane_current_path"),
    ("pane_current_command", "pane_current_command"), ("pane_title", "pane_title"),
    ("pane_active", "pane_active"),
)
CLIENT_FIELDS = (
    ("client_name", "client_name"), ("client_tty", "client_tty"),
    ("client_control_mode", "client_control_mode"), ("client_pid", "client_pid"),
    ("session_id", "session_id"), ("session_name", "session_name"), ("window_id", "window_id"),
    ("pane_id", "pane_id"), ("client_activity", "client_activity"),
)
PANES_FORMAT = "P" + FS + FS.join("#{%s}" % f for _, f in PANE_FIELDS)
CLIENTS_FORMAT = "C" + FS + FS.join("#{%s}" % f for _, f in CLIENT_FIELDS)
# Evaluated inside tmux, at most once a second, reported only when it changes: this is how the
# server learns about cwd and command changes without polling anything itself.
SUBSCRIPTION_FORMAT = ("#{S:#{W:#{P:#{pane_id}=#{pane_pid}=#{pane_current_command}"
                       "=#{pane_current_path};}}}")


class TmuxError(Exception):
    pass


class TmuxGone(TmuxError):
    """The tmux server is not running (any more)."""


def _int(value, default=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def parse_snapshot(output):
    """Parse the output of PANES_FORMAT and CLIENTS_FORMAT lines -> (sessions, clients).

    sessions: list of dicts in /state shape (without derived fields); clients: list of dicts.
    Control-mode clients are returned with 'control': True so callers can hide them.
    """
    sessions = {}
    order = []
    clients = []
    for line in output.split("\n"):
        if not line:
            continue
        parts = line.split(FS)
        kind, values = parts[0], parts[1:]
        if kind == "P" and len(values) == len(PANE_FIELDS):
            row = dict(zip((k for k, _ in PANE_FIELDS), values))
            sid = row["session_id"]
            s = sessions.get(sid)
            if s is None:
                s = {"id": sid, "name": row["session_name"], "created": _int(row["session_created"]),
                     "attached": 0, "windows": [], "_win": {}}
                sessions[sid] = s
                order.append(sid)
            w = s["_win"].get(row["window_id"])
            if w is None:
                w = {"id": row["window_id"], "index": _int(row["window_index"]),
                     "name": row["window_name"], "active": row["window_active"] == "1", "panes": []}
                s["_win"][row["window_id"]] = w
                s["windows"].append(w)
            w["panes"].append({
                "id": row["pane_id"], "index": _int(row["pane_index"]), "pid": _int(row["pane_pid"]),
                "tty": row["pane_tty"], "cwd": row["pane_current_path"],
                "command": row["pane_current_command"], "title": row["pane_title"],
                "active": row["pane_active"] == "1",
            })
        elif kind == "C" and len(values) == len(CLIENT_FIELDS):
            row = dict(zip((k for k, _ in CLIENT_FIELDS), values))
            clients.append({
                "name": row["client_name"], "tty": row["client_tty"],
                "control": row["client_control_mode"] == "1", "pid": _int(row["client_pid"]),
                "sessionId": row["session_id"], "session": row["session_name"],
                "window": row["window_id"], "pane": row["pane_id"],
                "activity": _int(row["client_activity"]),
            })
    result = []
    for sid in order:
        s = sessions[sid]
        del s["_win"]
        s["attached"] = sum(1 for c in clients if c["sessionId"] == sid and not c["control"])
        active = [w for w in s["windows"] if w["active"]] or s["windows"][:1]
        pane = None
        if active:
            panes = active[0]["panes"]
            pane = next((p for p in panes if p["active"]), panes[0] if panes else None)
        s["dir"] = pane["cwd"] if pane else None
        result.append(s)
    return result, clients


def parse_control_line(line):
    """Parse one line a control-mode client prints -> (name, args) or None for output blocks.

    Notifications start with '%'; '%begin'/'%end'/'%error' frame command output.
    """
    if not line.startswith("%"):
        return None
    name, _, rest = line[1:].partition(" ")
    if name in ("begin", "end", "error"):
        return (name, rest)
    if name == "subscription-changed":
        head, sep, value = rest.partition(" : ")
        return (name, (head.split(" ")[0], value if sep else ""))
    return (name, rest)


class Tmux(object):
    """Gateway to one tmux server: every tmux command goes through run()."""

    def __init__(self, socket_path, tmux_bin="tmux"):
        self.socket_path = socket_path
        self.tmux_bin = tmux_bin

    def argv(self, *args):
        return [self.tmux_bin, "-S", self.socket_path] + [str(a) for a in args]

    def run(self, *args, **kw):
        """Run one tmux command (or several joined by ';'); -> stdout text. Raises TmuxError/TmuxGone."""
        import subprocess
        timeout = kw.get("timeout", 5.0)
        try:
            proc = subprocess.run(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=timeout)
        except FileNotFoundError:
            raise TmuxError("tmux is not installed (no %r on PATH)" % self.tmux_bin)
        except subprocess.TimeoutExpired:
            raise TmuxError("tmux %s timed out" % (args[0] if args else ""))
        err = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0:
            if ("no server running" in err or "error connecting to" in err
                    or "No such file or directory" in err and self.socket_path in err):
                raise TmuxGone(err or "no tmux server")
            raise TmuxError(err or "tmux %s failed (exit %d)" % (args[0] if args else "", proc.returncode))
        return proc.stdout.decode("utf-8", "replace")

    def alive(self):
        try:
            self.run("list-sessions", "-F", "#{session_id}")
            return True
        except TmuxGone:
            return False
        except TmuxError:
            return True

    def snapshot(self):
        """One tmux process for the whole state: all panes plus all clients."""
        out = self.run("list-panes", "-a", "-F", PANES_FORMAT, ";", "list-clients", "-F", CLIENTS_FORMAT)
        return parse_snapshot(out)

    def control_argv(self):
        # no-output: no pane output; ignore-size: does not shrink windows; read-only: types nothing.
        return self.argv("-C", "attach-session", "-f", "no-output,ignore-size,read-only")


##############################################################################
# System probes (processes, ports, git)
##############################################################################

class Proc(object):
    __slots__ = ("pid", "ppid", "comm", "start", "args")

    def __init__(self, pid, ppid, comm, start=0, args=None):
        self.pid = pid
        self.ppid = ppid
        self.comm = comm
        self.start = start
        self.args = args


def parse_proc_stat(data):
    """Parse /proc/<pid>/stat -> (pid, comm, ppid, starttime). comm may contain spaces and ')'."""
    left = data.index("(")
    right = data.rindex(")")
    pid = int(data[:left].strip())
    comm = data[left + 1:right]
    fields = data[right + 2:].split(" ")
    return pid, comm, int(fields[1]), int(fields[19])


def process_table(proc_root="/proc"):
    """{pid: Proc} for every process: one read of /proc on Linux, one `ps` elsewhere."""
    table = {}
    if os.path.isdir(os.path.join(proc_root, "self")):
        for name in os.listdir(proc_root):
            if not name.isdigit():
                continue
            try:
                with open(os.path.join(proc_root, name, "stat"), "r", encoding="utf-8", errors="replace") as f:
                    pid, comm, ppid, start = parse_proc_stat(f.read())
            except (OSError, ValueError, IndexError):
                continue
            table[pid] = Proc(pid, ppid, comm, start)
        return table
    import subprocess
    try:
        out = subprocess.run(["ps", "-axo", "pid=,ppid=,comm="], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=5).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        return table
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = Proc(int(parts[0]), int(parts[1]), os.path.basename(parts[2]))
    return table


def process_args(pid, proc_root="/proc"):
    """argv of a process as a list (empty when unreadable)."""
    try:
        with open(os.path.join(proc_root, str(pid), "cmdline"), "rb") as f:
            raw = f.read()
    except OSError:
        raw = b""
    if raw:
        return [a.decode("utf-8", "surrogateescape") for a in raw.rstrip(b"\0").split(b"\0")]
    if os.path.isdir(os.path.join(proc_root, "self")):
        return []
    import shlex
    import subprocess
    try:
        out = subprocess.run(["ps", "-o", "args=", "-p", str(pid)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=5).stdout.decode("utf-8", "replace")
        return shlex.split(out.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return []


def children_index(table):
    """{ppid: [pid, ...]} from a process table."""
    kids = {}
    for p in table.values():
        kids.setdefault(p.ppid, []).append(p.pid)
    return kids


def descendants(pid, kids):
    """pid and every process below it."""
    out = []
    stack = [pid]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack.extend(kids.get(p, ()))
    return out


def parse_proc_net_tcp(text):
    """Listening sockets from /proc/net/tcp or tcp6 -> {inode: port}.

    Only sockets reachable on localhost count: bound to loopback or to any address.
    """
    listening = {}
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "0A":  # 0A = TCP_LISTEN
            continue
        addr, _, port_hex = parts[1].rpartition(":")
        loopback_or_any = (
            addr in ("00000000", "0100007F", "00000000000000000000000000000000",
                     "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")
            or (len(addr) == 8 and addr.endswith("7F"))  # 127.x.y.z (little-endian)
        )
        if not loopback_or_any:
            continue
        try:
            inode = int(parts[9])
            port = int(port_hex, 16)
        except ValueError:
            continue
        if inode:
            listening[inode] = port
    return listening


def listening_sockets(proc_root="/proc"):
    """{inode: port} of localhost-reachable listening TCP sockets (Linux)."""
    found = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_root, "net", name), "r") as f:
                found.update(parse_proc_net_tcp(f.read()))
        except OSError:
            pass
    return found


def socket_inodes(pid, proc_root="/proc"):
    """Socket inodes a process holds open (from /proc/<pid>/fd links)."""
    inodes = set()
    fd_dir = os.path.join(proc_root, str(pid), "fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for fd in names:
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            try:
                inodes.add(int(target[8:-1]))
            except ValueError:
                pass
    return inodes


def ports_for_pids(pid_groups, proc_root="/proc"):
    """{group: sorted ports} for groups of pids (a group = processes under one session's panes)."""
    if os.path.isdir(os.path.join(proc_root, "self")):
        listening = listening_sockets(proc_root)
        result = {}
        if not listening:
            return result
        for group, pids in pid_groups.items():
            ports = set()
            for pid in pids:
                for inode in socket_inodes(pid, proc_root):
                    port = listening.get(inode)
                    if port is not None:
                        ports.add(port)
            if ports:
                result[group] = sorted(ports)
        return result
    return _ports_lsof(pid_groups)


def _ports_lsof(pid_groups):
    """macOS and other systems without /proc: lsof, when it is on PATH."""
    import shutil
    import subprocess
    if not shutil.which("lsof"):
        return {}
    pid_to_group = {}
    for group, pids in pid_groups.items():
        for pid in pids:
            pid_to_group[pid] = group
    if not pid_to_group:
        return {}
    try:
        out = subprocess.run(["lsof", "-nP", "-a", "-iTCP", "-sTCP:LISTEN", "-Fpn",
                              "-p", ",".join(str(p) for p in pid_to_group)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return {}
    result = {}
    current = None
    for line in out.splitlines():
        if line.startswith("p"):
            current = pid_to_group.get(_int(line[1:], -1))
        elif line.startswith("n") and current is not None:
            host, _, port = line[1:].rpartition(":")
            if host in ("*", "127.0.0.1", "[::1]", "localhost", "[::]") and port.isdigit():
                result.setdefault(current, set()).add(int(port))
    return {g: sorted(p) for g, p in result.items()}


def find_git_dir(path):
    """-> (worktree root, git dir) for path, following `gitdir:` files; (None, None) outside git."""
    path = os.path.abspath(path) if path else None
    while path:
        dotgit = os.path.join(path, ".git")
        if os.path.isdir(dotgit):
            return path, dotgit
        if os.path.isfile(dotgit):
            try:
                with open(dotgit, "r") as f:
                    content = f.read().strip()
            except OSError:
                return None, None
            if content.startswith("gitdir:"):
                gitdir = content[7:].strip()
                if not os.path.isabs(gitdir):
                    gitdir = os.path.normpath(os.path.join(path, gitdir))
                return path, gitdir
            return None, None
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return None, None


def read_git_branch(git_dir):
    """Branch name from HEAD (short sha when detached); None when unreadable."""
    try:
        with open(os.path.join(git_dir, "HEAD"), "r") as f:
            head = f.read().strip()
    except OSError:
        return None
    if head.startswith("ref:"):
        ref = head[4:].strip()
        for prefix in ("refs/heads/", "refs/"):
            if ref.startswith(prefix):
                return ref[len(prefix):]
        return ref
    return head[:7] if head else None


class GitProbe(object):
    """Branch and dirty flag per directory. HEAD is read directly; `git status` runs only when the
    index or HEAD changed since the last look (and not more than once per min_interval)."""

    def __init__(self, clock=time.monotonic, min_interval=10.0):
        self.clock = clock
        self.min_interval = min_interval
        self._roots = {}  # dir -> (root, gitdir)
        self._dirty = {}  # root -> (stamp, checked_at, dirty)

    def locate(self, directory):
        if directory not in self._roots:
            if len(self._roots) > 1000:
                self._roots.clear()
            self._roots[directory] = find_git_dir(directory)
        return self._roots[directory]

    def branch(self, directory):
        root, gitdir = self.locate(directory)
        return read_git_branch(gitdir) if gitdir else None

    def _stamp(self, gitdir):
        stamp = []
        for name in ("index", "HEAD"):
            try:
                st = os.stat(os.path.join(gitdir, name))
                stamp.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def dirty_cached(self, directory):
        """-> (dirty or None, needs_check). Never runs git; see check_dirty()."""
        root, gitdir = self.locate(directory)
        if not root:
            return None, False
        cached = self._dirty.get(root)
        if cached is None:
            return None, True
        stamp, checked_at, dirty = cached
        stale = stamp != self._stamp(gitdir) and self.clock() - checked_at >= self.min_interval
        return dirty, stale

    def check_dirty(self, directory):
        """Run `git status` once for directory's repo (call off the event loop thread)."""
        import subprocess
        root, gitdir = self.locate(directory)
        if not root:
            return None
        stamp = self._stamp(gitdir)
        try:
            out = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no",
                                  "--ignore-submodules"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=10)
            dirty = bool(out.stdout.strip()) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            dirty = None
        self._dirty[root] = (stamp, self.clock(), dirty)
        return dirty


##############################################################################
# Watchers
##############################################################################

# (Filled by the watchers issue.)


##############################################################################
# Server: event loop, state store, HTTP handlers, runtime file and lock
##############################################################################

class EventLoop(object):
    """A single-threaded loop (selectors + timers). Other threads hand it work with call()/post()."""

    def __init__(self, clock=time.monotonic):
        import selectors
        import collections
        self.clock = clock
        self._sel = selectors.DefaultSelector()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        os.set_blocking(self._wfd, False)
        self._sel.register(self._rfd, selectors.EVENT_READ, None)
        self._ready = collections.deque()
        self._timers = []
        self._seq = 0
        self._stopping = False
        self.thread_id = None

    def add_reader(self, fd, callback):
        import selectors
        self._sel.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd):
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def post(self, fn, *args):
        """Run fn(*args) on the loop soon; safe from any thread."""
        self._ready.append((fn, args))
        try:
            os.write(self._wfd, b"x")
        except (BlockingIOError, OSError):
            pass

    def call(self, fn, *args, **kw):
        """Run fn(*args) on the loop and wait for its result (from another thread)."""
        import threading
        if threading.get_ident() == self.thread_id:
            return fn(*args)
        done = threading.Event()
        box = {}

        def run():
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # handed back to the caller
                box["error"] = e
            done.set()

        self.post(run)
        if not done.wait(kw.get("timeout", 10.0)):
            raise TimeoutError("event loop did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def call_later(self, delay, fn, *args):
        """Schedule fn on the loop thread (call from the loop thread). Returns a cancel function."""
        import heapq
        self._seq += 1
        entry = [self.clock() + delay, self._seq, fn, args, True]
        heapq.heappush(self._timers, entry)

        def cancel():
            entry[4] = False
        return cancel

    def stop(self):
        self._stopping = True
        self.post(lambda: None)

    def run(self):
        import heapq
        import threading
        self.thread_id = threading.get_ident()
        while not self._stopping:
            timeout = None
            if self._ready:
                timeout = 0
            elif self._timers:
                timeout = max(0.0, self._timers[0][0] - self.clock())
            for key, _ in self._sel.select(timeout):
                if key.data is None:
                    try:
                        while os.read(self._rfd, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                else:
                    self._guard(key.data)
            now = self.clock()
            while self._timers and self._timers[0][0] <= now:
                entry = heapq.heappop(self._timers)
                if entry[4]:
                    self._guard(entry[2], *entry[3])
            while self._ready:
                fn, args = self._ready.popleft()
                self._guard(fn, *args)

    def _guard(self, fn, *args):
        try:
            fn(*args)
        except Exception:
            import traceback
            log("loop callback failed:\n" + traceback.format_exc())

    def close(self):
        self._sel.close()
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass


_log_file = None


def log(message):
    """Server log line (stderr, or the log file set by the server)."""
    line = "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message)
    target = _log_file or sys.stderr
    try:
        target.write(line)
        target.flush()
    except (OSError, ValueError):
        pass


class Store(object):
    """The server's state. Only the event loop thread changes it; publish() hands a finished,
    encoded snapshot to readers (HTTP threads) under a condition variable."""

    def __init__(self, clock=time.time):
        import threading
        self.clock = clock
        self.sessions = []  # from tmux
        self.clients = []
        self.metadata = {}  # session name -> {"status", "progress", "logs"}
        self.threads = {}  # (agent, id) -> Thread
        self.ports = {}  # session id -> [ports]
        self.git = {}  # session id -> (branch, dirty)
        self.version = 0
        self.published = None  # (version, dict, bytes)
        self.cond = threading.Condition()
        self._dirty = True

    def touch(self):
        self._dirty = True

    def session_by_name(self, name):
        return next((s for s in self.sessions if s["name"] == name), None)

    def session_of_pane(self, pane_id):
        for s in self.sessions:
            for w in s["windows"]:
                for p in w["panes"]:
                    if p["id"] == pane_id:
                        return s, w, p
        return None

    def session_for_dir(self, path):
        """The session with the most specific pane cwd containing path."""
        best, best_len = None, -1
        for s in self.sessions:
            for w in s["windows"]:
                for p in w["panes"]:
                    hit = most_specific_dir(path, [p["cwd"]])
                    if hit and len(hit) > best_len:
                        best, best_len = s, len(hit)
        return best

    def visible_sessions(self):
        return [s for s in self.sessions if not s["name"].startswith(HIDDEN_SESSION_PREFIX)]

    def build(self):
        """The /state document."""
        by_session = {}
        orphans = []
        for t in self.threads.values():
            if t.session is not None:
                by_session.setdefault(t.session, []).append(t)
            else:
                orphans.append(t)
        out_sessions = []
        for s in self.visible_sessions():
            threads = sorted(by_session.get(s["name"], ()), key=lambda t: -t.updated_at)
            branch, dirty = self.git.get(s["id"], (None, None))
            meta = self.metadata.get(s["name"], {})
            shown = [t for t in threads if not t.hidden]
            item = dict(s)
            item.update({
                "branch": branch, "dirty": dirty, "ports": self.ports.get(s["id"], []),
                "state": session_state(shown), "unseen": any(t.unseen for t in shown),
                "threads": [t.to_json() for t in shown],
                "metadata": {"status": meta.get("status"), "progress": meta.get("progress"),
                             "logs": list(meta.get("logs", ()))},
            })
            out_sessions.append(item)
        return {
            "version": self.version, "serverVersion": __version__, "ts": now_ms(self.clock),
            "clients": [{"name": c["name"], "session": c["session"], "window": c["window"],
                         "pane": c["pane"]} for c in self.clients if not c["control"]],
            "sessions": out_sessions,
            "threads": [t.to_json() for t in sorted(orphans, key=lambda t: -t.updated_at) if not t.hidden],
        }

    def publish(self):
        """If anything changed, build a new snapshot and wake every reader. Returns True if published."""
        if not self._dirty and self.published is not None:
            return False
        self._dirty = False
        self.version += 1
        doc = self.build()
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if self.published is not None:
            # Only the version and time differ? then nothing really changed: keep the old one.
            old = self.published[1]
            if {k: v for k, v in old.items() if k not in ("version", "ts")} == \
                    {k: v for k, v in doc.items() if k not in ("version", "ts")}:
                self.version -= 1
                return False
        with self.cond:
            self.published = (self.version, doc, body)
            self.cond.notify_all()
        return True

    def metadata_json(self):
        return {"metadata": self.metadata,
                "threads": [dict(t.to_json(), hidden=t.hidden, source=t.source)
                            for t in self.threads.values()]}


def _pid_alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RuntimeFiles(object):
    """The lock and the runtime file (pid, port, tmux socket) that let clients find the server."""

    def __init__(self, socket_path, environ=None):
        self.socket_path = socket_path
        self.dir = runtime_dir(environ)
        key = socket_key(socket_path)
        self.lock_path = os.path.join(self.dir, "server-%s.lock" % key)
        self.info_path = os.path.join(self.dir, "server-%s.json" % key)
        self._lock_fd = None

    def acquire(self):
        """Take the lock; a lock left by a dead server is free (flock dies with its process)."""
        import fcntl
        ensure_private_dir(self.dir)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            info = self.read() or {}
            raise OpensessionsError(
                "an opensessions server already runs for tmux socket %s (pid %s, port %s); "
                "use `opensessions stop` first" % (self.socket_path, info.get("pid", "?"), info.get("port", "?")))
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        try:  # a dead server's file would send clients to a closed port until we write ours
            os.unlink(self.info_path)
        except OSError:
            pass

    def write(self, port):
        atomic_write(self.info_path, json.dumps({
            "pid": os.getpid(), "port": port, "socket": self.socket_path, "version": __version__,
            "started": int(time.time())}))

    def read(self):
        try:
            with open(self.info_path, "r") as f:
                info = json.load(f)
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def live_info(self):
        """The runtime info if its server is alive (holds the lock), else None."""
        import fcntl
        info = self.read()
        if not info:
            return None
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return info if _pid_alive(info.get("pid")) else None  # locked: the server lives
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self):
        if self._lock_fd is None:
            return
        for path in (self.info_path,):
            try:
                os.unlink(path)
            except OSError:
                pass
        os.close(self._lock_fd)
        self._lock_fd = None


class Server(object):
    """Live state from tmux (+ watchers), served over HTTP and Server-Sent Events."""

    def __init__(self, tmux, port=DEFAULT_PORT, port_explicit=False, environ=None, clock=time.time):
        self.tmux = tmux
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock
        self.loop = EventLoop()
        self.store = Store(clock)
        self.port = port
        self.port_explicit = port_explicit
        self.runtime = RuntimeFiles(tmux.socket_path, self.environ)
        key = socket_key(tmux.socket_path)
        self.state_path = os.path.join(state_dir(self.environ), "state-%s.json" % key)
        self.git = GitProbe()
        self.httpd = None
        self.control = None
        self._control_buf = b""
        self._refresh_pending = False
        self._save_pending = False
        self._ports_tick = None
        self._listen_cache = None
        self._pid_groups = {}
        self._git_jobs = set()
        self.exit_reason = None
        self.notifier = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self):
        """Take the lock, bind the port, read tmux once. Raises OpensessionsError with a reason."""
        self.runtime.acquire()
        try:
            if not self.tmux.alive():
                raise OpensessionsError("no tmux server at %s" % self.tmux.socket_path)
            self._load_state()
            self._bind()
            self.runtime.write(self.port)
            self.refresh()
            self.store.publish()
            self._start_control()
            self.loop.call_later(2.0, self._ports_timer)
        except BaseException:
            self.runtime.release()
            raise

    def _bind(self):
        import http.server

        class HTTPServer(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 64

        handler = make_handler(self)
        try:
            self.httpd = HTTPServer((HOST, self.port), handler)
        except OSError as e:
            if self.port_explicit or self.port == 0:
                raise OpensessionsError("cannot listen on %s:%d: %s (is another program using it? "
                                        "choose another with --port or OPENSESSIONS_PORT; 0 = any free port)"
                                        % (HOST, self.port, e.strerror or e))
            log("port %d is in use (%s); listening on a free port instead" % (self.port, e.strerror or e))
            self.httpd = HTTPServer((HOST, 0), handler)
        self.port = self.httpd.server_address[1]

    def serve_forever(self):
        # Connections are accepted by the event loop (no poll interval, no extra thread);
        # each connection is then handled on its own daemon thread (ThreadingHTTPServer).
        self.loop.add_reader(self.httpd.fileno(), self.httpd._handle_request_noblock)
        try:
            self.loop.run()
        finally:
            self.shutdown()

    def shutdown(self):
        if self.httpd is not None:
            self.loop.remove_reader(self.httpd.fileno())
            with self.store.cond:
                self.store.published = None
                self.store.cond.notify_all()
            self.httpd.server_close()
            self.httpd = None
        self._stop_control()
        self._save_state_now()
        self.runtime.release()

    def stop(self, reason="stopped"):
        self.exit_reason = reason
        self.loop.stop()

    # -- tmux ------------------------------------------------------------------------------
    def _start_control(self):
        import subprocess
        try:
            self.control = subprocess.Popen(self.tmux.control_argv(), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as e:
            log("cannot start the tmux control client: %s" % e)
            return
        self._control_buf = b""
        os.set_blocking(self.control.stdout.fileno(), False)
        self.loop.add_reader(self.control.stdout.fileno(), self._on_control_readable)
        self._control_send("refresh-client -B 'os-panes::%s'" % SUBSCRIPTION_FORMAT)

    def _control_send(self, line):
        try:
            self.control.stdin.write(line.encode("utf-8") + b"\n")
            self.control.stdin.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def _stop_control(self):
        if self.control is None:
            return
        try:
            self.loop.remove_reader(self.control.stdout.fileno())
        except (ValueError, OSError):
            pass
        try:
            self.control.stdin.close()
        except OSError:
            pass
        try:
            self.control.terminate()
            self.control.wait(2)
        except Exception:
            pass
        self.control = None

    def _on_control_readable(self):
        try:
            chunk = os.read(self.control.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._on_control_exit()
            return
        self._control_buf += chunk
        lines = self._control_buf.split(b"\n")
        self._control_buf = lines.pop()
        interesting = False
        for raw in lines:
            parsed = parse_control_line(raw.decode("utf-8", "replace").rstrip("\r"))
            if parsed is None or parsed[0] in ("begin", "end", "error", "output"):
                continue
            if parsed[0] == "exit":
                continue  # EOF follows
            interesting = True
        if interesting:
            self.schedule_refresh()

    def _on_control_exit(self):
        """The control client ended: its session died, or the whole tmux server did."""
        self._stop_control()
        if self.tmux.alive():
            self.schedule_refresh()
            self._start_control()
        else:
            log("tmux server %s is gone; exiting" % self.tmux.socket_path)
            self.stop("tmux server exited")

    def schedule_refresh(self, delay=0.005):
        """Coalesce a burst of tmux notifications into one snapshot read."""
        if not self._refresh_pending:
            self._refresh_pending = True
            self.loop.call_later(delay, self._refresh_now)

    def _refresh_now(self):
        self._refresh_pending = False
        self.refresh()
        self.publish()

    def refresh(self):
        """Read all panes and clients with one tmux process; recompute derived session data."""
        try:
            sessions, clients = self.tmux.snapshot()
        except TmuxGone:
            if self.control is None or not self.tmux.alive():
                self.stop("tmux server exited")
            return
        except TmuxError as e:
            log("tmux snapshot failed (keeping the last state): %s" % e)
            return
        self.store.sessions = sessions
        self.store.clients = clients
        self.store.touch()
        self._refresh_git()
        self._refresh_port_groups()
        self.on_tmux_refreshed()

    def on_tmux_refreshed(self):
        """Hook for the watchers: panes and clients changed."""

    def _refresh_git(self):
        git = {}
        for s in self.store.sessions:
            d = s.get("dir")
            if not d:
                continue
            branch = self.git.branch(d)
            dirty, needs_check = self.git.dirty_cached(d)
            git[s["id"]] = (branch, dirty)
            if needs_check and branch is not None:
                self._check_dirty_async(d)
        self.store.git = git

    def _check_dirty_async(self, directory):
        import threading
        root, _ = self.git.locate(directory)
        if root in self._git_jobs:
            return
        self._git_jobs.add(root)

        def job():
            try:
                self.git.check_dirty(directory)
            finally:
                self.loop.post(self._git_done, root)
        threading.Thread(target=job, name="git", daemon=True).start()

    def _git_done(self, root):
        self._git_jobs.discard(root)
        self._refresh_git()
        self.publish()

    def _refresh_port_groups(self):
        table = process_table()
        kids = children_index(table)
        groups = {}
        for s in self.store.sessions:
            pids = []
            for w in s["windows"]:
                for p in w["panes"]:
                    if p["pid"]:
                        pids.extend(descendants(p["pid"], kids))
            groups[s["id"]] = pids
        self._pid_groups = groups
        self.process_table = table
        self._update_ports()

    def _update_ports(self):
        self.store.ports = ports_for_pids(self._pid_groups)
        self.store.touch()

    def _ports_timer(self):
        """Ports change without a tmux event (a dev server starts listening). Reading the two
        /proc/net files is cheap; only when the set of listening sockets changed do we walk fds."""
        if os.path.isdir("/proc/self"):
            listening = listening_sockets()
            if listening != self._listen_cache:
                self._listen_cache = listening
                self._refresh_port_groups()
        else:
            self._update_ports()
        self.publish()
        self.loop.call_later(2.0, self._ports_timer)

    # -- state changes from the API ----------------------------------------------------------
    def publish(self):
        if self.store.publish():
            self.on_published()

    def on_published(self):
        """Hook for the notifier and the tmux option writer."""

    def handle(self, method, body):
        """Apply one API call on the loop thread, then publish whatever it changed."""
        result = getattr(self, method)(body)
        self.publish()
        return result

    def _meta(self, session):
        meta = self.store.metadata.get(session)
        if meta is None:
            if len(self.store.metadata) >= MAX_METADATA_SESSIONS:
                live = {s["name"] for s in self.store.sessions}
                for name in [n for n in self.store.metadata if n not in live]:
                    del self.store.metadata[name]
            meta = self.store.metadata.setdefault(session, {"status": None, "progress": None, "logs": []})
        return meta

    def api_set_status(self, body):
        session, status = validate_set_status(body)
        self._meta(session)["status"] = status
        self._changed_metadata()

    def api_set_progress(self, body):
        session, progress = validate_set_progress(body)
        self._meta(session)["progress"] = progress
        self._changed_metadata()

    def api_log(self, body):
        session, entry = validate_log(body, self.clock)
        meta = self._meta(session)
        meta["logs"] = apply_log(meta.get("logs", []), entry)
        self._changed_metadata()

    def api_clear_log(self, body):
        session = _require_session(body)
        self._meta(session)["logs"] = []
        self._changed_metadata()

    def api_notify(self, body):
        session, note = validate_notify(body)
        if session:
            meta = self._meta(session)
            meta["logs"] = apply_log(meta.get("logs", []), dict(note, source="notify", ts=now_ms(self.clock)))
            self._changed_metadata()
        self.notify_user(session, note["message"], note["tone"])

    def notify_user(self, session, message, tone):
        """Send a notification through the enabled channels (see the notifications section)."""
        if self.notifier is not None:
            self.notifier.send(session, message, tone)
            return
        text = ("%s: %s" % (session, message)) if session else message
        for c in self.store.clients:
            if not c["control"]:
                try:
                    self.tmux.run("display-message", "-c", c["name"], "-d", "4000", text)
                except TmuxError as e:
                    log("notify via tmux failed: %s" % e)

    def api_agent_event(self, body):
        """A hook or plugin reports a thread's status. -> True if a session matched."""
        ev = validate_agent_event(body)
        pane = session = None
        if ev["paneId"]:
            found = self.store.session_of_pane(ev["paneId"])
            if found:
                session, pane = found[0], ev["paneId"]
        if session is None and ev["tmuxSession"]:
            session = self.store.session_by_name(ev["tmuxSession"])
        if session is None and ev["projectDir"]:
            session = self.store.session_for_dir(ev["projectDir"])
        thread_id = ev["threadId"] or (pane and "pane" + pane) or (session and "session-" + session["name"])
        if not thread_id:
            return False
        self.apply_thread_update(ev["agent"], thread_id, status=ev["status"], title=ev["threadName"],
                                 detail=ev["detail"], attempt=ev["attempt"], pane=pane,
                                 session=session["name"] if session else None, cwd=ev["projectDir"],
                                 model=ev["model"], pid=ev["pid"], source="api")
        return session is not None

    def apply_thread_update(self, agent, thread_id, **fields):
        """Create or update one thread; applies the unseen rule. Runs on the loop thread."""
        key = (agent, thread_id)
        t = self.store.threads.get(key)
        if t is None:
            t = Thread(agent, thread_id, title="", status="idle")
            self.store.threads[key] = t
        old_status = t.status
        for name, value in fields.items():
            if value is not None:
                setattr(t, name, value)
        t.updated_at = now_ms(self.clock)
        if "status" in fields and fields["status"] is not None:
            if becomes_unseen(old_status, t.status, self.is_viewed(t)):
                t.unseen = True
            elif t.status in ACTIVE_STATUSES:
                t.unseen = False
        self.store.touch()
        self._schedule_save()
        return t

    def is_viewed(self, thread):
        """True when an attached (non-control) client looks at the thread's pane's window,
        or at its session when the pane is unknown. Unknown location -> not viewed."""
        clients = [c for c in self.store.clients if not c["control"]]
        if thread.pane:
            found = self.store.session_of_pane(thread.pane)
            if found:
                s, w, _ = found
                return any(c["sessionId"] == s["id"] and c["window"] == w["id"] for c in clients)
        if thread.session:
            return any(c["session"] == thread.session for c in clients)
        return False

    def _changed_metadata(self):
        self.store.touch()
        self._schedule_save()

    # -- persistence -------------------------------------------------------------------------
    def _load_state(self):
        try:
            data = read_json_file(self.state_path, {})
        except OpensessionsError as e:
            log("%s; starting with empty metadata (the file is kept as .corrupt)" % e)
            try:
                os.replace(self.state_path, self.state_path + ".corrupt")
            except OSError:
                pass
            data = {}
        if not isinstance(data, dict):
            return
        meta = data.get("metadata")
        if isinstance(meta, dict):
            for name, m in meta.items():
                if isinstance(name, str) and isinstance(m, dict):
                    logs = m.get("logs") if isinstance(m.get("logs"), list) else []
                    self.store.metadata[name] = {"status": m.get("status"), "progress": m.get("progress"),
                                                 "logs": logs[-MAX_LOGS:]}
        for t in data.get("threads") or ():
            if not isinstance(t, dict) or not isinstance(t.get("agent"), str) or not isinstance(t.get("id"), str):
                continue
            status = t.get("status") if t.get("status") in STATUSES else "idle"
            th = Thread(t["agent"], t["id"], title=t.get("title") or "", status=status,
                        detail=t.get("detail"), attempt=t.get("attempt"), cwd=t.get("cwd"),
                        model=t.get("model"), pane=t.get("pane"), session=t.get("session"),
                        pid=t.get("pid"), alive=bool(t.get("alive")), unseen=bool(t.get("unseen")),
                        updated_at=_int(t.get("updatedAt")), hidden=bool(t.get("hidden")),
                        source=t.get("source"))
            self.store.threads[th.key] = th

    def _schedule_save(self):
        if not self._save_pending:
            self._save_pending = True
            self.loop.call_later(1.0, self._save_state_now)

    def _save_state_now(self):
        self._save_pending = False
        try:
            ensure_private_dir(os.path.dirname(self.state_path))
            atomic_write(self.state_path, json.dumps(self.store.metadata_json()))
        except (OSError, OpensessionsError) as e:
            log("cannot save state to %s: %s" % (self.state_path, e))


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


def host_is_loopback(host):
    """Host header check against DNS rebinding: only loopback names, with an optional port."""
    if host is None:
        return True  # HTTP/1.0 without Host: not a browser
    host = host.strip().lower()
    if host.startswith("["):
        name = host[:host.find("]") + 1] if "]" in host else host
        rest = host[len(name):]
    else:
        name, _, port = host.partition(":")
        rest = (":" + port) if port else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return False
    return name in _LOOPBACK_HOSTS


ROUTES = {
    "/set-status": "api_set_status",
    "/set-progress": "api_set_progress",
    "/log": "api_log",
    "/clear-log": "api_clear_log",
    "/notify": "api_notify",
    "/api/agent-event": "api_agent_event",
}
GET_ROUTES = ("/", "/state", "/events", "/health")


def make_handler(server):
    """The HTTP request handler class bound to one Server."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "opensessions/" + __version__
        sys_version = ""

        def log_message(self, fmt, *args):  # quiet: no line per request
            pass

        def _send(self, status, body=b"", content_type="application/json", extra=None):
            self.send_response(status)
            if status != 204:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status, message, extra=None):
            self._send(status, json.dumps({"error": message}).encode(), extra=extra)

        def _guard(self):
            if not host_is_loopback(self.headers.get("Host")):
                self._error(403, "Host %r is not loopback; refused (DNS rebinding protection)"
                            % self.headers.get("Host"))
                return False
            if self.headers.get("Origin") is not None:
                self._error(403, "requests from web pages (with an Origin header) are refused")
                return False
            return True

        def _path(self):
            return self.path.split("?", 1)[0]

        def do_GET(self):
            if not self._guard():
                return
            path = self._path()
            if path in ROUTES:
                return self._error(405, "use POST for %s" % path, {"Allow": "POST"})
            if path == "/":
                return self._send(200, b"opensessions server\n", "text/plain; charset=utf-8")
            if path == "/health":
                return self._send(200, json.dumps({"ok": True, "version": __version__,
                                                   "pid": os.getpid()}).encode())
            if path == "/state":
                published = server.store.published
                if published is None:
                    return self._error(503, "server is starting or stopping")
                return self._send(200, published[2])
            if path == "/events":
                return self._events()
            return self._error(404, "no such endpoint: %s" % path)

        do_HEAD = do_GET

        def do_POST(self):
            if not self._guard():
                return
            path = self._path()
            if path in GET_ROUTES:
                return self._error(405, "use GET for %s" % path, {"Allow": "GET"})
            method = ROUTES.get(path)
            if method is None:
                return self._error(404, "no such endpoint: %s" % path)
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                self.close_connection = True
                return self._error(411, "send the body with a Content-Length (chunked bodies are not accepted)")
            length = self.headers.get("Content-Length")
            try:
                length = int(length) if length is not None else 0
            except ValueError:
                self.close_connection = True
                return self._error(400, "bad Content-Length")
            if length < 0:
                self.close_connection = True
                return self._error(400, "bad Content-Length")
            if length > MAX_BODY:
                self.close_connection = True
                return self._error(413, "body is %d bytes; the limit is %d" % (length, MAX_BODY))
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw.decode("utf-8")) if raw.strip() else None
            except UnicodeDecodeError:
                return self._error(400, "body is not UTF-8")
            except ValueError as e:
                return self._error(400, "body is not valid JSON: %s" % e)
            if not isinstance(body, dict):
                return self._error(400, "body must be a JSON object")
            try:
                result = server.loop.call(server.handle, method, body)
            except ApiError as e:
                return self._error(e.status, e.message)
            except TimeoutError:
                return self._error(503, "server busy")
            except Exception as e:  # never crash on a request; say what happened
                log("%s failed: %r" % (path, e))
                return self._error(500, "internal error: %s" % e.__class__.__name__)
            if method == "api_agent_event" and result is False:
                return self._send(202, json.dumps({"matched": False}).encode())
            return self._send(204)

        def do_PUT(self):
            self._other()

        do_DELETE = do_PATCH = do_PUT

        def _other(self):
            if not self._guard():
                return
            allow = "POST" if self._path() in ROUTES else "GET"
            self._error(405, "method %s not allowed" % self.command, {"Allow": allow})

        def _events(self):
            store = server.store
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            last = None
            last_sent = 0.0
            try:
                while True:
                    with store.cond:
                        store.cond.wait_for(lambda: store.published is None or store.published[0] != last,
                                            timeout=SSE_KEEPALIVE)
                        published = store.published
                    if published is None:
                        return  # shutting down
                    if published[0] == last:
                        self.wfile.write(b": keepalive\n\n")
                        self.wfile.flush()
                        continue
                    wait = SSE_MIN_INTERVAL - (time.monotonic() - last_sent)
                    if wait > 0 and last is not None:
                        time.sleep(wait)  # coalesce: at most ~30 events per second
                        published = store.published or published
                    last = published[0]
                    last_sent = time.monotonic()
                    self.wfile.write(b"event: state\nid: %d\ndata: " % last + published[2] + b"\n\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                return

    return Handler


def serve(socket_path, port=None, log_path=None, environ=None):
    """Run the server in the foreground until stopped, its tmux server exits, or a signal. -> exit code."""
    import signal
    global _log_file
    env = os.environ if environ is None else environ
    explicit = port is not None or bool(env.get("OPENSESSIONS_PORT"))
    if port is None:
        port = _int(env.get("OPENSESSIONS_PORT"), DEFAULT_PORT) if env.get("OPENSESSIONS_PORT") else DEFAULT_PORT
    if log_path:
        ensure_private_dir(os.path.dirname(log_path))
        _log_file = open(log_path, "a", buffering=1)
    server = build_server(Tmux(socket_path), port, explicit, env)
    server.start()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *a: server.loop.post(server.stop, "signal"))
    log("opensessions %s serving http://%s:%d for tmux %s (pid %d)"
        % (__version__, HOST, server.port, socket_path, os.getpid()))
    server.serve_forever()
    log("server stopped: %s" % (server.exit_reason or "stopped"))
    return 0


def build_server(tmux, port, explicit, environ):
    """The Server with every part attached (watchers, notifier, tmux options)."""
    return Server(tmux, port, explicit, environ)


##############################################################################
# Notifications
##############################################################################

# (Filled by the attention issue.)


##############################################################################
# Resurrect and kitty
##############################################################################

# (Filled by the resurrect issue.)


##############################################################################
# Sidebar
##############################################################################

# (Filled by the sidebar issue.)


##############################################################################
# CLI
##############################################################################

class Client(object):
    """A tiny HTTP client over a raw socket: no http.client import, so commands start fast."""

    def __init__(self, port, host=HOST, timeout=5.0):
        self.port = port
        self.host = host
        self.timeout = timeout

    def request(self, method, path, body=None):
        """-> (status, body bytes). Raises OSError when the server is not reachable."""
        import socket
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        head = ("%s %s HTTP/1.0\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % (method, path, self.host, self.port, len(payload)))
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            sock.sendall(head.encode("ascii") + payload)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        raw = b"".join(chunks)
        header, _, content = raw.partition(b"\r\n\r\n")
        try:
            status = int(header.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise OSError("bad HTTP answer from the server")
        return status, content


def find_server(socket_path, environ=None):
    """-> (port, info or None). The runtime file for this tmux server wins; else the env/default port."""
    env = os.environ if environ is None else environ
    info = RuntimeFiles(socket_path, env).live_info()
    if info and isinstance(info.get("port"), int):
        return info["port"], info
    return _int(env.get("OPENSESSIONS_PORT"), DEFAULT_PORT), None


def _socket_from_args(args):
    return tmux_socket_path(getattr(args, "socket_name", None), getattr(args, "socket_path", None))


def _client(args):
    port = args.port
    if port is None:
        port, _ = find_server(_socket_from_args(args))
    return Client(port)


def _post(args, path, body):
    try:
        status, content = _client(args).request("POST", path, body)
    except OSError as e:
        raise OpensessionsError("cannot reach the opensessions server (%s); start it with `opensessions start`" % e)
    if status >= 400:
        try:
            reason = json.loads(content.decode("utf-8")).get("error")
        except (ValueError, AttributeError):
            reason = content.decode("utf-8", "replace")
        raise OpensessionsError("server refused: %s (HTTP %d)" % (reason, status))
    return status


def cmd_server(args):
    socket_path = _socket_from_args(args)
    return serve(socket_path, args.port, args.log)


def _server_argv(args):
    """The command line that runs this program's server (the .pyz or the module file)."""
    exe = sys.executable or "python3"
    argv = [exe, os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else __file__]
    if getattr(args, "socket_path", None):
        argv += ["-S", os.path.abspath(args.socket_path)]
    elif getattr(args, "socket_name", None):
        argv += ["-L", args.socket_name]
    argv.append("server")
    if args.port is not None:
        argv += ["--port", str(args.port)]
    return argv


def start_background(args, wait=5.0):
    """Start a server in the background unless one runs. -> (port, started)."""
    import subprocess
    socket_path = _socket_from_args(args)
    runtime = RuntimeFiles(socket_path)
    info = runtime.live_info()
    if info:
        return info["port"], False
    ensure_private_dir(state_dir())
    log_path = os.path.join(state_dir(), "server.log")
    argv = _server_argv(args) + ["--log", log_path]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        info = runtime.live_info()
        if info:
            proc.stderr.close()
            return info["port"], True
        if proc.poll() is not None:
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            raise OpensessionsError(err or "the server exited at once (see %s)" % log_path)
        time.sleep(0.02)
    raise OpensessionsError("the server did not start within %.0f s (see %s)" % (wait, log_path))


def cmd_start(args):
    port, started = start_background(args)
    print("opensessions server %s on http://%s:%d" % ("started" if started else "already running", HOST, port))
    return 0


def cmd_stop(args):
    import signal
    socket_path = _socket_from_args(args)
    runtime = RuntimeFiles(socket_path)
    info = runtime.live_info()
    if not info:
        print("no opensessions server runs for tmux socket %s" % socket_path)
        return 0
    pid = info.get("pid")
    try:
        os.kill(pid, signal.SIGTERM)
    except (OSError, TypeError) as e:
        raise OpensessionsError("cannot stop pid %s: %s" % (pid, e))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and runtime.live_info():
        time.sleep(0.02)
    if runtime.live_info():
        raise OpensessionsError("server pid %s did not stop within 5 s" % pid)
    print("opensessions server stopped (pid %s)" % pid)
    return 0


def cmd_set_status(args):
    text = None if args.clear else args.text
    if text is None and not args.clear:
        raise OpensessionsError("give TEXT, or --clear")
    _post(args, "/set-status", {"session": args.session, "text": text, "tone": args.tone})
    return 0


def cmd_set_progress(args):
    body = {"session": args.session}
    if args.clear:
        body["clear"] = True
    elif args.percent is not None:
        body["percent"] = args.percent
    elif args.current is not None and args.total is not None:
        body.update(current=args.current, total=args.total)
    else:
        raise OpensessionsError("give CURRENT TOTAL, --percent N or --clear")
    if args.label:
        body["label"] = args.label
    _post(args, "/set-progress", body)
    return 0


def cmd_log(args):
    _post(args, "/log", {"session": args.session, "message": args.message, "source": args.source,
                         "tone": args.tone})
    return 0


def cmd_clear_log(args):
    _post(args, "/clear-log", {"session": args.session})
    return 0


def cmd_notify(args):
    _post(args, "/notify", {"session": args.session, "message": args.message, "tone": args.tone})
    return 0


def cmd_status(args):
    try:
        status, content = _client(args).request("GET", "/state")
    except OSError as e:
        raise OpensessionsError("cannot reach the opensessions server (%s); start it with `opensessions start`" % e)
    if status != 200:
        raise OpensessionsError("server answered HTTP %d" % status)
    if args.json:
        sys.stdout.write(content.decode("utf-8") + "\n")
        return 0
    state = json.loads(content.decode("utf-8"))
    for s in state["sessions"]:
        line = "%-20s %-6s %s" % (s["name"], s.get("state") or "-", s.get("branch") or "")
        if s.get("unseen"):
            line += " *"
        print(line.rstrip())
        for t in s.get("threads", []):
            print("    %-8s %-11s %s" % (t["agent"], t["status"], t.get("title") or t["id"]))
    return 0


def build_parser():
    import argparse

    def common(defaults):
        c = argparse.ArgumentParser(add_help=False)
        d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
        c.add_argument("-L", dest="socket_name", metavar="NAME", default=d(None),
                       help="tmux socket name (as tmux -L)")
        c.add_argument("-S", dest="socket_path", metavar="PATH", default=d(None),
                       help="tmux socket path (as tmux -S)")
        c.add_argument("--port", type=int, default=d(None),
                       help="HTTP port (default: $OPENSESSIONS_PORT or %d; 0 = any free port)" % DEFAULT_PORT)
        return c

    p = argparse.ArgumentParser(
        prog="opensessions", parents=[common(True)],
        description="Live status of AI coding agents (Claude Code, Codex, OpenCode, Amp) across tmux sessions. "
                    "With no command: inside tmux, start the server; outside tmux, start a tmux session.")
    p.add_argument("--version", action="version", version="opensessions " + __version__)
    shared = common(False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("server", parents=[shared], help="run the server in the foreground")
    s.add_argument("--log", metavar="FILE", help="append log lines to FILE instead of stderr")
    s.set_defaults(func=cmd_server)
    sub.add_parser("start", parents=[shared], help="start the server in the background unless one runs").set_defaults(func=cmd_start)
    sub.add_parser("stop", parents=[shared], help="stop the server").set_defaults(func=cmd_stop)

    s = sub.add_parser("status", parents=[shared], help="print sessions and agent threads")
    s.add_argument("--json", action="store_true", help="print the whole /state document")
    s.set_defaults(func=cmd_status)

    tone = dict(choices=TONES, default="neutral", help="neutral, info, success, warn or error")
    s = sub.add_parser("set-status", parents=[shared], help="set (or --clear) a session's status pill")
    s.add_argument("session")
    s.add_argument("text", nargs="?")
    s.add_argument("--tone", **tone)
    s.add_argument("--clear", action="store_true")
    s.set_defaults(func=cmd_set_status)

    s = sub.add_parser("set-progress", parents=[shared], help="set a session's progress: CURRENT TOTAL, --percent or --clear")
    s.add_argument("session")
    s.add_argument("current", nargs="?", type=float)
    s.add_argument("total", nargs="?", type=float)
    s.add_argument("--percent", type=float)
    s.add_argument("--label")
    s.add_argument("--clear", action="store_true")
    s.set_defaults(func=cmd_set_progress)

    s = sub.add_parser("log", parents=[shared], help="add a log line to a session")
    s.add_argument("session")
    s.add_argument("message")
    s.add_argument("--source")
    s.add_argument("--tone", **tone)
    s.set_defaults(func=cmd_log)

    s = sub.add_parser("clear-log", parents=[shared], help="clear a session's log lines")
    s.add_argument("session")
    s.set_defaults(func=cmd_clear_log)

    s = sub.add_parser("notify", parents=[shared], help="send a notification through the enabled channels")
    s.add_argument("message")
    s.add_argument("--session")
    s.add_argument("--tone", **tone)
    s.set_defaults(func=cmd_notify)
    return p


def cmd_default(args):
    """No command: inside tmux, make sure the server runs; outside, start a tmux session with it."""
    if os.environ.get("TMUX") or args.socket_name or args.socket_path:
        port, started = start_background(args)
        print("opensessions server %s on http://%s:%d" % ("started" if started else "running", HOST, port))
        return 0
    import shutil
    if not shutil.which("tmux"):
        raise OpensessionsError("tmux is not installed")
    me = [sys.executable, os.path.abspath(sys.argv[0])]
    os.execvp("tmux", ["tmux", "new-session", "-A", "-s", "opensessions",
                       " ".join(_shell_quote(a) for a in me) + " start; exec ${SHELL:-sh}"])


def _shell_quote(s):
    import shlex
    return shlex.quote(s)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None) or cmd_default
    try:
        return func(args) or 0
    except OpensessionsError as e:
        sys.stderr.write("opensessions: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
