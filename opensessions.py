#!/usr/bin/env python3
"""opensessions: live status of AI coding agents across tmux sessions.

One module, standard library only, Python 3.9+.  This is the map; each section below starts with
a banner of the same name, and each uses only the sections above it (tests/test_structure.py
holds that claim with `ast`):

  1. Constants and paths     ports, limits, log, env settings, XDG and runtime dirs, atomic writes,
                             the one number coercion
  2. Model (pure)            threads, statuses, attention, unseen, metadata and ui validation,
                             input cleaning (one control-character rule), themes and glyphs
  3. Agent parsers (pure)    bytes in, records out: each agent's transcripts, registries, usage
  4. Agent screens (pure)    screens in, keys out: each agent's prompt read from its screen, and
                             the steps that answer it (one reply planner per agent)
  5. Agents (pure)           one AgentSpec per agent, AGENT_SPECS, and what the sections ask of
                             an agent: ids, process recognition, hook payloads, resume, prices
  6. tmux gateway            the one place that runs tmux: commands, formats, snapshot,
                             control-mode lines, our @opensessions-* options
  7. System probes           process table, listening ports, git branch, pidfds
  8. Client                  how a command reaches the server (runtime file and lock, a tiny HTTP
                             client) and the commands that need nothing more: hooks, key bindings,
                             set-status and the like, parsed without argparse (run_client)
  9. Watchers                inotify, kqueue or a stat poller (by how recently files changed),
                             file tails, read-only SQLite; one watcher per agent (by its spec's
                             watch kind) over a shared core
 10. Installer               our hooks, plugin and extension in the agents' own configs
 11. Reply                   answer an agent's prompt without switching: the checks around
                             typing, and the typing
 12. Server                  event loop, store, linker, HTTP API and SSE, the control client (its
                             commands, a followed pane's output) and the previews pushed when their
                             pane prints
 13. Notifications           tmux / desktop / terminal / bell, coalesced; status-line options
 14. Remote hosts            other machines over the user's ssh: one ssh and one relay per host,
                             the program shipped when missing, frames checked as hostile input
 15. Resurrect and kitty     save and restore agents with tmux-resurrect; kitty tabs
 16. History                 every past conversation on this machine: the index (built off the
                             loop, kept live, saved), search, preview, resume and fork
 17. Sidebar                 curses: model -> lines (pure) -> draw; the popup and its history
                             tab; sidebar panes
 18. CLI                     argparse, the other commands, plugin setup, main()

One spec per agent. Everything particular to an agent is in its AgentSpec (section 5): where its
files are (paths) and how they are read (watch), how its process is recognised (process), how its
hook payloads map to statuses (hooks) and what `install` adds for it (install), how a conversation
is resumed or forked and which of its flags a restore keeps (resume_args, fork_args, session_*),
how its prompts are read and answered (prompt_reader, reply_planner), what its models cost
(prices), what its ids look like (id_pattern), where its past conversations are and how the history
reads them (history). The sections below loop over AGENT_SPECS and name no
agent. A spec holds only data and pure functions: the I/O behind it lives in the section that does
that I/O and is found by a kind the spec names, never by a spec field pointing down the map (an
upward use): `watch.kind` picks a class in the Watchers' WATCHER_KINDS (which also answers what a
restore asks of the agent's files, and which of them a live conversation can change), the Installer
carries out its HookInstall or FileInstall, Reply runs its planner's steps. So an agent whose files
and hooks fit kinds that exist (JSONL chats per project: "chat-files"; Claude-shaped hooks) is added
in one place, its spec and its parser beside it; one that needs new I/O also adds its watcher class
and names its kind.

Narrow doors. The Server owns the store and the loop; each collaborator is given only what it
uses: the watchers a WatcherHost, the API an ApiHost, the notifier a NotifierHost, the remote
hosts a RemoteDoor, the HTTP handlers an HttpDoor, the sidebar panes tmux, a view of the store and
schedule_refresh (a request naming a host reaches the hosts through ApiHost.to_host). Decisions are
pure where they can be, with a small executor beside them: reply_plan / run_reply_steps,
SidebarPlan / run_sidebar_steps, render_view (the sidebar's rows, and what they scrolled to).

Importing this module has no side effects: nothing runs, nothing is written, no heavy module is
imported until a function needs it (client commands must start fast). The .pyz holds the module's
bytecode in two parts, split after the Client section: a client command runs the first part only.
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


class LazyPattern(object):
    """re.compile(pattern), done on first use: the module's patterns cost a client command nothing
    at start-up (compiling them all took ~4 ms of every call). After the first use each method is
    the compiled pattern's own, kept on the instance, so a hot path pays no indirection."""

    def __init__(self, pattern):
        self.pattern = pattern

    def __getattr__(self, name):  # only for names not set yet: match, search, sub...
        value = getattr(re.compile(self.pattern), name)
        setattr(self, name, value)
        return value


_log_file = None
_log_path = None
_log_lock = None
LOG_MAX_BYTES = 1024 * 1024  # server.log is rotated to server.log.1 past this size


def _log_opener(path, flags):
    """A log file is made 0600 and never opened through a symlink (one planted in a shared dir such
    as /tmp would make us append to whatever it points at)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o600)


def open_log(path, max_bytes=None):
    """Send log() to path (appending); past LOG_MAX_BYTES it moves to path.1 and starts again."""
    import threading
    global _log_file, _log_path, _log_lock, LOG_MAX_BYTES
    if max_bytes is not None:
        LOG_MAX_BYTES = max_bytes
    _log_lock = _log_lock or threading.Lock()
    _log_path = path
    _log_file = open(path, "a", buffering=1, encoding="utf-8", errors="replace", opener=_log_opener)
    _rotate_log()


def _rotate_log():
    global _log_file
    try:
        if _log_file.tell() < LOG_MAX_BYTES:
            return
        _log_file.close()
        os.replace(_log_path, _log_path + ".1")
    except (OSError, ValueError):
        pass
    try:
        _log_file = open(_log_path, "a", buffering=1, encoding="utf-8", errors="replace", opener=_log_opener)
    except OSError:
        _log_file = None


def log(message):
    """Server log line (stderr, or the log file set by the server)."""
    line = "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message)
    if _log_lock is not None:
        with _log_lock:
            _write_log(line)
            if _log_file is not None:
                _rotate_log()
    else:
        _write_log(line)


def _write_log(line):
    target = _log_file or sys.stderr
    try:
        target.write(line)
        target.flush()
    except (OSError, ValueError):
        pass


def as_number(value, default=None, kind=float, low=None, high=None, text=False):
    """The one coercion of a number that comes from outside (an agent's file, tmux, a request, the
    state file): an int or a finite float, never a bool (JSON's 1e999 is inf, NaN is no number), a
    numeric string only with text=True (tmux's fields, a registry's "procStart": "72036"); kind=int
    truncates. Out of [low, high], or no number at all -> default."""
    if text and isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value - value != 0:
        return default
    if (low is not None and value < low) or (high is not None and value > high):
        return default
    return int(value) if kind is int else value


def env_number(name, default, environ=None, kind=float, low=0):
    """A numeric setting from the environment: unset or empty -> default; anything else that is not
    a number >= low is the user's mistake, said in one line (never silently ignored)."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value != value or value < low:
        raise OpensessionsError("%s=%s is not %s >= %s" % (name, raw, "an integer" if kind is int else "a number", low))
    return value


def check_port(port, where="--port"):
    """A TCP port we may bind or call: 0 (any free port, when binding) to 65535."""
    if port is not None and not (isinstance(port, int) and 0 <= port <= 65535):
        raise OpensessionsError("%s%s%s is not a port (0-65535)" % (where, "" if where.endswith("=") else " ", port))
    return port


def env_port(environ=None):
    """$OPENSESSIONS_PORT, or None when unset."""
    port = env_number("OPENSESSIONS_PORT", None, environ, kind=int)
    return check_port(port, "OPENSESSIONS_PORT=")


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
    """Where the lock and runtime file live: $XDG_RUNTIME_DIR/opensessions, else the per-user temp
    dir $TMPDIR/opensessions-<uid>; when someone else made that one first (squatted: not a private
    directory of ours, see runtime_dir_squatted), a directory of our own in the state dir. The
    OpenCode plugin and the Pi extension find it the same way (_JS_SERVER_LOOKUP)."""
    base = _env("XDG_RUNTIME_DIR", None, environ)
    if base and os.path.isdir(base):
        return os.path.join(base, "opensessions")
    tmp = temp_runtime_dir(environ)
    if runtime_dir_squatted(tmp):
        return os.path.join(state_dir(environ), "run")
    return tmp


def temp_runtime_dir(environ=None):
    return os.path.join(_env("TMPDIR", "/tmp", environ), "opensessions-%d" % os.getuid())


def runtime_dir_squatted(path):
    """Why a runtime dir under a shared $TMPDIR cannot be ours (another user made it first, as a
    directory, a file or a symlink), or None when it is ours or not there yet. A directory of ours
    with a loose mode is ours (ensure_private_dir makes it 0700)."""
    import stat
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return "%s cannot be looked at (%s)" % (path, e)
    if lst.st_uid != os.getuid():
        return "%s is owned by uid %d, not by you" % (path, lst.st_uid)
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            return "%s is a symlink to nothing" % path
        if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077:
            return "%s is a symlink to a directory that is not private to you" % path
        return None
    if not stat.S_ISDIR(lst.st_mode):
        return "%s is not a directory" % path
    return None


def config_dir(environ=None):
    return os.path.join(xdg_dir("CONFIG", environ), "opensessions")


def state_dir(environ=None):
    return os.path.join(xdg_dir("STATE", environ), "opensessions")


def ensure_private_dir(path):
    """Create path (0700) if needed; refuse a directory owned by someone else. A directory others
    can read is made 0700 through its own descriptor (never through a symlink); a symlink of
    ours to a private directory of ours is accepted as it is."""
    import stat
    os.makedirs(path, mode=0o700, exist_ok=True)
    lst = os.lstat(path)
    if lst.st_uid != os.getuid():
        raise OpensessionsError("%s is owned by uid %d, not by you; refusing to use it" % (path, lst.st_uid))
    if stat.S_ISLNK(lst.st_mode):
        st = os.stat(path)
        if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode) or st.st_mode & 0o077:
            raise OpensessionsError("%s is a symlink to a directory that is not private to you (owner uid %d, "
                                    "mode %o); refusing to use it" % (path, st.st_uid, st.st_mode & 0o777))
        return path
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():  # replaced between the lstat and the open
            raise OpensessionsError("%s is owned by uid %d, not by you; refusing to use it" % (path, st.st_uid))
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


def log_dir_ready(log_path, environ=None):
    """Make the directory of a log file ready: our own state or runtime dir (or one inside them) is
    made private (ensure_private_dir); any other directory (`server --log /tmp/x.log`: a shared
    one) is only created when missing, never chmodded nor refused (as root, /tmp became 0700)."""
    d = os.path.dirname(os.path.abspath(log_path))
    real = os.path.realpath(d)
    for own in (state_dir(environ), runtime_dir(environ)):
        own = os.path.realpath(own)
        if real == own or real.startswith(own.rstrip(os.sep) + os.sep):
            return ensure_private_dir(d)
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def private_file_ok(st):
    """A stat result of a file or directory that only we can use (ours, nothing for group/others)."""
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def read_private_json(path, limit=65536):
    """A small JSON object from a file in a private directory, trusted only when the directory and
    the file are ours and private and the file is no symlink (a shared $TMPDIR is writable by
    everyone). -> dict, or None."""
    import stat
    try:
        dst = os.lstat(os.path.dirname(path) or ".")
        if stat.S_ISLNK(dst.st_mode) or not private_file_ok(dst):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not private_file_ok(st):
            return None
        raw = os.read(fd, limit)
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def atomic_write(path, data, mode=0o600, exact_mode=False):
    """Write bytes or str (or an iterable of bytes, written piece by piece, never held whole) to
    path through a temp file and rename: readers never see half a file. mode goes through the
    umask, unless exact_mode (a user's file keeping its own mode)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0),
                 0o600 if exact_mode else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if exact_mode:
                os.fchmod(f.fileno(), mode)
            if isinstance(data, bytes):
                f.write(data)
            else:
                for piece in data:
                    f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# Every read of a file we do not own (an agent's registry, transcript, chat file, database header,
# config; tmux-resurrect's files; a repository's .git) goes through open_foreign / read_foreign: a
# FIFO there would block the open (and the event loop with it) for good, /dev/zero or a 1 GB file
# would be read into memory without end. So: opened with O_NONBLOCK (and O_NOFOLLOW where a link is
# not expected), kept only when fstat says it is a regular file, and read up to a cap.
REGISTRY_MAX = 1024 * 1024  # an agent's live registry entry (~/.claude/sessions/<pid>.json: ~300 bytes)
FOREIGN_JSON_MAX = 16 * 1024 * 1024  # an agent's or a tool's JSON file read whole (projects.json, settings)
OWN_JSON_MAX = 64 * 1024 * 1024  # our own state, usage history and preferences


class ForeignFileError(OSError):
    """A file we do not own that is not read: not a regular file (a FIFO, a device such as
    /dev/zero, a socket, a directory), or longer than the cap for it."""


def open_foreign(path, follow=True):
    """A read-only fd on a file we do not own -> (fd, fstat result). Never blocks: the file is
    looked at (stat) before it is opened, opened with O_NONBLOCK (a FIFO put there meanwhile
    opens at once instead of waiting for a writer) and O_NOCTTY, with O_NOFOLLOW unless follow,
    and kept only when fstat says it is a regular file; anything else raises ForeignFileError."""
    import errno
    import stat
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ForeignFileError("%s is %s, not a regular file; not read" % (path, _file_kind(st.st_mode)))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if not follow and e.errno == errno.ELOOP:  # made a symlink between the look and the open
            raise ForeignFileError("%s is a symlink, not a regular file; not read" % path)
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the look and the open
            raise ForeignFileError("%s is %s, not a regular file; not read" % (path, _file_kind(st.st_mode)))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _file_kind(mode):
    import stat
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def read_foreign(path, limit, follow=True, whole=True):
    """The bytes of a file we do not own (see open_foreign), at most `limit` of them. whole: the
    file is read whole or not at all (a longer one raises ForeignFileError: a JSON document cut
    short means nothing); else its first `limit` bytes (the head of a transcript)."""
    fd, st = open_foreign(path, follow)
    try:
        if whole and st.st_size > limit:
            raise ForeignFileError("%s is %d bytes, over the %d-byte cap for it; not read" % (path, st.st_size, limit))
        want = limit + 1 if whole else limit  # one byte more tells a file that grew past the cap
        chunks, got = [], 0
        while got < want:
            chunk = os.read(fd, min(want - got, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if whole and len(data) > limit:
        raise ForeignFileError("%s grew past the %d-byte cap for it; not read" % (path, limit))
    return data


def read_json_file(path, default=None):
    """Read a JSON file we own. Missing -> default; corrupt (or not a regular file, or over
    OWN_JSON_MAX) -> OpensessionsError naming the file."""
    try:
        raw = read_foreign(path, OWN_JSON_MAX)
    except FileNotFoundError:
        return default
    except ForeignFileError as e:
        raise OpensessionsError(str(e))
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise OpensessionsError("%s is not valid JSON (%s)" % (path, e.__class__.__name__ if
                                                               isinstance(e, RecursionError) else e))


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


def program_source(path):
    """The bytes of the program's source: the file itself, or opensessions.py inside a .pyz."""
    if os.path.isfile(path) and not path.endswith(".pyz"):
        with open(path, "rb") as f:
            return f.read()
    archive, inner = path, "opensessions.py"
    if not os.path.isfile(path):  # a module path inside a zipapp: .../opensessions.pyz/opensessions.py
        archive, _, inner = path.rpartition(os.sep)
    import zipfile
    try:
        with zipfile.ZipFile(archive) as zf:
            return zf.read(inner)
    except (zipfile.BadZipFile, KeyError) as e:
        raise OSError(str(e))


def program_path():
    """The file this process runs: the .pyz or .py it was started as (else this module's own)."""
    return os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] and os.path.isfile(sys.argv[0]) \
        else os.path.abspath(__file__)


def file_signature(path):
    """(inode, size, mtime) of a file, or None when there is none: whether it changed or was
    replaced since it was last looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def program_digest(path=None):
    """A short hash of the program's source: an update changes it even when the version string
    does not, so the plugin knows to restart the server. The same source run as .py or from the
    .pyz is the same version (the archive's bytes are not hashed, its opensessions.py is)."""
    import hashlib
    path = path or program_path()
    try:
        return hashlib.sha1(program_source(path)).hexdigest()[:12]
    except OSError:
        return None


def now_ms(clock=time.time):
    return int(clock() * 1000)


##############################################################################
# Model (pure): threads, statuses, attention, unseen, metadata and ui validation, themes, prices
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
_AGENT_NAME_RE = LazyPattern(r"^[a-z][a-z0-9_-]{0,31}$")


class ApiError(Exception):
    """A request the API refuses: HTTP status and a reason for the JSON body."""

    def __init__(self, status, message):
        Exception.__init__(self, message)
        self.status = status
        self.message = message


_SURROGATE_RE = LazyPattern("[\ud800-\udfff]")
# The one control-character rule: C0, DEL, C1 and the Unicode line and paragraph separators. Shown
# in a row they break it, typed into a line editor they edit the line (^U erases it, ^M runs it),
# printed on a terminal they move the cursor (C1's CSI included).
CONTROL_CHARS = LazyPattern("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_str(value):
    """A string from outside (a request, a file, a hook) made valid: lone UTF-16 surrogates, which
    JSON allows ("\\ud83d") but UTF-8 cannot encode, become U+FFFD. Other values pass unchanged."""
    if isinstance(value, str) and _SURROGATE_RE.search(value):
        return _SURROGATE_RE.sub("\ufffd", value)
    return value


def clean_text(value):
    """Text shown in a sidebar row (status, log, title, detail): valid (clean_str) and on one line:
    control characters (C0, DEL, C1, line separators) become spaces."""
    value = clean_str(value)
    if isinstance(value, str) and CONTROL_CHARS.search(value):
        return CONTROL_CHARS.sub(" ", value)
    return value


def clean_json(value, max_depth=32):
    """A JSON value read from a file made safe to keep and re-encode: strings valid, non-finite
    numbers dropped (None), nesting past max_depth dropped."""
    if isinstance(value, str):
        return clean_str(value)
    if isinstance(value, float) and as_number(value) is None:
        return None
    if isinstance(value, (dict, list, tuple)) and max_depth <= 0:
        return None
    if isinstance(value, dict):
        return {clean_str(k): clean_json(v, max_depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v, max_depth - 1) for v in value]
    return value


def encode_json(doc):
    """Strict JSON bytes (UTF-8, no NaN/Infinity) of a document built from cleaned values; a value
    that slipped through is cleaned rather than failing the whole document."""
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return json.dumps(clean_json(doc, 100), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")


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
                 "session", "pid", "alive", "unseen", "updated_at", "subagent", "source", "proc_start",
                 "link", "usage", "usage_raw")

    def __init__(self, agent, id, title="", status="idle", detail=None, attempt=None, cwd=None,
                 model=None, pane=None, session=None, pid=None, alive=True, unseen=False,
                 updated_at=0, subagent=False, source=None):
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
        self.subagent = subagent  # a helper another thread started (a subagent): not listed on its own
        self.source = source
        self.proc_start = None
        self.link = None  # how the pane was found: "pid", or "cwd" for the last-resort guess
        self.usage = None  # the /state usage (priced); usage_raw: the watcher's raw figures
        self.usage_raw = None

    @property
    def key(self):
        return (self.agent, self.id)

    def to_json(self):
        return {
            "agent": self.agent, "id": self.id, "title": self.title, "status": self.status,
            "detail": self.detail, "attempt": self.attempt, "cwd": self.cwd, "model": self.model,
            "pane": self.pane, "session": self.session, "pid": self.pid, "alive": self.alive,
            "unseen": self.unseen, "updatedAt": self.updated_at, "link": self.link, "usage": self.usage,
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
        if t.subagent:
            continue
        a = thread_attention(t)
        if best is None or ATTENTION_ORDER.index(a) < ATTENTION_ORDER.index(best):
            best = a
    return best


RECENT_MS = 24 * 3600 * 1000  # a dead thread outside any session is listed this long
MAX_ORPHANS = 30


def thread_visible(thread, now_ms_, recent_ms=RECENT_MS):
    """Shown in /state: not a subagent, and alive, unseen, or active within recent_ms."""
    if thread.subagent:
        return False
    return thread.alive or thread.unseen or now_ms_ - thread.updated_at <= recent_ms


MAX_THREADS = 2000  # threads the server keeps; past it the least needed are forgotten (see threads_to_prune)
MAX_SESSION_THREADS = 50  # threads /state lists per session (alive, unseen and newest first)


def threads_to_prune(threads, now_ms_, list_ms, cap=MAX_THREADS):
    """Keys of threads to forget: exited (not alive), seen, and quiet for longer than list_ms
    (OPENSESSIONS_LIST_HOURS: /state would not list them); then, if more than `cap` remain, the
    least needed down to 90% of the cap (seen before unseen, exited before alive, oldest first)
    so that a flood of new threads prunes once per cap/10 threads, not once per thread."""
    drop = [t.key for t in threads if not t.alive and not t.unseen and now_ms_ - t.updated_at > list_ms]
    left = len(threads) - len(drop)
    if left > cap:
        dropped = set(drop)
        rest = sorted((t for t in threads if t.key not in dropped), key=lambda t: (t.unseen, t.alive, t.updated_at))
        drop.extend(t.key for t in rest[:left - cap * 9 // 10])
    return drop


def becomes_unseen(old_status, new_status, viewed):
    """A thread turning done/error/interrupted/waiting while nobody looks at it is unseen."""
    return (not viewed) and new_status in UNSEEN_STATUSES and new_status != old_status


def live_state_holds(current, status, moved_on, plugin_holds=False):
    """Which source wins when an agent's own files say a thread runs (the apply step's rule):
    a state only a live source can see holds until the files show that it ended.
      plugin_holds (the agent's spec: OpenCode's database cannot see a permission wait or a
      retry, and shows a denied call as running for a moment): the plugin's hold.
      The others: a wait (known only from a hook) holds while the file has not moved on."""
    if current is None or status != "running":
        return False
    if plugin_holds:
        # a denial's interrupt too: the database still shows the rejected call running for a moment,
        # and the next turn starts with the plugin's own busy event
        return current.source == "plugin" and current.status in ("waiting", "retry", "interrupted")
    return current.status == "waiting" and not moved_on


def _require_session(body):
    name = body.get("session")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "'session' must be a non-empty string (the tmux session name)")
    return clean_str(name)


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
    if as_number(value) is None:
        raise ApiError(400, "'%s' must be a finite number" % key)
    return value


def _optional_text(body, key, limit):
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "'%s' must be a string" % key)
    return clean_text(value[:limit])


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
    return session, {"text": clean_text(text[:MAX_STATUS_TEXT]), "tone": _tone(body)}


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
    return session, {"message": clean_text(message[:MAX_LOG_MESSAGE]), "source": source, "tone": _tone(body),
                     "ts": now_ms(clock)}


def validate_notify(body):
    session = body.get("session")
    if session is not None and not isinstance(session, str):
        raise ApiError(400, "'session' must be a string")
    message = body.get("message")
    if not isinstance(message, str) or not message:
        raise ApiError(400, "'message' must be a non-empty string")
    return clean_str(session), {"message": clean_text(message[:MAX_LOG_MESSAGE]), "tone": _tone(body)}


def stored_metadata(session, m):
    """A session's metadata read back from the state file, checked like a request (an older
    version may have written a NaN progress or a control character); what fails is dropped."""
    def check(fn, body):
        try:
            return fn(dict(body, session=session))[1]
        except (ApiError, TypeError, AttributeError):
            return None
    status = m.get("status") if isinstance(m.get("status"), dict) else None
    progress = m.get("progress") if isinstance(m.get("progress"), dict) else None
    if progress is not None:
        keys = ("current", "total", "label") if "current" in progress else ("percent", "label")
        progress = check(validate_set_progress, {k: progress.get(k) for k in keys})
    logs = []
    for e in m.get("logs") if isinstance(m.get("logs"), list) else ():
        entry = check(lambda b: validate_log(b, lambda: 0), e) if isinstance(e, dict) else None
        if entry is not None:
            entry["ts"] = e.get("ts") if isinstance(e.get("ts"), int) and not isinstance(e.get("ts"), bool) else 0
            logs.append(entry)
    return {"status": check(validate_set_status, status) if status is not None else None,
            "progress": progress, "logs": logs[-MAX_LOGS:]}


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
        clean = clean_text if key in ("threadName", "detail", "model") else clean_str
        out[key] = clean(value[:MAX_LOG_MESSAGE]) if isinstance(value, str) else None
    attempt = body.get("attempt")
    if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int)):
        raise ApiError(400, "'attempt' must be an integer")
    out["attempt"] = attempt
    pid = body.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0):
        raise ApiError(400, "'pid' must be a positive integer")
    out["pid"] = pid
    alive = body.get("alive")
    if alive is not None and not isinstance(alive, bool):
        raise ApiError(400, "'alive' must be a boolean")
    out["alive"] = alive
    idle_prompt = body.get("idlePrompt")
    if idle_prompt is not None and not isinstance(idle_prompt, bool):
        raise ApiError(400, "'idlePrompt' must be a boolean")
    out["idlePrompt"] = bool(idle_prompt)
    for key in ("source", "prompt"):
        value = body.get(key)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, "'%s' must be a string" % key)
        out[key] = clean_text(value[:MAX_LOG_MESSAGE]) if isinstance(value, str) else None
    if out["paneId"] is not None and not re.match(r"^%\d+$", out["paneId"]):
        raise ApiError(400, "'paneId' must look like %12")
    return out


DEFAULT_WIDTH = 32
NOTIFY_CHANNELS = ("tmux", "desktop", "terminal", "bell")
NOTIFY_STATUSES = ("done", "error", "waiting", "retry", "interrupted")
UI_DEFAULTS = {"order": [], "hidden": [], "muted": [], "theme": "catppuccin-mocha", "width": DEFAULT_WIDTH,
               "position": "left", "colors": {}, "visible": False,
               "notify": ["tmux", "desktop"], "notifyOn": ["done", "error", "waiting", "retry"], "prices": {},
               "hosts": [], "collapsed": []}
MAX_HOSTS = 32
# A remote host as ssh takes it: an alias of ~/.ssh/config or a name, with an optional user@.
# Never a leading '-' (an ssh option), no ':' (the port goes in ~/.ssh/config; ':' also joins a host
# and a session in /state), no space, no shell character.
_HOST_RE = LazyPattern(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}@)?[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")


def valid_host(name):
    """A host name we may hand to ssh (see _HOST_RE)."""
    return isinstance(name, str) and bool(_HOST_RE.match(name))


def parse_hosts(text):
    """'devbox gpu1 me@vm2' (spaces or commas) -> (valid hosts in order, invalid words). Pure."""
    words = [w for w in re.split(r"[\s,]+", text or "") if w]
    good = [w for w in words if valid_host(w)]
    return list(dict.fromkeys(good))[:MAX_HOSTS], [w for w in words if not valid_host(w)]


def validate_ui(body):
    """POST /ui: a partial update of the sidebar preferences. -> dict of the given keys."""
    out = {}
    for key in ("order", "hidden", "muted"):
        if key in body:
            value = body[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) > 1000:
                raise ApiError(400, "'%s' must be a list of session names" % key)
            out[key] = list(dict.fromkeys(clean_str(v) for v in value))
    if "theme" in body:
        if not isinstance(body["theme"], str) or body["theme"] not in THEMES:
            raise ApiError(400, "'theme' must be one of: %s" % ", ".join(sorted(THEMES)))
        out["theme"] = body["theme"]
    if "width" in body:
        w = body["width"]
        if isinstance(w, bool) or not isinstance(w, int) or not 15 <= w <= 120:
            raise ApiError(400, "'width' must be an integer from 15 to 120")
        out["width"] = w
    if "position" in body:
        if body["position"] not in ("left", "right"):
            raise ApiError(400, "'position' must be left or right")
        out["position"] = body["position"]
    if "prices" in body:
        out["prices"] = validate_prices(body["prices"])
    if "visible" in body:
        if not isinstance(body["visible"], bool):
            raise ApiError(400, "'visible' must be a boolean")
        out["visible"] = body["visible"]
    for key, allowed in (("notify", NOTIFY_CHANNELS), ("notifyOn", NOTIFY_STATUSES)):
        if key in body:
            value = body[key]
            if not isinstance(value, list) or not all(v in allowed for v in value):
                raise ApiError(400, "'%s' must be a list drawn from: %s" % (key, ", ".join(allowed)))
            out[key] = list(dict.fromkeys(value))
    for key in ("hosts", "collapsed"):
        if key in body:
            value = body[key]
            if not isinstance(value, list) or len(value) > MAX_HOSTS or not all(valid_host(v) for v in value):
                raise ApiError(400, "'%s' must be a list of at most %d ssh hosts (HOST or USER@HOST, as ssh takes "
                                    "them; no ':' or spaces)" % (key, MAX_HOSTS))
            out[key] = list(dict.fromkeys(value))
    if "colors" in body:
        c = body["colors"]
        if not isinstance(c, dict) or not all(isinstance(v, str) and re.match(r"^#[0-9a-fA-F]{6}$", v)
                                              for v in c.values()):
            raise ApiError(400, "'colors' must map colour names to #rrggbb")
        out["colors"] = dict(c)
    if not out:
        raise ApiError(400, "nothing to change: give order, hidden, muted, theme, width, position, visible, prices, "
                            "colors, notify, notifyOn, hosts or collapsed")
    return out


def load_ui(data):
    """UI preferences from the config file's JSON -> (ui, problems): each valid field kept, each
    field validate_ui refuses left at its default and said in `problems` (a list of messages)."""
    ui = json.loads(json.dumps(UI_DEFAULTS))
    problems = []
    if data is not None and not isinstance(data, dict):
        return ui, ["it holds %s, not an object" % type(data).__name__]
    for key in UI_DEFAULTS:
        if key in (data or {}):
            try:
                ui.update(validate_ui({key: data[key]}))
            except ApiError as e:
                problems.append(e.message)
    return ui, problems


def clean_thread_fields(fields):
    """What a watcher, hook or plugin says of a thread, made safe to keep and to show (the apply
    step's input): title, detail and model on one line, cwd and source valid text, attempt and pid
    whole numbers, updated_at a finite number; anything else of theirs becomes None. -> new dict."""
    out = dict(fields)
    for name in ("title", "detail", "model"):  # shown in a row
        if isinstance(out.get(name), str):
            out[name] = clean_text(out[name])
    for name in ("cwd", "source"):
        if isinstance(out.get(name), str):
            out[name] = clean_str(out[name])
    for name in ("attempt", "pid"):
        if out.get(name) is not None and not (as_number(out[name]) is not None and out[name] == int(out[name])):
            out[name] = None
    if out.get("updated_at") is not None and as_number(out["updated_at"]) is None:
        out["updated_at"] = None
    return out


def order_sessions(sessions, order):
    """Sessions in the user's saved order; those not in it follow, oldest first."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(sessions, key=lambda s: (rank.get(s["name"], len(rank)), s.get("created", 0), s["id"]))


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
    """A short stable name for per-tmux-server files: FNV-1a 64 of the socket path (no hashlib
    import on the client path; the OpenCode plugin computes the same in JavaScript)."""
    h = 0xcbf29ce484222325
    for byte in socket_path.encode("utf-8", "surrogateescape"):
        h = ((h ^ byte) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return ("%016x" % h)[:12]


PRICE_FIELDS = ("input", "output", "cacheRead", "cacheWrite", "context")


def validate_prices(value):
    """ui.json "prices": {model prefix: {input, output, cacheRead, cacheWrite, context}} -> clean dict."""
    if not isinstance(value, dict) or len(value) > 200:
        raise ApiError(400, "'prices' must be an object of model name -> {input, output, cacheRead, cacheWrite, context}")
    out = {}
    for model, p in value.items():
        if not isinstance(model, str) or not 0 < len(model) <= 100 or not isinstance(p, dict):
            raise ApiError(400, "'prices' must be an object of model name -> {input, output, cacheRead, cacheWrite, context}")
        entry = {}
        for key in PRICE_FIELDS:
            v = p.get(key)
            if v is None:
                continue
            if as_number(v, low=0, high=1e9) is None:
                raise ApiError(400, "'prices.%s.%s' must be a non-negative number (USD per million tokens)" % (model, key))
            entry[key] = v
        out[clean_str(model)] = entry
    return out


THEMES = {
    "catppuccin-mocha": {"bg": "#1e1e2e", "fg": "#cdd6f4", "muted": "#6c7086", "accent": "#89b4fa",
                         "sel": "#313244", "running": "#89dceb", "waiting": "#f9e2af", "error": "#f38ba8",
                         "done": "#a6e3a1", "unseen": "#fab387", "interrupted": "#cba6f7"},
    "catppuccin-latte": {"bg": "#eff1f5", "fg": "#4c4f69", "muted": "#8c8fa1", "accent": "#1e66f5",
                         "sel": "#ccd0da", "running": "#04a5e5", "waiting": "#df8e1d", "error": "#d20f39",
                         "done": "#40a02b", "unseen": "#fe640b", "interrupted": "#8839ef"},
    "tokyo-night": {"bg": "#1a1b26", "fg": "#c0caf5", "muted": "#565f89", "accent": "#7aa2f7",
                    "sel": "#292e42", "running": "#7dcfff", "waiting": "#e0af68", "error": "#f7768e",
                    "done": "#9ece6a", "unseen": "#ff9e64", "interrupted": "#bb9af7"},
    "gruvbox-dark": {"bg": "#282828", "fg": "#ebdbb2", "muted": "#928374", "accent": "#83a598",
                     "sel": "#3c3836", "running": "#8ec07c", "waiting": "#fabd2f", "error": "#fb4934",
                     "done": "#b8bb26", "unseen": "#fe8019", "interrupted": "#d3869b"},
    "nord": {"bg": "#2e3440", "fg": "#d8dee9", "muted": "#4c566a", "accent": "#88c0d0", "sel": "#3b4252",
             "running": "#8fbcbb", "waiting": "#ebcb8b", "error": "#bf616a", "done": "#a3be8c",
             "unseen": "#d08770", "interrupted": "#b48ead"},
    "dracula": {"bg": "#282a36", "fg": "#f8f8f2", "muted": "#6272a4", "accent": "#bd93f9", "sel": "#44475a",
                "running": "#8be9fd", "waiting": "#f1fa8c", "error": "#ff5555", "done": "#50fa7b",
                "unseen": "#ffb86c", "interrupted": "#ff79c6"},
    "one-dark": {"bg": "#282c34", "fg": "#abb2bf", "muted": "#5c6370", "accent": "#61afef", "sel": "#3e4451",
                 "running": "#56b6c2", "waiting": "#e5c07b", "error": "#e06c75", "done": "#98c379",
                 "unseen": "#d19a66", "interrupted": "#c678dd"},
    "solarized-light": {"bg": "#fdf6e3", "fg": "#657b83", "muted": "#93a1a1", "accent": "#268bd2",
                        "sel": "#eee8d5", "running": "#2aa198", "waiting": "#b58900", "error": "#dc322f",
                        "done": "#859900", "unseen": "#cb4b16", "interrupted": "#6c71c4"},
}


SPINNER = {"unicode": "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏", "ascii": "|/-\\"}


GLYPHS = {
    "unicode": {"running": None, "retry": "↻", "waiting": "◉", "error": "✗", "interrupted": "⊘",
                "done-unseen": "●", "done": "✓", "idle": "○", "unseen": "●", "bar": "█", "bar_empty": "░",
                "more": "…", "sep": "─", "current": "◂", "cursor": "❯", "neutral": "·", "info": "i",
                "success": "✓", "warn": "!", "tone-error": "✗", "open": "▾", "closed": "▸"},
    "ascii": {"running": None, "retry": "r", "waiting": "?", "error": "x", "interrupted": "!",
              "done-unseen": "*", "done": "v", "idle": "o", "unseen": "*", "bar": "#", "bar_empty": "-",
              "more": "~", "sep": "-", "current": "<", "cursor": ">", "neutral": "-", "info": "i",
              "success": "v", "warn": "!", "tone-error": "x", "open": "v", "closed": ">"},
}


def ui_from_tmux_options(options):
    """The sidebar preferences the @opensessions-* options set (only those given). Pure."""
    ui = {}
    if options.get("@opensessions-width", "").isdigit():
        ui["width"] = int(options["@opensessions-width"])
    if options.get("@opensessions-position") in ("left", "right"):
        ui["position"] = options["@opensessions-position"]
    if options.get("@opensessions-theme") in THEMES:
        ui["theme"] = options["@opensessions-theme"]
    for option, key, allowed in (("@opensessions-notify", "notify", NOTIFY_CHANNELS),
                                 ("@opensessions-notify-on", "notifyOn", NOTIFY_STATUSES)):
        words = [w for w in re.split(r"[ ,]+", options.get(option) or "") if w]
        if words:
            ui[key] = [w for w in words if w in allowed] if words != ["none"] else []
    try:  # what validate_ui refuses (a width of 5) is left at its current value
        return validate_ui(ui) if ui else {}
    except ApiError:
        return {k: v for k, v in ui.items() if k != "width"}


def tmux_ui_change(from_tmux, last_applied, ui):
    """Which of the preferences the @opensessions-* options set (`from_tmux`, as
    ui_from_tmux_options gives them) to apply at a server start or a re-source of ~/.tmux.conf.
    An option is applied only when its value differs from the one last applied from tmux: a theme
    picked with `t` or a width set through POST /ui holds until the option itself is changed. Pure.
    -> (change for ui, what to remember as last applied)"""
    last = last_applied if isinstance(last_applied, dict) else {}
    change = {k: v for k, v in from_tmux.items() if last.get(k) != v and ui.get(k) != v}
    return change, dict(from_tmux)


##############################################################################
# Agent parsers (pure): bytes in, records out
##############################################################################

# Formats are those of the releases captured in tests/fixtures (Claude Code 2.1.330,
# Codex CLI 0.169.0, OpenCode 1.18.33). Amp was not captured: see the Amp parser's note.

_UUID_RE = LazyPattern(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OPENCODE_ID_RE = LazyPattern(r"^ses_[0-9A-Za-z]{20,40}$")
_AMP_ID_RE = LazyPattern(r"^T-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
INTERRUPT_MARK = "[Request interrupted by user"
TITLE_MAX = 120


class LineBuffer(object):
    """Splits appended bytes into complete lines, holding a partial last line until it completes.

    A line longer than max_line bytes is never held whole: once it passes the cap its bytes are
    dropped as they come, up to its end, and it is counted in `skipped` (never returned)."""

    def __init__(self, max_line=16 * 1024 * 1024):
        self.max_line = max_line
        self.parts = []  # pieces of the partial last line (joined once, when it completes)
        self.size = 0
        self.skipping = False
        self.skipped = 0

    @property
    def partial(self):
        return b"".join(self.parts)

    def feed(self, data):
        if not data:
            return []
        lines = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            piece = data[start:nl]
            if self.skipping:
                self.skipping = False  # the end of a line already counted
            elif self.size + len(piece) > self.max_line:
                self.skipped += 1
            elif self.parts:
                self.parts.append(piece)
                lines.append(b"".join(self.parts))
            else:
                lines.append(piece)
            self.parts, self.size = [], 0
            start = nl + 1
        if start < len(data) and not self.skipping:
            rest = data[start:] if start else data
            if self.size + len(rest) > self.max_line:
                self.skipping = True
                self.skipped += 1
                self.parts, self.size = [], 0
            else:
                self.parts.append(rest)
                self.size += len(rest)
        return lines


def clean_parsed_strings(value):
    """A JSON value read from an agent's file made safe to keep (the API's clean_json: lone
    surrogates become U+FFFD, non-finite numbers None), deep enough for any record."""
    return clean_json(value, 100)


def parse_json_lines(lines):
    """-> (records, bad): JSON objects from lines; blank lines ignored, corrupt ones counted."""
    records, bad = [], 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            bad += 1
            continue
        if isinstance(rec, dict):
            if (b"\\u" if isinstance(line, bytes) else "\\u") in line:
                rec = clean_parsed_strings(rec)
            records.append(rec)
        else:
            bad += 1
    return records, bad


_ISO_RE = LazyPattern(r"(?a)(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?")
_ISO_DAYS = {}  # 'YYYY-MM-DD' -> epoch seconds of that day (records of one conversation share few days)


def parse_iso_ms(value):
    """ISO 8601 ('2026-11-22T01:46:19.452Z') -> epoch ms, or None. Every record of every agent goes
    through here: one regex, and each day's calendar arithmetic done once."""
    if not isinstance(value, str) or len(value) < 19:
        return None
    m = _ISO_RE.match(value)
    if m is None:
        return None
    _, _, _, h, mi, sec, frac = m.groups()
    h, mi, sec = int(h), int(mi), int(sec)
    if h > 23 or mi > 59 or sec > 61:
        return None
    day = _ISO_DAYS.get(value[:10])
    if day is None:
        import calendar
        y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (1 <= mo <= 12 and 1 <= d <= 31):
            return None
        try:
            day = calendar.timegm((y, mo, d, 0, 0, 0))
        except (ValueError, OverflowError):
            return None
        if len(_ISO_DAYS) >= 4096:
            _ISO_DAYS.clear()
        _ISO_DAYS[value[:10]] = day
    return (day + h * 3600 + mi * 60 + sec) * 1000 + (int((frac + "00")[:3]) if frac else 0)


def _epoch_ms(value):
    """A time in ms from a file: an integer between 1970 and year 5138, else 0 (1e999, -1, "x")."""
    return as_number(value, 0, int, low=1, high=10 ** 14 - 1, text=True)


def _text_or(value, default):
    """A parser's text field as a str: numbers and other JSON values are shown, nothing is 'default'.
    (Parser strings; the API's input cleaning is a separate helper.)"""
    if value is None or value == "" or isinstance(value, (dict, list)) and not value:
        return default
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        return default


def _clip_title(text):
    text = " ".join(str(text).split())
    return text if len(text) <= TITLE_MAX else text[:TITLE_MAX - 1] + "…"


def _is_prompt_text(text):
    """A real prompt, not a slash-command echo, system reminder or tool/interrupt marker."""
    t = text.lstrip()
    return bool(t) and not t.startswith("<") and not t.startswith(INTERRUPT_MARK)


def new_thread_state(agent, thread_id):
    """The reducers' state for one thread (plain dict, JSON-friendly)."""
    return {"agent": agent, "id": thread_id, "status": "idle", "detail": None, "attempt": None,
            "customTitle": None, "firstPrompt": None, "lastPrompt": None, "model": None, "cwd": None,
            "updatedAt": 0, "turns": 0, "bad": 0, "subagent": False, "usage": None}


def thread_title(state, registry_name=None):
    """Title: a user-given name wins, then the first real prompt, then the last prompt."""
    for value in (state.get("customTitle"), registry_name, state.get("firstPrompt"), state.get("lastPrompt")):
        if value:
            return _clip_title(value)
    return ""


def _content_texts(content):
    if isinstance(content, str):
        return [content]
    out = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                out.append(block["text"])
    return out


def claude_reduce(state, rec):
    """Apply one Claude Code transcript record to a thread state (in place; returns it)."""
    kind = rec.get("type")
    ts = parse_iso_ms(rec.get("timestamp"))
    if ts:
        state["updatedAt"] = max(state["updatedAt"], ts)
    if isinstance(rec.get("cwd"), str):
        state["cwd"] = rec["cwd"]
    if kind == "assistant":
        claude_add_usage(state, rec)  # a subagent's calls cost too
    elif kind == "cost-state":
        claude_cost_state(state, rec)
    if rec.get("isSidechain"):
        return state  # a subagent's records: not the thread's own turn
    if kind == "custom-title" and isinstance(rec.get("customTitle"), str):
        state["customTitle"] = rec["customTitle"]
    elif kind == "last-prompt" and isinstance(rec.get("lastPrompt"), str):
        state["lastPrompt"] = rec["lastPrompt"]
    elif kind == "user":
        if rec.get("isMeta"):
            return state
        message = rec.get("message") if isinstance(rec.get("message"), dict) else {}
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        texts = _content_texts(content)
        state["toolPending"] = False
        if rec.get("toolDenialKind") == "user-rejected" or rec.get("toolUseResult") == "User rejected tool use":
            state.update(status="interrupted", detail=None)  # a permission denied: the turn stops here
        elif any(isinstance(b, dict) and b.get("type") == "tool_result" for b in blocks):
            state.update(status="running", detail=None)
        elif any(t.startswith(INTERRUPT_MARK) for t in texts):
            state.update(status="interrupted", detail=None)
        else:
            prompts = [t for t in texts if _is_prompt_text(t)]
            if prompts:
                if not state["firstPrompt"]:
                    state["firstPrompt"] = prompts[0]
                state["turns"] += 1
                state.update(status="running", detail=None, attempt=None)
    elif kind == "assistant":
        message = rec.get("message") if isinstance(rec.get("message"), dict) else {}
        model = message.get("model")
        if isinstance(model, str) and model and not model.startswith("<"):
            state["model"] = model
        blocks = message.get("content") if isinstance(message.get("content"), list) else []
        # a tool call not answered yet (its permission may be asked, and denied: see claude_live_status)
        state["toolPending"] = any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks)
        if rec.get("isApiErrorMessage"):
            texts = _content_texts(message.get("content"))
            detail = texts[0] if texts else rec.get("error")
            state.update(status="error", detail=_text_or(detail, "API error")[:MAX_LOG_MESSAGE])
        elif rec.get("isAbortedMidStream"):
            state.update(status="interrupted", detail=None)
        elif message.get("stop_reason") == "end_turn":
            state.update(status="done", detail=None)
        else:
            state.update(status="running", detail=None)
    elif kind == "system" and rec.get("subtype") == "turn_duration":
        if state["status"] == "running":
            state.update(status="done", detail=None)
    return state


def claude_project_dir_name(cwd):
    """Claude's encoding of a cwd as a projects/ directory name: non-alphanumerics become '-'."""
    return re.sub(r"[^A-Za-z0-9]", "-", cwd)


def claude_registry_entry(data):
    """Parse ~/.claude/sessions/<pid>.json (the live registry) -> dict or None."""
    if not isinstance(data, dict):
        return None
    pid, sid = data.get("pid"), data.get("sessionId")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2 ** 31 or not isinstance(sid, str):
        return None
    status = data.get("status")
    return {
        "pid": pid, "sessionId": sid, "cwd": data.get("cwd") if isinstance(data.get("cwd"), str) else None,
        "status": status if status in ("busy", "idle", "waiting") else None,
        "waitingFor": data.get("waitingFor") if isinstance(data.get("waitingFor"), str) else None,
        "name": data.get("name") if data.get("nameSource") == "user" and isinstance(data.get("name"), str) else None,
        "procStart": as_number(data.get("procStart"), None, int, text=True),
        "updatedAt": _epoch_ms(data.get("statusUpdatedAt") or data.get("updatedAt")),
        "tmux": data.get("tmux") if isinstance(data.get("tmux"), str) else None,
        "entrypoint": data.get("entrypoint"),
    }


def claude_registry_matches(entry, alive, start):
    """Is the registry entry's process still the one that wrote it? `alive`: its pid runs; `start`:
    that pid's start time now (None where it cannot be known: no /proc). Pure."""
    if not alive:
        return False
    if entry.get("procStart") and start is not None:
        return start == entry["procStart"]
    return True


def claude_live_status(transcript_status, registry_status, waiting_for=None, turns=1, tool_pending=False):
    """Combine the registry (the live truth while the process runs) with the transcript.

    -> (status, detail). busy -> running; waiting -> waiting (with what for); idle -> the
    transcript's finished state (done / error / interrupted), or idle before any turn. Idle while
    the transcript still ends in a tool call nobody answered is a denied permission (Claude Code
    2.1.330 writes the registry ~0.2 s before the rejection reaches the transcript): interrupted
    at once, not done first (which could notify "finished").
    """
    if registry_status == "busy":
        return "running", None
    if registry_status == "waiting":
        return "waiting", waiting_for or "input"
    if registry_status == "idle":
        if transcript_status in ("done", "error", "interrupted"):
            return transcript_status, None
        if transcript_status == "running" and tool_pending:
            return "interrupted", None
        return ("done" if turns else "idle"), None
    return transcript_status, None


def codex_reduce(state, rec):
    """Apply one Codex rollout record ({timestamp, type, payload}) to a thread state."""
    kind = rec.get("type")
    payload = rec.get("payload") if isinstance(rec.get("payload"), dict) else {}
    ts = parse_iso_ms(rec.get("timestamp"))
    if ts:
        state["updatedAt"] = max(state["updatedAt"], ts)
    if kind == "session_meta":
        if isinstance(payload.get("id"), str) and _UUID_RE.match(payload["id"]):
            state["id"] = payload["id"]
        if isinstance(payload.get("cwd"), str):
            state["cwd"] = payload["cwd"]
        state["originator"] = payload.get("originator")
    elif kind == "turn_context":
        if isinstance(payload.get("model"), str):
            state["model"] = payload["model"]
        if isinstance(payload.get("cwd"), str):
            state["cwd"] = payload["cwd"]
    elif kind == "event_msg":
        sub = payload.get("type")
        if sub == "task_started":
            state["turns"] += 1
            state.update(status="running", detail=None, attempt=None)
        elif sub == "task_complete":
            err = payload.get("error")
            if err:
                msg = err.get("message") if isinstance(err, dict) else err
                state.update(status="error", detail=_text_or(msg, "error")[:MAX_LOG_MESSAGE])
            else:
                state.update(status="done", detail=None)
        elif sub == "turn_aborted":
            state.update(status="interrupted", detail=None)
        elif sub == "token_count":
            state["usage"] = codex_usage(payload.get("info"), state.get("usage"))
    elif kind == "response_item" and payload.get("type") == "message" and payload.get("role") == "user":
        for text in _content_texts(payload.get("content")):
            if _is_prompt_text(text):
                if not state["firstPrompt"]:
                    state["firstPrompt"] = text
                state["lastPrompt"] = text
                break
    return state


CODEX_TURN_STATUS = {"inProgress": "running", "completed": "done", "interrupted": "interrupted", "failed": "error"}


def codex_turn_status(status, error_json=None):
    """thread_history_1.sqlite's thread_turns.status (+ error_json) -> (status, detail)."""
    mapped = CODEX_TURN_STATUS.get(status)
    detail = None
    if mapped == "error" and error_json:
        try:
            detail = _text_or(json.loads(error_json).get("message"), "")[:MAX_LOG_MESSAGE] or None
        except (ValueError, AttributeError, TypeError):
            detail = None
    return mapped, detail


def codex_moved_on(rec):
    """A rollout record that shows the turn moved on (so an approval wait, known only from the
    PermissionRequest hook, is over): tool output, an answer, or a turn event."""
    payload = rec.get("payload") if isinstance(rec.get("payload"), dict) else {}
    kind = payload.get("type")
    if rec.get("type") == "event_msg":
        return kind in ("task_started", "task_complete", "turn_aborted", "agent_message")
    return rec.get("type") == "response_item" and (
        kind == "function_call_output" or (kind == "message" and payload.get("role") == "assistant"))


def codex_id_from_path(path):
    """rollout-2026-11-22T01-46-31-<uuid>.jsonl -> uuid (or None)."""
    name = os.path.basename(path)
    if not (name.startswith("rollout-") and name.endswith(".jsonl")):
        return None
    candidate = name[:-6][-36:]
    return candidate if _UUID_RE.match(candidate) else None


def parse_codex_session_index(records):
    """session_index.jsonl records -> {thread id: name} (the last entry wins)."""
    names = {}
    for rec in records:
        if isinstance(rec.get("id"), str) and isinstance(rec.get("thread_name"), str):
            names[rec["id"]] = rec["thread_name"]
    return names


OPENCODE_REJECTED = "rejected permission"  # "The user rejected permission to use this specific tool call."


def opencode_tool_rejected(parts):
    """The newest message's parts (their `data` JSON, newest first): its last tool or text part is a
    tool call the user rejected (OpenCode 1.18.33: state.status "error", the error naming the
    rejection) and nothing came after it but the step's end. Pure."""
    for part in parts:
        if not isinstance(part, dict) or part.get("type") in ("step-start", "step-finish"):
            continue
        state = part.get("state") if isinstance(part.get("state"), dict) else {}
        return (part.get("type") == "tool" and state.get("status") == "error"
                and OPENCODE_REJECTED in str(state.get("error") or ""))
    return False


def opencode_status(message_data, running_tool=False, rejected=False):
    """Status of an OpenCode session from its newest message's `data` JSON (and parts).

    The DB cannot show a permission wait or a retry (both look like running): the plugin tells those.
    A denied permission ends the turn: the rejected tool call is the message's last (`rejected`,
    see opencode_tool_rejected) while the message says finish "tool-calls" as mid-turn: interrupted.
    """
    if not isinstance(message_data, dict):
        return "idle", None
    if message_data.get("role") == "user":
        return "running", None
    if rejected and not running_tool and not isinstance(message_data.get("error"), dict):
        return "interrupted", None
    err = message_data.get("error")
    if isinstance(err, dict):
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        if err.get("name") == "MessageAbortedError":
            return "interrupted", None
        return "error", str(data.get("message") or err.get("name") or "error")[:MAX_LOG_MESSAGE]
    times = message_data.get("time") if isinstance(message_data.get("time"), dict) else {}
    if running_tool or not times.get("completed"):
        return "running", None
    finish = message_data.get("finish")
    if finish == "stop":
        return "done", None
    if finish in ("tool-calls", "tool_calls", "length"):
        return "running", None
    return "interrupted", None  # completed with neither finish nor error: aborted during a retry


def opencode_plugin_status(event_type, props):
    """Map an OpenCode plugin event to (status, detail, attempt), or None to ignore it.

    'idle' means the turn ended; the server turns it into done unless an error came first.
    """
    if event_type == "session.status":
        st = props.get("status") if isinstance(props.get("status"), dict) else {}
        kind = st.get("type")
        if kind == "busy":
            return "running", None, None
        if kind == "retry":
            return "retry", st.get("message"), as_number(st.get("attempt"), None, int, text=True)
        if kind == "idle":
            return "idle", None, None
        return None
    if event_type == "session.idle":
        return "idle", None, None
    if event_type == "session.error":
        err = props.get("error") if isinstance(props.get("error"), dict) else {}
        if err.get("name") == "MessageAbortedError":
            return "interrupted", None, None
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        return "error", str(data.get("message") or err.get("name") or "error")[:MAX_LOG_MESSAGE], None
    if event_type == "permission.asked":
        what = props.get("permission") or "permission"
        patterns = props.get("patterns")
        if isinstance(patterns, list) and patterns:
            what = "%s: %s" % (what, patterns[0])
        return "waiting", str(what)[:MAX_LOG_MESSAGE], None
    if event_type == "permission.replied":
        if props.get("reply") == "reject":  # a denial ends the turn (OpenCode 1.18.33 goes no further)
            return "interrupted", None, None
        return "running", None, None
    return None


def opencode_plugin_thread(event_type, props):
    """Map an OpenCode plugin event to the thread fields it changes besides a status (a session's
    title; a parent session makes it a subagent), or None for other events."""
    if event_type != "session.updated":
        return None
    fields = {}
    if isinstance(props.get("title"), str):
        fields["title"] = _clip_title(props["title"])
    if props.get("parentID"):
        fields["subagent"] = True
    return fields


def settle_idle(old_status):
    """A hook or plugin says the agent is idle: a turn that was under way is done; a turn that
    ended in error or interrupt keeps that; nothing before stays idle."""
    if old_status in ("running", "retry", "waiting"):
        return "done"
    if old_status in ("error", "interrupted", "done"):
        return old_status
    return "idle"


# -- usage: tokens and cost per thread ------------------------------------------------------------
# A thread's raw usage (what the reducers keep): {"input", "output", "cacheRead", "cacheWrite"}
# token counts, "cost" when the agent itself records one (OpenCode), "contextTokens" (what the
# newest model call sent: input + cache) and "contextWindow" when the agent reports it (Codex),
# "partial" when only part of the history was read (a cold start reads a Claude transcript's tail).
# `input` is the uncached input in every agent (Codex's input_tokens include the cached ones: we
# subtract them, as Codex's own non_cached_input() does). usage_json() prices it for /state.

USAGE_KEYS = ("input", "output", "cacheRead", "cacheWrite")


def token_count(value):
    """A token count from an agent's record: a non-negative int (at most 10**15), else 0."""
    return min(as_number(value, 0, int, low=0), 10 ** 15)


def new_usage():
    return {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "cost": None,
            "contextTokens": None, "contextWindow": None, "partial": False}


def claude_add_usage(state, rec):
    """Add one assistant record's message.usage to the thread's raw usage. Claude writes one API
    message over several records (one per content block) under the same message.id, the first ones
    with a provisional output count: per message id we keep the largest figures seen, not the sum."""
    message = rec.get("message") if isinstance(rec.get("message"), dict) else {}
    u = message.get("usage")
    model = message.get("model")
    if not isinstance(u, dict) or (isinstance(model, str) and model.startswith("<")):
        return  # <synthetic> error messages cost nothing
    row = [token_count(u.get("input_tokens")), token_count(u.get("output_tokens")),
           token_count(u.get("cache_read_input_tokens")), token_count(u.get("cache_creation_input_tokens"))]
    usage = state.get("usage") or new_usage()
    seen = state.setdefault("usageSeen", {})
    mid = message.get("id") if isinstance(message.get("id"), str) else rec.get("uuid")
    old = seen.pop(mid, None) if isinstance(mid, str) else None
    if old is not None:
        row = [max(a, b) for a, b in zip(row, old)]
        for key, v in zip(USAGE_KEYS, old):
            usage[key] -= v
    for key, v in zip(USAGE_KEYS, row):
        usage[key] += v
    if isinstance(mid, str):
        seen[mid] = row
        while len(seen) > 32:  # records of one message are adjacent: a few suffice
            seen.pop(next(iter(seen)))
    if not rec.get("isSidechain"):
        usage["contextTokens"] = row[0] + row[2] + row[3]
    state["usage"] = usage
    if state.get("costState"):
        state["costState"]["fresh"] = False  # a call after Claude's own total: that total is behind


def claude_cost_state(state, rec):
    """Claude Code's own running total (`cost-state`: totalCostUSD and modelUsage per model, written
    by the process that started at startTime, e.g. when it exits)."""
    models = rec.get("modelUsage") if isinstance(rec.get("modelUsage"), dict) else {}
    tokens = [0, 0, 0, 0]
    for mu in models.values():
        if isinstance(mu, dict):
            for i, key in enumerate(("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheCreationInputTokens")):
                tokens[i] += token_count(mu.get(key))
    cost = rec.get("totalCostUSD")
    old = state.get("costState")
    state["costState"] = {"start": rec.get("startTime"), "tokens": tokens,
                          "cost": None if as_number(cost) is None else float(cost),
                          "fresh": True, "mixed": bool(old) and (old["mixed"] or old["start"] != rec.get("startTime"))}


def claude_usage(state):
    """The raw usage of a Claude thread: the sum of its messages' usage, or Claude's own total where
    that is sure to cover the whole thread: the newest word (no call after it), from one process
    (every cost-state has the same startTime: not resumed), the whole file read, and counting at
    least what the messages show (it also counts what an interrupted reply had streamed, which the
    transcript keeps only as a provisional count)."""
    usage = state.get("usage")
    cs = state.get("costState")
    if usage is None:
        return None
    usage = dict(usage, partial=bool(state.get("usagePartial")))
    if cs and cs["fresh"] and not cs["mixed"] and not usage["partial"] and cs["cost"] is not None and \
            all(c >= usage[k] for c, k in zip(cs["tokens"], USAGE_KEYS)):
        usage.update(zip(USAGE_KEYS, cs["tokens"]))
        usage["cost"] = cs["cost"]
    return usage


def codex_usage(info, old=None):
    """A Codex token_count event's `info` -> raw usage. total_token_usage is the thread's running
    total, so the newest event alone is exact (a cold start reading only the tail loses nothing)."""
    if not isinstance(info, dict):
        return old
    total = info.get("total_token_usage") if isinstance(info.get("total_token_usage"), dict) else {}
    last = info.get("last_token_usage") if isinstance(info.get("last_token_usage"), dict) else {}
    usage = new_usage()
    cached = token_count(total.get("cached_input_tokens"))
    usage.update(input=max(0, token_count(total.get("input_tokens")) - cached), output=token_count(total.get("output_tokens")),
                 cacheRead=cached, cacheWrite=token_count(total.get("cache_write_input_tokens")))
    if last:
        usage["contextTokens"] = token_count(last.get("total_tokens")) or (
            token_count(last.get("input_tokens")) + token_count(last.get("output_tokens")))
    window = token_count(info.get("model_context_window"))
    usage["contextWindow"] = window or None
    return usage


def opencode_usage(session_row, message_data=None):
    """OpenCode keeps running totals on its session row (cost, tokens_*: the agent's own figures);
    the newest assistant message's tokens give the context in use. Columns an older OpenCode lacks
    -> None."""
    keys = set(session_row.keys()) if hasattr(session_row, "keys") else set()
    if "tokens_input" not in keys:
        return None
    usage = new_usage()
    usage.update(input=token_count(session_row["tokens_input"]), output=token_count(session_row["tokens_output"]),
                 cacheRead=token_count(session_row["tokens_cache_read"]) if "tokens_cache_read" in keys else 0,
                 cacheWrite=token_count(session_row["tokens_cache_write"]) if "tokens_cache_write" in keys else 0)
    cost = session_row["cost"] if "cost" in keys else None
    usage["cost"] = None if as_number(cost) is None else float(cost)
    if isinstance(message_data, dict) and message_data.get("role") == "assistant":
        tokens = message_data.get("tokens") if isinstance(message_data.get("tokens"), dict) else {}
        cache = tokens.get("cache") if isinstance(tokens.get("cache"), dict) else {}
        used = token_count(tokens.get("input")) + token_count(cache.get("read")) + token_count(cache.get("write"))
        usage["contextTokens"] = used or None
    return usage


_OC_USAGE_COLUMNS = ("cost", "tokens_input", "tokens_output", "tokens_cache_read", "tokens_cache_write")


def opencode_usage_columns(conn):
    """', cost, tokens_input, …' for the session columns this OpenCode has (older ones have none)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(session)")}
    return "".join(", " + c for c in _OC_USAGE_COLUMNS if c in have)


def amp_usage(messages):
    """Amp (UNVERIFIED, no capture): the documented per-message usage {model, inputTokens,
    outputTokens, cacheReadInputTokens, cacheCreationInputTokens, maxInputTokens} summed."""
    usage = None
    for msg in messages:
        u = msg.get("usage") if isinstance(msg, dict) and isinstance(msg.get("usage"), dict) else None
        if not u or not any(k in u for k in ("inputTokens", "outputTokens")):
            continue
        usage = usage or new_usage()
        usage["input"] += token_count(u.get("inputTokens"))
        usage["output"] += token_count(u.get("outputTokens"))
        usage["cacheRead"] += token_count(u.get("cacheReadInputTokens"))
        usage["cacheWrite"] += token_count(u.get("cacheCreationInputTokens"))
        usage["contextTokens"] = token_count(u.get("inputTokens")) + token_count(u.get("cacheReadInputTokens")) + \
            token_count(u.get("cacheCreationInputTokens"))
        usage["contextWindow"] = token_count(u.get("maxInputTokens")) or None
    return usage


# Amp: NOT CAPTURED. Amp keeps threads on its servers and could not be run offline, so no thread
# file was seen here. This parser follows the publicly documented shape of
# ~/.local/share/amp/threads/T-<uuid>.json ({id, title, created, env.initial.trees[].uri,
# messages[{role, content, state{type: complete|cancelled|running|error, stopReason}, usage{model}}]})
# and is unverified against a real file.
def amp_thread_state(data, mtime_ms=0):
    """Parse one Amp thread JSON document -> thread state, or None when it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not _AMP_ID_RE.match(data["id"]):
        return None
    state = new_thread_state("amp", data["id"])
    state["updatedAt"] = max(_epoch_ms(data.get("created")), mtime_ms)
    if isinstance(data.get("title"), str) and data["title"]:
        state["customTitle"] = data["title"]
    env = data.get("env") if isinstance(data.get("env"), dict) else {}
    initial = env.get("initial") if isinstance(env.get("initial"), dict) else {}
    trees = initial.get("trees") if isinstance(initial.get("trees"), list) else []
    for tree in trees:
        uri = tree.get("uri") if isinstance(tree, dict) else None
        if isinstance(uri, str) and uri.startswith("file://"):
            from urllib.parse import unquote
            state["cwd"] = unquote(uri[7:])
            break
    messages = data.get("messages") if isinstance(data.get("messages"), list) else []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        st = msg.get("state") if isinstance(msg.get("state"), dict) else {}
        usage = msg.get("usage") if isinstance(msg.get("usage"), dict) else {}
        if isinstance(usage.get("model"), str):
            state["model"] = usage["model"]
        if role == "user":
            texts = [t for t in _content_texts(msg.get("content")) if _is_prompt_text(t)]
            if texts and not state["firstPrompt"]:
                state["firstPrompt"] = texts[0]
            if texts:
                state["turns"] += 1
                state.update(status="running", detail=None)
        elif role == "assistant":
            kind = st.get("type")
            if kind == "cancelled":
                state.update(status="interrupted", detail=None)
            elif kind == "error":
                state.update(status="error", detail=str(st.get("message") or "error")[:MAX_LOG_MESSAGE])
            elif kind == "complete" and st.get("stopReason") == "end_turn":
                state.update(status="done", detail=None)
            else:
                state.update(status="running", detail=None)
    state["usage"] = amp_usage(messages)
    return state


# Gemini CLI, Qwen Code and Pi: captured from Gemini CLI 0.61.0, Qwen Code 0.24.4 and Pi 0.73.1
# against a fake model (tests/fixtures/<agent>/, with the capture script and format notes).
def _thread_usage(state):
    """The reducer state's raw usage (new_usage() shape), made on first use."""
    if not isinstance(state.get("usage"), dict):
        state["usage"] = new_usage()
    return state["usage"]


def _usage_add(usage, sign, tokens, cost=None):
    for k in USAGE_KEYS:
        usage[k] += sign * tokens.get(k, 0)
    if cost is not None:
        usage["cost"] = round((usage["cost"] or 0.0) + sign * cost, 9)


def usage_count(value, state=None):
    """A count or a cost from an agent's record: as_number within +-1e15, else 0 (a string, NaN,
    or 10^400, which would raise OverflowError once added to a float cost and hide the whole
    thread). Such a field is skipped and, given the reducer's state, counted in state["bad"]
    (/health skippedRecords)."""
    number = as_number(value, None, low=-1e15, high=1e15)
    if number is None:
        if state is not None and value is not None:
            state["bad"] = state.get("bad", 0) + 1
        return 0
    return number


def geminitoken_count(tokens, state=None):
    """Gemini CLI's per-message `tokens` ({input, output, cached, thoughts, tool, total}; input
    counts the cached part) -> our keys (input without the cached part; thoughts are output). An
    odd count is skipped (and counted in state["bad"])."""
    if not isinstance(tokens, dict):
        return None
    cached = usage_count(tokens.get("cached"), state)
    return {"input": max(0, usage_count(tokens.get("input"), state) - cached),
            "output": usage_count(tokens.get("output"), state) + usage_count(tokens.get("thoughts"), state),
            "cacheRead": cached, "cacheWrite": 0}


def _gemini_prompt(parts):
    """The user's prompt in a Gemini `user` message, or None (tool results, the session context)."""
    if isinstance(parts, str):
        parts = [{"text": parts}]
    if not isinstance(parts, list):
        return None
    texts = []
    for p in parts:
        if not isinstance(p, dict):
            continue
        if "functionResponse" in p:
            return None
        if isinstance(p.get("text"), str):
            texts.append(p["text"])
    text = "\n".join(texts)
    if not text.strip() or text.lstrip().startswith("<session_context>"):
        return None
    return text


GEMINI_REPLAY_MS = 500  # the history Gemini writes again right after a cancel comes within this


def _gemini_message(state, msg, counted=True):
    kind = msg.get("type")
    ts = parse_iso_ms(msg.get("timestamp"))
    if ts:
        state["updatedAt"] = max(state["updatedAt"], ts)
    cancelled = state.get("cancelledAt")
    if cancelled and ts and 0 <= ts - cancelled < GEMINI_REPLAY_MS and kind != "info":
        # after "Request cancelled." Gemini CLI 0.61.0 writes its history again (its context, the
        # earlier prompts, tool calls and answers) stamped within a few ms: no new turn (its last
        # answer would read as done). A prompt typed after it is one (its hooks say so at once too).
        return
    if kind == "user":
        prompt = _gemini_prompt(msg.get("content"))
        if prompt is None:
            state.update(status="running", detail=None)  # a tool result goes back to the model
            return
        if not state["firstPrompt"]:
            state["firstPrompt"] = prompt
        state["lastPrompt"] = prompt
        state["turns"] += 1
        state.update(status="running", detail=None, attempt=None)
    elif kind == "gemini":
        if isinstance(msg.get("model"), str) and msg["model"]:
            state["model"] = msg["model"]
        tokens = geminitoken_count(msg.get("tokens"), state if counted else None)
        if tokens is not None and counted:
            # a message re-written under the same id replaces the earlier one: count it once
            usage = _thread_usage(state)
            mid = msg.get("id")
            if mid is not None and state.get("_usageId") == mid:
                _usage_add(usage, -1, state.get("_usageLast") or {})
            _usage_add(usage, 1, tokens)
            state["_usageId"], state["_usageLast"] = mid, tokens
        calls = msg.get("toolCalls") if isinstance(msg.get("toolCalls"), list) else []
        content = msg.get("content")
        has_text = bool(content.strip()) if isinstance(content, str) else bool(_content_texts(content))
        if calls or not has_text:
            state.update(status="running", detail=None)  # the model goes on after its tools
        else:
            state.update(status="done", detail=None)
    elif kind == "info" and isinstance(msg.get("content"), str) and msg["content"].startswith("Request cancelled"):
        state.update(status="interrupted", detail=None)
        state["cancelledAt"] = ts
    elif kind == "error":
        text = msg.get("content") if isinstance(msg.get("content"), str) else "error"
        state.update(status="error", detail=text[:MAX_LOG_MESSAGE])


def gemini_reduce(state, rec):
    """Apply one line of a Gemini CLI chat file (~/.gemini/tmp/<project>/chats/session-*.jsonl).

    Lines: a header ({sessionId, projectHash, startTime, kind}); messages ({id, timestamp, type:
    user|gemini|info|error|warning, content, tokens, model, toolCalls}), a later line with the same
    id replacing the earlier one; and `{"$set": {...}}` patches (lastUpdated, or the whole
    `messages` list when Gemini rewrites its history, as after a cancelled request).
    Not captured: the end of Gemini's retries of an HTTP 500 (still retrying, with nothing written,
    after 45 s); an `error` line was captured for a 400.
    """
    if "$set" in rec:
        patch = rec["$set"] if isinstance(rec["$set"], dict) else {}
        ts = parse_iso_ms(patch.get("lastUpdated"))
        if ts:
            state["updatedAt"] = max(state["updatedAt"], ts)
        msgs = patch.get("messages")
        if isinstance(msgs, list):
            # a rewrite of the history: titles and turns from it, no usage counted twice
            kept = dict((k, state.get(k)) for k in ("status", "detail", "attempt", "turns", "lastPrompt", "cancelledAt"))
            turns = 0
            for m in msgs:
                if isinstance(m, dict):
                    if m.get("type") == "user" and _gemini_prompt(m.get("content")) is not None:
                        turns += 1
                    _gemini_message(state, m, counted=False)
            state.update(kept)
            state["turns"] = max(turns, kept["turns"])
            state["lastPrompt"] = kept["lastPrompt"] or state["lastPrompt"]
        return state
    if isinstance(rec.get("sessionId"), str) and "type" not in rec:
        state["id"] = rec["sessionId"]
        ts = parse_iso_ms(rec.get("lastUpdated") or rec.get("startTime"))
        if ts:
            state["updatedAt"] = max(state["updatedAt"], ts)
        if rec.get("kind") not in (None, "main"):
            state["subagent"] = True  # a subagent's chat
        return state
    if isinstance(rec.get("type"), str):
        _gemini_message(state, rec)
    return state


def gemini_id_from_path(path):
    """session-2026-11-27T22-08-4fc6198e.jsonl -> the short id prefix '4fc6198e' (or None)."""
    m = re.match(r"^session-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-([0-9a-f]{8})\.jsonl$", os.path.basename(path))
    return m.group(1) if m else None


def gemini_moved_on(records):
    """Gemini chat records that show the conversation went on: any but a "$set" (a header update)."""
    return any("$set" not in r for r in records)


def pi_reduce(state, rec):
    """Apply one line of a Pi session (~/.pi/agent/sessions/--<cwd>--/<time>_<uuid>.jsonl): a
    `session` header, then tree entries (message, model_change, session_info, compaction …).
    Pi records usage and cost per assistant message; `stopReason` ends a turn (stop, toolUse,
    aborted, error, length)."""
    kind = rec.get("type")
    ts = parse_iso_ms(rec.get("timestamp"))
    if ts:
        state["updatedAt"] = max(state["updatedAt"], ts)
    if kind == "session":
        if isinstance(rec.get("id"), str):
            state["id"] = rec["id"]
        if isinstance(rec.get("cwd"), str):
            state["cwd"] = rec["cwd"]
    elif kind == "model_change" and isinstance(rec.get("modelId"), str):
        state["model"] = rec["modelId"]
    elif kind == "session_info" and isinstance(rec.get("name"), str):
        state["customTitle"] = rec["name"] or None
    elif kind == "message":
        msg = rec.get("message") if isinstance(rec.get("message"), dict) else {}
        role = msg.get("role")
        if role == "user":
            texts = [t for t in _content_texts(msg.get("content")) if t.strip()]
            if texts:
                if not state["firstPrompt"]:
                    state["firstPrompt"] = texts[0]
                state["lastPrompt"] = texts[0]
                state["turns"] += 1
            state.update(status="running", detail=None, attempt=None)
        elif role in ("toolResult", "bashExecution"):
            if state["status"] == "running" or role == "toolResult":
                state.update(status="running", detail=None)
        elif role == "assistant":
            if isinstance(msg.get("model"), str) and msg["model"]:
                state["model"] = msg["model"]
            usage = msg.get("usage") if isinstance(msg.get("usage"), dict) else None
            if usage is not None:
                cost = usage.get("cost") if isinstance(usage.get("cost"), dict) else {}
                _usage_add(_thread_usage(state), 1,
                           {k: usage_count(usage.get(k), state) for k in USAGE_KEYS},
                           usage_count(cost.get("total"), state) if "total" in cost else None)
            stop = msg.get("stopReason")
            if stop == "toolUse":
                state.update(status="running", detail=None)
            elif stop == "aborted":
                state.update(status="interrupted", detail=None)
            elif stop == "error":
                state.update(status="error", detail=str(msg.get("errorMessage") or "error")[:MAX_LOG_MESSAGE])
            else:
                state.update(status="done", detail=None)
    return state


def pi_id_from_path(path):
    """<time>_<uuid>.jsonl -> uuid (Pi's session ids are UUIDs, v7 in 0.73), or None."""
    name = os.path.basename(path)
    if not name.endswith(".jsonl") or "_" not in name:
        return None
    candidate = name[:-6].rsplit("_", 1)[1]
    return candidate if _UUID_RE.match(candidate) else None


def pi_cwd_dir_name(cwd):
    """Pi's sessions/ directory for a cwd: '--' + the path with '/' as '-' + '--'."""
    return "--" + cwd.strip("/").replace("/", "-") + "--"


def qwen_id_from_name(name):
    """<uuid>.jsonl -> uuid, or None."""
    tid = name[:-6] if name.endswith(".jsonl") else ""
    return tid if _UUID_RE.match(tid) else None


def qwen_moved_on(records):
    """Qwen chat records that show the conversation went past a wait: an answer or a tool's result."""
    return any(r.get("type") in ("assistant", "tool_result") for r in records)


def qwen_reduce(state, rec):
    """Apply one record of a Qwen Code chat (~/.qwen/projects/<encoded cwd>/chats/<uuid>.jsonl).

    Records are Claude-like ({uuid, parentUuid, sessionId, timestamp, type, cwd, message}) with
    Gemini-like parts: user (a prompt), assistant (text or functionCall parts, usageMetadata once a
    response is complete), tool_result, system (subtype ui_telemetry: api_response / api_error /
    tool_call). Captured: an interrupted answer is written without usageMetadata; a 500 is retried,
    each attempt an api_error record (the final failure was not reached in 45 s of retrying).
    """
    kind = rec.get("type")
    ts = parse_iso_ms(rec.get("timestamp"))
    if ts:
        state["updatedAt"] = max(state["updatedAt"], ts)
    if isinstance(rec.get("cwd"), str):
        state["cwd"] = rec["cwd"]
    message = rec.get("message") if isinstance(rec.get("message"), dict) else {}
    parts = message.get("parts") if isinstance(message.get("parts"), list) else []
    if kind == "user":
        texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
        texts = [t for t in texts if _is_prompt_text(t)]
        if texts:
            if not state["firstPrompt"]:
                state["firstPrompt"] = texts[0]
            state["lastPrompt"] = texts[0]
            state["turns"] += 1
        state.update(status="running", detail=None, attempt=None)
    elif kind == "tool_result":
        state.update(status="running", detail=None, attempt=None)
    elif kind == "assistant":
        if isinstance(rec.get("model"), str) and rec["model"]:
            state["model"] = rec["model"]
        meta = rec.get("usageMetadata") if isinstance(rec.get("usageMetadata"), dict) else None
        if meta is not None:
            _usage_add(_thread_usage(state), 1, geminitoken_count({
                "input": meta.get("promptTokenCount"), "output": meta.get("candidatesTokenCount"),
                "cached": meta.get("cachedContentTokenCount"), "thoughts": meta.get("thoughtsTokenCount")}, state))
        if any(isinstance(p, dict) and "functionCall" in p for p in parts):
            state.update(status="running", detail=None, attempt=None)
        elif meta is None:
            state.update(status="interrupted", detail=None, attempt=None)  # cut off: no usage came
        else:
            state.update(status="done", detail=None, attempt=None)
    elif kind == "system" and rec.get("subtype") == "ui_telemetry":
        payload = rec.get("systemPayload") if isinstance(rec.get("systemPayload"), dict) else {}
        ui = payload.get("uiEvent") if isinstance(payload.get("uiEvent"), dict) else {}
        if ui.get("event.name") == "qwen-code.api_error" and state["status"] in ("running", "retry"):
            attempt = (state["attempt"] or 0) + 1
            state.update(status="retry", detail=str(ui.get("error_message") or "API error")[:MAX_LOG_MESSAGE],
                         attempt=attempt)
    return state


# -- what the conversation history reads of each agent's records (its spec's HistoryFormat) --------
PREVIEW_TEXT = 2000  # characters kept of each previewed message


def preview_text(text):
    """A previewed message: control characters out, whitespace runs as one space, cut. Pure."""
    text = " ".join(clean_text(text[:PREVIEW_TEXT * 4]).split())
    return text if len(text) <= PREVIEW_TEXT else text[:PREVIEW_TEXT - 1] + "…"


def _message(out, role, texts):
    text = "\n".join(t for t in texts if isinstance(t, str) and t.strip())
    if text.strip():
        out.append((role, preview_text(text)))


def claude_messages(records):
    """Claude Code transcript records -> [(role, text)]: prompts and answers (tool results, meta
    records, subagents' and error records left out). Pure."""
    out = []
    for rec in records:
        kind = rec.get("type")
        if rec.get("isSidechain") or rec.get("isMeta") or kind not in ("user", "assistant"):
            continue
        message = rec.get("message") if isinstance(rec.get("message"), dict) else {}
        texts = _content_texts(message.get("content"))
        if kind == "user":
            _message(out, "user", [t for t in texts if _is_prompt_text(t)])
        elif not rec.get("isApiErrorMessage"):
            _message(out, "assistant", texts)
    return out


def codex_messages(records):
    """Codex rollout records -> [(role, text)]: its user and assistant message items. Pure."""
    out = []
    for rec in records:
        payload = rec.get("payload") if isinstance(rec.get("payload"), dict) else {}
        role = payload.get("role")
        if rec.get("type") == "response_item" and payload.get("type") == "message" and role in ("user", "assistant"):
            texts = _content_texts(payload.get("content"))
            _message(out, role, [t for t in texts if role == "assistant" or _is_prompt_text(t)])
    return out


def gemini_messages(records):
    """Gemini CLI chat lines -> [(role, text)]. Pure."""
    out = []
    for rec in records:
        if rec.get("type") == "user":
            prompt = _gemini_prompt(rec.get("content"))
            if prompt:
                _message(out, "user", [prompt])
        elif rec.get("type") == "gemini":
            content = rec.get("content")
            _message(out, "assistant", [content] if isinstance(content, str) else _content_texts(content))
    return out


def qwen_messages(records):
    """Qwen Code chat records -> [(role, text)] (its thoughts left out). Pure."""
    out = []
    for rec in records:
        message = rec.get("message") if isinstance(rec.get("message"), dict) else {}
        parts = message.get("parts") if isinstance(message.get("parts"), list) else []
        texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")]
        if rec.get("type") == "user":
            _message(out, "user", [t for t in texts if _is_prompt_text(t)])
        elif rec.get("type") == "assistant":
            _message(out, "assistant", texts)
    return out


def pi_messages(records):
    """Pi session entries -> [(role, text)]. Pure."""
    out = []
    for rec in records:
        message = rec.get("message") if isinstance(rec.get("message"), dict) else {}
        if rec.get("type") == "message" and message.get("role") in ("user", "assistant"):
            _message(out, message["role"], _content_texts(message.get("content")))
    return out


def amp_messages(records):
    """Amp thread messages (UNVERIFIED: its documented shape) -> [(role, text)]. Pure."""
    out = []
    for rec in records:
        if rec.get("role") in ("user", "assistant"):
            _message(out, rec["role"], _content_texts(rec.get("content")))
    return out


# Claude Code's records the history never needs, told by their first bytes (the big ones left
# unparsed): attachments (system prompt snapshots, tool listings), API request shapes and file-history
# snapshots. Compact (Claude's own) and spaced (the captures) JSON alike.
CLAUDE_BIG_RECORDS = (b'"attachment":', b'{"type":"api-request', b'{"type": "api-request',
                      b'{"type":"file-history-snapshot"', b'{"type": "file-history-snapshot"')


def claude_branch(rec):
    """The git branch a Claude Code (or Qwen Code) record names (`gitBranch`), or None. Pure."""
    branch = rec.get("gitBranch")
    return branch if isinstance(branch, str) and branch and branch != "HEAD" else None


def codex_branch(rec):
    """The git branch a Codex rollout's session_meta names (`git.branch`), or None. Pure."""
    payload = rec.get("payload") if rec.get("type") == "session_meta" and isinstance(rec.get("payload"), dict) else {}
    git = payload.get("git") if isinstance(payload.get("git"), dict) else {}
    return git["branch"] if isinstance(git.get("branch"), str) and git["branch"] else None


def amp_id_from_name(name):
    """T-<uuid>.json -> the thread id, or None."""
    tid = name[:-5] if name.endswith(".json") else ""
    return tid if _AMP_ID_RE.match(tid) else None


##############################################################################
# Agent screens (pure): each agent's prompt read from its screen, and the keys that answer it
##############################################################################
# The keys each agent's prompt expects were learned from the real agents (the pinned
# versions, fake model on loopback); the screens are in tests/fixtures/<agent>/ (FORMATS.md):
# - Claude Code 2.1.330: a numbered menu under "Do you want to …?" ("Esc to cancel" below it). A digit
#   picks its option at once: "1. Yes", "2. Yes, and …" (what it allows differs by call: "don’t ask
#   again for: npm *", "always allow access to <dir> from this project", "switch to accept edits …
#   for this session"; absent for some tools), "N. No" (the denial: "Interrupted · What should Claude
#   do instead?"). A prompt is typed into the "❯" composer between two ─── rules, Enter submits.
# - Codex 0.169.0: "Would you like to run …?" with "1. Yes, proceed (y)", "2. Yes, and don't ask again
#   … (p)", "3. No, and tell Codex what to do differently (esc)": the letter in parentheses picks the
#   option ("esc" = Escape; the denial: "You canceled the request …"). Codex takes fast input as a
#   paste and an Enter inside it as a newline, so Enter is sent only once the text is on screen.
# - OpenCode 1.18.33: "Permission required" with buttons "Allow once  Allow always  Reject"; Left/Right
#   move the selection (it wraps), Enter confirms, Escape rejects. "Allow always" asks again
#   ("Always allow … Confirm  Cancel", Confirm selected): a second Enter. The selected button is the
#   one drawn on another background, so these are read with `capture-pane -e`.
# - Gemini CLI 0.61.0: a box "? Shell  <command>" … "Allow execution of [Shell]?" (or "? WriteFile …"
#   … "Apply this change?") with "● 1. Allow once", "2. Allow for this session", then "No, suggest
#   changes (esc)" as 3 (shell) or 4 (file, after "3. Modify with external editor"); a digit picks.
#   "Allow for this session" allows, until Gemini exits, shell commands with the same first word
#   (file prompts: every file write). The input is "> " under a ─── rule (placeholder "Type your
#   message or @path/to/file"); while a hook runs ("Executing Hook … (esc to cancel") Enter is dropped.
# - Qwen Code 0.24.4: "Allow execution of: 'echo'?" (or "Apply this change?") with "› 1. Yes, allow
#   once", "2. Always allow run 'echo *' commands in this project", "3. … for this user", "4. No,
#   suggest changes (esc)" (files: "2. Yes, allow always" = auto-accept edits for this run, "3. No");
#   a digit picks. The input is "> " between two ─── rules; after an Esc it may hold the old prompt.
# - Pi 0.73.1: never asks for permission; its input is the lines between two ─── rules.
# Multi-line text is one bracketed paste (`paste-buffer -p`: tmux brackets it for a pane that asked
# for bracketed paste, as all six do), then Enter: no agent submits on a pasted newline. What each
# shows after the paste differs (OpenCode: "[Pasted ~N lines]"; Qwen draws it late; Gemini ignores
# an Enter within ~2 s of a paste).

REPLY_ACTIONS = ("approve", "approve-always", "deny", "text")
CLAUDE_PROMPT_GRACE = 0.25
TEXT_SETTLE = 0.15
GEMINI_PASTE_SETTLE = 2.0  # Gemini CLI takes an Enter as submit only ~2 s after a paste
PASTE_SHOWN_TIMEOUT = 4.0  # Qwen Code drew a paste ~1.7 s after it (under load)
SUBMIT_TIMEOUT = 4.0
BUSY_WAIT = 4.0  # a screen that says the agent is busy (a hook running) is looked at this long
MAX_REPLY_TEXT = 4000
MAX_REPLY_LINES = 200
_CSI_RE = LazyPattern(r"\x1b\[[0-?]*[ -/]*[@-~]")
_ANY_ESC_RE = LazyPattern(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[PX^_][^\x1b]*(?:\x1b\\)?|.)")
_MENU_RE = LazyPattern(r"^\s*(?:[❯›>●]\s*)?(\d{1,2})\.\s+(.*?)\s*$")
_CODEX_KEY_RE = LazyPattern(r"^(.*?)\s*\((\w+)\)$")
_EDGE_RE = LazyPattern(r"^\s*[│┃]\s?|\s*[│┃█]\s*$")
_RULE_RE = LazyPattern(r"^\s*─{20,}\s*$")
_HINT_RE = LazyPattern(r"\s*\((?:esc|shift\s*\+\s*tab|[a-z])\)$")


class ReplyRefused(Exception):
    """The reply cannot be sent safely: the reason says why (HTTP 409). `wait`: how long the screen
    is worth looking at again while it changes (it may be drawing the prompt); 0 when the screen
    shows something definite that another look will not change (refuse at once), None for the
    caller's default."""

    def __init__(self, message, wait=None):
        Exception.__init__(self, message)
        self.wait = wait


def strip_escapes(text):
    """Screen text without escape sequences or other control characters (tabs and newlines kept)."""
    return CONTROL_CHARS.sub(lambda m: m.group() if m.group() in "\t\n" else "", _ANY_ESC_RE.sub("", text))


def screen_lines(text, limit=None):
    """The last `limit` non-blank-trailing lines of a captured screen, escapes removed."""
    lines = [l.rstrip() for l in strip_escapes(text).split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines[-limit:] if limit else lines


def _unboxed(line):
    """A screen line without the box edges around it (Gemini's dialog │ … │, a split pane's │, Qwen's
    scroll bar █), nested boxes too."""
    while True:
        bare = _EDGE_RE.sub("", line)
        if bare == line:
            return line.rstrip()
        line = bare


def check_reply_text(text):
    """A prompt to type: one line, or several (sent as one bracketed paste; "\\r\\n" counts as a
    newline); no other control characters (a tab only in several lines). -> the text, or raises
    ReplyRefused."""
    if not isinstance(text, str) or not text.strip():
        raise ReplyRefused("'text' must be a non-empty string", 0)
    if len(text) > MAX_REPLY_TEXT:
        raise ReplyRefused("'text' is longer than %d characters" % MAX_REPLY_TEXT, 0)
    text = text.replace("\r\n", "\n")
    if text.count("\n") >= MAX_REPLY_LINES:
        raise ReplyRefused("'text' has more than %d lines" % MAX_REPLY_LINES, 0)
    allowed = "\n\t" if "\n" in text.strip("\n") else ""
    if any(ch not in allowed for ch in CONTROL_CHARS.findall(text)):
        raise ReplyRefused("'text' contains control characters (other than newlines between lines): refused, "
                           "it would be typed as keys", 0)
    if _SURROGATE_RE.search(text):  # would reach the pane as raw bytes (0x9b is an 8-bit CSI)
        raise ReplyRefused("'text' contains a lone surrogate (\\ud800-\\udfff), which is not a character: refused", 0)
    return text.strip("\n") if "\n" in text else text


def option_kind(text):
    """What a permission option does, from its own words: "once" (approve this call), "always" (approve
    it and more: a command prefix, a directory, every edit for the session), "deny", or None (another
    kind: switch to auto mode, edit in an external editor)."""
    low = _HINT_RE.sub("", text.strip().lower().replace("\u2019", "'"))
    if low == "no" or low.startswith(("no,", "no ")):
        return "deny"
    if "auto mode" in low or "external editor" in low:
        return None
    if "always" in low or "don't ask again" in low or "do not ask again" in low or "for this session" in low:
        return "always"
    if low.startswith(("yes", "allow once")) and ", and" not in low:
        return "once"
    return None


_ACTION_KIND = {"approve": "once", "approve-always": "always", "deny": "deny"}


def _pick(options, action):
    """The option (number, text, …) that answers the action, read from the options' own words: the
    first of its kind (Qwen's "in this project" before "for this user"), or None."""
    for option in options:
        if option_kind(option[1]) == _ACTION_KIND.get(action):
            return option
    return None


def _no_option(title, action, options):
    """The refusal for a prompt without an option for the action: the agent's own options, quoted."""
    want = {"approve": "approve once", "approve-always": "approve always", "deny": "deny"}[action]
    return ReplyRefused("this %s prompt has no option to %s; it offers: %s" % (
        title, want, "; ".join("%d. %s" % (o[0], _HINT_RE.sub("", o[1])) for o in options)), 0)


def _answer(option, covers=None):
    """What an answer did, in the agent's own words: the option chosen, and what it covers."""
    said = "%d. %s" % (option[0], _HINT_RE.sub("", option[1]))
    return ("answer", "“%s”%s" % (said, ("; " + covers) if covers else ""))


def _menu(tail, start):
    """The numbered options that follow line `start` -> [(number, text)] (boxes removed)."""
    out = []
    column = 0
    for line in tail[start + 1:]:
        line = _unboxed(line)
        m = _MENU_RE.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2)))
            column = m.start(2)
        elif out and line.strip():
            if len(line) - len(line.lstrip()) < column - 1:
                break
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())  # the option's text, wrapped
    return out


def _rule_bounds(tail):
    """Indexes of the last two ─── rules in the lines (None where missing)."""
    rules = [i for i, l in enumerate(tail) if _RULE_RE.match(l)]
    return (rules[-2] if len(rules) > 1 else None), (rules[-1] if rules else None)


def claude_prompt(screen_esc):
    """-> ('permission', options) | ('input', composer text) | None, from a Claude Code screen."""
    tail = [_unboxed(l) for l in screen_lines(screen_esc)[-40:]]
    if any("Esc to cancel" in l for l in tail[-6:]) and any(l.strip().startswith("Do you want to") for l in tail):
        start = max(i for i, l in enumerate(tail) if l.strip().startswith("Do you want to"))
        options = _menu(tail, start)
        if options:
            return ("permission", options)
    for i in range(len(tail) - 1, 0, -1):
        line = tail[i]
        if line.startswith("❯") and tail[i - 1].startswith("──"):
            end = next((j for j in range(i + 1, min(len(tail), i + 60)) if tail[j].startswith("──")), None)
            if end is not None:
                text = "\n".join([line[1:].strip()] + [l.strip() for l in tail[i + 1:end]])
                return ("input", text.strip("\n"))
    return None


def codex_prompt(screen_esc):
    """-> ('permission', [(number, text, key)]) | ('input', None) | None, from a Codex screen."""
    tail = screen_lines(screen_esc)[-40:]
    if any("Press enter to confirm or esc to cancel" in l for l in tail[-6:]):
        options = []
        for l in tail:
            m = _MENU_RE.match(l)
            if m:
                k = _CODEX_KEY_RE.match(m.group(2))
                if k:
                    options.append((int(m.group(1)), k.group(1), k.group(2)))
        if options:
            return ("permission", options)
        return None
    if any(l.startswith("› ") for l in tail[-8:]):
        return ("input", None)
    return None


def _sgr_background(params, bg):
    """The background after one SGR sequence's parameters."""
    parts = params.split(";") if params else ["0"]
    i = 0
    while i < len(parts):
        p = parts[i]
        if p in ("", "0"):
            bg = None
        elif p == "49":
            bg = None
        elif p in ("48",) and i + 1 < len(parts):
            n = 3 if parts[i + 1] == "5" else 5
            bg = ";".join(parts[i:i + n])
            i += n - 1
        elif p.isdigit() and (40 <= int(p) <= 47 or 100 <= int(p) <= 107):
            bg = p
        elif p in ("38",) and i + 1 < len(parts):
            i += 2 if parts[i + 1] == "5" else 4
        i += 1
    return bg


def selected_button(line_with_escapes, labels, hint="select"):
    """Which of `labels` is drawn on another background than the `hint` text of the same line (how
    OpenCode shows its selected button), or None when that cannot be told."""
    bg = None
    pos = 0
    plain = []
    backgrounds = []
    for m in _CSI_RE.finditer(line_with_escapes):
        for ch in line_with_escapes[pos:m.start()]:
            plain.append(ch)
            backgrounds.append(bg)
        if m.group(0).endswith("m"):
            bg = _sgr_background(m.group(0)[2:-1], bg)
        pos = m.end()
    for ch in line_with_escapes[pos:]:
        plain.append(ch)
        backgrounds.append(bg)
    text = "".join(plain)
    h = text.find(hint)
    if h < 0:
        return None
    base = backgrounds[h]
    picked = []
    for label in labels:
        i = text.find(label)
        if i < 0:
            return None
        if backgrounds[i] != base:
            picked.append(label)
    return picked[0] if len(picked) == 1 else None


OPENCODE_BUTTONS = ("Allow once", "Allow always", "Reject")


def opencode_prompt(screen_esc):
    """-> ('permission', selected button or None) | ('confirm-always', selected) | ('input', None) | None,
    from an OpenCode screen captured with escapes."""
    raw = screen_esc.split("\n")
    lines = [strip_escapes(l).rstrip() for l in raw]
    tail = range(max(0, len(lines) - 30), len(lines))
    for i in tail:
        if "Allow once" in lines[i] and "Reject" in lines[i] and any(
                "Permission required" in lines[j] for j in range(max(0, i - 25), i)):
            return ("permission", selected_button(raw[i], OPENCODE_BUTTONS))
        if "Confirm" in lines[i] and "Cancel" in lines[i] and any(
                "Always allow" in lines[j] for j in range(max(0, i - 25), i)):
            return ("confirm-always", selected_button(raw[i], ("Confirm", "Cancel")))
    if any(l.lstrip().startswith("╹▀") for l in (lines[i] for i in tail)) and any("ctrl+p commands" in lines[i] for i in tail):
        return ("input", None)
    return None


def opencode_input(screen_esc):
    """The text in OpenCode's composer (the ┃ lines right above its ╹▀▀ edge, without the mode line
    under the text), "" when empty or showing its placeholder ("Ask anything…"), or None."""
    lines = screen_lines(screen_esc)[-40:]
    edge = max((i for i, l in enumerate(lines) if l.lstrip().startswith("╹▀")), default=None)
    if edge is None:
        return None
    box = []
    for l in reversed(lines[:edge]):
        if not l.lstrip().startswith("┃"):
            break
        box.insert(0, re.split(r"\s{10,}", l.lstrip()[1:].strip())[0])
    text = "\n".join(box[:-1]).strip("\n") if box else ""
    return "" if text.startswith("Ask anything") else text


def opencode_always_patterns(screen_esc):
    """The patterns OpenCode's "Always allow" confirmation lists ("- echo *" lines), or []."""
    lines = [strip_escapes(l).strip() for l in screen_esc.split("\n")]
    start = max((i for i, l in enumerate(lines) if "Always allow" in l), default=None)
    if start is None:
        return []
    out = []
    for l in lines[start + 1:start + 20]:
        l = l.strip("┃│ ")
        if l.startswith("- "):
            out.append(l[2:].strip())
        elif "Confirm" in l:
            break
    return out


_INPUT_PLACEHOLDER = "Type your message or @path/to/file"


def _input_after(tail, start, sign=">"):
    """The input that begins on the first line after `start` starting with `sign` ("> " then
    continuation lines, up to a blank line or a rule) -> its text ("" for the placeholder), or None."""
    for i in range(start + 1, min(len(tail), start + 6)):
        line = tail[i].strip()
        if line.startswith(sign):
            lines = [line[len(sign):].strip()]
            for l in tail[i + 1:i + 60]:
                if not l.strip() or _RULE_RE.match(l):
                    break
                lines.append(l.strip())
            text = "\n".join(lines).replace("\u200b", "").strip()
            return "" if text == _INPUT_PLACEHOLDER else text
    return None


def gemini_prompt(screen_esc):
    """-> ('permission', options) | ('input', text) | ('busy', text) | None, from a Gemini CLI screen
    (busy: its spinner line "… (esc to cancel, Ns)" shows above the input: a hook runs, Enter is lost)."""
    tail = [_unboxed(l) for l in screen_lines(screen_esc)[-60:]]
    asks = [i for i, l in enumerate(tail) if l.strip().startswith(("Allow execution of", "Apply this change?"))
            or (l.strip().startswith("Allow ") and l.strip().endswith("?"))]
    if asks:
        options = _menu(tail, asks[-1])
        if options and option_kind(options[0][1]) == "once":
            return ("permission", options)
    _, rule = _rule_bounds(tail)
    if rule is None:
        return None
    text = _input_after(tail, rule)
    if text is None:
        return None
    busy = any("esc to cancel" in l for l in tail[max(0, rule - 3):rule])
    return ("busy" if busy else "input", text)


# Qwen Code's input with nothing typed: the cursor (underlined) right after "> ", the rest in its
# placeholder colour: "Type your message…", or a suggested next prompt it shows after a turn
# ("> Hello from the fake model." in the lab: Tab takes it, typing replaces it).
_QWEN_UNTYPED_RE = LazyPattern(r"> (?:\x1b\[[0-9;]*m)*\x1b\[4m(?:\x1b\[[0-9;]*m)*[^\x1b](?:\x1b\[[0-9;]*m)*\x1b\[38;5;103m")


def qwen_prompt(screen_esc):
    """-> ('permission', options) | ('input', text) | ('busy', text) | None, from a Qwen Code screen
    (busy: "… (Ns · esc to cancel)" above the input, "Enter to steer" in the footer). The text is ""
    when nothing is typed (its placeholder, or a suggestion it shows in the placeholder's colour:
    told apart with the screen's escapes)."""
    tail = [_unboxed(l) for l in screen_lines(screen_esc)[-60:]]
    asks = [i for i, l in enumerate(tail) if l.strip().startswith(("Allow execution of", "Apply this change?"))]
    if asks:
        options = _menu(tail, asks[-1])
        if options and option_kind(options[0][1]) == "once":
            return ("permission", options)
    top, bottom = _rule_bounds(tail)
    if top is None:
        return None
    text = _input_after(tail, top)
    if text is None:
        return None
    if text and any(_QWEN_UNTYPED_RE.search(l) for l in screen_esc.split("\n")[-60:]):
        text = ""  # a suggestion, not typed text
    busy = any("esc to cancel" in l for l in tail[max(0, top - 3):top]) or \
        any("Enter to steer" in l for l in tail[bottom + 1:])
    return ("busy" if busy else "input", text)


def pi_prompt(screen_esc):
    """-> ('input', text) | ('busy', text) | None, from a Pi screen (the editor is the lines between
    its two ─── rules; busy: "Working..." above them). Pi never asks for a permission."""
    tail = screen_lines(screen_esc)[-60:]
    top, bottom = _rule_bounds(tail)
    if top is None:
        return None
    text = "\n".join(l.rstrip() for l in tail[top + 1:bottom]).strip("\n")
    busy = any("Working..." in l for l in tail[max(0, top - 3):top])
    return ("busy" if busy else "input", text)


def _text_steps(text, submitted, paste_shown=None, enter_after=TEXT_SETTLE):
    """Type a prompt and submit it. One line: the text, then Enter only once it is on screen and a
    moment later (Codex takes input that comes fast as a paste, and an Enter inside a paste as a
    newline: seen with Enter right after). Several lines: one bracketed paste, then Enter once the
    agent shows it (`paste_shown(screen)`, default: its last line on screen) and `enter_after`
    seconds more. Then wait for the prompt to be submitted (`submitted(screen, needle)`)."""
    last = [l for l in text.split("\n") if l.strip()][-1].strip()
    needle = last[-20:]

    def shown(screen):  # (a long paste may show as "[Pasted Content …]" instead)
        tail = "\n".join(screen_lines(screen)[-40:])
        return needle in tail or "[Pasted" in tail
    if "\n" in text:
        first = ("paste", text)
        what = "the pasted text in the input"
        check = paste_shown or shown
        timeout = PASTE_SHOWN_TIMEOUT
    else:
        first, what, check, timeout = ("literal", text), "the typed text on screen", shown, None
    return [first, ("expect", what, check, enter_after, timeout), ("keys", ["Enter"]),
            ("expect", "the prompt being submitted", lambda screen: submitted(screen, needle), None, SUBMIT_TIMEOUT)]


def _not_input(title, found):
    """The refusal for text sent to a screen that shows no prompt input: at once when it shows a
    permission prompt (another look will not change that), else after the screen settles."""
    kind = found[0] if found else None
    if kind in ("permission", "confirm-always"):
        return ReplyRefused("%s is asking for a permission; text is typed only at its prompt input "
                            "(answer the permission first)" % title, 0)
    if kind == "busy":
        return ReplyRefused("%s is busy (its screen says so); text is typed only when it waits at its "
                            "prompt input" % title, BUSY_WAIT)
    return ReplyRefused("%s's screen does not show its prompt input" % title)


def _not_permission(title, found, action):
    """The refusal for an answer to a screen that shows no permission prompt."""
    what = "nothing to %s" % ("deny" if action == "deny" else "approve")
    if found and found[0] in ("input", "busy"):
        return ReplyRefused("%s shows its prompt input, not a permission prompt; there is %s" % (title, what))
    return ReplyRefused("%s's screen does not show a permission prompt; there is %s" % (title, what))


def _holds_text(title, text):
    return ReplyRefused("%s's input already holds text (%r); not typing into it: clear it in its pane "
                        "first" % (title, text[:40]))


def _gone(read, found):
    """-> predicate: the prompt `found` (as `read` reads a screen) is no longer up."""
    def gone(screen):
        now = read(screen)
        return not (now is not None and now[0] == found[0] and now[1] == found[1])
    return gone


def _input_empty(read):
    """-> predicate: the reader sees its input, and it is empty (a prompt was submitted)."""
    def empty(screen):
        now = read(screen)
        return now is not None and now[0] in ("input", "busy") and not now[1]
    return empty


def _digit_plan(title, read, action, screen_esc, covers=None, grace=None):
    """A numbered menu answered by its digit: the option is read from the screen (never assumed)."""
    found = read(screen_esc)
    if not found or found[0] != "permission":
        raise _not_permission(title, found, action)
    picked = _pick(found[1], action)
    if picked is None:
        raise _no_option(title, action, found[1])
    gone = _gone(read, found)
    steps = [_answer(picked, covers(picked[1]) if covers and action == "approve-always" else None)]
    if grace:
        steps.append(("hold", grace, "the permission prompt", lambda screen: not gone(screen)))
    return steps + [("keys", [str(picked[0])]), ("expect", "the prompt going away after the key", gone)]


def _claude_covers(option):
    low = option.lower().replace("\u2019", "'")
    if "always allow access to" in low:
        return ("Claude allows access to that directory, not this command: the same call may ask "
                "again (seen with Claude Code 2.1.330)")
    return None


def claude_reply_plan(action, screen_esc, text=None):
    """Claude Code: a digit picks a permission option; a prompt goes into an empty composer."""
    if action == "text":
        found = claude_prompt(screen_esc)
        if not found or found[0] != "input":
            raise _not_input("Claude Code", found)
        if found[1]:
            raise _holds_text("Claude Code", found[1])

        def submitted(screen, needle):
            f = claude_prompt(screen)
            return f is None or f[0] != "input" or needle not in f[1]
        return _text_steps(text, submitted, lambda screen: bool((claude_prompt(screen) or ("", ""))[1]))
    # Claude Code ignores keys in the first ~0.1 s a permission prompt is up (seen: a digit 50 ms after
    # it appeared was dropped, 100 ms after was taken): see it up that long first
    return _digit_plan("Claude Code", claude_prompt, action, screen_esc, _claude_covers, CLAUDE_PROMPT_GRACE)


def codex_reply_plan(action, screen_esc, text=None):
    """Codex: the letter in parentheses picks a permission option ("esc" is Escape)."""
    found = codex_prompt(screen_esc)
    if action == "text":
        if not found or found[0] != "input":
            raise _not_input("Codex", found)

        def submitted(screen, needle):
            composer = "\n".join(screen_lines(screen)[-12:])
            return "› " not in composer or needle not in composer.split("› ")[-1]
        return _text_steps(text, submitted)
    if not found or found[0] != "permission":
        raise _not_permission("Codex", found, action)
    picked = next((o for o in found[1] if _pick([o], action)), None)
    if picked is None:
        raise _no_option("Codex", action, found[1])
    return [_answer(picked), ("keys", ["Escape" if picked[2] == "esc" else picked[2]]),
            ("expect", "the prompt going away after the key", _gone(codex_prompt, found))]


def opencode_reply_plan(action, screen_esc, text=None):
    """OpenCode: Right moves to the wanted button, Enter confirms ("Allow always" asks again: a second
    Enter), Escape rejects."""
    found = opencode_prompt(screen_esc)
    kind = found[0] if found else None
    if action == "text":
        if kind != "input":
            raise _not_input("OpenCode", found)

        held = opencode_input(screen_esc)
        if held:
            raise _holds_text("OpenCode", held)

        def pasted(screen):  # OpenCode shows a paste as "[Pasted ~N lines]", not its text
            return "[Pasted ~" in (opencode_input(screen) or "")

        def submitted(screen, needle):
            now = opencode_input(screen)
            return now is not None and "[Pasted ~" not in now and needle not in now
        return _text_steps(text, submitted, pasted)
    if kind not in ("permission", "confirm-always"):
        raise _not_permission("OpenCode", found, action)

    def gone(screen):  # neither the buttons nor the "Always allow" confirmation
        now = opencode_prompt(screen)
        return now is None or now[0] not in ("permission", "confirm-always")
    if kind == "confirm-always":
        raise ReplyRefused("OpenCode is asking to confirm an 'Allow always' already; answer it in its pane", 0)
    if action == "deny":
        return [("answer", "“Reject”"), ("keys", ["Escape"]), ("expect", "the prompt going away after the key", gone)]
    selected = found[1]
    if selected is None:
        raise ReplyRefused("cannot tell which OpenCode button is selected")
    target = "Allow once" if action == "approve" else "Allow always"
    moves = (OPENCODE_BUTTONS.index(target) - OPENCODE_BUTTONS.index(selected)) % len(OPENCODE_BUTTONS)

    def on_target(screen):
        f = opencode_prompt(screen)
        return f is not None and f[0] == "permission" and f[1] == target
    steps = [("answer", "“%s”" % target)]
    if moves:
        steps += [("keys", ["Right"] * moves), ("expect", "%r selected" % target, on_target)]
    steps.append(("keys", ["Enter"]))
    if action == "approve-always":
        def confirm(screen):
            f = opencode_prompt(screen)
            return f is not None and f[0] == "confirm-always" and f[1] == "Confirm"
        steps += [("expect", "the 'Always allow' confirmation with Confirm selected", confirm),
                  ("answer-from-screen", lambda screen: "“Allow always”: %s until OpenCode restarts" % (
                      ", ".join("`%s`" % p for p in opencode_always_patterns(screen)) or "this call")),
                  ("keys", ["Enter"])]
    steps.append(("expect", "the prompt going away after the key", gone))
    return steps


def _gemini_covers(option):
    return ("Gemini allows, until it exits, shell commands with the same first word, and every file write "
            "once a file prompt was allowed (nothing is written to its settings)")


def _qwen_covers(option):
    low = option.lower()
    if "in this project" in low:
        return "Qwen wrote it to <project>/.qwen/settings.json"
    if "for this user" in low:
        return "Qwen wrote it to ~/.qwen/settings.json"
    return "Qwen switches this run to auto-accept edits (every file edit, not shell commands)"


def _enter_taken(read, title):
    """After Enter: the input emptied (else the text stays typed and it was not sent)."""
    empty = _input_empty(read)

    def submitted(screen, needle):
        return empty(screen)
    return submitted


def gemini_reply_plan(action, screen_esc, text=None):
    """Gemini CLI: a digit picks a permission option (the "No" digit is 3 on shell prompts, 4 on file
    prompts: read, never assumed); a prompt goes into its empty input, Enter ~2 s after a paste."""
    if action == "text":
        found = gemini_prompt(screen_esc)
        if not found or found[0] != "input":
            raise _not_input("Gemini CLI", found)
        if found[1]:
            raise _holds_text("Gemini CLI", found[1])
        return _text_steps(text, _enter_taken(gemini_prompt, "Gemini CLI"),
                           lambda screen: bool((gemini_prompt(screen) or ("", ""))[1]),
                           enter_after=GEMINI_PASTE_SETTLE if "\n" in text else TEXT_SETTLE)
    return _digit_plan("Gemini CLI", gemini_prompt, action, screen_esc, _gemini_covers)


def qwen_reply_plan(action, screen_esc, text=None):
    """Qwen Code: a digit picks a permission option (No is 4 on shell prompts, 3 on file prompts);
    a prompt goes into its input only when that is empty (after an Esc it holds the old prompt),
    checked over a few frames (one redraw frame showed other text there)."""
    if action == "text":
        found = qwen_prompt(screen_esc)
        if not found or found[0] != "input":
            raise _not_input("Qwen Code", found)
        if found[1]:
            raise _holds_text("Qwen Code", found[1])
        empty = _input_empty(qwen_prompt)
        return [("hold", TEXT_SETTLE, "the empty input", empty)] + _text_steps(
            text, _enter_taken(qwen_prompt, "Qwen Code"), lambda screen: bool((qwen_prompt(screen) or ("", ""))[1]))
    return _digit_plan("Qwen Code", qwen_prompt, action, screen_esc, _qwen_covers)


def pi_reply_plan(action, screen_esc, text=None):
    """Pi: no permission prompts (its tools run without asking); a prompt goes into its empty editor."""
    if action != "text":
        raise ReplyRefused("Pi never asks for a permission (its tools run without asking); there is "
                           "nothing to %s" % ("deny" if action == "deny" else "approve"), 0)
    found = pi_prompt(screen_esc)
    if not found or found[0] != "input":
        raise _not_input("Pi", found)
    if found[1]:
        raise _holds_text("Pi", found[1])
    return _text_steps(text, _enter_taken(pi_prompt, "Pi"), lambda screen: bool((pi_prompt(screen) or ("", ""))[1]))


##############################################################################
# Agents (pure): one spec per agent
##############################################################################
# Each agent is one AgentSpec: data and pure functions that say what every section needs to know of
# it. The sections below loop over AGENT_SPECS and name no agent. See the map for where the I/O
# behind a spec lives.


class Record(object):
    """A plain record of named fields, built by keyword: FIELDS lists (name, default) pairs. A
    default is shared between records: give a record its own list or dict, never change one."""

    FIELDS = ()

    def __init__(self, **kw):
        unknown = set(kw).difference(name for name, _ in self.FIELDS)
        if unknown:
            raise TypeError("%s has no field %s" % (type(self).__name__, ", ".join(sorted(unknown))))
        for name, default in self.FIELDS:
            setattr(self, name, kw.get(name, default))

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (n, getattr(self, n)) for n, _ in self.FIELDS))


class Process(Record):
    """How an agent's process is recognised in the process table (its comm and argv)."""

    FIELDS = (
        ("names", ()),  # its comm or argv[0]: a native binary, or a script named like the agent
        ("via_node", False),  # also run as `node|bun [node flags] …/<name> …` (an npm package's .bin link)
        ("package", None),  # the npm package's directory name, when node runs the package's own file ...
        ("entry_files", ()),  # ... and that file's names (the .bin link points at one of them)
        ("one_shot", ()),  # flags that make a run a one-shot (`claude -p`): no live agent to show
        ("helpers", ()),  # first words of helper runs (`opencode serve`, `codex app-server`): not the agent
    )


class Hooks(Record):
    """The hook payloads an agent pipes to `opensessions hook AGENT` (stdin JSON: hook_event_name,
    session_id, cwd, ...) and what each event says (see hook_event)."""

    FIELDS = (
        ("states", {}),  # hook_event_name -> "idle" | "running" | "prompt" (running, with the prompt) |
                         # "permission" (waiting on a tool) | "notification" | "error" | "end" (it exited)
        ("notifications", ()),  # the notification_types that mean a prompt waits for the user
        ("idle_notifications", ()),  # notification_types saying it waits at its prompt input, the turn over:
                                     # one still under way was stopped (Qwen Code's Esc during retries)
        ("pid_env", None),  # an environment variable in which the agent gives its hooks its own pid
    )


class Watch(Record):
    """How an agent's files are followed: `kind` names the watcher class that reads them
    (Watchers: WATCHER_KINDS); a kind other than "chat-files" is one agent's own."""

    FIELDS = (("kind", None),)


class ChatFiles(Record):
    """An agent that appends each conversation to a JSONL file, one directory of them per project:
    the "chat-files" watcher (or a subclass, by kind) follows them with no code of the agent's own."""

    FIELDS = (
        ("kind", "chat-files"),
        ("projects", None),  # the directory of project directories, in the agent's home
        ("chats", ""),  # the chat files' directory in a project's ("" for the project's own)
        ("reducer", None),  # (thread state, record) -> state: one line of a chat file applied
        ("name_id", None),  # file name -> its thread id (or, with header_id, the id's start), or None
        ("header_id", False),  # the whole id is in the first line's "sessionId"
        ("moved_on", None),  # records -> the conversation went on (else a wait from a hook holds); None: always
        ("project_of", None),  # cwd -> the name of its project directory (None: not known from the cwd alone)
    )


class HookInstall(Record):
    """Our hook command in an agent's own hook config, in Claude's shape ({"hooks": {Event: [{"hooks":
    [entry]}]}}): `opensessions install` adds it to each event, `uninstall` removes it (and only it)."""

    FIELDS = (
        ("file", None),  # the config file, in the agent's home
        ("events", ()),  # the events our hook is added to
        ("entry", {}),  # what our entry holds besides its type and command (a timeout: seconds or ms)
        ("only_if_set_up", False),  # only where the agent's home exists (nothing is created for others)
        ("note", None),  # a line for the user after installing
    )


class FileInstall(Record):
    """A file of ours that the agent loads (a plugin, an extension), written whole by install."""

    FIELDS = (
        ("what", None),  # "the OpenCode plugin": how messages name it
        ("under", "home"),  # the agent's path (a key of its paths) the file goes under ...
        ("path", ()),  # ... and the file's path there
        ("text", ""),  # the file's contents
        ("only_if_set_up", False),  # only where that directory exists
    )


class Plugin(Record):
    """Events our plugin inside the agent posts to `route`: {type, properties: {sessionID, …}, pid,
    paneId, directory} (the Api's api_plugin_event maps them)."""

    FIELDS = (
        ("route", None),  # the POST path the plugin calls
        ("status", None),  # (type, properties) -> (status, detail, attempt), or None: not a status
        ("thread", None),  # (type, properties) -> other thread fields it changes ({} or more), or None
    )


class HistoryFormat(Record):
    """How the conversation history (the History section) reads an agent's past conversations.
    `kind` names its reader there: "jsonl" (one JSONL file per conversation, read with `reducer`,
    a head and a tail of big ones), or the agent's own ("opencode-db", "amp-json"). Its files are
    under its paths' `under`, then `dirs` ("*": any directory, "#": a dated one, all digits), and
    `name_id` tells a conversation's file and id from its name (with header_id, only the id's
    start: the whole one is in the first line's "sessionId"). `facts` names an extra reading there
    (names, exact turn counts, directories the files do not hold)."""

    FIELDS = (
        ("kind", "jsonl"),
        ("under", "home"),  # the key of its paths its conversations are under
        ("dirs", ()),  # the directories below that, one pattern each
        ("name_id", None),  # file name -> conversation id (or its start, with header_id), or None
        ("header_id", False),
        ("suffix", None),  # a file named <id><suffix>: found by name (and its name not kept)
        ("reducer", None),  # (state, record) -> state: the watchers' own
        ("skip", ()),  # first bytes of the big records the index never needs (left unparsed)
        ("branch", None),  # record -> the git branch it names, or None
        ("messages", None),  # records -> [(role, text)]: what the picker's preview shows
        ("facts", None),  # a kind of extra reading in the History section, or None
        ("usage", None),  # state -> its raw usage (None: the reducer's state["usage"])
        ("totals", False),  # its usage is a running total: a tail read has it exact
        ("one_shot", ((), ())),  # (flags with a value, flags without) of script runs: not repeated by a resume
    )


class AgentSpec(Record):
    """One agent, in one place (fields in the order of the sections that use them)."""

    FIELDS = (
        ("name", None),  # "claude": the agent's key in thread keys, hook commands and /state
        ("title", None),  # "Claude Code": how messages name it
        ("id_pattern", None),  # a compiled regex: the conversation ids its resume command takes
        ("paths", None),  # environ -> {"home": its directory, other named paths}: where its files are
        ("watch", None),  # Watch or ChatFiles: how its files are read (the watcher of that kind)
        ("open_file", None),  # (what, path -> thread id): an open file of its process names its conversation
        ("process", Process()),  # how its process is recognised
        ("id_flags", ()),  # flags whose value is the conversation id (`--resume ID`): read back from argv
        ("id_commands", ()),  # subcommands followed by the conversation id (`codex resume ID`)
        ("hooks", None),  # Hooks: what its hook payloads say (None: it has no hooks)
        ("install", None),  # HookInstall or FileInstall: what `opensessions install` adds for it
        ("plugin", None),  # Plugin: the events its plugin posts (None: it has none)
        # resume, fork and the flags a restore keeps (Resurrect): in resume_args and fork_args "{flags}"
        # stands for the flags kept from the saved command line, "{id}" for the conversation id
        ("resume_args", ()),  # the arguments that resume conversation {id}
        ("fork_args", None),  # the arguments that start a new conversation from {id}'s history (None: not known)
        ("resumes_anywhere", False),  # resumes by id from any directory (else only from the one it ran in)
        ("session_flags", ()),  # flags whose value picks a conversation: dropped when saving (restore adds its own)
        ("session_switches", ()),  # flags without a value that pick one (--continue): dropped too
        ("session_commands", ()),  # subcommands that pick one ("resume", "threads continue"): dropped with the id
        ("switches", ()),  # flags known to take no value (the word after one is a prompt, never its value)
        # replies (Agent screens): what its screen shows, and the keys that answer it
        ("prompt_reader", None),  # captured screen (with escapes) -> ("permission" | "input" | …, details) or None
        ("reply_planner", None),  # (action, screen, text) -> reply steps, or ReplyRefused (None: not learned)
        # what its usage costs: the list prices of the models its vendor sells (USD per million tokens); an
        # agent that records its own cost (OpenCode, Pi, Claude's cost-state) is priced by that first
        ("prices", {}),
        # which source wins (the Server's apply step): its files cannot show a permission wait or a retry,
        # which its plugin reports; those hold until the files show the turn ended (OpenCode's database)
        ("plugin_holds", False),
        # its past conversations (History): where they are and how the index reads them (None: not read)
        ("history", None),
    )


# What Claude-shaped hook events say (Claude Code, Codex and Qwen Code use these names). No hook fires on
# an interrupt; an agent's own files tell those.
CLAUDE_HOOK_STATES = {
    "SessionStart": "idle", "UserPromptSubmit": "prompt", "PreToolUse": "running", "PostToolUse": "running",
    "PostToolUseFailure": "running", "PermissionRequest": "permission", "Notification": "notification",
    "Stop": "idle",  # the server settles it: a turn under way becomes done
    "StopFailure": "error", "SessionEnd": "end",
}
CLAUDE_NOTIFICATIONS = (None, "permission_prompt", "elicitation_dialog")  # idle reminders change nothing
# Gemini CLI's events: BeforeAgent is a prompt, Notification with notification_type ToolPermission a
# permission prompt, AfterAgent the end of a turn. No hook fires on an interrupt or an API error.
GEMINI_HOOK_STATES = {
    "SessionStart": "idle", "BeforeAgent": "prompt", "BeforeTool": "running", "AfterTool": "running",
    "Notification": "notification", "AfterAgent": "idle", "SessionEnd": "end",
}

CLAUDE_HOOK_EVENTS = ("SessionStart", "SessionEnd", "UserPromptSubmit", "Stop", "StopFailure", "Notification",
                      "PermissionRequest")
CODEX_HOOK_EVENTS = ("SessionStart", "SessionEnd", "UserPromptSubmit", "Stop", "PermissionRequest")
# Gemini CLI and Qwen Code read hooks from settings.json in Claude's shape; Gemini's `timeout` is in ms.
GEMINI_HOOK_EVENTS = ("SessionStart", "SessionEnd", "BeforeAgent", "AfterAgent", "Notification")
QWEN_HOOK_EVENTS = ("SessionStart", "SessionEnd", "UserPromptSubmit", "Stop", "StopFailure", "Notification",
                    "PermissionRequest")

# -- what we install into agents that have no hooks: their own plugin formats ----------------------
OPENCODE_PLUGIN_NAME = "opensessions.js"
# The OpenCode plugin: forwards the few events that carry live status (busy / retry / idle, errors,
# permission asked / replied) to the server; the server maps them (opencode_plugin_status).
# The OpenCode plugin and the Pi extension find the server the same way: this function is in
# both (plain JS, which Pi's TypeScript loader takes as it is). Tested under node against socket_key().
_JS_SERVER_LOOKUP = r"""function server() {
  try {
    const uid = process.getuid();
    const env = process.env;
    const t = env.TMUX;
    const sock = t ? t.split(",").slice(0, -2).join(",")
      : path.join(env.TMUX_TMPDIR || "/tmp", "tmux-" + uid, "default");
    let h = 0xcbf29ce484222325n;  // FNV-1a 64, as opensessions' socket_key()
    for (const b of Buffer.from(sock, "utf8")) h = ((h ^ BigInt(b)) * 0x100000001b3n) & 0xffffffffffffffffn;
    const key = h.toString(16).padStart(16, "0").slice(0, 12);
    const isDir = (p) => { try { return fs.statSync(p).isDirectory(); } catch (e) { return false; } };
    let dir;  // as opensessions' runtime_dir(): a squatted temp dir gives way to one in the state dir
    if (env.XDG_RUNTIME_DIR && isDir(env.XDG_RUNTIME_DIR)) {
      dir = path.join(env.XDG_RUNTIME_DIR, "opensessions");
    } else {
      dir = path.join(env.TMPDIR || "/tmp", "opensessions-" + uid);
      let squatted = false;
      try {
        const l = fs.lstatSync(dir);
        if (l.uid !== uid) squatted = true;
        else if (l.isSymbolicLink()) {
          const st = fs.statSync(dir);
          squatted = st.uid !== uid || !st.isDirectory() || (st.mode & 0o077) !== 0;
        } else squatted = !l.isDirectory();
      } catch (e) { squatted = e.code !== "ENOENT"; }
      if (squatted) {
        dir = path.join(env.XDG_STATE_HOME || path.join(env.HOME || "/nonexistent", ".local", "state"),
          "opensessions", "run");
      }
    }
    const file = path.join(dir, "server-" + key + ".json");
    for (const st of [fs.lstatSync(dir), fs.lstatSync(file)]) {
      if (st.isSymbolicLink() || st.uid !== uid || (st.mode & 0o077)) return null;
    }
    // never blocks: a FIFO put there opens at once and is refused, as is anything but a small file
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
    let text;
    try {
      const st = fs.fstatSync(fd);
      if (!st.isFile() || st.uid !== uid || (st.mode & 0o077) || st.size > 65536) return null;
      const buf = Buffer.alloc(st.size);
      text = buf.toString("utf8", 0, fs.readSync(fd, buf, 0, st.size, 0));
    } finally { fs.closeSync(fd); }
    const info = JSON.parse(text);
    if (!(Number.isInteger(info.port) && info.port > 0 && info.port < 65536)) return null;
    // the server must still run: its pid alive and ours (kill 0 fails for another user's), with the
    // start time it wrote (a file left by a kill -9 names a dead or reused pid: nothing is sent)
    const pid = info.pid;
    if (!Number.isInteger(pid) || pid <= 0) return null;
    process.kill(pid, 0);
    if (typeof info.procStart === "number") {  // Linux: /proc/<pid>/stat's starttime, of a process of ours
      if (fs.statSync("/proc/" + pid).uid !== uid) return null;
      const stat = fs.readFileSync("/proc/" + pid + "/stat", "latin1");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]) !== info.procStart) return null;
    } else if (typeof info.procStart === "string" && info.procStart) {  // elsewhere: ps -o lstart=
      const seen = pid + " " + info.procStart;
      if (server.verified !== seen) {
        const out = execFileSync("ps", ["-o", "lstart=", "-p", String(pid)],
          { env: Object.assign({}, env, { LC_ALL: "C" }), timeout: 2000, encoding: "utf8" });
        if (out.trim() !== info.procStart) return null;
        server.verified = seen;  // the pid stays ours while kill 0 works: ps runs once per server
      }
    } else return null;
    return info;
  } catch (e) {}
  return null;
}
"""

OPENCODE_PLUGIN = r"""// opensessions: reports OpenCode session status to the opensessions server.
// Installed by `opensessions install`; removed by `opensessions uninstall`. Never blocks OpenCode.
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";

const TYPES = new Set(["session.status", "session.idle", "session.error", "permission.asked",
  "permission.replied", "session.updated"]);

// The server's runtime file, trusted only when it is ours and private (a shared TMPDIR is writable
// by everyone): no file, no report (never to whatever listens on a default port).
""" + _JS_SERVER_LOOKUP + r"""
// What the server reads of an event, each part cut short: a permission for a 100 KB write or a long
// error must not make the body too large for the server (64 KiB), and so be lost.
function clip(v, n) { return typeof v === "string" && v.length > n ? v.slice(0, n) : v; }

function slim(event) {
  const p = event.properties || {};
  const st = p.status && typeof p.status === "object" ? p.status : null;
  const err = p.error && typeof p.error === "object" ? p.error : null;
  const out = { sessionID: clip(p.sessionID || (p.info && p.info.id), 200),
    status: st ? { type: clip(st.type, 50), message: clip(st.message, 1000), attempt: st.attempt } : undefined,
    error: err ? { name: clip(err.name, 200), data: { message: clip(err.data && err.data.message, 1000) } } : undefined,
    permission: clip(p.permission, 200),
    patterns: Array.isArray(p.patterns) ? p.patterns.slice(0, 1).map((x) => clip(String(x), 1000)) : undefined,
    reply: clip(p.reply, 50) };
  if (event.type === "session.updated" && p.info) {
    out.title = clip(p.info.title, 1000); out.parentID = clip(p.info.parentID, 200);
    out.directory = clip(p.info.directory, 4096);
  }
  return out;
}

export const OpenSessions = async (ctx) => {
  return {
    event: async ({ event }) => {
      if (!event || !TYPES.has(event.type)) return;
      const body = JSON.stringify({ type: event.type, properties: slim(event), pid: process.pid,
        directory: ctx.directory, paneId: process.env.TMUX_PANE || null });
      const info = server();
      if (!info) return;
      const headers = { "content-type": "application/json" };
      if (typeof info.token === "string") headers["x-opensessions-token"] = info.token;
      try {
        await fetch("http://127.0.0.1:" + info.port + "/api/opencode-event", { method: "POST",
          headers, body, signal: AbortSignal.timeout(1000) });
      } catch (e) {}
    },
  };
};
"""
PI_EXTENSION_NAME = "opensessions.ts"
# The Pi extension: Pi has no hooks; an extension in ~/.pi/agent/extensions/ gets its session and
# agent events. It reports the turn's start and end (with the last message's stopReason: error,
# aborted) and the session's end, to /api/agent-event, as our hooks do. Never blocks Pi.
PI_EXTENSION = r"""// opensessions: reports Pi session status to the opensessions server.
// Installed by `opensessions install`; removed by `opensessions uninstall`. Never blocks Pi.
import fs from "node:fs";
import path from "node:path";
import { execFileSync } from "node:child_process";

// The server's runtime file, trusted only when it is ours and private (as in our OpenCode plugin).
""" + _JS_SERVER_LOOKUP + r"""
async function report(ctx: any, status: string, extra: any = {}) {
  try {
    const sm = ctx && ctx.sessionManager;
    const id = sm && sm.getSessionId ? sm.getSessionId() : null;
    if (!id) return;
    const body: any = { agent: "pi", status, threadId: id, source: "hook", pid: process.pid,
      projectDir: (sm.getCwd && sm.getCwd()) || ctx.cwd };
    if (process.env.TMUX_PANE) body.paneId = process.env.TMUX_PANE;
    const name = sm.getSessionName && sm.getSessionName();
    if (name) body.threadName = String(name).slice(0, 200);
    Object.assign(body, extra);
    const info = server();
    if (!info) return;
    const headers: any = { "content-type": "application/json" };
    if (typeof info.token === "string") headers["x-opensessions-token"] = info.token;
    await fetch("http://127.0.0.1:" + info.port + "/api/agent-event", { method: "POST", headers,
      body: JSON.stringify(body), signal: AbortSignal.timeout(1000) });
  } catch (e) {}
}

export default function (pi: any) {
  pi.on("session_start", async (_event: any, ctx: any) => { void report(ctx, "idle"); });
  pi.on("agent_start", async (_event: any, ctx: any) => { void report(ctx, "running"); });
  pi.on("agent_end", async (event: any, ctx: any) => {
    const msgs = (event && event.messages) || [];
    let last: any = null;
    for (const m of msgs) if (m && m.role === "assistant") last = m;
    if (last && last.stopReason === "error") {
      void report(ctx, "error", { detail: String(last.errorMessage || "error").slice(0, 500) });
    } else if (last && last.stopReason === "aborted") {
      void report(ctx, "interrupted");
    } else {
      void report(ctx, "idle");
    }
  });
  pi.on("session_shutdown", async (_event: any, ctx: any) => { await report(ctx, "idle", { alive: false }); });
}
"""


# List prices, USD per million tokens: (input, output, cache read, cache write, context window). An
# agent's spec names the prices of the models its vendor sells; one model is priced the same whatever
# agent runs it, matched by the longest prefix of the model name (a date suffix such as -20250929 still matches). Vendors' list
# prices; a user's ui.json "prices" overrides or adds entries: {"model-prefix": {"input": 3,
# "output": 15, "cacheRead": 0.3, "cacheWrite": 3.75, "context": 200000}} (all per million tokens).
# Claude's cache writes are priced at the 5-minute rate (1.25 x input); OpenAI has no cache-write price.
ANTHROPIC_PRICES = {
    "claude-opus-4-5": (5.0, 25.0, 0.5, 6.25, 200000),
    "claude-opus-4-6": (5.0, 25.0, 0.5, 6.25, 200000),
    "claude-opus-4": (15.0, 75.0, 1.5, 18.75, 200000),
    "claude-sonnet-4": (3.0, 15.0, 0.3, 3.75, 200000),
    "claude-3-7-sonnet": (3.0, 15.0, 0.3, 3.75, 200000),
    "claude-haiku-4-5": (1.0, 5.0, 0.1, 1.25, 200000),
    "claude-3-5-haiku": (0.8, 4.0, 0.08, 1.0, 200000),
    # what Claude Code itself charged for it in the lab capture: 24 in + 10 out = $0.000296, and its
    # modelUsage gives contextWindow 1000000
    "claude-opus-5-5": (4.0, 20.0, 0.4, 5.0, 1000000),
}
OPENAI_PRICES = {
    "gpt-5-mini": (0.25, 2.0, 0.025, 0.0, 400000),
    "gpt-5-nano": (0.05, 0.4, 0.005, 0.0, 400000),
    "gpt-5": (1.25, 10.0, 0.125, 0.0, 400000),
    "gpt-5.1-codex-mini": (0.25, 2.0, 0.025, 0.0, 400000),
    "gpt-5.2": (1.75, 14.0, 0.175, 0.0, 400000),
    "gpt-4.1": (2.0, 8.0, 0.5, 0.0, 1047576),
    "o3": (2.0, 8.0, 0.5, 0.0, 200000),
    "o4-mini": (1.1, 4.4, 0.275, 0.0, 200000),
}


# -- where each agent keeps its files (with their environment overrides) ---------------------------

def claude_paths(env):
    return {"home": env.get("CLAUDE_CONFIG_DIR") or os.path.join(home_dir(env), ".claude")}


def codex_paths(env):
    return {"home": env.get("CODEX_HOME") or os.path.join(home_dir(env), ".codex")}


def opencode_paths(env):
    db = env.get("OPENCODE_DB") or os.path.join(xdg_dir("DATA", env), "opencode", "opencode.db")
    return {"home": os.path.dirname(db), "db": db, "config": os.path.join(xdg_dir("CONFIG", env), "opencode")}


def amp_paths(env):
    threads = os.path.join(xdg_dir("DATA", env), "amp", "threads")
    return {"home": os.path.dirname(threads), "threads": threads}


def gemini_paths(env):
    return {"home": os.path.join(env.get("GEMINI_CLI_HOME") or home_dir(env), ".gemini")}


def qwen_paths(env):
    return {"home": os.path.join(home_dir(env), ".qwen")}


def pi_paths(env):
    return {"home": env.get("PI_CODING_AGENT_DIR") or os.path.join(home_dir(env), ".pi", "agent")}


# -- the agents (Amp's formats were not captured: see the Amp parser's note) -------------------------

CLAUDE = AgentSpec(
    name="claude", title="Claude Code", id_pattern=_UUID_RE, paths=claude_paths,
    watch=Watch(kind="claude"),
    process=Process(names=("claude",), via_node=True, one_shot=("-p", "--print")),
    id_flags=("--resume", "-r", "--session-id"),
    hooks=Hooks(states=CLAUDE_HOOK_STATES, notifications=CLAUDE_NOTIFICATIONS, pid_env="CLAUDE_PID"),
    install=HookInstall(file="settings.json", events=CLAUDE_HOOK_EVENTS, entry={"timeout": 5}),
    # conversations live under the project directory (~/.claude/projects/<cwd>): resumed only from there
    resume_args=("{flags}", "--resume", "{id}"), fork_args=("{flags}", "--resume", "{id}", "--fork-session"),
    session_flags=("--resume", "-r", "--session-id"), session_switches=("--continue", "-c", "--fork-session"),
    switches=("--dangerously-skip-permissions", "--verbose", "--debug", "--ide", "--strict-mcp-config",
              "--continue", "-c", "--fork-session", "--print", "-p"),
    prompt_reader=claude_prompt, reply_planner=claude_reply_plan,
    prices=ANTHROPIC_PRICES,
    history=HistoryFormat(dirs=("projects", "*"), name_id=qwen_id_from_name, suffix=".jsonl", reducer=claude_reduce,
                          skip=CLAUDE_BIG_RECORDS, branch=claude_branch, messages=claude_messages, usage=claude_usage,
                          one_shot=(("--output-format", "--input-format", "--max-turns"), ("-p", "--print"))),
)

CODEX = AgentSpec(
    name="codex", title="Codex", id_pattern=_UUID_RE, paths=codex_paths,
    watch=Watch(kind="codex"), open_file=("rollout", codex_id_from_path),
    # its app-server daemon holds rollouts open but is not in a pane
    process=Process(names=("codex",), via_node=True, helpers=("app-server", "exec", "mcp-server")),
    id_commands=("resume", "continue"),
    hooks=Hooks(states=CLAUDE_HOOK_STATES, notifications=CLAUDE_NOTIFICATIONS),
    install=HookInstall(file="hooks.json", events=CODEX_HOOK_EVENTS, entry={"timeout": 5},
                        note="Codex asks to trust new hooks once (or start it with --dangerously-bypass-hook-trust)."),
    resume_args=("{flags}", "resume", "{id}"), fork_args=("{flags}", "fork", "{id}"), resumes_anywhere=True,
    session_switches=("--last",),  # codex's -c is --config: kept
    session_commands=("threads continue", "threads", "resume", "fork"),
    switches=("--full-auto", "--dangerously-bypass-approvals-and-sandbox", "--search", "--oss", "--last",
              "--dangerously-bypass-hook-trust", "--skip-git-repo-check", "--no-daemon"),
    prompt_reader=codex_prompt, reply_planner=codex_reply_plan,
    prices=OPENAI_PRICES,
    history=HistoryFormat(dirs=("sessions", "#", "#", "#"), name_id=codex_id_from_path, reducer=codex_reduce,
                          branch=codex_branch, messages=codex_messages, facts="codex-db", totals=True,
                          one_shot=(("--output-last-message", "-o"), ("--json",))),
)

OPENCODE = AgentSpec(
    name="opencode", title="OpenCode", id_pattern=_OPENCODE_ID_RE, paths=opencode_paths,
    watch=Watch(kind="opencode"),
    process=Process(names=("opencode",), helpers=("run", "serve", "lsp", "acp")),
    id_flags=("-s", "--session"),
    # no hooks: our plugin posts its events (the route is in OPENCODE_PLUGIN)
    install=FileInstall(what="the OpenCode plugin", under="config", path=("plugins", OPENCODE_PLUGIN_NAME),
                        text=OPENCODE_PLUGIN),
    plugin=Plugin(route="/api/opencode-event", status=opencode_plugin_status, thread=opencode_plugin_thread),
    resume_args=("{flags}", "-s", "{id}"), fork_args=("{flags}", "-s", "{id}", "--fork"), resumes_anywhere=True,
    session_flags=("--session", "-s"), session_switches=("--continue", "-c", "--fork"),
    switches=("--continue", "-c", "--print-logs", "--fork"),
    prompt_reader=opencode_prompt, reply_planner=opencode_reply_plan,
    plugin_holds=True,  # and no list prices: its database records the cost of every session
    history=HistoryFormat(kind="opencode-db", under="db", one_shot=(("--format",), ())),
)

AMP = AgentSpec(
    name="amp", title="Amp", id_pattern=_AMP_ID_RE, paths=amp_paths,
    watch=Watch(kind="amp"),
    process=Process(names=("amp",), via_node=True),
    id_commands=("resume", "continue"),
    # Amp keeps threads on its servers: any directory will do (its saved flags are not typed again)
    resume_args=("threads", "continue", "{id}"), resumes_anywhere=True,
    session_switches=("--last",), session_commands=("threads continue", "threads", "resume", "fork"),
    switches=("--dangerously-allow-all", "--last"),
    # no replies: Amp could not be run offline, so its screens were never seen (reply_plan refuses)
    # its models are priced by the list prices of their vendors (the other specs' prices)
    history=HistoryFormat(kind="amp-json", under="threads", name_id=amp_id_from_name, suffix=".json",
                          messages=amp_messages, one_shot=(("--execute", "-x"), ())),
)

GEMINI = AgentSpec(
    name="gemini", title="Gemini CLI", id_pattern=_UUID_RE, paths=gemini_paths,
    watch=ChatFiles(kind="gemini", projects="tmp", chats="chats", reducer=gemini_reduce, name_id=gemini_id_from_path,
                   header_id=True, moved_on=gemini_moved_on),
    # `node …/.bin/gemini` relaunches itself as `node --max-old-space-size=N …/gemini` (the same agent)
    process=Process(names=("gemini",), via_node=True, package="gemini-cli", entry_files=("gemini.js",),
                    one_shot=("-p", "--prompt", "--print"), helpers=("mcp", "extensions", "hooks")),
    id_flags=("--resume", "-r", "--session-id"),
    hooks=Hooks(states=GEMINI_HOOK_STATES, notifications=("ToolPermission",)),
    install=HookInstall(file="settings.json", events=GEMINI_HOOK_EVENTS, entry={"timeout": 5000, "name": "opensessions"},
                        only_if_set_up=True),
    # chats are kept per project (~/.gemini/tmp/<project>): resumed only from that directory
    resume_args=("{flags}", "--resume", "{id}"),
    session_flags=("--resume", "-r", "--session-id", "--session-file", "--prompt-interactive", "-i"),
    switches=("--yolo", "-y", "--sandbox", "-s", "--debug", "-d", "--skip-trust", "--screen-reader"),
    prompt_reader=gemini_prompt, reply_planner=gemini_reply_plan,
    # no list prices known
    history=HistoryFormat(dirs=("tmp", "*", "chats"), name_id=gemini_id_from_path, header_id=True, reducer=gemini_reduce,
                          messages=gemini_messages, facts="gemini-projects",
                          one_shot=(("--prompt", "-p", "--output-format", "-o"), ())),
)

QWEN = AgentSpec(
    name="qwen", title="Qwen Code", id_pattern=_UUID_RE, paths=qwen_paths,
    watch=ChatFiles(kind="qwen", projects="projects", chats="chats", reducer=qwen_reduce, name_id=qwen_id_from_name,
                   moved_on=qwen_moved_on, project_of=claude_project_dir_name),
    process=Process(names=("qwen",), via_node=True, package="qwen-code", entry_files=("cli.js", "cli-entry.js"),
                    one_shot=("-p", "--prompt", "--print"), helpers=("mcp", "extensions", "hooks")),
    id_flags=("--resume", "-r", "--session-id"),
    # its Notification "idle_prompt" comes ~1.7 s after each turn's Stop, and after an Esc that stopped a turn
    hooks=Hooks(states=CLAUDE_HOOK_STATES, notifications=CLAUDE_NOTIFICATIONS, idle_notifications=("idle_prompt",)),
    install=HookInstall(file="settings.json", events=QWEN_HOOK_EVENTS, only_if_set_up=True),  # its default timeout
    # chats are kept per project (~/.qwen/projects/<cwd>): resumed only from that directory
    resume_args=("{flags}", "--resume", "{id}"), fork_args=("{flags}", "--resume", "{id}", "--fork-session"),
    session_flags=("--resume", "-r", "--session-id", "--prompt-interactive", "-i"),
    session_switches=("--continue", "-c"),
    switches=("--yolo", "-y", "--sandbox", "-s", "--debug", "-d", "--continue", "-c"),
    prompt_reader=qwen_prompt, reply_planner=qwen_reply_plan,
    # no list prices known
    history=HistoryFormat(dirs=("projects", "*", "chats"), name_id=qwen_id_from_name, suffix=".jsonl",
                          reducer=qwen_reduce, branch=claude_branch, messages=qwen_messages,
                          one_shot=(("--prompt", "-p", "--output-format", "-o"), ())),
)

PI = AgentSpec(
    name="pi", title="Pi", id_pattern=_UUID_RE, paths=pi_paths,
    watch=ChatFiles(projects="sessions", reducer=pi_reduce, name_id=pi_id_from_path, project_of=pi_cwd_dir_name),
    # Pi sets its process title to `pi` (its argv is overwritten with it)
    process=Process(names=("pi",), via_node=True, package="pi-coding-agent", entry_files=("cli.js",),
                    one_shot=("-p", "--print", "--mode", "--prompt"), helpers=("mcp", "extensions", "hooks")),
    id_flags=("--session",),
    # no hooks: our extension posts to /api/agent-event itself
    install=FileInstall(what="the Pi extension", path=("extensions", PI_EXTENSION_NAME), text=PI_EXTENSION,
                        only_if_set_up=True),
    resume_args=("{flags}", "--session", "{id}"), fork_args=("{flags}", "--fork", "{id}"), resumes_anywhere=True,
    session_flags=("--session", "--fork"), session_switches=("--continue", "-c", "--resume", "-r"),
    switches=("--continue", "-c", "--resume", "-r", "--no-session", "--verbose"),
    prompt_reader=pi_prompt, reply_planner=pi_reply_plan,  # text only: Pi never asks for a permission
    # no list prices: it records its cost
    history=HistoryFormat(dirs=("sessions", "*"), name_id=pi_id_from_path, reducer=pi_reduce, messages=pi_messages,
                          one_shot=(("--mode",), ("-p", "--print"))),
)

AGENT_SPECS = {spec.name: spec for spec in (CLAUDE, CODEX, OPENCODE, AMP, GEMINI, QWEN, PI)}


# -- what the sections ask of the agents as a whole (derived when asked: a spec added later counts) ---

def hook_agents():
    """The agents `opensessions hook AGENT` takes (those with hooks), in the specs' order."""
    return tuple(name for name, spec in AGENT_SPECS.items() if spec.hooks)


def agent_comms():
    """Process names worth reading the arguments of: the agents', and the interpreters that run them."""
    return frozenset(n for spec in AGENT_SPECS.values() for n in spec.process.names) | {"node", "bun"}


# -- what the sections ask of an agent, answered from its spec ----------------------------------------

def agent_paths(environ=None):
    """Where each agent keeps its files: {agent: {"home": …, …}} (its spec's paths)."""
    env = os.environ if environ is None else environ
    return {name: spec.paths(env) for name, spec in AGENT_SPECS.items()}


def valid_thread_id(agent, thread_id):
    """True when thread_id has the shape that agent's resume command takes."""
    spec = AGENT_SPECS.get(agent)
    return bool(spec and isinstance(thread_id, str) and spec.id_pattern.match(thread_id))


def _node_flags_end(args):
    """Where node's own flags end in `node [flags] script …` (Gemini relaunches itself with
    --max-old-space-size=…, Qwen Code with --expose-gc)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1
    return i


def _live_run(spec, args):
    """The agent runs for the user with these arguments: not a one-shot, not a helper."""
    return not set(spec.process.one_shot).intersection(args) and not (args and args[0] in spec.process.helpers)


def _node_script_agent(script):
    """The agent whose script node runs: …/<agent> (its .bin link), or its package's own file."""
    base = os.path.basename(script)
    for spec in AGENT_SPECS.values():
        p = spec.process
        if p.via_node and (base in p.names or (base in p.entry_files and p.package in script.split("/")[:-1])):
            return spec
    return None


def classify_agent_process(comm, args):
    """Which agent a process is -> its name, or None.

    Look-alikes are not agents: one-shots (`claude -p`), helper runs (`opencode run`, Codex's
    app-server daemon, which is not in a pane), language servers. Codex's node wrapper and its
    native child are both 'codex' (the caller keeps the top-most one per pane)."""
    if len(args) >= 2 and os.path.basename(args[0]) in ("sh", "bash", "dash") and \
            os.path.basename(args[1]) in AGENT_SPECS:
        args = args[1:]  # a script named like the agent, run by its #! shell: its own argv follows
    argv0 = os.path.basename(args[0]) if args else ""
    rest = list(args[1:]) if args else []
    names = {comm, argv0}
    for spec in AGENT_SPECS.values():
        if names.intersection(spec.process.names):
            return spec.name if _live_run(spec, rest) else None
    if names.intersection(("node", "bun")):
        i = _node_flags_end(rest)
        spec = _node_script_agent(rest[i]) if i < len(rest) else None
        if spec is not None:
            return spec.name if _live_run(spec, rest[i + 1:]) else None
    return None


def agent_resume_id_from_args(agent, args):
    """A conversation id given on the command line (--resume ID, -s ID, resume ID …), validated."""
    spec = AGENT_SPECS.get(agent)
    if spec is None:
        return None
    rest = list(args[1:]) if args else []
    if args and os.path.basename(args[0]) in ("node", "bun"):
        rest = rest[_node_flags_end(rest):]  # node's flags before the script
    if rest and (os.path.basename(rest[0]) in spec.process.names or os.path.basename(rest[0]) in spec.process.entry_files):
        rest = rest[1:]  # the script node runs
    candidates = []
    for i, a in enumerate(rest):
        for f in spec.id_flags:
            if a == f and i + 1 < len(rest):
                candidates.append(rest[i + 1])
            elif a.startswith(f + "=") and f.startswith("--"):
                candidates.append(a[len(f) + 1:])
        if a in spec.id_commands and i + 1 < len(rest):
            candidates.append(rest[i + 1])
    for c in candidates:
        if valid_thread_id(agent, c):
            return c
    return None


def conversation_args(agent, thread_id, flags=(), fork=False):
    """The arguments after the agent's program that resume conversation thread_id (or, with fork, start
    a new one from its history), the given flags kept. -> list of words, or None when the agent cannot
    do it (or no fork form is known). The id must be valid_thread_id (it is typed into a shell)."""
    spec = AGENT_SPECS.get(agent)
    template = (spec.fork_args if fork else spec.resume_args) if spec else None
    if not template:
        return None
    words = []
    for word in template:
        words.extend(flags if word == "{flags}" else [thread_id] if word == "{id}" else [word])
    return words


def reply_plan(agent, action, screen_esc, text=None):
    """The steps that answer `action` on this agent's screen (captured with -e), from its spec's reply
    planner: [("keys", [tmux key names]) | ("literal", text) | ("paste", text: one bracketed paste) |
    ("hold", seconds, description, predicate(screen)) | ("expect", description, predicate(screen_esc)
    [, settle seconds[, timeout seconds]]) | ("answer", what the answer does, in the agent's words) |
    ("answer-from-screen", screen -> those words, read from the last screen seen)].
    Raises ReplyRefused with the reason when the screen does not show the prompt the action answers."""
    if action not in REPLY_ACTIONS:
        raise ReplyRefused("unknown action %r (one of %s)" % (action, ", ".join(REPLY_ACTIONS)), 0)
    if action == "text":
        text = check_reply_text(text)
    spec = AGENT_SPECS.get(agent)
    if spec is None or spec.reply_planner is None:
        raise ReplyRefused("replying to %s is not supported: its screens were never seen (it could not be run "
                           "here), so nothing is typed into it" % (spec.title if spec else agent), 0)
    return spec.reply_planner(action, screen_esc, text)


def list_prices():
    """Every agent's list prices (its spec's prices) in one table {model prefix: (input, …)}."""
    table = {}
    for spec in AGENT_SPECS.values():
        table.update(spec.prices)
    return table


def model_price(model, prices=None):
    """The price entry for a model -> dict of PRICE_FIELDS, or None when unknown. The user's prices
    win over the built-in table; both match by the longest prefix (case-insensitive)."""
    if not isinstance(model, str) or not model:
        return None
    name = model.lower()
    listed = list_prices()
    for table in (prices or {}, listed):
        best = None
        for prefix in table:
            if name.startswith(prefix.lower()) and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is not None:
            entry = table[best]
            if isinstance(entry, tuple):
                return dict(zip(PRICE_FIELDS, entry))
            base = model_price(model) if table is not listed else None  # a partial override keeps the rest
            merged = dict(base or {})
            merged.update(entry)
            return merged
    return None


def usage_json(raw, model=None, prices=None):
    """Raw usage -> the /state shape {"input", "output", "cacheRead", "cacheWrite", "cost",
    "contextPct"} (+ "partial": true when only part of the history was read), or None.

    cost: the agent's own figure where it records one, else tokens x the price table, else None
    (unknown model: tokens only). contextPct: the newest call's context over the window the agent
    reports, else the table's window for the model, else None."""
    if not isinstance(raw, dict):
        return None
    out = {k: token_count(raw.get(k)) for k in USAGE_KEYS}
    price = model_price(model, prices)
    cost = raw.get("cost")
    if as_number(cost) is not None:
        out["cost"] = round(float(cost), 6)
    elif price is not None:
        out["cost"] = round(sum(out[k] * float(price.get(k) or 0) for k in USAGE_KEYS) / 1e6, 6)
    else:
        out["cost"] = None
    window = raw.get("contextWindow") or (price or {}).get("context")
    used = raw.get("contextTokens")
    if as_number(window, low=1) is not None and as_number(used) is not None:
        out["contextPct"] = int(min(100, max(0, round(100.0 * used / window))))
    else:
        out["contextPct"] = None
    if raw.get("partial"):
        out["partial"] = True
    return out


def usage_total(usages):
    """Sum of /state usages (a session's total): tokens, and the cost of those that have one."""
    usages = [u for u in usages if isinstance(u, dict)]
    if not usages:
        return None
    out = {k: sum(token_count(u.get(k)) for u in usages) for k in USAGE_KEYS}
    costs = [u["cost"] for u in usages if as_number(u.get("cost")) is not None]
    out["cost"] = round(sum(costs), 6) if costs else None
    out["contextPct"] = None
    if any(u.get("partial") for u in usages) or (costs and len(costs) < len(usages)):
        out["partial"] = True  # some history unread, or some thread's cost unknown
    return out


_JSON_WS = LazyPattern(r"[ \t\n\r]*")
CUT_STRING_KEEP = 64 * 1024  # of a string value cut by the end of the input, this much is kept


def json_object_prefix(raw):
    """The members of a JSON object whose text was cut short (a hook's stdin past its cap):
    {key: value} for each top-level member read whole before the cut, and the start of a string
    value the cut fell inside (the cut member is the last one). -> dict ({} when raw does not
    start an object). Pure."""
    text = raw.decode("utf-8", "ignore") if isinstance(raw, bytes) else raw
    decoder = json.JSONDecoder(strict=False)
    out = {}
    pos = _JSON_WS.match(text, 0).end()
    if text[pos:pos + 1] != "{":
        return out
    pos += 1
    while True:
        pos = _JSON_WS.match(text, pos).end()
        if text[pos:pos + 1] != '"':
            break
        try:
            key, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break
        pos = _JSON_WS.match(text, pos).end()
        if text[pos:pos + 1] != ":":
            break
        pos = _JSON_WS.match(text, pos + 1).end()
        try:
            value, pos = decoder.raw_decode(text, pos)
        except (ValueError, RecursionError):
            if text[pos:pos + 1] == '"':
                cut = _json_string_start(text[pos + 1:pos + 1 + CUT_STRING_KEEP], decoder)
                if cut is not None:
                    out[key] = cut
            break
        out[key] = value
        pos = _JSON_WS.match(text, pos).end()
        if text[pos:pos + 1] != ",":
            break
        pos += 1
    return out


def _json_string_start(body, decoder):
    """The text of a JSON string whose closing quote was cut off: body is what follows its opening
    quote (an escape cut in half at the end is dropped). -> str, or None."""
    for drop in range(0, 7):
        part = body[:len(body) - drop] if drop else body
        if part.endswith("\\") and (len(part) - len(part.rstrip("\\"))) % 2:
            continue  # ends inside an escape
        try:
            value, end = decoder.raw_decode('"' + part + '"')
        except ValueError:
            continue
        if end == len(part) + 2:
            return value
    return None


def hook_event(agent, payload, environ=None):
    """Map an agent's hook payload (stdin JSON) to an /api/agent-event body, or None (an event that
    changes nothing, or a payload that is not the agent's). What each event says is in the agent's
    spec (Hooks): hook_event_name, session_id, cwd, and per event prompt / tool_name / error /
    notification_type."""
    spec = AGENT_SPECS.get(agent)
    env = os.environ if environ is None else environ
    if spec is None or spec.hooks is None or not isinstance(payload, dict):
        return None
    name = payload.get("hook_event_name")
    sid = payload.get("session_id")
    if not isinstance(name, str) or not valid_thread_id(agent, sid):
        return None
    says = spec.hooks.states.get(name)
    status, detail, alive = None, None, None
    if says in ("idle", "running"):
        status = says
    elif says == "prompt":
        status = "running"
    elif says == "permission":
        status = "waiting"
        tool = payload.get("tool_name")
        detail = "permission: %s" % tool if isinstance(tool, str) else "permission"
    elif says == "notification" and payload.get("notification_type") in spec.hooks.idle_notifications:
        status = "idle"  # at its prompt: the server ends a turn still under way as interrupted
    elif says == "notification":
        if payload.get("notification_type") not in spec.hooks.notifications:
            return None  # idle reminders and the like are not a change of state
        status = "waiting"
        detail = str(payload.get("message") or "permission")[:MAX_LOG_MESSAGE]
    elif says == "error":
        status = "error"
        detail = str(payload.get("last_assistant_message") or payload.get("error") or "error")[:MAX_LOG_MESSAGE]
    elif says == "end":
        status, alive = "idle", False
    else:
        return None
    body = {"agent": agent, "status": status, "threadId": sid, "source": "hook"}
    if says == "notification" and status == "idle":
        body["idlePrompt"] = True
    if detail:
        body["detail"] = detail
    if alive is False:
        body["alive"] = False
    if isinstance(payload.get("cwd"), str):
        body["projectDir"] = payload["cwd"]
    if isinstance(payload.get("model"), str):
        body["model"] = payload["model"]
    pane = env.get("TMUX_PANE")
    if pane and re.match(r"^%\d+$", pane):
        body["paneId"] = pane
    pid = as_number(env.get(spec.hooks.pid_env), None, int, low=1, text=True) if spec.hooks.pid_env else None
    if pid:
        body["pid"] = pid
    if says == "prompt" and isinstance(payload.get("prompt"), str):
        body["prompt"] = payload["prompt"][:MAX_LOG_MESSAGE]
    return {k: clean_str(v) for k, v in body.items()}  # an emoji cut in half must not fail the request


##############################################################################
# tmux gateway: the one place that runs tmux
##############################################################################

PANE_FIELDS = (
    ("session_id", "session_id"), ("session_name", "session_name"),
    ("session_created", "session_created"), ("window_id", "window_id"),
    ("window_index", "window_index"), ("window_name", "window_name"),
    ("window_active", "window_active"), ("pane_id", "pane_id"), ("pane_index", "pane_index"),
    ("pane_pid", "pane_pid"), ("pane_tty", "pane_tty"), ("pane_current_path", "pane_current_path"),
    ("pane_current_command", "pane_current_command"), ("pane_title", "pane_title"),
    ("pane_active", "pane_active"), ("pane_width", "pane_width"), ("pane_height", "pane_height"),
    ("sidebar", "@opensessions-sidebar"), ("window_width", "window_width"),
    ("sidebar_window", "@opensessions-window"), ("pane_left", "pane_left"), ("pane_top", "pane_top"),
    ("window_height", "window_height"), ("sidebar_asleep", "@opensessions-asleep"),
)
CLIENT_FIELDS = (
    ("client_name", "client_name"), ("client_tty", "client_tty"),
    ("client_control_mode", "client_control_mode"), ("client_pid", "client_pid"),
    ("session_id", "session_id"), ("session_name", "session_name"), ("window_id", "window_id"),
    ("pane_id", "pane_id"), ("client_activity", "client_activity"), ("client_flags", "client_flags"),
)
# Every field is length-prefixed ('<bytes>:<value>'; tmux's n: modifier counts bytes): a cwd or a
# command line may hold '\n' or FS, and must neither drop a pane nor forge one.
PANES_FORMAT = "P" + "".join("#{n:%s}:#{%s}" % (f, f) for _, f in PANE_FIELDS)
CLIENTS_FORMAT = "C" + "".join("#{n:%s}:#{%s}" % (f, f) for _, f in CLIENT_FIELDS)
# Evaluated inside tmux, at most once a second, reported only when it changes: this is how the
# server learns about cwd and command changes, and about layout changes in sessions other than the
# one its control client is attached to (%layout-change covers only that one), without polling.
# Control characters in a command or cwd become '?' (a '\n' would cut the notification line).
_NO_CTRL = "s/[\x01-\x1f\x7f]/?/:"
SUBSCRIPTION_FORMAT = ("#{S:#{W:#{P:#{pane_id}=#{pane_pid}=#{%spane_current_command}=#{%spane_current_path}"
                       "=#{pane_width}x#{pane_height}+#{pane_left}+#{pane_top};}}}" % (_NO_CTRL, _NO_CTRL))


def tmux_literal(text):
    """A user-controlled string for a tmux argument that tmux expands as a format (new-session -s
    and -c, split-window -c, display-message text, run-shell commands): '#' becomes '##', so
    '#(cmd)' runs nothing and '#[fg=red]' styles nothing."""
    return str(text).replace("#", "##")


class TmuxText(str):
    """An argument that is text (keys to type), never the command separator: even a lone ';' in
    it is escaped by tmux_arg."""


def tmux_arg(arg):
    """One argv element for tmux: an argument ending in ';' would end the command there (tmux then
    runs the rest as another command), so its ';' is escaped; a lone ';' stays the separator,
    unless it is TmuxText."""
    text = isinstance(arg, TmuxText)
    arg = str(arg)
    return arg[:-1] + "\\;" if arg.endswith(";") and (arg != ";" or text) else arg


# Control-mode notifications that a client now shows another window (its sidebar must follow).
SWITCH_EVENTS = ("session-window-changed", "client-session-changed")


class TmuxError(Exception):
    pass


class TmuxGone(TmuxError):
    """The tmux server is not running (any more)."""


def tmux_record_format(kind, fields):
    """A tmux -F format for one record: kind, then each field as '<bytes>:<value>'."""
    return kind + "".join("#{n:%s}:#{%s}" % (f, f) for f in fields)


def read_tmux_records(output, counts):
    """Records of length-prefixed fields (PANES_FORMAT, tmux_record_format), one per line, from tmux's
    raw output -> [(kind, [field text, ...])]. A value cannot split or forge a record; a line that is
    not such a record is skipped whole."""
    data = output if isinstance(output, bytes) else output.encode("utf-8", "surrogateescape")
    out = []
    pos, end = 0, len(data)
    while pos < end:
        kind = data[pos:pos + 1].decode("latin-1")
        fields = []
        p = pos + 1
        if kind in counts:
            try:
                for _ in range(counts[kind]):
                    colon = data.index(b":", p, p + 12)
                    if not data[p:colon].isdigit():
                        raise ValueError("no length")
                    size = int(data[p:colon])
                    if colon + 1 + size > end:
                        raise ValueError(size)
                    fields.append(data[colon + 1:colon + 1 + size].decode("utf-8", "replace"))
                    p = colon + 1 + size
                if data[p:p + 1] not in (b"\n", b""):
                    raise ValueError("trailing bytes")
            except ValueError:
                fields = None
            if fields is not None:
                out.append((kind, fields))
                pos = p + 1
                continue
        nl = data.find(b"\n", pos)
        pos = end if nl < 0 else nl + 1
    return out


def parse_snapshot(output):
    """Parse the output of PANES_FORMAT and CLIENTS_FORMAT lines -> (sessions, clients).

    sessions: list of dicts in /state shape (without derived fields); clients: list of dicts.
    Control-mode clients are returned with 'control': True so callers can hide them.
    """
    sessions = {}
    order = []
    clients = []
    for kind, values in read_tmux_records(output, {"P": len(PANE_FIELDS), "C": len(CLIENT_FIELDS)}):
        if kind == "P":
            row = dict(zip((k for k, _ in PANE_FIELDS), values))
            sid = row["session_id"]
            s = sessions.get(sid)
            if s is None:
                s = {"id": sid, "name": row["session_name"], "created": as_number(row["session_created"], 0, int, text=True),
                     "attached": 0, "windows": [], "_win": {}}
                sessions[sid] = s
                order.append(sid)
            w = s["_win"].get(row["window_id"])
            if w is None:
                w = {"id": row["window_id"], "index": as_number(row["window_index"], 0, int, text=True),
                     "name": row["window_name"], "active": row["window_active"] == "1",
                     "width": as_number(row["window_width"], 0, int, text=True), "height": as_number(row["window_height"], 0, int, text=True), "panes": []}
                s["_win"][row["window_id"]] = w
                s["windows"].append(w)
            w["panes"].append({
                "id": row["pane_id"], "index": as_number(row["pane_index"], 0, int, text=True), "pid": as_number(row["pane_pid"], 0, int, text=True),
                "tty": row["pane_tty"], "cwd": row["pane_current_path"],
                "command": row["pane_current_command"], "title": row["pane_title"],
                "active": row["pane_active"] == "1", "width": as_number(row["pane_width"], 0, int, text=True),
                "height": as_number(row["pane_height"], 0, int, text=True), "sidebar": row["sidebar"] == "1",
                "sidebarWindow": row["sidebar_window"] or None, "left": as_number(row["pane_left"], 0, int, text=True),
                "top": as_number(row["pane_top"], 0, int, text=True), "sidebarAsleep": row["sidebar_asleep"] == "1",
            })
        elif kind == "C":
            row = dict(zip((k for k, _ in CLIENT_FIELDS), values))
            clients.append({
                "name": row["client_name"], "tty": row["client_tty"],
                "control": row["client_control_mode"] == "1", "pid": as_number(row["client_pid"], 0, int, text=True),
                "sessionId": row["session_id"], "session": row["session_name"],
                "window": row["window_id"], "pane": row["pane_id"],
                "activity": as_number(row["client_activity"], 0, int, text=True),
                "noOutput": "no-output" in row["client_flags"].split(","),
            })
    result = []
    for sid in order:
        s = sessions[sid]
        del s["_win"]
        s["attached"] = sum(1 for c in clients if c["sessionId"] == sid and not c["control"])
        active = [w for w in s["windows"] if w["active"]] or s["windows"][:1]
        pane = None
        if active:
            panes = [p for p in active[0]["panes"] if not p["sidebar"]] or active[0]["panes"]
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


def command_output(proc, timeout, grace=0.5, clock=time.monotonic):
    """(stdout, stderr) bytes of a tmux command client, done when the client exits rather than when
    its pipes close: a client passes its stdio to the tmux server, which closes its copies only once
    it handles the client's leaving (on a loaded machine that was seen to take over 10 s after the
    client had exited 0 with its output written). Its pipes are read until they close or for
    `grace` seconds after the exit. A client still running after `timeout` seconds is killed and
    subprocess.TimeoutExpired raised."""
    import subprocess
    deadline, exited = clock() + timeout, None
    while True:
        try:
            return proc.communicate(timeout=0.1)
        except subprocess.TimeoutExpired as e:
            now = clock()
            if proc.poll() is not None:
                exited = exited or now
                if now - exited >= grace:
                    proc.stdout.close()
                    proc.stderr.close()
                    return e.output or b"", e.stderr or b""
            elif now > deadline:
                proc.kill()
                proc.communicate()
                raise


class Tmux(object):
    """Gateway to one tmux server: every tmux command goes through run()."""

    def __init__(self, socket_path, tmux_bin="tmux"):
        self.socket_path = socket_path
        self.tmux_bin = tmux_bin

    def argv(self, *args):
        return [self.tmux_bin, "-S", self.socket_path] + [tmux_arg(a) for a in args]

    def run(self, *args, **kw):
        """Run one tmux command (or several joined by ';'); -> stdout text (bytes with raw=True).
        Raises TmuxError/TmuxGone."""
        import subprocess
        timeout = kw.get("timeout", 5.0)
        try:
            proc = subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except FileNotFoundError:
            raise TmuxError("tmux is not installed (no %r on PATH)" % self.tmux_bin)
        try:
            out, err = command_output(proc, timeout)
        except subprocess.TimeoutExpired:
            raise TmuxError("tmux %s timed out" % (args[0] if args else ""))
        err = err.decode("utf-8", "replace").strip()
        if proc.returncode == 0 and kw.get("raw"):
            return out
        if proc.returncode != 0:
            if ("no server running" in err or "error connecting to" in err
                    or "No such file or directory" in err and self.socket_path in err):
                raise TmuxGone(err or "no tmux server")
            raise TmuxError(err or "tmux %s failed (exit %d)" % (args[0] if args else "", proc.returncode))
        return out.decode("utf-8", "replace")

    def spawn(self, *args):
        """Start one tmux command without waiting for it (display-popup returns only when its popup
        closes)."""
        import subprocess
        try:
            subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise TmuxError("cannot run tmux: %s" % e)

    def alive(self):
        try:
            self.run("list-sessions", "-F", "#{session_id}")
            return True
        except TmuxGone:
            return False
        except TmuxError:
            return True

    def instance(self):
        """Which tmux server this is ("pid:start time"): pane ids start again at %0 in a new
        server on the same socket, so a pane id means nothing across instances. None if unknown."""
        try:
            out = self.run("display-message", "-p", "#{pid}:#{start_time}").strip()
        except TmuxError:
            return None
        return out if re.match(r"^[0-9]+:[0-9]+$", out) else None

    def snapshot(self):
        """One tmux process for the whole state: all panes plus all clients."""
        out = self.run("list-panes", "-a", "-F", PANES_FORMAT, ";", "list-clients", "-F", CLIENTS_FORMAT, raw=True)
        return parse_snapshot(out)

    def control_argv(self):
        # no-output: no pane output; ignore-size: does not shrink windows; read-only: types nothing.
        return self.argv("-C", "attach-session", "-f", "no-output,ignore-size,read-only")

    def version(self):
        """tmux's version ("3.3a"), from the server, else from `tmux -V` (no server yet). '' if unknown."""
        import subprocess
        try:
            version = self.run("display-message", "-p", "#{version}").strip()
        except TmuxError:
            version = ""
        if version and "version" not in version:
            return version
        try:
            out = subprocess.run([self.tmux_bin, "-V"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, timeout=5).stdout.decode("utf-8", "replace")
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.strip().rpartition(" ")[2]


def exec_tmux(*args, **kw):
    """Replace this process with tmux on the default server (outside tmux: `opensessions` starts or
    attaches its session). The one tmux run that has no socket yet."""
    import shutil
    tmux_bin = kw.get("tmux_bin", "tmux")
    if not shutil.which(tmux_bin):
        raise OpensessionsError("tmux is not installed")
    os.execvp(tmux_bin, [tmux_bin] + [tmux_arg(a) for a in args])


def _tmux_option(tmux, name):
    try:
        return tmux.run("show-option", "-gqv", name).rstrip("\n")
    except TmuxError:
        return ""


def read_tmux_options(tmux, defaults=None):
    """Our @opensessions-* options in one tmux call (it works before any session exists), the
    default for those not set. -> {name: value}"""
    defaults = TMUX_OPTIONS if defaults is None else defaults
    names = sorted(defaults)
    fmt = "\x1f".join("#{%s}" % n for n in names)
    try:
        out = tmux.run("display-message", "-p", fmt).rstrip("\n").split("\x1f")
    except TmuxError:
        out = []
    if len(out) != len(names):
        out = [_tmux_option(tmux, n) for n in names]
    return {n: (v or defaults[n]) for n, v in zip(names, out)}


# Width, side and theme default to "" (unset): only what ~/.tmux.conf sets is applied over ui.json.
TMUX_OPTIONS = {"@opensessions-key": "o", "@opensessions-width": "",
                "@opensessions-position": "", "@opensessions-theme": "", "@opensessions-port": "",
                "@opensessions-focus-key": "", "@opensessions-index-keys": "off", "@opensessions-resurrect": "on",
                "@opensessions-notify": "", "@opensessions-notify-on": "", "@opensessions-popup-key": "g",
                "@opensessions-history-key": "r", "@opensessions-hosts": ""}


##############################################################################
# System probes: processes, ports, git
##############################################################################

class Proc(object):
    __slots__ = ("pid", "ppid", "comm", "start", "args")

    def __init__(self, pid, ppid, comm, start=0, args=None):
        self.pid = pid
        self.ppid = ppid
        self.comm = comm
        self.start = start
        self.args = args


def read_proc_stat(path):
    """parse_proc_stat of the file at path. os.read, not open(): a process table reads one per
    process, and a text file object costs three times the read itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    return parse_proc_stat(data.decode("utf-8", "replace"))


def parse_proc_stat(data):
    """Parse /proc/<pid>/stat -> (pid, comm, ppid, starttime). comm may contain spaces and ')'."""
    left = data.index("(")
    right = data.rindex(")")
    pid = int(data[:left].strip())
    comm = data[left + 1:right]
    fields = data[right + 2:].split(" ")
    return pid, comm, int(fields[1]), int(fields[19])


def process_start(pid, proc_root="/proc"):
    """A process's start time (clock ticks since boot, as /proc/<pid>/stat has it): None without
    /proc (macOS), -1 when the process is gone."""
    if not os.path.isdir(os.path.join(proc_root, "self")):
        return None
    try:
        return read_proc_stat(os.path.join(proc_root, str(pid), "stat"))[3]
    except (OSError, ValueError, IndexError):
        return -1


def process_start_stamp(pid, proc_root="/proc"):
    """What tells this process from a later one with its pid: its start time from /proc (clock
    ticks since boot, an int), else `ps -o lstart=` in the C locale (a string), else None."""
    start = process_start(pid, proc_root)
    if start is not None:
        return start if start >= 0 else None
    import subprocess
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=5,
                             env=dict(os.environ, LC_ALL="C")).stdout.decode("utf-8", "replace").strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def claude_registry_alive(entry, proc_root="/proc"):
    """The registry's process still runs and is the same process (procStart matches)."""
    pid = entry["pid"]
    return claude_registry_matches(entry, _pid_alive(pid), process_start(pid, proc_root))


def run_text(argv, timeout=5.0):
    """stdout of a command as text. Raises OSError when it cannot run or times out (the probes'
    default runner; tests inject their own `ps` and `lsof`)."""
    import subprocess
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        raise OSError("%s timed out" % argv[0])
    return out.decode("utf-8", "replace")


def which_in(name, path):
    """shutil.which(name, path=path) for a plain command name (importing shutil costs a save ~5 ms):
    the first executable file of that name in the PATH string's directories, or None."""
    for d in path.split(os.pathsep):
        candidate = os.path.join(d, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def process_table(proc_root="/proc", run=run_text):
    """{pid: Proc} for every process: one read of /proc on Linux, one `ps` elsewhere."""
    table = {}
    if os.path.isdir(os.path.join(proc_root, "self")):
        for name in os.listdir(proc_root):
            if not name.isdigit():
                continue
            try:
                pid, comm, ppid, start = read_proc_stat(os.path.join(proc_root, name, "stat"))
            except (OSError, ValueError, IndexError):
                continue
            table[pid] = Proc(pid, ppid, comm, start)
        return table
    try:
        out = run(["ps", "-axo", "pid=,ppid=,comm="])
    except OSError as e:
        log("ps failed (%s): no process table" % e)
        return table
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = Proc(int(parts[0]), int(parts[1]), os.path.basename(parts[2]))
    return table


def process_args(pid, proc_root="/proc", run=run_text):
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
    try:
        return shlex.split(run(["ps", "-o", "args=", "-p", str(pid)]).strip())
    except (OSError, ValueError):  # gone, or args shlex cannot split (an unbalanced quote)
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


def parse_inet_diag(data):
    """Parse a NETLINK_SOCK_DIAG dump -> ({inode: port} of loopback/any listeners, done)."""
    import struct
    found, pos, done = {}, 0, False
    while pos + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, pos)
        if length < 16:
            break
        if kind == 3:  # NLMSG_DONE
            done = True
        elif kind == 2:  # NLMSG_ERROR
            raise OSError("sock_diag error")
        elif length >= 16 + 72:
            family = data[pos + 16]
            sport = struct.unpack_from(">H", data, pos + 16 + 4)[0]
            src = data[pos + 16 + 8:pos + 16 + 24]
            inode = struct.unpack_from("=I", data, pos + 16 + 68)[0]
            if family == 2:
                ok = src[:4] == b"\0\0\0\0" or src[0] == 127
            else:
                ok = src == b"\0" * 16 or src == b"\0" * 15 + b"\1" or (src[:12] == b"\0" * 10 + b"\xff\xff" and src[12] == 127)
            if ok and inode:
                found[inode] = sport
        pos += (length + 3) & ~3
    return found, done


def listening_sockets_netlink():
    """{inode: port} of listening TCP sockets through netlink sock_diag: the kernel filters by state,
    so this costs microseconds where reading /proc/net/tcp walks every socket (milliseconds)."""
    import socket
    import struct
    found = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as s:  # NETLINK_SOCK_DIAG
        s.settimeout(1.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 1 << 10) + b"\0" * 48  # TCP_LISTEN
            s.sendto(struct.pack("=IHHII", 16 + len(req), 20, 0x301, seq, 0) + req, (0, 0))
            while True:
                part, done = parse_inet_diag(s.recv(65536))
                found.update(part)
                if done:
                    break
    return found


def listening_sockets(proc_root="/proc"):
    """{inode: port} of localhost-reachable listening TCP sockets (Linux)."""
    if proc_root == "/proc":
        try:
            return listening_sockets_netlink()
        except (OSError, AttributeError, ValueError):  # no sock_diag here (a container, an old kernel)
            pass  # /proc/net below answers the same, slower
    found = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_root, "net", name), "r") as f:
                found.update(parse_proc_net_tcp(f.read()))
        except OSError:  # tcp6 is missing where IPv6 is off
            pass
    return found


def parse_inet_diag_uid(data):
    """The owner uid in a NETLINK_SOCK_DIAG answer about one socket; None if it names none."""
    import struct
    if len(data) >= 16 + 72:
        length, kind = struct.unpack_from("=IH", data, 0)
        if kind == 20 and length >= 16 + 72:  # SOCK_DIAG_BY_FAMILY: an inet_diag_msg
            return struct.unpack_from("=I", data, 16 + 64)[0]
    return None


def tcp_peer_uid(peer, local, proc_root="/proc"):
    """The uid owning the loopback TCP socket at `peer` (ip, port) connected to `local` (ip, port),
    from netlink sock_diag (one exact lookup, microseconds), else /proc/net/tcp; None when this
    system tells neither (not Linux)."""
    import socket
    import struct
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as s:  # NETLINK_SOCK_DIAG
            s.settimeout(1.0)
            sock_id = struct.pack(">HH", peer[1], local[1]) + socket.inet_aton(peer[0]) + b"\0" * 12 \
                + socket.inet_aton(local[0]) + b"\0" * 12 + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
            req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sock_id
            s.sendto(struct.pack("=IHHII", 16 + len(req), 20, 1, 1, 0) + req, (0, 0))  # NLM_F_REQUEST
            uid = parse_inet_diag_uid(s.recv(65536))
            if uid is not None:
                return uid
    except (OSError, AttributeError, ValueError, struct.error):
        pass
    want_local = "%s:%04X" % (socket.inet_aton(peer[0])[::-1].hex().upper(), peer[1])
    want_remote = "%s:%04X" % (socket.inet_aton(local[0])[::-1].hex().upper(), local[1])
    try:
        with open(os.path.join(proc_root, "net", "tcp"), "r") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 7 and parts[1] == want_local and parts[2] == want_remote:
                    return int(parts[7])
    except (OSError, ValueError):
        pass
    return None


def fd_targets(pid, proc_root="/proc"):
    """What a process holds open: the targets of its /proc/<pid>/fd links ([] when unreadable)."""
    fd_dir = os.path.join(proc_root, str(pid), "fd")
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return []
    targets = []
    for fd in names:
        try:
            targets.append(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:  # closed meanwhile
            continue
    return targets


def socket_inodes(pid, proc_root="/proc"):
    """Socket inodes a process holds open (from /proc/<pid>/fd links)."""
    return {int(t[8:-1]) for t in fd_targets(pid, proc_root)
            if t.startswith("socket:[") and t.endswith("]") and t[8:-1].isdigit()}


def ports_for_pids(pid_groups, proc_root="/proc", listening=None, run=run_text):
    """{group: sorted ports} for groups of pids (a group = processes under one session's panes)."""
    if os.path.isdir(os.path.join(proc_root, "self")):
        if listening is None:
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
    return _ports_lsof(pid_groups, run)


def _ports_lsof(pid_groups, run=run_text):
    """macOS and other systems without /proc: lsof, when it is on PATH."""
    pid_to_group = {}
    for group, pids in pid_groups.items():
        for pid in pids:
            pid_to_group[pid] = group
    if not pid_to_group:
        return {}
    try:
        out = run(["lsof", "-nP", "-a", "-iTCP", "-sTCP:LISTEN", "-Fpn", "-p", ",".join(str(p) for p in pid_to_group)])
    except OSError:  # no lsof here: no ports
        return {}
    result = {}
    current = None
    for line in out.splitlines():
        if line.startswith("p"):
            current = pid_to_group.get(as_number(line[1:], -1, int, text=True))
        elif line.startswith("n") and current is not None:
            host, _, port = line[1:].rpartition(":")
            if host in ("*", "127.0.0.1", "[::1]", "localhost", "[::]") and port.isdigit():
                result.setdefault(current, set()).add(int(port))
    return {g: sorted(p) for g, p in result.items()}


class SystemProbes(object):
    """What the server asks the system about processes and sockets, in one injectable place:
    Linux reads /proc (proc_root); without it (macOS) `ps` and `lsof` answer through `run`."""

    def __init__(self, proc_root="/proc", run=run_text):
        self.proc_root = proc_root
        self.run = run
        self.has_proc = os.path.isdir(os.path.join(proc_root, "self"))

    def processes(self):
        return process_table(self.proc_root, self.run)

    def args(self, pid):
        return process_args(pid, self.proc_root, self.run)

    def listening(self):
        """{inode: port} of listening sockets, or None where ports come from lsof instead."""
        return listening_sockets(self.proc_root) if self.has_proc else None

    def ports(self, pid_groups, listening=None):
        return ports_for_pids(pid_groups, self.proc_root, listening, self.run)

    def open_files(self, pid):
        return fd_targets(pid, self.proc_root) if self.has_proc else []


def find_git_dir(path):
    """-> (worktree root, git dir) for path, following `gitdir:` files; (None, None) outside git."""
    path = os.path.abspath(path) if path else None
    while path:
        dotgit = os.path.join(path, ".git")
        if os.path.isdir(dotgit):
            return path, dotgit
        if os.path.isfile(dotgit):
            try:
                content = read_foreign(dotgit, 4096, whole=False).decode("utf-8", "replace").strip()
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
        head = read_foreign(os.path.join(git_dir, "HEAD"), 4096, whole=False).decode("utf-8", "replace").strip()
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
# Client: how a command reaches the server, and the commands that need nothing more
##############################################################################
# The runtime file and lock (which server runs for this tmux server, on which port), a tiny HTTP
# client, and the commands that only post, switch or report a hook, with their arguments parsed
# without argparse (run_client). The .pyz runs the sections down to this one for them
# (build_zipapp.py): a hook or a key binding never loads the rest of the module.


TOKEN_HEADER = "X-Opensessions-Token"


def token_header(token):
    """The header line carrying the runtime file's token ('' without a well-formed one)."""
    if isinstance(token, str) and re.match(r"^[0-9a-f]{1,64}$", token):
        return "%s: %s\r\n" % (TOKEN_HEADER, token)
    return ""


class ServerStopped(OpensessionsError):
    """The server was stopped on purpose; only the user starts it again."""


class RuntimeFiles(object):
    """The lock and the runtime file (pid, port, tmux socket) that let clients find the server."""

    def __init__(self, socket_path, environ=None):
        self.socket_path = socket_path
        self.dir = runtime_dir(environ)
        key = socket_key(socket_path)
        self.lock_path = os.path.join(self.dir, "server-%s.lock" % key)
        self.info_path = os.path.join(self.dir, "server-%s.json" % key)
        self.stopped_path = os.path.join(self.dir, "stopped-%s" % key)
        self._lock_fd = None
        self.token = None
        squat = runtime_dir_squatted(temp_runtime_dir(environ)) \
            if self.dir == os.path.join(state_dir(environ), "run") else None
        # what the user is told (server log, `opensessions start`) when runtime_dir fell back
        self.squatted = ("%s (someone else made it first); using %s instead" % (squat, self.dir)) if squat else None

    def stopped(self):
        """True when the server was stopped on purpose (`opensessions stop`): sidebars leave it so."""
        return os.path.exists(self.stopped_path)

    def mark_stopped(self, stopped=True):
        """Set (stop) or clear (start) the marker that says the server is stopped on purpose."""
        if stopped:
            ensure_private_dir(self.dir)
            atomic_write(self.stopped_path, "")
        else:
            try:
                os.unlink(self.stopped_path)
            except OSError:
                pass

    def acquire(self):
        """Take the lock; a lock left by a dead server is free (flock dies with its process)."""
        import fcntl
        ensure_private_dir(self.dir)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
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
        self.token = os.urandom(16).hex()
        try:  # a dead server's file would send clients to a closed port until we write ours
            os.unlink(self.info_path)
        except OSError:
            pass

    def write(self, port):
        self.mark_stopped(False)  # a server that runs is not stopped
        atomic_write(self.info_path, json.dumps({
            "pid": os.getpid(), "port": port, "socket": self.socket_path, "version": __version__,
            "digest": program_digest(), "started": int(time.time()), "token": self.token,
            # the plugin and the extension (no flock in node) trust the port only while this
            # process (pid and start) lives: a runtime file left by a kill -9 sends them nowhere
            "procStart": process_start_stamp(os.getpid())}))

    def read(self):
        """The runtime file, if it is ours and private (else nobody vouches for its port)."""
        return read_private_json(self.info_path)

    def held(self):
        """True while some server holds the lock (it may not have written its runtime file yet)."""
        import fcntl
        try:
            fd = os.open(self.lock_path, os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def live_info(self):
        """The runtime info if its server is alive (holds the lock), else None."""
        import fcntl
        info = self.read()
        if not info:
            return None
        try:
            fd = os.open(self.lock_path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
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


class Client(object):
    """A tiny HTTP client over a raw socket: no http.client import, so commands start fast."""

    def __init__(self, port, host=HOST, timeout=5.0, token=None):
        self.port = port
        self.host = host
        self.timeout = timeout
        self.token = token  # the runtime file's, for systems where the server cannot see our uid

    def request(self, method, path, body=None):
        """-> (status, body bytes). Raises OSError when the server is not reachable."""
        try:
            import _socket as sockmod  # the C module: importing socket.py costs ~6 ms more
        except ImportError:
            import socket as sockmod
        payload = b"" if body is None else json.dumps(body).encode("utf-8")
        head = ("%s %s HTTP/1.0\r\nHost: %s:%d\r\nContent-Type: application/json\r\n%s"
                "Content-Length: %d\r\n\r\n" % (method, path, self.host, self.port, token_header(self.token),
                                                   len(payload)))
        sock = sockmod.socket(sockmod.AF_INET, sockmod.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
            sock.sendall(head.encode("ascii") + payload)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        finally:
            sock.close()
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
    port = env_port(env)  # a bad value is said even when the runtime file makes it moot
    info = RuntimeFiles(socket_path, env).live_info()
    if info and isinstance(info.get("port"), int):
        return info["port"], info
    return (DEFAULT_PORT if port is None else port), None


def _socket_from_args(args):
    return tmux_socket_path(getattr(args, "socket_name", None), getattr(args, "socket_path", None))


def _client(args):
    port, info = args.port, None
    if not port:  # None, or 0 ("any free port"): the runtime file says which one it got
        port, info = find_server(_socket_from_args(args))
    return Client(port, token=(info or {}).get("token"))


def _request(args, method, path, body=None):
    """One request to this tmux server's opensessions server -> (status, content); clear errors."""
    try:
        status, content = _client(args).request(method, path, body)
    except OSError as e:
        raise OpensessionsError("cannot reach the opensessions server (%s); start it with `opensessions start`" % e)
    if status >= 400:
        try:
            reason = json.loads(content.decode("utf-8")).get("error")
        except (ValueError, AttributeError):
            reason = content.decode("utf-8", "replace")
        raise OpensessionsError("server refused: %s (HTTP %d)" % (reason, status))
    return status, content


def _post(args, path, body):
    return _request(args, "POST", path, body)[0]


def _post_for_session(args, path, body):
    """POST something about a session; say so when tmux has no such session (the server keeps it)."""
    if _post(args, path, body) == 202 and body.get("session"):
        sys.stderr.write("opensessions: no tmux session named %s (kept for when it appears)\n" % body["session"])
    return 0


def _get_state(args):
    return json.loads(_request(args, "GET", "/state")[1].decode("utf-8"))


def _tmux(args):
    return Tmux(_socket_from_args(args))


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


def start_background(args, wait=5.0, respect_stop=False):
    """Start a server in the background unless one runs. -> (port, started). A user's command
    starts it even after `opensessions stop`; a sidebar (respect_stop) does not."""
    import subprocess
    socket_path = _socket_from_args(args)
    runtime = RuntimeFiles(socket_path)
    info = runtime.live_info()
    if info:
        return info["port"], False
    if runtime.stopped():
        if respect_stop:
            raise ServerStopped("the server was stopped with `opensessions stop`")
        runtime.mark_stopped(False)
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
        if proc.poll() is not None and not runtime.held():
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            if "\n" in err:  # a traceback: keep all of it in the log, say its last line
                with open(log_path, "a") as f:
                    f.write(err + "\n")
                err = "%s (see %s)" % (err.splitlines()[-1], log_path)
            raise OpensessionsError(err or "the server exited at once (see %s)" % log_path)
        # exited, but another start won the lock at the same moment: wait for that one
        time.sleep(0.02)
    raise OpensessionsError("the server did not start within %.0f s (see %s)" % (wait, log_path))


def _self_command():
    """How hooks, key bindings and sidebar panes call us back: this interpreter with -S (the program
    needs no site-packages, and skipping `site` saves tens of milliseconds per call where many .pth
    hooks are installed) and this file (.pyz or .py), shell-quoted."""
    import shlex
    return " ".join(shlex.quote(a) for a in (sys.executable or "python3", "-S", program_path()))


POPUP_DEFAULTS = {"@opensessions-popup-width": "80%", "@opensessions-popup-height": "75%"}


def popup_command(me, client, version, width, height, command="popup"):
    """The tmux command that opens the agents popup (or, command "history-popup", the history
    picker) for a client: display-popup (tmux >= 3.2), else a temporary window that closes when the
    popup program exits. Pure."""
    import shlex
    inner = "%s %s -c %s" % (me, command, shlex.quote(client))
    nums = re.findall(r"\d+", version or "")
    if nums and (int(nums[0]), int(nums[1]) if len(nums) > 1 else 0) >= (3, 2):
        # display-popup expands formats in its command: a '#' in a path stays a '#'
        return ["display-popup", "-c", client, "-E", "-w", width, "-h", height, tmux_literal(inner)]
    return ["new-window", "-t", client, "-n", "agents" if command == "popup" else "history", inner]


def cmd_popup_open(args, command="popup"):
    """Open the popup for a client (`prefix o g`), sized by @opensessions-popup-width/-height."""
    tmux = _tmux(args)
    start_background(args)
    opts = {name: (_tmux_option(tmux, name) or default) for name, default in POPUP_DEFAULTS.items()}
    version = tmux.version()
    me = _self_command()
    if args.port:
        me += " --port %d" % args.port
    client = args.client or tmux.run("display-message", "-p", "#{client_name}").strip()
    tmux.spawn(*popup_command(me, client, version, opts["@opensessions-popup-width"],
                              opts["@opensessions-popup-height"], command))
    return 0


def cmd_history_open(args):
    """Open the history picker for a client (`prefix o r`), as the agents popup is opened."""
    return cmd_popup_open(args, "history-popup")


def cmd_set_status(args):
    text = None if args.clear else args.text
    if text is None and not args.clear:
        raise OpensessionsError("give TEXT, or --clear")
    return _post_for_session(args, "/set-status", {"session": args.session, "text": text, "tone": args.tone})


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
    return _post_for_session(args, "/set-progress", body)


def cmd_log(args):
    return _post_for_session(args, "/log", {"session": args.session, "message": args.message,
                                            "source": args.source, "tone": args.tone})


def cmd_clear_log(args):
    _post(args, "/clear-log", {"session": args.session})
    return 0


def cmd_notify(args):
    return _post_for_session(args, "/notify", {"session": args.session, "message": args.message,
                                               "tone": args.tone})


def cmd_mute(args):
    _post(args, "/mute", {"session": args.session, "muted": not args.off})
    return 0


def cmd_reply(args):
    """Answer a thread's prompt without switching to its pane (see the reply section)."""
    chosen = [a for a, on in (("approve", args.approve), ("approve-always", args.approve_always),
                              ("deny", args.deny), ("text", args.text is not None)) if on]
    if len(chosen) != 1:
        raise OpensessionsError("say one of --approve, --approve-always, --deny, --text TEXT")
    action = chosen[0]
    body = {"thread": args.thread, "action": action}
    if action == "text":
        body["text"] = sys.stdin.read() if args.text == "-" else args.text
    port, info = args.port, None
    if not port:
        port, info = find_server(_socket_from_args(args))
    try:  # a reply waits for the agent's screen (Gemini takes a paste's Enter only ~2 s after it)
        status, content = Client(port, timeout=20, token=(info or {}).get("token")).request("POST", "/api/reply", body)
    except OSError as e:
        raise OpensessionsError("cannot reach the opensessions server (%s); start it with `opensessions start`" % e)
    try:
        doc = json.loads(content.decode("utf-8")) if content else {}
    except ValueError:
        doc = {}
    if status >= 400:
        raise OpensessionsError("not sent: %s" % (doc.get("error") or content.decode("utf-8", "replace")))
    print(doc.get("sent") or "sent")
    return 0


def cmd_toggle(args):
    start_background(args)
    visible = not _get_state(args).get("ui", {}).get("visible")
    _post(args, "/ui", {"visible": visible})
    return 0


def _window_sidebar(state, window_id):
    for s in state["sessions"]:
        if s.get("host"):  # a host's window ids are its own
            continue
        for w in s["windows"]:
            if w["id"] == window_id:
                return w, next((p for p in w["panes"] if p.get("sidebar")), None)
    return None, None


def cmd_focus(args):
    """Focus the sidebar of a window (showing the sidebar first if it is hidden)."""
    start_background(args)
    tmux = _tmux(args)
    window = args.window or tmux.run("display-message", "-p", "#{window_id}").strip()
    if not _get_state(args).get("ui", {}).get("visible"):
        _post(args, "/ui", {"visible": True})
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        _, pane = _window_sidebar(_get_state(args), window)
        if pane:
            tmux.run("select-pane", "-t", pane["id"])
            # a focus-in report: the sidebar selects the session it is in (the client's)
            tmux.run("send-keys", "-t", pane["id"], "-H", "1b", "5b", "49")
            return 0
        time.sleep(0.02)
    raise OpensessionsError("no sidebar appeared in window %s" % window)


def cmd_switch(args):
    """Switch a client to the session at place N of the sidebar's list."""
    sessions = [s for s in _get_state(args)["sessions"] if not s.get("hidden") and not s.get("host")]
    if not 1 <= args.n <= len(sessions):
        raise OpensessionsError("there is no session number %d (%d listed)" % (args.n, len(sessions)))
    target = ["-c", args.client] if args.client else []
    _tmux(args).run("switch-client", *(target + ["-t", "=" + sessions[args.n - 1]["name"]]))
    return 0


def _agent_ancestor(agent, start_pid, probes=None, depth=12):
    """The nearest ancestor process that is the agent itself (the hook runs under a shell).
    Linux reads /proc/<pid>/stat per step; without /proc (macOS) one `ps` gives the whole table."""
    probes = probes or SystemProbes()
    table = None if probes.has_proc else probes.processes()
    pid = start_pid
    for _ in range(depth):
        if pid <= 1:
            return None
        if table is None:
            try:
                with open(os.path.join(probes.proc_root, str(pid), "stat"), "r", encoding="utf-8",
                          errors="replace") as f:
                    _, comm, ppid, _ = parse_proc_stat(f.read())
            except (OSError, ValueError, IndexError):  # gone (the agent exited meanwhile)
                return None
        elif pid in table:
            comm, ppid = table[pid].comm, table[pid].ppid
        else:
            return None
        if (table is None or comm in agent_comms()) and classify_agent_process(comm, probes.args(pid)) == agent:
            return pid
        pid = ppid
    return None


HOOK_STDIN_MAX = 8 * 1024 * 1024  # a hook's payload is read whole up to this (a 100 KB write, a long answer)


HOOK_DRAIN_SECONDS = 3.0  # past the cap, the rest is read and dropped for at most this long


def read_hook_payload(stream, limit=HOOK_STDIN_MAX, clock=time.monotonic, drain=HOOK_DRAIN_SECONDS):
    """A hook's JSON payload from its stdin: read whole up to `limit` bytes. A longer one (a write
    of megabytes) keeps what we need from its start (json_object_prefix: the event's name, session
    and the fields before the long one; a long string cut keeps its start), and the rest is read
    and dropped (for at most `drain` seconds), so the agent writing it never meets a closed pipe.
    -> (payload, cut: True when past the cap). Raises ValueError for what is not JSON."""
    fd = stream.fileno()
    chunks, got = [], 0
    while got <= limit:
        chunk = os.read(fd, min(1024 * 1024, limit + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    raw = b"".join(chunks)
    if len(raw) <= limit:
        return json.loads(raw.decode("utf-8")), False
    end = clock() + drain
    while clock() < end and os.read(fd, 1024 * 1024):
        pass
    return json_object_prefix(raw[:limit]), True


def cmd_hook(args):
    """Called by an agent's hook with the payload on stdin. Never blocks or fails the agent."""
    try:
        payload, cut = read_hook_payload(sys.stdin.buffer)
        if cut:
            hook_log("hook %s: a payload over %d MB; kept the %d fields before the cut (%s)" % (
                args.agent, HOOK_STDIN_MAX >> 20, len(payload), ascii(payload.get("hook_event_name"))[:60]))
        body = hook_event(args.agent, payload)
        if body is None:
            return 0
        if "pid" not in body:
            pid = _agent_ancestor(args.agent, os.getppid())
            if pid:
                body["pid"] = pid
        # a prompt goes only to a server that vouches for itself: a runtime file that is ours and
        # private, whose server holds the lock (is alive); never to whatever listens on 7391
        info = RuntimeFiles(_socket_from_args(args)).live_info() if not args.port else {}
        port = args.port or (info or {}).get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            return 0
        Client(port, timeout=1.0, token=(info or {}).get("token")).request("POST", "/api/agent-event", body)
    except OSError:  # no server to tell (not running, or gone): nothing is wrong
        pass
    except Exception:  # the agent must never see a failing hook, but a bug is written down
        import traceback
        hook_log("hook %s failed:\n%s" % (args.agent, traceback.format_exc()))
    return 0


HOOK_LOG_MAX = 64 * 1024


def hook_log(message, environ=None, limit=HOOK_LOG_MAX):
    """Append to $XDG_STATE_HOME/opensessions/hook.log, kept under `limit` bytes (the older half is
    dropped when it grows past). Never raises: it runs inside an agent's hook."""
    try:
        path = os.path.join(ensure_private_dir(state_dir(environ)), "hook.log")
        line = ("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message)).encode("utf-8", "replace")
        try:
            size = os.path.getsize(path)
        except FileNotFoundError:
            size = 0
        if size + len(line) > limit:
            with open(path, "rb") as f:
                f.seek(max(0, size - limit // 2))
                kept = f.read()
            kept = kept[kept.find(b"\n") + 1:] if b"\n" in kept else b""
            atomic_write(path, kept + line[-(limit // 2):])
        else:
            with open(path, "ab") as f:
                f.write(line)
    except (OSError, OpensessionsError):
        pass


class _HookArgs(object):
    """`hook AGENT` with only the global options: parsed without argparse (it runs on every agent
    prompt and stop, and the agent waits for it)."""

    def __init__(self, argv):
        self.socket_name = self.socket_path = self.port = self.agent = None
        it = iter(argv)
        for a in it:
            if a == "-L":
                self.socket_name = next(it, None)
            elif a == "-S":
                self.socket_path = next(it, None)
            elif a == "--port":
                self.port = as_number(next(it, None), None, int, text=True)
            elif a != "hook" and self.agent is None:
                self.agent = a


COMMANDS = ("server", "start", "stop", "status", "usage", "set-status", "set-progress", "log", "clear-log", "notify",
            "hook", "install", "uninstall", "sidebar", "toggle", "focus", "layout", "switch", "next",
            "popup", "popup-open", "reply", "mute", "history", "resume", "history-popup", "history-open", "save",
            "restore", "kitty", "tmux-setup", "uninstall-tmux", "hosts", "ssh-attach", "relay")


def command_of(argv):
    """The subcommand named in argv (skipping global options and their values), or None."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in ("-L", "-S", "--port"):
            skip = True
        elif a in ("-h", "--help"):
            return None
        elif not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def _words(items, last="and"):
    """'a, b and c'."""
    items = list(items)
    return ", ".join(items[:-1]) + (" %s " % last if len(items) > 1 else "") + (items[-1] if items else "")


class ParsedArgs(object):
    """The parsed command line, as argparse's Namespace would hold it."""

    def __init__(self, values):
        self.__dict__.update(values)


_GLOBAL_OPTIONS = {"-L": ("socket_name", None), "-S": ("socket_path", None), "--port": ("port", int)}


_PLAIN_KEYWORDS = frozenset(("help", "metavar", "default", "type", "choices", "action", "nargs", "dest"))


def parse_plainly(argv, table):
    """argv parsed without argparse when it is plainly well formed, from the same command table:
    `[-L N | -S P | --port N]... COMMAND POSITIONAL... [--option [VALUE] | --option=VALUE]...`.
    -> ParsedArgs with what build_parser(COMMAND).parse_args(argv) would give, or None for anything
    else (help, an unknown or abbreviated option, a value that starts with '-', a bad value, a
    positional after an option...): argparse then parses it and words any error. Importing argparse
    and building even one subcommand cost a client command ~10 ms."""
    values = {dest: None for dest, _ in _GLOBAL_OPTIONS.values()}
    i = 0
    while i < len(argv) and argv[i] in _GLOBAL_OPTIONS:
        if not _take_plain_value(values, _GLOBAL_OPTIONS[argv[i]], {}, argv[i + 1:i + 2]):
            return None
        i += 2
    entry = next((e for e in table if i < len(argv) and e[0] == argv[i]), None)
    if entry is None:
        return None
    name, func, _, arguments = entry
    options = {flag: (dest, conv, {}) for flag, (dest, conv) in _GLOBAL_OPTIONS.items()}
    positionals = []
    for flags, kw in arguments:
        if not _PLAIN_KEYWORDS.issuperset(kw) or kw.get("action", "store_true") != "store_true" \
                or kw.get("nargs", "?") != "?":
            return None
        if not flags[0].startswith("-"):
            if positionals and positionals[-1][1].get("nargs") == "?" and kw.get("nargs") != "?":
                return None  # a required one after an optional one: argparse's matching, not ours
            positionals.append((flags[0], kw))
            values[flags[0]] = kw.get("default")
            continue
        dest = kw.get("dest") or next((f for f in flags if f.startswith("--")), flags[0]).lstrip("-").replace("-", "_")
        default = kw.get("default", False if kw.get("action") else None)
        if isinstance(default, str) and kw.get("type"):
            default = kw["type"](default)
        values[dest] = default
        for f in flags:
            options[f] = (dest, kw.get("type"), kw)
    values.update(command=name, func=func)
    rest, given, option_seen = argv[i + 1:], [], False
    k = 0
    while k < len(rest):
        a = rest[k]
        k += 1
        if not a.startswith("-"):
            if option_seen:
                return None
            given.append(a)
            continue
        option_seen = True
        flag, eq, value = a.partition("=") if a.startswith("--") else (a, "", "")
        if flag not in options:
            return None
        dest, conv, kw = options[flag]
        if kw.get("action") == "store_true":
            if eq:
                return None
            values[dest] = True
            continue
        if not eq:
            if not _take_plain_value(values, (dest, conv), kw, rest[k:k + 1]):
                return None
            k += 1
        elif not _take_plain_value(values, (dest, conv), kw, [value], explicit=True):
            return None
    required = sum(1 for _, kw in positionals if kw.get("nargs") != "?")
    if not required <= len(given) <= len(positionals):
        return None
    for (dest, kw), text in zip(positionals, given):
        if not _take_plain_value(values, (dest, kw.get("type")), kw, [text], explicit=True):
            return None
    return ParsedArgs(values)


def _take_plain_value(values, target, kw, texts, explicit=False):
    """Store texts[0], converted and checked as argparse would, under target's dest; False when
    there is none, it looks like an option, or it does not convert or is not one of the choices."""
    if not texts or (not explicit and texts[0].startswith("-")):
        return False
    dest, conv = target
    try:
        value = conv(texts[0]) if conv else texts[0]
    except (TypeError, ValueError):
        return False
    if "choices" in kw and value not in kw["choices"]:
        return False
    values[dest] = value
    return True


def user_message(error):
    """One line for the user: no traceback, no doubled "opensessions:" prefix."""
    if isinstance(error, TmuxGone):
        text = "no tmux server: %s" % error
    elif isinstance(error, OSError) and error.strerror:
        text = "%s%s" % (error.strerror, ": %s" % error.filename if error.filename else "")
    else:
        text = str(error) or type(error).__name__
    lines = [l.strip() for l in text.splitlines() if l.strip()] or [type(error).__name__]
    text = lines[-1] if len(lines) > 1 and lines[0].startswith("Traceback") else " ".join(lines)
    while text.startswith("opensessions: "):
        text = text[len("opensessions: "):]
    return text


def _for_key_binding(func, args):
    """Run a command bound to a key: its output and its errors go to the client's status line
    through display-message, and it exits 0, so tmux never opens view mode over a pane."""
    import contextlib
    import io
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            func(args)
        text = out.getvalue().strip()
    except (OpensessionsError, TmuxError, OSError) as e:
        text = "opensessions: %s" % user_message(e)
    if text:
        client = ["-c", args.client] if getattr(args, "client", None) else []
        try:
            _tmux(args).run("display-message", *(client + [" | ".join(text.splitlines())]))
        except TmuxError:
            pass
    return 0


# The arguments several commands share, as (flags, argparse keywords); never changed in place.
ARG_TONE = (("--tone",), dict(choices=TONES, default="neutral", help="the colour it is shown in: neutral, info, "
                                                                    "success, warn or error (default: neutral)"))
ARG_WINDOW = (("-w", "--window"), dict(help="tmux window id such as @3 (default: the current window)"))
ARG_CLIENT = (("-c", "--client"), dict(help="the tmux client to switch (default: tmux's choice)"))
ARG_DISPLAY = (("--display",), dict(action="store_true", help="say the result with tmux display-message, "
                                                               "not on stdout (for key bindings)"))
ARG_SESSION = (("session",), dict(help="tmux session name"))


def client_commands():
    """(name, function, one-line description, arguments) of the commands this section runs: those
    that hooks, key bindings and scripts run many times a day. The CLI's table holds them too."""
    return (
        ("set-status", cmd_set_status, "set (or --clear) a session's status pill",
         [ARG_SESSION, (("text",), dict(nargs="?", help="the pill's text")), ARG_TONE,
          (("--clear",), dict(action="store_true", help="remove the pill"))]),
        ("set-progress", cmd_set_progress, "set a session's progress bar: CURRENT TOTAL, --percent or --clear",
         [ARG_SESSION, (("current",), dict(nargs="?", type=float, help="steps done")),
          (("total",), dict(nargs="?", type=float, help="steps in all")),
          (("--percent",), dict(type=float, help="percent done (0-100) instead of CURRENT TOTAL")),
          (("--label",), dict(help="a word or two shown after the bar")),
          (("--clear",), dict(action="store_true", help="remove the bar"))]),
        ("log", cmd_log, "add a log line to a session",
         [ARG_SESSION, (("message",), dict(help="the line's text")),
          (("--source",), dict(help="who says it, shown before the message (ci, deploy...)")), ARG_TONE]),
        ("clear-log", cmd_clear_log, "clear a session's log lines", [ARG_SESSION]),
        ("notify", cmd_notify, "send a notification through the enabled channels",
         [(("message",), dict(help="the notification's text")),
          (("--session",), dict(help="the session it is about (muted sessions stay quiet)")),
          ARG_TONE]),
        ("hook", cmd_hook, "(called by agent hooks) report a hook payload from stdin",
         [(("agent",), dict(choices=hook_agents(), help="the agent whose hook calls: " + _words(hook_agents(), "or")))]),
        ("toggle", cmd_toggle, "show or hide the sidebar in every window", [ARG_DISPLAY]),
        ("focus", cmd_focus, "focus the sidebar of a window (showing it if hidden)", [ARG_WINDOW, ARG_DISPLAY]),
        ("switch", cmd_switch, "switch to the session at place N in the sidebar's list",
         [(("n",), dict(type=int, help="the session's number in the list (1 is the first)")), ARG_CLIENT, ARG_DISPLAY]),
        ("popup-open", cmd_popup_open, "open the agents popup (display-popup; a window before tmux 3.2)",
         [ARG_CLIENT, ARG_DISPLAY]),
        ("reply", cmd_reply, "answer a thread's prompt without switching to it: approve once, approve always, "
                             "deny, or type a prompt",
         [(("thread",), dict(help="thread id (as in `opensessions status --json`), or AGENT:ID")),
          (("--approve",), dict(action="store_true", help="approve the permission once")),
          (("--approve-always",), dict(action="store_true", help="approve, and do not ask again (where offered)")),
          (("--deny",), dict(action="store_true", help="deny the permission")),
          (("--text",), dict(metavar="TEXT", help="type TEXT as the next prompt and submit it (several lines go "
                                                   "as one paste; - reads it from stdin)"))]),
        ("mute", cmd_mute, "mute (or --off: unmute) a session's notifications",
         [ARG_SESSION, (("--off",), dict(action="store_true", help="unmute"))]),
        ("history-open", cmd_history_open, "open the history picker (prefix o r)", [ARG_CLIENT, ARG_DISPLAY]),
    )


def run_parsed(args, default=None):
    """Run a parsed command line -> exit status. Errors are one line on stderr (exit 1); a command
    bound to a key (--display) says its result with display-message instead."""
    func = getattr(args, "func", None) or default
    if getattr(args, "display", False):
        return _for_key_binding(func, args)
    try:
        check_port(getattr(args, "port", None))
        return func(args) or 0
    except KeyboardInterrupt:
        return 130
    except (OpensessionsError, TmuxError, OSError) as e:
        sys.stderr.write("opensessions: %s\n" % user_message(e))
        return 1


def run_client(argv):
    """Run argv when it is one of client_commands() and plainly well formed -> exit status; None for
    anything else (help, a typo, the server, the sidebar, ...), before doing anything: main() then
    parses it with the whole table. `hook AGENT` is read without even the table."""
    command = command_of(argv)
    if command == "hook" and "-h" not in argv and "--help" not in argv:
        args = _HookArgs(argv)
        if args.agent in hook_agents():
            return cmd_hook(args)
    if command is None or command == "hook":
        return None
    table = client_commands()
    if not any(e[0] == command for e in table):
        return None
    args = parse_plainly(argv, table)
    return None if args is None else run_parsed(args)


##############################################################################
# Watchers
##############################################################################

IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x100, 0x200, 0x400, 0x800, 0x4000, 0x8000
IN_ISDIR, IN_NONBLOCK, IN_CLOEXEC = 0x40000000, 0o4000, 0o2000000
DIR_EVENTS = IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF
TAIL_BYTES = 128 * 1024  # cold start reads at most this much of a transcript's end
HEAD_BYTES = 32 * 1024  # ... and this much of its start (for the first prompt)
READ_CHUNK = 1024 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024  # a longer line (no agent writes one) is skipped, never held whole
READ_BUDGET = 4 * 1024 * 1024  # one loop turn reads at most this much of one file; the rest comes next turn
OPENCODE_MIN_INTERVAL = 0.1  # opencode.db is queried at most this often (it changes many times a second)
DB_WAIT_TRIES = 60  # how long a read waits for a database's writer to finish its commit (about 4 s)


def _raise(error):
    raise error


def c_library(symbol):
    """The C library through ctypes, once it has `symbol` (else None): the process's own symbols
    first (libc is loaded in every CPython), then find_library("c"), which runs `ldconfig -p` in
    a child process (three times in every server start before)."""
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if hasattr(libc, symbol):
            return libc
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, symbol) else None


class Inotify(object):
    """Linux inotify through ctypes: one fd for the event loop, events as (wd, mask, name)."""

    def __init__(self):
        import ctypes
        libc = c_library("inotify_init1")
        if libc is None:
            raise OSError("inotify is not available")
        self._libc = libc
        self.fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")

    def add_watch(self, path, mask):
        import ctypes
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch %s failed" % path)
        return wd

    def read(self):
        import struct
        events = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            pos = 0
            while pos + 16 <= len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
                name = data[pos + 16:pos + 16 + length].rstrip(b"\0")
                events.append((wd, mask, os.fsdecode(name)))
                pos += 16 + length
        return events

    def close(self):
        try:
            os.close(self.fd)
        except OSError:
            pass


class FileTail(object):
    """Follows one append-only file by byte offset: parses only appended bytes, holds a partial
    last line, and notices truncation and replacement (inode change)."""

    def __init__(self, path, max_line=MAX_LINE_BYTES, budget=READ_BUDGET):
        self.path = path
        self.inode = None
        self.offset = 0
        self.max_line = max_line
        self.budget = budget
        self.buf = LineBuffer(max_line)
        self.bytes_read = 0
        self.skipped_lines = 0  # lines over max_line (also those of earlier buffers)
        self.more = False  # the last read stopped at its budget: call read() again soon

    def read(self, cold_tail=None):
        """-> (lines, reset). reset is True when the file was replaced or truncated (start over).
        On the first read with cold_tail, only the last cold_tail bytes are read. One read takes at
        most `budget` bytes (self.more tells that there is more); a line over max_line is skipped.
        A path that is not a regular file (a FIFO, a symlink: to /dev/zero or anywhere) raises
        ForeignFileError unread."""
        import stat
        self.more = False
        try:
            st = os.lstat(self.path)
        except OSError:
            return [], False
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a link to /dev/zero is never opened
            raise ForeignFileError("%s is %s, not a regular file; not read" % (self.path, _file_kind(st.st_mode)))
        reset = False
        skip_partial = False
        if self.inode != st.st_ino or st.st_size < self.offset:
            reset = self.inode is not None
            first = self.inode is None
            self.inode = st.st_ino
            self.buf = LineBuffer(self.max_line)
            self.offset = 0
            if first and cold_tail and st.st_size > cold_tail:
                self.offset = st.st_size - cold_tail
                skip_partial = True
        if st.st_size == self.offset:
            return [], reset
        lines = []
        left = self.budget
        skipped_before = self.buf.skipped
        try:
            fd, fst = open_foreign(self.path, follow=False)
            if fst.st_ino != self.inode:  # replaced since the look: the next read starts it over
                os.close(fd)
                return lines, reset
            with os.fdopen(fd, "rb") as f:
                f.seek(self.offset)
                while True:
                    if left <= 0:
                        self.more = True
                        break
                    chunk = f.read(min(READ_CHUNK, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    self.offset += len(chunk)
                    self.bytes_read += len(chunk)
                    if skip_partial:
                        nl = chunk.find(b"\n")
                        if nl < 0:
                            continue
                        chunk = chunk[nl + 1:]
                        skip_partial = False
                    lines.extend(self.buf.feed(chunk))
        except ForeignFileError:
            raise
        except OSError:
            pass
        self.skipped_lines += self.buf.skipped - skipped_before
        return lines, reset


def read_head_lines(path, limit=HEAD_BYTES):
    """Complete lines from the start of a file (for a title in a file read from its tail). A file
    that is not a regular one (a FIFO, a link to /dev/zero) has none."""
    try:
        data = read_foreign(path, limit, follow=False, whole=False)
    except OSError:
        return []
    lines = data.split(b"\n")
    if len(data) == limit:
        lines.pop()
    return lines


def dir_entries(path, suffix=""):
    """Entries of a directory ending in suffix; [] when it is missing or unreadable."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return [n for n in names if n.endswith(suffix)] if suffix else names


def sqlite_is_wal(path):
    """The database file's header says WAL mode (bytes 18-19 are 2)."""
    try:
        head = read_foreign(path, 20, whole=False)
    except OSError:
        return False
    return len(head) == 20 and head[18] == 2 and head[19] == 2


def sqlite_ro(path, timeout=0.2):
    """Open an SQLite database read-only (never locks out its writer). Raises sqlite3.Error.

    Leaves the agent's directory as it was: a read-only connection to a WAL database creates
    `-wal` and `-shm` files and cannot remove them. With no `-wal` file no writer has the database
    open, so it is opened immutable (SQLite then creates nothing); a writer that starts meanwhile
    changes the files, and that change makes us read again. A file shorter than SQLite's 100-byte
    header is still being written (copied, restored): it is not opened (its header, read by SQLite
    later than by us, could say WAL), and the write's next change makes us read again. The
    database and its -wal, -shm and -journal (the files SQLite opens, without O_NONBLOCK) must be
    regular files where they exist: a FIFO would block the open for good."""
    import sqlite3
    import stat
    from urllib.parse import quote
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            mode = os.stat(p).st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            raise sqlite3.OperationalError("%s: %s" % (p, e))
        if not stat.S_ISREG(mode):
            raise sqlite3.OperationalError("%s is %s, not a regular file; not opened" % (p, _file_kind(mode)))
    flags = "mode=ro"
    if not os.path.exists(path + "-wal"):
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise sqlite3.OperationalError("%s: %s" % (path, e))
        if size < 100:
            raise sqlite3.OperationalError("%s: %d bytes, no database header yet" % (path, size))
        if sqlite_is_wal(path):
            flags += "&immutable=1"
    conn = sqlite3.connect("file:%s?%s" % (quote(os.path.abspath(path)), flags), uri=True, timeout=timeout,
                           check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


SQLITE_WAL_WRITE_LOCK = 120  # byte of the -shm file a WAL writer locks for its whole transaction


def sqlite_write_locked(path):
    """True while a writer of a WAL database holds its write lock (a commit under way: its frames
    may be in the -wal, and so wake us, before the commit is visible to readers), False when not,
    None where we cannot tell. Only asks (F_GETLK); never takes a lock."""
    import fcntl
    import struct
    if struct.calcsize("P") != 8:
        return None
    if sys.platform.startswith("linux"):
        layout, make = "@hhqqi4x", lambda t: (t, 0, SQLITE_WAL_WRITE_LOCK, 1, 0)
        kind = lambda v: v[0]
    elif sys.platform == "darwin":
        layout, make = "@qqihh", lambda t: (SQLITE_WAL_WRITE_LOCK, 1, 0, t, 0)
        kind = lambda v: v[3]
    else:
        return None
    try:
        fd, _ = open_foreign(path + "-shm")
    except ForeignFileError:
        return None  # not a regular file (sqlite_ro refuses the database)
    except OSError:
        return False  # no -shm: no writer shares the database
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(layout, *make(fcntl.F_WRLCK)))
        return kind(struct.unpack(layout, got)) != fcntl.F_UNLCK
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)


def sqlite_stamp(path):
    """What says an SQLite database changed: (inode, size, mtime) of the file and of its -wal.
    Our own reads change neither (only the -shm, which is never a reason to read)."""
    return (file_signature(path), file_signature(path + "-wal"))


def sqlite_rows(path, sql, params=()):
    """Every row of one read-only query (the connection is closed at once). Raises sqlite3.Error."""
    conn = sqlite_ro(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- polling by stat, cheaply: directories by mtime, files by how recently they changed ------------
# Where no inotify wakes us (macOS and the BSDs beside kqueue, OPENSESSIONS_WATCH=poll, no watch
# left) directories and files are looked at by stat. A directory's mtime changes when an entry is
# made, renamed or removed in it, so a directory is listed again only then; a file is stat-ed by how
# recently it changed (appends do not change its directory): each second in its first minute idle,
# then less and less often, at most every STAT_IDLE_MAX seconds. A file is back to each second when
# its directory changes, when an agent process maps to it, or when a hook names it (a "hold"): a
# conversation resumed after weeks is seen within a second or two of its agent starting.
STAT_IDLE_MAX = 300.0  # a file idle for 5 hours or more is looked at every 5 minutes (unless held)
DIR_IDLE_MAX = 5.0  # a directory idle for 5 minutes or more, every 5 s (a new file in an old project)
DIR_BOOST_S = 60.0  # after a directory changed, its files are looked at as if held, this long
HELD_DIR_STATS = 100  # the files of a held (or just changed) directory: at most this many stats a second
RACY_S = 2.0  # a directory changed this recently may change again within its mtime's granularity
KQUEUE_FD_BUDGET = 64  # at most this many fds for kqueue (well under macOS's default ulimit -n of 256)
CODEX_UPDATED_HOLD_S = 600  # a Codex thread whose state_5.sqlite row changed this lately: its rollout is held
KQUEUE_RECENT_DIR_S = 86400.0  # a directory changed within this gets a kqueue fd at once; older ones are polled


def stat_interval(idle_s, most):
    """Seconds between two looks at a file or directory idle for idle_s seconds: each second in its
    first minute idle, then idle_s / 60 (10 minutes idle -> every 10 s), never more than `most`."""
    return min(most, max(1.0, idle_s / 60.0))


class _Polled(object):
    """One directory or file the StatPoller looks at."""
    __slots__ = ("path", "directory", "handler", "stamp", "names", "changed", "due", "live", "racy", "boost")

    def __init__(self, path, directory=None, handler=None, stamp=None, changed=0.0, live=False):
        self.path = path
        self.directory = directory  # a file's directory (None for a directory)
        self.handler = handler  # a directory's handler(directory, name, mask)
        self.stamp = stamp
        self.names = {}  # a directory's entries: name -> is a directory
        self.changed = changed  # clock time of the last change seen (at first sight: the mtime)
        self.due = 0  # the tick of the next look
        self.live = live  # a directory whose files can change any moment (registries): each second
        self.racy = False  # listed within RACY_S of its mtime: list again at the next look
        self.boost = 0.0  # until then the directory's files are looked at as if held


class StatPoller(object):
    """Directories and their files watched by stat, at a cost that grows with what changes, not
    with how many files there are. The loop calls run() once per `poll_interval` (a tick); each
    entry is due at a tick, kept in that tick's bucket, so a tick costs only the looks that are due. What
    changed is reported as inotify would: (handler, directory, name, mask), mask IN_CREATE,
    IN_MODIFY or IN_DELETE (| IN_ISDIR). Time (how long a file has been idle) comes from `clock`:
    tests drive it and the ticks, and sleep never.

    A directory's first listing (add_dir) is a baseline and reports nothing (the caller lists it
    itself, as with inotify); a missing directory lists empty until it is made. `hold(source,
    paths)` keeps files or directories at one look a second until the source lets them go;
    `suspend(path)` stops the timed looks of a path another watch follows (a kqueue fd) and
    `check(path)` looks at it at once (that watch's event). `on_active(path)` is told of each
    file or directory that just changed (kqueue gives it an fd)."""

    def __init__(self, clock, poll_interval=1.0, stat=os.stat, listdir=os.listdir):
        self.clock = clock
        self.poll_interval = poll_interval
        self._stat = stat
        self._listdir = listdir
        self.tick = 0
        self.dirs = {}  # directory -> _Polled
        self.files = {}  # file -> _Polled (the non-directory entries of the directories)
        self._due = {}  # tick -> [paths due then] (an entry rescheduled since is skipped)
        self._seq = 0
        self.holds = {}  # source -> frozenset of held paths
        self.held = {}  # path -> number of sources holding it
        self.suspended = set()
        self.stat_calls = 0  # every stat and listing made (what polling costs; /health)
        self.on_active = lambda path, is_dir: None

    # -- what is watched -------------------------------------------------------------------------
    def add_dir(self, path, handler, live=False):
        d = self.dirs.get(path)
        if d is not None:
            d.handler = handler
            d.live = d.live or live
            return
        d = self.dirs[path] = _Polled(path, handler=handler, live=live)
        now = self.clock()
        self._relist(d, now, events=None)
        d.changed = self._mtime(d, now)
        self._schedule(d, now)

    def remove_dir(self, path):
        d = self.dirs.pop(path, None)
        if d is not None:
            for name in d.names:
                self.files.pop(os.path.join(path, name), None)

    def hold(self, source, paths):
        """Keep `paths` (files or directories) at a look a second while `source` holds them; the
        source's previous paths are let go. A newly held path is looked at in the next tick (a
        held file not seen yet: its directory is listed again)."""
        new = frozenset(p for p in paths if p)
        old = self.holds.get(source, frozenset())
        if new == old:
            return
        for p in new - old:
            self.held[p] = self.held.get(p, 0) + 1
            entry = self.dirs.get(p) or self.files.get(p) or self.dirs.get(os.path.dirname(p))
            if entry is not None and entry.path not in self.suspended:
                self._push(entry, self.tick + 1)
        for p in old - new:
            n = self.held.get(p, 0) - 1
            if n > 0:
                self.held[p] = n
            else:
                self.held.pop(p, None)
        if new:
            self.holds[source] = new
        else:
            self.holds.pop(source, None)

    def suspend(self, path):
        self.suspended.add(path)

    def resume(self, path):
        self.suspended.discard(path)
        entry = self.dirs.get(path) or self.files.get(path)
        if entry is not None:
            self._push(entry, self.tick + 1)

    # -- looking ---------------------------------------------------------------------------------
    def run(self):
        """One tick: look at every entry due. -> [(handler, directory, name, mask)]"""
        self.tick += 1
        tick = self.tick
        now = self.clock()
        events = []
        dirs, files, suspended = self.dirs, self.files, self.suspended
        for path in self._due.pop(tick, ()):
            entry = files.get(path) or dirs.get(path)
            if entry is None or entry.due != tick or path in suspended:
                continue  # gone, rescheduled since, or followed by another watch
            if entry.directory is None:
                self._look_dir(entry, now, events)
                if path in dirs and path not in suspended:
                    self._schedule(entry, now)
            else:
                self._look_file(entry, now, events)
                if path in files and path not in suspended:
                    self._schedule(entry, now)
        return events

    def check(self, path):
        """Look at one file or directory now (another watch said it changed)."""
        now = self.clock()
        events = []
        entry = self.dirs.get(path) or self.files.get(path)
        if entry is not None:
            self._look(entry, now, events)
            if path not in self.suspended and (path in self.dirs or path in self.files):
                self._schedule(entry, now)
        return events

    def _look(self, entry, now, events):
        if entry.directory is None:
            self._look_dir(entry, now, events)
        else:
            self._look_file(entry, now, events)

    def _look_dir(self, d, now, events):
        try:
            self.stat_calls += 1
            st = self._stat(d.path)
        except OSError:
            if d.stamp is not None or d.names:
                self._relist(d, now, events)  # removed: everything in it is gone
            return
        moved = (st.st_mtime_ns, st.st_ino) != d.stamp
        if moved or d.racy:
            self._relist(d, now, events, st, look_files=moved)

    def _relist(self, d, now, events, st=None, look_files=True):
        """List a directory again: report what was made, replaced or removed since, and look at
        each of its files now (a change of a directory is a sign of activity around its files)."""
        import stat as stat_
        try:
            if st is None:
                self.stat_calls += 1
                st = self._stat(d.path)
            self.stat_calls += 1
            names = self._listdir(d.path)
        except OSError:
            st, names = None, []
        was_missing = d.stamp is None
        d.stamp = (st.st_mtime_ns, st.st_ino) if st is not None else None
        d.racy = st is not None and time.time() - st.st_mtime < RACY_S
        before = d.names
        now_names = {}
        changed = False
        look_files = look_files and events is not None
        if look_files:
            d.boost = now + DIR_BOOST_S
        for name in names:
            path = os.path.join(d.path, name)
            if name in before:
                now_names[name] = before[name]
                f = self.files.get(path)
                if f is not None and look_files and path not in self.suspended:
                    self._look_file(f, now, events)  # replaced (an atomic rewrite) or appended
                    self._schedule(f, now)  # and from now on as often as the boost says
                continue
            try:
                self.stat_calls += 1
                fst = self._stat(path)
            except OSError:
                continue  # gone already
            is_dir = stat_.S_ISDIR(fst.st_mode)
            now_names[name] = is_dir
            changed = True
            if not is_dir:
                stamp = (fst.st_mtime_ns, fst.st_size, fst.st_ino)
                f = self.files[path] = _Polled(path, d.path, stamp=stamp,
                                               changed=now if events is not None else fst.st_mtime)
                self._schedule(f, now, spread=events is None)
            if events is not None:
                events.append((d.handler, d.path, name, IN_CREATE | (IN_ISDIR if is_dir else 0)))
                self.on_active(path, is_dir)
        for name, is_dir in before.items():
            if name not in now_names:
                changed = True
                self.files.pop(os.path.join(d.path, name), None)
                if events is not None:
                    events.append((d.handler, d.path, name, IN_DELETE | (IN_ISDIR if is_dir else 0)))
        d.names = now_names
        if events is not None and (changed or was_missing and st is not None):
            d.changed = now
            self.on_active(d.path, True)

    def _look_file(self, f, now, events):
        try:
            self.stat_calls += 1
            st = self._stat(f.path)
        except OSError:
            d = self.dirs.get(f.directory)  # removed or renamed: its directory says which
            if d is not None:
                self._relist(d, now, events)
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == f.stamp:
            return
        replaced = f.stamp is not None and f.stamp[2] != stamp[2]
        f.stamp = stamp
        f.changed = now
        d = self.dirs.get(f.directory)
        if d is not None:
            events.append((d.handler, d.path, os.path.basename(f.path), IN_CREATE if replaced else IN_MODIFY))
        self.on_active(f.path, False)

    # -- when to look next ------------------------------------------------------------------------
    def _mtime(self, d, now):
        try:
            return self._stat(d.path).st_mtime
        except OSError:
            return now

    def interval(self, entry, now):
        """Seconds until the next look at a file or directory."""
        if entry.path in self.held:
            return 1.0
        if entry.directory is None:
            if entry.stamp is None or entry.live or entry.racy:
                return 1.0  # missing (awaited), a registry, or changed a moment ago
            return stat_interval(now - entry.changed, DIR_IDLE_MAX)
        own = stat_interval(now - entry.changed, STAT_IDLE_MAX)
        d = self.dirs.get(entry.directory)
        if d is None:
            return own
        if d.live:
            return 1.0
        if d.path in self.held or d.boost > now:
            return min(own, max(1.0, len(d.names) / float(HELD_DIR_STATS)))
        return own

    def _schedule(self, entry, now, spread=False):
        """spread: a first look, somewhere within the interval (the files of a baseline are not all
        looked at in the same tick, then again all together: the cost is even over time)."""
        ticks = max(1, int(self.interval(entry, now) / self.poll_interval + 0.5))
        if spread:
            ticks = 1 + (self._seq * 7919) % ticks
        self._push(entry, self.tick + ticks)

    def _push(self, entry, due):
        if entry.due and self.tick < entry.due <= due:
            return  # already due sooner
        entry.due = due
        self._seq += 1
        bucket = self._due.get(due)
        if bucket is None:
            self._due[due] = [entry.path]
        else:
            bucket.append(entry.path)


# kqueue (macOS, the BSDs): the filter flags we ask for, and what each means in inotify's terms
KQ_DIR, KQ_FILE = "dir", "file"


class Kqueue(object):
    """kqueue behind the Inotify class's interface: one fd for the event loop, add_watch(path,
    kind) -> wd, read() -> [(wd, mask, None)], remove_watch(wd), close(). Each watch is an open fd
    of its file or directory: a directory's NOTE_WRITE (an entry made, renamed, removed) reads as
    IN_MODIFY, a file's NOTE_WRITE / NOTE_EXTEND as IN_MODIFY, NOTE_DELETE as IN_DELETE_SELF and
    NOTE_RENAME as IN_MOVE_SELF. kqueue names no entry: the caller lists a directory again (the
    StatPoller does). `kmod` is the select module; a test passes a fake that replays events."""

    def __init__(self, kmod=None, open_fd=None):
        if kmod is None:
            import select as kmod
        if not hasattr(kmod, "kqueue"):
            raise OSError("kqueue is not available")
        self.k = kmod
        self._open = open_fd or (lambda path: os.open(path, os.O_RDONLY | getattr(os, "O_EVTONLY", 0)
                                                      | getattr(os, "O_CLOEXEC", 0)))
        self.kq = kmod.kqueue()
        self.fd = self.kq.fileno()
        self.watches = {}  # wd -> path

    def add_watch(self, path, kind):
        k = self.k
        fflags = k.KQ_NOTE_WRITE | k.KQ_NOTE_DELETE | k.KQ_NOTE_RENAME
        if kind == KQ_FILE:
            fflags |= k.KQ_NOTE_EXTEND
        fd = self._open(path)
        try:
            self.kq.control([k.kevent(fd, filter=k.KQ_FILTER_VNODE, flags=k.KQ_EV_ADD | k.KQ_EV_CLEAR,
                                      fflags=fflags)], 0, 0)
        except (OSError, ValueError):
            os.close(fd)
            raise
        self.watches[fd] = path
        return fd

    def remove_watch(self, wd):
        """Closing the fd removes its events from the kqueue."""
        if self.watches.pop(wd, None) is not None:
            try:
                os.close(wd)
            except OSError:
                pass

    def read(self):
        k = self.k
        out = []
        while True:
            events = self.kq.control(None, 256, 0)
            for ev in events:
                if ev.ident not in self.watches:
                    continue
                mask = 0
                if ev.fflags & (k.KQ_NOTE_WRITE | k.KQ_NOTE_EXTEND):
                    mask |= IN_MODIFY
                if ev.fflags & k.KQ_NOTE_DELETE:
                    mask |= IN_DELETE_SELF
                if ev.fflags & k.KQ_NOTE_RENAME:
                    mask |= IN_MOVE_SELF
                if mask:
                    out.append((ev.ident, mask, None))
            if len(events) < 256:
                return out

    def close(self):
        for wd in list(self.watches):
            self.remove_watch(wd)
        try:
            self.kq.close()
        except OSError:
            pass


def kqueue_fd_budget(limit=None):
    """How many fds kqueue may hold: KQUEUE_FD_BUDGET, or a quarter of a lower `ulimit -n`."""
    if limit is None:
        try:
            import resource
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            limit = 256
    if limit is None or limit < 0:  # RLIM_INFINITY
        return KQUEUE_FD_BUDGET
    return max(8, min(KQUEUE_FD_BUDGET, limit // 4))


class WatchCore(object):
    """What every agent's watcher shares, on the server's event loop: directories watched by inotify
    (Linux: it wakes us within milliseconds), by kqueue (macOS, the BSDs: an fd per directory and
    per file that can change now, within a budget) or by the StatPoller (OPENSESSIONS_WATCH=poll,
    no watch left, and what kqueue has no fd for), directories awaited until they exist, file tails
    and the thread states reduced from them, database reads timed around their writers' commits,
    and the guard under which each file, row or directory is read (what no parser expected is
    skipped and counted). Cold start reads only files changed in the last `recent_days` days.

    hold(source, paths) says which files can change now (an agent process maps to them, a hook
    named them): polled, they are looked at each second; under kqueue they get an fd."""

    def __init__(self, server, environ=None, recent_days=7.0, poll_interval=1.0, clock=time.time, kmod=None):
        import collections
        self.server = server
        self.paths = agent_paths(environ)
        self.force_poll = (environ or {}).get("OPENSESSIONS_WATCH") == "poll"
        self.recent_s = recent_days * 86400
        self.poll_interval = poll_interval
        self.clock = clock
        self.inotify = None
        self.kqueue = None
        self.kmod = kmod  # the select module, or a test's fake kqueue
        self.backend = None  # "inotify", "kqueue" or "poll", once started
        self.watches = {}  # wd -> (dir, handler)
        self.watched_dirs = {}  # dir -> inotify wd
        self.poller = StatPoller(clock, poll_interval)
        self.poller.on_active = self._on_active
        self.kq_paths = collections.OrderedDict()  # path -> kqueue wd, the least recently active first
        self.kq_wds = {}  # kqueue wd -> path
        self.kq_pinned = set()  # roots and live files: never given back to the poller
        self.kq_budget = kqueue_fd_budget()
        self.live_paths = set()  # files that can change at any moment (databases, their -wal, indexes)
        self._polling = False
        self.pending_dirs = {}  # missing dir -> handler (watched through an existing parent)
        self.roots = {}  # the agents' own directories -> handler (awaited again when removed)
        self.tails = {}  # path -> FileTail
        self.states = {}  # path -> thread state
        self.state_paths = {}  # (agent, thread id) -> the first path read for it (no scan of states per file)
        self.db_stamps = {}  # database -> sqlite_stamp() taken before our last read of it
        self.db_waits = {}  # database -> tries, while we wait for its writer to finish a commit
        self.bad_records = 0
        self.long_lines = 0  # lines over MAX_LINE_BYTES, skipped unread
        self._logged_bad = set()
        self._reads_due = set()  # files whose last read stopped at its budget (read_later)
        self.on_overflow = lambda: None  # inotify dropped events: every agent reads its files again

    @property
    def polled_dirs(self):
        """Directories looked at by stat now: dir -> handler (kqueue's are not)."""
        return {p: d.handler for p, d in self.poller.dirs.items() if p not in self.poller.suspended}

    def start(self):
        """inotify where there is one, else kqueue, else the StatPoller (OPENSESSIONS_WATCH=poll
        forces it)."""
        if self.force_poll:
            why = "OPENSESSIONS_WATCH=poll"
        else:
            try:
                self.inotify = Inotify()
                self.server.loop.add_reader(self.inotify.fd, self._on_inotify)
                self.backend = "inotify"
                return
            except (OSError, AttributeError) as e:
                self.inotify = None
                why = "inotify: %s" % e
            try:
                self.kqueue = Kqueue(self.kmod)
                self.server.loop.add_reader(self.kqueue.fd, self._on_kqueue)
                self.backend = "kqueue"
                log("watching agent files with kqueue (at most %d fds), the rest by stat (%s)" % (self.kq_budget, why))
                self._start_polling()
                return
            except (OSError, AttributeError) as e:
                self.kqueue = None
                why += "; kqueue: %s" % e
        self.backend = "poll"
        log("inotify unavailable (%s); watching agent files by stat: directories by their mtime (every 1 "
            "to %.0f s), files by how recently they changed (every 1 to %.0f s)" % (why, DIR_IDLE_MAX, STAT_IDLE_MAX))

    def guarded(self, what, fn, *args):
        """Read one file, row or directory under its own guard: what no parser expected is skipped
        and counted (/health skippedRecords), logged once, and the rest is read."""
        try:
            return fn(*args)
        except Exception as e:
            self.bad_records += 1
            if what not in self._logged_bad and len(self._logged_bad) < 200:
                self._logged_bad.add(what)
                log("skipped %s (%s: %s)" % (what, type(e).__name__, str(e)[:200]))
            return None

    def listdir_counted(self, path):
        """Sorted entries of a directory; an unreadable one (left by `sudo codex`) is skipped and counted."""
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []
        except OSError as e:
            self.guarded(path, _raise, e)
            return []

    def recent(self, path):
        try:
            return self.clock() - os.stat(path).st_mtime <= self.recent_s
        except OSError:
            return False

    # -- directories -------------------------------------------------------------------------------
    def watch_root(self, path, handler, live=False):
        """An agent's own directory: watched (or awaited) for good, even after it is removed.
        live: its files can change at any moment (a registry): polled each second, or pinned to
        a kqueue fd."""
        self.roots[path] = handler
        self.watch_dir(path, handler, live=live)

    def live_file(self, path):
        """A file that can change at any moment (a database, its -wal, an index): looked at each
        second when polled, pinned to a kqueue fd (once it exists)."""
        self.live_paths.add(path)
        self.poller.hold("live", self.live_paths)
        if self.kqueue is not None and path in self.poller.files:
            self._kq_add(path, KQ_FILE, pinned=True)

    def hold(self, source, paths):
        """Files or directories that can change now, as `source` knows (its previous ones are let go):
        polled each second, or given a kqueue fd. inotify sees every change anyway."""
        paths = frozenset(paths)
        self.poller.hold(source, paths)
        if self.kqueue is not None:
            for p in paths:
                if p in self.poller.files:
                    self._kq_add(p, KQ_FILE)
                elif p in self.poller.dirs:
                    self._kq_add(p, KQ_DIR)

    def watch_dir(self, path, handler, live=False):
        """Watch a directory; a missing one is watched for through its nearest existing parent."""
        if self.inotify is None:
            self.poll_dir(path, handler, live)
            if self.kqueue is not None:
                self._kq_dir(path, pinned=live or path in self.roots)
            return
        if path in self.watched_dirs or path in self.polled_dirs:
            return
        if os.path.isdir(path):
            # the caller lists it after this (so what is made before the watch is not lost)
            self._add_dir_watch(path, handler)
            return
        self.pending_dirs[path] = handler
        self._settle_pending()

    def _add_dir_watch(self, path, handler):
        try:
            wd = self.inotify.add_watch(path, DIR_EVENTS)
        except OSError as e:  # ENOSPC: the user's max_user_watches is used up
            log("cannot watch %s (%s); scanning it by stat every %.1fs instead" % (path, e, self.poll_interval))
            self.poll_dir(path, handler)  # its first scan reports what is there
            return False
        self.watches[wd] = (path, handler)
        self.watched_dirs[path] = wd
        self.pending_dirs.pop(path, None)
        return True

    def _settle_pending(self):
        """Watch each awaited directory that exists now (and tell its handler, which lists it), and
        the nearest existing parent of each that does not. After every new watch look again: a
        directory made between our look and the watch on its parent sends us no event."""
        looked_again = True
        while looked_again and self.inotify is not None:
            looked_again = False
            for path, handler in list(self.pending_dirs.items()):
                if self.pending_dirs.get(path) is not handler:
                    continue  # settled meanwhile (a handler below watched it)
                if os.path.isdir(path):
                    if not self._add_dir_watch(path, handler):
                        self.pending_dirs.pop(path, None)  # polled instead (a baseline: listed here)
                    handler(path, None, IN_CREATE | IN_ISDIR)
                    looked_again = True
                    continue
                parent = os.path.dirname(path)
                while parent and parent != os.path.dirname(parent) and not os.path.isdir(parent):
                    parent = os.path.dirname(parent)
                if parent and parent not in self.watched_dirs:
                    try:
                        wd = self.inotify.add_watch(parent, IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF)
                    except OSError as e:  # scan the missing directory instead: it lists empty until made
                        log("cannot watch %s (%s); scanning %s by stat every %.1fs instead"
                            % (parent, e, path, self.poll_interval))
                        self.poll_dir(path, handler)
                        continue
                    self.watches[wd] = (parent, self._on_ancestor)
                    self.watched_dirs[parent] = wd
                    looked_again = True

    def _on_ancestor(self, directory, name, mask):
        self._settle_pending()

    def _on_inotify(self):
        changed = False
        for wd, mask, name in self.inotify.read():
            if mask & IN_Q_OVERFLOW:
                self.on_overflow()
                changed = True
                continue
            entry = self.watches.get(wd)
            if entry is None:
                continue
            directory, handler = entry
            if mask & IN_IGNORED:
                self.watches.pop(wd, None)
                if self.watched_dirs.get(directory) == wd:
                    del self.watched_dirs[directory]
                    if directory in self.roots and self.inotify is not None:
                        self.pending_dirs[directory] = self.roots[directory]  # removed: await it again
                if self.pending_dirs:
                    self._settle_pending()  # an awaited directory's watched parent went away
                continue
            self.guarded("%s/%s" % (directory, name or ""), handler, directory, name or None, mask)
            if self.pending_dirs and mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) \
                    and handler != self._on_ancestor:
                self.guarded(directory, self._settle_pending)  # a parent of an awaited directory may be watched
            changed = True
        if changed:
            self.server.after_watchers()

    def poll_dir(self, path, handler, live=False):
        """Watch a directory by stat (no inotify here, or no watch left for it). What it holds now
        is the baseline: the caller lists it (a missing one lists empty until it is made)."""
        self.pending_dirs.pop(path, None)
        self.poller.add_dir(path, handler, live)
        self._start_polling()

    def _start_polling(self):
        if not self._polling:
            self._polling = True
            self.server.loop.call_later(self.poll_interval, self._poll)

    def _poll(self):
        """One tick of the StatPoller: what is due is looked at, what changed is reported as inotify
        would (created, modified, deleted). A failing handler is counted and logged (guarded) and the
        tick goes on; the next tick is always due. A tick that finds nothing costs nothing more."""
        try:
            if self._dispatch(self.poller.run()):
                self.server.after_watchers()
        except Exception:
            import traceback
            log("stat scan failed:\n" + traceback.format_exc())
        finally:
            self.server.loop.call_later(self.poll_interval, self._poll)

    def _dispatch(self, events):
        for handler, directory, name, mask in events:
            self.guarded(os.path.join(directory, name), handler, directory, name, mask)
        return bool(events)

    # -- kqueue: an fd per directory and per file that can change now, within a budget -------------
    def _kq_dir(self, path, pinned=False):
        """A directory gets an fd when it is an agent's own (pinned) or changed lately; an idle one
        is left to the poller, which hands it over (on_active) once it changes."""
        d = self.poller.dirs.get(path)
        if d is None or d.stamp is None:
            return  # missing: polled until it is made
        if pinned or self.clock() - d.changed < KQUEUE_RECENT_DIR_S:
            self._kq_add(path, KQ_DIR, pinned)

    def _on_active(self, path, is_dir):
        """The poller saw a file or directory change: under kqueue it gets an fd (it may change again)."""
        if self.kqueue is None:
            return
        if is_dir and path in self.poller.dirs:
            self._kq_add(path, KQ_DIR, pinned=path in self.roots)
        elif not is_dir and path in self.poller.files:
            self._kq_add(path, KQ_FILE, pinned=path in self.live_paths)

    def _kq_add(self, path, kind, pinned=False):
        """Follow path by a kqueue fd (suspending its timed looks). With the budget spent, the least
        recently active path that is not pinned goes back to the poller; if every one is pinned,
        path stays polled. -> True when path has an fd."""
        if path in self.kq_paths:
            self.kq_paths.move_to_end(path)
            if pinned:
                self.kq_pinned.add(path)
            return True
        if len(self.kq_paths) >= self.kq_budget:
            victim = next((p for p in self.kq_paths if p not in self.kq_pinned), None)
            if victim is None:
                return False
            self._kq_drop(victim)
        try:
            wd = self.kqueue.add_watch(path, kind)
        except OSError as e:
            if ("kqueue", path) not in self._logged_bad and len(self._logged_bad) < 200:
                self._logged_bad.add(("kqueue", path))
                log("cannot follow %s with kqueue (%s); looking at it by stat instead" % (path, e))
            return False
        self.kq_paths[path] = wd
        self.kq_wds[wd] = path
        if pinned:
            self.kq_pinned.add(path)
        self.poller.suspend(path)
        return True

    def _kq_drop(self, path):
        wd = self.kq_paths.pop(path, None)
        if wd is None:
            return
        self.kq_wds.pop(wd, None)
        self.kq_pinned.discard(path)
        self.kqueue.remove_watch(wd)
        self.poller.resume(path)

    def _on_kqueue(self):
        """kqueue events: each names a file or directory that changed; the poller looks at it now
        and reports what changed, as inotify would. A deleted or renamed one loses its fd (the fd
        follows the old file) and is looked at by stat until it is active again."""
        changed = False
        for wd, mask, _ in self.kqueue.read():
            path = self.kq_wds.get(wd)
            if path is None:
                continue
            self.kq_paths.move_to_end(path)
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                self._kq_drop(path)
            events = self.poller.check(path)
            parent = os.path.dirname(path)
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and parent in self.poller.dirs:
                events += self.poller.check(parent)
            changed = self._dispatch(events) or changed
        if changed:
            self.server.after_watchers()

    # -- files -------------------------------------------------------------------------------------
    def tail_thread(self, path, agent, tid, reducer, reader):
        """Read what was appended to a transcript and reduce it into that thread's state.
        -> (state, records). The first read takes the file's tail (and its head, for the title);
        a read that stops at its budget is continued by reader(path) on a later loop turn."""
        tail = self.tails.get(path)
        cold = tail is None
        if cold:
            tail = self.tails[path] = FileTail(path)
        long_before = tail.skipped_lines
        lines, reset = tail.read(cold_tail=TAIL_BYTES)
        if tail.skipped_lines != long_before:
            self.count_long_lines(path, tail.skipped_lines - long_before)
        if tail.more:
            self.read_later(path, reader)
        state = self.states.get(path)
        if state is None or reset:
            state = self.states[path] = new_thread_state(agent, tid)
            self.state_paths.setdefault((agent, tid), path)
            if cold and tail.offset > TAIL_BYTES:
                head = new_thread_state(agent, tid)
                for rec in parse_json_lines(read_head_lines(path))[0]:
                    reducer(head, rec)
                state.update(firstPrompt=head["firstPrompt"], cwd=head["cwd"], model=head["model"])
                state["usagePartial"] = True  # tokens before the tail are not counted (Codex's totals are exact anyway)
        records, bad = parse_json_lines(lines)
        self.bad_records += bad
        state["bad"] += bad
        before = state["bad"]
        for rec in records:
            reducer(state, rec)
        self.bad_records += state["bad"] - before  # fields a reducer skipped (a count of 10^400)
        return state, records

    def count_long_lines(self, path, n):
        self.long_lines += n
        self.bad_records += n
        if len(self._logged_bad) < 200 and ("long", path) not in self._logged_bad:
            self._logged_bad.add(("long", path))
            log("skipped a line over %d MB in %s (and count them from now on)" % (MAX_LINE_BYTES >> 20, path))

    def read_later(self, path, reader):
        """A file read stopped at its budget: reader(path) reads the rest on a later loop turn, so
        HTTP and tmux events are served in between (a 400 MB append takes many short turns, not one
        long one)."""
        if path in self._reads_due:
            return
        self._reads_due.add(path)
        self.server.loop.call_later(0.0, self._read_due, path, reader)

    def _read_due(self, path, reader):
        self._reads_due.discard(path)
        self.guarded(path, reader, path)
        self.server.after_watchers()

    # -- databases ---------------------------------------------------------------------------------
    def db_changed(self, db, mask):
        """An event on a database or its -wal is a real change, not one our own read caused: a
        write (IN_MODIFY; we never write), or a file whose inode, size or mtime differs from what
        it was when we last read. Our read's close (IN_CLOSE_WRITE) and -shm events are not."""
        return bool(mask & IN_MODIFY) or sqlite_stamp(db) != self.db_stamps.get(db)

    def db_read(self, db, read):
        """read() now, or, while the database's writer is committing (the -wal write that woke us
        comes before the commit is visible), as soon as its write lock is released. Where the lock
        cannot be seen, read now and once more a moment later."""
        if db in self.db_waits:
            return  # a read is already waiting for this database
        locked = sqlite_write_locked(db)
        if locked:
            self.db_waits[db] = 0
            self.server.loop.call_later(0.002, self._db_read_retry, db, read)
            return
        read()
        if locked is None:
            self.db_waits[db] = DB_WAIT_TRIES
            self.server.loop.call_later(0.1, self._db_read_retry, db, read)

    def _db_read_retry(self, db, read):
        tries = self.db_waits.get(db, 0) + 1
        if tries < DB_WAIT_TRIES and sqlite_write_locked(db):
            self.db_waits[db] = tries  # a long transaction: look less often (at most every 100 ms)
            self.server.loop.call_later(min(0.1, 0.002 * tries), self._db_read_retry, db, read)
            return
        self.db_waits.pop(db, None)
        read()
        self.server.after_watchers()

    # -- what the per-agent watchers read of the core ---------------------------------------------
    def state(self, path):
        """The thread state reduced from the file at path, or None."""
        return self.states.get(path)

    def thread_states(self, agent):
        """[(path, state)] of one agent's files read so far."""
        return [(path, st) for path, st in self.states.items() if st["agent"] == agent]

    def path_of(self, agent, tid):
        """The first file read for a thread, or None."""
        return self.state_paths.get((agent, tid))

    def is_tailed(self, path):
        return path in self.tails

    def now(self):
        """The core's clock (epoch seconds; a test's own clock where one is given)."""
        return self.clock()

    def horizon(self):
        """The time (epoch seconds) before which a cold start reads nothing (recent_days)."""
        return self.clock() - self.recent_s

    def count_bad(self, n=1):
        """Records (rows, files) no parser expected: skipped and counted (/health skippedRecords)."""
        self.bad_records += n

    def db_reading(self, db):
        """A read of db begins: what it looks like now is what the next change is told from."""
        self.db_stamps[db] = sqlite_stamp(db)

    def db_read_failed(self, db):
        """A read of db failed: its next change reads it again."""
        self.db_stamps.pop(db, None)

    def close(self):
        if self.inotify is not None:
            self.server.loop.remove_reader(self.inotify.fd)
            self.inotify.close()
            self.inotify = None
        if self.kqueue is not None:
            self.server.loop.remove_reader(self.kqueue.fd)
            self.kqueue.close()
            self.kqueue = None
            self.kq_paths.clear()
            self.kq_wds.clear()


class WatcherHost(object):
    """What an agent's watcher may ask of the server, and nothing more: the event loop (its timers),
    the apply step for what the agent's files say (`update(agent, thread id, **fields)`, the server's
    apply_thread_update), a registry's word that a pid exited, and that a batch of changes is done
    (the core calls `after_watchers`)."""

    def __init__(self, loop, update, pid_exited, after_watchers):
        self.loop = loop
        self.update = update
        self.pid_exited = pid_exited
        self.after_watchers = after_watchers


class AgentWatcher(object):
    """One agent's files over the shared WatchCore: start() watches its directories, cold_steps()
    are the reads of what they hold now (each run under the core's guard). Each watcher tells the
    server what its files say (host.update); which source wins is decided there.

    thread_files and cwd_dirs name the files a live conversation can change (the Linker's holds:
looked at each second when polled, given a kqueue fd). The class methods answer, from the agent's
files, what a restore asks (Resurrect): which
    conversation a process runs (live_id), which ran in a directory (cwd_candidates), and whether one
    is still there (conversation_exists)."""

    def __init__(self, core, host, spec, paths):
        self.core = core
        self.host = host
        self.spec = spec
        self.agent = spec.name
        self.paths = paths  # this agent's (its spec's paths)

    def start(self):
        pass

    def cold_steps(self):
        return ()

    def thread_files(self, tid, cwd):
        """The files of one conversation that can change now (its agent runs, a hook named it),
        beyond the one it was read from. cwd: where it runs, or None."""
        return ()

    def cwd_dirs(self, cwd):
        """Where an agent running in cwd, on a conversation we cannot name, writes."""
        return ()

    @classmethod
    def live_id(cls, spec, paths, pids):
        """(thread id, source) of the conversation one of these processes runs, from a registry the
        agent keeps; None."""
        return None

    @classmethod
    def cwd_candidates(cls, spec, paths, cwd):
        """[(mtime, thread id)] of conversations started in cwd (a restore's last-resort guess)."""
        return []

    @classmethod
    def conversation_exists(cls, spec, paths, tid):
        """The conversation can still be resumed (its file is there). True where nothing local tells."""
        return True


class ClaudeWatcher(AgentWatcher):
    """Claude Code: its live registry ~/.claude/sessions/<pid>.json (status, pid, name) and its
    transcripts ~/.claude/projects/<project dir>/<session id>.jsonl (history, title, usage)."""

    def __init__(self, core, host, spec, paths):
        AgentWatcher.__init__(self, core, host, spec, paths)
        self.registry = {}  # pid -> registry entry
        self.registry_files = {}  # registry file -> pid

    def start(self):
        claude = self.paths["home"]
        self.core.watch_root(os.path.join(claude, "sessions"), self._on_registry_dir, live=True)
        self.core.watch_root(os.path.join(claude, "projects"), self._on_projects_dir)

    def cold_steps(self):
        return (self._scan_claude_registry, self._scan_claude_projects)

    def thread_files(self, tid, cwd):
        """projects/<cwd's project>/<id>.jsonl (there or not yet: a new session writes it at its
        first prompt)."""
        return [os.path.join(self.cwd_dirs(cwd)[0], tid + ".jsonl")] if cwd else []

    def cwd_dirs(self, cwd):
        return [os.path.join(self.paths["home"], "projects", claude_project_dir_name(cwd))]

    def _scan_claude_registry(self):
        d = os.path.join(self.paths["home"], "sessions")
        for name in dir_entries(d, ".json"):
            self.core.guarded(os.path.join(d, name), self._read_registry_file, os.path.join(d, name))

    def _on_registry_dir(self, directory, name, mask):
        if name is None:
            return self._scan_claude_registry()
        if not name.endswith(".json") or name.startswith("."):
            return
        path = os.path.join(directory, name)
        if mask & (IN_DELETE | IN_MOVED_FROM) or not os.path.exists(path):
            pid = self.registry_forget(path)
            if pid is not None:
                self.host.pid_exited(self.agent, pid)
            return
        self._read_registry_file(path)

    def registry_forget(self, path):
        pid = self.registry_files.pop(path, None)
        if pid is not None:
            self.registry.pop(pid, None)
        return pid

    def _read_registry_file(self, path):
        try:
            raw = read_foreign(path, REGISTRY_MAX, follow=False)
            entry = claude_registry_entry(clean_parsed_strings(json.loads(raw.decode("utf-8"))))
        except ForeignFileError:
            raise  # a FIFO, a link, /dev/zero, a huge file: skipped and counted by the guard
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return  # half-written: the next event re-reads it
        if entry is None:
            return
        self.registry_files[path] = entry["pid"]
        self.registry[entry["pid"]] = entry
        self._apply(entry["sessionId"])

    def _transcript_path(self, session_id, cwd):
        projects = os.path.join(self.paths["home"], "projects")
        if cwd:
            p = os.path.join(projects, claude_project_dir_name(cwd), session_id + ".jsonl")
            if os.path.exists(p):
                return p
        return self.core.path_of(self.agent, session_id)

    def _scan_claude_projects(self):
        projects = os.path.join(self.paths["home"], "projects")
        for d in dir_entries(projects):
            full = os.path.join(projects, d)
            if os.path.isdir(full):
                self.core.watch_dir(full, self._on_project)
                for name in dir_entries(full, ".jsonl"):
                    path = os.path.join(full, name)
                    if not self.core.is_tailed(path) and self.core.recent(path):
                        self.core.guarded(path, self._read_transcript, path)

    def _on_projects_dir(self, directory, name, mask):
        if name is None:
            return self._scan_claude_projects()
        full = os.path.join(directory, name)
        if os.path.isdir(full):
            self.core.watch_dir(full, self._on_project)
            for n in dir_entries(full, ".jsonl"):
                self.core.guarded(os.path.join(full, n), self._read_transcript, os.path.join(full, n))

    def _on_project(self, directory, name, mask):
        if name and name.endswith(".jsonl") and not mask & (IN_DELETE | IN_MOVED_FROM):
            self._read_transcript(os.path.join(directory, name))

    def _read_transcript(self, path):
        sid = os.path.basename(path)[:-6]
        if valid_thread_id(self.agent, sid):
            _, records = self.core.tail_thread(path, self.agent, sid, claude_reduce, self._read_transcript)
            if records:
                self._apply(sid)

    def _apply(self, sid):
        """Combine the registry (live) and the transcript (history) for one Claude thread."""
        # A crashed Claude leaves its file behind (it says nothing live); a resumed session can
        # have a stale file and a live one: the live one wins.
        live = [e for e in self.registry.values() if e["sessionId"] == sid and claude_registry_alive(e)]
        entry = max(live, key=lambda e: e["updatedAt"]) if live else None
        path = self._transcript_path(sid, entry["cwd"] if entry else None)
        state = self.core.state(path) if path else None
        if path and state is None:
            self.core.guarded(path, self._read_transcript, path)
            state = self.core.state(path)
        if state is None:
            state = new_thread_state(self.agent, sid)
            if entry:
                state["cwd"] = entry["cwd"]
        registry_status = entry["status"] if entry else None
        status, detail = claude_live_status(state["status"], registry_status,
                                            entry["waitingFor"] if entry else None, state["turns"],
                                            state.get("toolPending", False))
        if detail is None and status == state["status"]:
            detail = state["detail"]
        fields = dict(status=status, detail=detail, title=thread_title(state, entry["name"] if entry else None),
                      cwd=state["cwd"] or (entry and entry["cwd"]), model=state["model"], source="file",
                      usage=claude_usage(state))
        if entry:
            fields["pid"] = entry["pid"]
            fields["proc_start"] = entry["procStart"]
        updated = max(state["updatedAt"], entry["updatedAt"] if entry else 0)
        self.host.update(self.agent, sid, updated_at=updated or None, **fields)

    @classmethod
    def live_id(cls, spec, paths, pids):
        reg = os.path.join(paths["home"], "sessions")
        for p in pids:
            try:
                entry = claude_registry_entry(json.loads(read_foreign(os.path.join(reg, "%d.json" % p), REGISTRY_MAX,
                                                                      follow=False).decode("utf-8")))
            except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                continue
            if entry and claude_registry_alive(entry) and valid_thread_id(spec.name, entry["sessionId"]):
                return entry["sessionId"], "claude-registry"
        return None

    @classmethod
    def cwd_candidates(cls, spec, paths, cwd):
        d = os.path.join(paths["home"], "projects", claude_project_dir_name(cwd or ""))
        out = []
        for name in dir_entries(d, ".jsonl"):
            try:
                out.append((os.stat(os.path.join(d, name)).st_mtime, name[:-6]))
            except OSError:
                pass
        return out

    @classmethod
    def conversation_exists(cls, spec, paths, tid):
        projects = os.path.join(paths["home"], "projects")
        for d in dir_entries(projects):
            try:
                if os.path.getsize(os.path.join(projects, d, tid + ".jsonl")) > 0:
                    return True
            except OSError:
                continue
        return False


class CodexWatcher(AgentWatcher):
    """Codex: rollouts ~/.codex/sessions/YYYY/MM/DD/rollout-<time>-<uuid>.jsonl, thread names from
    session_index.jsonl and state_5.sqlite, turn statuses from thread_history_1.sqlite.

    A resumed conversation is appended to its ORIGINAL rollout, in the day directory of its first
    day: every day directory is watched (only recent ones are read at cold start), state_5.sqlite's
    threads.updated_at finds rollouts resumed lately wherever they are, and
    thread-writer-locks/<id>.lock (there while Codex has the thread loaded) holds its rollout."""

    def __init__(self, core, host, spec, paths):
        AgentWatcher.__init__(self, core, host, spec, paths)
        self.codex_names = {}  # thread id -> name
        self.index_tail = None  # FileTail of session_index.jsonl
        self.rollout_paths = {}  # thread id -> its rollout (from state_5.sqlite and the listings)
        self.updated_seen = None  # the greatest threads.updated_at read (s): the next query's lower bound
        self.names_read = False  # state_5.sqlite was read once (later renames are news)
        self.unknown = set()  # ids state_5.sqlite had no rollout for, at its last read
        self.updated_lately = {}  # thread id -> (updated_at, rollout) of rows updated in the last minutes

    def start(self):
        codex = self.paths["home"]
        self.core.watch_root(codex, self._on_codex_home)
        self.core.watch_root(os.path.join(codex, "sessions"), self._on_codex_tree)
        self.core.watch_root(os.path.join(codex, "thread-writer-locks"), self._on_codex_locks, live=True)
        for name in ("state_5.sqlite", "state_5.sqlite-wal", "session_index.jsonl"):
            self.core.live_file(os.path.join(codex, name))

    def cold_steps(self):
        return (self._read_codex_index, self._read_codex_names_db, self._scan_codex_sessions,
                self._codex_turns_fallback, self._read_codex_locks)

    def rollout_path(self, tid):
        """The rollout of a thread id: known from a listing or state_5.sqlite (a path there is
        taken only inside sessions/ and only with the id in its name), else None."""
        path = self.rollout_paths.get(tid) or self.core.path_of(self.agent, tid)
        if path or not valid_thread_id(self.agent, tid) or tid in self.unknown:
            return path
        db = os.path.join(self.paths["home"], "state_5.sqlite")
        if not os.path.exists(db):
            return None
        import sqlite3
        try:
            rows = sqlite_rows(db, "SELECT rollout_path FROM threads WHERE id = ?", (tid,))
        except sqlite3.Error:
            return None
        found = self._rollout_of(tid, rows[0]["rollout_path"]) if rows else None
        if found is None and len(self.unknown) < 10000:
            self.unknown.add(tid)  # asked again once state_5.sqlite changes
        return found

    def _rollout_of(self, tid, path):
        root = os.path.join(self.paths["home"], "sessions") + os.sep
        if isinstance(path, str) and os.path.abspath(path).startswith(root) and codex_id_from_path(path) == tid:
            self.rollout_paths[tid] = os.path.abspath(path)
            return self.rollout_paths[tid]
        return None

    def thread_files(self, tid, cwd):
        path = self.rollout_path(tid)
        return [path] if path else []

    def cwd_dirs(self, cwd):
        """A Codex with no thread we can name writes its new rollout under today's directory."""
        return [os.path.join(self.paths["home"], "sessions",
                             time.strftime("%Y/%m/%d", time.localtime(self.core.now())))]

    def _read_codex_locks(self):
        self._on_codex_locks(os.path.join(self.paths["home"], "thread-writer-locks"), None, 0)

    def _on_codex_locks(self, directory, name, mask):
        """thread-writer-locks/<id>.lock is there while Codex (its TUI, or its app-server daemon)
        has the thread loaded: that thread's rollout can change now, wherever it is."""
        ids = [n[:-5] for n in dir_entries(directory, ".lock")]
        self.core.hold("codex-locks", [p for p in (self.rollout_path(t) for t in ids
                                                   if valid_thread_id(self.agent, t)) if p])

    def _codex_turns_fallback(self):
        """A rollout read from its tail may not reach back to its turn's task_started (a long turn):
        thread_history_1.sqlite knows each turn's status (inProgress/completed/interrupted/failed)."""
        import sqlite3
        unknown = {st["id"]: path for path, st in self.core.thread_states(self.agent) if st["turns"] == 0}
        db = os.path.join(self.paths["home"], "thread_history_1.sqlite")
        if not unknown or not os.path.exists(db):
            return
        try:
            rows = sqlite_rows(db, "SELECT thread_id, status, error_json FROM thread_turns t WHERE started_at = "
                                   "(SELECT max(started_at) FROM thread_turns u WHERE u.thread_id = t.thread_id)")
        except sqlite3.Error as e:
            log("codex thread_history_1.sqlite not readable now (%s)" % e)
            return
        for row in rows:
            path = unknown.get(row["thread_id"])
            if path is None:
                continue
            status, detail = codex_turn_status(row["status"], row["error_json"])
            if status:
                self.core.state(path).update(status=status, detail=detail, turns=1)
                self.core.guarded(path, self._apply, path)

    def _on_codex_home(self, directory, name, mask):
        if name is None:  # ~/.codex appeared (a first Codex run): read what it already holds
            self._read_codex_index()
            self.core.db_read(os.path.join(directory, "state_5.sqlite"), self._read_codex_names_db)
        elif name == "session_index.jsonl":
            self._read_codex_index()
        elif name in ("state_5.sqlite", "state_5.sqlite-wal"):
            db = os.path.join(directory, "state_5.sqlite")
            if self.core.db_changed(db, mask):
                self.core.db_read(db, self._read_codex_names_db)
        elif name == "sessions" and mask & IN_ISDIR:
            self.core.watch_dir(os.path.join(directory, name), self._on_codex_tree)
            self._scan_codex_sessions()

    def _read_codex_index(self):
        path = os.path.join(self.paths["home"], "session_index.jsonl")
        if self.index_tail is None:
            self.index_tail = FileTail(path)
        tail = self.index_tail
        long_before = tail.skipped_lines
        lines, _ = tail.read(cold_tail=MAX_LINE_BYTES)  # the newest names are at its end
        if tail.skipped_lines != long_before:
            self.core.count_long_lines(path, tail.skipped_lines - long_before)
        if tail.more:
            self.core.read_later(path, lambda _path: self._read_codex_index())
        records, bad = parse_json_lines(lines)
        self.core.count_bad(bad)
        names = parse_codex_session_index(records)
        if names:
            self.codex_names.update(names)
            for rollout, st in self.core.thread_states(self.agent):
                if st["id"] in names:
                    self._apply(rollout)

    def _read_codex_names_db(self):
        """Thread names from state_5.sqlite (read-only; a locked or half-written DB is skipped), and
        the rollouts of threads updated since the last look: a conversation resumed in a day
        directory older than the cold start's window is read from there."""
        import sqlite3
        path = os.path.join(self.paths["home"], "state_5.sqlite")
        if not os.path.exists(path):
            return
        self.core.db_reading(path)
        since = self.updated_seen if self.updated_seen is not None else int(self.core.horizon())
        try:
            rows = sqlite_rows(path, "SELECT id, name FROM threads WHERE name IS NOT NULL AND name != ''")
            updated = sqlite_rows(path, "SELECT id, rollout_path, updated_at FROM threads WHERE updated_at >= ? "
                                        "ORDER BY updated_at", (since,))
        except sqlite3.Error as e:
            self.core.db_read_failed(path)
            log("codex state_5.sqlite not readable now (%s); will retry on its next change" % e)
            return
        live = self.names_read
        self.names_read = True
        self.unknown.clear()
        lately = self.core.now() - CODEX_UPDATED_HOLD_S
        for row in updated:
            stamp = row["updated_at"]
            if isinstance(stamp, int) and not isinstance(stamp, bool):
                self.updated_seen = max(self.updated_seen or 0, stamp)
            rollout = self._rollout_of(row["id"], row["rollout_path"]) \
                if valid_thread_id(self.agent, row["id"]) else None
            if rollout and isinstance(stamp, int) and stamp >= lately:
                self.updated_lately[row["id"]] = (stamp, rollout)
            if rollout and not self.core.is_tailed(rollout) and (live or self.core.recent(rollout)):
                self.core.guarded(rollout, self._read_codex_rollout, rollout)
        self.updated_lately = {t: v for t, v in self.updated_lately.items() if v[0] >= lately}
        self.core.hold("codex-updated", [rollout for _, rollout in self.updated_lately.values()])
        renamed = set()
        for row in rows:
            if self.codex_names.get(row["id"]) != row["name"]:
                self.codex_names[row["id"]] = row["name"]
                renamed.add(row["id"])
        if not renamed:
            return
        for rollout, st in self.core.thread_states(self.agent):
            if st["id"] in renamed:
                renamed.discard(st["id"])
                self._apply(rollout, moved_on=False)
        for tid in renamed if live else ():
            # renamed now, in a conversation we had not read (older than the window): it is live again
            rollout = self.rollout_path(tid)
            if rollout and valid_thread_id(self.agent, tid):
                self.core.guarded(rollout, self._read_codex_rollout, rollout)
                if self.core.state(rollout) is not None:
                    self._apply(rollout, moved_on=False, updated_at=int(self.core.now() * 1000))

    def _scan_codex_sessions(self):
        """Watch every day directory (a resumed conversation is appended where it began); read the
        rollouts of the recent ones (older ones resumed lately come from state_5.sqlite)."""
        listdir_counted = self.core.listdir_counted
        root = os.path.join(self.paths["home"], "sessions")
        horizon = time.strftime("%Y/%m/%d", time.localtime(self.core.horizon() - 86400))
        for y in listdir_counted(root):
            ydir = os.path.join(root, y)
            if not os.path.isdir(ydir):
                continue
            self.core.watch_dir(ydir, self._on_codex_tree)
            for m in listdir_counted(ydir):
                mdir = os.path.join(ydir, m)
                if not os.path.isdir(mdir):
                    continue
                self.core.watch_dir(mdir, self._on_codex_tree)
                for d in listdir_counted(mdir):
                    ddir = os.path.join(mdir, d)
                    if not os.path.isdir(ddir):
                        continue
                    self.core.watch_dir(ddir, self._on_codex_tree)
                    if "%s/%s/%s" % (y, m, d) < horizon:
                        continue
                    for name in listdir_counted(ddir):
                        path = os.path.join(ddir, name)
                        tid = codex_id_from_path(path)
                        if tid:
                            self.rollout_paths[tid] = path
                        if tid and not self.core.is_tailed(path) and self.core.recent(path):
                            self.core.guarded(path, self._read_codex_rollout, path)

    def _on_codex_tree(self, directory, name, mask):
        if name is None:
            return self._scan_codex_sessions()
        path = os.path.join(directory, name)
        if mask & IN_ISDIR or os.path.isdir(path):
            self.core.watch_dir(path, self._on_codex_tree)
            for sub in self.core.listdir_counted(path) if os.path.isdir(path) else ():
                self.core.guarded(os.path.join(path, sub), self._on_codex_tree, path, sub, IN_CREATE)
        elif codex_id_from_path(path) and not mask & (IN_DELETE | IN_MOVED_FROM):
            self.rollout_paths[codex_id_from_path(path)] = path
            self._read_codex_rollout(path)

    def _read_codex_rollout(self, path):
        tid = codex_id_from_path(path)
        before = self.core.state(path)
        before = before["status"] if before is not None else None
        state, records = self.core.tail_thread(path, self.agent, tid, codex_reduce, self._read_codex_rollout)
        if not records:
            return
        moved_on = before != state["status"] or any(codex_moved_on(rec) for rec in records)
        self._apply(path, moved_on)

    def _apply(self, path, moved_on=True, updated_at=None):
        """moved_on: the rollout shows the turn went on (else a wait known from the hook may hold).
        updated_at: a later time than the rollout's own (a rename seen now)."""
        state = self.core.state(path)
        tid = state["id"]
        self.host.update(
            self.agent, tid, status=state["status"], detail=state["detail"],
            title=thread_title(state, self.codex_names.get(tid)), cwd=state["cwd"], model=state["model"],
            updated_at=max(state["updatedAt"] or 0, updated_at or 0) or None, source="file",
            usage=state.get("usage"), moved_on=moved_on)

    @staticmethod
    def rollouts(paths):
        root = os.path.join(paths["home"], "sessions")
        for dirpath, _, names in os.walk(root):
            for name in names:
                if codex_id_from_path(name):
                    yield os.path.join(dirpath, name)

    @classmethod
    def cwd_candidates(cls, spec, paths, cwd):
        out = []
        for path in cls.rollouts(paths):
            head = new_thread_state(spec.name, codex_id_from_path(path))
            for rec in parse_json_lines(read_head_lines(path, 16384))[0][:3]:
                codex_reduce(head, rec)
            if head["cwd"] == cwd:
                out.append((os.stat(path).st_mtime, head["id"]))
        return out

    @classmethod
    def conversation_exists(cls, spec, paths, tid):
        return any(codex_id_from_path(p) == tid for p in cls.rollouts(paths))


class OpenCodeWatcher(AgentWatcher):
    """OpenCode: its SQLite database (sessions, their newest message, a running tool), read only
    for the sessions changed since the last look."""

    def __init__(self, core, host, spec, paths):
        AgentWatcher.__init__(self, core, host, spec, paths)
        self.db = paths["db"]
        self.newest_seen = 0  # the greatest session time_updated read (ms): the next query's lower bound
        self.query_due = False  # a query waits for OPENCODE_MIN_INTERVAL to pass
        self.queried_at = None  # monotonic time of the last query
        self.error_logged = False
        self._bad_rows = set()

    def start(self):
        self.core.watch_root(os.path.dirname(self.db), self._on_opencode_dir)
        self.core.live_file(self.db)
        self.core.live_file(self.db + "-wal")

    def cold_steps(self):
        return (self._query_opencode,)

    def _on_opencode_dir(self, directory, name, mask):
        base = os.path.basename(self.db)
        if name is None or (name in (base, base + "-wal") and self.core.db_changed(self.db, mask)):
            self._schedule_opencode()

    def _schedule_opencode(self):
        """OpenCode writes its WAL many times per second while streaming: a change is read at once,
        and then at most every OPENCODE_MIN_INTERVAL seconds (changes in between are read at its end)."""
        if self.query_due:
            return
        wait = 0.0 if self.queried_at is None else self.queried_at + OPENCODE_MIN_INTERVAL - time.monotonic()
        if wait <= 0:
            self.core.db_read(self.db, self._query_opencode)  # the caller publishes
            return
        self.query_due = True
        self.host.loop.call_later(wait, self._query_opencode_later)

    def _query_opencode_later(self):
        self.query_due = False
        self.core.db_read(self.db, self._query_opencode)
        self.host.after_watchers()

    def _query_opencode(self):
        """Read only the sessions changed since the last look (read-only, short busy timeout)."""
        import sqlite3
        path = self.db
        if not os.path.exists(path):
            return
        self.queried_at = time.monotonic()
        self.core.db_reading(path)
        since = self.newest_seen or int(self.core.horizon() * 1000)
        try:
            conn = sqlite_ro(path)
            try:
                sessions = conn.execute(
                    "SELECT id, parent_id, directory, title, time_updated, model%s FROM session "
                    "WHERE time_updated > ? ORDER BY time_updated" % opencode_usage_columns(conn), (since,)).fetchall()
                updates = []
                for s in sessions:
                    row = self.core.guarded("opencode session %r" % (s["id"],), self._opencode_row, conn, s)
                    if row is not None:
                        updates.append(row)
            finally:
                conn.close()
        except sqlite3.Error as e:
            self.core.db_read_failed(path)
            if not self.error_logged:
                log("opencode.db not readable now (%s); retrying on its next change" % e)
                self.error_logged = True
            return
        self.error_logged = False
        for s, data, tool in updates:
            self.core.guarded("opencode session %r" % (s["id"],), self._apply, s, data, tool)

    def _opencode_row(self, conn, s):
        """One session row -> (row, newest message data, (a tool running, its last tool rejected)),
        or None for an odd row
        (counted once): time_updated not a number, id not text."""
        import sqlite3
        if not valid_thread_id(self.agent, s["id"]) or isinstance(s["time_updated"], bool) \
                or not isinstance(s["time_updated"], int):
            if s["id"] not in self._bad_rows and len(self._bad_rows) < 10000:
                self._bad_rows.add(s["id"])
                self.core.count_bad()
            return None
        msg = conn.execute("SELECT id, data FROM message WHERE session_id = ? "
                           "ORDER BY time_created DESC, id DESC LIMIT 1", (s["id"],)).fetchone()
        running_tool = rejected = False
        data = None
        if msg is not None:
            try:
                data = clean_parsed_strings(json.loads(msg["data"]))
            except (ValueError, TypeError, RecursionError):  # not JSON, NULL, a blob
                self.core.count_bad()
            try:
                running_tool = conn.execute(
                    "SELECT 1 FROM part WHERE message_id = ? AND data LIKE '%\"status\":\"running\"%' LIMIT 1",
                    (msg["id"],)).fetchone() is not None
                # the last few parts (ids grow with time): is the last call a rejected one?
                parts = []
                for row in conn.execute("SELECT data FROM part WHERE message_id = ? ORDER BY id DESC LIMIT 4",
                                        (msg["id"],)):
                    try:
                        parts.append(json.loads(row["data"]))
                    except (ValueError, TypeError, RecursionError):
                        parts.append(None)
                rejected = opencode_tool_rejected(parts)
            except sqlite3.InterfaceError:
                running_tool = False
        return s, data, (running_tool, rejected)

    def _apply(self, s, data, tool):
        self.newest_seen = max(self.newest_seen, s["time_updated"])
        status, detail = opencode_status(data, *tool)
        model = None
        try:
            m = json.loads(s["model"]) if s["model"] else None
            if isinstance(m, dict) and isinstance(m.get("id") or m.get("modelID"), str):
                model = m.get("id") or m.get("modelID")
        except (ValueError, TypeError, RecursionError):
            pass
        if isinstance(data, dict) and isinstance(data.get("modelID"), str) and data["modelID"]:
            model = data["modelID"]
        # the database cannot see a permission wait or a retry (the plugin can): moved_on=False
        self.host.update(
            self.agent, s["id"], status=status, detail=detail,
            title=_clip_title(clean_str(s["title"]) if isinstance(s["title"], str) else ""),
            cwd=clean_str(s["directory"]) if isinstance(s["directory"], str) else None,
            model=model, updated_at=s["time_updated"], subagent=bool(s["parent_id"]),
            source="file", usage=opencode_usage(s, data), moved_on=False)

    @classmethod
    def cwd_candidates(cls, spec, paths, cwd):
        import sqlite3
        try:
            return [(r["time_updated"], r["id"]) for r in sqlite_rows(
                paths["db"], "SELECT id, time_updated FROM session WHERE directory = ? AND parent_id IS NULL", (cwd,))]
        except sqlite3.Error:
            return []

    @classmethod
    def conversation_exists(cls, spec, paths, tid):
        import sqlite3
        try:
            return bool(sqlite_rows(paths["db"], "SELECT 1 FROM session WHERE id = ?", (tid,)))
        except sqlite3.Error:
            return False


class AmpWatcher(AgentWatcher):
    """Amp: one JSON file per thread, rewritten whole (format unverified, see amp_thread_state). Amp
    keeps threads on its servers: nothing local says whether one can still be resumed."""

    def __init__(self, core, host, spec, paths):
        AgentWatcher.__init__(self, core, host, spec, paths)
        self.read_stamps = {}  # path -> (mtime_ns, size) when last read

    def start(self):
        self.core.watch_root(self.paths["threads"], self._on_amp_dir)

    def cold_steps(self):
        return (self._scan_amp,)

    def _scan_amp(self):
        d = self.paths["threads"]
        for name in dir_entries(d, ".json"):
            path = os.path.join(d, name)
            if self.core.recent(path):
                self.core.guarded(path, self._read_amp, path)

    def _on_amp_dir(self, directory, name, mask):
        if name is None:
            return self._scan_amp()
        if name.endswith(".json") and not mask & (IN_DELETE | IN_MOVED_FROM):
            self._read_amp(os.path.join(directory, name))

    def _read_amp(self, path):
        try:
            st = os.stat(path)
            if self.read_stamps.get(path) == (st.st_mtime_ns, st.st_size):
                return
            if st.st_size > MAX_LINE_BYTES:
                raise ValueError("%d bytes, over the %d-byte cap" % (st.st_size, MAX_LINE_BYTES))
            data = clean_parsed_strings(json.loads(read_foreign(path, MAX_LINE_BYTES, follow=False).decode("utf-8")))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            self.core.count_bad()
            return  # half-written (Amp rewrites the whole file): the next event re-reads it
        self.read_stamps[path] = (st.st_mtime_ns, st.st_size)
        state = amp_thread_state(data, int(st.st_mtime * 1000))
        if state is None:
            return
        self.host.update(self.agent, state["id"], status=state["status"], detail=state["detail"],
                         title=thread_title(state), cwd=state["cwd"], model=state["model"],
                         updated_at=state["updatedAt"], source="file", usage=state.get("usage"))


class ChatFilesWatcher(AgentWatcher):
    """An agent that appends its chats to JSONL files, one directory of them per project, as its
    spec's ChatFiles says (Gemini CLI, Qwen Code, Pi): the chat directories are watched and their
    recent files tailed. Read only; nothing here writes, moves or deletes an agent's files."""

    def __init__(self, core, host, spec, paths):
        AgentWatcher.__init__(self, core, host, spec, paths)
        self.chat = spec.watch  # its ChatFiles
        self.projects_dir = os.path.join(paths["home"], self.chat.projects)

    def start(self):
        self.core.watch_root(self.projects_dir, self._on_projects)

    def cold_steps(self):
        return (self._scan_projects,)

    def _scan_projects(self):
        self._on_projects(self.projects_dir, None, 0)

    def chat_dir(self, cwd):
        """The directory of the chats started in cwd, as this watcher knows it now, or None."""
        return self.chat_dir_of(self.spec, self.paths, cwd)

    def cwd_dirs(self, cwd):
        d = self.chat_dir(cwd)
        return [d] if d else []

    def thread_files(self, tid, cwd):
        """The chat files of thread tid in cwd's chat directory, named by its id (or, header_id, by
        the id's start: Gemini's session-<time>-<first 8>.jsonl)."""
        d = self.chat_dir(cwd) if cwd else None
        out = []
        for name in dir_entries(d, ".jsonl") if d else ():
            named = self.chat.name_id(name)
            if named and (tid.startswith(named) if self.chat.header_id else named == tid):
                out.append(os.path.join(d, name))
        return out

    def _on_projects(self, directory, name, mask):
        """A new (name) or every (None) project directory: watch its chats and read its recent files."""
        if name is not None and not mask & IN_ISDIR:
            return
        for n in [name] if name else dir_entries(directory):
            d = os.path.join(directory, n, self.chat.chats) if self.chat.chats else os.path.join(directory, n)
            if os.path.isdir(os.path.join(directory, n)):
                self.core.watch_dir(d, self._on_chats)
                if os.path.isdir(d):
                    self._on_chats(d, None, 0)

    def _on_chats(self, directory, name, mask):
        if name is None:
            for n in dir_entries(directory, ".jsonl"):
                path = os.path.join(directory, n)
                if not self.core.is_tailed(path) and self.core.recent(path):
                    self.core.guarded(path, self._read_chat, path)
        elif name.endswith(".jsonl") and not mask & (IN_DELETE | IN_MOVED_FROM):
            self._read_chat(os.path.join(directory, name))

    @classmethod
    def chat_id(cls, spec, path):
        """The thread id of a chat file: from its name, or (header_id) its first line's sessionId."""
        tid = spec.watch.name_id(os.path.basename(path))
        if tid is None or not spec.watch.header_id:
            return tid if valid_thread_id(spec.name, tid) else None
        records = parse_json_lines(read_head_lines(path, 4096))[0]
        sid = records[0].get("sessionId") if records else None
        return sid if valid_thread_id(spec.name, sid) else None

    def _read_chat(self, path):
        state = self.core.state(path)
        tid = state["id"] if state is not None else self.chat_id(self.spec, path)
        if not tid:
            return
        _, records = self.core.tail_thread(path, self.agent, tid, self.chat.reducer, self._read_chat)
        if records:
            self._apply(path, records)

    def _apply(self, path, records):
        state = self.core.state(path)
        moved_on = self.chat.moved_on(records) if self.chat.moved_on else True
        fields = dict(status=state["status"], detail=state["detail"], title=thread_title(state), cwd=state["cwd"],
                      model=state["model"], updated_at=state["updatedAt"] or None, source="file",
                      moved_on=moved_on)
        if state.get("subagent"):
            fields["subagent"] = True
        if state.get("usage"):
            fields["usage"] = dict(state["usage"])
        self.host.update(self.agent, state["id"], **fields)

    @classmethod
    def chat_dir_of(cls, spec, paths, cwd):
        """The directory of the chats started in cwd, or None (the spec's project_of, by default)."""
        if spec.watch.project_of is None:
            return None
        project = os.path.join(paths["home"], spec.watch.projects, spec.watch.project_of(cwd or ""))
        return os.path.join(project, spec.watch.chats) if spec.watch.chats else project

    @classmethod
    def cwd_candidates(cls, spec, paths, cwd):
        d = cls.chat_dir_of(spec, paths, cwd)
        out = []
        for name in dir_entries(d, ".jsonl") if d else ():
            path = os.path.join(d, name)
            tid = cls.chat_id(spec, path)
            try:
                if tid:
                    out.append((os.stat(path).st_mtime, tid))
            except OSError:
                pass
        return out

    @classmethod
    def conversation_exists(cls, spec, paths, tid):
        """A chat file of this id is still there (a header_id file is named with the id's start)."""
        root = os.path.join(paths["home"], spec.watch.projects)
        for project in dir_entries(root):
            d = os.path.join(root, project, spec.watch.chats) if spec.watch.chats else os.path.join(root, project)
            for name in dir_entries(d, ".jsonl"):
                named = spec.watch.name_id(name)
                if named and (tid.startswith(named) if spec.watch.header_id else named == tid) and \
                        cls.chat_id(spec, os.path.join(d, name)) == tid:
                    return True
        return False


class GeminiWatcher(ChatFilesWatcher):
    """Gemini CLI: chats under ~/.gemini/tmp/<project>/chats; projects.json maps each directory to
    its project's name (a chat's cwd, and where a directory's chats are)."""

    def __init__(self, core, host, spec, paths):
        ChatFilesWatcher.__init__(self, core, host, spec, paths)
        self.project_dirs = {}  # project name -> directory

    def start(self):
        self.core.watch_root(self.paths["home"], self._on_gemini_home)
        self.core.live_file(os.path.join(self.paths["home"], "projects.json"))
        ChatFilesWatcher.start(self)

    def chat_dir(self, cwd):
        """From projects.json as last read (no read of it per question)."""
        project = next((name for name, d in self.project_dirs.items() if d == cwd), None)
        return os.path.join(self.projects_dir, project, self.chat.chats) if project else None

    def cold_steps(self):
        return (self._read_gemini_projects, self._scan_projects)

    def _on_gemini_home(self, directory, name, mask):
        if name in (None, "projects.json"):
            self._read_gemini_projects()
        if name == self.chat.projects and mask & IN_ISDIR:
            self.core.watch_dir(os.path.join(directory, name), self._on_projects)
            self._on_projects(os.path.join(directory, name), None, 0)

    @staticmethod
    def projects(paths, strict=False):
        """projects.json: {directory: project name}, or {} when unreadable (strict: one that is not
        a regular file, or over FOREIGN_JSON_MAX, raises ForeignFileError)."""
        try:
            raw = read_foreign(os.path.join(paths["home"], "projects.json"), FOREIGN_JSON_MAX)
            data = json.loads(raw.decode("utf-8"))
        except ForeignFileError:
            if strict:
                raise  # the watcher's: skipped and counted by the guard
            return {}
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return {}
        projects = data.get("projects") if isinstance(data, dict) else None
        return {k: v for k, v in projects.items() if isinstance(k, str) and isinstance(v, str)} \
            if isinstance(projects, dict) else {}

    def _read_gemini_projects(self):
        projects = self.projects(self.paths, strict=True)
        if projects:
            self.project_dirs = {v: k for k, v in projects.items()}

    def _apply(self, path, records):
        state = self.core.state(path)
        if not state["turns"] and self.core.path_of(self.agent, state["id"]) not in (None, path):
            # a resume appends to the original file and leaves a stub with the same id (a header
            # and the session context, never written again): the original speaks for the thread
            return
        if not state["cwd"]:
            parts = path.split(os.sep)
            if len(parts) >= 3:
                state["cwd"] = self.project_dirs.get(parts[-3])
        ChatFilesWatcher._apply(self, path, records)

    @classmethod
    def chat_dir_of(cls, spec, paths, cwd):
        project = cls.projects(paths).get(cwd)
        return os.path.join(paths["home"], spec.watch.projects, project, spec.watch.chats) if project else None


def qwen_registry_id(qwen_dir, pids):
    """Qwen Code's live registry ~/.qwen/sessions/<pid>.json -> the session id of one of pids."""
    for p in pids:
        try:
            data = json.loads(read_foreign(os.path.join(qwen_dir, "sessions", "%d.json" % p), REGISTRY_MAX,
                                           follow=False).decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(data, dict) and data.get("pid") == p and valid_thread_id("qwen", data.get("sessionId")):
            return data["sessionId"]
    return None


class QwenWatcher(ChatFilesWatcher):
    """Qwen Code: chats under ~/.qwen/projects/<encoded cwd>/chats, and its live registry
    ~/.qwen/sessions/<pid>.json ({pid, sessionId, cwd}; removed at exit)."""

    def __init__(self, core, host, spec, paths):
        ChatFilesWatcher.__init__(self, core, host, spec, paths)
        self.registry_dir = os.path.join(paths["home"], "sessions")
        self.registry = {}  # registry file -> (pid, session id)

    def start(self):
        ChatFilesWatcher.start(self)
        self.core.watch_root(self.registry_dir, self._on_qwen_registry, live=True)

    def cold_steps(self):
        return (self._scan_projects, self._scan_qwen_registry)

    def _scan_qwen_registry(self):
        self._on_qwen_registry(self.registry_dir, None, 0)

    def _on_qwen_registry(self, directory, name, mask):
        """A registry file names the exact pid of a thread, so its pane, without hooks."""
        for n in [name] if name else dir_entries(directory, ".json"):
            if not n or not n.endswith(".json"):
                continue
            path = os.path.join(directory, n)
            if name and mask & (IN_DELETE | IN_MOVED_FROM) or not os.path.exists(path):
                gone = self.registry.pop(path, None)
                if gone:
                    self.host.pid_exited(self.agent, gone[0])
                continue
            try:
                data = json.loads(read_foreign(path, REGISTRY_MAX, follow=False).decode("utf-8"))
            except ForeignFileError as e:
                self.core.guarded(path, _raise, e)  # skipped and counted; the other files are read
                continue
            except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                continue  # half-written: the next event reads it again
            pid = data.get("pid") if isinstance(data, dict) else None
            sid = data.get("sessionId") if isinstance(data, dict) else None
            if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0 or not valid_thread_id(self.agent, sid) \
                    or n != "%d.json" % pid or not _pid_alive(pid):
                continue
            if self.registry.get(path) != (pid, sid):
                self.registry[path] = (pid, sid)
                cwd = data.get("cwd") if isinstance(data.get("cwd"), str) else None
                self.host.update(self.agent, sid, pid=pid, cwd=cwd, alive=True)

    @classmethod
    def live_id(cls, spec, paths, pids):
        tid = qwen_registry_id(paths["home"], pids)
        return (tid, "qwen-registry") if tid else None


# A spec's watch.kind -> the class that follows that agent's files (and answers a restore's questions).
WATCHER_KINDS = {"claude": ClaudeWatcher, "codex": CodexWatcher, "opencode": OpenCodeWatcher, "amp": AmpWatcher,
                 "chat-files": ChatFilesWatcher, "gemini": GeminiWatcher, "qwen": QwenWatcher}


def agent_files(agent):
    """(spec, watcher class) of an agent: where its files are and how they are read."""
    spec = AGENT_SPECS[agent]
    return spec, WATCHER_KINDS[spec.watch.kind]


def conversation_exists(agent, tid, paths):
    """Agent conversation tid can still be resumed: its file is there (paths: that agent's)."""
    spec, files = agent_files(agent)
    return files.conversation_exists(spec, paths, tid)


class AgentWatchers(object):
    """Follows each agent's own files and databases and feeds thread updates to the server: the
    wiring of one WatchCore and one watcher per agent (its spec's watch.kind), each given only a
    WatcherHost (the loop, the apply step) and its own agent's paths."""

    def __init__(self, server, environ=None, recent_days=7.0, poll_interval=1.0, clock=time.time, kmod=None):
        host = WatcherHost(server.loop, lambda *a, **kw: server.apply_thread_update(*a, **kw),
                           lambda agent, pid: server.agent_pid_exited(agent, pid), lambda: server.after_watchers())
        self.core = WatchCore(host, environ, recent_days, poll_interval, clock, kmod)
        self.core.on_overflow = self.cold_start
        paths = agent_paths(environ)
        self.by_agent = {}
        for name, spec in AGENT_SPECS.items():
            self.by_agent[name] = WATCHER_KINDS[spec.watch.kind](self.core, host, spec, paths[name])
        self.agents = tuple(self.by_agent.values())

    def __getattr__(self, name):  # watchers.claude, watchers.qwen …
        by_agent = self.__dict__.get("by_agent") or {}
        if name in by_agent:
            return by_agent[name]
        raise AttributeError(name)

    def start(self):
        self.core.start()
        for watcher in self.agents:
            watcher.start()
        self.cold_start()

    def cold_start(self):
        for watcher in self.agents:
            for step in watcher.cold_steps():
                self.core.guarded("%s.%s" % (type(watcher).__name__, step.__name__), step)

    def close(self):
        self.core.close()

    def hold_threads(self, threads, cwds=()):
        """What the Linker knows is live now, as files that can change: `threads` [(agent, thread
        id, cwd)] whose agent runs or that a hook or plugin says are under way (their files are
        looked at each second, or given a kqueue fd: a conversation resumed after weeks is seen at
        once), `cwds` [(agent, cwd)] of agents in panes on a conversation we cannot name (the
        directories they write in). Each agent's watcher names the files (thread_files, cwd_dirs).
        inotify sees every change anyway: nothing to do there."""
        core = self.core
        if not self.wants_holds():
            return
        paths = set()
        for agent, tid, cwd in threads:
            watcher = self.by_agent.get(agent)
            if watcher is None:
                continue
            known = core.path_of(agent, tid)
            if known:
                paths.add(known)
            paths.update(watcher.thread_files(tid, cwd if isinstance(cwd, str) and cwd else None))
        for agent, cwd in cwds:
            if agent in self.by_agent and isinstance(cwd, str) and cwd:
                paths.update(self.by_agent[agent].cwd_dirs(cwd))
        core.hold("agents", paths)

    def wants_holds(self):
        """Something is watched by stat or kqueue (for which a hold makes a difference)."""
        return self.core.backend != "inotify" or bool(self.core.poller.dirs)

    def watch_stats(self):
        """How agent files are watched, and what it costs (/health)."""
        core = self.core
        # (read from an HTTP thread: only counters and lengths)
        return {"backend": core.backend, "statCalls": core.poller.stat_calls, "dirs": len(core.poller.dirs),
                "files": len(core.poller.files), "kqueueFds": len(core.kq_paths), "held": len(core.poller.held)}

    # what the Server (/health, its start log) and the tests read of the core
    tails = property(lambda self: self.core.tails)
    bad_records = property(lambda self: self.core.bad_records)
    long_lines = property(lambda self: self.core.long_lines)
    watched_dirs = property(lambda self: self.core.watched_dirs)
    polled_dirs = property(lambda self: self.core.polled_dirs)
    pending_dirs = property(lambda self: self.core.pending_dirs)

    @property
    def inotify(self):
        return self.core.inotify

    @inotify.setter
    def inotify(self, value):  # a test's stand-in
        self.core.inotify = value

    def watch_dir(self, path, handler):
        self.core.watch_dir(path, handler)

    def poll_dir(self, path, handler):
        self.core.poll_dir(path, handler)


##############################################################################
# Installer: our hooks, plugin and extension in the agents' own configs
##############################################################################


def _is_our_hook(hook, agent, commands=()):
    """Our hook: a command we installed (the current one, or one recorded when installing), or one of
    the exact shape `[python [-S]] …/opensessions[.py|.pyz] hook AGENT`. A user's hook whose command
    merely mentions opensessions ('notify opensessions hook claude', a wrapper script) is not ours."""
    import shlex
    cmd = hook.get("command") if isinstance(hook, dict) else None
    if not isinstance(cmd, str):
        return False
    if cmd in commands:
        return True
    try:
        tokens = shlex.split(cmd)
    except ValueError:
        return False
    if len(tokens) < 3 or tokens[-2:] != ["hook", agent]:
        return False
    prog, prefix = tokens[-3], tokens[:-3]
    if not re.match(r"^opensessions(\.pyz?)?$", os.path.basename(prog)):
        return False
    if prefix and not re.match(r"^python[0-9.]*$", os.path.basename(prefix[0])):
        return False
    return prefix[1:] in ([], ["-S"])


def hook_entry(command, extra=None):
    """Our entry in an agent's hook config: the command, and what its HookInstall adds (a timeout)."""
    return dict({"type": "command", "command": command}, **(extra or {}))


def hooks_install(config, agent, events, command, commands=(), entry=None):
    """Add our hook to each event of a Claude/Codex-format hook config (a dict); keep every other
    entry. Idempotent. Returns the new config (the input is not changed)."""
    import copy
    config = copy.deepcopy(config) if config else {}
    hooks = config.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        raise OpensessionsError("'hooks' in the config is not an object; not touching it")
    for event in events:
        if not isinstance(hooks.get(event, []), list):
            raise OpensessionsError("hooks.%s is not a list; not touching it" % event)
    config = hooks_uninstall(config, agent, tuple(commands) + (command,), keep_emptied=events)
    hooks = config.setdefault("hooks", {})
    for event in events:
        hooks.setdefault(event, []).append({"hooks": [hook_entry(command, entry)]})
    return config


def hooks_uninstall(config, agent, commands=(), created=None, keep_emptied=()):
    """Remove our hooks (and only ours) from a hook config. A group that held only ours goes; an event
    list (or 'hooks') that we emptied goes unless the user had it before we added to it: `created`
    (what install recorded: {"events": [...], "hooks": bool}) tells, when known. Whatever we did not
    touch stays as it was, empty lists included."""
    import copy
    config = copy.deepcopy(config) if config else {}
    hooks = config.get("hooks")
    if not isinstance(hooks, dict):
        return config
    touched = False
    for event in list(hooks):
        groups = hooks[event]
        if not isinstance(groups, list):
            continue
        kept, removed = [], False
        for g in groups:
            if isinstance(g, dict) and isinstance(g.get("hooks"), list):
                inner = [h for h in g["hooks"] if not _is_our_hook(h, agent, commands)]
                if len(inner) != len(g["hooks"]):
                    removed = True
                    if not inner:
                        continue
                    g = dict(g, hooks=inner)
            kept.append(g)
        touched = touched or removed
        users_list = created is not None and event not in (created.get("events") or ())
        if kept or not removed or users_list or event in keep_emptied:
            hooks[event] = kept
        else:
            del hooks[event]
    if not hooks and touched and not keep_emptied and (created is None or created.get("hooks")):
        del config["hooks"]
    return config


def _write_config(path, text):
    """Write a user's config file atomically, keeping its mode, and through a symlink to its target
    (the link stays a link). A new file gets 0644. Only a file of the user who runs us is written
    (same owner): root with another user's HOME, or a link into another user's file, is refused
    (the file would become root's)."""
    real = os.path.realpath(path)
    _check_same_owner(path, real)
    try:
        mode = os.stat(real).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    os.makedirs(os.path.dirname(real), exist_ok=True)
    atomic_write(real, text, mode, exact_mode=True)


def _check_same_owner(path, real):
    """Raise OpensessionsError unless the file we are about to write (the symlink's target, or the
    nearest existing directory it would be made in) is owned by our effective uid."""
    euid = os.geteuid()
    where = real
    while True:
        try:
            owner = os.stat(where).st_uid
            break
        except FileNotFoundError:
            parent = os.path.dirname(where)
            if parent == where:
                return
            where = parent
    if owner != euid:
        raise OpensessionsError("%s is owned by uid %d, not by you (uid %d)%s; not writing %s (run it as that "
                                "user)" % (where, owner, euid, "" if real == path else ": %s leads there" % path, path))


def _edit_json_config(path, change):
    """Read a JSON config, apply change(dict) -> dict, back it up and write it atomically (its mode
    kept, a symlink written through). A file that is not valid JSON is refused and left untouched.
    -> True if it changed."""
    existing = None
    raw = None
    if os.path.exists(path):
        raw = read_foreign(path, FOREIGN_JSON_MAX)  # a FIFO or /dev/zero there: refused, never read
        try:
            existing = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise OpensessionsError("%s is not valid JSON (%s); fix it first, it was not changed" % (path, e))
        if not isinstance(existing, dict):
            raise OpensessionsError("%s does not hold a JSON object; it was not changed" % path)
    new = change(existing or {})
    if existing is not None and new == existing:
        return False
    _check_same_owner(path, os.path.realpath(path))  # before the backup: nothing written when refused
    if raw is not None:
        atomic_write(path + ".opensessions.bak", raw)
    _write_config(path, json.dumps(new, indent=2, ensure_ascii=False) + "\n")
    return True


def _install_ledger_path(environ=None):
    return os.path.join(state_dir(environ), "installed.json")


def _read_install_ledger(environ=None):
    """What install added where ({real path: {"commands", "events", "hooks", "createdFile"}}), so
    uninstall removes only that."""
    try:
        data = json.loads(read_foreign(_install_ledger_path(environ), OWN_JSON_MAX).decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}


def _write_install_ledger(ledger, environ=None):
    path = _install_ledger_path(environ)
    if not ledger:
        try:
            os.unlink(path)
        except OSError:
            pass
        return
    ensure_private_dir(os.path.dirname(path))
    atomic_write(path, json.dumps(ledger, indent=1, sort_keys=True))


def _install_hooks_file(path, agent, install, command, ledger):
    """Our hook in one agent's hook config (a HookInstall), noting in the ledger what was the user's."""
    events = install.events
    real = os.path.realpath(path)
    entry = dict(ledger.get(real) or {})
    created_file = not os.path.exists(path)

    def change(config):
        hooks = config.get("hooks") if isinstance(config.get("hooks"), dict) else None
        if not entry:
            entry.update(createdFile=created_file, hooks=hooks is None,
                         events=[e for e in events if hooks is None or e not in hooks], commands=[])
        return hooks_install(config, agent, events, command, entry.get("commands") or (), install.entry)
    changed = _edit_json_config(path, change)
    if command not in (entry.get("commands") or []):
        entry["commands"] = (entry.get("commands") or []) + [command]
    ledger[real] = entry
    return changed


def _uninstall_hooks_file(path, agent, command, ledger):
    """-> list of what was done."""
    real = os.path.realpath(path)
    entry = ledger.get(real)
    done = []
    if os.path.exists(path):
        commands = tuple((entry or {}).get("commands") or ()) + (command,)
        if _edit_json_config(path, lambda c: hooks_uninstall(c, agent, commands, created=entry)):
            done.append("removed %s hooks from %s" % (agent, path))
        if entry and entry.get("createdFile") and read_json_file(path, None) == {}:
            os.unlink(path)
            for extra in (path + ".opensessions.bak",):
                try:
                    os.unlink(extra)
                except OSError:
                    pass
            done.append("deleted %s (install had created it; it is empty now)" % path)
    ledger.pop(real, None)
    return done


def install_steps(paths, uninstall):
    """(what, spec, path) of each agent's install (its spec's HookInstall or FileInstall), in the
    specs' order; an install marked only_if_set_up only where the agent is set up here (nothing is
    created for the others) and, to remove it, only where it is there."""
    steps = []
    for spec in AGENT_SPECS.values():
        inst = spec.install
        if inst is None:
            continue
        if isinstance(inst, HookInstall):
            base = paths[spec.name]["home"]
            path, what, there = os.path.join(base, inst.file), "%s hooks in " % spec.name, os.path.exists
        else:
            base = paths[spec.name][inst.under]
            path, what, there = os.path.join(base, *inst.path), inst.what + " ", os.path.lexists
        if inst.only_if_set_up and not (os.path.isdir(base) and (not uninstall or there(path))):
            continue
        steps.append((what + path, spec, path))
    return steps


def install_agents(command_prefix, environ=None, uninstall=False):
    """Add (or remove) our hooks, plugin and extension for every agent (install_steps). -> list of
    messages. A step that fails stops there with an error that says what was already changed."""
    done = []
    ledger = _read_install_ledger(environ)
    steps = install_steps(agent_paths(environ), uninstall)
    try:
        for n, (what, spec, path) in enumerate(steps):
            command = command_prefix + " hook " + spec.name
            try:
                if isinstance(spec.install, FileInstall):
                    done.extend(_file_step(spec.install, path, uninstall, ledger))
                elif uninstall:
                    done.extend(_uninstall_hooks_file(path, spec.name, command, ledger))
                elif _install_hooks_file(path, spec.name, spec.install, command, ledger):
                    done.append("installed %s hooks in %s" % (spec.name, path))
            except (OpensessionsError, OSError) as e:
                left = [w for w, _, _ in steps[n + 1:]]
                raise OpensessionsError(
                    "%s %s failed: %s\nchanged before that: %s%s" % (
                        "removing" if uninstall else "installing", what, e,
                        "; ".join(done) if done else "nothing",
                        "\nnot done: %s" % "; ".join(left) if left else ""))
    finally:
        try:
            _write_install_ledger(ledger, environ)
        except (OSError, OpensessionsError) as e:
            log("cannot record what install changed (%s)" % e)
    return done


def install_notes(done):
    """The lines each agent's install asks to add for the user, for the agents installed now."""
    return [spec.install.note for spec in AGENT_SPECS.values() if isinstance(spec.install, HookInstall)
            and spec.install.note and any(d.startswith("installed %s hooks" % spec.name) for d in done)]


OWN_FILE_MAX = 1024 * 1024  # a file of ours (plugin, extension), or the user's file in its place


def _file_step(install, path, uninstall, ledger=None):
    """Install or remove one file of ours (a FileInstall: the OpenCode plugin, the Pi extension),
    as the JSON configs are: a user's own file in its place is backed up (`.opensessions.bak`)
    before it is replaced; a symlink is written through (it stays a link), and only into a file of
    the user who runs us (same owner); the ledger records what install did, so uninstall deletes
    only a file install made, gives a replaced one back, and leaves a file that is not ours alone.
    -> list of what was done."""
    ledger = {} if ledger is None else ledger
    content, what = install.text, install.what
    real = os.path.realpath(path)
    entry = ledger.get(real)
    backup = path + ".opensessions.bak"
    head = content.split("\n", 1)[0]  # our first line: an older version of ours has it too
    raw = None  # None: nothing there (or a dangling link: written through, made where it points)
    if os.path.lexists(path) and os.path.exists(path):
        raw = read_foreign(path, OWN_FILE_MAX)  # a FIFO or /dev/zero there: refused, never read
    current = raw.decode("utf-8", "replace") if raw is not None else None
    ours = current is not None and current.split("\n", 1)[0] == head
    if uninstall:
        ledger.pop(real, None)
        if current is None:
            return []
        if not ours:
            return ["left %s as it is: it is not ours%s" % (path, " (changed since install)" if entry else "")]
        if entry and entry.get("backup") and os.path.isfile(backup):
            _write_config(path, read_foreign(backup, OWN_FILE_MAX))
            os.unlink(backup)
            return ["gave back your own %s (install had kept it in %s)" % (path, backup)]
        if os.path.islink(path):
            if entry and entry.get("createdFile"):
                os.unlink(real)
                return ["removed %s %s (where the symlink %s points; the link is yours and stays)" % (what, real, path)]
            return ["left %s as it is: a symlink of yours (to %s)" % (path, real)]
        os.unlink(path)
        return ["removed %s %s" % (what, path)]
    if current == content:
        if entry is None and ours:
            ledger[real] = {"createdFile": not os.path.islink(path)}
        return []
    _check_same_owner(path, real)
    new_entry = dict(entry or {"createdFile": current is None})
    if current is not None and not ours:
        atomic_write(backup, raw, mode=os.stat(path).st_mode & 0o777, exact_mode=True)
        new_entry["backup"] = True
    elif entry is None and ours:
        new_entry = {"createdFile": not os.path.islink(path)}  # ours from before the ledger
    _write_config(path, content)
    ledger[real] = new_entry
    if current is not None and not ours:
        return ["installed %s %s (your own file there is kept in %s)" % (what, path, backup)]
    return ["installed %s %s" % (what, path)]


##############################################################################
# Reply: answer an agent's prompt without switching to it: the checks around typing, the typing
##############################################################################
# What to type comes from the agent's spec (its reply planner, in Agent screens); here the agent is
# checked to be in front in its pane, and the keys are sent step by step, each waiting for the screen.

def _proc_stat_fields(pid, proc_root="/proc"):
    """Fields of /proc/<pid>/stat after the command name (state is [0], ppid [1], pgrp [2],
    tpgid [5], starttime [19]), or None."""
    try:
        with open(os.path.join(proc_root, str(pid), "stat"), "r", encoding="utf-8", errors="replace") as f:
            data = f.read()
        return data[data.rindex(")") + 2:].split(" ")
    except (OSError, ValueError):
        return None


def foreground_problem(agent, pid, pane_pid, start=None, proc_root="/proc"):
    """Why the agent process `pid` is not in front in the pane whose process is `pane_pid` (None
    when it is): it must run below the pane's process, it or an ancestor below the pane must be in
    the terminal's foreground process group, and that group's leader must be this agent (Codex's
    rollout is held by its app-server, a child of the TUI in a session of its own: the TUI is what
    is in front). Linux (/proc) only; elsewhere nothing is checked here."""
    if not os.path.isdir(os.path.join(proc_root, "self")):
        return None
    mine = _proc_stat_fields(pid, proc_root)
    if mine is None:
        return "the agent's process %d is gone" % pid
    if start is not None and as_number(mine[19], 0, int, text=True) != start:
        return "process %d is not the agent any more (restarted)" % pid
    shell = _proc_stat_fields(pane_pid, proc_root)
    if shell is None:
        return "the pane's process is gone"
    front = as_number(shell[5], 0, int, text=True)
    chain, p = ([(pid, as_number(mine[2], 0, int, text=True))], 0) if pid == pane_pid else ([], pid)  # the pane runs the agent itself
    while p and p != pane_pid and len(chain) < 64:
        f = _proc_stat_fields(p, proc_root)
        if f is None:
            break
        chain.append((p, as_number(f[2], 0, int, text=True)))
        p = as_number(f[1], 0, int, text=True)
    if p != pane_pid and pid != pane_pid:
        return "process %d does not run in that pane" % pid
    if not any(pgrp == front for _, pgrp in chain):
        return "the agent is not the pane's foreground process (another program runs in front of it)"
    try:
        with open(os.path.join(proc_root, str(front), "stat"), "r", encoding="utf-8", errors="replace") as fh:
            comm = parse_proc_stat(fh.read())[1]
    except (OSError, ValueError, IndexError):
        return "the pane's foreground process cannot be read"
    if classify_agent_process(comm, process_args(front, proc_root)) != agent:
        return "the pane's foreground process (%s) is not %s" % (comm, agent)
    return None


def foreground_guard(agent, pid, pane_pid, start=None, proc_root="/proc"):
    """-> check(): the reply's look at the pane, made again right before each keystroke. The first
    call is foreground_problem's; each later one also wants the same foreground process group and
    the same process (pid and start time) as the first saw. -> None while so, else why not. The
    reply waits seconds (a prompt held, a screen awaited): an agent that exits meanwhile leaves the
    shell in front, which must get neither the text nor the Enter. Linux (/proc) only."""
    seen = {}

    def check():
        if not os.path.isdir(os.path.join(proc_root, "self")):
            return None
        reason = foreground_problem(agent, pid, pane_pid, start if start is not None else seen.get("start"), proc_root)
        if reason:
            return reason
        shell, mine = _proc_stat_fields(pane_pid, proc_root), _proc_stat_fields(pid, proc_root)
        if shell is None or mine is None:
            return "the agent's process %d or the pane's process is gone" % pid
        front, began = as_number(shell[5], 0, int, text=True), as_number(mine[19], 0, int, text=True)
        if not seen:
            seen.update(front=front, start=began)
            return None
        if front != seen["front"]:
            return "the pane's foreground process group changed (%d, was %d)" % (front, seen["front"])
        if began != seen["start"]:
            return "process %d is not the agent any more (restarted)" % pid
        return None
    return check


def preview_problem(agent, pid, pane_pid, start=None, proc_root="/proc"):
    """Why the pane should not be shown as this thread's preview (None when it may): its foreground
    process must be the thread's agent, checked as a reply checks it (with the thread's pid), or,
    for a thread whose pane is only guessed (no pid), an agent of its kind. Linux (/proc) only."""
    if not os.path.isdir(os.path.join(proc_root, "self")):
        return None
    if pid:
        return foreground_problem(agent, pid, pane_pid, start, proc_root)
    shell = _proc_stat_fields(pane_pid, proc_root)
    if shell is None:
        return "the pane's process is gone"
    front = as_number(shell[5], 0, int, text=True)
    try:
        with open(os.path.join(proc_root, str(front), "stat"), "r", encoding="utf-8", errors="replace") as fh:
            comm = parse_proc_stat(fh.read())[1]
    except (OSError, ValueError, IndexError):
        return "the pane's foreground process cannot be read"
    if classify_agent_process(comm, process_args(front, proc_root)) != agent:
        return "the pane's foreground process (%s) is not %s" % (comm, agent)
    return None


REPLY_SCREEN_WAIT = 1.5  # a prompt the status says is up may take this long to show on screen
REPLY_SCREEN_STILL = 0.3  # ... but a screen that stays the same this long will not show it
REPLY_EXPECT_TIMEOUT = 2.0
PREVIEW_INTERVAL = 0.3  # a preview that cannot follow its pane's output is read at most this often
PASTE_BUFFER = "opensessions-reply"  # the tmux paste buffer a multi-line reply goes through (deleted after)


def plan_when_ready(read_screen, plan, clock=time.monotonic, sleep=time.sleep, wait=REPLY_SCREEN_WAIT,
                    still=REPLY_SCREEN_STILL):
    """Make the reply's plan from the pane's screen, looking again only while that may help: a
    refusal that says the screen shows something definite (another prompt: ReplyRefused.wait == 0)
    is final at once; otherwise the screen is read again while it changes (the status can come
    before the prompt is drawn: a hook fires as it draws), up to the refusal's own wait (a busy
    agent) or `wait`, and a screen that stays the same for `still` seconds ends it.
    -> (steps, screen) or raises the last ReplyRefused."""
    began = clock()
    last = None
    same_since = began
    while True:
        screen = read_screen()
        try:
            return plan(screen), screen
        except ReplyRefused as e:
            now = clock()
            limit = wait if e.wait is None else e.wait
            if screen != last:
                last, same_since = screen, now
            if now - began >= limit or (now - same_since >= still and limit <= wait):
                raise
        sleep(0.05)


def run_reply_steps(tmux, pane, steps, screen=None, clock=time.monotonic, sleep=time.sleep,
                    timeout=REPLY_EXPECT_TIMEOUT, guard=None, said=None):
    """Send the steps of reply_plan to a pane through the tmux gateway. A "hold" step checks the
    prompt stays up for a while before a key; an "expect" step waits for the screen to show what it
    needs before anything more is sent (its own timeout, else `timeout`): when that does not come,
    the rest is not sent (ReplyRefused says what was). `guard()` (foreground_guard) is asked
    right before each step that sends: a reason stops the reply there. `screen` is the screen the
    plan was made from; `said` (a list) gets what "answer-from-screen" steps read.
    -> milliseconds from the last keys to the first change of the screen, or None."""
    sent = []
    sent_at = before = changed_ms = None
    for step in steps:
        if step[0] in ("keys", "literal", "paste") and guard is not None:
            reason = guard()
            if reason:
                raise ReplyRefused("%s: %s" % (
                    ("sent %s; stopped before %s" % (", ".join(sent), " ".join(step[1]) if step[0] == "keys" else "the text"))
                    if sent else "nothing was sent", reason), 0)
        if step[0] == "keys":
            tmux.run("send-keys", "-t", pane, *step[1])
            sent_at, before, changed_ms = clock(), screen, None
            sent.append(" ".join(step[1]))
        elif step[0] == "literal":
            tmux.run("send-keys", "-t", pane, "-l", "--", TmuxText(step[1]))
            sent.append("%d characters of text" % len(step[1]))
        elif step[0] == "paste":
            # bracketed (-p: tmux adds the brackets for a pane that asked for them), newlines kept
            # as typed Enters would not be (-r), the buffer deleted after (-d)
            tmux.run("set-buffer", "-b", PASTE_BUFFER, "--", step[1])
            tmux.run("paste-buffer", "-p", "-r", "-d", "-b", PASTE_BUFFER, "-t", pane)
            sent.append("%d lines of text as one paste" % (step[1].count("\n") + 1))
        elif step[0] == "answer-from-screen":
            if said is not None and screen is not None:
                said.append(step[1](screen))
        elif step[0] == "hold":
            end = clock() + step[1]
            while True:
                screen = tmux.run("capture-pane", "-p", "-e", "-t", pane)
                if not step[3](screen):
                    raise ReplyRefused("%s went away before the key was sent; nothing was sent" % step[2])
                if clock() >= end:
                    break
                sleep(min(0.05, max(0.0, end - clock())))
        elif step[0] == "expect":
            limit = step[4] if len(step) > 4 and step[4] else timeout
            deadline = clock() + limit
            while True:
                screen = tmux.run("capture-pane", "-p", "-e", "-t", pane)
                if changed_ms is None and sent_at is not None and before is not None and screen != before:
                    changed_ms = (clock() - sent_at) * 1000
                if step[2](screen):
                    break
                if clock() > deadline:
                    raise ReplyRefused("%s%s: not seen within %.0f s" % (
                        ("sent %s; then waited for " % ", ".join(sent)) if sent else "waited for ",
                        step[1], limit))
                sleep(0.01)
            if len(step) > 3 and step[3]:
                sleep(step[3])
    return changed_ms


def reply_summary(action, agent_title, pane, steps, said, text, changed_ms):
    """The one line a reply that went through prints: what was sent, to which agent and pane, what
    the answer does (the option's own words), and how soon the screen showed it. Pure."""
    answer = ([s[1] for s in steps if s[0] == "answer"] + list(said or []))[-1:]
    keys = " ".join(k for s in steps if s[0] == "keys" for k in s[1])
    if action == "text":
        lines = text.count("\n") + 1
        what = "sent %s to %s in pane %s (%s, then %s)" % (
            "a %d-line prompt" % lines if lines > 1 else "the prompt", agent_title, pane,
            "one paste" if lines > 1 else "%d characters" % len(text), keys)
    else:
        verb = {"approve": "approved once", "approve-always": "approved always", "deny": "denied"}[action]
        what = "%s in %s, pane %s: %s (keys %s)" % (verb, agent_title, pane, answer[0] if answer else "", keys)
    return what + ("; on screen %.0f ms after the last key" % changed_ms if changed_ms is not None
                   else "; its screen did not change (not measured)")


def reply_status_refusal(title, action, status):
    """Why a thread's status rules out the reply, as a sentence (None when the status allows it)."""
    if action == "text":
        if status in ("done", "idle", "interrupted", "error", "waiting"):
            return None
        doing = {"running": "is working on a turn", "retry": "is retrying a failed request"}.get(status, "is %s" % status)
        return "%s %s; text is sent only when it waits for input (wait for the turn to end, or interrupt it in its pane)" % (
            title, doing)
    if status == "waiting":
        return None
    state = {"running": "is working on a turn", "retry": "is retrying a failed request", "done": "has finished its turn",
             "idle": "is idle at its prompt", "interrupted": "was interrupted", "error": "stopped on an error"}.get(
        status, "is %s" % status)
    return "%s %s; there is no permission to answer" % (title, state)


def thread_preview(screen, lines=20):
    """The last `lines` lines of a pane for a preview: no escapes, no trailing blank lines."""
    return screen_lines(screen, lines)


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

    def add_writer(self, fd, callback):
        """callback() whenever fd can take more bytes (a pipe to a child that reads slowly);
        remove_reader(fd) ends it."""
        import selectors
        self._sel.register(fd, selectors.EVENT_WRITE, callback)

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
        self.recent_ms = RECENT_MS
        self.ui = load_ui(None)[0]
        self.ui_error = None
        self.remote = None  # RemoteHosts: other machines' sessions, merged into /state by build()

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
        """The session with the most specific pane cwd containing path; None when two sessions
        tie (an ambiguous directory names no session)."""
        best, best_len, tied = None, -1, False
        for s in self.visible_sessions():
            for w in s["windows"]:
                for p in w["panes"]:
                    if p.get("sidebar"):
                        continue
                    hit = most_specific_dir(path, [p["cwd"]])
                    if hit and len(hit) > best_len:
                        best, best_len, tied = s, len(hit), False
                    elif hit and len(hit) == best_len and s is not best:
                        tied = True
        return None if tied else best

    def visible_sessions(self):
        return [s for s in self.sessions if not s["name"].startswith(HIDDEN_SESSION_PREFIX)]

    def build(self):
        """The /state document."""
        by_session = {}
        orphans = []
        now = now_ms(self.clock)
        live_names = {s["name"] for s in self.sessions}
        for t in self.threads.values():
            if not thread_visible(t, now, self.recent_ms):
                continue
            if t.session is not None and t.session in live_names:
                by_session.setdefault(t.session, []).append(t)
            else:
                orphans.append(t)
        out_sessions = []
        hidden, muted = set(self.ui["hidden"]), set(self.ui["muted"])
        for s in order_sessions(self.visible_sessions(), self.ui["order"]):
            threads = by_session.get(s["name"], ())
            if len(threads) > MAX_SESSION_THREADS:  # live and unseen ones first, then the newest
                threads = sorted(threads, key=lambda t: (t.alive or t.unseen, t.updated_at))[-MAX_SESSION_THREADS:]
            threads = sorted(threads, key=lambda t: -t.updated_at)
            branch, dirty = self.git.get(s["id"], (None, None))
            meta = self.metadata.get(s["name"], {})
            shown = [t for t in threads if not t.subagent]
            item = dict(s)
            item.update({
                "branch": branch, "dirty": dirty, "ports": self.ports.get(s["id"], []),
                "state": session_state(shown), "unseen": any(t.unseen for t in shown),
                "threads": [t.to_json() for t in shown],
                "metadata": {"status": meta.get("status"), "progress": meta.get("progress"),
                             "logs": list(meta.get("logs", ()))},
                "hidden": s["name"] in hidden, "muted": s["name"] in muted,
                "usage": usage_total([t.usage for t in by_session.get(s["name"], ())]),  # helpers' calls too
            })
            out_sessions.append(item)
        doc = {
            "version": self.version, "serverVersion": __version__, "ts": now_ms(self.clock),
            "clients": [{"name": c["name"], "session": c["session"], "window": c["window"],
                         "pane": c["pane"]} for c in self.clients if not c["control"]],
            "sessions": out_sessions,
            "threads": [t.to_json() for t in sorted(orphans, key=lambda t: -t.updated_at)[:MAX_ORPHANS]],
            "ui": dict(self.ui, error=self.ui_error),
            "hosts": [],
        }
        if self.remote is not None:
            self.remote.merge(doc)
        return doc

    def publish(self):
        """If anything changed, build a new snapshot and wake every reader. Returns True if published."""
        if not self._dirty and self.published is not None:
            return False
        self._dirty = False
        self.version += 1
        doc = self.build()
        # always valid UTF-8, never NaN: one bad string cannot stop /state (hosts' sessions: encoded once)
        body = self.remote.encode(doc) if self.remote is not None else encode_json(doc)
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

    def metadata_json(self, keep_ms=7 * 86400 * 1000):
        """What survives a restart: metadata, and threads that are alive, unseen or recent."""
        now = now_ms(self.clock)
        return {"metadata": self.metadata,
                "threads": [dict(t.to_json(), subagent=t.subagent, source=t.source)
                            for t in self.threads.values()
                            if t.alive or t.unseen or now - t.updated_at <= keep_ms]}


PRUNE_INTERVAL = 60.0  # seconds between looks for threads to forget
USAGE_HISTORY_DAYS = 90  # forgotten threads' usage is kept this long (usage-<socket>.json)
USAGE_HISTORY_MAX = 20000
SAVE_QUIET = 1.0  # the state file is written once changes pause this long ...
SAVE_MAX_DELAY = 5.0  # ... or this long after the first unsaved change, whichever comes first


class ControlClient(object):
    """The hidden `tmux -C` client that tells us when panes, windows or clients change: started
    and stopped here, its lines read here; each change calls `on_change(delay)` (0 for a client
    switching windows), its end `on_exit()`. It also runs commands whose answers come back on its
    own stdout (`command(line, callback)`: a capture costs no tmux process), and follows the
    output of one pane for a preview (`follow(pane, session, others)`: `on_output(pane)` per block
    of output; see PreviewFeed)."""

    def __init__(self, tmux, loop, environ, on_change, on_exit, on_output=None):
        self.tmux = tmux
        self.loop = loop
        self.environ = environ
        self.on_change = on_change
        self.on_exit = on_exit
        self.on_output = on_output  # (pane id) on %output of a followed pane; (pane id, True) on %pause
        self.proc = None
        self._buf = b""
        self._subscribed = False
        self._block = None  # output lines of the command block being read
        self._block_end = None  # "%end <time> <number>": the one line that ends it (pane text cannot forge it)
        self._answers = []  # callbacks of the commands we sent, in order: tmux answers in order
        self._block_ours = False
        self.session = None  # the session it is attached to ($id), from %session-changed
        self.following = None  # (pane, session) whose output it takes, or None (no-output)

    @property
    def running(self):
        return self.proc is not None

    def start(self):
        import subprocess
        # A minimal environment: tmux sends one identify message per environment variable, and
        # tmux 3.3a can crash if a notification reaches a control client whose identify is still
        # being read (it has no control state yet); a short handshake fits in one read.
        env = {k: v for k, v in self.environ.items() if k in ("PATH", "LANG", "LC_ALL", "LC_CTYPE")}
        try:
            self.proc = subprocess.Popen(self.tmux.control_argv(), stdin=subprocess.PIPE, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        except OSError as e:
            log("cannot start the tmux control client: %s" % e)
            return
        self._buf = b""
        self._subscribed = False
        self._block = self._block_end = None
        self._answers = []
        self.session = self.following = None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._wait_attached()
        self.loop.add_reader(self.proc.stdout.fileno(), self._on_readable)
        if self._buf:
            self.loop.post(self._on_readable)

    def _wait_attached(self, timeout=2.0):
        """Run no other tmux command until the control client has attached: tmux 3.3a can crash
        when a control client attaches while windows are being created (seen here, about once in
        200 attaches under constant window churn). Output read meanwhile is kept for the reader."""
        import select
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"%session-changed" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                log("tmux control client did not attach within %.0f s" % timeout)
                return
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                return
            self._buf += chunk

    def send(self, line, callback=None):
        """One command (never several joined by ';': each would be answered on its own, and an
        error drops the rest unanswered). Its answer, `callback(ok, lines)`, comes on the loop; a
        client that ends first answers (False, [])."""
        if self.proc is None:
            return False
        try:
            self.proc.stdin.write(line.encode("utf-8") + b"\n")
            self.proc.stdin.flush()
        except (OSError, ValueError, AttributeError):
            return False
        self._answers.append(callback)
        return True

    def command(self, line, callback):
        """Run a command through this client; -> False when it cannot be sent (not running)."""
        return self.send(line, callback)

    def follow(self, pane, session, others):
        """Take the output of `pane` (in `session`, a "$id") and of no other pane: attach to its
        session, turn output on (with pause-after: tmux pauses a pane we fall behind on rather than
        stop reading it) and pause every other pane there. Paused, not "off": a pane that every
        attached client has off is not read at all, and its program would block."""
        if self.proc is None or not re.match(r"^%\d+$", pane or "") or not re.match(r"^\$\d+$", session or ""):
            return False
        if self.session != session:
            self.send("switch-client -t '%s'" % session)
        if self.following is None:
            self.send("refresh-client -f 'pause-after=2,!no-output'")
        pauses = " ".join("-A '%s:pause'" % p for p in others if re.match(r"^%\d+$", p) and p != pane)
        self.following = (pane, session)
        return self.send("refresh-client -A '%s:continue'%s" % (pane, (" " + pauses) if pauses else ""))

    def pause(self, panes):
        """Pause panes that appeared in the followed session (their output is not wanted)."""
        panes = [p for p in panes if re.match(r"^%\d+$", p)]
        if panes and self.following:
            self.send("refresh-client %s" % " ".join("-A '%s:pause'" % p for p in panes))

    def unfollow(self):
        """No pane's output any more (no-output, as it started)."""
        if self.following is not None:
            self.following = None
            self.send("refresh-client -f no-output")

    def stop(self, grace=2.0):
        if self.proc is None:
            return
        try:
            self.loop.remove_reader(self.proc.stdout.fileno())
        except (ValueError, OSError):
            pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        import subprocess
        proc, self.proc = self.proc, None
        answers, self._answers = self._answers, []
        self.following = None
        try:
            proc.terminate()
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log("control client pid %d ignored SIGTERM for %.1f s; killing it" % (proc.pid, grace))
            proc.kill()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log("control client pid %d did not exit after SIGKILL" % proc.pid)
        except OSError as e:
            log("stopping the control client failed: %s" % e)
        for f in (proc.stdout, proc.stderr):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        for callback in answers:  # nobody will answer them now
            if callback is not None:
                callback(False, [])

    def _on_readable(self):
        if self.proc is None:
            return
        try:
            chunk = os.read(self.proc.stdout.fileno(), 262144)
        except BlockingIOError:
            chunk = None  # nothing new: still parse what _wait_attached kept
        except OSError:
            chunk = b""
        if chunk == b"":
            self.on_exit()
            return
        self._buf += chunk or b""
        lines = self._buf.split(b"\n")
        self._buf = lines.pop()
        interesting = False
        for raw in lines:
            if self._block is not None:  # a command's answer: every line is its text up to its own %end
                text = raw.decode("utf-8", "replace")
                if text.startswith(self._block_end):
                    self._end_block(text.startswith("%end"))
                else:
                    self._block.append(text)
                continue
            if raw.startswith(b"%output ") or raw.startswith(b"%extended-output "):
                # the followed pane printed: only its id matters (the screen is read by a capture)
                if self.on_output is not None:
                    self.on_output(raw.split(b" ", 2)[1].decode("ascii", "replace"))
                continue
            text = raw.decode("utf-8", "replace").rstrip("\r")
            parsed = parse_control_line(text)
            if parsed is None:
                continue
            if parsed[0] == "begin":
                # "%begin <time> <number> <flags>": flags 1 for a command we sent on stdin
                head = parsed[1].split(" ")
                self._block = []
                self._block_end = ("%end " + " ".join(head[:2]), "%error " + " ".join(head[:2]))
                self._block_ours = head[2:3] == ["1"]
                continue
            if parsed[0] in ("end", "error"):
                continue  # (an end without its begin: nothing to close)
            if parsed[0] in ("exit", "continue"):
                continue  # EOF follows %exit
            if parsed[0] == "pause":
                if self.on_output is not None:
                    self.on_output(parsed[1].strip(), True)
                continue
            if parsed[0] == "session-changed":
                self.session = parsed[1].split(" ")[0]
                if not self._subscribed:
                    # subscribe once attached: sent earlier, tmux answers "no current client"
                    self._subscribed = True
                    self.send("refresh-client -B 'os-panes::%s'" % SUBSCRIPTION_FORMAT)
            if parsed[0] in SWITCH_EVENTS:
                interesting = "switch"
            elif not interesting:
                interesting = True
        if interesting:
            # a client went to another window: its sidebar comes at once (no coalescing wait)
            self.on_change(0 if interesting == "switch" else 0.005)

    def _end_block(self, ok):
        lines, self._block, self._block_end = self._block, None, None
        if not self._block_ours:
            return  # the attach's own answer, not one we asked for
        callback = self._answers.pop(0) if self._answers else None
        if not ok:
            log("tmux control client command failed: %s" % " ".join(lines))
        if callback is not None:
            callback(ok, lines)


class Processes(object):
    """One read of the process table, as the linker needs it: `table` pid -> Proc; `pane_of_pid`
    pid -> pane id of every process under a pane; `agents` pane id -> (agent, pid, args) of the
    top-most agent process in it; `open_threads` pid -> (agent, thread id) named by a file the
    process holds open (Codex's rollout: its spec's open_file); `exact_starts` True when a Proc's
    start time tells a reused pid apart."""

    def __init__(self, table, pane_of_pid, agents, open_threads, exact_starts):
        self.table = table
        self.pane_of_pid = pane_of_pid
        self.agents = agents
        self.open_threads = open_threads
        self.exact_starts = exact_starts


def read_pane_processes(probes, sessions):
    """Read the process table once (through `probes`, a SystemProbes) -> (Processes, pid groups):
    which pane each process is under, the top-most agent process in each pane, the Codex processes'
    open rollout files; and session id -> the pids under its panes (for its ports)."""
    table = probes.processes()
    kids = children_index(table)
    groups = {}
    pane_of_pid = {}
    agents = {}  # pane id -> (agent, pid, args) of the top-most agent process in it
    comms = agent_comms()
    for s in sessions:
        pids = []
        for w in s["windows"]:
            for p in w["panes"]:
                if not p["pid"]:
                    continue
                under = descendants(p["pid"], kids)
                pids.extend(under)
                for pid in under:
                    pane_of_pid[pid] = p["id"]
                for pid in under[1:]:
                    proc = table.get(pid)
                    if proc is None or p["id"] in agents:
                        continue
                    if proc.comm in comms:
                        args = probes.args(pid)
                        agent = classify_agent_process(proc.comm, args)
                        if agent:
                            agents[p["id"]] = (agent, pid, args)
        groups[s["id"]] = pids
    open_threads = {}  # pid -> (agent, thread id) named by a file the process holds open (/proc/<pid>/fd)
    openers = {name: spec for spec in AGENT_SPECS.values() if spec.open_file for name in spec.process.names}
    for proc in table.values():
        spec = openers.get(proc.comm)
        if spec is None:
            continue
        for target in probes.open_files(proc.pid):
            tid = spec.open_file[1](target)
            if tid:
                open_threads[proc.pid] = (spec.name, tid)
    return Processes(table, pane_of_pid, agents, open_threads, probes.has_proc), groups


def link_threads(threads, panes, processes):
    """Link threads to panes by pid: a pure function of the threads (read, never changed), the
    panes ({pane id: (session name, cwd)}) and the processes (a Processes). The pid is the one a
    registry, hook or plugin gave, else the process holding the thread's file open (Codex's
    rollout), else the agent started with `resume <id>` of it.

    -> (links, sessions): `links` [(thread key, pid, alive, pane or None, "pid" or None)], one per
    thread that has a pid, that a daemon holds (Codex's app-server), or that was guessed by cwd before;
    `sessions` {thread key: session name} for threads a hook put in a pane we now know."""
    threads = list(threads)
    table, pane_of_pid = processes.table, processes.pane_of_pid
    pid = {t.key: t.pid for t in threads}
    daemon_held = set()
    for proc_pid, key in processes.open_threads.items():
        if key not in pid:
            continue
        if proc_pid in pane_of_pid:
            # the pane's agent (Codex's TUI) rather than its helper holding the file (its app-server, a
            # child that outlives a killed TUI): the thread lives and dies with the agent in the pane
            front = processes.agents.get(pane_of_pid[proc_pid])
            pid[key] = front[1] if front and front[0] == key[0] and front[1] in table else proc_pid
        else:
            # a daemon holds it (Codex's app-server, not in any pane): the thread is loaded, and
            # its pane comes from the TUI's `resume <id>` or, failing that, the cwd
            daemon_held.add(key)
    for pane_id, (agent, agent_pid, args) in processes.agents.items():
        rid = agent_resume_id_from_args(agent, args)
        key = (agent, rid) if rid else None
        if key in pid and not (pid[key] and pid[key] in table and pid[key] != agent_pid):
            pid[key] = agent_pid
    links = []
    sessions = {}
    for t in threads:
        p = pid[t.key]
        if p:
            proc = table.get(p)
            alive = proc is not None and (t.proc_start is None or proc.start == t.proc_start
                                          or not processes.exact_starts)
            pane = pane_of_pid.get(p) if alive else None
            # a pid our own cwd guess gave, which no source has vouched for since, stays a guess
            # (replies type only into exact links)
            guessed = t.link == "cwd" and p == t.pid
            links.append((t.key, p, alive, pane, ("cwd" if guessed else "pid") if pane else None))
        elif t.key in daemon_held:
            links.append((t.key, p, True, None, None))
        elif t.link == "cwd":
            links.append((t.key, p, False, None, None))
        elif t.link == "api" and t.pane in panes and t.session != panes[t.pane][0]:
            sessions[t.key] = panes[t.pane][0]  # named by a hook before tmux told us about the pane
    return links, sessions


def guess_threads_by_cwd(threads, panes, processes, pid_links):
    """For each agent process in a pane that no thread is linked to by pid (`pid_links`, the links
    of link_threads), guess its thread: the same agent's visible thread whose directory holds the
    pane's cwd most closely, newest first, not already alive in a pane, and never one whose own
    process we know (a registry, hook, plugin or open file named it): that thread is that process's,
    not this one's. So a run killed and a new one started in the same directory leaves the killed
    run's thread dead (or, Codex, held by the app-server it left behind, outside any pane) until its
    own id is seen live. A pure function; a thread is never guessed for two panes.
    -> [(thread key, pid, True, pane, "cwd")]"""
    linked_panes = {(key[0], pane) for key, _, _, pane, link in pid_links if pane}
    taken = {t.key for t in threads if t.alive and t.pane}
    taken.update(t.key for t in threads if t.pid and t.link != "cwd")  # another process's thread
    links = []
    for pane_id, (agent, agent_pid, args) in sorted(processes.agents.items()):
        if (agent, pane_id) in linked_panes:
            continue
        cwd = panes[pane_id][1] if pane_id in panes else None
        candidates = [t for t in threads
                      if t.agent == agent and t.key not in taken and not t.subagent and t.cwd
                      and most_specific_dir(cwd, [t.cwd]) is not None]
        if not candidates:
            continue
        best = max(candidates, key=lambda t: (len(t.cwd), t.updated_at))
        taken.add(best.key)
        links.append((best.key, agent_pid, True, pane_id, "cwd"))
    return links


LIVE_HOOK_MS = 3600 * 1000  # a thread a hook or plugin said is under way, this recently, can change now


def live_conversations(threads, panes, processes, now):
    """Which conversations can change now, as files to hold (a pure function of the threads, the
    panes {pane id: (session name, cwd)}, the processes (a Processes) and the time in ms):
    threads whose agent runs, or that a hook or plugin said were under way in the last
    LIVE_HOOK_MS; the conversation an agent in a pane was started on (`resume <id>`) or holds open
    (Codex's rollout); and for an agent in a pane on a conversation we cannot name, the directory
    it writes in. -> ([(agent, thread id, cwd or None)], [(agent, cwd)])"""
    threads = list(threads)
    recent = now - LIVE_HOOK_MS
    live = [(t.agent, t.id, t.cwd) for t in threads
            if t.alive or t.status in ("running", "waiting", "retry") and t.updated_at >= recent]
    linked = {t.pane for t in threads if t.alive and t.pane}
    cwds = []
    for pane_id, (agent, _pid, args) in sorted(processes.agents.items()):
        rid = agent_resume_id_from_args(agent, args)
        cwd = panes.get(pane_id, (None, None))[1]
        if rid:
            live.append((agent, rid, cwd))
        elif pane_id not in linked and cwd:
            cwds.append((agent, cwd))
    live.extend((agent, tid, None) for agent, tid in processes.open_threads.values())
    return live, cwds


class AgentExits(object):
    """Be woken when an agent process a live thread runs in exits: a pidfd per process (Linux
    5.3+, Python 3.9+) in the event loop. Elsewhere a 1 s timer asks the kernel about those pids
    only (os.kill(pid, 0)), and only while there are any. `wanted()` -> the pids to watch;
    `on_exit(pid)` runs on the loop."""

    def __init__(self, loop, wanted, on_exit):
        self.loop = loop
        self.wanted = wanted
        self.on_exit = on_exit
        self._pidfds = {}  # pid of a live thread's agent -> pidfd (readable when it exits)
        self._pidfd_ok = hasattr(os, "pidfd_open")
        self._check_armed = False

    def sync(self):
        """Watch the wanted pids, and no others."""
        want = self.wanted()
        for pid in [p for p in self._pidfds if p not in want]:
            self.forget(pid)
        missing = want.difference(self._pidfds)
        if not missing:
            return
        for pid in missing if self._pidfd_ok else ():
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.loop.post(self.on_exit, pid)  # gone already
                continue
            except OSError:
                self._pidfd_ok = False  # an older kernel: the timer looks instead
                break
            self._pidfds[pid] = fd
            self.loop.add_reader(fd, lambda pid=pid: self.on_exit(pid))
        if not self._pidfd_ok and not self._check_armed:
            self._check_armed = True
            self.loop.call_later(1.0, self._check)

    def forget(self, pid):
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self):
        for pid in list(self._pidfds):
            self.forget(pid)

    def _check(self):
        self._check_armed = False
        pids = self.wanted().difference(self._pidfds)
        gone = [pid for pid in pids if not _pid_alive(pid)]
        if gone:
            self.on_exit(gone[0])
        elif pids:
            self._check_armed = True
            self.loop.call_later(1.0, self._check)


class StateFile(object):
    """state-<socket>.json: sessions' metadata and the threads, read at start; written atomically,
    debounced: one write when changes pause SAVE_QUIET, at least every SAVE_MAX_DELAY while they go
    on (a flood of events does not rewrite and fsync the file each second)."""

    def __init__(self, path, store, loop, document=None):
        self.path = path
        self.store = store
        self.loop = loop
        self.document = document or store.metadata_json  # -> the JSON document to write
        self.pending = False
        self._first_change = self._last_change = 0.0

    def load(self):
        """Read the file into the store -> the document read ({} if none; a corrupt file is
        kept as .corrupt)."""
        try:
            data = read_json_file(self.path, {})
        except OpensessionsError as e:
            log("%s; starting with empty metadata (the file is kept as .corrupt)" % e)
            try:
                os.replace(self.path, self.path + ".corrupt")
            except OSError:
                pass
            data = {}
        if not isinstance(data, dict):
            return {}
        data = clean_json(data)  # a file written by an older version may hold what we now refuse
        meta = data.get("metadata")
        if isinstance(meta, dict):
            for name, m in meta.items():
                if isinstance(name, str) and isinstance(m, dict):
                    self.store.metadata[name] = stored_metadata(name, m)
        threads = data.get("threads")
        for t in threads if isinstance(threads, list) else ():
            if not isinstance(t, dict) or not isinstance(t.get("agent"), str) or not isinstance(t.get("id"), str):
                continue
            for key in ("title", "detail", "model"):
                t[key] = clean_text(t.get(key)) if isinstance(t.get(key), str) else None
            for key in ("cwd", "pane", "session", "source"):
                t[key] = t.get(key) if isinstance(t.get(key), str) else None
            for key in ("attempt", "pid"):
                t[key] = t.get(key) if isinstance(t.get(key), int) and not isinstance(t.get(key), bool) else None
            status = t.get("status") if t.get("status") in STATUSES else "idle"
            th = Thread(t["agent"], t["id"], title=t.get("title") or "", status=status,
                        detail=t.get("detail"), attempt=t.get("attempt"), cwd=t.get("cwd"),
                        model=t.get("model"), pane=t.get("pane"), session=t.get("session"),
                        pid=t.get("pid"), alive=bool(t.get("alive")), unseen=bool(t.get("unseen")),
                        updated_at=as_number(t.get("updatedAt"), 0, int, text=True),  # "hidden": older files' name
                        subagent=bool(t.get("subagent", t.get("hidden"))),
                        source=t.get("source"))
            th.usage = usage_json(t.get("usage"))  # the figures last shown, until the watchers read again
            self.store.threads[th.key] = th
        return data

    def schedule_save(self):
        now = self.loop.clock()
        self._last_change = now
        if not self.pending:
            self.pending = True
            self._first_change = now
            self.loop.call_later(SAVE_QUIET, self._save_when_quiet)

    def _save_when_quiet(self):
        if not self.pending:
            return  # saved meanwhile (shutdown)
        now = self.loop.clock()
        quiet_at = self._last_change + SAVE_QUIET
        if now < quiet_at and now < self._first_change + SAVE_MAX_DELAY:
            self.loop.call_later(min(quiet_at, self._first_change + SAVE_MAX_DELAY) - now, self._save_when_quiet)
            return
        self.save_now()

    def save_now(self):
        self.pending = False
        try:
            ensure_private_dir(os.path.dirname(self.path))
            atomic_write(self.path, encode_json(self.document()))
        except (OSError, OpensessionsError) as e:
            log("cannot save state to %s: %s" % (self.path, e))


class Linker(object):
    """Which pane each thread runs in: one read of the process table (read_pane_processes), the
    pure decisions (link_threads by pid, then guess_threads_by_cwd) applied to the store's threads,
    the exits of agent processes (AgentExits), and a thread whose process died mid-turn. Given the
    store, the loop, the probes, a clock, and the server's publish, status_changed(thread, old,
    new) (the apply step judges it) and save_state; and, where the agents' files are watched by stat
    or kqueue (holds_wanted()), hold_files(threads, cwds): the files of the conversations that can
    change now (live_conversations), looked at each second or given a kqueue fd."""

    def __init__(self, store, loop, probes, clock, publish, status_changed, save_state,
                 holds_wanted=lambda: False, hold_files=lambda threads, cwds: None):
        self.store = store
        self.loop = loop
        self.probes = probes
        self.clock = clock
        self.publish = publish
        self.status_changed = status_changed
        self.save_state = save_state
        self.holds_wanted = holds_wanted
        self.hold_files = hold_files
        self.proc_table = None
        self.pane_of_pid = {}
        self.pane_agents = {}
        self.open_threads = {}
        self.pid_groups = {}  # session id -> the pids under its panes (for its ports)
        self.read_at = None
        self.exited_pids = set()  # pids whose exit we were told of (a zombie still answers kill 0)
        self._relink_pending = False
        self.agent_exits = AgentExits(loop, self._live_agent_pids, self._on_agent_exit)

    def read_processes(self):
        """One process-table read: which pane each process is under, and the agents in panes."""
        processes, self.pid_groups = read_pane_processes(self.probes, self.store.sessions)
        self.proc_table = processes.table
        self.pane_of_pid = processes.pane_of_pid
        self.pane_agents = processes.agents
        self.open_threads = processes.open_threads
        self.read_at = self.clock()

    def pane_of(self, pid):
        """The pane a process runs in; a pid new to us reads the process table again. None if none."""
        pane = self.pane_of_pid.get(pid)
        if pane is None:
            self.read_processes()
            pane = self.pane_of_pid.get(pid)
        return pane

    def link(self):
        """Link each thread to its pane: read the processes again if a thread's pid is new to us,
        decide (link_threads by pid, then guess_threads_by_cwd) and apply the links."""
        table = self.proc_table
        if table is None:
            return
        # a thread whose process is not in our table: it died, or it started after our last read
        # (a new agent's registry file or hook can come first); read again, at most every 0.2 s
        need_reread = any(t.pid and t.pid not in table and (t.alive or t.pid not in self.exited_pids
                                                            and _pid_alive(t.pid))
                          for t in self.store.threads.values())
        if need_reread:
            if self.read_at is None or self.clock() - self.read_at > 0.2:
                self.read_processes()
                table = self.proc_table
            elif not self._relink_pending:
                self._relink_pending = True
                self.loop.call_later(0.25, self._relink)
        panes = {}
        for s in self.store.sessions:
            for w in s["windows"]:
                for p in w["panes"]:
                    panes[p["id"]] = (s["name"], p["cwd"])
        threads = self.store.threads
        processes = Processes(table, self.pane_of_pid, self.pane_agents, self.open_threads, self.probes.has_proc)
        links, sessions = link_threads(threads.values(), panes, processes)
        self._apply_links(links, panes)
        for key, session in sessions.items():
            threads[key].session = session
            self.store.touch()
        self._apply_links(guess_threads_by_cwd(list(threads.values()), panes, processes, links), panes)
        self.agent_exits.sync()
        if self.holds_wanted():  # (inotify sees every change: no pass over the threads for it)
            self.hold_files(*live_conversations(threads.values(), panes, processes, now_ms(self.clock)))

    def _relink(self):
        self._relink_pending = False
        self.link()
        self.publish()

    def _apply_links(self, links, panes):
        for key, pid, alive, pane, link in links:
            t = self.store.threads[key]
            t.pid = pid
            self._set_link(t, alive, pane, panes, link)

    def _set_link(self, t, alive, pane, panes, link):
        session = panes.get(pane, (None, None))[0] if pane else t.session  # a dead thread stays where it ran
        new_pane = pane if (pane or alive) else t.pane  # ... and keeps the pane it ran in
        if (t.alive, t.pane, t.session, t.link) != (alive, new_pane, session, link):
            t.alive, t.pane, t.session, t.link = alive, new_pane, session, link
            self.store.touch()
        if not alive:
            self._process_gone(t)

    def agent_pid_exited(self, agent, pid):
        """An agent's registry says its process exited."""
        for t in self.store.threads.values():
            if t.agent == agent and t.pid == pid and t.alive:
                t.alive = False
                self.store.touch()
                self._process_gone(t)

    def _process_gone(self, t):
        """A thread whose agent process died mid-turn (kill -9, a crash, a reboot) is no longer
        running or waiting: it says so, and leaves the running count. Its files may still say
        "running" (nothing wrote the end of the turn), so this is judged again at every link."""
        if t.status not in ("running", "waiting", "retry") or t.alive or not t.pid:
            return
        if t.pid not in self.exited_pids and _pid_alive(t.pid) \
                and (self.proc_table is None or t.pid not in self.proc_table):
            return  # our process table is older than the process: it runs
        prev = t.status
        t.status, t.detail, t.attempt = "interrupted", "agent exited", None
        t.updated_at = now_ms(self.clock)
        self.status_changed(t, prev, t.status)
        self.store.touch()
        self.save_state()

    def _live_agent_pids(self):
        return {t.pid for t in self.store.threads.values() if t.alive and t.pid}

    def _on_agent_exit(self, pid):
        self.agent_exits.forget(pid)
        self.read_processes()
        self.exited_pids = {p for p in self.exited_pids if p in self.proc_table}
        if pid in self.proc_table:
            self.exited_pids.add(pid)
            self.proc_table.pop(pid)  # exited, not yet reaped: dead all the same
        self.link()
        self.publish()

    def forget_panes(self):
        """Another tmux server: every thread keeps its session name (and its unseen flag and age)
        but points at no pane, and no process of the old server's panes."""
        for t in self.store.threads.values():
            if t.pane is not None or t.pid is not None or t.alive:
                t.pane, t.pid, t.proc_start, t.alive, t.link = None, None, None, False, None
                self.store.touch()
        self.save_state()

    def close(self):
        self.agent_exits.close()


class SessionFacts(object):
    """Per session, from its directory and the processes under its panes: its git branch and dirty
    flag (GitProbe; `git status` runs off the loop) and its listening ports. Given the store, the
    loop, the probes, the linker (its process reads and pid groups), the server's own port (never
    listed) and publish."""

    def __init__(self, store, loop, probes, linker, own_port, publish):
        self.store = store
        self.loop = loop
        self.probes = probes
        self.linker = linker
        self.own_port = own_port  # () -> the API's port
        self.publish = publish
        self.git = GitProbe()
        self._git_jobs = set()
        self._ports_key = None

    def refresh(self):
        """tmux changed: git again, the processes again, and the ports where they changed."""
        self.refresh_git()
        self.linker.read_processes()
        self.update_ports()

    def refresh_git(self):
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
        self.refresh_git()
        self.publish()

    def update_ports(self, listening=None):
        """Map listening ports to sessions; the fd walk runs only when the processes under the
        panes or the listening sockets changed (a window switch changes neither)."""
        if listening is None:
            listening = self.probes.listening()
        groups = self.linker.pid_groups
        key = (tuple(sorted((g, tuple(p)) for g, p in groups.items())),
               tuple(sorted(listening.items())) if listening is not None else None)
        if listening is not None and key == self._ports_key:
            return
        self._ports_key = key
        ports = self.probes.ports(groups, listening=listening)
        ports = {g: [p for p in found if p != self.own_port()] for g, found in ports.items()}  # never our own API
        ports = {g: found for g, found in ports.items() if found}
        if ports != self.store.ports:
            self.store.ports = ports
            self.store.touch()

    def ports_timer(self):
        """Ports change without a tmux event (a dev server starts listening). On Linux one netlink
        query every 2 s; only a changed set of listeners makes us re-read processes and walk fds.
        Elsewhere each look runs lsof, so it looks every 10 s."""
        linux = self.probes.has_proc
        try:
            if linux:
                listening = self.probes.listening()
                if self._ports_key is None or tuple(sorted(listening.items())) != self._ports_key[1]:
                    self.linker.read_processes()  # a new listener may be a new process under a pane
                self.update_ports(listening)
            else:
                self.update_ports()
            self.publish()
        finally:  # a failure is logged by the loop; the next look still happens
            self.loop.call_later(2.0 if linux else 10.0, self.ports_timer)


class Preferences(object):
    """The sidebar preferences (ui.json, in the store's `ui`): read at start (what is refused is
    said), the @opensessions-* tmux options applied, a change kept, saved and applied (usage priced
    again for new prices; `on_change(change)` for the sidebar panes). A broken file is not
    overwritten until the user changes a preference. Given the store, the file's path and tmux."""

    def __init__(self, store, path, tmux, on_change, applied_path=None):
        self.store = store
        self.path = path
        self.tmux = tmux
        self.on_change = on_change
        # the preferences last applied from the @opensessions-* options (see tmux_ui_change)
        self.applied_path = applied_path

    def load(self):
        """Sidebar preferences; a broken file gives a message and defaults, a refused field the
        message and its default."""
        try:
            data = read_json_file(self.path, {})
        except OpensessionsError as e:
            self.store.ui_error = "%s; using defaults" % e
            log(self.store.ui_error)
            data = {}
        self.store.ui, problems = load_ui(data)
        if problems:  # said as a bad environment value is: a log line, and /state's ui.error
            self.store.ui_error = "%s: %s; %s" % (self.path, "; ".join(problems), "using defaults" if not
                                                  isinstance(data, dict) else "the rest of it is used")
            log(self.store.ui_error)
        self.store.touch()

    def apply_tmux_options(self, from_tmux=None):
        """The @opensessions-* options (from ~/.tmux.conf) hold from the first sidebar on, where
        their value changed since it was last applied from tmux (tmux_ui_change, remembered in
        applied_path): a theme picked with `t` holds until the option itself changes. `from_tmux`
        is what tmux-setup read at a re-source (POST /ui {"fromTmux"}), else they are read here.
        -> the change made (applied through on_change)."""
        if from_tmux is None:
            try:
                from_tmux = ui_from_tmux_options(read_tmux_options(self.tmux))
            except Exception as e:  # never fail a start for an option
                log("cannot read the tmux options: %s" % e)
                return {}
        last = {}
        if self.applied_path:
            try:
                last = read_json_file(self.applied_path, {})
            except OpensessionsError as e:
                log("%s; applying every @opensessions-* option again" % e)
        change, remember = tmux_ui_change(from_tmux, last, self.store.ui)
        if self.applied_path and remember != last:
            try:
                ensure_private_dir(os.path.dirname(self.applied_path))
                atomic_write(self.applied_path, json.dumps(remember, indent=2) + "\n")
            except (OSError, OpensessionsError) as e:
                log("cannot save %s: %s" % (self.applied_path, e))
        if change:
            log("applied from the tmux options: %s" % json.dumps(change, sort_keys=True))
            self.store.ui.update(change)
            self.store.touch()
            if self.store.ui_error is None:  # a broken ui.json is kept until the user changes something
                self.save()
            self.on_change(change)  # at a start, before any sidebar is placed: nothing to move yet
        return change

    def save(self):
        self.store.ui_error = None
        self.store.touch()
        try:
            ensure_private_dir(os.path.dirname(self.path))
            atomic_write(self.path, json.dumps(self.store.ui, indent=2) + "\n", mode=0o644)
        except (OSError, OpensessionsError) as e:
            log("cannot save %s: %s" % (self.path, e))

    def change(self, change):
        """Preferences changed (POST /ui, /mute): kept, usage priced again for new prices, saved,
        and applied."""
        self.store.ui.update(change)
        if "prices" in change:
            self.reprice()
        self.save()
        self.on_change(change)

    def reprice(self):
        """The user's prices changed: price every thread's usage again."""
        for t in self.store.threads.values():
            if t.usage_raw is not None:
                t.usage = usage_json(t.usage_raw, t.model, self.store.ui.get("prices"))


PREVIEW_MIN_GAP = 0.1  # a followed pane is read at most 10 times a second, however fast it prints ...
PREVIEW_BURST = 3  # ... after a burst of up to 3 reads at once (a command's echo, then its output)


class PreviewFeed(object):
    """Previews pushed to the clients that show them (GET /api/preview?follow=1): a shown pane is
    read (capture-pane, answered through the control client: no tmux process per read) when tmux
    says it printed (%output), at most every PREVIEW_MIN_GAP, and each watcher is sent its doc when
    that changes (a burst of PREVIEW_BURST reads may come closer: a line typed and its output each
    show at once). tmux 3.3a gives a control client the output of its own session's panes only: the
    newest preview's pane is followed (the control client attaches to its session and pauses the
    others there); a preview of a pane elsewhere is read every PREVIEW_INTERVAL while it is shown.
    Given the loop, the control client, `capture(pane, callback(screen or None))` and `sessions()`
    (the store's tmux sessions)."""

    def __init__(self, loop, control, capture, sessions, clock=time.monotonic):
        self.loop = loop
        self.control = control
        self.capture = capture
        self.sessions = sessions
        self.clock = clock
        self.subs = {}  # token -> {"pane", "to_doc": screen -> doc, "send": doc -> None, "last": doc sent}
        self.panes = {}  # pane -> {"screen", "at": last read, "busy": a read under way, "again": output since}
        self.followed = None  # the pane whose output the control client takes
        self._token = 0
        self.reads = 0  # captures made (bench, tests)

    def subscribe(self, pane, to_doc, send):
        """A client shows `pane`: it is sent to_doc(screen) now and whenever that changes. -> token."""
        self._token += 1
        self.subs[self._token] = {"pane": pane, "to_doc": to_doc, "send": send, "last": None}
        state = self.panes.get(pane)
        if state is None:
            state = self.panes[pane] = {"screen": None, "at": None, "busy": False, "again": False, "timer": None,
                                        "tokens": float(PREVIEW_BURST)}
        if state["screen"] is not None:
            self._push(pane)
        self._follow(pane)
        self._read(pane)
        return self._token

    def unsubscribe(self, token):
        sub = self.subs.pop(token, None)
        if sub is None:
            return
        pane = sub["pane"]
        if not any(s["pane"] == pane for s in self.subs.values()):
            state = self.panes.pop(pane, None)
            if state and state["timer"]:
                state["timer"]()
            if pane == self.followed:
                self.followed = None
                newest = max(self.subs, default=None)
                if newest is not None:
                    self._follow(self.subs[newest]["pane"])
                else:
                    self.control.unfollow()

    def _session_of(self, pane):
        """-> (session id, the other panes of that session), or (None, ())."""
        for s in self.sessions():
            panes = [p["id"] for w in s["windows"] for p in w["panes"]]
            if pane in panes:
                return s["id"], [p for p in panes if p != pane]
        return None, ()

    def _follow(self, pane):
        session, others = self._session_of(pane)
        if session is not None and self.control.running and self.control.follow(pane, session, others):
            self.followed = pane
        elif pane == self.followed:
            self.followed = None

    def tmux_changed(self):
        """tmux's panes changed (or the control client was started again): new panes in the followed
        session are paused; a followed pane whose client restarted is followed again."""
        if not self.subs:
            return
        want = self.subs[max(self.subs)]["pane"]
        following = self.control.following
        if following is None or following[0] != want or self._session_of(want)[0] != following[1]:
            self._follow(want)
        elif self.followed:
            session, others = self._session_of(self.followed)
            known = self.panes.get(self.followed, {}).setdefault("others", set(others))
            new = [p for p in others if p not in known]
            if new:
                known.update(new)
                self.control.pause(new)

    def on_output(self, pane, paused=False):
        """The control client saw output of `pane` (or tmux paused it: we fell behind)."""
        if pane not in self.panes:
            return  # another pane of that session, printed before its pause took effect
        if paused:
            if pane == self.followed:
                self.control.send("refresh-client -A '%s:continue'" % pane)
        self._read(pane)

    def _read(self, pane):
        """Read the pane now if its budget allows (a token per PREVIEW_MIN_GAP, PREVIEW_BURST at
        most), else when it does; one read under way at a time, output meanwhile asks for one more."""
        state = self.panes.get(pane)
        if state is None:
            return
        if state["busy"]:
            state["again"] = True
            return
        now = self.clock()
        if state["at"] is not None:
            state["tokens"] = min(float(PREVIEW_BURST), state["tokens"] + (now - state["at"]) / PREVIEW_MIN_GAP)
        state["at"] = now
        if state["tokens"] < 1.0 - 1e-6:
            if not state["timer"]:
                wait = max(0.005, (1.0 - state["tokens"]) * PREVIEW_MIN_GAP)
                state["timer"] = self.loop.call_later(wait, self._timer_read, pane)
            return
        state["tokens"] = max(1.0, state["tokens"])
        state["tokens"] -= 1.0
        state["busy"], state["again"] = True, False
        self.reads += 1
        self.capture(pane, lambda screen: self._got(pane, screen))

    def _timer_read(self, pane):
        state = self.panes.get(pane)
        if state is not None:
            state["timer"] = None
            self._read(pane)

    def _got(self, pane, screen):
        state = self.panes.get(pane)
        if state is None:
            return
        state["busy"] = False
        if screen is not None and screen != state["screen"]:
            state["screen"] = screen
            self._push(pane)
        if state["again"]:
            self._read(pane)
        elif pane != self.followed and not state["timer"]:
            # no output notifications for a pane in another session: look again in a while
            state["timer"] = self.loop.call_later(PREVIEW_INTERVAL, self._timer_read, pane)

    def _push(self, pane):
        screen = self.panes[pane]["screen"]
        for sub in list(self.subs.values()):
            if sub["pane"] != pane:
                continue
            doc = sub["to_doc"](screen)
            if doc != sub["last"]:
                sub["last"] = doc
                sub["send"](doc)


class Server(object):
    """Live state from tmux (+ watchers), served over HTTP and Server-Sent Events: the hub that
    owns the loop and the store, follows tmux, runs the apply step and publishes. Its rooms: the
    Linker (threads to panes), SessionFacts (git and ports per session), Preferences (ui.json),
    the Api, the StateFile, the RuntimeFiles, the ControlClient."""

    def __init__(self, tmux, port=DEFAULT_PORT, port_explicit=False, environ=None, clock=time.time, probes=None):
        self.tmux = tmux
        self.probes = probes or SystemProbes()
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock
        self.loop = EventLoop()
        self.store = Store(clock)
        self.port = port
        self.port_explicit = port_explicit
        self.runtime = RuntimeFiles(tmux.socket_path, self.environ)
        key = socket_key(tmux.socket_path)
        self.state_file = StateFile(os.path.join(state_dir(self.environ), "state-%s.json" % key), self.store,
                                    self.loop, self._state_document)
        self.usage_path = os.path.join(state_dir(self.environ), "usage-%s.json" % key)
        self._status_changes = []
        self.linker = Linker(self.store, self.loop, self.probes, clock, self.publish,
                             lambda t, old, new: self._status_changes.append((t, old, new)),
                             self.state_file.schedule_save,
                             holds_wanted=lambda: self.watchers is not None and self.watchers.wants_holds(),
                             hold_files=lambda threads, cwds: self.watchers.hold_threads(threads, cwds))
        self.facts = SessionFacts(self.store, self.loop, self.probes, self.linker, lambda: self.port, self.publish)
        self.prefs = Preferences(self.store, os.path.join(config_dir(self.environ), "ui.json"), tmux, self.on_ui_changed,
                                 os.path.join(state_dir(self.environ), "tmux-options.json"))
        self.httpd = None
        self.read_deadline = READ_DEADLINE
        self.peer_uids = True  # False: act as where the kernel cannot name a peer (macOS): token only
        self.control = ControlClient(tmux, self.loop, self.environ, self.schedule_refresh, self._on_control_exit)
        self.previews = PreviewFeed(self.loop, self.control, self._capture_for_preview, lambda: self.store.sessions)
        self.control.on_output = self.previews.on_output
        self.api = Api(self.store, clock, tmux, ApiHost(
            publish=self.publish, refresh=self.schedule_refresh, read_tmux=self.read_tmux_now,
            pane_of_pid=self.linker.pane_of,
            update_thread=self.apply_thread_update, relink=self.linker.link, notify=self.notify_user,
            save_state=self.state_file.schedule_save, change_ui=self.prefs.change,
            tmux_options=self.prefs.apply_tmux_options, to_host=self.to_host, resume=self._history_resume))
        self._refresh_pending = False
        self._refresh_due = 0.0
        self._refresh_cancel = None
        self.exit_reason = None
        self.notifier = None
        self.watchers = None
        self.sidebars = None
        self.tmux_options = None
        self.remote = None  # RemoteHosts (the remote hosts section), attached by build_server
        self.history = None  # the conversation index (History), built off the loop once the state is full
        self.cold_starting = False
        self._known_before_cold = frozenset()
        self._status_before_cold = {}
        self.tmux_instance = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self):
        """Take the lock, bind the port, read tmux once. Raises OpensessionsError with a reason."""
        if self.runtime.squatted:
            log("runtime dir: %s" % self.runtime.squatted)
        self.runtime.acquire()
        try:
            if not self.tmux.alive():
                raise OpensessionsError("no tmux server at %s" % self.tmux.socket_path)
            self.tmux_instance = self.tmux.instance()
            if self.state_file.load().get("tmux") != self.tmux_instance and self.store.threads:
                self.linker.forget_panes()  # saved under another tmux server: its pane ids are not ours
            self.prefs.load()
            self.prefs.apply_tmux_options()
            self._bind()
            self.refresh()
            if self.watchers is not None:
                t0 = time.monotonic()
                self.cold_starting = True
                self._known_before_cold = frozenset(self.store.threads)
                self._status_before_cold = {k: t.status for k, t in self.store.threads.items()}
                try:
                    self.watchers.start()
                finally:
                    self.cold_starting = False
                now = now_ms(self.clock)
                for t in self.store.threads.values():
                    if not t.updated_at:  # found with no time of its own: first seen now
                        t.updated_at = now
                self.linker.link()
                self.prune_threads()
                log("cold start: %d threads from %d files (%d KB read, %d corrupt records skipped) in %.3fs"
                    % (len(self.store.threads), len(self.watchers.tails),
                       sum(t.bytes_read for t in self.watchers.tails.values()) // 1024,
                       self.watchers.bad_records, time.monotonic() - t0))
            self.store.publish()
            if self.history is not None:  # after the watchers' cold start: it never slows the server's
                self.history.set_live(list(self.store.threads.values()))
                self.history.start()  # its worker reads what changed since the saved index
            self._follow_tmux()
            self.runtime.write(self.port)  # clients find us once the state is full and tmux followed
            if self.remote is not None:
                self.loop.post(self.remote.start)  # once the loop runs: nothing here delays a stop
            self.loop.call_later(2.0, self.facts.ports_timer)
            self.loop.call_later(PRUNE_INTERVAL, self._prune_timer)
        except BaseException:
            self.runtime.release()
            raise

    def to_host(self, op, body):
        """The API's door to the remote hosts (ApiHost.to_host): a request for body["host"]."""
        if self.remote is None:
            raise ApiError(404, "no remote hosts are followed")
        return self.remote.request_for(op, body)

    def http_door(self):
        """What the HTTP layer may ask of this server (an HttpDoor)."""
        return HttpDoor(self.peer_uids, self.read_deadline, self.token_ok, self.store, self.loop.call, self.api,
                        lambda pane: self.tmux.run("capture-pane", "-p", "-t", pane), self.health, self.previews,
                        self._history_answer if self.history is not None else None)

    def _history_resume(self, body):
        """POST /api/resume: checked here, on the loop, by the history (id, live thread, directory,
        flags); the tmux part it returns runs off the loop."""
        if self.history is None:
            raise ApiError(503, "the conversation history is off")
        return self.history.api_resume(body, self.store, self.tmux)

    def _history_answer(self, path, query):
        """GET /api/history and /api/history/preview, answered off the loop (the index has its own
        lock; a pane's directory and session are read from the published sessions)."""
        if path == "/api/history":
            return self.history.api_query(query, self.store.ui.get("prices"), self._pane_where)
        return self.history.api_preview_query(query)

    def _pane_where(self, pane_id):
        found = self.store.session_of_pane(pane_id)  # (sessions are replaced whole: a safe read)
        return (found[2].get("cwd") or None, found[0]["name"]) if found else None

    def health(self):
        """This server's figures for /health."""
        watchers = self.watchers
        return {"threads": len(self.store.threads),
                "skippedRecords": watchers.bad_records if watchers is not None else 0,
                "skippedLongLines": watchers.long_lines if watchers is not None else 0,
                "inotify": bool(watchers is not None and watchers.inotify is not None),
                "watch": watchers.watch_stats() if watchers is not None else None,
                "hosts": self.remote.health() if self.remote is not None else None,
                # previews pushed to clients: how many are shown, the pane whose output is followed, reads made
                "previews": {"shown": len(self.previews.subs), "followed": self.previews.followed,
                             "reads": self.previews.reads},
                "history": self.history.health() if self.history is not None else None}

    def _bind(self):
        try:
            self.httpd = make_http_server(self.http_door(), (HOST, self.port))
        except OSError as e:
            if self.port_explicit or self.port == 0:
                raise OpensessionsError("cannot listen on %s:%d: %s (is another program using it? "
                                        "choose another with --port or OPENSESSIONS_PORT; 0 = any free port)"
                                        % (HOST, self.port, e.strerror or e))
            log("port %d is in use (%s); listening on a free port instead" % (self.port, e.strerror or e))
            self.httpd = make_http_server(self.http_door(), (HOST, 0))
        self.port = self.httpd.server_address[1]

    def token_ok(self, token):
        """The runtime file's token, sent by our clients where the peer's uid is unknown."""
        import hmac
        mine = self.runtime.token
        return bool(mine) and isinstance(token, str) and hmac.compare_digest(
            token.encode("utf-8", "replace"), mine.encode())

    def _watch_connections(self):
        """Close connections that did not send their request (line, headers, body) within
        READ_DEADLINE: an idle or trickling client must not hold a thread and an fd for ever."""
        import socket
        try:
            httpd = self.httpd
            if httpd is None:
                return
            now = time.monotonic()
            with httpd.lock:
                late = [h for h, due in httpd.deadlines.items() if due <= now]
                for h in late:
                    del httpd.deadlines[h]
            for h in late:
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        finally:
            if self.httpd is not None:
                self.loop.call_later(1.0, self._watch_connections)

    def serve_forever(self):
        # Connections are accepted by the event loop (no poll interval, no extra thread);
        # each connection is then handled on its own daemon thread (ThreadingHTTPServer).
        self.loop.add_reader(self.httpd.fileno(), self.httpd.accept_one)
        self.loop.call_later(1.0, self._watch_connections)
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
        self.control.stop()
        self.linker.close()
        if self.remote is not None:
            self.remote.close()
        if self.watchers is not None:
            self.watchers.close()
        if self.history is not None:
            self.history.stop()
        self.state_file.save_now()
        self.runtime.release()

    def stop(self, reason="stopped"):
        self.exit_reason = reason
        self.loop.stop()

    # -- tmux ------------------------------------------------------------------------------
    def _follow_tmux(self):
        """Start the control client, once a session exists to attach it to (a tmux server still
        reading its config has none: attaching would fail, and each try leaves a "no sessions"
        message in tmux). Until then, look again every second."""
        try:
            has_session = bool(self.tmux.run("list-sessions", "-F", "#{session_id}").strip())
        except TmuxGone:
            self.stop("tmux server exited")
            return
        except TmuxError:
            has_session = True
        if has_session:
            self.control.start()
        else:
            self.loop.call_later(1.0, self._on_control_exit)

    def _on_control_exit(self):
        """The control client ended: its session died, or the whole tmux server did."""
        self.control.stop()
        if self.tmux.alive():
            instance = self.tmux.instance()
            if instance != self.tmux_instance:  # a new tmux server on the same socket
                log("tmux server %s was restarted; its old pane ids point nowhere now" % self.tmux.socket_path)
                self.tmux_instance = instance
                self.linker.forget_panes()
            self.schedule_refresh()
            self._follow_tmux()
        else:
            log("tmux server %s is gone; exiting" % self.tmux.socket_path)
            self.stop("tmux server exited")

    def schedule_refresh(self, delay=0.005):
        """Coalesce a burst of tmux notifications into one snapshot read; an earlier request
        replaces a later one (a delayed retry never holds back a tmux event)."""
        due = self.loop.clock() + delay
        if self._refresh_pending and due >= self._refresh_due:
            return
        if self._refresh_pending:
            self._refresh_cancel()
        self._refresh_pending = True
        self._refresh_due = due
        self._refresh_cancel = self.loop.call_later(delay, self._refresh_now)

    def _refresh_now(self):
        self._refresh_pending = False
        self.refresh()
        self.publish()

    def read_tmux_now(self):
        """Read tmux at once, on the loop (a request names what tmux has not told us of yet); a read
        already scheduled is not needed any more. The caller publishes."""
        if self._refresh_pending:
            self._refresh_cancel()
            self._refresh_pending = False
        self.refresh()

    def refresh(self):
        """Read all panes and clients with one tmux process; recompute derived session data."""
        while True:
            try:
                sessions, clients = self.tmux.snapshot()
            except TmuxGone:
                if not self.control.running or not self.tmux.alive():
                    self.stop("tmux server exited")
                return
            except TmuxError as e:
                log("tmux snapshot failed (keeping the last state): %s" % e)
                return
            if sessions and all(s["name"].startswith(HIDDEN_SESSION_PREFIX) for s in sessions):
                # the user closed their last session: our helper sessions must not keep tmux alive
                for s in sessions:
                    try:
                        self.tmux.run("kill-session", "-t", s["id"])
                    except TmuxError:
                        pass
                return
            self.store.sessions = sessions
            self.store.clients = clients
            self.store.touch()
            # first: a window a client just switched to gets its sidebar sooner. When that moved panes
            # (a running sidebar swapped in, a placeholder split or woken), what was read is not tmux's
            # layout any more: read it again now, so no snapshot shows a sidebar where it was (a
            # sidebar learns its own session from it: it jumped to the window it left, then back)
            if self.sidebars is None or not self.sidebars.sync():
                break
        self.facts.refresh()
        self.on_tmux_refreshed()
        self.previews.tmux_changed()

    def _capture_for_preview(self, pane, callback):
        """A pane's screen (with escapes) for a preview: answered through the control client when it
        runs (no tmux process), else read here. callback(screen, or None when it cannot be read)."""
        if self.control.command("capture-pane -p -e -t '%s'" % pane,
                                lambda ok, lines: callback("\n".join(lines) if ok else None)):
            return
        try:
            callback(self.tmux.run("capture-pane", "-p", "-e", "-t", pane))
        except TmuxError:
            callback(None)

    def on_tmux_refreshed(self):
        """Panes and clients changed: re-link threads to panes, clear what a client now views."""
        self.linker.link()
        self.clear_viewed()

    def after_watchers(self):
        """Agent files changed (called by the watchers after a batch of events)."""
        self.linker.link()
        self.publish()

    # -- agent processes and links: the Linker's ------------------------------------------------
    def agent_pid_exited(self, agent, pid):
        self.linker.agent_pid_exited(agent, pid)

    def clear_viewed(self):
        for t in self.store.threads.values():
            if t.unseen and self.is_viewed(t):
                t.unseen = False
                self.store.touch()
                self.state_file.schedule_save()

    # -- the apply step: watchers, hooks and the API change threads here; then publish ---------
    def publish(self):
        self._judge_status_changes()
        if self.store.publish():
            self.on_published()

    def _judge_status_changes(self):
        """Apply the unseen rule and tell the notifier, for changes still current."""
        changes, self._status_changes = self._status_changes, []
        for t, prev, status in changes:
            if t.status != status:
                continue  # changed again within the batch: the later change decides
            if status in ACTIVE_STATUSES:
                t.unseen = False
                self.store.touch()
            if becomes_unseen(prev, status, self.is_viewed(t)):
                t.unseen = True
                self.store.touch()
                self.state_file.schedule_save()
            self.on_thread_status(t, prev)

    def on_published(self):
        """A new snapshot: keep the tmux status-line options current."""
        if self.tmux_options is not None:
            self.tmux_options.update(self.store.published[1])
        if self.history is not None:
            self.history.set_live(list(self.store.threads.values()))  # the picker's live marker

    def notify_user(self, session, message, tone):
        """Send a notification through the enabled channels (see the notifications section);
        a muted session's stay quiet (they still reach its log)."""
        if session and session in self.store.ui["muted"]:
            return
        if self.notifier is not None:
            self.notifier.send(session, message, tone)

    def apply_thread_update(self, agent, thread_id, **fields):
        """Create or update one thread and apply the unseen rule. Runs on the loop thread.

        A thread discovered by the cold-start scan is not unseen: only states observed live are,
        and changes to threads we knew before a restart (it finished while we were down). `updated_at` may be given (the record's own time), else now."""
        key = (agent, thread_id)
        t = self.store.threads.get(key)
        is_new = t is None
        if is_new:
            t = Thread(agent, thread_id, title="", status="idle", alive=False)
            self.store.threads[key] = t
        old = (t.status, t.detail, t.title, t.cwd, t.model, t.pid, t.attempt, t.subagent, t.alive)
        if "moved_on" in fields:  # what an agent's own files say (the watchers): does a live state hold?
            plugin_holds = AGENT_SPECS[agent].plugin_holds if agent in AGENT_SPECS else False
            if live_state_holds(t, fields.get("status"), fields.pop("moved_on"), plugin_holds):
                fields.update(status=t.status, detail=t.detail, attempt=t.attempt if plugin_holds else None)
            if plugin_holds and t.source == "plugin":
                fields["source"] = "plugin"  # the plugin stays the thread's source
        fields = clean_thread_fields(fields)  # from files, hooks and plugins alike
        updated_at = fields.pop("updated_at", None)
        raw_usage = fields.pop("usage", None)
        if isinstance(raw_usage, dict):
            t.usage_raw = raw_usage
        for name, value in fields.items():
            if value is not None and (name != "title" or value):
                setattr(t, name, value)
        if fields.get("pid") is not None and t.link == "cwd":
            t.link = None  # a registry, hook or plugin vouched for the pid: no longer our guess
        if fields.get("status") is not None:
            # a status comes with its own detail and attempt: None clears the previous ones
            t.detail, t.attempt = fields.get("detail"), fields.get("attempt")
        changed = old != (t.status, t.detail, t.title, t.cwd, t.model, t.pid, t.attempt, t.subagent, t.alive)
        if t.usage_raw is not None:
            priced = usage_json(t.usage_raw, t.model, self.store.ui.get("prices"))
            if priced != t.usage:
                t.usage = priced
                self.store.touch()
                self.state_file.schedule_save()
        if updated_at:
            t.updated_at = max(t.updated_at, int(updated_at))
        elif (changed or is_new) and not self.cold_starting:
            t.updated_at = now_ms(self.clock)  # (a cold start's changes carry their own time, or none)
        prev_status = None if is_new else old[0]
        if self.cold_starting and key in self._status_before_cold:
            # a cold start passes through transient states (a registry read before its transcript):
            # what counts is where the thread was before the restart
            prev_status = self._status_before_cold[key]
        observed = not self.cold_starting or key in self._known_before_cold
        if prev_status != t.status and observed:
            # judged at publish time, once the batch is applied and threads are linked to panes
            self._status_changes.append((t, prev_status, t.status))
        if changed or is_new:
            self.store.touch()
            self.state_file.schedule_save()
        if is_new and len(self.store.threads) > MAX_THREADS:
            self.prune_threads()
        if self.history is not None:
            self.history.seen(agent, thread_id)  # the index reads what the watchers saw
        return t

    def prune_threads(self):
        """Forget threads /state would not list and that nobody needs (threads_to_prune)."""
        drop = threads_to_prune(list(self.store.threads.values()), now_ms(self.clock), self.store.recent_ms)
        gone = [self.store.threads[key] for key in drop if self.store.threads[key].usage]
        for key in drop:
            del self.store.threads[key]
        if gone:
            self.record_usage_history(gone)
        if drop:
            self.store.touch()
            self.state_file.schedule_save()
        return len(drop)

    def _prune_timer(self):
        try:
            self.prune_threads()
            self.publish()
        finally:
            self.loop.call_later(PRUNE_INTERVAL, self._prune_timer)

    def record_usage_history(self, threads):
        """Forgotten threads' usage goes to usage-<socket>.json, for `opensessions usage --since 30d`
        (one entry per thread, replaced when the same thread is forgotten again; 90 days, 20,000 kept)."""
        try:
            data = read_json_file(self.usage_path, {})
        except OpensessionsError as e:
            log("%s; starting a new usage history" % e)
            data = {}
        entries = data.get("threads") if isinstance(data, dict) and isinstance(data.get("threads"), list) else []
        keep = {}
        for e in entries:
            if isinstance(e, dict) and isinstance(e.get("agent"), str) and isinstance(e.get("id"), str):
                keep[(e["agent"], e["id"])] = e
        for t in threads:
            keep[t.key] = {"agent": t.agent, "id": t.id, "session": t.session, "model": t.model,
                           "title": t.title, "updatedAt": t.updated_at, "usage": t.usage}
        horizon = now_ms(self.clock) - USAGE_HISTORY_DAYS * 86400 * 1000
        kept = sorted((e for e in keep.values() if as_number(e.get("updatedAt"), 0, int, text=True) >= horizon),
                      key=lambda e: as_number(e.get("updatedAt"), 0, int, text=True))[-USAGE_HISTORY_MAX:]
        try:
            ensure_private_dir(os.path.dirname(self.usage_path))
            atomic_write(self.usage_path, encode_json({"threads": kept}))
        except (OSError, OpensessionsError) as e:
            log("cannot save usage history to %s: %s" % (self.usage_path, e))

    def on_thread_status(self, thread, old_status):
        """A thread changed status: tell the notifier (after this change is applied)."""
        if self.notifier is not None and not self.cold_starting:
            self.notifier.thread_changed(thread, old_status)

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

    # -- the state file's document; what a preferences change moves --------------------------
    def _state_document(self):
        doc = self.store.metadata_json()
        doc["tmux"] = self.tmux_instance  # whose pane ids the threads' "pane" are
        return doc

    def on_ui_changed(self, change):
        """Visibility, width or side changed: put the sidebar panes right. Hosts changed: follow them."""
        if "hosts" in change and self.remote is not None:
            self.remote.sync()
        if self.sidebars is not None and {"visible", "width", "position"} & set(change):
            if "position" in change:
                self.sidebars.remove_all()
            self.schedule_refresh()


class ApiHost(Record):
    """What the API's handlers may ask of the server besides its store (each a function)."""

    FIELDS = (
        ("publish", None),  # () -> publish what changed
        ("refresh", None),  # () -> read tmux again soon (a pane it has not told us of yet)
        # () -> read tmux now: a request names a session, pane or process that tmux made a moment ago,
        # before its notification reached us (answered "not there" otherwise: a false 202)
        ("read_tmux", None),
        ("pane_of_pid", None),  # pid -> the pane it runs in (the process table read again if new), or None
        ("update_thread", None),  # (agent, thread id, **fields): the apply step (Server.apply_thread_update)
        ("relink", None),  # () -> link threads to panes again
        ("notify", None),  # (session, message, tone) -> a notification through the user's channels
        ("save_state", None),  # () -> the state file is written soon
        ("change_ui", None),  # (change) -> preferences changed: kept, saved, applied
        ("tmux_options", None),  # (from the @opensessions-* options) -> those changed since last applied, applied
        # (op, body) -> a request for the server of body["host"] (op "reply", "preview" or "ui"), checked
        # on the loop; returns the function that carries it there and waits for the answer, off the loop
        # (preview: -> (status, body dict)). Raises ApiError (404: no such host). None: no remote hosts.
        ("to_host", None),
        ("resume", None),  # (body) -> the conversation history's answer to POST /api/resume
    )


class Api(object):
    """The HTTP API's handlers (the ROUTES values, and api_preview), run on the loop thread over
    the server's store; they change the store and ask the server (an ApiHost) to link, refresh or
    publish; a reply types through the tmux gateway."""

    def __init__(self, store, clock, tmux, host):
        import threading
        self.store = store
        self.clock = clock
        self.tmux = tmux
        self.host = host
        self._reply_lock = threading.Lock()  # one reply at a time

    def _found(self, look):
        """look() -> what the store holds for a name a request gave, else None. When it finds nothing,
        tmux is read once at once and it looks again: a session, pane or process made a moment ago
        can be there before tmux's notification of it reached us."""
        found = look()
        if found is None and self.host.read_tmux is not None:
            self.host.read_tmux()
            found = look()
        return found

    def _session_known(self, session):
        return self._found(lambda: self.store.session_by_name(session)) is not None

    def apply_and_publish(self, handler, body):
        """Run the handler a ROUTES value names (a method name, or (name, agent) for a plugin's
        route) on the loop thread, then publish whatever it changed."""
        name, args = (handler, ()) if isinstance(handler, str) else (handler[0], handler[1:])
        result = getattr(self, name)(body, *args)
        self.host.publish()
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
        return self._session_known(session)  # kept either way; False -> 202

    def api_set_progress(self, body):
        session, progress = validate_set_progress(body)
        self._meta(session)["progress"] = progress
        self._changed_metadata()
        return self._session_known(session)

    def api_log(self, body):
        session, entry = validate_log(body, self.clock)
        meta = self._meta(session)
        meta["logs"] = apply_log(meta.get("logs", []), entry)
        self._changed_metadata()
        return self._session_known(session)

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
        self.host.notify(session, note["message"], note["tone"])
        return not session or self._session_known(session)

    def api_agent_event(self, body):
        """A hook or plugin reports a thread's status. -> True if a session matched."""
        ev = validate_agent_event(body)
        pane = session = None
        if ev["paneId"]:
            pane = ev["paneId"]
            found = self._found(lambda: self.store.session_of_pane(pane))
            if found:
                session = found[0]
            elif self.host.read_tmux is None:
                self.host.refresh()  # a pane tmux has not told us about yet: map it after
        if pane is None and ev["pid"]:
            pane = self._found(lambda: self.host.pane_of_pid(ev["pid"]))
            if pane is None and self.host.read_tmux is None:
                self.host.refresh()  # a pane tmux has not told us about yet: link it after
            found = self.store.session_of_pane(pane) if pane else None
            session = found[0] if found else None
        if session is None and ev["tmuxSession"]:
            session = self._found(lambda: self.store.session_by_name(ev["tmuxSession"]))
        if session is None and ev["projectDir"]:
            session = self.store.session_for_dir(ev["projectDir"])
        thread_id = ev["threadId"] or (pane and "pane" + pane) or (session and "session-" + session["name"])
        if not thread_id:
            return False
        current = self.store.threads.get((ev["agent"], thread_id))
        status = ev["status"]
        if ev["idlePrompt"]:
            # the agent waits at its prompt input: a turn still under way was stopped there (an Esc
            # during retries leaves nothing in Qwen's chat file); anything else stays as it is
            if current is None or current.status not in ("running", "retry"):
                return session is not None
            status = "interrupted"
        elif status == "idle":
            status = settle_idle(current.status if current else None)
        fields = dict(status=status, title=ev["threadName"], detail=ev["detail"], attempt=ev["attempt"],
                      cwd=ev["projectDir"], model=ev["model"], pid=ev["pid"],
                      source=ev["source"] or "api")
        if ev["alive"] is False:
            fields["alive"] = False
        elif ev["pid"] is None:
            fields["alive"] = True
        if ev["prompt"] and (current is None or not current.title):
            fields["title"] = fields["title"] or _clip_title(ev["prompt"])
        linked_by_pid = (current is not None and current.pid) or ev["pid"]
        if pane and not linked_by_pid:
            fields.update(pane=pane, link="api")
        if session is not None and (pane or current is None or not current.pane):
            fields["session"] = session["name"]
        self.host.update_thread(ev["agent"], thread_id, **fields)
        self.host.relink()  # (and the files of what it names can change now: the Linker holds them)
        return session is not None

    def api_plugin_event(self, body, agent):
        """An event from our plugin inside an agent -> an agent event (its spec's Plugin maps it)."""
        spec = AGENT_SPECS[agent]
        etype = body.get("type")
        props = body.get("properties")
        if not isinstance(etype, str) or not isinstance(props, dict):
            raise ApiError(400, "'type' (string) and 'properties' (object) are required")
        sid = props.get("sessionID")
        if not valid_thread_id(agent, sid):
            raise ApiError(400, "'properties.sessionID' must be the id of a %s session" % spec.title)
        fields = spec.plugin.thread(etype, props) if spec.plugin.thread else None
        if fields is not None:
            if fields:
                self.host.update_thread(agent, sid, **fields)
            return True
        mapped = spec.plugin.status(etype, props)
        if mapped is None:
            return True
        status, detail, attempt = mapped
        event = {"agent": agent, "status": status, "threadId": sid, "detail": detail, "attempt": attempt,
                 "source": "plugin"}
        for key, src_key in (("pid", "pid"), ("paneId", "paneId"), ("projectDir", "directory")):
            if body.get(src_key) is not None:
                event[key] = body[src_key]
        if status == "retry":
            current = self.store.threads.get((agent, sid))
            if current is not None and current.status == "retry" and current.attempt == attempt:
                return True
        return self.api_agent_event(event)

    def _changed_metadata(self):
        self.store.touch()
        self.host.save_state()

    def api_ui(self, body):
        """POST /ui: a partial update of the preferences. {"fromTmux": {...}} (what tmux-setup read
        from the @opensessions-* options) is applied where an option changed since it was last
        applied from tmux (tmux_ui_change); the rest of the body is a change as usual. With "host",
        it is that host's own preferences (such as its order), changed by its server."""
        if "host" in body:
            return self._to_host("ui", body)
        if isinstance(body, dict) and "fromTmux" in body:
            body = dict(body)
            from_tmux = body.pop("fromTmux")
            if not isinstance(from_tmux, dict):
                raise ApiError(400, "'fromTmux' must be an object of preferences")
            from_tmux = validate_ui(from_tmux) if from_tmux else {}
            rest = validate_ui(body) if body else {}
            self.host.tmux_options(from_tmux)
            if rest:
                self.host.change_ui(rest)
            return None
        self.host.change_ui(validate_ui(body))

    def api_mute(self, body):
        """POST /mute {"session", "muted": true|false}; without "muted" it toggles."""
        session = _require_session(body)
        muted = body.get("muted")
        if muted is not None and not isinstance(muted, bool):
            raise ApiError(400, "'muted' must be a boolean")
        current = list(self.store.ui["muted"])
        if muted is None:
            muted = session not in current
        new = [s for s in current if s != session] + ([session] if muted else [])
        self.api_ui({"muted": new})

    def _thread_by_id(self, value):
        if not isinstance(value, str) or not value:
            raise ApiError(400, "'thread' (a thread id) is required")
        agent, sep, tid = value.partition(":")
        found = [t for t in self.store.threads.values()
                 if t.id == value or (sep and t.agent == agent and t.id == tid)]
        if not found:
            raise ApiError(404, "no thread %s" % value)
        if len(found) > 1:
            raise ApiError(409, "thread id %s is ambiguous; say AGENT:ID" % value)
        return found[0]

    def _pane_of(self, pane_id):
        for s in self.store.sessions:
            for w in s["windows"]:
                for p in w["panes"]:
                    if p["id"] == pane_id:
                        return p
        return None

    def api_reply(self, body):
        """POST /api/reply {"thread", "action", "text"}: checked here on the loop (thread, status,
        exact pane link); the returned function reads the screen and types, off the loop, and
        returns what was done ({"sent": one line, "answer": the option's words, "ms": key to screen})."""
        if body.get("host") is not None:  # a thread on another machine: its own server checks and types
            return self._to_host("reply", body)
        action = body.get("action")
        if action not in REPLY_ACTIONS:
            raise ApiError(400, "'action' must be one of %s" % ", ".join(REPLY_ACTIONS))
        t = self._thread_by_id(body.get("thread"))
        text = body.get("text") if action == "text" else None
        what = "%s %s/%s" % (action, t.agent, t.id)
        spec = AGENT_SPECS.get(t.agent)
        title = spec.title if spec else t.agent

        def refuse(reason):
            log("reply %s refused: %s" % (what, reason))
            raise ApiError(409, reason)
        if action == "text":
            try:
                text = check_reply_text(text)
            except ReplyRefused as e:
                log("reply %s refused: %s" % (what, e))
                raise ApiError(400, str(e))
        reason = reply_status_refusal(title, action, t.status)
        if reason:
            refuse(reason)
        if not t.alive:
            refuse("%s's process has exited; there is nothing to answer" % title)
        if not t.pane or t.link != "pid" or not t.pid:
            refuse("the thread's pane is not known exactly (%s); nothing is typed into a guess" % (
                "it was linked by its directory only" if t.link == "cwd" else "no pane"))
        pane = self._pane_of(t.pane)
        if pane is None or not pane.get("pid"):
            refuse("pane %s is gone" % t.pane)
        newer = [u for u in self.store.threads.values() if u is not t and u.agent == t.agent and u.alive
                 and u.pid == t.pid and u.updated_at > t.updated_at]
        if newer:  # one process, several conversations (resumed, /new): its screen shows the newest
            refuse("the %s in pane %s has moved on to thread %s; this one is no longer on its screen" % (
                title, t.pane, newer[0].id))
        agent, pid, pane_id, pane_pid, start = t.agent, t.pid, t.pane, pane["pid"], t.proc_start
        tmux = self.tmux
        lock = self._reply_lock

        def send():
            with lock:  # one reply at a time: keystrokes of two replies never interleave
                said = []
                try:
                    guard = foreground_guard(agent, pid, pane_pid, start)
                    reason = guard()
                    if reason:
                        raise ReplyRefused(reason)
                    steps, screen = plan_when_ready(lambda: tmux.run("capture-pane", "-p", "-e", "-t", pane_id),
                                                    lambda screen: reply_plan(agent, action, screen, text))
                    changed_ms = run_reply_steps(tmux, pane_id, steps, screen, guard=guard, said=said)
                except ReplyRefused as e:
                    refuse(str(e))
                except TmuxError as e:
                    refuse("tmux: %s" % e)
            line = reply_summary(action, title, pane_id, steps, said, text, changed_ms)
            log("reply %s sent to pane %s: %s" % (what, pane_id, line))
            answer = ([s[1] for s in steps if s[0] == "answer"] + said)[-1:]
            return {"thread": t.id, "agent": agent, "pane": pane_id, "action": action, "sent": line,
                    "answer": answer[0] if answer else None,
                    "ms": round(changed_ms) if changed_ms is not None else None}
        return send

    def api_resume(self, body):
        """POST /api/resume {"thread", "fork", "target", "session"}: the history's (the server's
        resume), checked on the loop; the tmux part runs off the loop."""
        return self.host.resume(body)

    def api_preview(self, thread_id, lines=20):
        """GET /api/preview?thread=ID[&lines=N] -> the pane to read (read off the loop), and, under
        "_check", what preview_problem needs (the pane is shown only while the agent is in front)."""
        t = self._thread_by_id(thread_id)
        pane = self._pane_of(t.pane) if t.pane else None
        if pane is None:
            raise ApiError(409, "the thread has no pane")
        return {"thread": t.id, "agent": t.agent, "pane": t.pane, "link": t.link, "status": t.status,
                "_check": (t.agent, t.pid, pane.get("pid"), t.proc_start)}

    def api_host_preview(self, host, thread_id, lines):
        """GET /api/preview?host=HOST&thread=ID: checked here on the loop; the returned function asks
        that host's server for it (off the loop) -> (status, body dict)."""
        return self._to_host("preview", {"host": host, "thread": thread_id, "lines": lines})

    def _to_host(self, op, body):
        """A request for another machine's server ("reply", "preview", "ui", with body["host"]): checked
        on the loop by the ApiHost's to_host, which returns the function that carries it off the loop."""
        if self.host.to_host is None:
            raise ApiError(404, "no remote hosts are followed")
        return self.host.to_host(op, body)


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
    "/ui": "api_ui",
    "/mute": "api_mute",
    "/api/reply": "api_reply",
    "/api/resume": "api_resume",
}
ROUTES.update({spec.plugin.route: ("api_plugin_event", spec.name) for spec in AGENT_SPECS.values() if spec.plugin})
GET_ROUTES = ("/", "/state", "/events", "/health", "/api/preview", "/api/history", "/api/history/preview")
MAX_CONNECTIONS = 500  # open connections (one thread and one fd each); more get a 503
MAX_SSE_CLIENTS = 400  # of which /events streams
READ_DEADLINE = 10.0  # seconds to send a request's line, headers and body (and to start the next one)
WRITE_TIMEOUT = 30.0  # a client that reads nothing for this long is dropped


class BodyError(ApiError):
    """A request body we cannot read: answered, then the connection is closed."""


def read_json_body(headers, rfile):
    """The JSON object a POST carries. Raises BodyError (bad framing: close the connection) or
    ApiError (a bad body read in full: the connection can go on)."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        raise BodyError(411, "send the body with a Content-Length (chunked bodies are not accepted)")
    length = headers.get("Content-Length")
    try:
        length = int(length) if length is not None else 0
    except ValueError:
        raise BodyError(400, "bad Content-Length")
    if length < 0:
        raise BodyError(400, "bad Content-Length")
    if length > MAX_BODY:
        raise BodyError(413, "body is %d bytes; the limit is %d" % (length, MAX_BODY))
    raw = rfile.read(length) if length else b""
    if len(raw) < length:
        raise BodyError(400, "the body ended before Content-Length bytes")
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8")
    except RecursionError:
        raise ApiError(400, "body is not valid JSON: nested too deeply")
    except ValueError as e:
        raise ApiError(400, "body is not valid JSON: %s" % e)
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


class HttpDoor(object):
    """What the HTTP layer may ask of the server, and nothing more: whether the kernel names a
    peer's uid (else the runtime file's token is checked), how long a request may take to arrive,
    the published snapshots (the store's `published` and `cond`, for /state and /events), `on_loop`
    (run a function on the event loop and wait for its result), the API's handlers, a pane's text
    (`capture(pane)`), the server's own figures for /health (`health()`), the preview feed
    (`previews`: subscribe / unsubscribe, on the loop) and the conversation history's answers
    (`history(path, query)`, None when it is off), read off the loop."""

    def __init__(self, peer_uids, read_deadline, token_ok, snapshots, on_loop, api, capture, health, previews=None,
                 history=None):
        self.peer_uids = peer_uids
        self.read_deadline = read_deadline
        self.token_ok = token_ok
        self.snapshots = snapshots
        self.on_loop = on_loop
        self.api = api
        self.capture = capture
        self.health = health
        self.history = history
        self.previews = previews


def health_json(door, httpd):
    return json.dumps(dict({"ok": True, "version": __version__, "pid": os.getpid()}, **door.health(),
                           connections=getattr(httpd, "active", 0), streams=getattr(httpd, "streams", 0))).encode()


def route_get(door, httpd, path):
    """GET/HEAD answers other than /events -> (status, body, content type, extra headers)."""
    if path in ROUTES:
        return _error_body(405, "use POST for %s" % path) + ({"Allow": "POST"},)
    if path == "/":
        return 200, b"opensessions server\n", "text/plain; charset=utf-8", None
    if path == "/health":
        return 200, health_json(door, httpd), "application/json", None
    if path == "/state":
        published = door.snapshots.published
        if published is None:
            return _error_body(503, "server is starting or stopping") + (None,)
        return 200, published[2], "application/json", None
    return _error_body(404, "no such endpoint: %s" % path) + (None,)


def route_post(door, path, body):
    """Apply one POST on the loop thread -> (status, body, content type, extra headers)."""
    method = ROUTES[path]
    try:
        result = door.on_loop(door.api.apply_and_publish, method, body)
        if callable(result):  # the part that waits on tmux (a reply, a resume) runs here, off the loop
            result = result()
    except ApiError as e:
        return _error_body(e.status, e.message) + (None,)
    except TimeoutError:
        return _error_body(503, "server busy") + (None,)
    except Exception as e:  # never crash on a request; say what happened
        log("%s failed: %r" % (path, e))
        return _error_body(500, "internal error: %s" % e.__class__.__name__) + (None,)
    if result is False:  # a session (or thread) the call named is not there: kept, not matched
        return 202, json.dumps({"matched": False}).encode(), "application/json", None
    if isinstance(result, dict):  # an answer with content (a reply: what was done; /api/resume)
        return 200, encode_json(result), "application/json", None
    return 204, b"", None, None


def _error_body(status, message):
    return status, json.dumps({"error": message}).encode(), "application/json"


def stream_state(write, store, keepalive=SSE_KEEPALIVE):
    """The /events loop: each new snapshot as `event: state` (at most ~30 a second), a comment as
    keep-alive; returns when the server stops or the client goes away."""
    last = None
    last_sent = 0.0
    try:
        while True:
            with store.cond:
                store.cond.wait_for(lambda: store.published is None or store.published[0] != last,
                                    timeout=keepalive)
                published = store.published
            if published is None:
                return  # shutting down
            if published[0] == last:
                write(b": keepalive\n\n")
                continue
            wait = SSE_MIN_INTERVAL - (time.monotonic() - last_sent)
            if wait > 0 and last is not None:
                time.sleep(wait)  # coalesce: at most ~30 events per second
                published = store.published or published
            last = published[0]
            last_sent = time.monotonic()
            write(b"event: state\nid: %d\ndata: " % last + published[2] + b"\n\n")
    except OSError:  # reset, broken pipe, or a client reading nothing for WRITE_TIMEOUT
        return


def _raw_refusal(sock, status, reason, message):
    """Answer a connection we do not serve (no thread for it) and close it."""
    body = json.dumps({"error": message}).encode()
    try:
        sock.settimeout(0.5)
        sock.sendall(("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                      "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                      "Connection: close\r\nRetry-After: 1\r\n\r\n" % (status, reason, len(body))).encode() + body)
    except OSError:
        pass


class ApiListener(object):
    """The listening server's own part, over http.server's ThreadingHTTPServer (http_classes() adds
    it: importing http.server would cost every client command): a thread per connection up to
    MAX_CONNECTIONS (the excess gets a 503 at once), a read deadline per request (see
    Server._watch_connections), one log line per failed connection, and accept_one() for the event
    loop, which sees the listening socket readable (socketserver's own loop would poll)."""

    daemon_threads = True
    allow_reuse_address = True
    # the listen queue holds a burst (every sidebar reconnecting after a restart): from a full one the
    # kernel drops the SYN, and that client waits a second for its retry
    request_queue_size = MAX_CONNECTIONS

    def __init__(self, address, handler, door):
        import threading
        self.door = door  # what the handlers serve (an HttpDoor)
        self.lock = threading.Lock()
        self.active = 0
        self.streams = 0
        self.deadlines = {}  # handler -> monotonic time its request must be read by
        super().__init__(address, handler)

    def accept_one(self):
        """One connection waiting on the listening socket: accepted and handed to its thread."""
        try:
            request, client_address = self.get_request()
        except OSError:
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def process_request(self, request, client_address):
        with self.lock:
            full = self.active >= MAX_CONNECTIONS
            if not full:
                self.active += 1
        if full:
            _raw_refusal(request, 503, "Service Unavailable", "too many connections (%d); try again" % MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self.lock:
                self.active -= 1
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.active -= 1

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        log("connection from port %s failed: %s: %s" % (client_address[1], e.__class__.__name__, e))


class ApiRequests(object):
    """The HTTP request handler's own part, over http.server's BaseHTTPRequestHandler (http_classes()
    adds it): checks (peer, Host, Origin, token), then route_get / route_post / stream_state, for
    the door its listener holds (self.server.door)."""

    protocol_version = "HTTP/1.1"
    server_version = "opensessions/" + __version__
    sys_version = ""
    timeout = WRITE_TIMEOUT  # socket timeout; reading a request has the shorter READ_DEADLINE

    def log_message(self, fmt, *args):  # quiet: no line per request
        pass

    def setup(self):
        import socket
        super().setup()
        self.door = self.server.door
        try:  # one write per answer and no Nagle wait for the next one
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.peer_uid = tcp_peer_uid(self.client_address, self.connection.getsockname()) \
            if self.door.peer_uids else None

    def handle(self):
        if self.peer_uid is not None and self.peer_uid != os.getuid():
            _raw_refusal(self.connection, 403, "Forbidden",
                         "connections from other users (uid %d) are refused" % self.peer_uid)
            return
        super().handle()

    def handle_one_request(self):
        self._deadline(self.door.read_deadline)
        try:
            super().handle_one_request()
        finally:
            self._deadline(None)

    def _deadline(self, seconds):
        httpd = self.server
        with httpd.lock:
            if seconds is None:
                httpd.deadlines.pop(self, None)
            else:
                httpd.deadlines[self] = time.monotonic() + seconds

    def _send(self, status, body=b"", content_type="application/json", extra=None):
        """The whole answer in one write."""
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n")
        if body and self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def _error(self, status, message, extra=None):
        self._send(status, json.dumps({"error": message}).encode(), extra=extra)

    def _guard(self):
        if not host_is_loopback(self.headers.get("Host")):
            self._error(403, "Host %r is not loopback; refused (DNS rebinding protection)" % self.headers.get("Host"))
            return False
        if self.headers.get("Origin") is not None:
            self._error(403, "requests from web pages (with an Origin header) are refused")
            return False
        # an <img> or <script> GET carries no Origin, but a browser says where it comes from
        site = (self.headers.get("Sec-Fetch-Site") or "").strip().lower()
        mode = (self.headers.get("Sec-Fetch-Mode") or "").strip().lower()
        if site in ("cross-site", "same-site") or mode == "no-cors":
            self._error(403, "requests from web pages (Sec-Fetch-Site: %s, Sec-Fetch-Mode: %s) are refused"
                        % (site or "-", mode or "-"))
            return False
        if self.peer_uid is None and not self.door.token_ok(self.headers.get(TOKEN_HEADER)):
            # no way to know who connected (not Linux): our clients send the runtime file's token
            self._error(403, "send the %s header (the token in the server's runtime file)" % TOKEN_HEADER)
            return False
        return True

    def _path(self):
        return self.path.split("?", 1)[0]

    def do_GET(self):
        self._deadline(None)
        if not self._guard():
            return
        path = self._path()
        if path == "/events":
            return self._events()
        if path == "/api/preview":
            return self._preview()
        if path in ("/api/history", "/api/history/preview"):
            return self._history(path)
        status, body, ctype, extra = route_get(self.door, self.server, path)
        self._send(status, body, ctype, extra)

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        if not self._guard():
            return
        path = self._path()
        if path in GET_ROUTES:
            return self._error(405, "use GET for %s" % path, {"Allow": "GET"})
        if path not in ROUTES:
            return self._error(404, "no such endpoint: %s" % path)
        try:
            body = read_json_body(self.headers, self.rfile)
        except BodyError as e:
            self.close_connection = True
            return self._error(e.status, e.message)
        except ApiError as e:
            return self._error(e.status, e.message)
        finally:
            self._deadline(None)
        self._send(*route_post(self.door, path, body))

    def do_PUT(self):
        self._other()

    do_DELETE = do_PATCH = do_PUT

    def _other(self):
        if not self._guard():
            return
        allow = "POST" if self._path() in ROUTES else "GET"
        self._error(405, "method %s not allowed" % self.command, {"Allow": allow})

    def _preview(self):
        """GET /api/preview?thread=ID[&lines=N]: the last lines of the thread's pane, as text
        without escapes. Read on request only: a client asks while it shows the preview."""
        from urllib.parse import parse_qs
        query = parse_qs(self.path.partition("?")[2])
        lines = as_number((query.get("lines") or ["20"])[0], 20, int, text=True)
        if not 1 <= lines <= 200:
            return self._error(400, "'lines' must be 1..200")
        if query.get("host"):  # a thread on another machine: read by that host's server (not pushed)
            try:
                fetch = self.door.on_loop(self.door.api.api_host_preview, query["host"][0],
                                          (query.get("thread") or [""])[0], lines)
                status, doc = fetch()
            except ApiError as e:
                return self._error(e.status, e.message)
            except TimeoutError:
                return self._error(503, "server busy")
            return self._send(status, json.dumps(doc).encode())
        if (query.get("follow") or ["0"])[0] == "1":
            return self._preview_stream((query.get("thread") or [""])[0], lines)
        try:
            info = self.door.on_loop(self.door.api.api_preview, (query.get("thread") or [""])[0])
            check = info.pop("_check")
            # only the agent's own screen: not the shell after it exited, not a pane a forged
            # registry named (looked at before and after the capture)
            reason = preview_problem(*check) if check[2] else "the pane's process is not known"
            screen = self.door.capture(info["pane"]) if not reason else None
            reason = reason or preview_problem(*check)
            if reason:
                raise ApiError(409, "no preview: %s" % reason)
        except ApiError as e:
            return self._error(e.status, e.message)
        except TmuxError as e:
            return self._error(409, "tmux: %s" % e)
        except TimeoutError:
            return self._error(503, "server busy")
        info["lines"] = thread_preview(screen, lines)
        spec = AGENT_SPECS.get(info["agent"])
        found = spec.prompt_reader(screen) if spec is not None and spec.prompt_reader else None
        info["prompt"] = found[0] if found else None  # what its screen asks: "permission", "input" …
        return self._send(200, json.dumps(info).encode())

    def _history(self, path):
        """GET /api/history?dir=&pane=&q=&agent=&since=&limit=&offset= (the index, searched here, off
        the loop) and /api/history/preview?thread=AGENT:ID&n=N (the conversation's last messages)."""
        from urllib.parse import parse_qs
        if self.door.history is None:
            return self._error(503, "the conversation history is off")
        query = parse_qs(self.path.partition("?")[2], keep_blank_values=True)
        try:
            doc = self.door.history(path, query)
        except ApiError as e:
            return self._error(e.status, e.message)
        return self._send(200, encode_json(doc))

    def _preview_stream(self, thread, lines):
        """GET /api/preview?thread=ID&lines=N&follow=1: the preview as `event: preview` (the same
        JSON as without follow), sent when the pane's lines change (PreviewFeed: read when tmux says
        the pane printed); a comment as keep-alive. Ends when the client goes or the server stops."""
        import select
        import threading
        httpd = self.server
        door = self.door
        try:
            info = door.on_loop(door.api.api_preview, thread)
        except ApiError as e:
            return self._error(e.status, e.message)
        except TimeoutError:
            return self._error(503, "server busy")
        with httpd.lock:
            full = httpd.streams >= MAX_SSE_CLIENTS
            if not full:
                httpd.streams += 1
        if full:
            self.close_connection = True
            return self._error(503, "too many streams (%d)" % MAX_SSE_CLIENTS, {"Retry-After": "5"})
        check = info.pop("_check")
        reason = preview_problem(*check) if check[2] else "the pane's process is not known"
        if reason:  # only the agent's own screen, as without follow
            return self._error(409, "no preview: %s" % reason)
        spec = AGENT_SPECS.get(info["agent"])
        lock = threading.Lock()
        latest = {"doc": None, "n": 0}
        wake_r, wake_w = os.pipe()  # a new doc wakes the wait below, as does the client going away
        os.set_blocking(wake_w, False)

        def preview_doc(screen):  # on the loop
            problem = preview_problem(*check)  # looked at for every screen pushed: the agent may have exited
            if problem:
                return dict({k: v for k, v in info.items() if k != "status"}, lines=[], prompt=None,
                            error="no preview: %s" % problem)
            found = spec.prompt_reader(screen) if spec is not None and spec.prompt_reader else None
            return dict({k: v for k, v in info.items() if k != "status"},  # (a status here would go stale)
                        lines=thread_preview(screen, lines), prompt=found[0] if found else None)

        def send(doc):  # on the loop
            with lock:
                latest["doc"], latest["n"] = doc, latest["n"] + 1
            try:
                os.write(wake_w, b"x")
            except OSError:
                pass  # (the pipe is full: a wake-up is pending already)
        token = None
        try:
            token = door.on_loop(door.previews.subscribe, info["pane"], preview_doc, send)
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            sent = 0
            while door.snapshots.published is not None:
                ready = select.select([wake_r, self.connection], [], [], SSE_KEEPALIVE)[0]
                if self.connection in ready and not self.connection.recv(4096):
                    return  # the client went away: stop reading its pane now, not at the next write
                if wake_r in ready:
                    os.read(wake_r, 4096)
                with lock:
                    doc, n = latest["doc"], latest["n"]
                if n == sent:
                    if not ready:
                        self.wfile.write(b": keepalive\n\n")
                    continue
                sent = n
                self.wfile.write(b"event: preview\ndata: " + json.dumps(doc).encode() + b"\n\n")
        except (OSError, TimeoutError, ValueError):
            pass  # the client went away (or the server is stopping)
        finally:
            with httpd.lock:
                httpd.streams -= 1
            if token is not None:
                try:
                    door.on_loop(door.previews.unsubscribe, token)
                except Exception:  # a stopped loop: the feed goes with it
                    pass
            for fd in (wake_r, wake_w):
                os.close(fd)
    def _events(self):
        httpd = self.server
        with httpd.lock:
            full = httpd.streams >= MAX_SSE_CLIENTS
            if not full:
                httpd.streams += 1
        if full:
            self.close_connection = True
            return self._error(503, "too many /events clients (%d)" % MAX_SSE_CLIENTS, {"Retry-After": "5"})
        try:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Connection", "close")
            self.send_header("X-Accel-Buffering", "no")
            self.end_headers()
            stream_state(self.wfile.write, self.door.snapshots)
        finally:
            with httpd.lock:
                httpd.streams -= 1


_HTTP_CLASSES = []


def http_classes():
    """(listener class, request handler class): ours over http.server's, made on first use."""
    if not _HTTP_CLASSES:
        import http.server
        _HTTP_CLASSES.extend((type("ApiHTTPServer", (ApiListener, http.server.ThreadingHTTPServer), {}),
                              type("ApiRequestHandler", (ApiRequests, http.server.BaseHTTPRequestHandler), {})))
    return tuple(_HTTP_CLASSES)


def make_http_server(door, address):
    """The listening server for a door (an HttpDoor)."""
    listener, handler = http_classes()
    return listener(address, handler, door)


##############################################################################
# Notifications
##############################################################################

STATUS_WORDS = {"done": "finished", "error": "failed", "waiting": "needs you", "retry": "is retrying",
                "interrupted": "was interrupted"}
URGENCY = {"error": "critical", "waiting": "critical", "done": "normal", "interrupted": "normal", "retry": "low"}
COALESCE_WINDOW = 2.0


def should_notify(thread, old_status, viewed, muted, notify_on):
    """Pure: does this status change deserve a notification?"""
    if thread.subagent or muted or viewed or thread.status == old_status:
        return False
    if thread.status not in notify_on:
        return False
    if thread.status == "retry" and (old_status == "retry" or (thread.attempt or 1) > 1):
        return False  # only the first retry
    return True


def notification_text(events):
    """One notification for one or several events: (title, body, worst status). Pure."""
    if len(events) == 1:
        e = events[0]
        title = "%s %s" % (e["agent"], STATUS_WORDS.get(e["status"], e["status"]))
        body = " · ".join(x for x in (e.get("session"), e.get("title"), e.get("detail")) if x)
        return title, body, e["status"]
    order = ("error", "waiting", "interrupted", "retry", "done")
    worst = min((e["status"] for e in events), key=lambda s: order.index(s) if s in order else 9)
    counts = {}
    for e in events:
        counts[e["status"]] = counts.get(e["status"], 0) + 1
    parts = []
    for status in order:
        if counts.get(status):
            n = counts[status]
            parts.append("%d agent%s %s" % (n, "" if n == 1 else "s", STATUS_WORDS[status]))
    body = ", ".join(sorted({e["session"] or "?" for e in events}))
    return ", ".join(parts), body, worst


class Coalescer(object):
    """Quiet by design: the first event goes out at once; events within `window` seconds after it
    are held and go out together as one notification when the window closes. Clock injected."""

    def __init__(self, window=COALESCE_WINDOW):
        self.window = window
        self.opened = None
        self.held = []

    def add(self, event, now):
        """-> events to send now ([] while a window is open)."""
        if self.opened is not None and now - self.opened < self.window:
            self.held.append(event)
            return []
        self.opened = now
        self.held = []
        return [event]

    def flush(self, now):
        """Call when the window may have closed -> held events to send together ([] if none)."""
        if self.opened is None or now - self.opened < self.window:
            return []
        held, self.held = self.held, []
        self.opened = now if held else None  # a flush opens a new quiet window
        return held

    def next_due(self):
        return None if self.opened is None else self.opened + self.window


def osc_notification(title, body):
    """OSC 777 (rxvt, kitty, WezTerm, foot, Ghostty) and OSC 9 (iTerm2, WezTerm, kitty) sequences."""
    def clean(s):  # no control character (it would end the sequence early), no ';' (a field separator)
        return CONTROL_CHARS.sub("", s).replace(";", "")[:200]
    return ("\033]777;notify;%s;%s\a\033]9;%s: %s\a" % (clean(title), clean(body), clean(title), clean(body))).encode()


def applescript_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NotifierHost(Record):
    """What the notifier may ask of the server (each a function)."""

    FIELDS = (
        ("ui", None),  # () -> the preferences (notify, notifyOn, muted)
        ("clients", None),  # () -> tmux's clients (terminal ones get OSC sequences, tmux messages)
        ("is_viewed", None),  # thread -> a client looks at its pane
        ("call_later", None),  # (delay, fn): the event loop's timer
        ("tmux_argv", None),  # (*args) -> the argv of a tmux command (the gateway's)
        ("pane_tty", None),  # pane id -> its terminal, or None (the bell)
    )


class Notifier(object):
    """Sends notifications through the enabled channels without ever blocking the event loop:
    commands are started and reaped later (killed after a timeout); a failing channel is logged
    once and skipped while the others go on. `host`: a NotifierHost."""

    def __init__(self, host, clock=time.monotonic, which=None, platform=None, window=COALESCE_WINDOW):
        import shutil
        self.host = host
        self.clock = clock
        self.which = which or shutil.which
        self.platform = platform or sys.platform
        self.coalescer = Coalescer(window)
        self.running = []  # (Popen, started)
        self.failed = set()
        self.flush_scheduled = False
        self.sent = []  # (monotonic time, channel, title, body) of the last sends, for tests and status

    def thread_changed(self, thread, old_status):
        ui = self.host.ui()
        if not should_notify(thread, old_status, self.host.is_viewed(thread),
                             thread.session in ui["muted"], ui["notifyOn"]):
            return
        event = {"agent": thread.agent, "status": thread.status, "session": thread.session,
                 "title": thread.title, "detail": thread.detail, "pane": thread.pane}
        now = self.clock()
        ready = self.coalescer.add(event, now)
        if ready:
            self._send_events(ready)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.host.call_later(max(0.0, self.coalescer.next_due() - now), self._flush)

    def _flush(self):
        self.flush_scheduled = False
        try:
            held = self.coalescer.flush(self.clock())
            if held:
                self._send_events(held)
        finally:  # a failure is logged by the loop; events held for later still go out
            due = self.coalescer.next_due()
            if due is not None:
                self.flush_scheduled = True
                self.host.call_later(max(0.0, due - self.clock()), self._flush)

    def _send_events(self, events):
        title, body, status = notification_text(events)
        panes = [e["pane"] for e in events if e.get("pane")]
        self.send_all(title, body, status, panes)

    def send(self, session, message, tone):
        """POST /notify and `opensessions notify`: the same channels, at once."""
        status = {"error": "error", "warn": "waiting"}.get(tone, "done")
        self.send_all("opensessions" + (": " + session if session else ""), message, status, [])

    def send_all(self, title, body, status, panes):
        channels = self.host.ui()["notify"]
        for channel in channels:
            try:
                getattr(self, "_" + channel)(title, body, status, panes)
            except Exception as e:  # one failing channel never stops the others
                self._failed(channel, e)
        self._reap()

    def _failed(self, channel, error):
        if channel not in self.failed:
            self.failed.add(channel)
            log("notification channel %s failed (%s); skipping it when it fails again" % (channel, error))

    def _spawn(self, channel, argv, title, body):
        import subprocess
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self.running.append((proc, self.clock()))
        self.sent.append((self.clock(), channel, title, body))
        del self.sent[:-50]
        self.host.call_later(5.0, self._reap)

    def _reap(self):
        keep = []
        for proc, started in self.running:
            if proc.poll() is None:
                if self.clock() - started > 5.0:
                    proc.kill()
                    proc.poll()
                else:
                    keep.append((proc, started))
        self.running = keep

    def _tmux(self, title, body, status, panes):
        text = "%s: %s" % (title, body) if body else title
        clients = [c for c in self.host.clients() if not c["control"]]
        if not clients:
            return
        cmds = []
        for c in clients:
            if cmds:
                cmds.append(";")
            # for the user's own display-time: tmux 3.3a holds back the client's pane redraws while
            # a message shows, so a long fixed duration froze the screen for 5 s
            cmds += ["display-message", "-c", c["name"], tmux_literal(text)]
        self._spawn("tmux", self.host.tmux_argv(*cmds), title, body)

    def _desktop(self, title, body, status, panes):
        if self.platform == "darwin":
            exe = self.which("osascript")
            if not exe:
                raise OSError("osascript not found")
            script = "display notification %s with title %s" % (applescript_string(body), applescript_string(title))
            self._spawn("desktop", [exe, "-e", script], title, body)
            return
        exe = self.which("notify-send")
        if not exe:
            raise OSError("notify-send not found on PATH")
        self._spawn("desktop", [exe, "-a", "opensessions", "-u", URGENCY.get(status, "normal"), title, body],
                    title, body)

    def _terminal(self, title, body, status, panes):
        data = osc_notification(title, body)
        for c in self.host.clients():
            if c["control"] or not c.get("tty"):
                continue
            fd = os.open(c["tty"], os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        self.sent.append((self.clock(), "terminal", title, body))

    def _bell(self, title, body, status, panes):
        for pane in panes:
            tty = self.host.pane_tty(pane)
            if tty:
                fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
                try:
                    os.write(fd, b"\a")
                finally:
                    os.close(fd)
        self.sent.append((self.clock(), "bell", title, body))


_PLAIN_ID_RE = LazyPattern(r"^[A-Za-z0-9_.-]{1,128}$")


def tmux_safe_thread_id(agent, thread_id):
    """A thread id may go into a tmux option or message: an agent's real id shape, or (an id that
    came through the API for another agent or a test) plain letters, digits, '_', '.', '-' only.
    Never '#' (a '#[fg=…]' would style the status line) nor ';' nor a control character."""
    return valid_thread_id(agent, thread_id) or bool(isinstance(thread_id, str) and _PLAIN_ID_RE.match(thread_id))


def status_summary(state, charset="unicode"):
    """The status-line options from a /state document: {option: value}. Pure.

    @opensessions-status like '⠋2 ◉1 ●3' (running, waiting, unseen), the counts, and per window
    @opensessions-agent (the glyph of what most needs you there) and @agent_session (agent:id)."""
    g = GLYPHS[charset]
    running = waiting = unseen = errors = 0
    windows = {}
    for s in state["sessions"]:
        # a host's window and pane ids are its own: no local window option from them
        pane_window = {} if s.get("host") else {p["id"]: w["id"] for w in s["windows"] for p in w["panes"]}
        for t in s["threads"]:
            if s.get("hidden") or s.get("stale"):  # count exactly what the sidebar shows: a hidden session
                continue  # is not; a host we cannot reach may have moved on
            if t["status"] in ACTIVE_STATUSES:
                running += 1
            if t["status"] == "waiting":
                waiting += 1
            if t["status"] == "error":
                errors += 1
            if t.get("unseen"):
                unseen += 1
            wid = pane_window.get(t.get("pane"))
            if wid and t.get("alive") and tmux_safe_thread_id(t["agent"], t["id"]):
                att = thread_attention(Thread(t["agent"], t["id"], status=t["status"], unseen=t.get("unseen")))
                prev = windows.get(wid)
                if prev is None or ATTENTION_ORDER.index(att) < ATTENTION_ORDER.index(prev[0]):
                    windows[wid] = (att, "%s:%s" % (t["agent"], t["id"]))
    parts = []
    for glyph, n in ((SPINNER[charset][0], running), (g["waiting"], waiting), (g["error"], errors),
                     (g["unseen"], unseen)):
        if n:
            parts.append("%s%d" % (glyph, n))
    glyph_of = {"running": SPINNER[charset][0], "retry": g["retry"], "waiting": g["waiting"], "error": g["error"],
                "interrupted": g["interrupted"], "done-unseen": g["done-unseen"], "done": g["done"], "idle": g["idle"]}
    return {
        "global": {"@opensessions-status": " ".join(parts), "@opensessions-waiting": str(waiting),
                   "@opensessions-unseen": str(unseen), "@opensessions-running": str(running)},
        "windows": {wid: {"@opensessions-agent": glyph_of.get(att, ""), "@agent_session": link}
                    for wid, (att, link) in windows.items()},
    }


class TmuxOptions(object):
    """Keeps the status-line and live-link options current: only changed values are written, in
    one tmux call; tmux evaluates #{@opensessions-status} itself (no process per status refresh)."""

    def __init__(self, run):
        self.run = run  # the tmux gateway's Tmux.run
        self.written = {"global": {}, "windows": {}}

    def update(self, state):
        want = status_summary(state)
        cmds = []

        def add(*args):
            if cmds:
                cmds.append(";")
            cmds.extend(args)
        for name, value in want["global"].items():
            if self.written["global"].get(name) != value:
                add("set-option", "-gq", name, value)
        live = {w["id"] for s in state["sessions"] for w in s["windows"]}
        for wid, opts in want["windows"].items():
            for name, value in opts.items():
                if self.written["windows"].get(wid, {}).get(name) != value:
                    add("set-option", "-wq", "-t", wid, name, value)
        for wid, opts in self.written["windows"].items():
            if wid not in want["windows"] and wid in live:
                for name in opts:
                    add("set-option", "-wqu", "-t", wid, name)
        if not cmds:
            return
        try:
            self.run(*cmds)
        except TmuxError as e:
            log("cannot set status options: %s" % e)
            return
        self.written = {"global": dict(want["global"]),
                        "windows": {w: dict(o) for w, o in want["windows"].items()}}


def attention_queue(state):
    """Threads needing the user, in the order `next` visits them: waiting, then error, then unseen
    finished or interrupted; oldest first within each. Pure."""
    rank = {"waiting": 0, "error": 1, "interrupted": 2, "done": 2}
    out = []
    for s in state["sessions"]:
        if s.get("hidden") or s.get("stale"):
            continue
        for t in s["threads"]:
            if t["status"] in ("waiting", "error") or (t.get("unseen") and t["status"] in rank):
                out.append((rank[t["status"]], t.get("updatedAt") or 0, s["name"], t))
    out.sort(key=lambda x: (x[0], x[1]))
    return [(name, t) for _, _, name, t in out]


##############################################################################
# Remote hosts: agents on other machines, over the user's own ssh
##############################################################################

# One long-lived `ssh` per host (the user's own binary and ~/.ssh/config, BatchMode, a ControlMaster
# socket of ours that extra commands reuse, no forwards) runs one fixed bootstrap on the host. The
# bootstrap runs our program from the host's cache dir, after receiving it over the same connection
# when it is missing or another build (sha256), and execs `opensessions relay`. The relay follows the
# host's own opensessions server (starting it under the host's default tmux server) and writes each
# /events snapshot as one line of JSON on stdout; it reads a fixed set of requests (reply, preview,
# ui) from stdin and answers them by calling that server's HTTP API, which applies its own checks.
# Everything a host sends is hostile input: frames are capped in size, and every snapshot is rebuilt
# from validated fields (clean_remote_state) before it reaches /state.
#
# Frames, host -> local:  {"t": "hello", "proto", "version", "digest", "python", "tmux"}
#   {"t": "need"} (the bootstrap asks for the program: local sends "<size>\n" + the .pyz bytes)
#   {"t": "installed"}  {"t": "fatal", "reason"}  {"t": "down", "reason"}  {"t": "ping"}
#   {"t": "state", "server": {"pid", "started", "version", "digest"}, "state": <the host's /state>}
#   {"t": "res", "id", "status", "body"}
# Frames, local -> host:  {"t": "req", "id", "op": "reply" | "preview" | "ui", "body": {...}}

RELAY_PROTOCOL = 1
REMOTE_MAX_FRAME = 8 * 1024 * 1024  # a host's /state: 500 sessions x 50 threads fit well below this
REMOTE_MAX_REQUEST = 256 * 1024
REMOTE_OPS = ("reply", "preview", "ui")
REMOTE_BACKOFF_MIN, REMOTE_BACKOFF_MAX = 1.0, 30.0
REMOTE_ALIVE = 5.0  # relay heartbeat and ssh ServerAliveInterval; 3 of them silent: the host is gone
REMOTE_HELLO_WAIT = 30.0  # from ssh's start to the relay's hello (connect, python, shipping the program)
REMOTE_MIN_TMUX = (3, 2)
REMOTE_MAX_SESSIONS = 500
REMOTE_MAX_WINDOWS = 200
REMOTE_MAX_PANES = 64
REMOTE_MAX_THREADS = 2000
_SESSION_ID_RE = LazyPattern(r"^\$\d{1,9}$")
_WINDOW_ID_RE = LazyPattern(r"^@\d{1,9}$")
_PANE_ID_RE = LazyPattern(r"^%\d{1,9}$")

# The bootstrap, run by the host's python3 with the program's sha256 and the heartbeat as arguments.
# It is sent base64-encoded inside a fixed command line (remote_command), so no shell of any kind
# (sh, bash, zsh, fish, csh) reads a quote or a '$' of it.
BOOTSTRAP = r'''
import hashlib, json, os, sys
def say(**frame):
    os.write(1, (json.dumps(frame) + "\n").encode())
digest, alive = sys.argv[1], sys.argv[2]
if sys.version_info < (3, 9):
    say(t="fatal", reason="python3 on the host is %d.%d; opensessions needs Python 3.9 or newer there"
        % tuple(sys.version_info[:2]))
    sys.exit(0)
home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                    "opensessions")
path = os.path.join(home, "opensessions-%s.pyz" % digest[:16])
def good():
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest() == digest
    except OSError:
        return False
if not good():
    say(t="need")
    head = b""
    while not head.endswith(b"\n"):
        c = os.read(0, 1)
        if not c or len(head) > 20:
            sys.exit(3)
        head += c
    left, parts = int(head), []
    while left > 0:
        c = os.read(0, min(left, 65536))
        if not c:
            sys.exit(3)
        parts.append(c)
        left -= len(c)
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != digest:
        say(t="fatal", reason="the program sent to the host failed its sha256 check")
        sys.exit(0)
    try:
        os.makedirs(home, mode=0o700, exist_ok=True)
        if os.lstat(home).st_uid != os.getuid():
            raise OSError("%s is not owned by this user" % home)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        say(t="fatal", reason="cannot write %s on the host: %s" % (path, e))
        sys.exit(0)
    say(t="installed", bytes=len(data))
os.execv(sys.executable, [sys.executable, "-S", path, "relay", "--alive", alive])
'''


def remote_command(digest, alive=REMOTE_ALIVE):
    """The one command line ssh runs on a host: fixed but for our own digest and heartbeat, both
    quoted. Pure."""
    import base64
    import shlex
    code = base64.b64encode(BOOTSTRAP.encode("ascii")).decode("ascii")
    return "python3 -c 'import base64;exec(base64.b64decode(\"%s\"))' %s %s" % (
        code, shlex.quote(digest), shlex.quote("%g" % alive))


def ssh_control_path(tmux_socket, host, environ=None):
    """Our ControlMaster socket for a host (one per local tmux server and host): the server's ssh
    is the master, and `ssh-attach` windows reuse its connection. Unix socket paths are short:
    past ~100 characters it goes to /tmp/opensessions-ssh-<uid>."""
    name = "%s-%s.sock" % (socket_key(tmux_socket or ""), socket_key(host)[:10])
    base = os.path.join(runtime_dir(environ), "ssh")
    if len(base) + len(name) > 100:
        base = "/tmp/opensessions-ssh-%d" % os.getuid()
    return os.path.join(base, name)


def ssh_options(control_path, alive=REMOTE_ALIVE, master=True):
    """ssh -o options of the server's connection (master) or of a command reusing it. The server
    never prompts (BatchMode), never accepts a new or changed host key (StrictHostKeyChecking: a
    host is accepted once with a plain `ssh HOST`), and opens no forwards. Pure."""
    opts = ["ControlPath=%s" % control_path.replace("%", "%%"), "ClearAllForwardings=yes"]
    if master:
        opts += ["BatchMode=yes", "ConnectTimeout=%d" % max(1, round(2 * alive)),
                 "ServerAliveInterval=%d" % max(1, round(alive)), "ServerAliveCountMax=3",
                 "StrictHostKeyChecking=yes", "ControlMaster=auto", "ControlPersist=no", "RequestTTY=no",
                 "ForwardX11=no", "PermitLocalCommand=no", "LogLevel=INFO"]  # ssh says why it ended
    else:
        opts += ["ControlMaster=no"]
    out = []
    for o in opts:
        out += ["-o", o]
    return out


def ssh_failure(returncode, stderr, got_hello):
    """Why an ssh to a host ended, in a line for the sidebar (from ssh's own messages). Pure."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else (stderr or "")
    lines = [clean_text(l).strip() for l in text.splitlines() if l.strip()]
    said = [l for l in lines if not l.startswith(("@@@", "Warning: Permanently added", "Pseudo-terminal"))]
    last = said[-1][:200] if said else ""
    low = text.lower()
    if "remote host identification has changed" in low or "host key for" in low and "has changed" in low:
        return "its host key CHANGED; refused (check it, then fix ~/.ssh/known_hosts)"
    if "host key verification failed" in low or "no matching host key" in low:
        return "host key not known; refused (connect once with `ssh HOST` to check and accept it)"
    if returncode == 127 or "python3: not found" in low or "python3: command not found" in low \
            or "unknown command: python3" in low or "command not found: python3" in low:
        return "python3 is not on PATH there (opensessions needs Python 3.9+ and tmux on the host)"
    if "permission denied" in low:
        return "login refused: %s (BatchMode: no password prompts; use a key or ssh-agent)" % (last or "permission denied")
    if "could not resolve hostname" in low:
        return "unknown host name"
    if "connection refused" in low:
        return "connection refused"
    if "timed out" in low:
        return "connection timed out"
    if "not responding" in low:
        return "the host stopped answering (ssh keepalive)"
    if "no route to host" in low or "network is unreachable" in low:
        return "no route to host"
    if last:
        return last
    if got_hello:
        return "connection closed"
    return "ssh exited with status %s" % returncode


def next_backoff(delay):
    """Seconds before the next try after a failure: 1, 2, 4, ... capped at 30. Pure."""
    return REMOTE_BACKOFF_MIN if not delay else min(REMOTE_BACKOFF_MAX, delay * 2)


def slept(mono_delta, wall_delta, slack=10.0):
    """The machine slept: the wall clock moved on much more than the monotonic one (which stands
    still in suspend). Pure."""
    return wall_delta - mono_delta > slack


class FrameReader(object):
    """Newline-delimited JSON objects from a byte stream, each at most `limit` bytes: a longer line
    is dropped as it comes (never held whole); a line that is not a JSON object is counted."""

    def __init__(self, limit=REMOTE_MAX_FRAME):
        self.limit = limit
        self.buf = b""
        self.skipping = False
        self.too_long = 0
        self.bad = 0
        self.first_bad = None

    def feed(self, data):
        """-> [frame dict, ...] complete in data (and what came before it)."""
        out = []
        start = len(self.buf)  # the bytes before have no newline: look only at the new ones
        self.buf += data
        while True:
            nl = self.buf.find(b"\n", start)
            start = 0
            if nl < 0:
                if len(self.buf) > self.limit:
                    if not self.skipping:
                        self.too_long += 1
                    self.skipping, self.buf = True, b""
                return out
            line, self.buf = self.buf[:nl], self.buf[nl + 1:]
            if self.skipping:
                self.skipping = False
                continue
            if len(line) > self.limit:
                self.too_long += 1
                continue
            frame = None
            try:
                frame = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                pass
            if isinstance(frame, dict) and isinstance(frame.get("t"), str):
                out.append(frame)
            elif line.strip():
                self.bad += 1
                if self.first_bad is None:
                    self.first_bad = clean_text(line[:120].decode("utf-8", "replace"))


def _r_text(value, limit):
    return clean_text(value[:limit]) if isinstance(value, str) else None


def _r_int(value, low=0, high=2 ** 53):
    """A whole number a host sent, in [low, high], else None (the one coercion: never a bool, text,
    NaN or inf)."""
    return as_number(value, None, int, low, high)


def _r_usage(u):
    if not isinstance(u, dict):
        return None
    out = {k: token_count(u.get(k)) for k in USAGE_KEYS}
    cost = as_number(u.get("cost"), None, float, 0, 1e9)
    out["cost"] = float(cost) if cost is not None else None
    out["contextPct"] = as_number(u.get("contextPct"), None, int, 0, 100)
    if u.get("partial") is True:
        out["partial"] = True
    return out


def _r_thread(t, host, session):
    """One thread of a host's /state, rebuilt from checked fields, or None."""
    if not isinstance(t, dict):
        return None
    agent, tid = t.get("agent"), t.get("id")
    if not isinstance(agent, str) or not _AGENT_NAME_RE.match(agent):
        return None
    if not isinstance(tid, str) or not 0 < len(tid) <= 200 or clean_text(tid) != tid:
        return None
    pane = t.get("pane") if isinstance(t.get("pane"), str) and _PANE_ID_RE.match(t["pane"]) else None
    return {"agent": agent, "id": tid, "title": _r_text(t.get("title"), 500) or "",
            "status": t.get("status") if t.get("status") in STATUSES else "idle",
            "detail": _r_text(t.get("detail"), MAX_LOG_MESSAGE), "attempt": _r_int(t.get("attempt"), 0, 10 ** 6),
            "cwd": _r_text(t.get("cwd"), 4096), "model": _r_text(t.get("model"), 200), "pane": pane,
            "session": session, "pid": _r_int(t.get("pid"), 1, 2 ** 31), "alive": t.get("alive") is True,
            "unseen": t.get("unseen") is True, "updatedAt": _r_int(t.get("updatedAt")) or 0,
            "link": t.get("link") if t.get("link") in ("pid", "api", "cwd") else None,
            "usage": _r_usage(t.get("usage")), "host": host}


def _r_pane(p):
    if not isinstance(p, dict) or not isinstance(p.get("id"), str) or not _PANE_ID_RE.match(p["id"]):
        return None
    return {"id": p["id"], "index": _r_int(p.get("index"), 0, 10 ** 6) or 0, "pid": _r_int(p.get("pid"), 1, 2 ** 31),
            "cwd": _r_text(p.get("cwd"), 4096) or "", "command": _r_text(p.get("command"), 200) or "",
            "title": _r_text(p.get("title"), 200) or "", "active": p.get("active") is True,
            "width": _r_int(p.get("width"), 0, 10000) or 0, "height": _r_int(p.get("height"), 0, 10000) or 0,
            "sidebar": p.get("sidebar") is True}


def _r_window(w):
    if not isinstance(w, dict) or not isinstance(w.get("id"), str) or not _WINDOW_ID_RE.match(w["id"]):
        return None
    panes = [p for p in (_r_pane(p) for p in (w.get("panes") if isinstance(w.get("panes"), list) else ())[:REMOTE_MAX_PANES]) if p]
    return {"id": w["id"], "index": _r_int(w.get("index"), 0, 10 ** 6) or 0, "name": _r_text(w.get("name"), 200) or "",
            "active": w.get("active") is True, "width": _r_int(w.get("width"), 0, 10000) or 0,
            "height": _r_int(w.get("height"), 0, 10000) or 0, "panes": panes}


def remote_session_name(name):
    """A host's session name as we show and key it: text on one line, ':' and '.' as tmux itself
    makes them ('_'; a real tmux name never holds them), at most 200 characters; None if empty."""
    if not isinstance(name, str):
        return None
    name = clean_text(name[:200]).replace(":", "_").replace(".", "_")
    return name if name.strip() else None


def _dict_state(threads):
    """A session's state from its /state threads, as session_state does for Thread objects."""
    best = None
    for t in threads:
        a = "done-unseen" if t["status"] == "done" and t["unseen"] else t["status"]
        if best is None or ATTENTION_ORDER.index(a) < ATTENTION_ORDER.index(best):
            best = a
    return best


def clean_remote_state(doc, host):
    """A host's /state document rebuilt from checked fields only (hostile input: names, paths and
    titles with '#(', ';' or control characters, wrong types, huge lists, NaN):
    -> {"sessions", "threads", "clients"}. Its sessions are named HOST:NAME (no local tmux session
    can have a ':'), carry "host" and "remoteName", and their threads carry "host". Pure."""
    doc = doc if isinstance(doc, dict) else {}
    sessions, seen, total = [], set(), 0
    for s in (doc.get("sessions") if isinstance(doc.get("sessions"), list) else ())[:REMOTE_MAX_SESSIONS]:
        if not isinstance(s, dict):
            continue
        name = remote_session_name(s.get("name"))
        if name is None or name in seen:
            continue
        seen.add(name)
        key = "%s:%s" % (host, name)
        windows = [w for w in (_r_window(w) for w in (s.get("windows") if isinstance(s.get("windows"), list)
                                                          else ())[:REMOTE_MAX_WINDOWS]) if w]
        threads = []
        for t in (s.get("threads") if isinstance(s.get("threads"), list) else ())[:MAX_SESSION_THREADS]:
            t = _r_thread(t, host, key)
            if t is not None and total < REMOTE_MAX_THREADS:
                threads.append(t)
                total += 1
        ports = [p for p in (s.get("ports") if isinstance(s.get("ports"), list) else ())[:64]
                 if _r_int(p, 1, 65535) is not None]
        meta = s.get("metadata") if isinstance(s.get("metadata"), dict) else {}
        sessions.append({
            "id": s["id"] if isinstance(s.get("id"), str) and _SESSION_ID_RE.match(s["id"]) else None,
            "name": key, "host": host, "remoteName": name, "created": _r_int(s.get("created")) or 0,
            "attached": _r_int(s.get("attached"), 0, 10 ** 6) or 0, "dir": _r_text(s.get("dir"), 4096),
            "branch": _r_text(s.get("branch"), 200), "dirty": s.get("dirty") if isinstance(s.get("dirty"), bool) else None,
            "ports": ports, "windows": windows, "state": _dict_state(threads),
            "unseen": any(t["unseen"] for t in threads), "threads": threads,
            "usage": _r_usage(s.get("usage")), "metadata": stored_metadata(key, meta)})
    orphans = []
    for t in (doc.get("threads") if isinstance(doc.get("threads"), list) else ())[:MAX_ORPHANS]:
        t = _r_thread(t, host, None)
        if t is not None:
            orphans.append(t)
    clients = []
    for c in (doc.get("clients") if isinstance(doc.get("clients"), list) else ())[:100]:
        if isinstance(c, dict):
            clients.append({"session": "%s:%s" % (host, remote_session_name(c.get("session")) or ""),
                            "window": c.get("window") if isinstance(c.get("window"), str)
                            and _WINDOW_ID_RE.match(c["window"]) else None})
    return {"sessions": sessions, "threads": orphans, "clients": clients}


def remote_thread_window(session, pane_id):
    """The id of the window holding pane_id in a (cleaned) session, or None. Pure."""
    for w in session.get("windows", ()):
        if any(p["id"] == pane_id for p in w.get("panes", ())):
            return w["id"]
    return None


def remote_attach_command(session, window=None, pane=None, utf8=False):
    """What `ssh -t HOST` runs to open a host's session: attach, then select the thread's window
    and pane, each word quoted for the host's shell (the name is the host's: hostile). utf8: this
    terminal is UTF-8 (ssh passes no locale unless configured to; tmux would draw '_'). Pure."""
    import shlex
    args = ["tmux"] + (["-u"] if utf8 else []) + ["attach-session", "-t", "=" + session]
    if window and _WINDOW_ID_RE.match(window):
        args += [";", "select-window", "-t", window]
    if pane and _PANE_ID_RE.match(pane):
        args += [";", "select-pane", "-t", pane]
    return " ".join(shlex.quote(a) for a in args)


def remote_select_command(window=None, pane=None):
    """Select a window and pane on a host's tmux (an attach window already shows its session)."""
    import shlex
    args = ["tmux"]
    if window and _WINDOW_ID_RE.match(window):
        args += ["select-window", "-t", window]
    if pane and _PANE_ID_RE.match(pane):
        args += ([";"] if len(args) > 1 else []) + ["select-pane", "-t", pane]
    return " ".join(shlex.quote(a) for a in args) if len(args) > 1 else None


def open_remote(tmux, me, host, session, window=None, pane=None, client=None, here=None, environ=None):
    """Show a host's session in a local window (Enter on a remote thread, `next`): the window that
    already attaches to it (our @opensessions-remote option names it), else a new window running
    `opensessions ssh-attach` (ssh -t HOST tmux attach ...). Nothing is a shell string: the
    window's command is an argv. me: our command as an argv; here: the local session to open it in."""
    import subprocess
    if not valid_host(host) or remote_session_name(session) != session:
        raise OpensessionsError("not a remote session: %r on %r" % (session, host))
    key = "%s:%s" % (host, session)
    target = ["-c", client] if client else []
    found = None
    for line in tmux.run("list-windows", "-a", "-F", "#{window_id}" + FS + "#{@opensessions-remote}").splitlines():
        wid, _, mark = line.partition(FS)
        if mark == key:
            found = wid
            break
    if found:
        tmux.run("switch-client", *(target + ["-t", found]))
        cmd = remote_select_command(window, pane)
        if cmd:  # over the server's connection (ControlMaster), in the background
            cp = ssh_control_path(tmux.socket_path, host, environ)
            subprocess.Popen(["ssh"] + ssh_options(cp, master=False) + ["-o", "BatchMode=yes", "--", host, cmd],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        return found
    argv = list(me) + ["ssh-attach", host, session]
    if window and _WINDOW_ID_RE.match(window):
        argv += ["--window", window]
    if pane and _PANE_ID_RE.match(pane):
        argv += ["--pane", pane]
    where = ["-t", "=%s:" % here] if here else []
    wid = tmux.run("new-window", "-P", "-F", "#{window_id}", *(where + ["-n", tmux_literal(key)] + argv)).strip()
    tmux.run("set-option", "-w", "-t", wid, "@opensessions-remote", key)
    if client:
        tmux.run("switch-client", "-c", client, "-t", wid)
    return wid


def program_pyz(path=None):
    """This program as a zipapp to ship to a host: the .pyz we run from, else one built in memory
    from our source (deterministic: the same source gives the same bytes, so a host keeps its copy)."""
    import io
    import zipfile
    path = path or program_path()
    if path.endswith(".pyz") and os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in (("__main__.py", b"import sys\nimport opensessions\nsys.exit(opensessions.main())\n"),
                           ("opensessions.py", program_source(path))):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return b"#!/usr/bin/env python3\n" + buf.getvalue()


def program_argv():
    """How a window we open runs this program: this interpreter with -S, this file (.pyz or .py)."""
    return [sys.executable or "python3", "-S", program_path()]


class RemoteHost(object):
    """One host followed over one ssh process, driven by the server's event loop: never blocks
    (non-blocking pipes, a writer callback for what the pipe cannot take yet), so a hung host
    slows nothing else. States: connecting, connected, unreachable (with reason and retry time)."""

    def __init__(self, name, hosts, source="ui.json"):
        self.name = name
        self.hosts = hosts
        self.loop = hosts.loop
        self.source = source
        self.state = "connecting"
        self.reason = None
        self.retry_at = None  # wall time (s) of the next try
        self.delay = 0.0
        self.last_event = None  # wall time (s) of the last snapshot
        self.connected_at = None
        self.hello = None
        self.server = None  # the host's opensessions server: {"pid", "started", "version", "digest"}
        self.note = None  # connected, but the host's server is not there (why)
        self.sessions, self.orphans, self.clients = [], [], []
        self.statuses = None  # {(agent, id): status} of the last snapshot (None: none yet)
        self.resync = True  # the next snapshot is a connection's first: always an event
        self.encoded = {}  # session name -> (flags, its JSON) for this snapshot (see RemoteHosts.encode)
        self.proc = None
        self.reader = FrameReader()
        self.stderr = b""
        self.out = b""
        self.writing = False
        self.spawned = None
        self.last_frame = None
        self.pending = {}  # request id -> box
        self.seq = 0
        self.retry_cancel = None
        self.closed = False
        self.shipped = None  # bytes of the program sent in this connection (None: the host had it)

    # -- the connection ----------------------------------------------------------------------
    def start(self):
        import subprocess
        self.retry_cancel = None
        if self.closed or self.proc is not None:
            return
        self.reader = FrameReader()
        self.stderr, self.out, self.shipped, self.hello, self.resync = b"", b"", None, None, True
        try:
            argv = self.hosts.ssh_argv(self.name)
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except (OSError, OpensessionsError) as e:
            self.proc = None
            return self._failed("cannot run ssh: %s" % (getattr(e, "strerror", None) or e))
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            os.set_blocking(f.fileno(), False)
        self.loop.add_reader(self.proc.stdout.fileno(), self._on_stdout)
        self.loop.add_reader(self.proc.stderr.fileno(), self._on_stderr)
        self.state, self.reason, self.retry_at = "connecting", None, None
        self.spawned = self.last_frame = self.loop.clock()
        self.hosts.changed()

    def close(self):
        self.closed = True
        if self.retry_cancel:
            self.retry_cancel()
        self._drop("host removed")

    def retry_now(self):
        """Try again at once (the machine woke up; the user asked)."""
        if self.proc is not None:
            self._drop(None)
        if self.retry_cancel:
            self.retry_cancel()
        self.delay = 0.0
        self.start()

    def check(self, now):
        """Called every heartbeat: a host that stopped answering is dropped and tried again."""
        if self.proc is None:
            return
        if self.hello is None and now - self.spawned > max(REMOTE_HELLO_WAIT, 4 * self.hosts.alive):
            self._gone("no answer from the host within %d s" % (now - self.spawned))
        elif self.hello is not None and now - self.last_frame > 3 * self.hosts.alive:
            self._gone("the host stopped answering (nothing for %d s)" % (now - self.last_frame))

    def _on_stdout(self):
        try:
            data = os.read(self.proc.stdout.fileno(), 1 << 20)  # at most 1 MB a turn: fair to the others
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return self._gone(None)
        self.last_frame = self.loop.clock()
        for frame in self.reader.feed(data):
            try:
                self._frame(frame)
            except (TypeError, ValueError, AttributeError, KeyError) as e:
                self.reader.bad += 1
                log("%s: a frame we cannot use (%s); skipped" % (self.name, e))
            if self.proc is None:
                return

    def _on_stderr(self):
        try:
            data = os.read(self.proc.stderr.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.proc.stderr.fileno())
            return
        self.stderr = (self.stderr + data)[-8192:]

    def _write(self, data):
        self.out += data
        self._flush()

    def _flush(self):
        if self.proc is None:
            return
        fd = self.proc.stdin.fileno()
        while self.out:
            try:
                n = os.write(fd, self.out[:1 << 16])
            except BlockingIOError:
                if not self.writing:
                    self.writing = True
                    self.loop.add_writer(fd, self._flush)
                return
            except OSError:  # the ssh is gone: its stdout ends too, and says why
                self.out = b""
                break
            self.out = self.out[n:]
        if self.writing:
            self.writing = False
            self.loop.remove_reader(fd)

    def _gone(self, reason):
        """The connection ended (reason None: ssh ended; find out why from ssh itself)."""
        proc = self.proc
        if proc is None:
            return
        code = proc.poll()
        if code is None and reason is None:
            # stdout closed first: ssh still says why on stderr and exits within a moment
            self._drop(None, keep_proc=True)
            self.loop.call_later(0.05, self._reap, proc, 0)
            return
        if code is None:
            self._drop(reason)
            return
        self._read_rest(proc)
        self._drop(reason or self._why(code))

    def _reap(self, proc, tries):
        code = proc.poll()
        if code is None and tries < 20:
            self.loop.call_later(0.05, self._reap, proc, tries + 1)
            return
        self._read_rest(proc)
        reason = self._why(code if code is not None else -1)
        said = [clean_text(l).strip() for l in self.stderr.decode("utf-8", "replace").splitlines() if l.strip()]
        if said and not self.closed:
            log("%s: ssh said: %s" % (self.name, " | ".join(said[-4:])[:600]))
        if code is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        self._failed(reason)

    def _read_rest(self, proc):
        try:
            while True:
                data = os.read(proc.stderr.fileno(), 65536)
                if not data:
                    break
                self.stderr = (self.stderr + data)[-8192:]
        except (OSError, ValueError):
            pass

    def _why(self, code):
        if self.hello is None and self.reader.first_bad and code == 0:
            return "the host did not start the relay (it printed: %s)" % self.reader.first_bad
        return ssh_failure(code, self.stderr, self.hello is not None)

    def _drop(self, reason, keep_proc=False):
        """Stop following: readers off, ssh ended (unless still saying why), requests failed."""
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        for fd in (proc.stdout, proc.stderr, proc.stdin):
            try:
                self.loop.remove_reader(fd.fileno())
            except (OSError, ValueError):
                pass
        self.writing = False
        for box in self.pending.values():
            box["error"] = "%s went away: %s" % (self.name, reason or "connection closed")
            box["done"].set()
        self.pending = {}
        if keep_proc:
            return
        if proc.poll() is None:
            proc.kill()
            self.loop.call_later(0.1, self._wait, proc)
        else:
            self._wait(proc)
        if reason is not None:
            self._failed(reason)

    def _wait(self, proc):
        if proc.poll() is None:
            self.loop.call_later(0.1, self._wait, proc)
            return
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass

    def _failed(self, reason):
        if self.closed:
            self.state, self.reason = "removed", reason
            return
        if self.state != "unreachable" or self.reason != reason:
            log("%s: unreachable: %s" % (self.name, reason))
        if self.state == "connected" and self.connected_at and self.hosts.wall() - self.connected_at >= REMOTE_BACKOFF_MAX:
            self.delay = 0.0  # it was up for a while: start again from 1 s (a host that flaps keeps backing off)
        self.state, self.reason = "unreachable", reason
        self.delay = next_backoff(self.delay)
        self.retry_at = self.hosts.wall() + self.delay
        self.retry_cancel = self.loop.call_later(self.delay, self.start)
        self.hosts.changed()

    # -- frames ------------------------------------------------------------------------------
    def _frame(self, f):
        kind = f["t"]
        if kind == "ping":
            return
        if kind == "need":
            pyz, digest = self.hosts.program()
            self.shipped = len(pyz)
            log("%s: the host has no copy of this opensessions (%s); sending it (%d KB)"
                % (self.name, digest[:12], len(pyz) // 1024))
            self._write(b"%d\n" % len(pyz) + pyz)
        elif kind == "installed":
            log("%s: opensessions installed in the host's cache dir" % self.name)
        elif kind == "hello":
            self.hello = {k: _r_text(f.get(k), 40) for k in ("version", "digest", "python", "tmux")}
            self.hello["proto"] = _r_int(f.get("proto"))
            self.state, self.reason, self.retry_at = "connected", None, None
            self.connected_at = self.hosts.wall()
            log("%s: connected (opensessions %s %s, python %s, tmux %s)%s" % (
                self.name, self.hello["version"], self.hello["digest"], self.hello["python"], self.hello["tmux"],
                "" if self.shipped is None else " after sending the program"))
            self.hosts.changed()
        elif kind == "fatal":
            self._drop(_r_text(f.get("reason"), 300) or "the host refused")
        elif kind == "down":
            note = _r_text(f.get("reason"), 300) or "the host's opensessions server is not running"
            if note != self.note:
                log("%s: %s" % (self.name, note))
            self.note = note
            self.hosts.changed()
        elif kind == "state":
            self._state(f)
        elif kind == "res":
            box = self.pending.pop(_r_int(f.get("id")), None)
            if box is not None:
                box["status"] = _r_int(f.get("status"), 100, 599) or 502
                body = f.get("body")
                box["body"] = clean_json(body, 8) if isinstance(body, dict) else {}
                box["done"].set()

    def _state(self, f):
        server = f.get("server") if isinstance(f.get("server"), dict) else {}
        server = {"pid": _r_int(server.get("pid"), 1, 2 ** 31), "started": _r_int(server.get("started")),
                  "version": _r_text(server.get("version"), 40), "digest": _r_text(server.get("digest"), 40)}
        if self.server and server["pid"] != self.server["pid"]:
            log("%s: the host's opensessions server was restarted (pid %s -> %s); resynced"
                % (self.name, self.server["pid"], server["pid"]))
        self.server = server
        doc = clean_remote_state(f.get("state"), self.name)
        old = self.statuses
        self.clients = doc["clients"]
        if not self.resync and self.note is None and (self.sessions, self.orphans) == (doc["sessions"], doc["threads"]):
            return  # nothing shown here changed (the host's own ui, clients, other hosts): no event
        self.sessions, self.orphans = doc["sessions"], doc["threads"]
        self.encoded = {}
        self.statuses = {}
        for s in self.sessions:
            for t in s["threads"]:
                self.statuses[(t["agent"], t["id"])] = t["status"]
                if old is not None and old.get((t["agent"], t["id"])) != t["status"]:
                    self.hosts.thread_changed(self, s, t, old.get((t["agent"], t["id"])))
        self.note, self.resync = None, False
        self.last_event = self.hosts.wall()
        self.hosts.changed()

    # -- requests (from HTTP threads) ----------------------------------------------------------
    def request(self, op, body, timeout):
        """Send one request to the host's relay and wait for its answer. -> (status, body dict).
        Raises ApiError (503 unreachable, 504 no answer in time)."""
        import threading
        box = {"done": threading.Event()}
        self.loop.call(self._submit, op, body, box)
        if not box["done"].wait(timeout):
            self.loop.post(self.pending.pop, box.get("id"), None)
            raise ApiError(504, "%s did not answer within %d s" % (self.name, timeout))
        if "error" in box:
            raise ApiError(503, box["error"])
        return box["status"], box["body"]

    def _submit(self, op, body, box):
        if self.proc is None or self.state != "connected":
            raise ApiError(503, "%s is %s%s" % (self.name, self.state, ": " + self.reason if self.reason else ""))
        self.seq += 1
        box["id"] = self.seq
        self.pending[self.seq] = box
        self._write(json.dumps({"t": "req", "id": self.seq, "op": op, "body": body}).encode() + b"\n")

    # -- /state --------------------------------------------------------------------------------
    def to_json(self):
        hello, server = self.hello or {}, self.server or {}
        return {"name": self.name, "state": self.state, "reason": self.reason,
                "retryAt": int(self.retry_at * 1000) if self.retry_at else None,
                "lastEvent": int(self.last_event * 1000) if self.last_event else None,
                "connectedAt": int(self.connected_at * 1000) if self.connected_at and self.state == "connected" else None,
                "remoteVersion": server.get("version") or hello.get("version"),
                "remoteDigest": server.get("digest") or hello.get("digest"),
                "relayDigest": hello.get("digest"), "python": hello.get("python"), "tmux": hello.get("tmux"),
                "serverPid": server.get("pid"), "serverStarted": server.get("started"),
                "note": self.note, "source": self.source, "sessions": len(self.sessions),
                "badFrames": self.reader.bad + self.reader.too_long}


class RemoteDoor(Record):
    """What the remote hosts may ask of the server: its loop, its store (the preferences' hosts,
    its clients; touched when a host changed), the tmux gateway (our windows attached to a host,
    @opensessions-hosts), publish, and the notifier's thread_changed."""

    FIELDS = (
        ("loop", None),  # the EventLoop every host is driven by
        ("store", None),  # the Store: ui, clients, touch() (hosts' sessions go in through Store.remote)
        ("tmux", None),  # the tmux gateway: run(), socket_path
        ("publish", None),  # () -> publish what changed
        ("notify", None),  # (thread, old status) -> the notifier's thread_changed, or None: no notifier
    )


class RemoteHosts(object):
    """Every configured host (@opensessions-hosts in tmux.conf, "hosts" in ui.json), on the server's
    loop: their sessions merged into /state (Store.remote), their status changes to the notifier,
    replies and previews to the right host. A tick every heartbeat checks liveness and notices a
    machine that slept (every host is tried again at once). `door`: a RemoteDoor."""

    def __init__(self, door, environ=None, wall=time.time):
        self.door = door
        self.loop = door.loop
        self.wall = wall
        self.environ = dict(os.environ if environ is None else environ)
        self.alive = env_number("OPENSESSIONS_REMOTE_ALIVE", REMOTE_ALIVE, self.environ, low=0.2)
        self.hosts = {}
        self.order = []
        self.tmux_hosts = []
        self._program = None
        self._tick_cancel = None
        self._clocks = None
        self._publish_posted = False

    # -- configuration ---------------------------------------------------------------------------
    def configured(self):
        """[(host, source)]: @opensessions-hosts first, then ui.json's "hosts"."""
        out = [(h, "tmux.conf") for h in self.tmux_hosts]
        names = set(self.tmux_hosts)
        out += [(h, "ui.json") for h in self.door.store.ui.get("hosts", []) if h not in names]
        return out[:MAX_HOSTS]

    def read_tmux_option(self):
        value = _tmux_option(self.door.tmux, "@opensessions-hosts")
        self.tmux_hosts, bad = parse_hosts(value)
        if bad:
            log("@opensessions-hosts: not a host for ssh, skipped: %s" % " ".join(repr(b) for b in bad))

    def start(self):
        self.sync()
        self._clocks = (self.loop.clock(), self.wall())
        self._tick_cancel = self.loop.call_later(self.alive, self._tick)

    def sync(self, reread=True):
        """Follow exactly the configured hosts: new ones connect, removed ones are closed."""
        if reread:
            self.read_tmux_option()
        wanted = self.configured()
        names = [h for h, _ in wanted]
        for name in [n for n in self.hosts if n not in names]:
            self.hosts.pop(name).close()
            log("%s: no longer followed" % name)
        for name, source in wanted:
            if name not in self.hosts:
                self.hosts[name] = RemoteHost(name, self, source)
                self.hosts[name].start()
            self.hosts[name].source = source
        self.order = names
        self.changed()

    def close(self):
        if self._tick_cancel:
            self._tick_cancel()
        for h in self.hosts.values():
            h.close()

    def _tick(self):
        try:
            mono, wall = self.loop.clock(), self.wall()
            self.check(mono, wall)
        finally:
            self._tick_cancel = self.loop.call_later(self.alive, self._tick)

    def check(self, mono, wall):
        """Liveness of every host, and sleep: when the wall clock jumped ahead of the monotonic one
        (a suspended laptop), every connection is probably dead: try each host again now."""
        last = self._clocks
        self._clocks = (mono, wall)
        if last is not None and slept(mono - last[0], wall - last[1]):
            log("the machine slept for about %d s; connecting to every host again" % (wall - last[1] - (mono - last[0])))
            for h in self.hosts.values():
                h.retry_now()
            return True
        for h in list(self.hosts.values()):
            h.check(mono)
        return False

    # -- what hosts need -------------------------------------------------------------------------
    def program(self):
        """(bytes, sha256) of the program we ship."""
        if self._program is None:
            import hashlib
            data = program_pyz()
            self._program = (data, hashlib.sha256(data).hexdigest())
        return self._program

    def ssh_argv(self, name):
        cp = ssh_control_path(self.door.tmux.socket_path, name, self.environ)
        ensure_private_dir(os.path.dirname(cp))
        try:
            os.unlink(cp)  # a master of ours that died: its socket would stop this one being the master
        except OSError:
            pass
        return ["ssh", "-T", "-e", "none"] + ssh_options(cp, self.alive) + [
            "--", name, remote_command(self.program()[1], self.alive)]

    def changed(self):
        self.door.store.touch()
        if not self._publish_posted:
            self._publish_posted = True
            self.loop.post(self._publish)

    def _publish(self):
        self._publish_posted = False
        self.door.publish()

    # -- notifications -------------------------------------------------------------------------
    def thread_changed(self, host, session, t, old_status):
        """A host's thread changed status: notify as for a local one, unless someone looks at it
        (a host's client shows its window, and a local client shows our window attached to it)."""
        if self.door.notify is None or old_status is None and t["status"] not in UNSEEN_STATUSES:
            return
        if self.viewed(host, session, t):
            return
        thread = Thread(t["agent"], t["id"], title=t["title"], status=t["status"], detail=t["detail"],
                        attempt=t["attempt"], session=session["name"], unseen=t["unseen"])
        self.door.notify(thread, old_status)

    def viewed(self, host, session, t):
        window = remote_thread_window(session, t["pane"]) if t["pane"] else None
        if not any(c["session"] == session["name"] and (window is None or c["window"] == window) for c in host.clients):
            return False
        mine = [c["window"] for c in self.door.store.clients if not c["control"]]
        if not mine:
            return False
        try:
            out = self.door.tmux.run("list-windows", "-a", "-F", "#{window_id}" + FS + "#{@opensessions-remote}")
        except TmuxError:
            return False
        attached = {line.partition(FS)[0] for line in out.splitlines() if line.partition(FS)[2] == session["name"]}
        return any(w in attached for w in mine)

    # -- /state ----------------------------------------------------------------------------------
    def merge(self, doc):
        """Add the hosts (top-level "hosts"), their sessions (after the local ones, host by host;
        stale while the host is not connected or its server is down) and their loose threads."""
        ui = self.door.store.ui
        hidden, muted = set(ui.get("hidden", ())), set(ui.get("muted", ()))
        hosts = []
        for name in self.order:
            h = self.hosts.get(name)
            if h is None:
                continue
            hosts.append(h.to_json())
            stale = h.state != "connected" or h.note is not None or h.server is None
            for s in h.sessions:
                doc["sessions"].append(dict(s, hidden=s["name"] in hidden, muted=s["name"] in muted, stale=stale))
            doc["threads"].extend(h.orphans)
        doc["hosts"] = hosts

    def encode(self, doc):
        """encode_json(doc), each host's session encoded once per snapshot (10 hosts x 50 threads are
        most of /state, and re-encoding them for every local change cost ~10 ms)."""
        parts = []
        for s in doc["sessions"]:
            h = self.hosts.get(s.get("host")) if s.get("host") else None
            if h is None:
                parts.append(encode_json(s))
                continue
            flags = (s.get("hidden"), s.get("muted"), s.get("stale"))
            cached = h.encoded.get(s["name"])
            if cached is None or cached[0] != flags:
                cached = h.encoded[s["name"]] = (flags, encode_json(s))
            parts.append(cached[1])
        rest = encode_json({k: v for k, v in doc.items() if k != "sessions"})
        return b'{"sessions":[' + b",".join(parts) + b"]" + (b"," + rest[1:] if rest != b"{}" else b"}")

    def health(self):
        """/health: how many hosts are followed and connected (read from an HTTP thread: counts only)."""
        states = [h.state for h in list(self.hosts.values())]
        return {"followed": len(states), "connected": states.count("connected")}

    def host(self, name):
        if not isinstance(name, str) or name not in self.hosts:
            raise ApiError(404, "no host %r (hosts: %s)" % (name, ", ".join(self.order) or "none"))
        return self.hosts[name]

    # -- requests (POST /api/reply, GET /api/preview, POST /ui with "host") ------------------------
    def reply(self, body):
        """On the loop: check the request as the HTTP API does; -> the function that sends it to the
        host and waits for the host's own answer (off the loop). The host checks the pane, the
        foreground process and the screen itself."""
        h = self.host(body.get("host"))
        action = body.get("action")
        if action not in REPLY_ACTIONS:
            raise ApiError(400, "'action' must be one of %s" % ", ".join(REPLY_ACTIONS))
        thread = body.get("thread")
        if not isinstance(thread, str) or not 0 < len(thread) <= 300 or clean_text(thread) != thread:
            raise ApiError(400, "'thread' (a thread id) is required")
        req = {"thread": thread, "action": action}
        if action == "text":
            try:
                req["text"] = check_reply_text(body.get("text"))
            except ReplyRefused as e:
                raise ApiError(400, str(e))

        def send():
            status, answer = h.request("reply", req, 20.0)
            what = "reply %s %s on %s" % (action, thread, h.name)
            if status >= 400:
                reason = answer.get("error") if isinstance(answer.get("error"), str) else "HTTP %d" % status
                log("%s refused by the host: %s" % (what, clean_text(reason)))
                raise ApiError(status, "%s: %s" % (h.name, clean_text(reason[:500])))
            log("%s sent" % what)
            if isinstance(answer, dict) and isinstance(answer.get("sent"), str):
                # what the host's server did, in its words (a host of an older version answers nothing)
                said = answer.get("answer")
                return {"thread": thread, "host": h.name, "action": action,
                        "sent": "%s (on %s)" % (clean_text(answer["sent"])[:500], h.name),
                        "answer": clean_text(said)[:500] if isinstance(said, str) else None,
                        "ms": as_number(answer.get("ms"), None, int, low=0)}
        return send

    def preview(self, body):
        """GET /api/preview with "host", on the loop: checked; -> the function that asks the host's
        server (off the loop) -> (status, body dict), its answer rebuilt from checked fields."""
        h = self.host(body.get("host"))
        thread, lines = body.get("thread"), body.get("lines")
        if not isinstance(thread, str) or not 0 < len(thread) <= 300 or clean_text(thread) != thread:
            raise ApiError(400, "'thread' is required")
        lines = _r_int(lines, 1, 200) or 20

        def fetch():
            status, answer = h.request("preview", {"thread": thread, "lines": lines}, 10.0)
            if status != 200:
                return status, {"error": "%s: %s" % (
                    h.name, clean_text(str(answer.get("error") or "HTTP %d" % status))[:500])}
            got = answer.get("lines") if isinstance(answer.get("lines"), list) else []
            prompt = answer.get("prompt")
            return 200, {"host": h.name, "thread": clean_text(str(answer.get("thread") or thread))[:200],
                         "agent": clean_text(str(answer.get("agent") or ""))[:40],
                         "pane": answer.get("pane") if isinstance(answer.get("pane"), str)
                         and _PANE_ID_RE.match(answer["pane"]) else None,
                         "lines": [clean_text(l[:1000]) for l in got[:200] if isinstance(l, str)],
                         "prompt": clean_text(prompt[:40]) if isinstance(prompt, str) else None}
        return fetch

    def request_for(self, op, body):
        """On the loop: a request for body["host"] (the API's to_host): "reply", "preview" or "ui"
        checked here; -> the function that carries it to the host and waits, off the loop."""
        if op not in REMOTE_OPS:
            raise ApiError(400, "no such request for a host: %r" % (op,))
        return getattr(self, op)(body)

    def ui(self, body):
        """POST /ui with "host": a change of that host's own preferences (such as its order)."""
        h = self.host(body.get("host"))
        change = validate_ui({k: v for k, v in body.items() if k != "host"})

        def send():
            status, answer = h.request("ui", change, 10.0)
            if status >= 400:
                raise ApiError(status, "%s: %s" % (h.name, clean_text(str(answer.get("error") or status))[:500]))
        return send


def relay_request(frame):
    """A request read by the relay -> (id, method, path, body), checked as the HTTP API checks;
    raises ValueError with the reason. Only REMOTE_OPS exist. Pure."""
    from urllib.parse import quote
    rid = frame.get("id") if isinstance(frame, dict) else None
    if frame.get("t") != "req" or _r_int(rid) is None:
        raise ValueError("not a request")
    op, body = frame.get("op"), frame.get("body")
    if op not in REMOTE_OPS:
        raise ValueError("unknown request %r: only %s" % (op, ", ".join(REMOTE_OPS)))
    if not isinstance(body, dict):
        raise ValueError("the request's body must be an object")
    if op == "reply":
        return rid, "POST", "/api/reply", {k: body[k] for k in ("thread", "action", "text") if k in body}
    if op == "preview":
        thread, lines = body.get("thread"), _r_int(body.get("lines"), 1, 200) or 20
        if not isinstance(thread, str) or not thread:
            raise ValueError("'thread' is required")
        return rid, "GET", "/api/preview?thread=%s&lines=%d" % (quote(thread, safe=""), lines), None
    return rid, "POST", "/ui", body


class Relay(object):
    """`opensessions relay`, on the host: frames to stdout, requests from stdin (see the section's
    note). find() -> (port, token, info) of the host's server or None; start_server() starts it
    (raising ServerStopped after `opensessions stop`); http(port, token, method, path, body,
    timeout) -> (status, bytes); tmux_alive() -> bool."""

    def __init__(self, find, start_server, http, tmux_alive, alive=REMOTE_ALIVE, tmux_version=None,
                 out_fd=1, in_fd=0):
        import threading
        self.find = find
        self.start_server = start_server
        self.http = http
        self.tmux_alive = tmux_alive
        self.alive = alive
        self.tmux_version = tmux_version
        self.out_fd, self.in_fd = out_fd, in_fd
        self.lock = threading.Lock()
        self.last_sent = 0.0
        self.streamed = False
        self.busy = threading.BoundedSemaphore(8)

    def send(self, frame, raw=None):
        data = raw if raw is not None else json.dumps(frame, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            try:
                while data:
                    n = os.write(self.out_fd, data)
                    data = data[n:]
            except OSError:  # the connection is gone: nothing to relay to
                os._exit(0)
            self.last_sent = time.monotonic()

    def run(self):
        import threading
        v = self.tmux_version
        self.send({"t": "hello", "proto": RELAY_PROTOCOL, "version": __version__, "digest": program_digest(),
                   "python": "%d.%d.%d" % sys.version_info[:3], "tmux": v})
        nums = [int(n) for n in re.findall(r"\d+", v or "")[:2]]
        if not v:
            self.send({"t": "fatal", "reason": "tmux is not installed on the host (opensessions needs tmux 3.2+)"})
            return 0
        if nums and tuple(nums + [0])[:2] < REMOTE_MIN_TMUX:
            self.send({"t": "fatal", "reason": "tmux on the host is %s; opensessions needs tmux %d.%d or newer"
                       % ((v,) + REMOTE_MIN_TMUX)})
            return 0
        threading.Thread(target=self._requests, daemon=True).start()
        threading.Thread(target=self._heartbeat, daemon=True).start()
        self._follow()
        return 0

    def _heartbeat(self):
        while True:
            time.sleep(self.alive / 2.0)
            if time.monotonic() - self.last_sent >= self.alive * 0.9:
                self.send({"t": "ping"})

    def _follow(self):
        said = None
        while True:
            found = self.find()
            if found is None:
                if not self.tmux_alive():
                    reason = "no tmux server runs on the host (its sessions show here once one does)"
                else:
                    try:
                        self.start_server()
                        continue
                    except ServerStopped:
                        reason = "the host's opensessions server was stopped with `opensessions stop`"
                    except Exception as e:
                        reason = "cannot start the host's opensessions server: %s" % e
                if reason != said:
                    self.send({"t": "down", "reason": reason})
                    said = reason
                time.sleep(2.0)
                continue
            began = time.monotonic()
            reason = "the host's opensessions server went away; starting it again"
            self.streamed = False
            try:
                self._stream(*found)
            except (OSError, ValueError) as e:
                reason = "the host's opensessions server does not stream (%s); trying again" % e
            if self.streamed:
                said = None  # it streamed: its going away is news again
            if reason != said:
                self.send({"t": "down", "reason": reason})
                said = reason
            # a stream that ends at once (a server refusing us) is not tried again at once
            time.sleep(0.2 if time.monotonic() - began > 5 else 2.0)

    def _stream(self, port, token, info):
        import socket
        server = json.dumps({"pid": info.get("pid"), "started": info.get("started"), "version": info.get("version"),
                             "digest": info.get("digest")}, separators=(",", ":")).encode()
        sock = socket.create_connection((HOST, port), timeout=5)
        try:
            sock.settimeout(SSE_KEEPALIVE * 3)
            sock.sendall(("GET /events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (port, token_header(token))).encode())
            buf, head = b"", False
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    return
                buf += data
                if not head:
                    if b"\r\n\r\n" not in buf:
                        continue
                    first, buf = buf.split(b"\r\n\r\n", 1)
                    if b" 200 " not in first.split(b"\r\n", 1)[0]:
                        raise ValueError("the host's server answered: %r" % first[:80])
                    head = True
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    for line in block.split(b"\n"):
                        if line.startswith(b"data: "):
                            self.send(None, b'{"t":"state","server":' + server + b',"state":' + line[6:] + b"}\n")
                            self.streamed = True
        finally:
            sock.close()

    def _requests(self):
        import threading
        stdin = os.fdopen(self.in_fd, "rb", buffering=1 << 16)
        while True:
            line = stdin.readline(REMOTE_MAX_REQUEST + 1)
            if not line:
                os._exit(0)  # the connection closed: the local server is gone or dropped us
            if not line.endswith(b"\n"):  # too long: skip to the end of it, answer nothing
                while line and not line.endswith(b"\n"):
                    line = stdin.readline(REMOTE_MAX_REQUEST + 1)
                continue
            try:
                frame = json.loads(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue
            if not isinstance(frame, dict):
                continue
            if not self.busy.acquire(blocking=False):
                self._answer(frame.get("id"), 503, {"error": "too many requests at once"})
                continue
            threading.Thread(target=self._one, args=(frame,), daemon=True).start()

    def _answer(self, rid, status, body):
        if _r_int(rid) is not None:
            self.send({"t": "res", "id": rid, "status": status, "body": body})

    def _one(self, frame):
        try:
            try:
                rid, method, path, body = relay_request(frame)
            except ValueError as e:
                return self._answer(frame.get("id"), 400, {"error": str(e)})
            found = self.find()
            if found is None:
                return self._answer(rid, 503, {"error": "the host's opensessions server is not running"})
            port, token, _ = found
            try:
                status, content = self.http(port, token, method, path, body, 15.0 if path == "/api/reply" else 5.0)
                doc = json.loads(content.decode("utf-8")) if content.strip() else {}
            except (OSError, ValueError) as e:
                return self._answer(rid, 502, {"error": "the host's server did not answer: %s" % e})
            self._answer(rid, status, doc if isinstance(doc, dict) else {})
        finally:
            self.busy.release()


##############################################################################
# Resurrect and kitty
##############################################################################

SHELLS = frozenset(("bash", "zsh", "fish", "sh", "dash", "ksh", "mksh", "tcsh", "csh", "nu", "elvish", "xonsh",
                    "-bash", "-zsh", "-sh", "-fish"))
INTERPRETERS = frozenset(("node", "bun", "deno", "sh", "bash"))
SIDECAR_PREFIX = "opensessions_"
EMPTY_SAVE_GRACE = 60.0
PANE_CONTENTS_ARCHIVE = "pane_contents.tar.gz"  # tmux-resurrect's @resurrect-capture-pane-contents
PANE_CONTENTS_MAX = 64 * 1024 * 1024  # a larger archive is left as it is (not read)
SIDECAR_MAX = 64 * 1024 * 1024  # a sidecar or assistant-sessions.json (one record per pane)
ENV_NAME = LazyPattern(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keys tmux-assistant-resurrect keeps in a record's env for itself (not variables to set again).
TAR_ENV_BOOKKEEPING = frozenset(("tmux_pane", "shell", "TMUX_PANE", "SHELL", "TMUX", "PWD", "OLDPWD", "SHLVL", "_"))


def resurrect_escape(text):
    """text with control characters (CONTROL_CHARS) shown as \\xNN or \\uNNNN: safe in a log line or
    on a terminal (a restore record holding one is refused). Pure."""
    return CONTROL_CHARS.sub(lambda m: ("\\x%02x" if ord(m.group()) < 0x100 else "\\u%04x") % ord(m.group()), str(text))


def pane_problem(rec):
    """Why a record's pane fields (session, window, paneIndex) name no pane, or None. Pure."""
    if not isinstance(rec.get("session"), str) or not rec["session"]:
        return "no session name"
    for key in ("window", "paneIndex"):
        if not isinstance(rec.get(key), int) or isinstance(rec.get(key), bool) or rec[key] < 0:
            return "%s is not a pane number (%r)" % (key, rec.get(key))
    return None


def record_problem(rec, pane=True):
    """Why a restore record cannot be used (wrong types, unknown agent, bad id, control characters),
    or None. pane=False: the pane fields (session, window, paneIndex) are not needed. Pure."""
    if not isinstance(rec, dict):
        return "not an object (%s)" % type(rec).__name__
    if pane and pane_problem(rec):
        return pane_problem(rec)
    agent = rec.get("agent")
    if agent not in AGENT_SPECS:
        return "unknown agent %r" % (agent,)
    if not valid_thread_id(agent, rec.get("id")):
        return "%r is not a valid %s session id" % (rec.get("id"), agent)
    for key in ("cwd", "model", "program"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            return "%s is not a string (%r)" % (key, rec[key])
    flags = rec.get("flags")
    if flags is not None and (not isinstance(flags, list) or not all(isinstance(f, str) for f in flags)):
        return "flags is not a list of strings (%r)" % (flags,)
    env = rec.get("env")
    if env is not None and (not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values())):
        return "env is not an object of strings (%r)" % (env,)
    for name in env or {}:
        if not ENV_NAME.match(name):
            return "bad environment variable name %r" % name
    if rec.get("program") and not rec["program"].startswith("/"):
        return "program is not an absolute path (%r)" % rec["program"]
    texts = [("cwd", rec.get("cwd")), ("model", rec.get("model")), ("program", rec.get("program"))]
    texts += [("flag", f) for f in flags or []]
    texts += [("env", "%s=%s" % kv) for kv in sorted((env or {}).items())]
    for what, text in texts:
        if text and CONTROL_CHARS.search(text):
            return "control character in %s %s" % (what, resurrect_escape(repr(text)))
    return None


def agent_argv(agent, args):
    """The agent's own argv: `node …/codex --x` and `/bin/sh …/claude --x` become [codex, --x]."""
    if len(args) >= 2 and os.path.basename(args[0]) in INTERPRETERS and os.path.basename(args[1]) == agent:
        return [agent] + list(args[2:])
    return [agent] + list(args[1:])


def launch_flags(agent, argv):
    """-> (flags to keep, dropped words). What picks a conversation goes (the agent's session flags,
    switches and subcommands such as Codex's `resume <id>`: a restore adds its own), and so do
    positional prompts. Pure."""
    spec = AGENT_SPECS.get(agent) or AgentSpec()
    rest = list(argv[1:])
    keep, dropped = [], []
    for phrase in sorted(spec.session_commands, key=len, reverse=True):
        words = phrase.split()
        if rest[:len(words)] == words:
            del rest[:len(words)]
            dropped.extend(words)
            if rest and not rest[0].startswith("-"):
                dropped.append(rest.pop(0))
            break
    i = 0
    while i < len(rest):
        a = rest[i]
        name = a.split("=", 1)[0]
        if name in spec.session_flags:
            dropped.append(a)
            if "=" not in a and i + 1 < len(rest):
                dropped.append(rest[i + 1])
                i += 1
        elif a in spec.session_switches:
            dropped.append(a)
        elif a.startswith("-"):
            keep.append(a)
            if ("=" not in a and a not in spec.switches and i + 1 < len(rest) and not rest[i + 1].startswith("-")):
                keep.append(rest[i + 1])
                i += 1
        else:
            dropped.append(a)  # a positional prompt: restoring must not send it again
        i += 1
    return keep, dropped


def flag_value(flags, names):
    for i, a in enumerate(flags):
        for n in names:
            if a == n and i + 1 < len(flags):
                return flags[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


def resume_command(record, fork=False):
    """The shell line restore types: `cd <cwd> && [VAR=value …] <program> <flags> <resume> <id>` (with
    fork, the line that starts a new conversation from that one's history, where its spec has one).
    <program> is the saved absolute path of the agent's executable (aliases and functions named like
    the agent cannot add their flags a second time), else `command <agent>` (tmux-assistant-resurrect's
    choice). Everything is POSIX-quoted; the record must pass record_problem(). -> str or ValueError."""
    import shlex
    problem = record_problem(record, pane=False)
    if problem:
        raise ValueError(problem)
    agent, tid = record["agent"], record["id"]
    flags = [shlex.quote(f) for f in record.get("flags") or []]
    env = record.get("env") or {}
    words = ["%s=%s" % (name, shlex.quote(env[name])) for name in sorted(env)]
    program = record.get("program")
    words += [shlex.quote(program)] if program else ["command", agent]
    args = conversation_args(agent, tid, flags, fork)
    if args is None:
        raise ValueError("%s has no %s" % (agent, "fork" if fork else "resume command"))
    words += args
    line = " ".join(words)
    cwd = record.get("cwd")
    return "cd %s && %s" % (shlex.quote(cwd), line) if cwd else line


def sidecar_stamp(snapshot, now):
    """The sidecar's name part: the timestamp of resurrect's snapshot file (`tmux_resurrect_<stamp>.txt`,
    new `20261122T030000` or old `2026-11-22T03:00:00` style), else the save time (UTC). Pure."""
    m = re.search(r"(\d{8}T\d{6})", snapshot or "")
    if m:
        return m.group(1)
    m = re.search(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})", snapshot or "")
    if m:
        return "%s%s%sT%s%s%s" % m.groups()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))


def resurrect_dir(tmux_option, environ=None):
    """Where tmux-resurrect keeps its files, found exactly as resurrect does."""
    env = os.environ if environ is None else environ
    home = home_dir(env)
    configured = tmux_option("@resurrect-dir")
    if configured:
        configured = configured.replace("$HOME", home).replace("${HOME}", home)
        if configured.startswith("~"):
            configured = home + configured[1:]
        return configured
    legacy = os.path.join(home, ".tmux", "resurrect")
    if os.path.isdir(legacy):
        return legacy
    return os.path.join(xdg_dir("DATA", env), "tmux", "resurrect")


def assistant_sessions_doc(records, timestamp):
    """The tmux-assistant-resurrect sidecar schema, for users switching over (both ways)."""
    import shlex
    return {"timestamp": timestamp, "sessions": [{
        "pane": "%s:%s.%s" % (r["session"], r["window"], r["paneIndex"]), "tool": r["agent"],
        "session_id": r["id"], "cwd": r.get("cwd") or "", "pid": str(r.get("pid") or ""),
        "model": r.get("model") or "", "cli_args": " ".join(shlex.quote(f) for f in r.get("flags") or []),
        "env": dict(r.get("env") or {}, tmux_pane=r.get("pane") or "")} for r in records]}


def tar_cli_args(text):
    """tmux-assistant-resurrect's cli_args -> (words, how). TAR joins the agent's argv with spaces
    without quoting; opensessions writes them POSIX-quoted. Shell parsing first (our own files);
    when that fails (an apostrophe in a plain word), whitespace splitting, as TAR itself reads them.
    Pure."""
    import shlex
    try:
        return shlex.split(text), "shell"
    except ValueError:
        return text.split(), "whitespace"


def records_from_assistant_sessions(doc, log=None, capture_env=None):
    """Read the tmux-assistant-resurrect schema -> our records. An entry that does not parse is
    skipped and logged with its reason. Env: only the variables TAR captured on purpose: those named
    in capture_env (its @assistant-resurrect-capture-env) when given, else every non-empty
    upper-case name that is not TAR's own bookkeeping (tmux_pane, shell, …)."""
    log = log or (lambda m: None)
    if not isinstance(doc, dict):
        log("restore: assistant-sessions.json is a %s, not an object with \"sessions\"; nothing read from it"
            % type(doc).__name__)
        return []
    sessions = doc.get("sessions")
    if not isinstance(sessions, list):
        log("restore: assistant-sessions.json has no \"sessions\" list; nothing read from it")
        return []
    out = []
    for n, s in enumerate(sessions):
        where = "assistant-sessions.json entry %d" % n
        if not isinstance(s, dict):
            log("restore: %s is not an object (%r); skipped" % (where, s))
            continue
        m = re.match(r"^(.*):(\d+)\.(\d+)$", s.get("pane")) if isinstance(s.get("pane"), str) else None
        if not m or not m.group(1):
            log("restore: %s: unparsable pane name %r (want session:window.pane); skipped" % (where, s.get("pane")))
            continue
        where = "%s (%s)" % (where, s["pane"])
        if s.get("tool") not in AGENT_SPECS:
            log("restore: %s: unknown tool %r; skipped" % (where, s.get("tool")))
            continue
        cli_args = s.get("cli_args")
        if cli_args is not None and not isinstance(cli_args, str):
            log("restore: %s: cli_args is not a string (%r); skipped" % (where, cli_args))
            continue
        flags, how = tar_cli_args(cli_args or "")
        if how == "whitespace":
            log("restore: %s: cli_args %r are not shell-quoted; split at spaces as TAR wrote them" % (where, cli_args))
        raw_env = s.get("env")
        if raw_env is not None and not isinstance(raw_env, dict):
            log("restore: %s: env is not an object (%r); skipped" % (where, raw_env))
            continue
        env, ignored = {}, []
        for k, v in sorted((raw_env or {}).items()):
            if capture_env is not None:
                wanted = k in capture_env
            else:
                wanted = k not in TAR_ENV_BOOKKEEPING and bool(re.match(r"^[A-Z_][A-Z0-9_]*$", k))
            if wanted and isinstance(v, str) and v and ENV_NAME.match(k):
                env[k] = v
            elif k not in TAR_ENV_BOOKKEEPING and (v or not isinstance(v, str)):
                ignored.append(k)
        if ignored:
            log("restore: %s: env %s not set again (not captured on purpose)" % (where, ", ".join(ignored)))
        cwd = s.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            log("restore: %s: cwd is not a string (%r); skipped" % (where, cwd))
            continue
        model = s.get("model") if isinstance(s.get("model"), str) else None
        out.append({"session": m.group(1), "window": int(m.group(2)), "paneIndex": int(m.group(3)),
                    "agent": s["tool"], "id": s.get("session_id"), "cwd": cwd or None,
                    "flags": flags, "env": env, "model": model or None, "idSource": "assistant-sessions"})
    return out


def agent_in_tree(root, table, kids):
    """The top-most agent below process root -> (agent, pid, argv) or None. The same judgement on save
    and restore: arguments included, so a shell with a background `claude -p …` or `opencode run …`
    has no agent."""
    comms = agent_comms()
    for pid in descendants(root, kids)[1:]:
        proc = table.get(pid)
        if proc is None or proc.comm not in comms:
            continue
        args = process_args(pid)
        agent = classify_agent_process(proc.comm, args)
        if agent:
            return agent, pid, args
    return None


def strip_pane_contents(archive, targets):
    """Remove the entries of these panes ("session:window.pane") from tmux-resurrect's
    pane_contents.tar.gz, so restore does not print an agent's old screen into its pane. A new archive
    is renamed over the old one. -> how many were removed."""
    import io
    import tarfile
    names = set("pane_contents/pane-%s" % t for t in targets)
    raw = read_foreign(archive, PANE_CONTENTS_MAX)  # tmux-resurrect's file: a FIFO or /dev/zero is refused
    out = io.BytesIO()
    removed = 0
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as src, \
            tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src.getmembers():
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name in names:
                removed += 1
                continue
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    if removed:
        atomic_write(archive, out.getvalue(), mode=os.stat(archive).st_mode & 0o777)
    return removed


class ResurrectLog(object):
    """opensessions.log in the state dir: one line per decision, bounded (the older half is dropped)."""

    def __init__(self, path, limit=256 * 1024, echo=None):
        self.path = path
        self.limit = limit
        self.echo = echo

    def __call__(self, message):
        line = "%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), resurrect_escape(message))
        if self.echo:
            self.echo(line.rstrip("\n"))
        try:
            ensure_private_dir(os.path.dirname(self.path))
            if os.path.exists(self.path) and os.path.getsize(self.path) > self.limit:
                with open(self.path, "rb") as f:
                    data = f.read()
                data = data[len(data) // 2:]
                atomic_write(self.path, data[data.find(b"\n") + 1:])
            with open(self.path, "a") as f:
                f.write(line)
        except (OSError, OpensessionsError):
            pass


class Resurrect(object):
    """Save and restore of agent conversations around tmux-resurrect."""

    def __init__(self, tmux, environ=None, live_threads=None, log=None, clock=time.time):
        self.tmux = tmux
        self.env = dict(os.environ if environ is None else environ)
        self.paths = agent_paths(self.env)
        self.live_threads = live_threads or []
        self.log = log or (lambda m: None)
        self.clock = clock
        self._options = None
        self._panes = []
        self.me = program_argv()  # how a restored ssh-attach window runs us

    OPTIONS = ("@resurrect-dir", "@opensessions-resurrect-env")

    def option(self, name):
        if self._options is None:
            self._read_tmux()
        if name in self._options:
            return self._options[name]
        try:
            return self.tmux.run("show-option", "-gqv", name).rstrip("\n")
        except TmuxError:
            return ""

    def _read_tmux(self, strict=False):
        """The options we need and every pane, with one tmux process (strict: a TmuxError, such as
        no server, is raised; else it reads as no options and no panes)."""
        fmt = FS.join(("P", "#{session_name}", "#{window_index}", "#{pane_index}", "#{pane_id}", "#{pane_pid}",
                       "#{pane_current_path}", "#{pane_current_command}", "#{@opensessions-sidebar}",
                       "#{@opensessions-remote}"))
        opts = FS.join(["O"] + ["#{%s}" % n for n in self.OPTIONS])
        try:
            out = self.tmux.run("display-message", "-p", opts, ";", "list-panes", "-a", "-F", fmt)
        except TmuxError:
            self._options, self._panes = {}, []
            if strict:
                raise
            return
        self._options, self._panes = {}, []
        for line in out.splitlines():
            parts = line.split(FS)
            if parts[0] == "O" and len(parts) == len(self.OPTIONS) + 1:
                self._options = dict(zip(self.OPTIONS, parts[1:]))
            elif parts[0] == "P" and len(parts) == 10:
                if parts[8] == "1" or parts[1].startswith(HIDDEN_SESSION_PREFIX):
                    continue
                self._panes.append({"session": parts[1], "window": as_number(parts[2], 0, int, text=True),
                                    "paneIndex": as_number(parts[3], 0, int, text=True),
                                    "pane": parts[4], "pid": as_number(parts[5], 0, int, text=True), "cwd": parts[6],
                                    "command": parts[7], "remote": parts[9]})
            elif line.strip():
                self.log("save: skipped a pane line that does not parse (a control character in a cwd or "
                         "command?): %r" % line[:300])

    # -- save --------------------------------------------------------------------------------
    def panes(self):
        if self._options is None:
            self._read_tmux()
        return self._panes

    def collect(self):
        """One process-table read; one record per pane that runs an agent. -> (records, skipped)."""
        table = process_table()
        kids = children_index(table)
        env_names = [n for n in re.split(r"[ ,]+", self.option("@opensessions-resurrect-env")) if n]
        found = []
        for pane in self.panes():
            agent_proc = agent_in_tree(pane["pid"], table, kids)
            if agent_proc:
                found.append((pane, agent_proc, descendants(agent_proc[1], kids)))
        records, skipped, used = [], [], set()
        for pane, (agent, pid, args), subtree in found:
            tid, source = self._exact_id(agent, pid, subtree, args, table)
            if tid and (agent, tid) in used:
                self.log("save: %s in %s claims %s %s, already given to another pane; skipped"
                         % (agent, pane["pane"], agent, tid))
                tid = None
            if tid:
                used.add((agent, tid))
            records.append([pane, agent, pid, args, tid, source])
        for rec in records:  # the last resort, only for panes nothing exact named
            pane, agent, pid, args, tid, source = rec
            if tid is None:
                tid = self._guess_by_cwd(agent, self._proc_cwd(pid) or pane["cwd"], used)
                if tid:
                    used.add((agent, tid))
                    rec[4], rec[5] = tid, "cwd-guess"
        out = []
        for pane, agent, pid, args, tid, source in records:
            target = "%s:%s.%s" % (pane["session"], pane["window"], pane["paneIndex"])
            if not tid:
                self.log("save: %s in %s (pid %d): no session id found; skipped" % (agent, target, pid))
                skipped.append(target)
                continue
            flags, dropped = launch_flags(agent, agent_argv(agent, args))
            live = next((t for t in self.live_threads if (t.get("agent"), t.get("id")) == (agent, tid)), {})
            rec = {"session": pane["session"], "window": pane["window"], "paneIndex": pane["paneIndex"],
                   "pane": pane["pane"], "agent": agent, "id": tid, "idSource": source,
                   "guess": source == "cwd-guess", "pid": pid, "flags": flags,
                   "cwd": self._proc_cwd(pid) or pane["cwd"],
                   "model": live.get("model") or flag_value(flags, ("--model", "-m")),
                   "env": self._environ(pid, env_names), "program": self._program(agent, pid, args)}
            self.log("save: %s %s in %s from %s%s" % (agent, tid, target, source,
                                                      " (dropped %s)" % " ".join(dropped) if dropped else ""))
            out.append(rec)
        return out, skipped

    def _exact_id(self, agent, pid, subtree, args, table):
        """The conversation the agent in this process subtree runs, and how that is known: the
        server's exact link, a registry the agent keeps, a file it holds open, its command line."""
        pids = set(subtree)
        for t in self.live_threads:
            if t.get("agent") == agent and t.get("pid") in pids and t.get("alive") and valid_thread_id(agent, t.get("id")):
                if t.get("link") != "cwd":
                    return t["id"], "server"
        spec, files = agent_files(agent)
        found = files.live_id(spec, self.paths[agent], subtree)
        if found:
            return found
        if spec.open_file:
            what, id_of = spec.open_file
            for p in subtree:
                for fd in dir_entries("/proc/%d/fd" % p):
                    try:
                        tid = id_of(os.readlink("/proc/%d/fd/%s" % (p, fd)))
                    except OSError:
                        continue
                    if tid:
                        return tid, "%s-open-%s" % (agent, what)
        for p in subtree:
            tid = agent_resume_id_from_args(agent, agent_argv(agent, process_args(p)))
            if tid:
                return tid, "argv"
        return None, None

    def _proc_cwd(self, pid):
        try:
            return os.readlink("/proc/%d/cwd" % pid)
        except OSError:
            return None

    def _program(self, agent, pid, args):
        """The absolute path of the executable the agent ran (restore types it, so a shell alias or
        function named like the agent cannot add its flags twice), or None."""
        argv = list(args)
        if len(argv) >= 2 and os.path.basename(argv[0]) in INTERPRETERS and os.path.basename(argv[1]) == agent:
            word = argv[1]  # `/bin/sh …/claude`, `node …/codex`: the script is the program
        else:
            word = argv[0] if argv else ""
        path = None
        if "/" in word:
            path = os.path.join(self._proc_cwd(pid) or "/", word)
        elif word:
            env_path = self._environ(pid, ["PATH"]).get("PATH")
            path = which_in(word, env_path) if env_path else None
            path = path if path and os.path.isabs(path) else None  # a relative PATH entry: not ours to resolve
        if not path:
            try:
                exe = os.readlink("/proc/%d/exe" % pid)
            except OSError:
                exe = None
            if exe and os.path.basename(exe) not in INTERPRETERS:
                path = exe
        if path and os.path.isfile(path) and os.access(path, os.X_OK) and not CONTROL_CHARS.search(path):
            return os.path.normpath(os.path.abspath(path))
        return None

    def _environ(self, pid, names):
        if not names:
            return {}
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                raw = f.read()
        except OSError:
            return {}
        env = {}
        for item in raw.split(b"\0"):
            k, _, v = item.partition(b"=")
            name = k.decode("utf-8", "replace")
            if name in names:
                env[name] = v.decode("utf-8", "replace")
        return env

    def _guess_by_cwd(self, agent, cwd, used):
        """The most recently active conversation of that agent in that directory, not given to
        another pane. A guess: marked as such in the record and the log."""
        spec, files = agent_files(agent)
        for _, tid in sorted(files.cwd_candidates(spec, self.paths[agent], cwd), reverse=True):
            if valid_thread_id(agent, tid) and (agent, tid) not in used:
                return tid
        return None

    def save(self):
        """Write the sidecar for resurrect's latest snapshot, the pointer, and assistant-sessions.json;
        take the agent panes out of resurrect's captured pane contents. No tmux server: raises
        OpensessionsError and writes nothing."""
        try:
            self._read_tmux(strict=True)
        except TmuxError as e:
            raise OpensessionsError("cannot save: no tmux server to read (%s); nothing written" % e)
        records, skipped = self.collect()
        rdir = resurrect_dir(self.option, self.env)
        os.makedirs(rdir, exist_ok=True)
        last = os.path.join(rdir, "last")
        snapshot = os.path.basename(os.readlink(last)) if os.path.islink(last) else None
        stamp = sidecar_stamp(snapshot, self.clock())
        pointer = os.path.join(rdir, SIDECAR_PREFIX + "last")
        previous = self._read_sidecar(pointer, quiet=True)
        remote = self.remote_records()
        if not records and not remote and previous and previous.get("records") and \
                self.clock() - previous.get("savedAt", 0) < EMPTY_SAVE_GRACE:
            self.log("save: found no agents, but a save %ds ago found %d; keeping it (start-up race)"
                     % (self.clock() - previous.get("savedAt", 0), len(previous["records"])))
            return previous["records"], rdir
        timestamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        doc = {"version": 1, "timestamp": timestamp, "savedAt": self.clock(), "resurrectFile": snapshot,
               "records": records, "skipped": skipped, "remote": remote}
        name = "%s%s.json" % (SIDECAR_PREFIX, stamp)
        atomic_write(os.path.join(rdir, name), json.dumps(doc, indent=1))
        tmp_link = pointer + ".%d.tmp" % os.getpid()
        if os.path.lexists(tmp_link):
            os.unlink(tmp_link)
        os.symlink(name, tmp_link)
        os.replace(tmp_link, pointer)
        atomic_write(os.path.join(rdir, "assistant-sessions.json"),
                     json.dumps(assistant_sessions_doc(records, timestamp), indent=1))
        self.log("save: %d agent(s) saved to %s" % (len(records), os.path.join(rdir, name)))
        self._strip_pane_contents(rdir, records)
        return records, rdir

    def remote_records(self):
        """The windows showing a host's session (ssh-attach, marked @opensessions-remote): restored
        as ssh-attach windows. One record per window (its pane that is not a sidebar)."""
        out, seen = [], set()
        for pane in self._panes:
            host, _, session = (pane.get("remote") or "").partition(":")
            if not valid_host(host) or remote_session_name(session) != session:
                continue
            if (pane["session"], pane["window"]) in seen:
                continue
            seen.add((pane["session"], pane["window"]))
            out.append({"session": pane["session"], "window": pane["window"], "paneIndex": pane["paneIndex"],
                        "host": host, "remoteSession": session})
            self.log("save: %s:%s.%s shows %s on %s (an ssh-attach window)"
                     % (pane["session"], pane["window"], pane["paneIndex"], session, host))
        return out

    def _strip_pane_contents(self, rdir, records):
        archive = os.path.join(rdir, PANE_CONTENTS_ARCHIVE)
        if not records or not os.path.isfile(archive):
            return
        import tarfile  # only now: importing it costs a save without pane contents ~10 ms
        import zlib
        targets = ["%s:%s.%s" % (r["session"], r["window"], r["paneIndex"]) for r in records]
        try:
            removed = strip_pane_contents(archive, targets)
        except (OSError, EOFError, ValueError, tarfile.TarError, zlib.error) as e:
            self.log("save: could not rewrite %s (%s); left as it is" % (archive, e))
            return
        self.log("save: removed %d agent pane(s) from %s" % (removed, archive))

    # -- restore -----------------------------------------------------------------------------
    def _read_sidecar(self, path, quiet=False):
        try:
            doc = json.loads(read_foreign(path, SIDECAR_MAX).decode("utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("records"), list):
                raise ValueError("no records list")
            return doc
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
            if not quiet:
                self.log("restore: %s is corrupt (%s)" % (path, e))
            return None

    def load(self):
        """The records to restore: the latest good sidecar (an older one if the latest is corrupt),
        else tmux-assistant-resurrect's assistant-sessions.json. -> (records, source path)."""
        rdir = resurrect_dir(self.option, self.env)
        pointer = os.path.join(rdir, SIDECAR_PREFIX + "last")
        names = sorted((n for n in dir_entries(rdir, ".json") if n.startswith(SIDECAR_PREFIX)), reverse=True)
        first = os.path.realpath(pointer) if os.path.lexists(pointer) else None
        candidates = ([first] if first else []) + [os.path.join(rdir, n) for n in names
                                                  if os.path.join(rdir, n) != first]
        for i, path in enumerate(candidates):
            doc = self._read_sidecar(path)
            if doc is not None:
                if i:
                    self.log("restore: using the older good sidecar %s" % path)
                return doc["records"], path
        legacy = os.path.join(rdir, "assistant-sessions.json")
        try:
            doc = json.loads(read_foreign(legacy, SIDECAR_MAX).decode("utf-8"))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
            self.log("restore: %s is corrupt (%s)" % (legacy, e))
        else:
            names = self.option("@assistant-resurrect-capture-env").split()
            return records_from_assistant_sessions(doc, self.log, set(names) if names else None), legacy
        if candidates:
            raise OpensessionsError("no readable opensessions sidecar in %s (see the restore log)" % rdir)
        return [], None

    def conversation_exists(self, rec):
        return conversation_exists(rec["agent"], rec["id"], self.paths[rec["agent"]])

    def pane_state(self, target):
        fmt = FS.join(("#{pane_id}", "#{pane_pid}", "#{pane_current_command}", "#{@opensessions-restored}",
                       "#{cursor_y}", "#{pane_dead}", "#{pane_tty}"))
        out = self.tmux.run("display-message", "-p", "-t", target, fmt).rstrip("\n").split(FS)
        return {"pane": out[0], "pid": as_number(out[1], 0, int, text=True), "command": out[2], "restored": out[3],
                "cursor_y": as_number(out[4], 0, int, text=True), "dead": out[5] == "1", "tty": out[6] if len(out) > 6 else ""}

    def wait_for_prompt(self, target, timeout=10.0):
        """The shell is ready when its prompt is drawn: the cursor line has text and stays the same."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                st = self.pane_state(target)
                line = self.tmux.run("capture-pane", "-p", "-t", target, "-S", str(st["cursor_y"]),
                                     "-E", str(st["cursor_y"])).rstrip("\n")
            except TmuxError:
                return False
            if line.strip() and st["command"] in SHELLS:
                if line == last:
                    return True
                last = line
            time.sleep(0.05)
        return False

    def clear_pane(self, pane, timeout=3.0):
        """Wipe what resurrect printed into the pane (an old screen, @resurrect-capture-pane-contents):
        `clear` typed at the prompt, then, once it ran, tmux's clear-history. Without a `clear` program
        the screen is reset by tmux instead."""
        self.tmux.run("send-keys", "-t", pane, "-l", "clear")
        self.tmux.run("send-keys", "-t", pane, "Enter")
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                st = self.pane_state(pane)
                lines = self.tmux.run("capture-pane", "-p", "-t", pane).split("\n")
            except TmuxError:
                return
            cursor = lines[st["cursor_y"]] if 0 <= st["cursor_y"] < len(lines) else ""
            if st["command"] in SHELLS and cursor.strip() and not any(l.rstrip().endswith("clear") for l in lines):
                if lines == last:
                    break
                last = lines
            time.sleep(0.05)
        else:
            self.log("restore: %s: `clear` did not clear the screen; reset by tmux" % pane)
            self.tmux.run("send-keys", "-R", "-t", pane)
        self.tmux.run("clear-history", "-t", pane)

    def tell_pane(self, st, message):
        """One line on the pane's screen, written to its terminal: nothing is typed, nothing runs."""
        tty = st.get("tty") or ""
        if not tty.startswith("/dev/"):
            return
        try:
            fd = os.open(tty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                os.write(fd, ("\r\nopensessions: %s\r\n" % resurrect_escape(message)).encode("utf-8", "replace"))
            finally:
                os.close(fd)
        except OSError as e:
            self.log("restore: could not write to %s (%s)" % (tty, e))

    def restore_remote(self, source, dry_run=False, out=print):
        """The ssh-attach windows of the sidecar `source`: each one's pane runs
        `opensessions ssh-attach HOST SESSION` again (typed at its shell, once). -> count typed."""
        import shlex
        doc = self._read_sidecar(source, quiet=True) if source else None
        recs = doc.get("remote") if isinstance(doc, dict) and isinstance(doc.get("remote"), list) else []
        typed = 0
        for rec in recs:
            if not isinstance(rec, dict) or pane_problem(rec) or not valid_host(rec.get("host")) \
                    or remote_session_name(rec.get("remoteSession")) != rec.get("remoteSession"):
                self.log("restore: an ssh-attach record that does not check out; skipped: %r" % (rec,))
                continue
            target = "=%s:%s.%s" % (rec["session"], rec["window"], rec["paneIndex"])
            mark = "%s:%s" % (rec["host"], rec["remoteSession"])
            command = " ".join(shlex.quote(a) for a in self.me + ["ssh-attach", rec["host"], rec["remoteSession"]])
            if dry_run:
                out("%s\t%s" % (resurrect_escape(target), resurrect_escape(command)))
                continue
            try:
                st = self.pane_state(target)
            except TmuxError:
                self.log("restore: %s: no such pane; skipped (%s)" % (target, mark))
                continue
            if st["restored"] == mark:
                self.log("restore: %s: already attached to %s; not typing twice" % (target, mark))
                continue
            if st["command"] not in SHELLS or not self.wait_for_prompt(target):
                self.log("restore: %s: no shell prompt (%s); not typing the ssh-attach for %s"
                         % (target, st["command"], mark))
                continue
            self.tmux.run("set-option", "-p", "-t", st["pane"], "@opensessions-restored", mark)
            self.tmux.run("set-option", "-w", "-t", st["pane"], "@opensessions-remote", mark)
            self.tmux.run("send-keys", "-t", st["pane"], "-l", command)
            self.tmux.run("send-keys", "-t", st["pane"], "Enter")
            self.log("restore: %s: %s" % (target, command))
            typed += 1
        return typed

    def restore(self, dry_run=False, out=print):
        records, source = self.load()
        if source and os.path.basename(source).startswith(SIDECAR_PREFIX):
            self.restore_remote(source, dry_run, out)
        if not isinstance(records, list):
            self.log("restore: %s: \"records\" is not a list; nothing to restore" % source)
            return 0
        if not records:
            self.log("restore: nothing to restore (%s)" % (source or "no sidecar"))
            return 0
        self.log("restore: %d record(s) from %s" % (len(records), source))
        table = process_table()
        kids = children_index(table)
        typed = 0
        for n, rec in enumerate(records):
            if self._restore_one(n, rec, table, kids, dry_run, out):
                typed += 1
        self.log("restore: typed %d of %d" % (typed, len(records)))
        return typed

    def _restore_one(self, n, rec, table, kids, dry_run, out):
        """One record: every way it is not typed is logged with its reason (and printed by --dry-run,
        escaped). -> True when the resume command was typed."""
        def skip(target, reason):
            self.log("restore: %s: %s; skipped" % (target, reason))
            if dry_run:
                out("%s\t# skipped: %s" % (resurrect_escape(target), resurrect_escape(reason)))
            return False
        problem = record_problem(rec)
        if problem:
            pane_ok = isinstance(rec, dict) and not pane_problem(rec)
            return skip("record %d (=%s:%s.%s)" % (n, rec["session"], rec["window"], rec["paneIndex"])
                        if pane_ok else "record %d" % n, problem)
        target = "=%s:%s.%s" % (rec["session"], rec["window"], rec["paneIndex"])
        agent, tid, cwd = rec["agent"], rec["id"], rec.get("cwd")
        typed_rec, notes = dict(rec), []
        cwd_gone = bool(cwd) and not os.path.isdir(cwd)
        resumes_anywhere = AGENT_SPECS[agent].resumes_anywhere
        if cwd_gone and resumes_anywhere:
            typed_rec["cwd"] = None
            notes.append("directory %s is gone; %s resumes by id from the pane's directory" % (cwd, agent))
        program = rec.get("program")
        if program and not (os.path.isfile(program) and os.access(program, os.X_OK)):
            typed_rec["program"] = None
            notes.append("program %s is gone; typed `command %s`" % (program, agent))
        try:
            command = resume_command(typed_rec)
        except ValueError as e:
            return skip(target, str(e))
        try:
            st = self.pane_state(target)
        except TmuxError:
            return skip(target, "no such pane")
        if st["restored"] == tid:
            return skip(target, "already restored %s %s; not typing twice" % (agent, tid))
        if st["command"] not in SHELLS:
            return skip(target, "busy with %s (not a shell); not typing %s %s" % (st["command"], agent, tid))
        running = agent_in_tree(st["pid"], table, kids)
        if running:
            return skip(target, "busy with %s (pid %d); not typing %s %s" % (running[0], running[1], agent, tid))
        if not self.conversation_exists(rec):
            return skip(target, "%s conversation %s no longer exists; left the shell" % (agent, tid))
        if cwd_gone and not resumes_anywhere:
            why = ("not resuming %s %s: its directory %s is gone (%s resumes a conversation only from "
                   "the directory it ran in)" % (agent, tid, cwd, AGENT_SPECS[agent].title))
            if not dry_run:
                self.tell_pane(st, why)
            return skip(target, why + "; left the shell")
        if dry_run:
            out("%s\t%s" % (resurrect_escape(target), resurrect_escape(command)))
            for note in notes:
                self.log("restore: %s: (dry run) %s" % (target, note))
            return False
        # the pane is ours before any wait (for the prompt, for `clear`): a second restore running
        # at the same time finds it claimed and types nothing
        claim = self.claim_pane(st["pane"])
        if claim is None:
            return skip(target, "another restore is typing into this pane; not typing %s %s twice" % (agent, tid))
        try:
            if self.pane_state(target)["restored"] == tid:  # one that finished just before our claim
                return skip(target, "already restored %s %s; not typing twice" % (agent, tid))
            if not self.wait_for_prompt(target):
                return skip(target, "the shell did not show a prompt")
            self.clear_pane(st["pane"])
            self.tmux.run("set-option", "-p", "-t", st["pane"], "@opensessions-restored", tid)
            self.tmux.run("send-keys", "-t", st["pane"], "-l", command)
            self.tmux.run("send-keys", "-t", st["pane"], "Enter")
        finally:
            self.release_pane(st["pane"], claim)
        self.log("restore: %s: %s%s%s" % (target, command, " (id was a cwd guess)" if rec.get("guess") else "",
                                        "".join(" (%s)" % note for note in notes)))
        return True

    CLAIM_OPTION = "@opensessions-restoring"

    def _swap_claim(self, pane, expected, value):
        """Compare-and-set the pane's CLAIM_OPTION: to `value` ("" unsets it) only while it holds
        `expected` ("" when unset), in one tmux command sequence: tmux runs one client's commands one
        after another, so two restores can never both find it free. -> what it holds after."""
        assert re.match(r"^%\d+$", pane) and re.match(r"^[a-z0-9-]*$", expected + value)
        change = ("set-option -p -t %s %s %s" % (pane, self.CLAIM_OPTION, value)) if value \
            else ("set-option -p -u -t %s %s" % (pane, self.CLAIM_OPTION))
        return self.tmux.run("if-shell", "-F", "-t", pane, "#{==:#{%s},%s}" % (self.CLAIM_OPTION, expected), change,
                             ";", "display-message", "-p", "-t", pane, "#{%s}" % self.CLAIM_OPTION).rstrip("\n")

    def claim_pane(self, pane):
        """Make the pane this restore's (a claim naming our pid), unless another live restore holds
        it; a claim left by one that died is taken over. -> the claim, or None."""
        claim = "claim-%d-%s" % (os.getpid(), os.urandom(4).hex())
        held = self._swap_claim(pane, "", claim)
        if held != claim:
            m = re.match(r"^claim-(\d+)-[0-9a-f]+$", held)
            if not m or _pid_alive(int(m.group(1))) or self._swap_claim(pane, held, claim) != claim:
                return None
        return claim

    def release_pane(self, pane, claim):
        try:
            self._swap_claim(pane, claim, "")
        except TmuxError:
            pass


def kitty_tabs(sessions, socket_path, shown_titles=()):
    """(title, cwd, argv) for each session without a kitty tab yet. Pure."""
    out = []
    for s in sessions:
        if s["name"] in shown_titles:
            continue
        out.append((s["name"], s.get("dir") or home_dir(),
                    ["tmux", "-S", socket_path, "attach-session", "-t", "=" + s["name"]]))
    return out


def kitty_session_file(tabs):
    """A kitty session file that opens one tab per tmux session."""
    import shlex
    lines = []
    for title, cwd, argv in tabs:
        lines += ["new_tab %s" % title.replace("\n", " "), "cd %s" % cwd,
                  "launch %s" % " ".join(shlex.quote(a) for a in argv), ""]
    return "\n".join(lines)


##############################################################################
# History: every past conversation, found, resumed or forked
##############################################################################

# The index of every conversation of every agent we read, live or long finished: the picker
# (`prefix o r`), `opensessions history`, /api/history and /api/resume. One entry per conversation,
# metadata only: ids, title, first prompt cut to a line, directory, git branch, start and last
# activity, turns, tokens, cost, and the flags and program it was last run with where we saw them.
# It lives in the server: a worker thread builds it at cold start (the event loop keeps serving),
# the watchers' updates keep it live (each conversation they report is read again, from where the
# last read stopped), and it is saved in our state dir (history.jsonl), so a restart reads only the
# files whose inode, size or mtime changed. Nothing is ever written into an agent's directory.
#
# What is exact and what is estimated (HistoryEntry.exact):
# - A conversation file up to HISTORY_FULL bytes is read whole, and appends are read as they come:
#   its turns and tokens are exact (a Claude message whose records straddle two reads may count
#   its provisional output once more).
# - A bigger file first seen whole is read from its head (first prompt, directory, branch, start)
#   and its tail: its turns are extrapolated from the share of the file read, its tokens are the
#   tail's (both marked estimated, "~" in the picker), except where the agent keeps running totals:
#   Codex (token_count totals; turns from thread_history_1.sqlite when it has the thread) and
#   OpenCode (the session row's totals; turns counted in its database).
# - Amp (unverified format) is read whole up to MAX_LINE_BYTES.
#
# What is particular to an agent is in its spec's HistoryFormat (where its conversations are, its
# reducer, what its preview shows, its fork in fork_args); the readers below go by its `kind`, and
# the extra readings some agents need (Codex's names and turn counts, Gemini's project directories)
# by its `facts`, in HISTORY_FACTS.

HISTORY_FILE = "history.jsonl"
HISTORY_VERSION = 1
HISTORY_FULL = 256 * 1024  # a file up to this size is read whole (exact turns and tokens)
HISTORY_HEAD = 32 * 1024  # ... else its first bytes (first prompt, cwd, branch, start) ...
HISTORY_TAIL = 64 * 1024  # ... and its last bytes (last activity, title, usage)
HISTORY_APPEND = 1024 * 1024  # an append up to this size is read on; a bigger one: head and tail again
HISTORY_PROMPT = 160  # characters kept of the first prompt (its first line)
HISTORY_MAX = 100000  # entries kept at most; past it the least recently active are dropped
HISTORY_SAVE_QUIET = 5.0  # the index file is written once changes pause this long
HISTORY_BATCH = 0.3  # what the watchers report is read in batches at most this often (a streaming agent)
HISTORY_PREVIEW_BYTES = 256 * 1024  # a preview reads at most this much of a transcript's end
EXACT_TURNS, EXACT_USAGE = 1, 2


def release_memory():
    """Give the memory freed by a big read back to the system (glibc's malloc_trim; elsewhere
    nothing): the index's first build parses thousands of files and keeps a few MB of them."""
    try:
        libc = c_library("malloc_trim")
        if libc is not None:
            libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _intern(text):
    return sys.intern(text) if isinstance(text, str) else None


_M64 = (1 << 64) - 1


def _packed(slot, i):
    """A property for the i-th 64-bit field packed in the int `slot` (one int object, not four)."""
    def get(self):
        return (getattr(self, slot) >> (64 * i)) & _M64

    def put(self, value):
        value = min(max(0, int(value)), _M64)
        setattr(self, slot, getattr(self, slot) & ~(_M64 << (64 * i)) | (value << (64 * i)))
    return property(get, put)


class HistoryEntry(object):
    """One conversation in the index. Slots, shared strings for what repeats (agent, directory,
    branch, model), and the token counts and the file's stamp packed in one int each: 20,000 of
    them take about 10 MB."""

    __slots__ = ("agent", "id", "title", "prompt", "cwd", "branch", "created", "updated", "turns", "_tokens",
                 "cost", "model", "_dir", "_name", "_stamp", "exact", "flags", "program", "hay")
    # what is saved (one row per entry) and copied: the packed fields by name
    FIELDS = ("agent", "id", "title", "prompt", "cwd", "branch", "created", "updated", "turns", "input", "output",
              "cache_read", "cache_write", "cost", "model", "path", "ino", "size", "mtime", "offset", "exact",
              "flags", "program")
    COPY = ("title", "prompt", "cwd", "branch", "created", "updated", "turns", "_tokens", "cost", "model", "_dir",
            "_name", "_stamp", "exact", "flags", "program")

    input, output, cache_read, cache_write = (_packed("_tokens", i) for i in range(4))
    ino, size, mtime, offset = (_packed("_stamp", i) for i in range(4))

    def __init__(self, agent, id):
        self.agent = _intern(agent)
        self.id = id
        self.title = self.prompt = self.cwd = self.branch = self.model = self._dir = self._name = None
        self.created = self.updated = self.turns = 0
        self._tokens = self._stamp = 0  # input, output, cache read, cache write / inode, size, mtime ns, offset
        self.cost = None  # the agent's own figure (OpenCode, Pi, Claude's cost-state), else priced when shown
        self.exact = EXACT_TURNS | EXACT_USAGE
        self.flags = None  # tuple of the launch flags last seen (recorded), or None
        self.program = None  # absolute path of the program last seen running it, or None
        self.hay = ""

    @property
    def key(self):
        return (self.agent, self.id)

    @property
    def path(self):
        """The conversation's file (OpenCode: its database): its directory is shared with the
        others there, and a name that is the id and the agent's suffix is not kept."""
        if self._dir is None:
            return None
        return os.path.join(self._dir, self._name if self._name is not None else
                            self.id + AGENT_SPECS[self.agent].history.suffix)

    @path.setter
    def path(self, value):
        if value is None:
            self._dir = self._name = None
            return
        directory, name = os.path.split(value)
        self._dir = sys.intern(directory)
        suffix = AGENT_SPECS[self.agent].history.suffix if self.agent in AGENT_SPECS else None
        if suffix and name == self.id + suffix:
            self._name = None
        else:
            # one database holds every conversation of a "opencode-db" agent: its name is shared too
            fmt = AGENT_SPECS[self.agent].history if self.agent in AGENT_SPECS else None
            self._name = sys.intern(name) if fmt is not None and fmt.kind == "opencode-db" else name

    def index_text(self):
        """What typing matches, lower-case: title, first prompt and agent (the directory is matched
        on its own: one lower-case string per directory, not per conversation)."""
        self.hay = ("%s\n%s\n%s" % (self.title or "", self.prompt or "", self.agent)).lower()

    def to_row(self):
        return [getattr(self, f) for f in self.FIELDS]

    @classmethod
    def from_row(cls, row):
        """A saved row -> entry, or None when it is not one of ours (wrong shape or types)."""
        if not isinstance(row, list) or len(row) != len(cls.FIELDS):
            return None
        d = dict(zip(cls.FIELDS, row))
        if d["agent"] not in AGENT_SPECS or not valid_thread_id(d["agent"], d["id"]):
            return None
        for f in ("title", "prompt", "cwd", "branch", "model", "path", "program"):
            if d[f] is not None and not isinstance(d[f], str):
                return None
        for f in ("created", "updated", "turns", "input", "output", "cache_read", "cache_write", "ino", "size",
                  "mtime", "offset", "exact"):
            if isinstance(d[f], bool) or not isinstance(d[f], int) or not 0 <= d[f] <= _M64:
                return None
        if d["cost"] is not None and not (as_number(d["cost"]) is not None):
            return None
        flags = d["flags"]
        if flags is not None and (not isinstance(flags, list) or not all(isinstance(a, str) for a in flags)):
            return None
        e = cls(d["agent"], d["id"])
        for f in cls.FIELDS[2:]:
            setattr(e, f, d[f])
        e.flags = tuple(flags) if flags is not None else None
        for f in ("cwd", "branch", "model"):
            setattr(e, f, _intern(getattr(e, f)))
        e.index_text()
        return e

    def raw_usage(self):
        """The tokens and the agent's own cost in usage_json()'s raw shape (None when none seen)."""
        if not (self._tokens or self.cost is not None):
            return None
        usage = new_usage()
        usage.update(input=self.input, output=self.output, cacheRead=self.cache_read, cacheWrite=self.cache_write,
                     cost=self.cost, partial=not self.exact & EXACT_USAGE)
        return usage


def history_prompt_line(text):
    """A first prompt as the index keeps it: its first non-empty line, control characters made
    spaces, cut to HISTORY_PROMPT characters (a 10 MB prompt costs what a short one does). Pure."""
    if not isinstance(text, str):
        return None
    head = text[:HISTORY_PROMPT * 8]
    for line in head.splitlines():
        line = " ".join(clean_text(line).split())
        if line:
            return line if len(line) <= HISTORY_PROMPT else line[:HISTORY_PROMPT - 1] + "…"
    return None


def history_title(text):
    """A title from an agent's file or database: one line, clean, cut to TITLE_MAX. Pure."""
    if not isinstance(text, str) or not text.strip():
        return None
    return _clip_title(clean_text(text[:TITLE_MAX * 8]))


def history_records(skip, lines):
    """JSON objects of the lines the index reads (those starting with one of `skip`, the spec's big
    records, are left unparsed). Strings are kept as parsed: the index cleans the few it keeps. Pure."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        head = line[:200]
        if skip and any(s in head for s in skip):
            continue
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _history_extra(fmt, rec, extra):
    """What the reducers do not keep: when the conversation started (its first record's time), and
    its git branch where the agent records one (the spec's `branch`)."""
    if "created" not in extra:
        ts = parse_iso_ms(rec.get("timestamp") or rec.get("startTime"))
        if ts:
            extra["created"] = ts
    branch = fmt.branch(rec) if fmt.branch else None
    if branch:
        extra["branch"] = branch


def _history_lines(data, from_start):
    """Complete lines of a chunk read from a file -> (lines, bytes consumed). A chunk that does not
    start the file drops its first (partial) line; what follows the last newline is a line still
    being written: not consumed (the next read starts there)."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    lines = data[:end].split(b"\n")
    return (lines if from_start else lines[1:]), end + 1


def _pread(fd, offset, size):
    out = []
    while size > 0:
        chunk = os.pread(fd, min(size, READ_CHUNK), offset)
        if not chunk:
            break
        out.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(out)


def _history_seed(entry, agent, tid):
    """A reducer state that continues an entry's counters (for an append)."""
    state = new_thread_state(agent, tid)
    state.update(turns=entry.turns, firstPrompt=entry.prompt, cwd=entry.cwd, model=entry.model,
                 updatedAt=entry.updated)
    if entry._tokens or entry.cost is not None:
        state["usage"] = new_usage()
        state["usage"].update(input=entry.input, output=entry.output, cacheRead=entry.cache_read,
                              cacheWrite=entry.cache_write, cost=entry.cost)
    return state


def history_read_jsonl(agent, path, prev=None, tid=None):
    """One JSONL conversation file -> a HistoryEntry (None when the file holds no conversation of
    ours). Reads only what is needed: the bytes appended since `prev` was read (same inode, grown by
    at most HISTORY_APPEND), else the whole file up to HISTORY_FULL, else its head and its tail."""
    fd, st = open_foreign(path)
    try:
        fmt = AGENT_SPECS[agent].history
        reducer, skip = fmt.reducer, fmt.skip
        extra = {}
        if prev is not None and prev.ino == st.st_ino and prev.size <= st.st_size \
                and st.st_size - prev.offset <= HISTORY_APPEND and prev.path == path:
            if (prev.size, prev.mtime) == (st.st_size, st.st_mtime_ns):
                return prev
            state = _history_seed(prev, agent, prev.id)
            data = _pread(fd, prev.offset, st.st_size - prev.offset)
            lines, used = _history_lines(data, True)
            for rec in history_records(skip, lines):
                reducer(state, rec)
                _history_extra(fmt, rec, extra)
            entry = _history_entry(agent, prev.id, state, extra, prev)
            entry.offset = prev.offset + used
            entry.exact = prev.exact
        else:
            state = new_thread_state(agent, tid or "")
            if st.st_size <= HISTORY_FULL:
                data = _pread(fd, 0, st.st_size)
                lines, used = _history_lines(data, True)
                for rec in history_records(skip, lines):
                    reducer(state, rec)
                    _history_extra(fmt, rec, extra)
                exact = EXACT_TURNS | EXACT_USAGE
            else:
                head = _pread(fd, 0, HISTORY_HEAD)
                head_lines, head_used = _history_lines(head, True)
                for rec in history_records(skip, head_lines):
                    reducer(state, rec)
                    _history_extra(fmt, rec, extra)
                if not state["firstPrompt"]:  # a first prompt longer than the head: its beginning
                    state["firstPrompt"] = history_partial_prompt(head[head_used:])
                head_turns = state["turns"]
                start = st.st_size - HISTORY_TAIL
                tail = _pread(fd, start, HISTORY_TAIL)
                lines, used = _history_lines(tail, False)
                used += start
                tail_state = new_thread_state(agent, state["id"])
                tail_state.update(firstPrompt=state["firstPrompt"], cwd=state["cwd"], model=state["model"],
                                  customTitle=state["customTitle"])
                for rec in history_records(skip, lines):
                    reducer(tail_state, rec)
                    _history_extra(fmt, rec, extra)
                read = HISTORY_HEAD + HISTORY_TAIL
                sampled = head_turns + tail_state["turns"]
                tail_state["turns"] = max(sampled, int(round(sampled * float(st.st_size) / read)))
                tail_state["updatedAt"] = max(state["updatedAt"], tail_state["updatedAt"])
                # an agent recording running totals (Codex's token_count) has them exact in its tail
                exact = EXACT_USAGE if fmt.totals and tail_state.get("usage") else 0
                state = tail_state
            if not valid_thread_id(agent, state["id"]):
                return None
            entry = _history_entry(agent, state["id"], state, extra, None)
            entry.offset = used
            entry.exact = exact
        entry.path, entry.ino, entry.size, entry.mtime = path, st.st_ino, st.st_size, st.st_mtime_ns
        if not entry.updated:
            entry.updated = int(st.st_mtime * 1000)
        if not entry.created:
            entry.created = entry.updated
        return entry if not state.get("hidden") else None
    finally:
        os.close(fd)


def history_partial_prompt(data):
    """The beginning of a user prompt in a record cut short (a prompt of megabytes: the head read
    holds only its start): the first "text" or "content" string after the user role. Pure."""
    text = data[:64 * 1024].decode("utf-8", "replace")
    m = re.search(r'"(?:role|type)":\s*"user"', text)
    if m is None:
        return None
    k = re.compile(r'"(?:text|content)":\s*"').search(text, m.end())
    if k is None:
        return None
    raw = text[k.end():k.end() + 4096]
    raw = re.sub(r"\\(?:u[0-9a-fA-F]{0,3})?$", "", raw)  # an escape cut in two
    end = raw.find('"')
    while end > 0 and raw[end - 1] == "\\":
        end = raw.find('"', end + 1)
    try:
        prompt = json.loads('"%s"' % (raw[:end] if end >= 0 else raw))
    except ValueError:
        return None
    return prompt if _is_prompt_text(prompt) else None


def _history_entry(agent, tid, state, extra, prev):
    """A reducer state (and the extras) -> a new HistoryEntry; what the state lacks comes from prev."""
    e = HistoryEntry(agent, tid)
    if prev is not None:
        for f in HistoryEntry.COPY:
            setattr(e, f, getattr(prev, f))
    title = history_title(state.get("customTitle"))
    if title:
        e.title = title
    prompt = history_prompt_line(state.get("firstPrompt"))
    if prompt and not e.prompt:
        e.prompt = prompt
    if not e.prompt:  # a tail-only read: the newest prompt is better than nothing
        e.prompt = history_prompt_line(state.get("lastPrompt"))
    if isinstance(state.get("cwd"), str) and state["cwd"]:
        e.cwd = _intern(clean_str(state["cwd"]))
    if isinstance(state.get("model"), str) and state["model"]:
        e.model = _intern(clean_str(state["model"][:100]))
    if extra.get("branch"):
        e.branch = _intern(clean_str(extra["branch"][:200]))
    if extra.get("created") and (not e.created or extra["created"] < e.created):
        e.created = extra["created"]
    e.updated = max(e.updated, state.get("updatedAt") or 0)
    e.turns = as_number(state.get("turns"), 0, int, low=0)
    usage = AGENT_SPECS[agent].history.usage(state) if AGENT_SPECS[agent].history.usage else state.get("usage")
    if isinstance(usage, dict):
        e.input, e.output = token_count(usage.get("input")), token_count(usage.get("output"))
        e.cache_read, e.cache_write = token_count(usage.get("cacheRead")), token_count(usage.get("cacheWrite"))
        cost = usage.get("cost")
        e.cost = round(float(cost), 6) if (as_number(cost) is not None) and not isinstance(cost, bool) else None
    e.index_text()
    return e


def _json_string_at(text, key):
    """The value of "key": "…" in JSON text that may be cut short (a capped read), or None."""
    import json.decoder
    i = text.find('"%s":' % key)
    if i < 0:
        return None
    j = text.find('"', i + len(key) + 3)
    if j < 0:
        return None
    for end in range(len(text), max(j, len(text) - 8), -1):
        try:
            return json.decoder.scanstring(text[:end] + ('"' if end < len(text) or not text.endswith('"') else ""),
                                           j + 1)[0]
        except ValueError:
            continue
    return None


def history_read_opencode(agent, db, ids=None, since_ms=0):
    """The "opencode-db" kind: OpenCode's database -> ([HistoryEntry] of the top-level sessions named
    by ids, or else changed after since_ms; the newest time_updated seen). Turns are its user messages; the first prompt is
    the text part of its first user message (its first 4 KB); tokens and cost are the session
    row's own totals. Read-only; raises sqlite3.Error."""
    conn = sqlite_ro(db)
    try:
        base = ("SELECT id, parent_id, directory, title, time_created, time_updated, model%s FROM session "
                % opencode_usage_columns(conn))
        if ids is None:
            rows = conn.execute(base + "WHERE time_updated > ? ORDER BY time_updated", (since_ms,)).fetchall()
        else:
            rows = []
            for n in range(0, len(ids), 500):
                chunk = list(ids[n:n + 500])
                rows += conn.execute(base + "WHERE id IN (%s)" % ",".join("?" * len(chunk)), chunk).fetchall()
        newest = since_ms
        out = {}
        for s in rows:
            if isinstance(s["time_updated"], int) and not isinstance(s["time_updated"], bool):
                newest = max(newest, s["time_updated"])
            if s["parent_id"] or not valid_thread_id(agent, s["id"]):
                continue  # a subagent's session is not resumed on its own
            e = HistoryEntry(agent, s["id"])
            title = s["title"] if isinstance(s["title"], str) else None
            if title and not title.startswith("New session - "):
                e.title = history_title(title)
            if isinstance(s["directory"], str):
                e.cwd = _intern(clean_str(s["directory"]))
            e.created, e.updated = _epoch_ms(s["time_created"]), _epoch_ms(s["time_updated"])
            usage = opencode_usage(s)
            if usage:
                e.input, e.output = usage["input"], usage["output"]
                e.cache_read, e.cache_write, e.cost = usage["cacheRead"], usage["cacheWrite"], usage["cost"]
            try:
                m = json.loads(s["model"]) if isinstance(s["model"], str) else None
                if isinstance(m, dict) and isinstance(m.get("id") or m.get("modelID"), str):
                    e.model = _intern(clean_str((m.get("id") or m.get("modelID"))[:100]))
            except (ValueError, RecursionError):
                pass
            out[s["id"]] = e
        ids = list(out)
        for n in range(0, len(ids), 500):
            chunk = ids[n:n + 500]
            marks = ",".join("?" * len(chunk))
            for sid, count in conn.execute(
                    "SELECT session_id, count(*) FROM message WHERE session_id IN (%s) "
                    "AND (instr(data, '\"role\":\"user\"') > 0 OR instr(data, '\"role\": \"user\"') > 0) GROUP BY session_id" % marks, chunk):
                out[sid].turns = as_number(count, 0, int, low=0)
            for sid, _, data in conn.execute(
                    "SELECT session_id, min(time_created), substr(data, 1, 4096) FROM part WHERE session_id IN (%s) "
                    "AND (instr(substr(data, 1, 64), '\"type\":\"text\"') > 0 OR instr(substr(data, 1, 64), '\"type\": \"text\"') > 0) AND message_id IN (SELECT id FROM message "
                    "WHERE session_id IN (%s) AND (instr(data, '\"role\":\"user\"') > 0 OR instr(data, '\"role\": \"user\"') > 0)) GROUP BY session_id"
                    % (marks, marks), chunk + chunk):
                if isinstance(data, str):
                    out[sid].prompt = history_prompt_line(_json_string_at(data, "text"))
        for e in out.values():
            e.path = db
            e.index_text()
        return list(out.values()), newest
    finally:
        conn.close()


def history_read_amp(agent, path, prev=None):
    """The "amp-json" kind: an Amp thread file (unverified format, see amp_thread_state), read whole up
    to MAX_LINE_BYTES."""
    fd, st = open_foreign(path)
    try:
        if prev is not None and (prev.ino, prev.size, prev.mtime) == (st.st_ino, st.st_size, st.st_mtime_ns):
            return prev
        if st.st_size > MAX_LINE_BYTES:
            raise ValueError("%d bytes, over the %d-byte cap" % (st.st_size, MAX_LINE_BYTES))
        data = clean_parsed_strings(json.loads(_pread(fd, 0, st.st_size).decode("utf-8")))
    finally:
        os.close(fd)
    state = amp_thread_state(data, int(st.st_mtime * 1000))
    if state is None:
        return None
    extra = {"created": _epoch_ms(data.get("created"))}
    e = _history_entry(agent, state["id"], state, extra, None)
    e.path, e.ino, e.size, e.mtime, e.offset = path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_size
    return e


def history_files(paths, agent, errors=None):
    """Every conversation file of an agent read from files -> (path, id or None), one at a time
    (20,000 files are never listed at once), walking its own tree as its spec's HistoryFormat says
    (read-only). None for the id: its file name holds only the id's start (header_id). `errors`
    collects the directories that could not be listed (their conversations are kept as they were)."""
    fmt = AGENT_SPECS[agent].history

    def listdir(d):
        try:
            return sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        except OSError:
            if errors is not None:
                errors.add(d)
            return []

    def walk(d, patterns):
        if not patterns:
            for name in listdir(d):
                tid = fmt.name_id(name)
                if tid:
                    yield os.path.join(d, name), (None if fmt.header_id else tid)
            return
        if patterns[0] != "*" and patterns[0] != "#":
            yield from walk(os.path.join(d, patterns[0]), patterns[1:])
            return
        for sub in listdir(d):
            if patterns[0] == "#" and not sub.isdigit():
                continue
            if os.path.isdir(os.path.join(d, sub)):
                yield from walk(os.path.join(d, sub), patterns[1:])
    root = paths[agent].get(fmt.under)
    if root and fmt.kind != "opencode-db":
        yield from walk(root, tuple(fmt.dirs))


def history_head(path, limit=4096):
    """The first bytes of an agent's file (a bounded read that never blocks), b"" when unreadable."""
    try:
        fd, _ = open_foreign(path)
    except OSError:
        return b""
    try:
        return _pread(fd, 0, limit)
    finally:
        os.close(fd)


def history_header_id(path):
    """The "sessionId" of a header_id agent's file's first line, or None."""
    head = parse_json_lines(_history_lines(history_head(path), True)[0][:1])[0]
    sid = head[0].get("sessionId") if head else None
    return sid if isinstance(sid, str) else None


def history_root(paths, agent):
    """The directory an agent's conversation files are under (its tree's first named level)."""
    fmt = AGENT_SPECS[agent].history
    named = [d for d in fmt.dirs if d not in ("*", "#")][:1]
    return os.path.join(paths[agent][fmt.under], *named)


def history_locate(paths, agent, tid):
    """The file of one conversation we have no path for yet (a new one the watchers just saw), or
    None: by its name where it is <id><suffix>, else among the agent's files (the newest dated
    directories first), a header_id agent's by the id in its first line."""
    fmt = AGENT_SPECS[agent].history
    candidates = list(history_files(paths, agent))
    candidates.sort(reverse=True)  # dated directories sort newest first
    for path, fid in candidates:
        name = os.path.basename(path)
        if fmt.suffix and name == tid + fmt.suffix:
            return path
        if fid == tid:
            return path
        if fmt.header_id and fmt.name_id(name) and tid.startswith(fmt.name_id(name)):
            if history_header_id(path) == tid:
                return path
    return None


def history_codex_apply(entry, facts):
    """Codex's own facts for one of its conversations (history_codex_names) onto its entry: its
    name is the title, its branch, its exact turn count."""
    facts = facts or {}
    if facts.get("name"):
        entry.title = history_title(facts["name"])
    if facts.get("branch") and not entry.branch:
        entry.branch = _intern(clean_str(facts["branch"][:200]))
    if facts.get("turns") is not None:
        entry.turns = facts["turns"]
        entry.exact |= EXACT_TURNS
    entry.index_text()


def history_gemini_dirs(gemini_home):
    """The "gemini-projects" facts: Gemini CLI's projects.json -> {project name: directory}."""
    try:
        data = json.loads(read_foreign(os.path.join(gemini_home, "projects.json"), FOREIGN_JSON_MAX).decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    projects = data.get("projects") if isinstance(data, dict) else None
    if not isinstance(projects, dict):
        return {}
    return {v: k for k, v in projects.items() if isinstance(k, str) and isinstance(v, str)}


def history_codex_names(codex_home):
    """The "codex-db" facts: Codex's own names and facts for its threads: {id: {"name", "branch",
    "turns"}} from
    session_index.jsonl (renames), state_5.sqlite `threads` (name, git_branch) and
    thread_history_1.sqlite `thread_turns` (one row per turn: exact counts). Missing pieces are
    skipped; a database being written is read another time."""
    import sqlite3
    out = {}
    path = os.path.join(codex_home, "session_index.jsonl")
    try:
        fd, st = open_foreign(path)
        try:  # its newest names are at its end: its last MAX_LINE_BYTES (as the watcher's cold read)
            start = max(0, st.st_size - MAX_LINE_BYTES)
            lines = _history_lines(_pread(fd, start, st.st_size - start) + b"\n", start == 0)[0]
        finally:
            os.close(fd)
        for tid, name in parse_codex_session_index(parse_json_lines(lines)[0]).items():
            out.setdefault(tid, {})["name"] = name
    except OSError:
        pass
    db = os.path.join(codex_home, "state_5.sqlite")
    if os.path.exists(db):
        try:
            conn = sqlite_ro(db)
            try:
                have = {row[1] for row in conn.execute("PRAGMA table_info(threads)")}
                cols = [c for c in ("name", "git_branch") if c in have]
                if cols:
                    for row in conn.execute("SELECT id, %s FROM threads" % ", ".join(cols)):
                        d = out.setdefault(row["id"], {})
                        if "name" in cols and isinstance(row["name"], str) and row["name"]:
                            d["name"] = row["name"]
                        if "git_branch" in cols and isinstance(row["git_branch"], str) and row["git_branch"]:
                            d["branch"] = row["git_branch"]
            finally:
                conn.close()
        except sqlite3.Error as e:
            log("history: codex state_5.sqlite not readable now (%s)" % e)
    db = os.path.join(codex_home, "thread_history_1.sqlite")
    if os.path.exists(db):
        try:
            for row in sqlite_rows(db, "SELECT thread_id, count(*) AS n FROM thread_turns GROUP BY thread_id"):
                out.setdefault(row["thread_id"], {})["turns"] = as_number(row["n"], 0, int, low=0)
        except sqlite3.Error as e:
            log("history: codex thread_history_1.sqlite not readable now (%s)" % e)
    return out


def history_preview(entry, n=6, budget=HISTORY_PREVIEW_BYTES):
    """The last n user/assistant messages of a conversation, read on demand from the end of its
    file (at most `budget` bytes, growing from 32 KB until n messages are found) or, for OpenCode,
    its last messages' text parts. -> [{"role", "text"}]. Raises OSError when the file is gone."""
    fmt = AGENT_SPECS[entry.agent].history
    if fmt.kind == "opencode-db":
        return _opencode_preview(entry, n)
    if fmt.kind == "amp-json":
        fd, st = open_foreign(entry.path)
        try:
            if st.st_size > MAX_LINE_BYTES:
                return []
            data = json.loads(_pread(fd, 0, st.st_size).decode("utf-8", "replace"))
        except ValueError:
            return []
        finally:
            os.close(fd)
        messages = data.get("messages") if isinstance(data, dict) and isinstance(data.get("messages"), list) else []
        found = fmt.messages([m for m in messages if isinstance(m, dict)])
        return [{"role": r, "text": t} for r, t in found[-n:]]
    fd, st = open_foreign(entry.path)
    try:
        size, data, start = 32 * 1024, b"", st.st_size
        while True:  # each step reads only the part before what was read: `budget` bytes in all
            new_start = max(0, st.st_size - size)
            data = _pread(fd, new_start, start - new_start) + data
            start = new_start
            lines, _ = _history_lines(data + b"\n", start == 0)
            found = fmt.messages(parse_json_lines(lines)[0])
            if len(found) >= n or start == 0 or size >= budget:
                return [{"role": r, "text": t} for r, t in found[-n:]]
            size = min(budget, size * 4)
    finally:
        os.close(fd)


def _opencode_preview(entry, n):
    """OpenCode: the newest n messages (role from message.data) with their text parts (4 KB each)."""
    conn = sqlite_ro(entry.path)
    try:
        msgs = conn.execute("SELECT id, (instr(data, '\"role\":\"user\"') > 0 OR instr(data, '\"role\": \"user\"') > 0) AS is_user FROM message "
                            "WHERE session_id = ? ORDER BY time_created DESC, id DESC LIMIT ?",
                            (entry.id, n * 3)).fetchall()
        out = []
        for m in reversed(msgs):
            texts = []
            for (data,) in conn.execute("SELECT substr(data, 1, 4096) FROM part WHERE message_id = ? AND "
                                        "(instr(substr(data, 1, 64), '\"type\":\"text\"') > 0 OR instr(substr(data, 1, 64), '\"type\": \"text\"') > 0) ORDER BY id",
                                        (m["id"],)):
                text = _json_string_at(data, "text") if isinstance(data, str) else None
                if text:
                    texts.append(text)
            if texts and "".join(texts).strip():
                out.append({"role": "user" if m["is_user"] else "assistant", "text": preview_text("\n".join(texts))})
        return out[-n:]
    finally:
        conn.close()


def history_drop_flags(agent, flags):
    """Recorded launch flags minus those that must not come back from the picker (its spec's
    HistoryFormat one_shot: one-shot modes, script output formats). Pure."""
    fmt = AGENT_SPECS[agent].history if agent in AGENT_SPECS else None
    values, switches = fmt.one_shot if fmt else ((), ())
    out, skip = [], False
    for a in flags:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in values:
            skip = "=" not in a
            continue
        if a in switches:
            continue
        out.append(a)
    return out


def history_resume_plan(entry, fork=False, exists=None):
    """How to resume (or fork) one conversation: -> {"command", "cwd", "notes"}, the command being
    resurrect's resume_command() (exact id, recorded flags and program where we have them, POSIX
    quoting), or ValueError with the reason it cannot be. `exists(path)` says whether a directory or
    program is still there (os.path.exists by default). A gone directory follows restore's rule:
    agents that resume anywhere (RESUME_ANYWHERE) resume without it; the others say why not."""
    exists = exists or os.path.exists
    rec = {"agent": entry.agent, "id": entry.id, "cwd": entry.cwd,
           "flags": history_drop_flags(entry.agent, list(entry.flags or ())), "program": entry.program}
    notes = []
    if rec["program"] and not exists(rec["program"]):
        notes.append("program %s is gone; using `command %s`" % (rec["program"], entry.agent))
        rec["program"] = None
    if rec["cwd"] and not exists(rec["cwd"]):
        if not AGENT_SPECS[entry.agent].resumes_anywhere:
            raise ValueError("not resuming %s %s: its directory %s is gone (%s resumes a conversation only from its "
                             "project directory)" % (entry.agent, entry.id, resurrect_escape(rec["cwd"]),
                                                     AGENT_SPECS[entry.agent].title))
        notes.append("directory %s is gone; %s resumes by id from elsewhere" % (resurrect_escape(rec["cwd"]),
                                                                                 entry.agent))
        rec["cwd"] = None
    return {"command": resume_command(rec, fork), "cwd": rec["cwd"], "notes": notes}


class CodexFacts(object):
    """The "codex-db" facts: Codex's names, git branches and exact turn counts of its threads
    (history_codex_names), read again when its databases or session_index.jsonl change."""

    def stamp(self, paths):
        home = paths["home"]
        out = [sqlite_stamp(os.path.join(home, db)) for db in ("state_5.sqlite", "thread_history_1.sqlite")]
        return tuple(out + [file_signature(os.path.join(home, "session_index.jsonl"))])

    def read(self, paths):
        return history_codex_names(paths["home"])

    def apply(self, entry, facts):
        history_codex_apply(entry, facts.get(entry.id))


class GeminiProjects(object):
    """The "gemini-projects" facts: Gemini CLI names a project directory by a name of its own;
    projects.json says which directory it is (a chat file holds none)."""

    def stamp(self, paths):
        return file_signature(os.path.join(paths["home"], "projects.json"))

    def read(self, paths):
        return history_gemini_dirs(paths["home"])

    def apply(self, entry, facts):
        if not entry.cwd and entry._dir:
            parts = entry._dir.split(os.sep)  # <home>/tmp/<project>/chats
            entry.cwd = _intern(facts.get(parts[-2])) if len(parts) >= 2 else None
            entry.index_text()


HISTORY_FACTS = {"codex-db": CodexFacts(), "gemini-projects": GeminiProjects()}


def history_scope(cwd, directory):
    """Is cwd the directory or under it? ('/' holds everything.) Pure."""
    if not directory or directory == "/":
        return True
    return bool(cwd) and (cwd == directory or cwd.startswith(directory + "/"))


class History(object):
    """The conversation index of one server. A worker thread builds it (cold start: the saved
    index, then a stat of every conversation file, reading only the changed ones) and refreshes
    what the watchers report; HTTP threads query it; the event loop tells it which conversations
    are live (and with which flags and program they run). Everything shared is under `lock`."""

    def __init__(self, environ=None, path=None, clock=time.time, tmux=None):
        import threading
        self.tmux = tmux  # for @resurrect-dir (where our sidecars recorded flags)
        self.env = dict(os.environ if environ is None else environ)
        self.paths = agent_paths(self.env)
        self.path = path or os.path.join(state_dir(self.env), HISTORY_FILE)
        self.clock = clock
        self.lock = threading.Lock()
        self.entries = {}  # (agent, id) -> HistoryEntry
        self.version = 0
        self.complete = False  # the cold scan has finished
        self.live = {}  # (agent, id) -> {"session", "pane", "status", "pid"} (the loop replaces it whole)
        self.loaded = 0  # entries read from the saved index
        self.removed = 0  # entries whose conversation is confirmed gone since
        self.db_newest = {}  # agent -> the newest time_updated read from its database ("opencode-db")
        self.facts = {}  # agent -> what its facts kind read (HISTORY_FACTS)
        self._facts_stamp = {}  # agent -> its facts' stamp when they were read
        self.stats = {"files": 0, "read": 0, "errors": 0, "seconds": None}
        self._sorted = (-1, [])
        self._found = {}  # (directory, agent, since) -> (version, {typed text: [entries]}): incremental typing
        self._cwd_lower = {}  # directory -> its lower-case form (typing matches directories through it)
        self._plock = threading.Lock()  # guards the two below (the loop adds, the worker takes)
        self._pending = set()  # (agent, id) the watchers reported
        self._launches = {}  # (agent, id) -> pid: a live process to read flags and program from
        self._recorded = set()  # (agent, id, pid) already read (the loop's own)
        self._launched = {}  # (agent, id) -> (flags, program) seen live before its conversation was indexed
        self._wake = threading.Event()
        self._stop = False
        self._stopping = threading.Event()  # set with _stop: ends the batch wait at once
        self._thread = None
        self._dirty_at = None  # monotonic time of the first unsaved change
        self._logged = set()

    # -- the loop's side (cheap: sets and a wake-up) --------------------------------------------
    def start(self):
        import threading
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)
        self._thread.start()

    def stop(self, timeout=5.0):
        self._stop = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def seen(self, agent, tid):
        """The watchers (or a hook) reported this conversation: read it again soon."""
        if valid_thread_id(agent, tid):
            with self._plock:
                self._pending.add((agent, tid))
            self._wake.set()

    def set_live(self, threads):
        """The live threads of the newest /state (alive ones): the live marker, and a process to read
        how they were started from: the program for any thread linked to a pane's agent process, and
        its launch flags only where the link is exact (by pid, not a guess from the directory)."""
        live = {}
        for t in threads:
            if not t.alive:
                continue
            live[t.key] = {"session": t.session, "pane": t.pane, "status": t.status, "pid": t.pid, "link": t.link}
            if t.pid and t.link in ("pid", "cwd") and (t.agent, t.id, t.pid, t.link) not in self._recorded:
                self._recorded.add((t.agent, t.id, t.pid, t.link))
                with self._plock:
                    self._launches[t.key] = (t.pid, t.link == "pid")
                self._wake.set()
        self.live = live

    # -- the worker ----------------------------------------------------------------------------
    def _run(self):
        t0 = time.monotonic()
        try:
            self.load()
            self.scan()
            self.read_sidecars()
        except Exception:
            import traceback
            log("history: cold scan failed:\n" + traceback.format_exc())
        self.stats["seconds"] = round(time.monotonic() - t0, 3)
        if self._stop:  # stopped during the first scan: what was read is kept for the next start
            log("history: stopped while reading (%d conversations so far); saved for the next start"
                % len(self.entries))
            self.save()
            return
        if self._dirty_at is not None or not self.loaded:
            self.save()
        release_memory()
        self.complete = True
        log("history: %d conversations (%d saved, %d files, %d read, %d skipped) in %.3fs"
            % (len(self.entries), self.loaded, self.stats["files"], self.stats["read"], self.stats["errors"],
               self.stats["seconds"]))
        while not self._stop:
            timeout = None
            if self._dirty_at is not None:
                timeout = max(0.0, self._dirty_at + HISTORY_SAVE_QUIET - time.monotonic())
            self._wake.wait(timeout)
            if self._stop:
                break
            # a streaming agent reports every line: one read for the batch (a stop does not wait for it)
            if self._stopping.wait(HISTORY_BATCH):
                break
            self._wake.clear()
            try:
                self._refresh()
            except Exception:
                import traceback
                log("history: refresh failed:\n" + traceback.format_exc())
            if self._dirty_at is not None and time.monotonic() - self._dirty_at >= HISTORY_SAVE_QUIET:
                self.save()
        if self._dirty_at is not None:
            self.save()

    def _guard(self, what, fn, *args):
        try:
            return fn(*args)
        except Exception as e:  # an odd file: skipped, counted, logged once
            self.stats["errors"] += 1
            if what not in self._logged and len(self._logged) < 200:
                self._logged.add(what)
                log("history: skipped %s (%s: %s)" % (what, type(e).__name__, str(e)[:200]))
            return None

    def _changed(self):
        self.version += 1
        if self._dirty_at is None:
            self._dirty_at = time.monotonic()

    def put(self, entry, prev=None):
        """Add or replace one entry (what we recorded of its launch is kept)."""
        with self.lock:
            old = self.entries.get(entry.key) if prev is None else prev
            if old is not None and old is not entry:
                if entry.flags is None:
                    entry.flags = old.flags
                if entry.program is None:
                    entry.program = old.program
                if entry.title is None and old.title:  # (a title is never taken back by its agent)
                    entry.title = old.title
            launched = self._launched.pop(entry.key, None)
            if launched is not None:  # its process was seen live before its file was read
                if launched[0] is not None:
                    entry.flags = tuple(history_drop_flags(entry.agent, launched[0]))
                entry.program = launched[1] or entry.program
            self.entries[entry.key] = entry
            if entry.cwd not in self._cwd_lower:
                self._cwd_lower[entry.cwd] = (entry.cwd or "").lower()
            self._changed()
            if len(self.entries) > HISTORY_MAX:  # the least recently active go (a hundredth at once)
                for e in sorted(self.entries.values(), key=lambda e: e.updated)[:len(self.entries) - HISTORY_MAX * 99 // 100]:
                    del self.entries[e.key]

    def remove(self, key):
        with self.lock:
            if self.entries.pop(key, None) is not None:
                self.removed += 1
                self._changed()

    def scan(self):
        """Every agent's conversations: a file whose inode, size and mtime are those saved is not
        read again; a changed one is read on from where we stopped (an append) or again. A stop
        (the server ending) interrupts it between files."""
        for agent, spec in AGENT_SPECS.items():
            if spec.history is None or self._stop:
                continue
            if spec.history.kind == "opencode-db":
                self._guard("history %s scan" % agent, self._scan_db, agent)
            else:
                self._guard("history %s scan" % agent, self._scan_files, agent)

    def _read_facts(self, agent):
        """The agent's facts (its spec's HistoryFormat.facts kind), read when they changed -> True then."""
        kind = HISTORY_FACTS.get(AGENT_SPECS[agent].history.facts)
        if kind is None:
            return False
        stamp = kind.stamp(self.paths[agent])
        if agent in self.facts and stamp == self._facts_stamp.get(agent):
            return False
        self._facts_stamp[agent] = stamp
        self.facts[agent] = self._guard("%s facts" % agent, kind.read, self.paths[agent]) or self.facts.get(agent) or {}
        return True

    def _scan_files(self, agent):
        errors = set()
        fmt = AGENT_SPECS[agent].history
        self._read_facts(agent)
        by_path = {}
        if fmt.header_id:  # its file names hold only the id's start: its conversations are found by path
            with self.lock:
                by_path = {e.path: e for e in self.entries.values() if e.agent == agent}
        seen = set()  # ids of the conversations whose file is there
        for path, tid in history_files(self.paths, agent, errors):
            if self._stop:
                return  # the server ends: nothing is taken for gone from a scan cut short
            self.stats["files"] += 1
            prev = self.entries.get((agent, tid)) if tid else by_path.get(path)
            entry = self._guard(path, self._read_file, agent, path, tid, prev)
            if entry is not None:
                seen.add(entry.id)
            elif prev is not None:
                seen.add(prev.id)  # unreadable now: kept as it was
        with self.lock:
            mine = [e for e in self.entries.values() if e.agent == agent and e.id not in seen]
        for e in mine:
            if not e.path:
                continue
            directory = os.path.dirname(e.path)
            if directory in errors or os.path.lexists(e.path):
                continue  # not listed (unreadable directory): not known to be gone
            if os.path.isdir(history_root(self.paths, agent)):
                self.remove(e.key)  # confirmed gone (the agent's own tree is there and lists without it)

    def _read_file(self, agent, path, tid, prev):
        """One conversation file -> its entry (put in the index), prev itself when unchanged."""
        if prev is not None and prev.path == path:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            if (prev.ino, prev.size, prev.mtime) == (st.st_ino, st.st_size, st.st_mtime_ns):
                return prev
        self.stats["read"] += 1
        fmt = AGENT_SPECS[agent].history
        read = history_read_amp if fmt.kind == "amp-json" else history_read_jsonl
        entry = read(agent, path, prev) if fmt.kind == "amp-json" else read(agent, path, prev, tid)
        if entry is None:
            return None
        kind = HISTORY_FACTS.get(fmt.facts)
        if kind is not None:
            kind.apply(entry, self.facts.get(agent) or {})
        if entry is not prev:
            other = self.entries.get(entry.key)
            if other is not None and other.path != path and os.path.exists(other.path or "") and \
                    (other.turns, other.size, other.updated) > (entry.turns, entry.size, entry.updated):
                return other  # two files of one conversation (Gemini's resume leaves a same-id stub): the one that grows wins
            self.put(entry, prev)
        return entry

    def _scan_db(self, agent):
        """An agent whose conversations are rows of its database ("opencode-db"): its top-level
        sessions listed (id, time_updated); only the new and changed ones are read in full; a session
        no longer in a database that could be read is gone."""
        import sqlite3
        db = self.paths[agent][AGENT_SPECS[agent].history.under]
        if not os.path.exists(db):
            return
        try:
            listed = {r["id"]: r["time_updated"] for r in sqlite_rows(
                db, "SELECT id, time_updated FROM session WHERE parent_id IS NULL")}
        except sqlite3.Error as e:
            log("history: %s not readable now (%s); its conversations are kept as saved" % (db, e))
            return
        with self.lock:
            mine = {e.id: e for e in self.entries.values() if e.agent == agent}
        for sid, e in mine.items():
            if sid not in listed:
                self.remove(e.key)
        changed = [sid for sid, t in listed.items() if sid not in mine or mine[sid].updated != _epoch_ms(t)]
        self.stats["files"] += len(listed)
        self._read_db(agent, changed)
        newest = [_epoch_ms(t) for t in listed.values()]
        self.db_newest[agent] = max(newest) if newest else 0

    def _read_db(self, agent, ids=None):
        """Its sessions named by ids, or else those changed since the newest one read."""
        db = self.paths[agent][AGENT_SPECS[agent].history.under]
        if ids is not None and not ids:
            return
        newest = self.db_newest.get(agent, 0)
        entries, newest = history_read_opencode(agent, db, ids=ids, since_ms=newest if ids is None else 0)
        self.db_newest[agent] = max(self.db_newest.get(agent, 0), newest)
        self.stats["read"] += len(entries)
        for e in entries:
            self.put(e)

    def _refresh(self):
        """What the watchers reported since the last turn, and the launches to record."""
        with self._plock:
            pending, self._pending = self._pending, set()
            launches, self._launches = self._launches, {}
        agents = {a for a, _ in pending if AGENT_SPECS.get(a) is not None and AGENT_SPECS[a].history is not None}
        for agent in agents:
            fmt = AGENT_SPECS[agent].history
            if fmt.kind == "opencode-db":
                self._guard("%s refresh" % agent, self._read_db, agent)
            elif self._read_facts(agent):  # a rename changes no conversation file: its entries change here
                kind = HISTORY_FACTS[fmt.facts]
                with self.lock:
                    changed = 0
                    for e in [e for e in self.entries.values() if e.agent == agent]:
                        before = (e.title, e.branch, e.turns, e.exact, e.cwd)
                        kind.apply(e, self.facts[agent])
                        changed += before != (e.title, e.branch, e.turns, e.exact, e.cwd)
                    if changed:
                        self._changed()
        for agent, tid in sorted(pending):
            if agent not in agents or AGENT_SPECS[agent].history.kind == "opencode-db":
                continue
            prev = self.entries.get((agent, tid))
            path = prev.path if prev is not None and prev.path else history_locate(self.paths, agent, tid)
            if path:
                self._guard(path, self._read_file, agent, path, tid, prev)
        for key, (pid, exact) in launches.items():
            self._guard("launch of %s:%s" % key, self._record_launch, key, pid, exact)

    def _record_launch(self, key, pid, exact=True):
        """A live conversation's process: the absolute path of its program and, when the process is
        surely this conversation's (exact), its launch flags (launch_flags: no resume flag, no
        prompt), kept with its entry for the picker's resume."""
        agent = key[0]
        args = process_args(pid)
        if not args:
            return
        flags = launch_flags(agent, agent_argv(agent, args))[0] if exact else None
        program = Resurrect(None, self.env)._program(agent, pid, args)
        self.record(key, flags, program)

    def record(self, key, flags, program):
        with self.lock:
            e = self.entries.get(key)
            if e is None:  # a conversation not indexed yet (no file before its first prompt): kept for put()
                if len(self._launched) >= 500:
                    self._launched.pop(next(iter(self._launched)))
                self._launched[key] = (list(flags) if flags is not None else None, program)
                return
            flags = tuple(history_drop_flags(key[0], flags)) if flags is not None else e.flags
            if (flags, program or e.program) != (e.flags, e.program):
                e.flags, e.program = flags, program or e.program
                self._changed()

    def read_sidecars(self, limit=20):
        """Flags and programs our resurrect sidecars recorded, for conversations we have none for yet
        (the newest sidecar first; what a live process shows later wins)."""
        if self.tmux is None:
            return
        d = resurrect_dir(lambda name: _tmux_option(self.tmux, name), self.env)
        names = sorted((n for n in dir_entries(d, ".json") if n.startswith(SIDECAR_PREFIX)), reverse=True)[:limit]
        done = set()
        for name in names:
            try:
                doc = json.loads(read_foreign(os.path.join(d, name), FOREIGN_JSON_MAX).decode("utf-8"))
            except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                continue
            records = doc.get("records") if isinstance(doc, dict) else None
            for rec in records if isinstance(records, list) else ():
                if not isinstance(rec, dict) or record_problem(rec, pane=False):
                    continue
                key = (rec["agent"], rec["id"])
                e = self.entry(*key)
                if key in done or e is None or e.flags is not None:
                    continue
                done.add(key)
                self.record(key, rec.get("flags") or [], rec.get("program"))

    # -- saved index ---------------------------------------------------------------------------
    def load(self):
        """The saved index (history.jsonl: a header line, then one entry per line). A line that is
        not an entry of ours is skipped; a file that is not ours at all is kept aside (.corrupt)."""
        try:
            fd, st = open_foreign(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            log("history: cannot read %s (%s); building the index again" % (self.path, e))
            return
        try:
            f = os.fdopen(fd, "rb")
        except OSError:
            os.close(fd)
            raise
        with f:
            header = f.readline()
            try:
                head = json.loads(header.decode("utf-8"))
                ok = isinstance(head, dict) and head.get("history") == HISTORY_VERSION
            except (ValueError, UnicodeDecodeError):
                ok, head = False, None
            if not ok:
                log("history: %s is not an index of this version; kept as %s.corrupt, building again"
                    % (self.path, self.path))
                try:
                    os.replace(self.path, self.path + ".corrupt")
                except OSError:
                    pass
                return
            newest = head.get("dbNewest") if isinstance(head.get("dbNewest"), dict) else {}
            self.db_newest = {a: as_number(n, 0, int) for a, n in newest.items() if a in AGENT_SPECS}
            entries, bad = {}, 0
            for line in f:
                try:
                    e = HistoryEntry.from_row(json.loads(line.decode("utf-8")))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    e = None
                if e is None:
                    bad += 1
                    continue
                entries[e.key] = e
        if bad:
            log("history: %d unreadable line(s) in %s skipped" % (bad, self.path))
        with self.lock:
            for key, e in entries.items():
                self.entries.setdefault(key, e)
                if e.cwd not in self._cwd_lower:
                    self._cwd_lower[e.cwd] = (e.cwd or "").lower()
            self.loaded = len(entries)
            self.version += 1

    def save(self):
        """Write the index (atomic, 0600, our state dir), a line at a time (never the whole document
        in memory). Never an emptier index by accident: fewer entries than were loaded, beyond those
        confirmed gone, is refused (and logged)."""
        with self.lock:
            entries = list(self.entries.values())
            self._dirty_at = None
            loaded, removed = self.loaded, self.removed
        if len(entries) < loaded - removed:
            log("history: not saving %d conversations over %d saved (only %d confirmed gone)"
                % (len(entries), loaded, removed))
            return False

        def lines():
            yield json.dumps({"history": HISTORY_VERSION, "savedAt": int(self.clock()),
                              "dbNewest": self.db_newest}).encode() + b"\n"
            for e in entries:
                yield encode_json(e.to_row()) + b"\n"
        try:
            ensure_private_dir(os.path.dirname(self.path))
            atomic_write(self.path, lines())
        except (OSError, OpensessionsError) as e:
            log("history: cannot save %s: %s" % (self.path, e))
            return False
        finally:
            release_memory()
        return True

    # -- queries (any thread) ------------------------------------------------------------------
    def sorted_entries(self):
        """-> (version, every entry, most recently active first); sorted again only after a change."""
        with self.lock:
            if self._sorted[0] != self.version:
                import operator
                self._sorted = (self.version, sorted(self.entries.values(), key=operator.attrgetter("updated"),
                                                     reverse=True))
            return self._sorted

    def query(self, directory=None, text="", agent=None, since_ms=None):
        """The entries in scope (directory and below, or all), of that agent, active since
        since_ms, whose title, first prompt, directory or agent hold every word of text
        (case-insensitive). -> [entries], most recent first. Typing one more character filters the
        answer to the text before it, and a backspace finds its answer kept (answers per scope are
        kept until the index changes)."""
        directory = os.path.normpath(directory) if directory else None
        text = text.lower()
        words = text.split()
        scope = (directory, agent, since_ms)
        version, entries = self.sorted_entries()
        with self.lock:
            cached = self._found.get(scope)
            if cached is None or cached[0] != version:
                cached = None
            else:
                found = cached[1]
                if text in found:
                    return found[text]
                prefix = max((t for t in found if text.startswith(t)), key=len, default=None)
        if cached is None:
            base = entries
            if directory not in (None, "/"):
                inside = {}  # per directory string (shared): is it in scope?
                for e in entries:
                    if e.cwd not in inside:
                        inside[e.cwd] = history_scope(e.cwd, directory)
                base = [e for e in entries if inside[e.cwd]]
            if agent is not None:
                base = [e for e in base if e.agent == agent]
            if since_ms is not None:
                base = [e for e in base if e.updated >= since_ms]
            found, prefix = {"": base}, ""
        out, done = found[prefix], prefix.split()
        if words and words != done:
            low = self._cwd_lower
            for w in [w for w in words if w not in done] or words:
                out = [e for e in out if w in e.hay or w in low.get(e.cwd, "")]
        with self.lock:
            if len(found) > 64:
                found = {"": found[""]}
            found[text] = out
            if len(self._found) > 16:
                self._found.clear()
            self._found[scope] = (version, found)
        return out

    def entry(self, agent, tid):
        with self.lock:
            return self.entries.get((agent, tid))

    def find(self, value):
        """'agent:id' or a bare id -> the entry; ValueError with the reason otherwise."""
        if not isinstance(value, str) or not value:
            raise ValueError("'thread' (AGENT:ID or an id) is required")
        agent, sep, tid = value.partition(":")
        if sep:
            if agent not in AGENT_SPECS:
                raise ValueError("%r is no agent (AGENT:ID, AGENT one of %s)" % (agent, ", ".join(AGENT_SPECS)))
            if not valid_thread_id(agent, tid):
                raise ValueError("%r is not a valid %s conversation id" % (tid, agent))
            e = self.entry(agent, tid)
            if e is None:
                raise LookupError("no %s conversation %s in the history" % (agent, tid))
            return e
        with self.lock:
            found = [e for e in self.entries.values() if e.id == value]
        if not found:
            if not any(valid_thread_id(a, value) for a in AGENT_SPECS):
                raise ValueError("%r is not a conversation id" % (value,))
            raise LookupError("no conversation %s in the history" % value)
        if len(found) > 1:
            raise ValueError("%s is the id of several agents' conversations; say AGENT:ID" % value)
        return found[0]

    def to_json(self, e, now=None, prices=None, dir_gone=None):
        live = self.live.get(e.key)
        raw = e.raw_usage()
        usage = usage_json(raw, e.model, prices) if raw else None
        if usage is not None:
            usage["exact"] = bool(e.exact & EXACT_USAGE)
        return {"thread": "%s:%s" % (e.agent, e.id), "agent": e.agent, "id": e.id, "title": e.title,
                "prompt": e.prompt, "cwd": e.cwd, "dirGone": bool(dir_gone), "branch": e.branch,
                "createdAt": e.created, "updatedAt": e.updated, "turns": e.turns,
                "turnsExact": bool(e.exact & EXACT_TURNS), "usage": usage, "model": e.model,
                "live": {"session": live["session"], "pane": live["pane"], "status": live["status"]} if live else None,
                "canFork": bool(AGENT_SPECS[e.agent].fork_args), "recorded": e.flags is not None or e.program is not None}

    def page(self, params, prices=None):
        """GET /api/history: params (already validated) -> the answer document."""
        since = params.get("since")
        found = self.query(params.get("dir"), params.get("q") or "", params.get("agent"), since)
        offset, limit = params.get("offset", 0), params.get("limit", 50)
        shown = found[offset:offset + limit]
        gone = {}
        for e in shown:
            if e.cwd and e.cwd not in gone:
                gone[e.cwd] = not os.path.isdir(e.cwd)
        return {"total": len(found), "offset": offset, "limit": limit, "complete": self.complete,
                "count": len(self.entries),
                "threads": [self.to_json(e, prices=prices, dir_gone=gone.get(e.cwd)) for e in shown]}

    # -- the API's side ------------------------------------------------------------------------
    def conversation_exists(self, e):
        """Its file (or OpenCode row) is still there: what restore checks before typing."""
        fmt = AGENT_SPECS[e.agent].history
        if fmt.kind == "opencode-db":
            import sqlite3
            try:
                return bool(sqlite_rows(e.path or self.paths[e.agent][fmt.under], "SELECT 1 FROM session WHERE id = ?",
                                        (e.id,)))
            except sqlite3.Error:
                return False
        return bool(e.path) and os.path.isfile(e.path)

    def api_resume(self, body, store, tmux):
        """POST /api/resume, on the event loop: checks (body, conversation, live thread, how to resume
        it) -> the answer, or a function that does the tmux part off the loop and returns it."""
        thread, fork, target, session = history_resume_request(body)
        try:
            e = self.find(thread)
        except ValueError as ex:
            raise ApiError(400, str(ex))
        except LookupError as ex:
            raise ApiError(404, str(ex))
        answer = {"thread": "%s:%s" % e.key, "agent": e.agent, "id": e.id, "fork": fork}
        t = store.threads.get(e.key)
        if t is not None and t.alive and not fork:
            # a live thread is never resumed twice: its pane is the answer
            if t.pane and store.session_of_pane(t.pane):
                return dict(answer, action="jumped", pane=t.pane, session=store.session_of_pane(t.pane)[0]["name"])
            raise ApiError(409, "%s %s is running%s outside this tmux server's panes; not resuming it twice"
                           % (e.agent, e.id, " (pid %d)" % t.pid if t.pid else ""))
        try:
            plan = history_resume_plan(e, fork)
        except ValueError as ex:
            log("history: %s %s refused: %s" % ("fork" if fork else "resume", answer["thread"], ex))
            raise ApiError(409, str(ex))
        if not self.conversation_exists(e):
            raise ApiError(409, "%s conversation %s no longer exists" % (e.agent, e.id))
        answer.update(action="forked" if fork else "resumed", command=plan["command"], notes=plan["notes"])
        if target == "command":
            return dict(answer, action="command")
        if target.startswith("%"):
            if store.session_of_pane(target) is None:
                raise ApiError(404, "no pane %s" % target)
            return lambda: self._tmux_part(self._type_into, tmux, target, answer)
        names = [s["name"] for s in store.visible_sessions()]
        if session is None:
            clients = [c for c in store.clients if not c.get("control") and c.get("session") in names]
            session = clients[0]["session"] if clients else (names[0] if names else None)
        if session is None or session not in names:
            raise ApiError(404, "no tmux session %s to open a window in" % (session or "(none)"))
        home = home_dir(self.env)
        return lambda: self._tmux_part(self._new_window, tmux, session, plan["cwd"] or home, answer)

    def _tmux_part(self, fn, *args):
        try:
            return fn(*args)
        except TmuxError as e:
            raise ApiError(409, "tmux: %s" % e)

    def _type_into(self, tmux, pane, answer):
        """Type the command into a pane that is an idle shell (the same judgement as restore's)."""
        out = tmux.run("display-message", "-p", "-t", pane, "#{pane_current_command}" + FS + "#{pane_pid}")
        command, _, pid = out.rstrip("\n").partition(FS)
        if command not in SHELLS:
            raise ApiError(409, "pane %s is busy with %s (not an idle shell); not typing into it"
                           % (pane, resurrect_escape(command)))
        table = process_table()
        running = agent_in_tree(as_number(pid, 0, int, text=True), table, children_index(table))
        if running:
            raise ApiError(409, "pane %s is busy with %s (pid %d); not typing into it" % (pane, running[0], running[1]))
        tmux.run("send-keys", "-t", pane, "-l", answer["command"])
        tmux.run("send-keys", "-t", pane, "Enter")
        log("history: %s %s in pane %s: %s" % (answer["action"], answer["thread"], pane, answer["command"]))
        return dict(answer, pane=pane)

    def _new_window(self, tmux, session, cwd, answer):
        """A new window in the session, in the conversation's directory; the command is typed once
        its shell shows a prompt (as restore does)."""
        out = tmux.run("new-window", "-d", "-P", "-F", "#{pane_id}" + FS + "#{window_id}", "-t", "=%s:" % session,
                       "-c", tmux_literal(cwd))
        pane, _, window = out.strip("\n").partition(FS)
        if not Resurrect(tmux, self.env).wait_for_prompt(pane):
            log("history: no prompt in the new window %s after 10 s; typing anyway" % pane)
        tmux.run("send-keys", "-t", pane, "-l", answer["command"])
        tmux.run("send-keys", "-t", pane, "Enter")
        log("history: %s %s in a new window %s of %s: %s" % (answer["action"], answer["thread"], window,
                                                             resurrect_escape(session), answer["command"]))
        return dict(answer, pane=pane, window=window, session=session)

    def api_preview(self, thread, n=6):
        """GET /api/history/preview: the last n messages of a conversation (read off the loop)."""
        try:
            e = self.find(thread)
        except ValueError as ex:
            raise ApiError(400, str(ex))
        except LookupError as ex:
            raise ApiError(404, str(ex))
        try:
            messages = history_preview(e, n)
        except (OSError, ValueError) as ex:
            raise ApiError(409, "cannot read %s %s: %s" % (e.agent, e.id, resurrect_escape(str(ex))))
        except Exception as ex:  # sqlite3.Error and what no parser expected
            raise ApiError(409, "cannot read %s %s: %s" % (e.agent, e.id, type(ex).__name__))
        return {"thread": "%s:%s" % e.key, "messages": messages}

    def api_query(self, query, prices=None, pane_of=None):
        """GET /api/history (query: parse_qs of its query string) -> the answer document. With
        pane=%N (the picker's first request) the scope is that pane's directory, and the answer says
        which directory and session that is (pane_of(pane) -> (cwd, session) or None)."""
        params = history_query_params(query, now_ms(self.clock))
        where = pane_of(params["pane"]) if params.get("pane") and pane_of else None
        if where and not params.get("dir") and not params["all"]:
            params["dir"] = where[0]
        doc = self.page(params, prices)
        doc["dir"] = params.get("dir")
        if where:
            doc["session"] = where[1]
        return doc

    def api_preview_query(self, query):
        """GET /api/history/preview?thread=AGENT:ID&n=N (1-20, default 6)."""
        n = as_number((query.get("n") or ["6"])[0], 0, int, text=True)
        if not 1 <= n <= 20:
            raise ApiError(400, "'n' must be 1..20")
        return self.api_preview((query.get("thread") or [""])[0], n)

    def health(self):
        return {"conversations": len(self.entries), "complete": self.complete, "seconds": self.stats["seconds"],
                "skipped": self.stats["errors"]}


_PANE_ID_RE = LazyPattern(r"^%[0-9]{1,9}$")


def history_since(text, now_ms_):
    """'7d', '12h', '30m', '2w' -> epoch ms (None for ''); ValueError otherwise. Pure."""
    if text in (None, ""):
        return None
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", text)
    if not m:
        raise ValueError("'since' takes a duration such as 7d, 12h or 30m")
    return int(now_ms_ - float(m.group(1)) * {"m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)] * 1000)


def history_query_params(query, now_ms_):
    """GET /api/history's query string (parse_qs) -> validated params, or ApiError(400). Pure."""
    def one(name, default=None):
        values = query.get(name)
        if not values:
            return default
        if len(values) > 1:
            raise ApiError(400, "'%s' is given more than once" % name)
        return values[0]
    out = {}
    directory = one("dir")
    every = one("all") in ("1", "true", "yes")
    if directory and not every:
        if len(directory) > 4096 or "\x00" in directory or not directory.startswith("/"):
            raise ApiError(400, "'dir' must be an absolute directory")
        out["dir"] = directory
    pane = one("pane")
    if pane:
        if not _PANE_ID_RE.match(pane):
            raise ApiError(400, "'pane' must be a pane id such as %12")
        out["pane"] = pane
    out["all"] = every
    q = one("q", "")
    if len(q) > 1000:
        raise ApiError(400, "'q' is longer than 1000 characters")
    out["q"] = q
    agent = one("agent")
    if agent:
        if agent not in AGENT_SPECS:
            raise ApiError(400, "'agent' must be one of %s" % ", ".join(AGENT_SPECS))
        out["agent"] = agent
    for name, default, high in (("limit", 50, 500), ("offset", 0, 10 ** 7)):
        raw = one(name)
        value = default if raw in (None, "") else as_number(raw, None, int, text=True)
        if value is None or not (0 if name == "offset" else 1) <= value <= high:
            raise ApiError(400, "'%s' must be a whole number from %d to %d" % (name, 0 if name == "offset" else 1, high))
        out[name] = value
    try:
        out["since"] = history_since(one("since"), now_ms_)
    except ValueError as e:
        raise ApiError(400, str(e))
    return out


def history_resume_request(body):
    """POST /api/resume's body -> (thread, fork, target, session), or ApiError(400). target is
    "window" (a new window: in `session`, else the session a client shows), a pane id ("%12": typed
    there if it is an idle shell) or "command" (nothing is run: the command is answered). Pure."""
    thread = body.get("thread")
    if thread is None or thread == "":
        raise ApiError(400, "'thread' (AGENT:ID, as /api/history lists it) is required")
    if not isinstance(thread, str) or len(thread) > 200:
        raise ApiError(400, "'thread' must be a string, AGENT:ID as /api/history lists it (got %s)"
                       % (type(thread).__name__ if not isinstance(thread, str) else "%d characters" % len(thread)))
    fork = body.get("fork", False)
    if not isinstance(fork, bool):
        raise ApiError(400, "'fork' must be true or false")
    target = body.get("target", "window")
    if target is None:
        target = "window"
    if not isinstance(target, str) or not (target in ("window", "command") or _PANE_ID_RE.match(target)):
        raise ApiError(400, "'target' must be \"window\", \"command\" or a pane id such as \"%12\"")
    session = body.get("session")
    if session is not None and (not isinstance(session, str) or not session or len(session) > 256
                                or CONTROL_CHARS.search(session)):
        raise ApiError(400, "'session' must be a tmux session name")
    return thread, fork, target, session


##############################################################################
# Sidebar
##############################################################################

# The sidebar is a thin curses layer over a pure model: SidebarModel turns keys into actions,
# render() turns a state snapshot into lines of (text, style) pieces. Only SidebarApp touches
# curses, sockets and tmux.

DEFAULT_THEME = "catppuccin-mocha"
THEME_KEYS = ("bg", "fg", "muted", "accent", "sel", "running", "waiting", "error", "done", "unseen", "interrupted")
TONE_STYLE = {"neutral": "fg", "info": "accent", "success": "done", "warn": "waiting", "error": "error"}
FILTERS = ("all", "agents", "attention")
HELP_KEYS = (
    ("j/k", "move (also the arrow keys)"),
    ("Enter", "switch to the session or thread"),
    ("Tab", "next session (S-Tab: previous)"),
    ("1-9", "switch to session N, as prefix o N"),
    ("J/K", "move the session down/up"),
    ("d/u", "hide the session / show hidden ones"),
    ("n", "new session (name, then directory)"),
    ("x", "kill the session (asks first)"),
    ("o", "open the session's port (or click it)"),
    ("t", "pick a theme (it holds until @opensessions-theme changes)"),
    ("/", "filter by name"),
    ("f", "show all / with agents / needing you"),
    ("m", "mute the session's notifications"),
    ("y/Y/N", "thread: approve/always/deny"),
    ("i", "thread: type it a prompt"),
    ("?", "this help"),
    ("q/Esc", "leave the sidebar"),
)
# The popup's own keys: only these act there (the sidebar's session keys do nothing in it)
POPUP_HELP_KEYS = (
    ("j/k", "move (also the arrow keys)"),
    ("Enter", "go to the thread's pane (closes the popup)"),
    ("y/Y/N", "approve once / always / deny its permission prompt"),
    ("i", "type the thread a prompt (Enter sends, Esc cancels)"),
    ("Tab", "the history tab: every past conversation (as prefix o r; its ? lists its keys)"),
    ("?", "this help"),
    ("q/Esc", "close the popup"),
)
# keys of tmux's prefix table, not of the sidebar (in the key column, "o g" read as o, then g: o opens a port)
HELP_PREFIX_NOTE = ("from any pane: prefix o g the agents popup, prefix o r every past conversation (find, "
                    "resume, fork), prefix o ? all prefix o keys")
PROMPT_HELP = "typing: C-a/C-e start/end, C-u/C-k cut before/after, C-w cut a word"
PROMPT_HELP_DIR = ", Tab completes a directory, ~ is your home"
# (glyph key, meaning) for the help's legend; "spinner" is the running animation
HELP_LEGEND = (
    ("spinner", "working"), ("retry", "retrying after an error"), ("waiting", "waiting for you"),
    ("error", "stopped on an error"), ("interrupted", "interrupted"),
    ("done-unseen", "finished, not seen yet"), ("done", "finished"), ("idle", "idle"),
    ("open", "a host: Enter folds it"),
)
# (glyph key or literal text, meaning): every mark a session's row and the rows under it can show
HELP_ROW_LEGEND = (
    ("cursor", "the cursor (j/k move it)"),
    ("current", "the session you are in"),
    ("1-9", "its number: prefix o N"),
    ("$0.28", "what its agents cost"),
    ("badges", "a mark per agent thread:"),
)
HELP_ROW_LEGEND_AFTER = (
    ("unseen", "apart: news you have not seen (goes when you look)"),
    ("m", "notifications muted"),
    ("", "the rows under it:"),
    ("main*", "git branch; * uncommitted changes"),
    ("[..]", "status pill (set-status)"),
    ("bar", "progress (set-progress)"),
    ("log", "newest log line, by tone"),
)


def hex_to_rgb(value):
    value = value.lstrip("#")
    return tuple(int(value[i:i + 2], 16) for i in (0, 2, 4))


def rgb_to_256(rgb):
    """Nearest xterm-256 colour (cube or grey ramp)."""
    def cube(v):
        return 0 if v < 48 else 1 if v < 115 else (v - 35) // 40
    r, g, b = (cube(c) for c in rgb)
    levels = (0, 95, 135, 175, 215, 255)
    cube_rgb = (levels[r], levels[g], levels[b])
    grey = max(0, min(23, (sum(rgb) // 3 - 8) // 10))
    grey_v = 8 + grey * 10

    def dist(a):
        return sum((x - y) ** 2 for x, y in zip(a, rgb))
    if dist((grey_v,) * 3) < dist(cube_rgb):
        return 232 + grey
    return 16 + 36 * r + 6 * g + b


def rgb_to_8(rgb):
    """One of the 8 basic colours (curses numbering: black red green yellow blue magenta cyan white),
    chosen by hue so that pastel theme colours keep their meaning (red stays red)."""
    import colorsys
    h, l, s = colorsys.rgb_to_hls(*(c / 255.0 for c in rgb))
    if s < 0.25 or l > 0.93 or l < 0.08:
        return 7 if l >= 0.5 else 0
    hue = h * 360
    # red, yellow, green, cyan, blue, magenta at 0, 60, 120, 180, 240, 300 degrees
    slots = ((0, 1), (60, 3), (120, 2), (180, 6), (240, 4), (300, 5), (360, 1))
    return min(slots, key=lambda sl: abs(sl[0] - hue))[1]


def resolve_theme(name, overrides=None):
    """A theme's colours, with user overrides (hex strings) from the config file."""
    theme = dict(THEMES.get(name) or THEMES[DEFAULT_THEME])
    for key, value in (overrides or {}).items():
        if key in THEME_KEYS and isinstance(value, str) and re.match(r"^#[0-9a-fA-F]{6}$", value):
            theme[key] = value
    return theme


def theme_colors(theme, ncolors):
    """Curses colour numbers (fg, bg) for each (style, selected): the theme's own background is
    painted, and no text is drawn in the colour behind it (on 8 colours a theme's muted grey and
    its background both become black, and its selection colour the background's). Pure."""
    few = ncolors < 256

    def conv(hexv):
        return rgb_to_8(hex_to_rgb(hexv)) if few else rgb_to_256(hex_to_rgb(hexv))
    def grey(hexv):  # 8 colours: plain text and backgrounds go by lightness (a pastel text is not blue)
        return (7 if sum(hex_to_rgb(hexv)) >= 3 * 128 else 0) if few else conv(hexv)
    bg, sel, fg = grey(theme["bg"]), grey(theme["sel"]), grey(theme["fg"])
    if few and sel == bg:
        sel = 7 if bg == 0 else 0  # a selected row must still stand out
    out = {}
    for key in THEME_KEYS:
        for selected in (False, True):
            back = sel if selected or key == "sel" else bg
            fore = conv(theme[key]) if key not in ("bg", "sel", "fg") else fg
            if fore == back:
                fore = fg if fg != back else (7 if back == 0 else 0)
            out[(key, selected)] = (fore, back)
    return out


def display_width(text):
    """Terminal cells a string takes (wide East Asian characters take two). ASCII: one a character."""
    if text.isascii():
        return len(text)
    import unicodedata
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
               for ch in text)


def fit(text, width, more="…"):
    """Cut text to width cells, marking the cut."""
    if width <= 0:
        return ""
    if display_width(text) <= width:
        return text
    if text.isascii() and more.isascii():
        return text[:width - len(more)] + more if width >= len(more) else ""
    out, used = "", 0
    limit = width - display_width(more)
    for ch in text:
        w = display_width(ch)
        if used + w > limit:
            break
        out += ch
        used += w
    return out + more if limit >= 0 else out[:width]


def ascii_safe(text):
    """Plain ASCII for terminals whose locale is not UTF-8."""
    return text.encode("ascii", "replace").decode("ascii")


def age_text(ms, now):
    secs = max(0, (now - ms) // 1000) if ms else None
    if secs is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return "%d%s" % (secs // size, unit)
    return "%ds" % secs


def session_needs_attention(s):
    return s.get("state") in ("error", "waiting", "interrupted", "done-unseen") or bool(s.get("unseen"))


def wrap(text, width):
    """Word-wrap text to lines of at most width cells (words longer than a line are cut). Pure."""
    width = max(1, width)
    lines, cur = [], ""
    for word in text.split():
        while display_width(word) > width:
            room = width - display_width(cur) - (1 if cur else 0)
            if room <= 0:
                lines.append(cur)
                cur = ""
                continue
            head, used = "", 0
            for ch in word:
                if used + display_width(ch) > room:
                    break
                head += ch
                used += display_width(ch)
            cur = (cur + " " + head) if cur else head
            lines.append(cur)
            cur, word = "", word[len(head):]
        if not cur:
            cur = word
        elif display_width(cur) + 1 + display_width(word) <= width:
            cur += " " + word
        else:
            lines.append(cur)
            cur = word
    if cur or not lines:
        lines.append(cur)
    return lines


def terminal_charset(environ, python_chose_utf8=False):
    """'unicode' or 'ascii' from the locale the terminal has (LC_ALL, LC_CTYPE, LANG, as the C
    library reads them), not from Python's preferred encoding. Under LANG=C Python turns on its
    UTF-8 mode by itself and sets LC_CTYPE=C.UTF-8 in its own environment (PEP 538, 540):
    `python_chose_utf8` says it did, and then the terminal's locale was C. Pure."""
    if python_chose_utf8:
        return "ascii"
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = environ.get(name)
        if value:
            return "unicode" if re.search(r"utf-?8", value, re.I) else "ascii"
    return "ascii"


def _python_chose_utf8(environ):
    """True when this Python runs in UTF-8 mode because its start-up locale was C or POSIX (not
    because PYTHONUTF8 or -X utf8 asked for it; from 3.15 the mode is the default and says nothing)."""
    return bool(sys.flags.utf8_mode) and not environ.get("PYTHONUTF8") and \
        "utf8" not in getattr(sys, "_xoptions", {}) and sys.version_info < (3, 15)


class SidebarModel(object):
    """What the sidebar shows and how keys change it. Pure: keys in, actions out.

    Actions are tuples the curses layer carries out: ("switch", session name), ("switch-pane",
    session, pane id), ("ui", body) for the server's /ui, ("mute", session), ("kill", session),
    ("new", name, directory), ("open", port), ("complete", text) (Tab in the directory prompt: the app
    lists directories and calls complete()), ("leave",), ("quit",).
    The key "FOCUS" (sent by `opensessions focus`) selects the session this sidebar is in.
    """

    def __init__(self, own_session=None, charset="unicode", popup=False):
        self.state = None
        self.popup = popup  # the agents popup (prefix o g): every thread, grouped by what needs you
        self.preview = None  # {"item": thread item, "lines": [...]}: the selected thread's pane
        self.preview_wanted = None  # the thread item render() had room to preview (the app reads it)
        self.own_session = own_session
        self.charset = charset
        self.selected = None  # ("session", name) or ("thread", session, agent, id)
        self.scroll = 0
        self.help_scroll = 0
        self.filter_text = ""
        self.filter_mode = "all"
        self.mode = "list"  # list | help | theme | prompt | confirm
        self.prompt = None  # {"label", "text", "step", "values"}
        self.confirm = None
        self.theme_index = None  # the theme picker's row; None: the current theme's, until a move
        self._message = None  # the footer's line, and what it was about (see say)
        self._message_about = None
        self.frame = 0
        self.connected = False
        self.stopped = None  # the line to show while the server is stopped on purpose
        self._selected_own = None  # the own session we last selected by ourselves

    # -- what the app tells it (the app sets no field of the model directly) --------------------
    def receive(self, state, own_session=None):
        """A new /state snapshot, and the session this sidebar's pane is in now (None: unknown)."""
        if own_session is not None:
            self.own_session = own_session
        self.set_state(state)

    def set_connected(self, connected):
        self.connected = bool(connected)

    def server_stopped(self, line):
        """The server was stopped on purpose (`line`: what to show, nothing stale with it), or
        runs again (None)."""
        self.stopped = line
        if line:
            self.state = None  # what it showed is no longer followed

    def set_preview(self, item, lines=(), error=None):
        """The last lines of a thread's pane, or why there are none."""
        self.preview = {"item": item, "lines": list(lines)}
        if error:
            self.preview["error"] = error

    def tick(self):
        """The next frame of the spinner."""
        self.frame += 1

    def viewed(self, view):
        """What the last render showed (render_view's view): the list's and the help's scroll, and
        the thread whose pane the preview wants (None: none is shown, none is read)."""
        self.scroll, self.help_scroll, self.preview_wanted = view["scroll"], view["help_scroll"], view["preview"]

    # -- data --------------------------------------------------------------------------------
    def set_state(self, state):
        self.state = state
        self.connected = True
        items = self.items()
        own = ("session", self.own_session) if self.own_session else None
        if own in items and self._selected_own != self.own_session:
            # a new sidebar, or one that moved to another session: start on the session it is in
            self.selected = own
            self._selected_own = self.own_session
        elif self.selected not in items:
            self.selected = own if own in items else (items[0] if items else None)
        self._expire_message()

    # -- the footer's message: it belongs to the moment --------------------------------------
    @property
    def message(self):
        return self._message

    @message.setter
    def message(self, text):
        self.say(text)

    def say(self, text, answered=False):
        """Put a line in the footer about what is selected now. It goes at the next key, when the
        selection moves, and when the thread it was about changes (a new prompt, a new status).
        answered: the result of a reply sent to the selected thread, whose first change (leaving
        the prompt it answered) is the reply's own effect and keeps the line."""
        self._message = text
        item = self.selected
        self._message_about = (item, self._signature(item), answered) if text else None

    def _signature(self, item):
        """What a message about `item` depends on: a thread's status (and what it waits for or
        failed on); None for anything else."""
        if not item or item[0] != "thread":
            return None
        t = self._thread(item)
        if t is None:
            return ("gone",)
        return (t["status"], t.get("detail") if t["status"] in ("waiting", "error") else None)

    def _expire_message(self):
        about = self._message_about
        if self._message is None or about is None or about[1] is None or self.mode in ("confirm", "prompt"):
            return
        item, sig, answered = about
        now = self._signature(item)
        if now == sig:
            return
        if answered and now[0] not in ("waiting", "gone"):
            self._message_about = (item, now, False)  # the reply's own effect: the next change clears it
            return
        self._message = self._message_about = None

    def ui(self):
        return (self.state or {}).get("ui") or {}

    def current_session(self):
        """The session this sidebar's client is in (the highlighted one)."""
        return self.own_session

    def listed(self):
        """Every session the list can show, in the user's order (hidden ones left out): the order
        `prefix o N` and the numbers use, whatever the filter."""
        return [s for s in (self.state or {}).get("sessions", []) if not s.get("hidden")]

    def number(self, name):
        """The number shown beside a session (1-9, as `prefix o N`: this machine's sessions), or None."""
        names = [s["name"] for s in self.listed() if not s.get("host")]
        n = names.index(name) + 1 if name in names else 0
        return n if 1 <= n <= 9 else None

    def sessions(self):
        """Sessions in the user's order, hidden ones, filtered ones and those of collapsed hosts
        left out (this machine's first, then each host's)."""
        out = []
        collapsed = set(self.ui().get("collapsed") or ())
        for s in self.listed():
            if s.get("host") in collapsed:
                continue
            if self.filter_text and self.filter_text.lower() not in s["name"].lower():
                continue
            if self.filter_mode == "agents" and not s.get("threads"):
                continue
            if self.filter_mode == "attention" and not (session_needs_attention(s) or any(
                    t["status"] in ACTIVE_STATUSES for t in s.get("threads", []))):
                continue
            out.append(s)
        return out

    def groups(self):
        """[(None, this machine's sessions), (host, its sessions), ...] as sessions() shows them;
        every host has its group (its header shows how it is reached), collapsed or not."""
        shown = self.sessions()
        out = [(None, [s for s in shown if not s.get("host")])]
        for h in (self.state or {}).get("hosts") or ():
            out.append((h, [s for s in shown if s.get("host") == h["name"]]))
        return out

    def items(self):
        """Selectable rows: every session, and the threads of the selected session (in the popup:
        every thread, group by group); each host's header before its sessions."""
        if self.popup:
            return [("thread", name, t["agent"], t["id"]) for _, rows in popup_groups(self.state)
                    for name, t in rows]
        out = []
        sel_session = self.selected[1] if self.selected else None
        for host, sessions in self.groups():
            if host is not None:
                out.append(("host", host["name"]))
            for s in sessions:
                out.append(("session", s["name"]))
                threads = s.get("threads", [])
                if self.filter_mode == "attention":
                    threads = [t for t in threads if t["status"] in ACTIVE_STATUSES + ("waiting", "error")
                               or t.get("unseen")]
                elif s["name"] != sel_session:
                    threads = []
                out.extend(("thread", s["name"], t["agent"], t["id"]) for t in threads)
                if s["name"] == sel_session and self.filter_mode != "attention":
                    out.extend(item for item, _ in pane_tree(s))
        return out

    def host(self, name):
        return next((h for h in (self.state or {}).get("hosts") or () if h["name"] == name), None)

    def session(self, name):
        return next((s for s in (self.state or {}).get("sessions", []) if s["name"] == name), None)

    def selected_session(self):
        return self.session(self.selected[1]) if self.selected else None

    def selected_thread(self):
        return self._thread(self.selected)

    def _thread(self, item):
        if not item or item[0] != "thread":
            return None
        s = self.session(item[1])
        return next((t for t in (s or {}).get("threads", []) if (t["agent"], t["id"]) == item[2:]), None)

    # -- keys --------------------------------------------------------------------------------
    def key(self, k):
        """Handle one key (a curses key name such as 'j', 'KEY_DOWN', '\\n', 'KEY_BTAB'). -> actions."""
        self.say(None)
        if k == "FOCUS":
            return self._focus()
        handler = {"prompt": self._prompt_key, "confirm": self._confirm_key, "help": self._help_key,
                   "theme": self._theme_key}.get(self.mode, self._list_key)
        return handler(k)

    # list mode: key -> method name; a method takes the key and returns actions (or None)
    LIST_KEYS = {"j": "_move", "KEY_DOWN": "_move", "k": "_move", "KEY_UP": "_move",
                 "\t": "_cycle", "KEY_BTAB": "_cycle", "\n": "activate", "\r": "activate", "KEY_ENTER": "activate",
                 "J": "_reorder_key", "K": "_reorder_key", "kDN3": "_reorder_key", "kUP3": "_reorder_key",
                 "d": "_hide", "u": "_unhide", "n": "_new", "x": "_kill", "o": "_open", "t": "_themes",
                 "/": "_filter", "f": "_filter_mode", "m": "_mute", "?": "_help", "q": "_quit", "\x1b": "_quit",
                 "y": "_reply", "Y": "_reply", "N": "_reply", "i": "_reply_text"}
    # the popup's own keys: every other key (the sidebar's session keys) does nothing there
    POPUP_KEYS = {"j": "_move", "KEY_DOWN": "_move", "k": "_move", "KEY_UP": "_move",
                  "\n": "activate", "\r": "activate", "KEY_ENTER": "activate",
                  "y": "_reply", "Y": "_reply", "N": "_reply", "i": "_reply_text", "?": "_help",
                  "q": "_close", "\x1b": "_close"}
    REPLY_KEYS = {"y": "approve", "Y": "approve-always", "N": "deny"}

    def _list_key(self, k):
        if len(k) == 1 and k in "123456789" and not self.popup:
            return self._number_key(k)
        name = (self.POPUP_KEYS if self.popup else self.LIST_KEYS).get(k)
        if name is None:
            return []
        if name == "activate":
            return self.activate()
        return getattr(self, name)(k) or []

    def _focus(self):
        self.mode, self.prompt = "list", None
        if self.own_session:
            self.filter_text = ""
            self._reselect()
            if ("session", self.own_session) in self.items():
                self.selected = ("session", self.own_session)
        return []

    def _confirm_key(self, k):
        self.mode = "list"
        if k in ("y", "Y"):
            return [self.confirm]
        self.message = "cancelled"
        return []

    def _help_key(self, k):
        if k in ("j", "KEY_DOWN", " ", "KEY_NPAGE"):
            self.help_scroll += 1 if k in ("j", "KEY_DOWN") else 10
        elif k in ("k", "KEY_UP", "KEY_PPAGE"):
            self.help_scroll = max(0, self.help_scroll - (1 if k != "KEY_PPAGE" else 10))
        else:
            self.mode = "list"
        return []

    def _move(self, k):
        items = self.items()
        idx = items.index(self.selected) if self.selected in items else 0
        self._select(items, idx + (1 if k in ("j", "KEY_DOWN") else -1))

    def _cycle(self, k):
        sessions = [i for i in self.items() if i[0] == "session"]
        if sessions:
            names = [i[1] for i in sessions]
            cur = self.selected[1] if self.selected else None
            pos = names.index(cur) if cur in names else -1
            self.selected = sessions[(pos + (1 if k == "\t" else -1)) % len(names)]

    def _number_key(self, k):
        """1-9: the session with that number, as `prefix o N` (the same numbers in any filter)."""
        listed = [s for s in self.listed() if not s.get("host")]
        n = int(k) - 1
        if n >= len(listed):
            self.message = "no session number %s" % k
            return []
        name = listed[n]["name"]
        if ("session", name) in self.items():
            self.selected = ("session", name)
        return [("switch", name)]

    def _reorder_key(self, k):
        return self._reorder(1 if k in ("J", "kDN3") else -1)

    def _hide(self, k):
        s = self.selected_session()
        if s:
            hidden = sorted(set(self.ui().get("hidden", [])) | {s["name"]})
            self.message = "hid %s (u shows hidden sessions)" % s["name"]
            return [("ui", {"hidden": hidden})]

    def _unhide(self, k):
        if self.ui().get("hidden"):
            return [("ui", {"hidden": []})]
        self.message = "no hidden sessions"

    def _new(self, k):
        self.mode = "prompt"
        self.prompt = {"label": "new session name", "text": "", "step": "name", "values": {}}

    def _kill(self, k):
        s = self.selected_session()
        if s and s.get("host"):
            self.message = "%s is on %s: kill it there (Enter opens it)" % (s["remoteName"], s["host"])
        elif s:
            self.mode = "confirm"
            self.confirm = ("kill", s["name"])
            self.message = "kill session %s? (y/n)" % s["name"]

    def _open(self, k):
        s = self.selected_session()
        if s and s.get("host") and s.get("ports"):
            self.message = "port :%d listens on %s (no ssh forwards are made)" % (s["ports"][0], s["host"])
        elif s and s.get("ports"):
            return [("open", s["ports"][0])]
        self.message = "no listening port in this session"

    def _themes(self, k):
        self.mode = "theme"
        self.theme_index = None  # on the current theme, even if the state saying which arrives later

    def theme_row(self):
        """The theme picker's row: where the user moved it, else the current theme's."""
        if self.theme_index is not None:
            return self.theme_index
        names = sorted(THEMES)
        current = self.ui().get("theme") or DEFAULT_THEME
        return names.index(current) if current in names else 0

    def _filter(self, k):
        self.mode = "prompt"
        self.prompt = {"label": "filter", "text": self.filter_text, "step": "filter", "values": {}}

    def _filter_mode(self, k):
        self.filter_mode = FILTERS[(FILTERS.index(self.filter_mode) + 1) % len(FILTERS)]
        self.message = "showing: %s" % self.filter_mode
        self._reselect()

    def _mute(self, k):
        s = self.selected_session()
        if s:
            return [("mute", s["name"])]

    def _help(self, k):
        self.mode = "help"
        self.help_scroll = 0

    def _close(self, k):
        return [("quit",)]

    def _quit(self, k):
        if self.filter_text:
            self.filter_text = ""
            self._reselect()
            return []
        return [("leave",)]

    def _select(self, items, idx):
        if items:
            self.selected = items[max(0, min(len(items) - 1, idx))]

    def _reselect(self):
        items = self.items()
        if self.selected not in items:
            self.selected = items[0] if items else None

    def _reply(self, k):
        """y / Y / N: approve once, approve always, deny the selected thread's permission prompt."""
        t = self.selected_thread()
        if t is None:
            self.message = "select an agent thread first"
            return []
        if t["status"] != "waiting":
            self.message = "%s is %s, not waiting on a permission" % (t["agent"], t["status"])
            return []
        return [("reply", "%s:%s" % (t["agent"], t["id"]), self.REPLY_KEYS[k], None) + _on_host(t)]

    def _reply_text(self, k):
        """i: type a prompt for the selected thread (sent with Enter, Esc cancels)."""
        t = self.selected_thread()
        if t is None:
            self.message = "select an agent thread first"
            return []
        self.mode = "prompt"
        self.prompt = {"label": "to %s" % t["agent"], "text": "", "step": "reply",
                       "values": {"thread": "%s:%s" % (t["agent"], t["id"]), "host": t.get("host")}}
        return []

    def activate(self):
        if self.selected and self.selected[0] == "host":  # a host's header: fold or unfold it
            collapsed = list(self.ui().get("collapsed") or ())
            name = self.selected[1]
            return [("ui", {"collapsed": [h for h in collapsed if h != name] if name in collapsed
                            else collapsed + [name]})]
        s = self.session(self.selected[1]) if self.selected else None
        if s is not None and s.get("host"):  # a host's session: a local window attached to it over ssh
            window = pane = None
            if self.selected[0] == "window":
                window = self.selected[2]
            elif self.selected[0] == "pane":
                pane = self.selected[2]
            else:
                t = self.selected_thread()
                pane = t.get("pane") if t else None
            if pane:
                window = remote_thread_window(s, pane)
            return [("remote", s["host"], s["remoteName"], window, pane)] + ([("quit",)] if self.popup else [])
        if self.selected and self.selected[0] in ("window", "pane"):
            return [("switch-pane", self.selected[1], self.selected[2])]
        t = self.selected_thread()
        if t and t.get("pane"):
            if self.popup:
                return [("switch-pane", self.selected[1], t["pane"]), ("quit",)]
            return [("switch-pane", self.selected[1], t["pane"])]
        if self.selected:
            return [("switch", self.selected[1])]
        return []

    def _reorder(self, delta):
        s = self.selected_session()
        if not s:
            return []
        host = s.get("host")  # a host's sessions move among themselves, in that host's own order
        mine = [x for x in (self.state or {}).get("sessions", []) if x.get("host") == host]
        order = [x["remoteName"] if host else x["name"] for x in mine]
        i = [x["name"] for x in mine].index(s["name"])
        j = max(0, min(len(order) - 1, i + delta))
        if i == j:
            return []
        order.insert(j, order.pop(i))
        self.selected = ("session", s["name"])
        return [("ui", dict({"order": order}, **({"host": host} if host else {})))]

    def _theme_key(self, k):
        names = sorted(THEMES)
        if k in ("j", "KEY_DOWN"):
            self.theme_index = (self.theme_row() + 1) % len(names)
        elif k in ("k", "KEY_UP"):
            self.theme_index = (self.theme_row() - 1) % len(names)
        elif k in ("\n", "\r", "KEY_ENTER"):
            self.mode = "list"
            return [("ui", {"theme": names[self.theme_row()]})]
        elif k in ("q", "\x1b", "t"):
            self.mode = "list"
        return []

    def _prompt_key(self, k):
        """Every text prompt edits its line as a shell does: Left/Right, C-a/C-e (Home/End),
        Backspace, C-d/Delete, C-u/C-k (cut before/after the cursor), C-w (cut a word or a
        directory); Tab completes the directory prompt (a ("complete", text) action: the app lists
        the directories and calls complete()). A pre-filled directory is replaced by the first
        character typed."""
        p = self.prompt
        text, pos = p["text"], min(p.get("pos", len(p["text"])), len(p["text"]))
        fresh = p.pop("fresh", False)
        p.pop("choices", None)
        if k == "\x1b":
            self.mode, self.prompt = "list", None
            return []
        if k in ("\n", "\r", "KEY_ENTER"):
            return self._prompt_done()
        if k == "\t":
            if p["step"] == "dir":
                p["pos"] = len(text)
                return [("complete", text)]
            return []
        if fresh and len(k) == 1 and k.isprintable():
            text, pos = "", 0  # the first character typed replaces the pre-filled text
        edited = edit_line(text, pos, k)
        if edited is None:
            p["fresh"] = fresh  # a key that does nothing here leaves the pre-filled text as it was
        else:
            text, pos = edited
        p["text"], p["pos"] = text, pos
        if p["step"] == "filter":
            self.filter_text = p["text"]
            self._reselect()
        return []

    def complete(self, text, choices):
        """Tab's answer (complete_directory): the completed text, and the choices when several fit."""
        if self.mode == "prompt" and self.prompt and self.prompt["step"] == "dir":
            self.prompt.update(text=text, pos=len(text))
            if len(choices) > 1:
                self.prompt["choices"] = choices

    def _prompt_done(self):
        p = self.prompt
        if p["step"] == "filter":
            self.mode, self.prompt = "list", None
            return []
        if p["step"] == "reply":
            self.mode, self.prompt = "list", None
            text = p["text"].strip()
            return [("reply", p["values"]["thread"], "text", text) + _on_host(p["values"])] if text else []
        if p["step"] == "name":
            name = p["text"].strip()
            if not name:
                self.mode, self.prompt = "list", None
                return []
            s = self.selected_session()
            home = home_dir()
            start = (s or {}).get("dir") or home
            if start == home or start.startswith(home.rstrip("/") + "/"):
                start = "~" + start[len(home.rstrip("/")):]
            p.update(step="dir", label="directory", text=start, pos=len(start), fresh=True)
            p["values"]["name"] = name
            return []
        name = p["values"]["name"]
        directory = p["text"].strip() or "~"
        self.mode, self.prompt = "list", None
        return [("new", name, directory)]

    def click(self, row, rows, double=False, x=None):
        """A mouse click on screen row `row` (column x), given the rows render() produced."""
        if not 0 <= row < len(rows) or rows[row][0] is None:
            return []
        item = rows[row][0]
        self.say(None)
        if item[0] == "port":
            port = _port_at(rows[row][1], x)
            return [("open", port)] if port else []
        self.selected = item
        self.mode = "list"
        if double:
            return self.activate()
        return []

    def wheel(self, delta):
        self.say(None)
        items = self.items()
        idx = items.index(self.selected) if self.selected in items else 0
        self._select(items, idx + delta)


def word_start(text, pos):
    """Where C-w's cut starts: back over separators (space, /), then over a word. Pure."""
    i = pos
    while i > 0 and text[i - 1] in " /":
        i -= 1
    while i > 0 and text[i - 1] not in " /":
        i -= 1
    return i


def edit_line(text, pos, k):
    """One key of a line edited as a shell edits it: Left/Right (C-b/C-f), C-a/C-e (Home/End),
    Backspace, C-d/Delete, C-u/C-k (cut before/after the cursor), C-w (cut a word or a directory),
    a printable character inserted. -> (text, pos), or None for a key that is no edit. Pure."""
    pos = min(max(0, pos), len(text))
    if k in ("KEY_BACKSPACE", "\x7f", "\b"):
        return text[:max(0, pos - 1)] + text[pos:], max(0, pos - 1)
    if k in ("KEY_DC", "\x04"):
        return text[:pos] + text[pos + 1:], pos
    if k in ("KEY_LEFT", "\x02"):
        return text, max(0, pos - 1)
    if k in ("KEY_RIGHT", "\x06"):
        return text, min(len(text), pos + 1)
    if k in ("KEY_HOME", "\x01"):
        return text, 0
    if k in ("KEY_END", "\x05"):
        return text, len(text)
    if k == "\x15":
        return text[pos:], 0
    if k == "\x0b":
        return text[:pos], pos
    if k == "\x17":
        start = word_start(text, pos)
        return text[:start] + text[pos:], start
    if len(k) == 1 and k.isprintable():
        return text[:pos] + k + text[pos:], pos + 1
    return None


def complete_directory(text, list_dirs, home):
    """Tab in the directory prompt -> (the text completed as far as it is unambiguous, the
    directories that fit when there are several). `~` is home, a relative path is under home (as
    the new session's directory is); list_dirs(path) -> the names of its subdirectories. Pure."""
    if text == "~":
        return "~/", []
    expanded = home.rstrip("/") + text[1:] if text.startswith("~/") else text
    head, slash, prefix = expanded.rpartition("/")
    if expanded.startswith("/"):
        base = head + slash if head else "/"
    else:
        base = os.path.join(home, head)
    try:
        names = sorted(n for n in list_dirs(base) if n.startswith(prefix) and (prefix[:1] == "." or n[:1] != "."))
    except OSError:
        names = []
    if not names:
        return text, []
    typed_head = text[:len(text) - len(prefix)]
    if len(names) == 1:
        return typed_head + names[0] + "/", []
    return typed_head + os.path.commonprefix(names), names


def list_subdirectories(path):
    """The names of path's subdirectories (for complete_directory)."""
    out = []
    with os.scandir(path) as it:
        for entry in it:
            try:
                if entry.is_dir():
                    out.append(entry.name)
            except OSError:
                pass
    return out


def _on_host(thing):
    """(host,) for a thread (or prompt values) on another machine, () for one of this machine."""
    return (thing["host"],) if thing.get("host") else ()


def _port_at(pieces, x):
    """The port whose ':NNNN' piece is at column x of a ports row (any port if x is None)."""
    col = 0
    for text, _ in pieces:
        w = display_width(text)
        m = re.match(r"\s*:(\d+)", text)
        if m and (x is None or col <= x < col + w):
            return int(m.group(1))
        col += w
    return None


def _badge(status, unseen, g, frame, charset):
    if status in ("running",):
        spin = SPINNER[charset]
        return spin[frame % len(spin)], "running"
    key = "done-unseen" if status == "done" and unseen else status
    style = {"done-unseen": "unseen", "retry": "waiting", "idle": "muted"}.get(key, key)
    return g.get(key) or "?", style


def _tone_icon(tone, g):
    tone = tone if tone in TONE_STYLE else "neutral"
    return g["tone-error" if tone == "error" else tone], TONE_STYLE[tone]


class _Screen(object):
    """Rows being built by render(): each piece is cut to the width, the cut marked."""

    def __init__(self, model, width, now):
        self.model = model
        self.charset = model.charset
        self.g = GLYPHS[self.charset]
        self.clean = (lambda s: s) if self.charset == "unicode" else ascii_safe
        self.now = now if now is not None else now_ms()
        self.w = max(1, width)
        self.rows = []
        self.frame = model.frame  # the spinners' frame (0 for a host we cannot reach: they stand still)

    def line(self, item, pieces):
        out, used = [], 0
        for text, style in pieces:
            text = self.clean(text)
            room = self.w - used
            if room <= 0:
                break
            t = fit(text, room, self.g["more"]) if display_width(text) > room else text
            out.append((t, style))
            used += display_width(t)
        self.rows.append((item, out))

    def wrapped(self, item, text, style, indent=0, first=""):
        """text word-wrapped to the width; continuation lines indented by `indent` cells."""
        lines = wrap(self.clean(first + text), self.w - indent) if indent else wrap(self.clean(first + text), self.w)
        for i, part in enumerate(lines):
            self.line(item, [((" " * indent if i else "") + part, style)])


def render(model, width, height, now=None):
    """The whole screen as rows: [(item or None, [(text, style), ...]), ...], at most height rows.
    Pure (render_view also says where the rows are scrolled to)."""
    return render_view(model, width, height, now)[0]


def render_view(model, width, height, now=None):
    """-> (rows, view). Rows as render(); styles are theme keys plus 'sel' (selected row background).
    A header row, the body (the list and the detail panel, or the help or the theme picker), and a
    footer for prompts and messages that always stays on screen. `view` is what the rows show, for
    the model to keep (SidebarModel.viewed): {"scroll", "help_scroll": where the list and the help
    are scrolled to, "preview": the thread whose pane the preview shows, or None}. Pure."""
    scr = _Screen(model, width, now)
    _render_header(scr)
    footer = _Screen(model, width, now)
    _render_footer(footer)
    room = max(1, height - 1 - len(footer.rows))
    body = _Screen(model, width, now)
    view = {"scroll": model.scroll, "help_scroll": model.help_scroll, "preview": None}
    if model.stopped:  # the server was stopped on purpose: one calm line, nothing stale
        body.line(None, [(model.stopped, "muted")])
        rows = body.rows[:room]
    elif model.mode == "help":
        _render_help(body)
        top = view["help_scroll"] = max(0, min(model.help_scroll, len(body.rows) - room))
        rows = body.rows[top:top + room]
    elif model.mode == "theme":
        _render_themes(body)
        rows = body.rows[:room]
    elif model.popup:
        rows, view["scroll"], view["preview"] = _render_popup(body, room)
    else:
        _render_list(body, room)
        rows, view["scroll"] = _scroll(model, body.rows, room)
        preview, view["preview"] = _render_preview(model, width, now, room - len(rows), sidebar=True)
        rows += preview
    return (scr.rows + rows + footer.rows)[:height], view


def popup_groups(state):
    """The popup's list: [(group, [(session name, thread), ...])] for every agent thread of every
    session, grouped by what needs you: waiting, error, finished unseen, running, idle (the rest).
    Waiting and error oldest first (as `next` visits them), the others newest first. Pure."""
    groups = [("waiting", []), ("error", []), ("finished unseen", []), ("running", []), ("idle", [])]
    by = dict(groups)
    for s in (state or {}).get("sessions", []):
        if s.get("hidden") or s.get("stale"):  # a host we cannot reach now: its threads may have moved on
            continue
        for t in s.get("threads", []):
            st = t["status"]
            if st in ("waiting", "error"):
                g = st
            elif t.get("unseen") and st in ("done", "interrupted"):
                g = "finished unseen"
            elif st in ACTIVE_STATUSES:
                g = "running"
            else:
                g = "idle"
            by[g].append((s["name"], t))
    for name, rows in groups:
        rows.sort(key=lambda r: r[1].get("updatedAt") or 0, reverse=name not in ("waiting", "error"))
    return [(name, rows) for name, rows in groups if rows]


def _render_popup(scr, room):
    """The agents popup: groups of threads, then the selected thread's preview below them.
    -> (rows, scroll, the thread the preview wants)."""
    model = scr.model
    groups = popup_groups(model.state)
    if not groups:
        scr.line(None, [("no agent threads" if model.state else "waiting for the server", "muted")])
    for name, rows in groups:
        scr.line(None, [("%s (%d)" % (name, len(rows)), GROUP_STYLE.get(name, "muted"))])
        for session, t in rows:
            item = ("thread", session, t["agent"], t["id"])
            sel = item == model.selected
            glyph, style = _badge(t["status"], t.get("unseen"), scr.g, scr.frame, scr.charset)
            scr.line(item, [(" " + glyph + " ", style), (session + " ", "sel" if sel else "accent"),
                            (t["agent"] + " ", "sel" if sel else "muted"),
                            (t.get("title") or t["id"][:8], "sel" if sel else "fg"),
                            ("  " + age_text(t.get("updatedAt"), scr.now), "sel" if sel else "muted")])
            if name == "waiting" and t.get("detail"):
                scr.line(item, [("    needs: " + t["detail"], "sel" if sel else "waiting")])
            elif name == "error" and t.get("detail"):
                scr.line(item, [("    " + t["detail"], "sel" if sel else "error")])
    list_room = max(3, room // 2) if model.selected else room
    rows, scroll = _scroll(model, scr.rows, min(room, list_room) if len(scr.rows) > list_room else room)
    preview, wanted = _render_preview(model, scr.w, scr.now, room - len(rows))
    return rows + preview, scroll, wanted


def _render_preview(model, width, now, room, sidebar=False):
    """The last lines of the selected thread's pane (fetched by the app while shown), under a rule.
    -> (rows, the thread wanted): a thread only when there is room, so nothing is read otherwise."""
    item = model.selected if model.selected and model.selected[0] == "thread" else None
    if item is None or room < (6 if sidebar else 3):
        return [], None
    scr = _Screen(model, width, now)
    scr.line(None, [(scr.g["sep"] * scr.w, "muted")])
    p = model.preview if model.preview and model.preview.get("item") == item else None
    lines = p["lines"] if p else ["(reading the pane…)"]
    if p and p.get("error"):
        lines = [p["error"]]
    for line in lines[-(room - 1):]:
        scr.line(item, [(line, "muted" if not p or p.get("error") else "fg")])
    return scr.rows, item


GROUP_STYLE = {"waiting": "waiting", "error": "error", "finished unseen": "done", "running": "running",
               "idle": "muted"}


def _render_header(scr):
    model, w = scr.model, scr.w
    title = "opensessions" if w >= 16 else "os"
    if model.popup:
        title = "agents  (Enter go · y/Y/N approve/always/deny · i type · Tab history · q close · ? help)"
    status = "" if model.connected or model.stopped else " (connecting…)"
    if model.filter_mode != "all" or model.filter_text:
        status += " [%s%s]" % (model.filter_mode if model.filter_mode != "all" else "",
                               ("/" + model.filter_text) if model.filter_text else "")
    pieces = [(title, "accent"), (status, "muted")]
    if not model.popup and model.mode == "list":  # where the keys are: the popup says it in its title
        used = display_width(title + scr.clean(status))
        for hint in ("? help", "?"):
            if used + 1 + len(hint) <= w:
                pieces.append((" " * (w - used - len(hint)) + hint, "muted"))
                break
    scr.line(None, pieces)


def _render_help(scr):
    """The keys (the popup's own in the popup), then what every mark means."""
    g, w, model = scr.g, scr.w, scr.model
    keys = POPUP_HELP_KEYS if model.popup else HELP_KEYS
    kw = max(len(k) for k, _ in HELP_KEYS) + 1 if w >= 24 else 0

    def entry(key, text, key_style="accent"):
        if kw:
            for i, part in enumerate(wrap(text, w - kw)):
                scr.line(None, [((key if i == 0 else "").ljust(kw), key_style), (part, "fg")])
        else:
            scr.line(None, [(key, key_style)])
            scr.wrapped(None, text, "fg", indent=2, first="  ")
    for key, text in keys:
        entry(key, text)
    scr.wrapped(None, PROMPT_HELP + ("" if model.popup else PROMPT_HELP_DIR), "muted", indent=2)
    if not model.popup:
        scr.wrapped(None, HELP_PREFIX_NOTE, "muted", indent=2)
    scr.line(None, [("", "fg")])
    if not model.popup:
        scr.wrapped(None, "a session's row: %s2 web %s  $0.28 %s%s %s" % (
            g["cursor"], g["current"], g["waiting"], g["done"], g["unseen"]), "muted", indent=2)
        for key, meaning in HELP_ROW_LEGEND:
            mark = {"cursor": g["cursor"], "current": g["current"], "badges": g["waiting"] + g["done"]}.get(key, key)
            entry(mark, meaning, "accent" if key != "badges" else "waiting")
    for key, meaning in HELP_LEGEND:
        if key == "spinner":
            glyph, style = SPINNER[scr.charset][0], "running"
        elif key == "open":
            glyph, style = g["open"], "accent"
        else:
            glyph, style = _badge(key.replace("done-unseen", "done"), key == "done-unseen", g, 0, scr.charset)
        for i, part in enumerate(wrap(meaning, w - 2)):
            scr.line(None, [((glyph if i == 0 else " ") + " ", style), (part, "fg")])
    if not model.popup:
        for key, meaning in HELP_ROW_LEGEND_AFTER:
            mark = {"unseen": g["unseen"], "bar": g["bar"] * 2 + g["bar_empty"],
                    "log": g["success"] + g["warn"] + g["tone-error"] + g["info"] + g["neutral"]}.get(key, key)
            if key:
                entry(mark, meaning, "unseen" if key == "unseen" else "accent")
            else:
                scr.line(None, [(meaning, "muted")])
    else:
        scr.wrapped(None, "groups: waiting and error oldest first (as prefix o n visits them), the others "
                          "newest first; under the list, the selected thread's pane", "muted", indent=2)


def _render_themes(scr):
    names = sorted(THEMES)
    scr.line(None, [("theme (Enter to pick)", "muted")])
    row = scr.model.theme_row()
    for i, name in enumerate(names):
        scr.line(None, [(("> " if i == row else "  ") + name, "sel" if i == row else "fg")])


def _render_list(scr, room):
    model = scr.model
    groups = model.groups()
    if not any(sessions for _, sessions in groups) and len(groups) == 1:
        scr.line(None, [("no sessions" if model.state else "waiting for the server", "muted")])
    detail_rows = []
    for host, sessions in groups:
        if host is not None:
            _render_host(scr, host, len([s for s in model.listed() if s.get("host") == host["name"]]))
        for s in sessions:
            _render_session(scr, s)
            if s["name"] == (model.selected or (None, None))[1]:
                detail_rows = _session_panel(model, s, scr)
    # the detail panel for the selected session goes below the list (always when a thread in it is selected)
    in_detail = model.selected is not None and model.selected[0] == "thread" and model.filter_mode != "attention"
    if detail_rows and (room - len(scr.rows) > 3 or in_detail):
        scr.line(None, [(scr.g["sep"] * scr.w, "muted")])
        scr.rows.extend(detail_rows)


def host_line(h, now):
    """What a host's header says after its name: '' when connected and its server answers. Pure."""
    if h.get("state") == "unreachable":
        wait = max(0, int(round(((h.get("retryAt") or now) - now) / 1000.0)))
        return "unreachable: %s, retrying %s" % (h.get("reason") or "?", "in %d s" % wait if wait else "now")
    if h.get("state") == "connecting":
        return "connecting…"
    return h.get("note") or ""


def _render_host(scr, h, count):
    """A host's header: fold mark, name, and how it is reached when not plainly connected."""
    model = scr.model
    item = ("host", h["name"])
    sel = model.selected == item
    folded = h["name"] in (model.ui().get("collapsed") or ())
    tail = " (%d)" % count if folded and count else ""
    style = "sel" if sel else ("accent" if h.get("state") == "connected" and not h.get("note") else "muted")
    scr.line(item, [((scr.g["closed"] if folded else scr.g["open"]) + " ", "muted"), (h["name"], style),
                    (tail, "sel" if sel else "muted")])
    text = host_line(h, scr.now)
    style = "sel" if sel else ("error" if h.get("state") == "unreachable" else "muted")
    for i, part in enumerate(wrap(scr.clean(text), max(1, scr.w - 4)) if text else ()):
        scr.line(item, [(("  " if i == 0 else "    ") + part, style)])


def _render_session(scr, s):
    """The session's row, then its metadata rows: branch, status pill, progress, newest log line.
    A host's session shows its own name (its host's header is above it), greyed while the host
    cannot be reached."""
    if s.get("stale"):  # greyed, and its spinners stand still: nothing is known to run there now
        rows, frame = len(scr.rows), scr.frame
        scr.frame = 0
        try:
            _render_session_rows(scr, s)
        finally:
            scr.frame = frame
        scr.rows[rows:] = [(item, [(t, st if st == "sel" else "muted") for t, st in pieces])
                           for item, pieces in scr.rows[rows:]]
        return
    _render_session_rows(scr, s)


def _render_session_rows(scr, s):
    model, g, w = scr.model, scr.g, scr.w
    item = ("session", s["name"])
    selected = model.selected == item
    is_current = s["name"] == model.current_session()
    base = "sel" if selected else "fg"
    n = model.number(s["name"])
    badges = [_badge(t["status"], t.get("unseen"), g, scr.frame, scr.charset) for t in s.get("threads", [])[:6]]
    unseen = [(" " + g["unseen"], "unseen")] if s.get("unseen") else []
    if s.get("muted"):
        unseen.append((" m", "muted"))
    tail = len(badges) + sum(display_width(t) for t, _ in unseen)
    here = " " + g["current"] if is_current else ""  # the session this client shows: marked after its name
    name_room = w - 3 - tail - (1 if badges else 0) - len(here)
    name = fit(scr.clean(s.get("remoteName") or s["name"]), max(1, name_room), g["more"]) + here
    pieces = [(g["cursor"] if selected else " ", "accent"), (("%d" % n if n else " ") + " ", "muted"),
              (name, "accent" if is_current else base)]
    cost = cost_text((s.get("usage") or {}).get("cost"), row=True)
    if cost and name_room - display_width(name) + len(here) >= len(cost) + 2:  # its total, when there is room
        pieces.append((" " * (w - 3 - display_width(name) - tail - len(cost) - (1 if badges else 0)), base))
        pieces.append((cost, "muted"))
        if badges:
            pieces.append((" ", base))
            pieces.extend(badges)
    elif badges:
        pieces.append((" " * max(1, w - 3 - display_width(name) - tail), base))
        pieces.extend(badges)
    pieces.extend(unseen)
    scr.line(item, [(t, "sel" if selected and st in ("fg", "muted") else st) for t, st in pieces])
    _render_metadata(scr, s, item)
    if model.filter_mode == "attention":
        _render_attention_threads(scr, s)


def _render_metadata(scr, s, item):
    """A session's own rows under its name, each cut to the width: branch, status pill, progress
    bar with its label, newest log line."""
    g, w = scr.g, scr.w
    indent = "   "
    if s.get("branch"):
        scr.line(item, [(indent + s["branch"] + ("*" if s.get("dirty") else ""), "muted")])
    meta = s.get("metadata") or {}
    pill = meta.get("status")
    if pill and pill.get("text"):
        scr.line(item, [(indent, "fg"), ("[%s]" % pill["text"], TONE_STYLE.get(pill.get("tone"), "fg"))])
    prog = meta.get("progress")
    if prog and prog.get("percent") is not None:
        cells = max(3, min(10, (w - 3) // 4))
        full = int(round(cells * min(100.0, prog["percent"]) / 100.0))
        pieces = [(indent + g["bar"] * full, "accent"), (g["bar_empty"] * (cells - full), "muted"),
                  (" %d%%" % prog["percent"], "accent")]
        if prog.get("label"):
            pieces.append((" " + prog["label"], "fg"))
        scr.line(item, pieces)
    logs = meta.get("logs") or []
    if logs:
        scr.line(item, _log_pieces(scr, logs[-1], indent))


def _render_attention_threads(scr, s):
    """In the attention filter: the recently relevant threads, active ones and those finished
    since you last looked."""
    for t in s.get("threads", []):
        if t["status"] in ACTIVE_STATUSES or t.get("unseen") or t["status"] in ("waiting", "error"):
            glyph, style = _badge(t["status"], t.get("unseen"), scr.g, scr.frame, scr.charset)
            status_text = t["status"] + ("#%s" % t["attempt"] if t.get("attempt") else "")
            scr.line(("thread", s["name"], t["agent"], t["id"]),
                     [("   " + glyph + " ", style), ((t.get("title") or t["agent"]) + " ", "fg"),
                      ("%s %s" % (status_text, age_text(t.get("updatedAt"), scr.now)), "muted")])


def _log_pieces(scr, entry, indent):
    """One log line fitted to the width: tone icon, source, message (cut with …), age kept at the end."""
    icon, style = _tone_icon(entry.get("tone"), scr.g)
    age = age_text(entry.get("ts"), scr.now)
    head = indent + icon + " "
    text = scr.clean((entry["source"] + ": " if entry.get("source") else "") + entry["message"])
    room = scr.w - display_width(head) - (len(age) + 1 if age else 0)
    if room < 4:  # too narrow for the age: the message matters more
        room, age = scr.w - display_width(head), ""
    text = fit(text, room, scr.g["more"])
    pad = " " * max(1, room - display_width(text) + 1) if age else ""
    return [(head, style), (text, "fg"), (pad + age, "muted")]


def token_text(n):
    """1234 -> '1.2k', 2500000 -> '2.5M'."""
    n = n or 0
    if n >= 10 ** 6:
        return "%.1fM" % (n / 1e6)
    if n >= 10 ** 5:
        return "%dk" % round(n / 1e3)
    if n >= 10 ** 3:
        return "%.1fk" % (n / 1e3)
    return "%d" % n


def cost_text(cost, row=False):
    """USD for the sidebar and the CLI; '' when unknown (and, on a row, when nothing was spent)."""
    if as_number(cost) is None or (row and cost <= 0):
        return ""
    if cost >= 100:
        return "$%d" % round(cost)
    if cost >= 0.01 or cost == 0:
        return "$%.2f" % cost
    return "<$0.01" if row else "$%.4f" % cost


def usage_text(u):
    """One thread's (or session's) usage in a line, what matters first (a narrow sidebar cuts the
    end): '$0.42 ctx 45% 12k in 3.1k out 40k cache'."""
    parts = [cost_text(u.get("cost"))] if u.get("cost") is not None else []
    if u.get("contextPct") is not None:
        parts.append("ctx %d%%" % u["contextPct"])
    parts.append("%s in %s out" % (token_text(u.get("input")), token_text(u.get("output"))))
    cache = (u.get("cacheRead") or 0) + (u.get("cacheWrite") or 0)
    if cache:
        parts.append("%s cache" % token_text(cache))
    if u.get("partial"):
        parts.append("(partial)")
    return " ".join(parts)


def _session_panel(model, s, scr):
    """The selected session in full: directory, status, progress, threads, ports, logs."""
    g, now = scr.g, scr.now
    panel = _Screen(model, scr.w, now)
    sel_thread = model.selected if model.selected and model.selected[0] == "thread" else None
    if s.get("dir"):
        panel.line(None, [(s["dir"].replace(home_dir(), "~", 1), "muted"),
                          (" (muted)" if s.get("muted") else "", "muted")])
    meta = s.get("metadata") or {}
    pill = meta.get("status")
    if pill and pill.get("text"):
        panel.wrapped(None, pill["text"], TONE_STYLE.get(pill.get("tone"), "fg"), indent=2, first="status ")
    prog = meta.get("progress")
    if prog and prog.get("percent") is not None:
        amount = "%d%%" % prog["percent"]
        if prog.get("total"):
            amount = "%g/%g (%s)" % (prog["current"], prog["total"], amount)
        panel.wrapped(None, amount + (" " + prog["label"] if prog.get("label") else ""), "accent", indent=2,
                      first="progress ")
    for t in s.get("threads", []):
        item = ("thread", s["name"], t["agent"], t["id"])
        glyph, style = _badge(t["status"], t.get("unseen"), g, model.frame, model.charset)
        status = t["status"] + ("#%s" % t["attempt"] if t.get("attempt") else "")
        sel = item == sel_thread
        panel.line(item, [(glyph + " ", style), (t["agent"] + " ", "sel" if sel else "accent"),
                          (t.get("title") or t["id"][:8], "sel" if sel else "fg")])
        info = "  " + " ".join(x for x in (status, age_text(t.get("updatedAt"), now)) if x)
        if t.get("detail") or t.get("model"):
            info += " %s %s" % (g["neutral"], t.get("detail") or t["model"])
        panel.line(item, [(info, "sel" if sel else "muted")])
        if t.get("usage"):
            panel.line(item, [("  " + usage_text(t["usage"]), "sel" if sel else "muted")])
    if s.get("usage") and len(s.get("threads", [])) > 1:
        panel.line(None, [("total ", "accent"), (usage_text(s["usage"]), "muted")])
    for item, row in pane_tree(s):
        sel = item == model.selected
        if item[0] == "window":
            panel.line(item, [("%s:%s" % (row["index"], row["name"]), "sel" if sel else "accent"),
                              (" *" if row.get("active") else "", "sel" if sel else "muted")])
            continue
        t = row.get("_thread")
        pieces = [("  " + row["id"] + " ", "sel" if sel else "muted"), (row.get("command") or "", "sel" if sel else "fg")]
        if t:
            glyph, style = _badge(t["status"], t.get("unseen"), g, model.frame, model.charset)
            pieces += [(" " + glyph + " ", style), ("%s %s" % (t["agent"], t["status"]), "sel" if sel else "muted")]
        panel.line(item, pieces)
    if s.get("ports"):
        panel.line(("port", s["name"]), [("ports", "accent")] + [(" :%d" % p, "accent") for p in s["ports"]])
    for entry in (meta.get("logs") or [])[-5:]:
        icon, style = _tone_icon(entry.get("tone"), g)
        age = age_text(entry.get("ts"), now)
        text = (entry["source"] + ": " if entry.get("source") else "") + entry["message"]
        panel.wrapped(None, text + (" (%s)" % age if age else ""), style, indent=2, first=icon + " ")
    return panel.rows


def pane_tree(s):
    """A session's windows and their panes (sidebar panes left out) as selectable rows:
    [(("window", session, window id), window), (("pane", session, pane id), pane + its thread)].
    A window's item targets its id; a pane's row carries the newest thread shown in it. Pure."""
    out = []
    threads = {}
    for t in s.get("threads", []):
        if t.get("pane") and (t["pane"] not in threads or (t.get("updatedAt") or 0) > (threads[t["pane"]].get("updatedAt") or 0)):
            threads[t["pane"]] = t
    for w in s.get("windows", []):
        panes = [p for p in w.get("panes", []) if not p.get("sidebar")]
        if not panes:
            continue
        out.append((("window", s["name"], w["id"]), w))
        for p in panes:
            out.append((("pane", s["name"], p["id"]), dict(p, _thread=threads.get(p["id"]))))
    return out


def _scroll(model, rows, height):
    """Keep the selected row on screen, moving as little as possible from model.scroll.
    -> (the rows shown, the scroll they start at)."""
    if len(rows) <= height:
        return rows, 0
    scroll = model.scroll
    sel_rows = [i for i, r in enumerate(rows) if r[0] is not None and r[0] == model.selected]
    if sel_rows:
        first = sel_rows[0]
        if first < scroll:
            scroll = first
        elif sel_rows[-1] >= scroll + height:
            scroll = sel_rows[-1] - height + 1
    scroll = max(0, min(scroll, len(rows) - height))
    return rows[scroll:scroll + height], scroll


def _render_footer(scr):
    """Prompts show what is typed with the cursor on it (the label goes on its own row when both do
    not fit; a long text is cut to keep the cursor in view), and Tab's choices above them;
    messages and questions wrap."""
    model, w = scr.model, scr.w
    if model.mode == "prompt":
        p = model.prompt
        if p.get("choices"):
            for part in wrap(" ".join(c + "/" for c in p["choices"]), w)[:2]:
                scr.line(None, [(part, "muted")])
        label = p["label"] + ":"
        text = scr.clean(p["text"])
        pos = min(p.get("pos", len(text)), len(text))
        style = "sel" if p.get("fresh") else "fg"  # pre-filled: typing replaces it
        if display_width(label + " " + text) + 1 <= w:
            scr.line(None, [(label + " ", "waiting")] + _typed_pieces(text, pos, style))
            return
        scr.line(None, [(label, "waiting")])
        more = scr.g["more"]
        start = 0
        while display_width(text[start:pos]) + (2 if start else 1) > w and start < pos:
            start += 1
        pieces = _typed_pieces(text[start:], pos - start, style)
        scr.line(None, ([(more, "muted")] if start else []) + pieces)
    elif model.mode == "help":  # always on screen, however long the help
        scr.line(None, [(fit("j/k scroll, any other key closes", w, scr.g["more"]), "muted")])
    elif model.message or model.ui().get("error"):
        for part in wrap(scr.clean(model.message or model.ui()["error"]), w)[:3]:
            scr.line(None, [(part, "waiting")])


def _typed_pieces(text, pos, style="fg"):
    """A prompt's text with its cursor: the character under it shown selected, or '_' at the end."""
    if pos >= len(text):
        return [(text, style), ("_", "fg")]
    return [(text[:pos], style), (text[pos], "sel"), (text[pos + 1:], style)]


HISTORY_PAGE = 50  # conversations fetched at once; more as the selection nears the end
HISTORY_HELP = (
    ("typing", "filters: every word must be in the title, first prompt, directory or agent"),
    ("Enter", "resume in a new window, in its directory (a live one: go to its pane)"),
    ("Up/Down", "move (also C-n/C-p, PgUp/PgDn)"),
    ("C-r", "this directory and below / all directories"),
    ("Tab", "the agents tab (in the agents popup)"),
    ("Esc", "keys mode: the letters below act"),
    ("f", "fork: a new conversation that starts with this one's messages"),
    ("p", "resume here, in the pane the picker opened over (an idle shell)"),
    ("a", "this directory and below / all directories"),
    ("j/k g/G", "move / first / last"),
    ("/", "type again"),
    ("?", "this help (also typed on an empty line)"),
    ("q/Esc", "close"),
)
HISTORY_HELP_NOTE = ("only this machine's conversations: a remote host's are in its own history "
                     "(opensessions history there)")


def query_string(params):
    """{"q": "fix login", "limit": 50} -> 'q=fix%20login&limit=50' (urllib.parse costs a popup
    ~13 ms to import). Pure."""
    safe = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")

    def enc(value):
        return "".join(chr(b) if b in safe else "%%%02X" % b for b in str(value).encode("utf-8"))
    return "&".join("%s=%s" % (enc(k), enc(v)) for k, v in params.items())


def tilde(path, home):
    """/home/u/src -> ~/src. Pure."""
    if path and home and (path == home or path.startswith(home.rstrip("/") + "/")):
        return "~" + path[len(home.rstrip("/")):]
    return path or ""


class HistoryView(object):
    """The history picker (`prefix o r`, and the agents popup's second tab): the conversations in
    scope (the pane's directory and below, or all), filtered as you type. Pure: keys in, actions
    out; the app fetches and hands the answers back (set_answer, set_preview).

    Actions: ("fetch",) the list again (the query or the scope changed), ("more",) the next page,
    ("resume", thread, fork, target) with target "window" or "here", ("tab",) back to the agents
    tab, ("quit",)."""

    frame = 0  # the spinners' frame a _Screen reads: nothing turns in the history

    def __init__(self, directory=None, home=None, charset="unicode", tabs=False, pane=None):
        self.directory = directory  # the scope: this directory and below
        self.pane = pane  # the pane it opened over: the server says its directory (and session)
        self.session = None
        self.home = home
        self.charset = charset
        self.tabs = tabs  # inside the agents popup (Tab goes back)
        self.all = not directory and not pane
        self.query = ""
        self.pos = 0  # the cursor in the query (it edits as a shell line does)
        self.typing = True  # typing filters; Esc: keys mode (f, p, a, q act)
        self.help = False
        self.threads = []  # the answer's thread documents (pages appended)
        self.total = 0  # how many match
        self.count = 0  # how many the index holds
        self.complete = True  # the index's cold scan has finished
        self.loaded = False
        self.error = None  # the last fetch failed: why
        self.index = 0
        self.scroll = 0  # first conversation shown
        self.preview = None  # {"thread", "messages"} or {"thread", "error"}
        self.preview_wanted = None  # the thread render() had room to preview
        self.message = None
        self.busy = None  # what we are doing ("resuming …")

    @property
    def selected(self):
        t = self.selected_thread()
        return ("history", t["thread"]) if t else None

    def selected_thread(self):
        return self.threads[self.index] if 0 <= self.index < len(self.threads) else None

    def params(self, offset=0):
        """The query string's parameters for GET /api/history."""
        p = {"q": self.query, "limit": HISTORY_PAGE, "offset": offset}
        if not self.all and self.directory:
            p["dir"] = self.directory
        elif not self.all and self.pane:
            p["pane"] = self.pane
        return p

    def set_answer(self, doc, offset=0):
        """An /api/history answer (offset: a next page) or, with doc None, a failure (error)."""
        self.loaded = True
        if not isinstance(doc, dict):
            self.error = doc if isinstance(doc, str) else "no answer"
            return
        self.error = None
        if not self.directory and isinstance(doc.get("dir"), str):
            self.directory = doc["dir"]  # the pane's directory, as the server knows it
        if isinstance(doc.get("session"), str):
            self.session = doc["session"]
        threads = [t for t in doc.get("threads") or () if isinstance(t, dict) and isinstance(t.get("thread"), str)]
        if offset:
            self.threads = self.threads[:offset] + threads
        else:
            self.threads, self.index, self.scroll = threads, 0, 0
        self.total, self.count = as_number(doc.get("total"), 0, int), as_number(doc.get("count"), 0, int)
        self.complete = bool(doc.get("complete", True))

    def set_preview(self, thread, doc=None, error=None):
        self.preview = {"thread": thread, "messages": (doc or {}).get("messages") or [], "error": error}

    # -- keys ----------------------------------------------------------------------------------
    def key(self, k):
        """One key (a curses key name or a character) -> actions."""
        self.message = None
        if self.help:
            self.help = False
            return []
        moves = {"KEY_UP": -1, "\x10": -1, "KEY_DOWN": 1, "\x0e": 1, "KEY_PPAGE": -10, "KEY_NPAGE": 10}
        if not self.typing:  # Home/End edit the typed line; in keys mode they go to the first/last
            moves.update(KEY_HOME=-10 ** 6, KEY_END=10 ** 6)
        if k in moves:
            return self._move(moves[k])
        if k in ("\n", "\r", "KEY_ENTER"):
            return self.activate()
        if k == "\x12":  # C-r (as atuin's filter mode): a line-editing key would be lost to it
            return self._toggle_all()
        if k == "\t" or k == "KEY_BTAB":
            return [("tab",)] if self.tabs else []
        if self.typing:
            if k == "\x1b":
                self.typing = False
                return []
            if k == "?" and not self.query:  # the help, as the popup's ? and its help promise (later: text)
                self.help = True
                return []
            edited = edit_line(self.query, self.pos, k)
            if edited is None:
                return []
            changed = edited[0] != self.query
            self.query, self.pos = edited
            return [("fetch",)] if changed else []
        if k in ("q", "\x1b"):
            return [("quit",)]
        if k in ("j", "k"):
            return self._move(1 if k == "j" else -1)
        if k in ("g", "G"):
            return self._move(-10 ** 6 if k == "g" else 10 ** 6)
        if k in ("/", "i"):
            self.typing = True
            self.pos = len(self.query)
            return []
        if k == "f":
            return self.activate(fork=True)
        if k == "p":
            return self.activate(here=True)
        if k == "a":
            return self._toggle_all()
        if k == "r":
            return [("fetch",)]
        if k == "?":
            self.help = True
        return []

    def _move(self, delta):
        if not self.threads:
            return []
        self.index = max(0, min(len(self.threads) - 1, self.index + delta))
        if self.index >= len(self.threads) - 20 and len(self.threads) < self.total:
            return [("more",)]
        return []

    def _toggle_all(self):
        if not self.directory and not self.pane:
            self.message = "no directory to narrow to: all directories are shown"
            return []
        self.all = not self.all
        return [("fetch",)]

    def activate(self, fork=False, here=False):
        t = self.selected_thread()
        if t is None:
            self.message = "no conversation selected"
            return []
        if fork and not t.get("canFork"):
            self.message = "%s has no fork" % t.get("agent")
            return []
        return [("resume", t["thread"], fork, "here" if here else "window")]


def _history_row_pieces(view, t, width, now, sel):
    """A conversation's two lines: agent, title (else first prompt), directory and branch; then
    age, last activity, turns, tokens and cost, and where it is live."""
    s = (lambda style: "sel" if sel else style)
    live = t.get("live")
    mark = ("●" if view.charset == "unicode" else "*") if live else " "
    where = clean_text(tilde(t.get("cwd") or "", view.home))  # what a server sends is shown, never obeyed
    if t.get("branch"):
        where += " (%s)" % clean_text(str(t["branch"]))
    right = [(" " + where, s("muted"))] if where else []
    if t.get("dirGone"):
        right.append((" gone", s("error")))
    right_w = min(max(12, width * 2 // 5), sum(display_width(p[0]) for p in right))
    title = clean_text(str(t.get("title") or t.get("prompt") or t.get("id") or ""))
    left_w = max(8, width - right_w)
    head = [(mark + " ", s("running" if live else "muted")), ("%-8s " % clean_text(str(t.get("agent", ""))), s("accent"))]
    used = sum(display_width(p[0]) for p in head)
    head.append((fit(title, max(1, left_w - used)), s("fg")))
    used += display_width(head[-1][0])
    pad = left_w - used
    line1 = head + ([(" " * pad, s("fg"))] if pad > 0 else [])
    if right:
        room = width - max(used, left_w)
        cut, acc = [], 0
        for text, style in right:
            if acc >= room:
                break
            piece = fit(text, room - acc)
            cut.append((piece, style))
            acc += display_width(piece)
        line1 += cut
    facts = ["started %s ago" % age_text(t.get("createdAt"), now) if t.get("createdAt") else "",
             "active %s ago" % age_text(t.get("updatedAt"), now) if t.get("updatedAt") else ""]
    turns = t.get("turns") or 0
    facts.append("%s%d turn%s" % ("" if t.get("turnsExact") else "~", turns, "" if turns == 1 else "s"))
    u = t.get("usage")
    if isinstance(u, dict):
        tokens = sum(as_number(u.get(k), 0, int) for k in USAGE_KEYS)
        est = "" if u.get("exact") else "~"
        facts.append("%s%s tok" % (est, token_text(tokens)))
        if u.get("cost") is not None:
            facts.append(est + cost_text(u["cost"]))
    line2 = [("    " + " · ".join(f for f in facts if f), s("muted"))]
    if live:
        line2.append(("  live in %s" % clean_text(str(live.get("session") or "another tmux")), s("running")))
    return line1, line2


def render_history(view, width, height, now=None):
    """The history picker as rows [(item or None, [(text, style), ...])], at most height. Pure."""
    now = now if now is not None else now_ms()
    scr = _Screen(view, width, now)
    if view.tabs:
        scr.line(None, [("agents", "muted"), (" | ", "muted"), ("history", "accent"), ("   Tab: agents", "muted")])
    scope = "all directories" if view.all else "%s and below" % clean_text(tilde(view.directory or "…", view.home))
    counts = "  %d of %d" % (view.total, view.count) if view.loaded else "  reading…"
    if view.loaded and not view.complete:
        counts += " (still reading the agents' files…)"
    scr.line(None, [("history", "accent"), ("  " + scope, "fg"), (counts, "muted")])
    query = scr.clean(clean_text(view.query))
    typed = _typed_pieces(query, view.pos) if view.typing and len(query) == len(view.query) \
        else [(query + ("_" if view.typing else ""), "fg" if view.typing else "muted")]
    scr.line(None, [("> " if view.typing else "/ ", "waiting" if view.typing else "muted")] + typed)
    foot = _Screen(view, width, now)
    if view.busy:
        foot.line(None, [(clean_text(view.busy), "waiting")])
    elif view.message:
        for part in wrap(scr.clean(clean_text(view.message)), foot.w)[:3]:
            foot.line(None, [(part, "waiting")])
    elif view.typing:
        foot.line(None, [("Enter resume · ↑↓ move · C-r all dirs · Esc: f fork, p here, ? help", "muted")])
    else:
        foot.line(None, [("Enter resume · f fork · p here · a all dirs · / type · ? help · q close", "muted")])
    room = max(1, height - len(scr.rows) - len(foot.rows))
    body = _Screen(view, width, now)
    view.preview_wanted = None
    if view.help:
        for keys, text in HISTORY_HELP:
            body.line(None, [(keys.ljust(9), "accent"), (text, "fg")])
        body.wrapped(None, PROMPT_HELP, "muted", indent=2)
        body.wrapped(None, HISTORY_HELP_NOTE, "muted", indent=2)
        rows = body.rows[:room]
        return (scr.rows + rows + [(None, [])] * (room - len(rows)) + foot.rows)[:height]  # the footer at the bottom
    if view.error:
        body.line(None, [("cannot read the history: %s" % clean_text(view.error), "error")])
    elif view.loaded and not view.threads:
        body.line(None, [("no conversation matches" if view.query else "no conversation here yet"
                          + ("" if view.all else " (C-r: all directories)"), "muted")])
    keep = room // 3 if room >= 12 and view.threads else 0  # the preview's share when the list is long
    per = max(1, (room - keep - len(body.rows)) // 2)
    if view.index < view.scroll:
        view.scroll = view.index
    elif view.index >= view.scroll + per:
        view.scroll = view.index - per + 1
    view.scroll = max(0, min(view.scroll, max(0, len(view.threads) - per)))
    for i in range(view.scroll, min(len(view.threads), view.scroll + per)):
        t = view.threads[i]
        item = ("history", t["thread"])
        line1, line2 = _history_row_pieces(view, t, body.w, now, i == view.index)
        body.line(item, line1)
        body.line(item, line2)
    rows = body.rows[:room]
    t = view.selected_thread()
    preview_room = room - len(rows)
    if t is not None and room >= 12 and preview_room >= 3:
        view.preview_wanted = t["thread"]
        pv = _Screen(view, width, now)
        pv.line(None, [(pv.g["sep"] * pv.w, "muted")])
        p = view.preview if view.preview and view.preview.get("thread") == t["thread"] else None
        if p is None:
            pv.line(None, [("(reading the conversation…)", "muted")])
        elif p.get("error"):
            pv.line(None, [(clean_text(p["error"]), "error")])
        else:
            msgs = p.get("messages") or []
            if not msgs:
                pv.line(None, [("(no messages)", "muted")])
            lines = []
            for m in msgs:
                who = "you" if m.get("role") == "user" else t.get("agent") or "agent"
                for n, part in enumerate(wrap(pv.clean(clean_text(str(m.get("text") or ""))), max(1, pv.w - 2))):
                    lines.append([((who + ": ") if n == 0 else "  ", "accent" if m.get("role") == "user" else "muted"),
                                  (part, "fg")])
            for pieces in lines[-(preview_room - 1):]:
                pv.line(None, pieces)
        rows += pv.rows[:preview_room]
    rows += [(None, [])] * (room - len(rows))  # the footer stays at the bottom
    return (scr.rows + rows + foot.rows)[:height]
class EventStream(object):
    """Reads the server's /events in a thread; the latest snapshot waits in `latest`, and a byte on
    `wake_fd` tells the curses loop. Reconnects (and starts the server on demand) when it goes away."""

    def __init__(self, find_port, start_server=None, is_stopped=None):
        import threading
        self.find_port = find_port
        self.start_server = start_server
        self.is_stopped = is_stopped  # -> True while the server is stopped on purpose
        self.latest = None
        self.connected = False
        self.stopped = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.wake_fd = self._r
        self._stop = False
        self._lock = threading.Lock()
        self._sock = None
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)

    def start(self):
        self._thread.start()

    def _wake(self):
        try:
            os.write(self._w, b"x")
        except OSError:
            pass

    def take(self):
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            latest, self.latest = self.latest, None
        return latest

    def _run(self):
        import socket
        delay = 0.1
        started_at = 0.0
        while not self._stop:
            stopped = bool(self.is_stopped and self.is_stopped())
            if stopped != self.stopped:
                self.stopped = stopped
                self._wake()
                if not stopped:  # a user's command is starting it right now: connect, do not start another
                    started_at, delay = time.monotonic(), 0.1
            if stopped:  # stopped on purpose: neither connect nor start it; look again in a while
                self.connected = False
                time.sleep(0.5)
                continue
            try:
                port = self.find_port()
                sock = socket.create_connection((HOST, port), timeout=5)
            except OSError:
                self.connected = False
                self._wake()
                if self.start_server and time.monotonic() - started_at > 10:
                    started_at = time.monotonic()
                    try:
                        self.start_server()
                    except ServerStopped:
                        pass  # stopped meanwhile: the next turn shows it
                    except Exception as e:
                        log("sidebar could not start the server: %s" % e)
                time.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            self._sock = sock
            try:
                sock.settimeout(SSE_KEEPALIVE * 3)
                sock.sendall(("GET /events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
                              % (port, token_header(getattr(self.find_port, "token", None)))).encode())
                self._read(sock)
            except OSError:
                pass
            finally:
                sock.close()
                self._sock = None
            self.connected = False
            self._wake()
            delay = 0.1
            time.sleep(delay)

    def _read(self, sock):
        buf = b""
        header_done = False
        while not self._stop:
            data = sock.recv(262144)
            if not data:
                return
            buf += data
            if not header_done:
                if b"\r\n\r\n" not in buf:
                    continue
                head, buf = buf.split(b"\r\n\r\n", 1)
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    return
                header_done = True
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        try:
                            state = json.loads(line[6:].decode("utf-8"))
                        except ValueError:
                            continue
                        with self._lock:
                            self.latest = state
                        self.connected = True
                        self._wake()

    def close(self):
        self._stop = True
        if self._sock is not None:
            try:
                self._sock.shutdown(2)
            except OSError:
                pass


class PreviewStream(object):
    """The preview the sidebar shows, pushed by the server (GET /api/preview?…&follow=1) and read in
    a thread: `want(path)` names the stream (None: none), `take()` -> (path, doc) of the newest doc
    (or an error), a byte on `wake_fd` tells the curses loop. Nothing is read while nothing is shown.
    A preview the server refuses (the thread's agent is not in front of its pane: a 409) is asked
    again only once the state changed (`poke()`, on each /events snapshot), at least `refused_gap`
    after the refusal, or `refused_retry` later: a selected thread whose agent has exited costs the
    server nothing while nothing happens (it was asked every 1.5 s, each a read of the process table)."""

    refused_gap = 1.0
    refused_retry = 30.0

    def __init__(self, find_port):
        import threading
        self.find_port = find_port
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.wake_fd = self._r
        self._cond = threading.Condition()
        self._path = None
        self._sock = None
        self._latest = None
        self._thread = None
        self._stop = False
        self._poked = False

    def poke(self):
        """The state changed: a refused preview may be shown now (asked again; nothing else is)."""
        with self._cond:
            self._poked = True
            self._cond.notify()

    def want(self, path):
        import threading
        with self._cond:
            if path == self._path:
                return
            self._path = path
            self._latest = None
            sock = self._sock
            self._cond.notify()
        if sock is not None:
            try:
                sock.shutdown(2)  # the reader ends this stream and opens the new one
            except OSError:
                pass
        if path is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="preview", daemon=True)
            self._thread.start()

    def take(self):
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._cond:
            latest, self._latest = self._latest, None
        return latest

    def _put(self, path, doc):
        with self._cond:
            if path != self._path:
                return
            self._latest = (path, doc)
        try:
            os.write(self._w, b"x")
        except OSError:
            pass

    def _run(self):
        import socket
        while not self._stop:
            with self._cond:
                self._cond.wait_for(lambda: self._path is not None or self._stop)
                path = self._path
            if self._stop:
                return
            try:
                port = self.find_port()
                sock = socket.create_connection((HOST, port), timeout=5)
            except OSError as e:
                self._put(path, {"error": "no preview: %s" % e})
                time.sleep(1.0)
                continue
            with self._cond:
                if path != self._path:
                    sock.close()
                    continue
                self._sock = sock
            refused = False
            try:
                sock.settimeout(SSE_KEEPALIVE * 3)
                sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n"
                              % (path, port, token_header(getattr(self.find_port, "token", None)))).encode())
                refused = self._read(sock, path) == "refused"
            except OSError:
                pass
            finally:
                with self._cond:
                    self._sock = None
                sock.close()
            with self._cond:
                if refused:  # ask again when something changed (a poke), not on a timer
                    self._poked = False
                    moved = lambda: self._path != path or self._stop
                    if not self._cond.wait_for(moved, self.refused_gap):
                        self._cond.wait_for(lambda: self._poked or moved(), self.refused_retry)
                again = path == self._path
            if again and not refused:
                time.sleep(0.5)  # the stream ended on its own (server restart): open it again

    def _read(self, sock, path):
        buf = b""
        header_done = False
        while not self._stop:
            data = sock.recv(262144)
            if not data:
                return
            buf += data
            if not header_done:
                if b"\r\n\r\n" not in buf:
                    continue
                head, buf = buf.split(b"\r\n\r\n", 1)
                if b" 200 " not in head.split(b"\r\n", 1)[0]:
                    try:
                        doc = json.loads(buf.decode("utf-8"))
                    except ValueError:
                        doc = {}
                    self._put(path, {"error": doc.get("error") or "no preview"})
                    return "refused"
                header_done = True
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        try:
                            self._put(path, json.loads(line[6:].decode("utf-8")))
                        except ValueError:
                            continue

    def close(self):
        self._stop = True
        self.want(None)
        with self._cond:
            self._cond.notify()


class SidebarApp(object):
    """The curses sidebar: draws render() output, carries out the model's actions."""

    def __init__(self, tmux, find_port, start_server=None, post=None, environ=None, get=None, popup=False,
                 client=None, is_stopped=None, tab="agents", origin=None, ask_origin=None):
        env = os.environ if environ is None else environ
        self.tmux = tmux
        self.popup = popup
        self.tab = tab  # the popup's tab: "agents" or "history" (prefix o r opens on it)
        self.origin = origin or {}  # the client's pane under the popup: {"pane", "dir", "session", "client"}
        self._asking = None  # a thread asking tmux for the rest of origin (off the first screen's path)
        if ask_origin is not None:
            import threading
            self._asking = threading.Thread(target=lambda: self.origin.update(ask_origin()), daemon=True)
            self._asking.start()
        self.home = home_dir(env)
        self.history = None  # HistoryView, made with the popup
        self.trace = env.get("OPENSESSIONS_TRACE")  # bench/run.py: a line per history draw (when it reached the terminal)
        self.client = client or self.origin.get("client")  # the popup's client (it has no pane of its own)
        self.get = get
        self.pane = None if popup else env.get("TMUX_PANE")
        self.stream = EventStream(find_port, start_server, is_stopped)
        self.previews = PreviewStream(find_port)
        self._preview_path = self._preview_item = None
        self._preview_at = 0.0  # a remote host's preview: asked for again PREVIEW_INTERVAL after the answer
        self.post = post
        self.post_answer = None  # (path, body) -> (status, content): a POST whose answer we read
        self.model = None
        self.scr = None
        self.pairs = {}
        self.theme_name = None
        self.last_rows = []
        self.rows = []
        self.last_click = (0.0, -1)
        self.few_colors = False
        self._winch = None
        self.program = program_path()  # the file this sidebar's code was read from, and its stat then
        self.program_signature = file_signature(self.program)
        self._server_digest = None  # the server program's digest last looked at

    def updated(self):
        """True when an update replaced this sidebar's program: the server now runs a program other
        than the one this sidebar saw last, this sidebar's file was replaced since it started, and
        the file now holds the server's program (the plugin rebuilt the .pyz and restarted the
        server). A sidebar that started on the file's present code never answers True."""
        digest = getattr(self.stream.find_port, "digest", None)
        if self.popup or not digest or digest == self._server_digest:
            return False
        self._server_digest = digest
        if file_signature(self.program) in (self.program_signature, None):
            return False
        return program_digest(self.program) == digest

    def run(self):
        import curses
        import locale
        os.environ.setdefault("ESCDELAY", "25")
        locale.setlocale(locale.LC_ALL, "")
        self.model = SidebarModel(charset=terminal_charset(os.environ, _python_chose_utf8(os.environ)),
                                  popup=self.popup)
        if self.popup:
            self.history = HistoryView(self.origin.get("dir"), self.home, self.model.charset, tabs=True,
                                       pane=self.origin.get("pane"))
        if self.tab == "agents":
            self.stream.start()  # the history tab needs no live state: the stream starts with the agents tab
        try:
            outcome = curses.wrapper(self._main)
        finally:
            self.stream.close()
            self.previews.close()
        if outcome == "updated":  # the same pane and process, on the new code (curses has let the terminal go)
            log("sidebar: %s was updated; starting again on its new code" % self.program)
            try:
                os.execv(sys.executable, [sys.executable, "-S", self.program] + sys.argv[1:])
            except OSError as e:  # (this interpreter gone with a Python upgrade): the server places a new sidebar
                log("sidebar: could not start again (%s); ending" % e)
        return 0

    # -- colours -------------------------------------------------------------------------------
    def _colors(self, ui):
        """Colour pairs for the theme, and the theme's background painted under everything."""
        import curses
        name = (ui.get("theme") or DEFAULT_THEME, json.dumps(ui.get("colors") or {}, sort_keys=True))
        if name == self.theme_name or not curses.has_colors():
            return
        self.theme_name = name
        self.few_colors = curses.COLORS < 256
        pair = 1
        for key, (fg, bg) in sorted(theme_colors(resolve_theme(name[0], ui.get("colors")), curses.COLORS).items()):
            try:
                curses.init_pair(pair, fg, bg)
            except curses.error:
                continue
            self.pairs[key] = curses.color_pair(pair)
            pair += 1
        if ("fg", False) in self.pairs:
            self.scr.bkgd(" ", self.pairs[("fg", False)])
        self.scr.clear()
        self.last_rows = []  # colours changed: draw everything again

    def _attr(self, style, selected):
        import curses
        attr = self.pairs.get((style, selected or style == "sel"), 0)
        if style in ("accent",) and not selected:
            attr |= curses.A_BOLD
        if style == "muted" and self.few_colors and not selected:
            attr |= curses.A_DIM  # 8 colours: muted text is the text colour, dimmed
        if selected and not self.pairs:
            attr |= curses.A_REVERSE
        return attr

    # -- main loop -----------------------------------------------------------------------------
    def _main(self, scr):
        import curses
        import select
        self.scr = scr
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        scr.keypad(True)
        scr.nodelay(True)
        curses.mousemask(curses.ALL_MOUSE_EVENTS | curses.REPORT_MOUSE_POSITION)
        curses.mouseinterval(0)
        self._colors({})
        self._watch_resize()
        if self.tab == "history" and not self.history.loaded:
            self._history_fetch()  # the first screen is the list: no "reading…" drawn before it
        while True:
            self._draw()
            if self.tab == "history":
                if self._history_work():
                    continue
            agents = self.tab == "agents"  # the history tab shows no live state: no spinner, no preview
            running = agents and any(t["status"] in ACTIVE_STATUSES for s in self.model.sessions()
                                     if not s.get("stale") for t in s.get("threads", []))
            timeout = 0.2 if running else None  # no CPU between events unless a spinner turns
            if agents and timeout is None and any(h.get("state") != "connected"
                                                  for h in (self.model.state or {}).get("hosts") or ()):
                timeout = 1.0  # a host's "retrying in N s" counts down
            wanted = self.model.preview_wanted if agents else None
            host = (self.model.session(wanted[1]) or {}).get("host") if wanted is not None else None
            self._want_preview(None if host else wanted)  # a local pane's preview is pushed to us
            if host:
                # a host's pane: asked of its server (through ours) at most PREVIEW_INTERVAL apart
                due = self._preview_at + PREVIEW_INTERVAL - time.monotonic()
                if due <= 0 or (self.model.preview or {}).get("item") != wanted:
                    self._fetch_preview()
                    continue
                timeout = due if timeout is None else min(timeout, due)
            try:
                ready, _, _ = select.select([0, self.stream.wake_fd, self._winch[0], self.previews.wake_fd], [], [],
                                            timeout)
            except InterruptedError:
                ready = [0]
            if not ready:
                self.model.tick()
            if self._winch[0] in ready:
                self._resized()
            if self.previews.wake_fd in ready:
                self._preview_came()
            if self.stream.wake_fd in ready:
                state = self.stream.take()
                if state is not None:
                    self.model.receive(state, self._own_session(state))
                    self._colors(state.get("ui") or {})
                    self.previews.poke()  # a preview refused before may be possible now
                self.model.set_connected(self.stream.connected)
                self._stopped_state()
                if state is not None and self.updated():
                    return "updated"
            if 0 in ready:
                if self._keys() == "quit":
                    return

    def _stopped_state(self):
        """Server stopped on purpose: one calm line saying so and which key starts it again."""
        if self.stream.stopped and not self.model.stopped:
            key = _tmux_option(self.tmux, "@opensessions-bound-key") or "o"
            self.model.server_stopped("stopped: prefix %s s starts it" % key)
            self.last_rows = []
        elif not self.stream.stopped and self.model.stopped:
            self.model.server_stopped(None)
            self.last_rows = []

    # -- the history tab ------------------------------------------------------------------------
    def _history_work(self):
        """After a draw of the history tab: the first list, then the selected conversation's preview
        (only once no key waits: typing stays fast). -> True when something was fetched (draw again)."""
        import select
        view = self.history
        if not view.loaded:
            self._history_fetch()
            return True
        wanted = view.preview_wanted
        if wanted and (view.preview or {}).get("thread") != wanted:
            if select.select([0], [], [], 0)[0]:
                return False  # keys first
            self._history_preview(wanted)
            return True
        return False

    def _history_get(self, path):
        if self.get is None:
            raise OSError("no server")
        status, body = self.get(path)
        doc = json.loads(body.decode("utf-8")) if body else {}
        if status != 200:
            raise OSError((doc or {}).get("error") or "HTTP %d" % status)
        return doc

    def _history_fetch(self, offset=0):
        path = "/api/history?" + query_string(self.history.params(offset))
        try:
            doc = self._history_get(path)
        except ConnectionError as e:  # no server (prefix o r opens the popup directly): start it, ask again
            try:
                if self.stream.start_server is None:
                    raise
                self.stream.start_server()
                doc = self._history_get(path)
            except (OSError, ValueError, OpensessionsError) as e2:
                self.history.set_answer(str(e2) or str(e) or "no answer")
                return
        except (OSError, ValueError) as e:
            self.history.set_answer(str(e) or "no answer")
            return
        self.history.set_answer(doc, offset)

    def _history_preview(self, thread):
        try:
            doc = self._history_get("/api/history/preview?n=6&" + query_string({"thread": thread}))
        except (OSError, ValueError) as e:
            self.history.set_preview(thread, error=str(e) or "no preview")
            return
        self.history.set_preview(thread, doc)

    def _origin(self):
        """The pane, session and client the popup opened over, once tmux has said (we asked while the
        first screen was drawn)."""
        if self._asking is not None:
            self._asking.join(5)
            self._asking = None
            self.client = self.client or self.origin.get("client")
        return self.origin

    def _history_resume(self, thread, fork, where):
        """POST /api/resume: a new window in this client's session (or the pane under the popup);
        a live thread: its pane. Then the client goes there and the popup closes."""
        view = self.history
        self._origin()
        body = {"thread": thread, "fork": fork}
        if where == "here":
            self._origin()
            if not (self.origin.get("pane") or view.pane):
                view.message = "no pane to resume in"
                return None
            body["target"] = self.origin.get("pane") or view.pane
        elif self.history.session or self.origin.get("session"):
            body["session"] = self.history.session or self.origin["session"]
        view.busy = "%s %s…" % ("forking" if fork else "resuming", thread)
        if self.scr is not None:
            self._draw()
        try:
            status, content = self.post_answer("/api/resume", body)
        except OSError as e:
            status, content = 0, json.dumps({"error": str(e)}).encode()
        finally:
            view.busy = None
        try:
            doc = json.loads(content.decode("utf-8")) if content else {}
        except ValueError:
            doc = {}
        if status != 200:
            view.message = "not resumed: %s" % (doc.get("error") or "HTTP %d" % status)
            return None
        pane = doc.get("pane")
        if pane and (where != "here" or doc.get("action") == "jumped"):  # a live one: go to its pane
            self._switch(pane)
        notes = [str(n) for n in doc.get("notes") or () if n]
        if notes:  # (a gone directory or program): the popup closes, so tmux's status line says it
            client = self.client or self.origin.get("client")
            try:
                self.tmux.run("display-message", *(["-c", client] if client else []),
                              tmux_literal(clean_text("opensessions: " + "; ".join(notes))))
            except TmuxError:
                pass
        return "quit"

    def _want_preview(self, item):
        """The preview shown (render's choice) of a local thread is the one streamed: the server
        pushes its lines when its pane prints (PreviewStream); nothing is read while none is shown."""
        path = None
        if item is not None:
            h, _ = self.scr.getmaxyx()
            from urllib.parse import quote
            path = "/api/preview?thread=%s&lines=%d&follow=1" % (quote("%s:%s" % (item[2], item[3]), safe=":"),
                                                                 max(3, min(60, h)))
        if path != self._preview_path:
            self._preview_path, self._preview_item = path, item
            self.previews.want(path)

    def _preview_came(self):
        got = self.previews.take()
        if got is None or got[0] != self._preview_path:
            return
        doc = got[1]
        if doc.get("error"):
            self.model.set_preview(self._preview_item, error=doc["error"])
        else:
            self.model.set_preview(self._preview_item, doc.get("lines") or [])
    def _fetch_preview(self):
        """GET /api/preview for the thread shown, on a remote host (only while it is shown)."""
        item = self.model.preview_wanted
        if self.get is None or item is None:
            self.model.set_preview(item, error="no preview")
            return
        h, _ = self.scr.getmaxyx()
        from urllib.parse import quote
        host = (self.model.session(item[1]) or {}).get("host")
        try:
            status, body = self.get("/api/preview?thread=%s&lines=%d%s" % (
                quote("%s:%s" % (item[2], item[3]), safe=":"), max(3, min(60, h)),
                "&host=" + quote(host, safe="") if host else ""))
            doc = json.loads(body.decode("utf-8")) if body else {}
            if status == 200:
                self.model.set_preview(item, doc.get("lines") or [])
            else:
                self.model.set_preview(item, error=doc.get("error") or "no preview")
        except (OSError, ValueError) as e:
            self.model.set_preview(item, error="no preview: %s" % e)
        # counted from the answer: a slow read (a host's pane, over ssh) leaves the loop its time to
        # take new state between reads, rather than reading again at once
        self._preview_at = time.monotonic()

    def _watch_resize(self):
        """A width change redraws at once: SIGWINCH wakes the select() through a pipe (curses only
        notices a resize at the next key otherwise)."""
        import signal
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._winch = (r, w)

        def on_winch(signum, frame):
            try:
                os.write(w, b"x")
            except OSError:
                pass
        signal.signal(signal.SIGWINCH, on_winch)

    def _resized(self):
        import curses
        try:
            while os.read(self._winch[0], 4096):
                pass
        except OSError:
            pass
        try:
            size = os.get_terminal_size(sys.__stdout__.fileno())
            curses.resizeterm(size.lines, size.columns)
        except (OSError, ValueError, AttributeError, curses.error):
            return
        self.scr.clear()
        self.last_rows = []

    def _own_session(self, state):
        for s in state.get("sessions", []):
            if s.get("host"):  # a host's pane ids are its own
                continue
            for w in s["windows"]:
                if any(p["id"] == self.pane for p in w["panes"]):
                    return s["name"]
        return self.model.own_session

    def _keys(self):
        import curses
        while True:
            try:
                ch = self.scr.get_wch()
            except curses.error:
                return None
            if isinstance(ch, int):
                name = curses.keyname(ch).decode("ascii", "replace")
                if name == "KEY_RESIZE":
                    self.last_rows = []
                    continue
                if name == "KEY_MOUSE":
                    actions = self._mouse() if self.tab == "agents" else []
                else:
                    actions = self._key(name)
            elif ch == "\x1b":
                actions = self._escape()
            else:
                actions = self._key(ch)
            for action in actions:
                if self.carry_out(action) == "quit":
                    return "quit"
            self._draw()

    def _escape(self):
        """Esc, or the focus-in report ESC [ I (which `opensessions focus` sends): -> actions."""
        import curses
        more = ""
        self.scr.timeout(30)  # the rest of a report is on its way; a lone Esc waits 30 ms
        try:
            for _ in range(2):
                try:
                    ch = self.scr.get_wch()
                except curses.error:
                    break
                if not isinstance(ch, str) or (not more and ch != "["):
                    if isinstance(ch, str):
                        more += ch
                    break
                more += ch
        finally:
            self.scr.nodelay(True)
        if more == "[I":
            return self.model.key("FOCUS") if self.tab == "agents" else []
        if more == "[O":
            return []
        actions = self._key("\x1b")
        for ch in more:
            actions += self._key(ch)
        return actions

    def _key(self, k):
        """A key for the tab shown: the agents list (SidebarModel) or the history (HistoryView). In the
        popup, Tab on the agents tab opens the history tab."""
        if self.tab == "history":
            return self.history.key(k)
        if self.popup and k == "\t" and self.model.mode == "list":
            return [("tab",)]
        return self.model.key(k)

    def _mouse(self):
        import curses
        try:
            _, x, y, _, bstate = curses.getmouse()
        except curses.error:
            return []
        if bstate & getattr(curses, "BUTTON4_PRESSED", 0):
            self.model.wheel(-1)
            return []
        if bstate & getattr(curses, "BUTTON5_PRESSED", 0x200000):
            self.model.wheel(1)
            return []
        if bstate & (curses.BUTTON1_CLICKED | curses.BUTTON1_PRESSED | curses.BUTTON1_DOUBLE_CLICKED):
            now = time.monotonic()
            double = bool(bstate & curses.BUTTON1_DOUBLE_CLICKED) or (
                now - self.last_click[0] < 0.4 and self.last_click[1] == y)
            self.last_click = (now, y)
            return self.model.click(y, self.rows, double, x)
        return []

    def _draw(self):
        import curses
        h, w = self.scr.getmaxyx()
        if self.tab == "history":
            self.rows = render_history(self.history, w, h)
            current = self.history.selected
        else:
            self.rows, view = render_view(self.model, w, h)
            self.model.viewed(view)
            current = self.model.selected
        for y in range(h):
            row = self.rows[y] if y < len(self.rows) else (None, [])
            selected = row[0] is not None and row[0] == current
            key = (row[1], selected, w)
            if y < len(self.last_rows) and self.last_rows[y] == key:
                continue
            try:
                self.scr.move(y, 0)
                self.scr.clrtoeol()
                x = 0
                for text, style in row[1]:
                    if x >= w:
                        break
                    self.scr.addstr(y, x, text, self._attr(style, selected))
                    x += display_width(text)
                if selected and x < w:
                    self.scr.addstr(y, x, " " * (w - x - (1 if y == h - 1 else 0)), self._attr("sel", True))
            except curses.error:
                pass  # the last cell of the screen, or a width change in flight
            if y < len(self.last_rows):
                self.last_rows[y] = key
            else:
                self.last_rows.append(key)
        del self.last_rows[h:]
        self.scr.noutrefresh()
        curses.doupdate()
        if self.trace and self.tab == "history":
            try:
                with open(self.trace, "a") as f:
                    f.write("%.6f %d %d %.6f %s\n" % (time.monotonic(), self.history.loaded, self.history.total,
                                                       time.process_time(), json.dumps(self.history.query)))
            except OSError:
                self.trace = None

    # -- actions -------------------------------------------------------------------------------
    def _client_for_me(self):
        """The tmux client looking at this sidebar's window (or None: let tmux choose)."""
        state = self.model.state or {}
        my_window = None
        for s in state.get("sessions", []):
            if s.get("host"):
                continue
            for w in s["windows"]:
                if any(p["id"] == self.pane for p in w["panes"]):
                    my_window = w["id"]
        clients = state.get("clients", [])
        for c in clients:
            if c["window"] == my_window:
                return c["name"]
        return clients[0]["name"] if len(clients) == 1 else None

    def _switch(self, target):
        client = self.client or self._client_for_me()
        args = ["switch-client"] + (["-c", client] if client else []) + ["-t", target]
        try:
            self.tmux.run(*args)
        except TmuxError as e:
            self.model.say(str(e))

    def _reply(self, thread, action, text, host=None):
        """POST /api/reply; the server's answer (or its reason for refusing) goes to the footer."""
        body = {"thread": thread, "action": action}
        if text is not None:
            body["text"] = text
        if host is not None:
            body["host"] = host
        try:
            doc = self.post("/api/reply", body) if self.post else None
            short = {"approve": "approved", "approve-always": "approved always", "deny": "denied", "text": "sent"}[action]
            answer = doc.get("answer") if isinstance(doc, dict) else None
            self.model.say("%s: %s" % (short, answer) if answer and action == "approve-always" else short,
                           answered=True)
        except OSError as e:
            reason = str(e)
            try:
                reason = json.loads(reason).get("error") or reason
            except (ValueError, AttributeError):
                pass
            self.model.say("not sent: %s" % reason)

    def _move_clients_off(self, name):
        """Killing the session a client views would detach it: move such clients elsewhere first."""
        others = [s["name"] for s in self.model.sessions() if s["name"] != name and not s.get("host")]
        if not others:
            return
        target = self.model.own_session if self.model.own_session in others else others[0]
        for c in (self.model.state or {}).get("clients", []):
            if c["session"] == name:
                self.tmux.run("switch-client", "-c", c["name"], "-t", "=" + target)

    def carry_out(self, action):
        """Carry out one of the model's actions (see SidebarModel) through tmux, the server or an
        opener; a failure goes to the footer. -> "quit" when the sidebar should end."""
        import subprocess
        kind = action[0]
        try:
            if kind == "switch":
                self._switch("=" + action[1])
            elif kind == "switch-pane":
                self._switch(action[2])
            elif kind == "remote":
                here = self.model.own_session
                if here is None and self.popup:
                    here = self.tmux.run("display-message", "-p", "-c", self.client, "#{session_name}").strip() \
                        if self.client else None
                open_remote(self.tmux, program_argv(), action[1], action[2], action[3], action[4],
                            client=self.client or self._client_for_me(), here=here)
            elif kind in ("ui", "mute"):
                body = action[1] if kind == "ui" else {"session": action[1]}
                if self.post:
                    self.post("/ui" if kind == "ui" else "/mute", body)
            elif kind == "kill":
                self._move_clients_off(action[1])
                self.tmux.run("kill-session", "-t", "=" + action[1])
            elif kind == "complete":
                self.model.complete(*complete_directory(action[1], list_subdirectories, home_dir()))
            elif kind == "new":
                directory = os.path.join(home_dir(), os.path.expanduser(action[2]))  # relative: under home
                if not os.path.isdir(directory):
                    self.model.say("no such directory: %s" % directory)
                    return None
                self.tmux.run("new-session", "-d", "-s", tmux_literal(action[1]), "-c", tmux_literal(directory))
                self._switch("=" + action[1])
            elif kind == "open":
                import shutil
                wanted = "open" if sys.platform == "darwin" else "xdg-open"
                opener = shutil.which(wanted)
                if not opener:
                    self.model.say("cannot open http://localhost:%d: %s is not installed%s" % (
                        action[1], wanted, " (xdg-utils)" if wanted == "xdg-open" else ""))
                    return None
                subprocess.Popen([opener, "http://localhost:%d" % action[1]], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            elif kind == "quit":
                return "quit"
            elif kind == "reply":
                self._reply(*action[1:])
            elif kind == "tab":
                self._origin()
                self.tab = "agents" if self.tab == "history" else "history"
                self.last_rows = []
                if self.tab == "agents" and not self.stream._thread.is_alive() and not self.stream._stop:
                    self.stream.start()
            elif kind == "fetch":
                self._history_fetch()
            elif kind == "more":
                self._history_fetch(offset=len(self.history.threads))
            elif kind == "resume":
                return self._history_resume(*action[1:])
            elif kind == "leave":
                try:
                    self.tmux.run("last-pane")
                except TmuxError:
                    self.tmux.run("select-pane", "-t", "{next}")
        except (TmuxError, OpensessionsError) as e:
            self.model.say(str(e))
        except OSError as e:
            self.model.say("server: %s" % e)
        return None


def even_layout(window_width, height, sidebar, panes, position="left"):
    """A tmux layout string: the sidebar at its width, the other panes side by side, even.

    sidebar: (pane number, width); panes: pane numbers (the digits of %N). Pure."""
    sb_id, sb_w = sidebar
    n = max(1, len(panes))
    room = window_width - sb_w - n  # one separator column per work pane
    widths = [room // n + (1 if i < room % n else 0) for i in range(n)]
    cells = []
    order = [("sb", sb_w)] + list(zip(panes, widths)) if position == "left" else list(zip(panes, widths)) + [("sb", sb_w)]
    x = 0
    for pid, w in order:
        num = sb_id if pid == "sb" else pid
        cells.append("%dx%d,%d,0,%d" % (w, height, x, num))
        x += w + 1
    body = "%dx%d,0,0{%s}" % (window_width, height, ",".join(cells))
    csum = 0
    for ch in body:
        csum = ((csum >> 1) + ((csum & 1) << 15) + ord(ch)) & 0xffff
    return "%04x,%s" % (csum, body)


STASH_SESSION = HIDDEN_SESSION_PREFIX + "stash"
# A sidebar runs only where a client looks, plus this many "warm" ones in the windows clients left
# last (drawn at once if a client comes back); every other window's sidebar pane holds a sleeping
# placeholder that costs ~0.2 MB and no CPU. Run as an argv (not through the user's shell). It
# draws the sidebar's title and the key that starts opensessions: seen only for the moment a live
# sidebar takes its place, or while the server is stopped (then nothing swaps a sidebar in).
SIDEBAR_WARM = 3
SIDEBAR_SLEEPER = ("sh", "-c", "printf '%s\\n\\n%s\\n' ' opensessions' ' prefix o s: start / focus';"
                   " exec sleep 2147483647")


def shown_windows(sessions, clients):
    """Windows a client looks at: each terminal client's current window, and every window of the
    session a control-mode client that takes pane output (e.g. iTerm2's tmux integration: windows as
    tabs) is attached to. Ours (no-output) shows nothing. Pure."""
    shown = set()
    for c in clients:
        if not c.get("control"):
            shown.add(c.get("window"))
        elif not c.get("noOutput"):
            for s in sessions:
                if s["id"] == c.get("sessionId"):
                    shown.update(w["id"] for w in s["windows"])
    shown.discard(None)
    return shown


class SidebarPlan(object):
    """The decisions of SidebarPanes, pure: from tmux's sessions and clients, the preferences and
    what SidebarPanes remembers (`memory`: when each window was last shown, windows whose focused
    sidebar left, when each pane was last fixed), the tmux steps that put every window's sidebar
    right, and the memory after them. Nothing runs here: run_sidebar_steps carries the steps out.

    Steps: ("run", args): one tmux command (a failure ends the round); ("each", args): one pane's
    command (a pane gone meanwhile costs only that step); ("split", args, window id, asleep): a new
    sidebar pane (tmux prints its id), then marked as ours."""

    def __init__(self, sessions, clients, ui, memory, now, command, warm=SIDEBAR_WARM):
        self.sessions = sessions
        self.clients = clients
        self.ui = ui
        self.shown_at = dict(memory.get("shown_at") or {})
        self.focused = set(memory.get("focused") or ())
        self.fixed = dict(memory.get("fixed") or {})
        self.now = now
        self.command = command
        self.warm = warm
        self.steps = []
        self.refresh_in = None  # a fix that must wait: seconds until the next look

    def memory(self):
        return {"shown_at": self.shown_at, "focused": self.focused, "fixed": self.fixed}

    def _stash(self):
        return next((s for s in self.sessions if s["name"] == STASH_SESSION), None)

    def plan(self):
        """-> the steps (also in self.steps)."""
        ui = self.ui
        stash = self._stash()
        parked = [p for w in (stash or {}).get("windows", []) for p in w["panes"] if p["sidebar"]]
        shown = shown_windows(self.sessions, self.clients)
        windows = set()
        for s in self.sessions:
            windows.update(w["id"] for w in s["windows"])
        self.shown_at = {w: t for w, t in self.shown_at.items() if w in windows}
        self.focused &= windows
        for w in shown:
            self.shown_at[w] = self.now
        # running sidebars no client looks at: the next shown window takes one of these
        spare = len([p for w, p in self._slots() if w not in shown and not p.get("sidebarAsleep")])
        moved_panes = False
        for s in self.sessions:
            if s["name"].startswith(HIDDEN_SESSION_PREFIX):
                continue
            for w in s["windows"]:
                sidebars = [p for p in w["panes"] if p["sidebar"]]
                work = [p for p in w["panes"] if not p["sidebar"]]
                if not ui["visible"]:
                    for p in sidebars:
                        self._park(p, stash)
                        stash = stash or {"windows": []}
                        moved_panes = True
                    continue
                if sidebars and not work:
                    if len(s["windows"]) > 1:
                        self._run("kill-window", "-t", w["id"])
                    else:
                        self._run("split-window", "-h", "-t", sidebars[0]["id"], "-c",
                                  tmux_literal(s.get("dir") or home_dir()))
                        self._run("resize-pane", "-t", sidebars[0]["id"], "-x", ui["width"])  # back at its side
                    moved_panes = True
                    continue
                for extra in sidebars[1:]:
                    self._run("kill-pane", "-t", extra["id"])
                    moved_panes = True
                if not sidebars:
                    mine = next((p for p in parked if p.get("sidebarWindow") == w["id"]), None) or \
                        next(iter(parked), None)
                    if mine is not None:
                        parked.remove(mine)
                        self._join(mine["id"], work[0]["id"], w["id"])
                    else:
                        # a shown window takes a spare next round (swapped in: drawn at once);
                        # else it starts one; a window nobody looks at gets one while fewer than
                        # `warm` are spare, else a placeholder
                        if w["id"] in shown:
                            live = spare <= 0
                            spare -= 0 if live else 1
                        else:
                            live = spare < self.warm
                            spare += 1 if live else 0
                        self._split(work[0]["id"], w["id"], s.get("dir"), live)
                    moved_panes = True
                elif w.get("width", 0) > ui["width"] + 10:
                    sb = sidebars[0]
                    edge = sb["left"] == 0 if ui["position"] == "left" else sb["left"] + sb["width"] == w["width"]
                    moved = sb["top"] != 0 or sb["height"] != w.get("height", sb["height"]) or not edge
                    if (moved or sb["width"] != ui["width"]) and self._may_fix(sb["id"]):
                        if moved:  # a layout (tiled, main-vertical…) moved it: back to a full-height column
                            self._join(sb["id"], work[0]["id"], w["id"])
                        else:
                            self._run("resize-pane", "-t", sb["id"], "-x", ui["width"])
        if not moved_panes:  # every window has its one sidebar: now who runs and who sleeps
            self._balance(shown)
        return self.steps

    def _slots(self):
        """(window id, sidebar pane) for every sidebar pane, parked ones included, each pane once
        (a window linked into two sessions is listed twice)."""
        out, seen = [], set()
        for s in self.sessions:
            if s["name"].startswith(HIDDEN_SESSION_PREFIX) and s["name"] != STASH_SESSION:
                continue
            for w in s["windows"]:
                for p in w["panes"]:
                    if p["sidebar"] and p["id"] not in seen:
                        seen.add(p["id"])
                        out.append((w["id"], p))
        return out

    def _balance(self, shown):
        """Shown windows get a running sidebar (a spare swapped in, else the placeholder started),
        `warm` spares are kept (the windows shown last), the rest sleep."""
        stash = self._stash()
        stash_windows = {w["id"] for w in (stash or {}).get("windows", [])}
        slots = self._slots()
        left_over = [p for w, p in slots if w in stash_windows]
        if self.ui["visible"] and left_over:
            # every window has its sidebar: parked panes left over (their windows closed while
            # hidden) are not needed any more
            for p in left_over:
                self._each("kill-pane", "-t", p["id"])
            return
        home = {p["id"]: (p.get("sidebarWindow") or w) if w in stash_windows else w for w, p in slots}
        work = {}  # window -> a work pane, to take the focus a placeholder must not hold
        for s in self.sessions:
            for win in s["windows"]:
                work.setdefault(win["id"], next((q["id"] for q in win["panes"] if not q["sidebar"]), None))
        free = [(w, p) for w, p in slots if w not in shown and not p.get("sidebarAsleep")]
        free.sort(key=lambda wp: -self.shown_at.get(wp[0], -1.0))  # most recently shown first
        for w, p in slots:
            if w in shown and p.get("sidebarAsleep"):
                if free:
                    fw, fp = free.pop(0)
                    self._each("swap-pane", "-d", "-Z", "-s", fp["id"], "-t", p["id"], ";",
                               "set-option", "-p", "-t", fp["id"], "@opensessions-window", home[p["id"]], ";",
                               "set-option", "-p", "-t", p["id"], "@opensessions-window", home[fp["id"]],
                               *(self._unfocus(fw, fp, work) + self._refocus(w, fp["id"])))
                else:
                    self._wake(p["id"], self._refocus(w, p["id"]))
        while len(free) > self.warm:
            w, p = free.pop()  # the least recently shown
            self._sleep(p["id"], self._unfocus(w, p, work))
        if len(free) < self.warm:
            asleep = [(w, p) for w, p in slots if w not in shown and p.get("sidebarAsleep")]
            asleep.sort(key=lambda wp: -self.shown_at.get(wp[0], -1.0))  # most recently shown first
            for w, p in asleep[:self.warm - len(free)]:
                self._wake(p["id"], self._refocus(w, p["id"]))

    def _unfocus(self, window, pane, work):
        """A running sidebar that had the focus of its window leaves it to a placeholder: the
        window's focus goes to a work pane (a placeholder named `sleep` would name the window),
        and comes back to the sidebar with the next running one. -> tmux arguments to add."""
        if not pane.get("active") or not work.get(window):
            return ()
        self.focused.add(window)
        return (";", "select-pane", "-t", work[window])

    def _refocus(self, window, pane):
        if window not in self.focused:
            return ()
        self.focused.discard(window)
        return (";", "select-pane", "-t", pane)

    def _may_fix(self, pane):
        """At most one fix a second per pane, so a layout that refuses our width never makes us
        spin; a fix that has to wait is looked at again when it may run."""
        wait = 1.0 - (self.now - self.fixed.get(pane, -10.0))
        if wait > 0:
            self.refresh_in = wait if self.refresh_in is None else min(self.refresh_in, wait)
            return False
        self.fixed[pane] = self.now
        return True

    # -- the steps ---------------------------------------------------------------------------------
    def _run(self, *args):
        self.steps.append(("run", args))

    def _each(self, *args):
        self.steps.append(("each", args))

    def _wake(self, pane, more=()):
        self._each("respawn-pane", "-k", "-t", pane, self.command, ";",
                   "set-option", "-p", "-u", "-t", pane, "@opensessions-asleep", *more)

    def _sleep(self, pane, more=()):
        self._each(*(("respawn-pane", "-k", "-t", pane) + SIDEBAR_SLEEPER + (
            ";", "set-option", "-p", "-t", pane, "@opensessions-asleep", "1") + tuple(more)))

    def _flags(self):
        return ["-h", "-f", "-d", "-l", str(self.ui["width"])] + (["-b"] if self.ui["position"] == "left" else [])

    def _split(self, target, window_id, cwd, live=True):
        command = [self.command] if live else list(SIDEBAR_SLEEPER)
        self.steps.append(("split", tuple(["split-window"] + self._flags() + [
            "-t", target, "-c", tmux_literal(cwd or home_dir()), "-P", "-F", "#{pane_id}"] + command),
            window_id, not live))

    def _join(self, pane, target, window_id):
        self._run(*(["join-pane"] + self._flags() + ["-s", pane, "-t", target]))
        self._run(*sidebar_mark_args(pane, window_id))

    def _park(self, pane, stash):
        if stash is None:
            self._run("new-session", "-d", "-s", STASH_SESSION, "-x", "80", "-y", "24")
        self._run("break-pane", "-d", "-s", pane["id"], "-t", "=%s:" % STASH_SESSION)


def sidebar_mark_args(pane, window_id, asleep=None):
    """tmux arguments that mark a pane as a sidebar of a window (and asleep or awake, when given)."""
    more = [] if asleep is None else [";", "set-option", "-p", "-t", pane, "@opensessions-asleep", "1"] \
        if asleep else [";", "set-option", "-p", "-u", "-t", pane, "@opensessions-asleep"]
    return ["set-option", "-p", "-t", pane, "@opensessions-sidebar", "1", ";",
            "set-option", "-p", "-t", pane, "@opensessions-window", window_id] + more


def run_sidebar_steps(run, steps):
    """Carry out SidebarPlan's steps with `run` (the tmux gateway's Tmux.run)."""
    for step in steps:
        if step[0] == "run":
            run(*step[1])
        elif step[0] == "each":
            try:
                run(*step[1])
            except TmuxGone:
                raise
            except TmuxError as e:
                log("sidebar panes: %s" % e)
        elif step[0] == "split":
            pane = run(*step[1]).strip()
            if pane:
                run(*sidebar_mark_args(pane, step[2], asleep=step[3]))


class SidebarPanes(object):
    """Keeps a sidebar pane in every window while the sidebar is shown (server side).

    Runs after every tmux refresh: new windows get one, the width is put back after splits,
    resizes and layout changes, a window left with only its sidebar is closed (or, if it is the
    session's last window, gets a fresh shell, so the session never dies for it), and hiding
    parks the panes in the hidden session _os_stash so they come back without restarting.

    Only the windows a client shows (and SIDEBAR_WARM more, the ones clients left last) run the
    curses sidebar; the others hold a placeholder (@opensessions-asleep). When a client switches to
    a window whose sidebar sleeps, the running sidebar of the window it left (the free one shown
    last) is swapped into it (swap-pane: one tmux command, the sidebar already drawn, its cursor and
    filter coming along) and the placeholder goes where that one was; only when no running sidebar
    is free does the placeholder become one (respawn-pane).

    The decisions are SidebarPlan's (pure); this runs them. It is given only what it needs: the
    tmux gateway, `world()` -> (sessions, clients, ui) as the server's store has them now, and the
    server's schedule_refresh(delay).
    """

    def __init__(self, tmux, world, schedule_refresh, command, warm=SIDEBAR_WARM, clock=time.monotonic):
        self.tmux = tmux
        self.world = world
        self.schedule_refresh = schedule_refresh
        self.command = command  # the shell command that runs `opensessions sidebar`
        self.warm = warm
        self.clock = clock
        self.busy = False
        self.fixed = {}  # pane -> when we last corrected its place or width
        self.shown_at = {}  # window id -> when a client last showed it
        self.focused = set()  # windows whose focused sidebar left for another window
        self.follow_ups = 0  # reads of tmux asked for in a row after changing panes

    def sync(self):
        """Put every window's sidebar right. -> True when panes moved and the layout just read is
        stale: the caller reads tmux again before anything uses it (at most a few rounds in a row)."""
        if self.busy:
            return False
        self.busy = True
        try:
            sessions, clients, ui = self.world()
            plan = SidebarPlan(sessions, clients, ui, {"shown_at": self.shown_at, "focused": self.focused,
                                                      "fixed": self.fixed}, self.clock(), self.command, self.warm)
            steps = plan.plan()
            self.shown_at, self.focused, self.fixed = plan.shown_at, plan.focused, plan.fixed
            if plan.refresh_in is not None:
                self.schedule_refresh(plan.refresh_in)  # a fix that had to wait
            run_sidebar_steps(self.tmux.run, steps)
            changed = bool(steps)
        except TmuxError as e:
            log("sidebar panes: %s" % e)
            changed = False
        except Exception as e:  # it runs first in every refresh: a slip here must not stop the rest
            log("sidebar panes: %s: %s" % (type(e).__name__, e))
            changed = False
        finally:
            self.busy = False
        # What we changed is read back at once (tmux tells a control client about other sessions'
        # panes only once a second): at most a few rounds in a row, so nothing can loop.
        self.follow_ups = self.follow_ups + 1 if changed else 0
        return changed and self.follow_ups <= 4

    def shown_windows(self):
        sessions, clients, _ = self.world()
        return shown_windows(sessions, clients)

    def remove_all(self):
        """Kill every sidebar pane and the stash session (uninstall)."""
        for s in self.world()[0]:
            for w in s["windows"]:
                for p in w["panes"]:
                    if p["sidebar"]:
                        try:
                            self.tmux.run("kill-pane", "-t", p["id"])
                        except TmuxError:
                            pass
        try:
            self.tmux.run("kill-session", "-t", "=" + STASH_SESSION)
        except TmuxError:
            pass


##############################################################################
# CLI
##############################################################################


def _live_threads(args):
    """The running server's threads (exact pid links), or [] when no server runs."""
    port, info = find_server(_socket_from_args(args))
    if info is None:
        return []
    try:
        status, content = Client(port, timeout=2, token=info.get("token")).request("GET", "/state")
        state = json.loads(content.decode("utf-8")) if status == 200 else {}
    except (OSError, ValueError):
        return []
    return local_threads(state)


def local_threads(state):
    """This machine's threads in a /state document (a host's pids and panes are that host's). Pure."""
    threads = [t for t in state.get("threads", []) if not t.get("host")]
    for s in state.get("sessions", []):
        if not s.get("host"):
            threads.extend(s.get("threads", []))
    return threads


def _resurrect(args, echo=None):
    log_path = os.path.join(state_dir(), "opensessions.log")
    return Resurrect(_tmux(args), live_threads=_live_threads(args), log=ResurrectLog(log_path, echo=echo))


def cmd_save(args):
    """Run by tmux-resurrect's @resurrect-hook-post-save-all."""
    records, rdir = _resurrect(args).save()
    print("saved %d agent conversation(s) next to %s" % (len(records), rdir))
    return 0


def cmd_restore(args):
    """Run by tmux-resurrect's @resurrect-hook-post-restore-all."""
    r = _resurrect(args, echo=(lambda line: sys.stderr.write(line + "\n")) if args.verbose else None)
    typed = r.restore(dry_run=args.dry_run)
    if not args.dry_run:
        print("resumed %d agent(s); see %s" % (typed, os.path.join(state_dir(), "opensessions.log")))
    return 0


def cmd_kitty(args):
    """One kitty tab per tmux session (skipping those already shown), or a kitty session file."""
    import shutil
    import subprocess
    state = _get_state(args) if find_server(_socket_from_args(args))[1] else None
    if state is not None:
        sessions = [s for s in state["sessions"] if not s.get("hidden") and not s.get("host")]
    else:
        snap, _ = _tmux(args).snapshot()
        sessions = [s for s in snap if not s["name"].startswith(HIDDEN_SESSION_PREFIX)]
    socket_path = _socket_from_args(args)
    if args.session_file:
        atomic_write(args.session_file, kitty_session_file(kitty_tabs(sessions, socket_path)), mode=0o644)
        print("wrote %s (open it with: kitty --session %s)" % (args.session_file, args.session_file))
        return 0
    kitten = shutil.which("kitten")
    if not kitten:
        raise OpensessionsError("kitty's `kitten` is not on PATH (use --session-file outside kitty)")
    ls = subprocess.run([kitten, "@", "ls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    if ls.returncode != 0:
        raise OpensessionsError("kitty remote control is off (%s); set `allow_remote_control yes` in kitty.conf, "
                                "or use --session-file" % ls.stderr.decode("utf-8", "replace").strip())
    try:
        titles = {t.get("title") for w in json.loads(ls.stdout.decode("utf-8")) for t in w.get("tabs", [])}
    except (ValueError, AttributeError):
        titles = set()
    for title, cwd, argv in kitty_tabs(sessions, socket_path, titles):
        subprocess.run([kitten, "@", "launch", "--type=tab", "--tab-title", title, "--cwd", cwd] + argv,
                       stdout=subprocess.DEVNULL, timeout=10, check=False)
        print("opened a kitty tab for %s" % title)
    return 0


def cmd_server(args):
    socket_path = _socket_from_args(args)
    return serve(socket_path, args.port, args.log)


def cmd_start(args):
    squatted = RuntimeFiles(_socket_from_args(args)).squatted
    if squatted:
        sys.stderr.write("opensessions: runtime dir: %s\n" % squatted)
    port, started = start_background(args)
    print("opensessions server %s on http://%s:%d" % ("started" if started else "already running", HOST, port))
    return 0


def cmd_stop(args, on_purpose=True, hint=True):
    """Stop the server. On purpose (the user's `stop`), it stays stopped: sidebars do not start it
    again until a user's command does (start, prefix o s, tmux-setup)."""
    import signal
    socket_path = _socket_from_args(args)
    runtime = RuntimeFiles(socket_path)
    if on_purpose:
        runtime.mark_stopped()  # before the signal: a sidebar seeing the server gone must know why
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
    print("opensessions server stopped (pid %s)%s" % (pid, "; it stays stopped until `opensessions start` "
                                                          "(or prefix o s)" if on_purpose and hint else ""))
    return 0


def status_lines(state, now=None):
    """`opensessions status` as aligned, labelled columns: a session per row, its threads indented
    under it. Pure."""
    now = now if now is not None else now_ms()
    rows = [("SESSION / AGENT", "STATUS", "UNSEEN", "UPDATED", "COST", "BRANCH / TITLE")]
    for s in state["sessions"]:
        if s.get("stale"):  # a host we cannot reach now: what it last said
            rows.append((s["name"], "(stale)", "", "", "", ""))
            continue
        rows.append((s["name"], s.get("state") or "-", "yes" if s.get("unseen") else "",
                     "", cost_text((s.get("usage") or {}).get("cost")),
                     (s.get("branch") or "") + ("*" if s.get("dirty") else "")))
        for t in s.get("threads", []):
            status = t["status"] + (" #%s" % t["attempt"] if t.get("attempt") else "")
            rows.append(("  " + t["agent"], status, "yes" if t.get("unseen") else "",
                         age_text(t.get("updatedAt"), now) + (" ago" if t.get("updatedAt") else ""),
                         cost_text((t.get("usage") or {}).get("cost")), t.get("title") or t["id"]))
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([c + " " * (w - display_width(c)) for c, w in zip(r, widths)] + [r[-1]]).rstrip()
            for r in rows]


USAGE_TIME_MAX = 10 ** 14  # ms: the year 5138; a larger updatedAt is no time


def usage_entry_problem(t):
    """Why one thread of the usage history, the state file or /state cannot be counted (a field of
    the wrong type, a time no calendar has), or None. Pure."""
    if not isinstance(t, dict):
        return "not an object (%s)" % type(t).__name__
    for key in ("agent", "id"):
        if not isinstance(t.get(key), str):
            return "%s is not a string (%s)" % (key, ascii(t.get(key))[:40])
    if not isinstance(t.get("usage"), dict):
        return "usage is not an object"
    if t.get("session") is not None and not isinstance(t.get("session"), str):
        return "session is not a string (%s)" % ascii(t.get("session"))[:40]
    when = t.get("updatedAt")
    if when is not None and as_number(when, None, low=0, high=USAGE_TIME_MAX) is None:
        return "updatedAt %s is not a time" % ascii(when)[:40]
    return None


def usage_threads(state, saved=None, history=None, warn=None):
    """Every thread with usage we know of: /state's (sessions' and orphans'), those the server's
    saved file keeps (subagents included) that /state no longer lists, and forgotten ones from
    the usage history (90 days). The freshest figure of a thread wins. An entry that cannot be
    counted (usage_entry_problem) is skipped: warn(line) gets one line per source that had any.
    -> list of dicts with "session"."""
    out = {}
    skipped = {}

    def take(where, t, **extra):
        if isinstance(t, dict) and t.get("usage") is None:
            return  # no tokens recorded yet (a thread a hook reported, a first turn): nothing to count, nothing odd
        problem = usage_entry_problem(dict(t, **extra) if isinstance(t, dict) else t)
        if problem:
            skipped.setdefault(where, []).append(problem)
            return
        out[(t["agent"], t["id"])] = dict(t, **extra)
    for where, doc in (("the usage history", history), ("the state file", saved)):
        for t in doc.get("threads", []) if isinstance(doc, dict) and isinstance(doc.get("threads"), list) else ():
            take(where, t)
    for s in state.get("sessions", []) if isinstance(state.get("sessions"), list) else ():
        for t in s.get("threads", []) if isinstance(s, dict) and isinstance(s.get("threads"), list) else ():
            take("/state", t, session=s.get("name"))
    for t in state.get("threads", []) if isinstance(state.get("threads"), list) else ():
        take("/state", t)
    for where, problems in skipped.items():
        if warn is not None:
            warn("usage: skipped %d odd entr%s in %s (first: %s)" % (
                len(problems), "y" if len(problems) == 1 else "ies", where, problems[0]))
    return list(out.values())


def usage_report(threads, since_ms, now_ms_):
    """`opensessions usage`: totals by agent, session and day of the threads active since since_ms.
    A thread counts whole on the day it was last active (agents record running totals, not days).
    -> {"since", "total", "agents", "sessions", "days"} (each a {name: usage} with "threads")."""
    import datetime
    groups = {"agents": {}, "sessions": {}, "days": {}}
    picked = [t for t in threads if (t.get("updatedAt") or 0) >= since_ms]
    for t in picked:
        day = datetime.datetime.fromtimestamp((t.get("updatedAt") or 0) / 1000.0).strftime("%Y-%m-%d")
        for group, key in (("agents", t["agent"]), ("sessions", t.get("session") or "(no session)"), ("days", day)):
            groups[group].setdefault(key, []).append(t["usage"])
    report = {"since": since_ms, "total": usage_total([t["usage"] for t in picked]), "threads": len(picked)}
    for group, items in groups.items():
        report[group] = {k: dict(usage_total(v), threads=len(v)) for k, v in sorted(items.items())}
    return report


def usage_lines(report):
    """The report as aligned columns. Pure."""
    rows = [("", "THREADS", "INPUT", "OUTPUT", "CACHE", "COST")]

    def row(name, u, n):
        cost = cost_text(u.get("cost")) if u.get("cost") is not None else "-"
        rows.append((name, str(n), token_text(u["input"]), token_text(u["output"]),
                     token_text(u["cacheRead"] + u["cacheWrite"]), cost + (" +?" if u.get("partial") else "")))
    for title, group in (("AGENT", "agents"), ("SESSION", "sessions"), ("DAY", "days")):
        rows.append((title, "", "", "", "", ""))
        for name, u in report[group].items():
            row("  " + name, u, u["threads"])
    row("TOTAL", report["total"] or dict(new_usage(), cost=0), report["threads"])
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c + " " * (w - display_width(c)) for c, w in zip(r, widths)).rstrip() for r in rows]
    if any(u.get("partial") for g in ("agents", "sessions", "days") for u in report[g].values()):
        lines.append("+? : some cost unknown (a model without a price: add it to ui.json \"prices\") "
                     "or history not fully read")
    if not report["threads"]:
        try:
            since = " (since %s)" % time.strftime("%Y-%m-%d %H:%M", time.localtime(report["since"] / 1000.0))
        except (OverflowError, ValueError, OSError):
            since = ""
        lines.append("nothing in this period%s" % since)
    return lines


def parse_since(text, now_ms_):
    """'1d', '7d', '12h', '30m' -> epoch ms (0, everything, for a duration reaching before 1970)."""
    if (text or "").strip().startswith("-"):
        raise OpensessionsError("--since %s: how far back cannot be negative; give a duration such as 1d, 7d, "
                                "12h (0d: from now, nothing)" % text.strip())
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*$", text or "")
    if not m:
        raise OpensessionsError("--since takes a duration such as 1d, 7d, 12h")
    unit = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    back = float(m.group(1)) * unit * 1000  # 400 digits: inf
    return 0 if as_number(back) is None or back >= now_ms_ else int(now_ms_ - back)


def negative_since_joined(argv):
    """`usage --since -1d`: argparse would take -1d for an option and say only "expected one
    argument"; joined as --since=-1d, parse_since says why it is refused. Pure."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--since" and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append("--since=" + argv[i + 1])
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def cmd_usage(args):
    state = _get_state(args)
    docs = []
    key = socket_key(_socket_from_args(args))
    for name in ("usage-%s.json" % key, "state-%s.json" % key):
        try:
            docs.append(read_json_file(os.path.join(state_dir(), name), {}))
        except (OpensessionsError, OSError):
            docs.append(None)  # these only add older threads: /state alone still answers
    now = now_ms()
    report = usage_report(usage_threads(state, docs[1], docs[0],
                                        warn=lambda line: sys.stderr.write("opensessions: %s\n" % line)),
                          parse_since(args.since, now), now)
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
        return 0
    for line in usage_lines(report):
        print(line)
    return 0


def cmd_status(args):
    state = _get_state(args)
    if (state.get("ui") or {}).get("error"):
        sys.stderr.write("opensessions: %s\n" % state["ui"]["error"])
    if args.json:
        sys.stdout.write(json.dumps(state) + "\n")
        return 0
    for line in status_lines(state):
        print(line)
    if state.get("hosts"):
        print("")
        for line in hosts_lines(state):
            print(line)
    return 0


def history_lines(doc, home=None, now=None):
    """`opensessions history` as aligned, labelled columns, the newest first. Pure."""
    now = now if now is not None else now_ms()
    rows = [("THREAD", "ACTIVE", "TURNS", "TOKENS", "COST", "LIVE", "DIRECTORY", "TITLE / FIRST PROMPT")]
    for t in doc.get("threads") or ():
        u = t.get("usage") or {}
        est = "" if u.get("exact", True) else "~"
        where = tilde(t.get("cwd") or "", home) + (" (%s)" % t["branch"] if t.get("branch") else "")
        if t.get("dirGone"):
            where += " [gone]"
        rows.append((t["thread"], age_text(t.get("updatedAt"), now) + " ago" if t.get("updatedAt") else "",
                     ("" if t.get("turnsExact") else "~") + str(t.get("turns") or 0),
                     est + token_text(sum(as_number(u.get(k), 0, int) for k in USAGE_KEYS)) if u else "",
                     est + cost_text(u.get("cost")) if u.get("cost") is not None else "",
                     (t.get("live") or {}).get("session") or ("yes" if t.get("live") else ""),
                     clean_text(where), clean_text(t.get("title") or t.get("prompt") or "")))
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([c + " " * (w - display_width(c)) for c, w in zip(r, widths)] + [r[-1]]).rstrip()
             for r in rows]
    if doc.get("total", 0) > len(doc.get("threads") or ()):
        lines.append("(%d of %d shown; --limit shows more)" % (len(doc.get("threads") or ()), doc["total"]))
    if not doc.get("threads") and not doc.get("total"):  # a bare header said nothing of why
        where = doc.get("dir")
        lines = ["no conversation found %s (%d in the history%s)" % (
            "in %s or below" % clean_text(tilde(where, home)) if where else "in any directory",
            as_number(doc.get("count"), 0, int), "; --all looks in every directory" if where else "")]
    return lines


def cmd_history(args):
    """Past conversations of every agent, in this directory and below (--dir, --all), filtered by
    words; from the server's index (started if needed; its first scan is waited for)."""
    from urllib.parse import urlencode
    if args.all and args.dir:
        raise OpensessionsError("--dir and --all: give one (--all is every directory)")
    if not 1 <= args.limit <= 500:  # said with the flag's name (the server's 400 names its parameter)
        raise OpensessionsError("--limit %d: give 1 to 500" % args.limit)
    try:
        history_since(args.since, now_ms())
    except ValueError:
        raise OpensessionsError("--since %s: give a duration such as 7d, 12h, 30m or 2w" % args.since)
    start_background(args)
    params = {"q": " ".join(args.query or ()), "limit": args.limit}
    if not args.all:
        params["dir"] = os.path.abspath(os.path.expanduser(args.dir or os.getcwd()))
    if args.agent:
        params["agent"] = args.agent
    if args.since:
        params["since"] = args.since
    deadline = time.monotonic() + 30
    while True:
        doc = json.loads(_request(args, "GET", "/api/history?" + urlencode(params))[1].decode("utf-8"))
        if doc.get("complete") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if not doc.get("complete"):
        sys.stderr.write("opensessions: the index is still being built; this list is partial\n")
    if args.json:
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    for line in history_lines(doc, home_dir()):
        print(line)
    return 0


def cmd_resume(args):
    """Resume (or --fork) a past conversation: a new window in this tmux session, in its directory;
    --here: in this terminal. A live one is never started twice: you are taken to its pane."""
    body = {"thread": args.thread, "fork": args.fork, "target": "command" if args.here else "window"}
    tmux = _tmux(args)
    inside = bool(os.environ.get("TMUX"))
    if inside and not args.here:
        try:
            body["session"] = tmux.run("display-message", "-p", "#{session_name}").strip() or None
        except TmuxError:
            pass
    start_background(args)
    doc = json.loads(_request(args, "POST", "/api/resume", body)[1].decode("utf-8"))
    for note in doc.get("notes") or ():
        sys.stderr.write("opensessions: %s\n" % note)
    if doc.get("action") == "jumped":
        if inside:
            tmux.run("switch-client", "-t", doc["pane"])
        print("%s is live in session %s (pane %s)%s" % (doc["thread"], doc.get("session"), doc["pane"],
                                                         ": switched there" if inside else ""))
        return 0
    if args.here:
        sys.stderr.write("opensessions: %s\n" % resurrect_escape(doc["command"]))
        sys.stdout.flush()
        os.execvp("sh", ["sh", "-c", doc["command"]])
    if inside and doc.get("pane"):
        tmux.run("switch-client", "-t", doc["pane"])
    print("%s %s in session %s (pane %s)" % (doc["action"], doc["thread"], doc.get("session"), doc.get("pane")))
    return 0


def serve(socket_path, port=None, log_path=None, environ=None):
    """Run the server in the foreground until stopped, its tmux server exits, or a signal. -> exit code."""
    import signal
    env = os.environ if environ is None else environ
    if port is None:
        port = env_port(env)
    explicit = port is not None
    if port is None:
        port = DEFAULT_PORT
    if log_path:
        log_dir_ready(log_path, env)
        open_log(log_path)
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
    """The Server with every part attached: agent watchers, sidebar panes (the composition point)."""
    server = Server(tmux, port, explicit, environ)
    recent = env_number("OPENSESSIONS_RECENT_DAYS", 7.0, environ)
    list_hours = env_number("OPENSESSIONS_LIST_HOURS", None, environ)
    server.watchers = AgentWatchers(server, environ, recent_days=recent)
    if list_hours is not None:
        server.store.recent_ms = int(list_hours * 3600 * 1000)
    if environ.get("OPENSESSIONS_PEER_CHECK") == "token":  # test the macOS way on Linux
        server.peer_uids = False
    read_deadline = env_number("OPENSESSIONS_READ_DEADLINE", None, environ)
    if read_deadline is not None:
        server.read_deadline = max(0.1, read_deadline)
    server.sidebars = SidebarPanes(server.tmux, lambda: (server.store.sessions, server.store.clients, server.store.ui),
                                   server.schedule_refresh, _self_command() + " sidebar")
    store = server.store
    server.notifier = Notifier(NotifierHost(
        ui=lambda: store.ui, clients=lambda: store.clients, is_viewed=server.is_viewed, call_later=server.loop.call_later,
        tmux_argv=server.tmux.argv, pane_tty=lambda pane: (store.session_of_pane(pane) or (None, None, {}))[2].get("tty")))
    server.tmux_options = TmuxOptions(server.tmux.run)
    if environ.get("OPENSESSIONS_HISTORY") != "off":
        server.history = History(environ, clock=server.clock, tmux=tmux)
    server.remote = store.remote = RemoteHosts(RemoteDoor(
        loop=server.loop, store=store, tmux=server.tmux, publish=server.publish,
        notify=server.notifier.thread_changed), environ)
    return server


def cmd_install(args):
    done = install_agents(_self_command())
    for line in (done or ["already installed; nothing changed"]) + install_notes(done):
        print(line)
    return 0


def cmd_uninstall(args):
    for line in install_agents(_self_command(), uninstall=True) or ["nothing of ours was installed"]:
        print(line)
    return 0


def next_attention(queue, here_pane, here_session, here_remote=None):
    """The stop after the one the client is at on the tour of threads that need you (the queue from
    attention_queue), coming round at the end; the first when it is elsewhere.
    -> (destination, session, thread) or None. Pure."""
    stops = []
    for session, t in queue:
        dest = t["pane"] if t.get("alive") and t.get("pane") else "=" + session
        if t.get("host"):  # on another machine: its window there, shown through an ssh-attach window
            dest = "%s\t%s" % (session, t.get("pane") or "")
        if dest not in [d for d, _, _ in stops]:
            stops.append((dest, session, t))
    at = next((i for i, (d, _, _) in enumerate(stops) if d in (here_pane, "=" + here_session)
               or here_remote and d.startswith(here_remote + "\t")), None)
    if at is None:
        return stops[0] if stops else None
    if len(stops) == 1:
        return None
    return stops[(at + 1) % len(stops)]


def cmd_next(args):
    """Switch to the next thread needing attention (waiting, error, unseen finished; oldest first),
    round the whole list; remembering where you were, which --back returns to."""
    tmux = _tmux(args)
    target = ["-c", args.client] if args.client else []
    if args.back:
        back = _tmux_option(tmux, "@opensessions-return")
        if not back:
            print("nothing to go back to: `next` has not jumped anywhere yet")
            return 0
        if tmux.run("display-message", "-p", *(target + ["#{pane_id}"])).strip() == back:
            print("nothing to go back to: you are where the last jump came from")
            return 0
        try:
            tmux.run("switch-client", *(target + ["-t", back]))
        except TmuxError:
            tmux.run("set-option", "-gu", "@opensessions-return")
            print("nothing to go back to: the pane the last jump came from is gone")
        return 0
    here_pane, here_session, here_remote = (tmux.run("display-message", "-p", *(
        target + ["#{pane_id}\t#{session_name}\t#{@opensessions-remote}"])).strip("\n").split("\t") + ["", ""])[:3]
    state = _get_state(args)
    stop = next_attention(attention_queue(state), here_pane, here_session, here_remote or None)
    if stop is None:
        print("nothing (else) needs you")
        return 0
    dest, session, t = stop
    tmux.run("set-option", "-g", "@opensessions-return", here_pane)
    if t.get("host"):
        s = next((x for x in state["sessions"] if x["name"] == session), {})
        pane = t.get("pane")
        open_remote(tmux, program_argv(), t["host"], s.get("remoteName") or session.partition(":")[2],
                    remote_thread_window(s, pane) if pane else None, pane,
                    client=args.client or tmux.run("display-message", "-p", "#{client_name}").strip() or None,
                    here=here_session)
    else:
        tmux.run("switch-client", *(target + ["-t", dest]))
    print("%s: %s %s" % (session, t["agent"], t["status"]))
    return 0


def cmd_relay(args):
    """On a host: what a local server's ssh runs (the bootstrap execs it). Follows this host's
    opensessions server, started under its default tmux server if needed; see the remote hosts
    section."""
    socket_path = _socket_from_args(args)
    tmux = Tmux(socket_path)
    runtime = RuntimeFiles(socket_path)

    def find():
        info = runtime.live_info()
        if info and isinstance(info.get("port"), int):
            return info["port"], info.get("token"), info
        return None

    def http(port, token, method, path, body, timeout):
        return Client(port, timeout=timeout, token=token).request(method, path, body)
    relay = Relay(find, lambda: start_background(args, respect_stop=True), http, tmux.alive,
                  alive=args.alive, tmux_version=tmux.version())
    return relay.run()


TERMINAL_RESET = ("\x1b[?1049l\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1004l\x1b[?2004l"
                  "\x1b[?25h\x1b[0m\x1bc")


def cmd_ssh_attach(args):
    """The command of a local window showing a host's session: ssh -t HOST tmux attach -t =SESSION
    (reusing the server's connection), selecting the thread's window and pane; the terminal is
    reset when it returns."""
    import signal
    import subprocess
    if not valid_host(args.host):
        raise OpensessionsError("not a host for ssh: %r" % args.host)
    if remote_session_name(args.session) != args.session:
        raise OpensessionsError("not a tmux session name: %r" % args.session)
    cp = ssh_control_path(_socket_from_args(args), args.host)
    utf8 = terminal_charset(os.environ, _python_chose_utf8(os.environ)) == "unicode"
    argv = ["ssh", "-t"] + ssh_options(cp, master=False) + [
        "--", args.host, remote_attach_command(args.session, args.window, args.pane, utf8)]
    started = time.monotonic()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for ssh and the host's tmux
    try:
        code = subprocess.call(argv)
    except OSError as e:
        code = 255
        sys.stderr.write("opensessions: cannot run ssh: %s\n" % e)
    finally:
        signal.signal(signal.SIGINT, old)
        sys.stdout.write(TERMINAL_RESET)
        sys.stdout.flush()
        try:
            subprocess.call(["stty", "sane"], stderr=subprocess.DEVNULL)
        except OSError:
            pass
    if code != 0 and time.monotonic() - started < 5 and sys.stdin.isatty():
        sys.stdout.write("ssh %s exited with status %d; press Enter to close this window\n" % (args.host, code))
        sys.stdout.flush()
        try:
            sys.stdin.readline()
        except (OSError, KeyboardInterrupt):
            pass
    return code


def _ui_path():
    return os.path.join(config_dir(), "ui.json")


def hosts_lines(state, now=None):
    """`opensessions hosts` / the hosts part of `opensessions status`: one line per host. Pure."""
    now = now if now is not None else now_ms()
    rows = [("HOST", "STATE", "SESSIONS", "LAST EVENT", "REMOTE VERSION", "FROM", "DETAIL")]
    for h in state.get("hosts", []):
        detail = h.get("reason") or h.get("note") or ""
        if h.get("state") == "unreachable" and h.get("retryAt"):
            wait = max(0, int(round((h["retryAt"] - now) / 1000.0)))
            detail += ", retrying %s" % ("in %d s" % wait if wait else "now")
        version = " ".join(x for x in (h.get("remoteVersion"), h.get("remoteDigest")) if x)
        rows.append((h["name"], h.get("state") or "", str(h.get("sessions", 0)),
                     (age_text(h["lastEvent"], now) + " ago") if h.get("lastEvent") else "-",
                     version or "-", h.get("source") or "", detail))
    widths = [max(display_width(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([c + " " * (w - display_width(c)) for c, w in zip(r, widths)] + [r[-1]]).rstrip()
            for r in rows]


def cmd_hosts(args):
    """List, add or remove the remote hosts the server follows (ui.json "hosts"; those of
    @opensessions-hosts in ~/.tmux.conf are listed, and removed there)."""
    action = args.action or "list"
    running = find_server(_socket_from_args(args))[1] is not None
    state = _get_state(args) if running else None
    tmux_hosts = parse_hosts(_tmux_option(_tmux(args), "@opensessions-hosts"))[0]
    if state is not None:
        ui_hosts = list(state.get("ui", {}).get("hosts", []))
    else:
        ui_hosts = list(load_ui(read_json_file(_ui_path(), {}))[0].get("hosts", []))
    if action == "list":
        if state is not None and state.get("hosts"):
            for line in hosts_lines(state):
                print(line)
        elif tmux_hosts or ui_hosts:
            for h in tmux_hosts + [h for h in ui_hosts if h not in tmux_hosts]:
                print("%s  (%s; the server is not running)" % (h, "tmux.conf" if h in tmux_hosts else "ui.json"))
        else:
            print("no remote hosts: add one with `opensessions hosts add HOST` (a host or alias ssh knows), "
                  "or set @opensessions-hosts in ~/.tmux.conf")
        return 0
    if not args.host:
        raise OpensessionsError("say which host: opensessions hosts %s HOST" % action)
    host = args.host
    if not valid_host(host):
        raise OpensessionsError("%r is not a host for ssh (HOST or USER@HOST as in ~/.ssh/config; a port goes "
                                "there too, not after ':')" % host)
    if action == "add":
        if host in tmux_hosts or host in ui_hosts:
            print("%s is already followed" % host)
            return 0
        if len(set(tmux_hosts + ui_hosts)) >= MAX_HOSTS:
            raise OpensessionsError("at most %d hosts" % MAX_HOSTS)
        new = ui_hosts + [host]
    else:
        if host not in ui_hosts:
            if host in tmux_hosts:
                raise OpensessionsError("%s comes from @opensessions-hosts in ~/.tmux.conf: remove it there "
                                        "(then reload tmux.conf)" % host)
            raise OpensessionsError("%s is not followed" % host)
        new = [h for h in ui_hosts if h != host]
    if running:
        _post(args, "/ui", {"hosts": new})
    else:
        path = _ui_path()
        data = read_json_file(path, {})
        if not isinstance(data, dict):
            raise OpensessionsError("%s is not a JSON object; fix it first" % path)
        data["hosts"] = new
        ensure_private_dir(os.path.dirname(path))
        atomic_write(path, json.dumps(data, indent=2) + "\n", mode=0o644)
    print("%s %s%s" % ("added" if action == "add" else "removed", host,
                       " (connecting: `opensessions hosts` shows how it goes)" if action == "add" and running else ""))
    return 0


def cmd_sidebar(args, popup=False, client=None, tab="agents", pane=None, here=False):
    """Run the curses sidebar in this pane (the sidebar pane manager starts these); with popup, the
    agents popup (`opensessions popup`, in a display-popup)."""
    global _log_file
    if not (os.isatty(0) and os.isatty(1)):  # said before curses writes a byte, and before stderr goes to the log
        raise OpensessionsError("the %s needs a terminal (%s)" % (
            ("popup", "prefix o g opens it") if popup else ("sidebar", "it runs in a tmux pane; `opensessions` "
                                                                      "shows one in every window")))
    socket_path = _socket_from_args(args)
    # The pane is the sidebar's screen: its log lines (and any traceback) go to the log file.
    log_path = os.path.join(state_dir(), "sidebar.log")
    try:
        ensure_private_dir(state_dir())
        _log_file = open(log_path, "a", buffering=1)
        os.dup2(_log_file.fileno(), 2)
    except (OSError, OpensessionsError):
        _log_file = open(os.devnull, "w")
        os.dup2(_log_file.fileno(), 2)
    runtime = RuntimeFiles(socket_path)

    def find_port():
        if args.port:
            return args.port
        port, info = find_server(socket_path)
        find_port.token = (info or {}).get("token")  # sent where the server cannot see our uid
        find_port.digest = (info or {}).get("digest")  # the program the server runs (see SidebarApp.updated)
        return port
    find_port.token = find_port.digest = None

    def post(path, body):
        timeout = 20 if path == "/api/reply" else 2  # a reply waits for the agent's screen
        status, content = Client(find_port(), timeout=timeout, token=find_port.token).request("POST", path, body)
        if status >= 400:
            raise OSError(content.decode("utf-8", "replace"))
        try:
            return json.loads(content.decode("utf-8")) if status == 200 and content else None
        except ValueError:
            return None

    def get(path):
        return Client(find_port(), timeout=2, token=find_port.token).request("GET", path)

    def post_answer(path, body):  # a resume waits for the new window's shell to show its prompt
        return Client(find_port(), timeout=30, token=find_port.token).request("POST", path, body)

    tmux = Tmux(socket_path)
    origin, ask = None, None
    if popup and here:  # prefix o r: display-popup -d #{pane_current_path}; tmux is asked the rest meanwhile
        origin, ask = {"dir": os.getcwd()}, (lambda: _client_origin(tmux, client))
    elif popup:
        origin = {"pane": pane} if pane else _client_origin(tmux, client)
    app = SidebarApp(tmux, find_port, start_server=lambda: start_background(args, respect_stop=True),
                     post=post, get=get, popup=popup, client=client, is_stopped=runtime.stopped, tab=tab,
                     origin=origin, ask_origin=ask)
    app.post_answer = post_answer
    return app.run()


def _client_origin(tmux, client):
    """The pane a popup opened over: {"pane", "dir", "session", "client"} (the history tab's scope,
    where `p` resumes, the client to switch), or {} when tmux cannot say. Without a client named,
    tmux answers for the client whose popup asks."""
    target = ["-c", client] if client else []
    try:
        out = tmux.run("display-message", "-p", *(target + [FS.join(("#{pane_id}", "#{pane_current_path}",
                                                                     "#{session_name}", "#{client_name}"))]))
    except TmuxError:
        return {}
    parts = out.rstrip("\n").split(FS)
    if len(parts) != 4 or not parts[0].startswith("%"):
        return {}
    return {"pane": parts[0], "dir": parts[1] or None, "session": parts[2] or None, "client": parts[3] or None}


def cmd_popup(args):
    """The agents popup itself (what `prefix o g` runs inside display-popup)."""
    return cmd_sidebar(args, popup=True, client=args.client)


def cmd_history_popup(args):
    """The history picker itself (what `prefix o r` runs inside display-popup): the agents popup
    opened on its history tab."""
    pane = getattr(args, "pane", None)
    if pane and not re.match(r"^%[0-9]{1,9}$", pane):
        raise OpensessionsError("-t takes a pane id such as %12")
    return cmd_sidebar(args, popup=True, client=args.client, tab="history", pane=pane,
                       here=getattr(args, "here", False))


def cmd_layout(args):
    """even-horizontal for the work panes, the sidebar keeping its width."""
    tmux = _tmux(args)
    window = args.window or tmux.run("display-message", "-p", "#{window_id}").strip()
    state = _get_state(args)
    w, sidebar = _window_sidebar(state, window)
    if w is None:
        raise OpensessionsError("no window %s" % window)
    if sidebar is None:
        tmux.run("select-layout", "-t", window, "even-horizontal")
        return 0
    work = [int(p["id"][1:]) for p in w["panes"] if not p.get("sidebar")]
    height = max(p["height"] for p in w["panes"])
    ui = state.get("ui", {})
    layout = even_layout(w["width"], height, (int(sidebar["id"][1:]), ui.get("width", DEFAULT_WIDTH)), work,
                         ui.get("position", "left"))
    tmux.run("select-layout", "-t", window, layout)
    return 0


KEY_TABLE = "opensessions"


# prefix o ?: the key table as a menu (tmux >= 3.0), each row picked by its own key: (key, what it does);
# "popup" and "history" stand for their configurable keys
KEY_MENU = (("s", "focus the sidebar"), ("t", "show / hide the sidebars"), ("e", "even layout, sidebar kept"),
            ("n", "next thread that needs you"), ("p", "back to where n came from"), ("popup", "agents popup"),
            ("history", "every past conversation"))


def tmux_menu_command(args):
    """A bound command's argv as the command text of a display-menu item: quoted for tmux's parser,
    and '#' doubled, since tmux expands formats in an item's command once when the menu opens (so
    the command that runs is the binding's own). Pure."""
    import shlex
    return " ".join(shlex.quote(a) for a in args).replace("#", "##")


def tmux_bindings(me, options, popup=None, menu=False):
    """(table, key, command...) tuples the plugin binds. Pure. `me` is our shell command prefix.
    Every command runs with --display: what it says goes to the status line (display-message),
    so tmux never opens its view mode over a pane. menu (tmux >= 3.0): `?` shows the table's keys
    as a display-menu, centred where tmux can (popup: >= 3.2)."""
    def run(cmd):
        return ("run-shell", "-b", tmux_literal(me) + " " + cmd + " --display")  # run-shell expands formats
    key = options.get("@opensessions-key") or "o"
    if popup:  # tmux >= 3.2: the picker opens in a popup at once (one process started, not two); tmux
        # 3.3a does not expand formats in a popup's command: the picker asks tmux which client it is
        history = ("display-popup", "-E", "-w", popup[0], "-h", popup[1], "-d", "#{pane_current_path}",
                   tmux_literal(me) + " history-popup --here")
    else:
        history = run("history-open -c '#{client_name}'")
    out = [("prefix", key, "switch-client", "-T", KEY_TABLE),
           (KEY_TABLE, "s", ) + run("focus -w '#{window_id}'"),
           (KEY_TABLE, "t", ) + run("toggle"),
           (KEY_TABLE, "e", ) + run("layout -w '#{window_id}'"),
           (KEY_TABLE, "n", ) + run("next -c '#{client_name}'"),
           (KEY_TABLE, "p", ) + run("next --back -c '#{client_name}'"),
           (KEY_TABLE, options.get("@opensessions-popup-key") or "g") + run("popup-open -c '#{client_name}'"),
           (KEY_TABLE, options.get("@opensessions-history-key") or "r") + history]
    for n in range(1, 10):
        out.append((KEY_TABLE, str(n)) + run("switch %d -c '#{client_name}'" % n))
    if menu:
        keys = {"popup": options.get("@opensessions-popup-key") or "g",
                "history": options.get("@opensessions-history-key") or "r"}
        bound = {b[1]: b[2:] for b in out if b[0] == KEY_TABLE}
        items = []
        for k, text in KEY_MENU:
            k = keys.get(k, k)
            items += [text, k, tmux_menu_command(bound[k])]
        items += ["-1-9: the session with that number", "", ""]  # (a "-" name: shown, not picked)
        out.append((KEY_TABLE, "?", "display-menu", "-T", "#[align=centre]opensessions (prefix %s)" % key)
                   + (("-x", "C", "-y", "C") if popup else ()) + tuple(items))
    focus = options.get("@opensessions-focus-key")
    if focus:
        out.append(("root", focus) + run("focus -w '#{window_id}'"))
    if options.get("@opensessions-index-keys") in ("on", "1", "yes", "true"):
        for n in range(1, 10):
            out.append(("root", "M-%d" % n) + run("switch %d -c '#{client_name}'" % n))
    return out


def key_bindings(listing):
    """`tmux list-keys` output -> {(table, key): the line}. Pure."""
    out = {}
    for line in listing.splitlines():
        m = re.match(r"^bind-key\s+(?:-r\s+)?-T\s+(\S+)\s+(\S+)\s", line)
        if m:
            out[(m.group(1), m.group(2))] = line.strip()
    return out


def _bind_keys(tmux, me, options):
    """Bind our keys (one tmux process for all: tmux waits for us at boot). What we bound before and
    no longer bind goes: a re-source of ~/.tmux.conf with another @opensessions-key gives the old
    key back its binding from before us (the user's, or tmux's own), and our key table and root
    keys hold only what the options ask for now."""
    key = options["@opensessions-key"]
    try:
        bound = key_bindings(tmux.run("list-keys"))
    except TmuxError:
        bound = {}
    # what an earlier setup bound, the history popup's size and tmux's version: one tmux call
    mine = read_tmux_options(tmux, dict({"@opensessions-bound-key": "", "@opensessions-saved-binding": "",
                                         "@opensessions-bound-root": "", "version": ""}, **POPUP_DEFAULTS))
    nums = re.findall(r"\d+", mine["version"] or tmux.version() or "")
    popup = None
    version = (int(nums[0]), int(nums[1]) if len(nums) > 1 else 0) if nums else (0, 0)
    if version >= (3, 2):  # display-popup
        popup = tuple(mine[name] for name in ("@opensessions-popup-width", "@opensessions-popup-height"))
    wanted = tmux_bindings(me, options, popup, menu=version >= (3, 0))  # display-menu
    old_key, saved = mine["@opensessions-bound-key"], mine["@opensessions-saved-binding"]
    give_back = None
    cmds = []
    if old_key and old_key != key:
        if "-T " + KEY_TABLE in bound.get(("prefix", old_key), ""):  # still ours
            if saved.startswith("bind-key"):
                give_back = saved
            else:
                cmds += ["unbind-key", old_key, ";"]
        saved = ""
        cmds += ["set-option", "-gu", "@opensessions-saved-binding", ";"]
    previous = bound.get(("prefix", key), "")
    if previous and "opensessions" not in previous and not saved:
        cmds += ["set-option", "-g", "@opensessions-saved-binding", previous, ";"]
    if any(table == KEY_TABLE for table, _ in bound):
        cmds += ["unbind-key", "-a", "-T", KEY_TABLE, ";"]  # a popup key changed: the old one goes
    root = [k for table, k, *_ in wanted if table == "root"]
    for k in mine["@opensessions-bound-root"].split():
        if k not in root and "opensessions" in bound.get(("root", k), ""):
            cmds += ["unbind-key", "-n", k, ";"]
    for table, k, *command in wanted:
        cmds += ["bind-key"] + (["-T", table] if table != "prefix" else []) + [k] + command + [";"]
    cmds += ["set-option", "-g", "@opensessions-bound-root", " ".join(root), ";"]
    cmds += ["set-option", "-g", "@opensessions-bound-key", key]
    tmux.run(*cmds)
    if give_back:
        _restore_binding(tmux, give_back)


RENAME_GUARD = "#{?#{@opensessions-sidebar},#{window_name},"


def _keep_window_names(tmux, remove=False):
    """A focused sidebar keeps its window's name (automatic-rename would call it python3): the
    user's automatic-rename-format, wrapped in a condition on our pane option (or unwrapped)."""
    current = _tmux_option(tmux, "automatic-rename-format")
    wrapped = current.startswith(RENAME_GUARD) and current.endswith("}")
    if remove and wrapped:
        tmux.run("set-option", "-g", "automatic-rename-format", current[len(RENAME_GUARD):-1])
    elif not remove and not wrapped and current:
        tmux.run("set-option", "-g", "automatic-rename-format", RENAME_GUARD + current + "}")


# The hook that finishes the plugin's setup when the first session appears (TPM runs us while
# tmux reads its config, before any session exists). An array index of its own: the user's
# session-created hooks are left alone.
BOOT_HOOK = "session-created[77]"


def cmd_tmux_setup(args):
    """What opensessions.tmux runs: bind keys, apply options, start (or update) the server.
    Before any session exists (tmux reading its config at boot), it binds keys and leaves the
    rest to a one-shot hook on the first session: no server runs against a server with no session."""
    if not getattr(args, "hook", False):
        return _tmux_setup(args)
    try:  # run by the hook: nobody reads our stderr, and run-shell would print it over a pane
        return _tmux_setup(args)
    except OpensessionsError as e:
        try:
            _tmux(args).run("display-message", "opensessions: %s" % e)
        except TmuxError:
            pass
        return 0


def _tmux_setup(args):
    import shlex
    tmux = _tmux(args)
    options = read_tmux_options(tmux)
    me = _self_command()
    if options["@opensessions-port"]:
        args.port = as_number(options["@opensessions-port"], None, int, text=True)
        me += " --port %d" % args.port
    _bind_keys(tmux, me, options)
    _keep_window_names(tmux)
    if options["@opensessions-resurrect"] in ("on", "1", "yes", "true"):
        tmux_setup_resurrect(tmux, me)
    if not tmux.run("list-sessions", "-F", "#{session_id}").strip():
        tmux.run("set-hook", "-g", BOOT_HOOK, "run-shell -b " + shlex.quote(me + " tmux-setup --hook"))
        return 0
    try:
        tmux.run("set-hook", "-gu", BOOT_HOOK)
    except TmuxError:
        pass
    runtime = RuntimeFiles(_socket_from_args(args))
    info = runtime.live_info()
    if info and (info.get("version"), info.get("digest")) != (__version__, program_digest()):
        cmd_stop(args, on_purpose=False)  # an updated plugin: restart the server on the new code
    first_run = _first_run()  # asked before a new server saves ui.json with its defaults
    start_background(args)  # a new server reads the options itself, before its first sidebar
    # a re-source of ~/.tmux.conf: the server applies the options whose value changed since it
    # last applied them (a theme picked with `t` holds otherwise)
    body = {"fromTmux": ui_from_tmux_options(options)}
    if first_run:
        body["visible"] = True  # the plugin's first run shows the sidebars; later, prefix o t's choice holds
    state = _get_state(args)
    followed = [h.get("name") for h in state.get("hosts", []) if h.get("source") == "tmux.conf"]
    if parse_hosts(options["@opensessions-hosts"])[0] != followed:
        body["hosts"] = state.get("ui", {}).get("hosts", [])  # @opensessions-hosts changed: the server reads it again
    _post(args, "/ui", body)
    return 0


def _first_run(environ=None):
    """True when the user never chose whether the sidebars show: no ui.json, or one without
    "visible" (a broken file is the user's to mend: not a first run)."""
    try:
        data = read_json_file(os.path.join(config_dir(environ), "ui.json"), default={})
    except OpensessionsError:
        return False
    return isinstance(data, dict) and "visible" not in data


RESURRECT_HOOKS = (("@resurrect-hook-post-save-all", "save"), ("@resurrect-hook-post-restore-all", "restore"))


def chain_hook(current, ours):
    """A resurrect hook value that runs the user's own hook and ours (ours replaced if present). Pure."""
    kept = unchain_hook(current)
    return "%s ; %s" % (kept, ours) if kept else ours


def unchain_hook(current):
    """The user's part of a hook value, without any opensessions command. Pure."""
    parts = [p.strip() for p in (current or "").split(" ; ")]
    return " ; ".join(p for p in parts if p and not re.search(r"opensessions\S* (save|restore)$", p))


def tmux_setup_resurrect(tmux, me):
    """Hook resurrect's save and restore beside any hook of the user's (never touching
    @resurrect-processes, which would start agents twice)."""
    for option, verb in RESURRECT_HOOKS:
        tmux.run("set-option", "-g", option, chain_hook(_tmux_option(tmux, option), me + " " + verb))


def _our_option(name):
    return name.startswith("@opensessions-") or name == "@agent_session"


def _unset_our_options(tmux, scope, target=None):
    """Unset every option of ours in one scope ("-g", "-gw", "-s", "-w", "-p") of one target."""
    flags = [scope] + (["-t", target] if target else [])
    try:
        out = tmux.run("show-options", *flags)
    except TmuxError:
        return
    cmds = []
    for line in out.splitlines():
        name = line.split(" ", 1)[0]
        if _our_option(name):
            if cmds:
                cmds.append(";")
            cmds.extend(["set-option", "-qu"] + flags + [name])
    if cmds:
        try:
            tmux.run(*cmds)
        except TmuxError:
            pass


def cmd_uninstall_tmux(args):
    """Remove every binding, option, sidebar pane and helper session we made; stop the server
    (for good: sidebars still shown do not start it again)."""
    tmux = _tmux(args)
    cmd_stop(args, hint=False)  # first, and marked stopped: a server or a sidebar would put things back
    key = _tmux_option(tmux, "@opensessions-bound-key") or "o"
    for table, k, *_ in tmux_bindings("x", {"@opensessions-key": key, "@opensessions-focus-key":
                                             _tmux_option(tmux, "@opensessions-focus-key"),
                                             "@opensessions-index-keys": "on"}):
        if table == KEY_TABLE:
            continue
        try:
            bound = tmux.run("list-keys", "-T", table, k)
        except TmuxError:
            continue
        if KEY_TABLE in bound or "opensessions" in bound:
            tmux.run("unbind-key", *(["-T", table] if table != "prefix" else []) + [k])
    for k in _tmux_option(tmux, "@opensessions-bound-root").split():  # root keys bound by an older setup
        try:
            if "opensessions" in tmux.run("list-keys", "-T", "root", k):
                tmux.run("unbind-key", "-n", k)
        except TmuxError:
            pass
    _restore_binding(tmux, _tmux_option(tmux, "@opensessions-saved-binding"))
    try:
        tmux.run("unbind-key", "-a", "-T", KEY_TABLE)
    except TmuxError:
        pass
    try:
        tmux.run("set-hook", "-gu", BOOT_HOOK)
    except TmuxError:
        pass
    _keep_window_names(tmux, remove=True)
    for option, _ in RESURRECT_HOOKS:
        current = _tmux_option(tmux, option)
        if "opensessions" in current:
            kept = unchain_hook(current)
            if kept:
                tmux.run("set-option", "-g", option, kept)
            else:
                tmux.run("set-option", "-gu", option)
    for line in tmux.run("list-panes", "-a", "-F", "#{pane_id} #{@opensessions-sidebar}").splitlines():
        pane, _, flag = line.partition(" ")
        if flag.strip() == "1":
            try:
                tmux.run("kill-pane", "-t", pane)
            except TmuxError:
                pass
    for line in tmux.run("list-sessions", "-F", "#{session_id} #{session_name}").splitlines():
        sid, _, name = line.partition(" ")
        if name.startswith(HIDDEN_SESSION_PREFIX):
            try:
                tmux.run("kill-session", "-t", sid)
            except TmuxError:
                pass
    _unset_our_options(tmux, "-g")
    _unset_our_options(tmux, "-gw")
    for line in tmux.run("list-sessions", "-F", "#{session_id}").splitlines():
        _unset_our_options(tmux, "-s", line.strip())
    for line in tmux.run("list-windows", "-a", "-F", "#{window_id}").splitlines():
        _unset_our_options(tmux, "-w", line.strip())
    for line in tmux.run("list-panes", "-a", "-F", "#{pane_id}").splitlines():
        _unset_our_options(tmux, "-p", line.strip())
    print("opensessions removed from this tmux server")
    return 0


def _restore_binding(tmux, saved):
    """Put back the prefix-table binding our key replaced (a `bind-key ...` line from list-keys)."""
    if not saved or not saved.startswith("bind-key"):
        return
    import tempfile
    fd, path = tempfile.mkstemp(prefix="opensessions-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(saved + "\n")
        tmux.run("source-file", path)
    except (OSError, TmuxError) as e:
        sys.stderr.write("opensessions: could not restore %r: %s\n" % (saved, e))
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def _command_table():
    """(name, function, one-line description, arguments) for every subcommand, in COMMANDS' order:
    the client commands (client_commands) and the rest; an argument is (flags, argparse keywords),
    each with its help."""
    own = (
        ("server", cmd_server, "run the server in the foreground",
         [(("--log",), dict(metavar="FILE", help="append log lines to FILE instead of stderr (a new FILE is "
                                                 "0600; a directory not ours is left as it is)"))]),
        ("start", cmd_start, "start the server in the background unless one runs", []),
        ("stop", cmd_stop, "stop the server", []),
        ("status", cmd_status, "print sessions and agent threads in labelled columns",
         [(("--json",), dict(action="store_true", help="print the whole /state document instead"))]),
        ("usage", cmd_usage, "tokens and cost by agent, session and day",
         [(("--since",), dict(default="1d", help="how far back: 1d (default), 7d, 12h; threads count on the "
                                                   "day they were last active; the server keeps 90 days")),
          (("--json",), dict(action="store_true", help="print the report as JSON"))]),
        ("install", cmd_install, "add our %s hooks, %s (idempotent, with backups)" % (
            _words([s.title for s in AGENT_SPECS.values() if isinstance(s.install, HookInstall)]),
            _words([s.install.what for s in AGENT_SPECS.values() if isinstance(s.install, FileInstall)])), []),
        ("uninstall", cmd_uninstall, "remove what `install` added, and nothing else", []),
        ("sidebar", cmd_sidebar, "run the curses sidebar in this pane", []),
        ("layout", cmd_layout, "even-horizontal layout that keeps the sidebar's width", [ARG_WINDOW, ARG_DISPLAY]),
        ("next", cmd_next, "switch to the next thread that needs you, oldest first (--back: return)",
         [(("--back",), dict(action="store_true", help="go back to where the last `next` came from")),
          ARG_CLIENT, ARG_DISPLAY]),
        ("popup", cmd_popup, "the agents popup: every thread by what needs you, with a preview and reply keys",
         [ARG_CLIENT]),
        ("history", cmd_history, "past conversations of every agent, here and below (or --all), newest first",
         [(("query",), dict(nargs="*", metavar="WORD", help="words that must all be in the title, first prompt, "
                                                               "directory or agent (any case)")),
          (("--dir",), dict(metavar="D", help="this directory and those below it (default: the current one)")),
          (("--all",), dict(action="store_true", help="every directory")),
          (("--agent",), dict(choices=tuple(AGENT_SPECS), help="only this agent's conversations")),
          (("--since",), dict(metavar="AGE", help="only those active in the last AGE: 7d, 12h, 30m, 2w")),
          (("--limit",), dict(type=int, default=50, help="how many to show (default 50, at most 500)")),
          (("--json",), dict(action="store_true", help="print /api/history's answer as JSON"))]),
        ("resume", cmd_resume, "resume a past conversation in a new window in its directory (--fork: fork it; "
                               "--here: in this terminal); a live one: go to its pane",
         [(("thread",), dict(help="AGENT:ID (as `opensessions history` shows it), or the bare id")),
          (("--fork",), dict(action="store_true", help="a new conversation that starts with this one's messages "
                                                        "(%s)" % ", ".join(s.title for s in AGENT_SPECS.values()
                                                                            if s.fork_args))),
          (("--here",), dict(action="store_true", help="run it in this terminal instead of a new window"))]),
        ("history-popup", cmd_history_popup, "the history picker (what prefix o r runs in its popup)",
         [ARG_CLIENT, (("-t", "--pane"), dict(help="the pane it opens over (its directory is the scope; p resumes there)")),
          (("--here",), dict(action="store_true", help="the scope is this directory (display-popup -d "
                                                         "'#{pane_current_path}', as prefix o r opens it)"))]),
        ("save", cmd_save, "save every agent's conversation next to tmux-resurrect's save", []),
        ("restore", cmd_restore, "resume each saved agent in its pane after a restore",
         [(("--dry-run",), dict(action="store_true", help="print what would be typed where, type nothing")),
          (("-v", "--verbose"), dict(action="store_true", help="print each decision"))]),
        ("kitty", cmd_kitty, "one kitty tab per tmux session (or --session-file)",
         [(("--session-file",), dict(metavar="PATH", help="write a kitty session file instead"))]),
        ("tmux-setup", cmd_tmux_setup, "(run by opensessions.tmux) bind keys, start the server",
         [(("--hook",), dict(action="store_true", help="==SUPPRESS=="))]),  # the boot hook: errors go to tmux
        ("uninstall-tmux", cmd_uninstall_tmux,
         "remove our bindings, options, sidebar panes and helper session; stop the server", []),
        ("hosts", cmd_hosts, "list, add or remove remote hosts (their agents in the same sidebar, over ssh)",
         [(("action",), dict(nargs="?", choices=("list", "add", "remove"), help="list (default), add or remove")),
          (("host",), dict(nargs="?", help="HOST or USER@HOST, as ssh takes it (an alias of ~/.ssh/config)"))]),
        ("ssh-attach", cmd_ssh_attach, "(run in a window by Enter on a remote thread) ssh -t HOST tmux attach",
         [(("host",), dict(help="the host")), (("session",), dict(help="its tmux session")),
          (("--window",), dict(help="window id (@N) to select")), (("--pane",), dict(help="pane id (%%N) to select"))]),
        ("relay", cmd_relay, "(run on a host by a local server over ssh) stream this host's state on stdout",
         [(("--alive",), dict(type=float, default=REMOTE_ALIVE, help="heartbeat seconds"))]),
    )
    table = dict((e[0], e) for e in own + client_commands())
    return tuple(table[name] for name in COMMANDS)


def build_parser(command=None):
    """The argument parser; with `command`, only that subcommand is built (argparse with every
    subcommand costs ~10 ms, and client commands must start fast)."""
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
        description="Live status of AI coding agents (%s) across tmux sessions. "
                    % ", ".join(spec.title for spec in AGENT_SPECS.values()) +
                    "With no command: inside tmux, start the server; outside tmux, start a tmux session.")
    p.add_argument("--version", action="version", version="opensessions " + __version__)
    shared = common(False)
    # prog given: argparse would otherwise build a help formatter (importing shutil) on every run
    sub = p.add_subparsers(dest="command", metavar="COMMAND", prog="opensessions")
    for name, func, text, arguments in _command_table():
        if command is not None and name != command:
            continue
        s = sub.add_parser(name, parents=[shared], help=text, description=text[0].upper() + text[1:] + ".")
        for flags, kw in arguments:
            s.add_argument(*flags, **kw)
        s.set_defaults(func=func)
    return p


# The session `opensessions` starts outside tmux: tmux's default status-left, "[#{session_name}] ",
# is cut at status-left-length 10, so the name has at most 7 characters ("[opensessi" otherwise).
OUTSIDE_SESSION = "agents"


def cmd_default(args):
    """No command: inside tmux, set up (keys, server) and show the sidebar; outside tmux, start or
    attach a tmux session named `agents` (OUTSIDE_SESSION) that does that."""
    if os.environ.get("TMUX") or args.socket_name or args.socket_path:
        cmd_tmux_setup(args)
        _post(args, "/ui", {"visible": True})
        print("opensessions: the sidebar is shown; prefix o t hides it, prefix o s focuses it")
        return 0
    me = [sys.executable, os.path.abspath(sys.argv[0])]
    exec_tmux("new-session", "-A", "-s", OUTSIDE_SESSION, " ".join(_shell_quote(a) for a in me) + "; exec ${SHELL:-sh}")


def _shell_quote(s):
    import shlex
    return shlex.quote(s)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    done = run_client(argv)
    if done is not None:
        return done
    command = command_of(argv)
    if command == "usage":
        argv = negative_since_joined(argv)
    args = parse_plainly(argv, _command_table()) if command else None
    if args is None:
        args = build_parser(command).parse_args(argv)
    return run_parsed(args, cmd_default)


if __name__ == "__main__":
    sys.exit(main())
