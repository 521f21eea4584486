"""Real OpenSSH hosts for the remote-hosts tests and the bench: each host is an `sshd` (Debian's
openssh-server) started here with its own config and host key, `-D -e`, listening on its own
loopback address (127.0.0.2, 127.0.0.3, ...) on a free port, for a local user made here
(`useradd -m`) whose HOME holds its own tmux server and fake agents. The local side reaches them
through an `ssh` wrapper first on PATH that adds `-F <our ssh_config>` (OpenSSH reads ~/.ssh/config
from the passwd entry's home, not from $HOME). Everything is removed by close(): the sshds, every
process of the users made here (found by uid, killed by pid), the users and their files.

Needs root (useradd, sshd) and /usr/sbin/sshd: `missing()` says why not, in one line.
"""
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "fixtures")
SSHD = "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
HOST_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "/usr/bin/env python3"


def missing():
    """Why real-ssh tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root (it makes local users and runs sshd)"
    for tool in (SSHD, shutil.which("ssh-keygen"), shutil.which("useradd"), shutil.which("userdel"), SSH):
        if not tool or not os.path.exists(tool):
            return "OpenSSH server/client or useradd missing (apt-get install -y openssh-server)"
    if not shutil.which("tmux"):
        return "tmux is not installed"
    mode = os.stat("/tmp").st_mode & 0o7777
    if mode & 0o1777 != 0o1777:  # the hosts' users keep their tmux sockets there
        return "/tmp is mode %o, not 1777: other users cannot use it (something made it private)" % mode
    return None


def free_port(addr):
    s = socket.socket()
    s.bind((addr, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(fn, timeout=10.0, interval=0.02, message=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (OSError, AssertionError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(message or "not within %.1fs (last: %r)" % (timeout, last))


def proc_table():
    """{pid: (ppid, comm, uid)} from /proc."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
            uid = os.stat("/proc/%s" % name).st_uid
        except OSError:
            continue
        comm = stat[stat.find("(") + 1:stat.rfind(")")]
        out[int(name)] = (int(stat[stat.rfind(")") + 2:].split()[1]), comm, uid)
    return out


def descendants(root, table=None):
    table = table or proc_table()
    kids = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for k in kids.get(p, ()):
            out.append(k)
            todo.append(k)
    return out


FAKE_CLAUDE = r'''#!%(python)s
"""A fake Claude Code on a test host: its registry entry and transcript in the captured formats
(tests/fixtures/remote), the captured screens, and every key it gets (in ~/keys.log).
usage: claude SESSION_ID wait|run"""
import json, os, re, sys, time, tty
sid, mode = sys.argv[1], sys.argv[2]
home = os.path.expanduser("~")
fx = os.path.join(home, "fixtures")
cwd = os.getcwd()
reg = os.path.join(home, ".claude", "sessions")
proj = os.path.join(home, ".claude", "projects", re.sub(r"[^A-Za-z0-9]", "-", cwd))
os.makedirs(reg, exist_ok=True)
os.makedirs(proj, exist_ok=True)
transcript = os.path.join(proj, sid + ".jsonl")
turn = [json.loads(l) for l in open(os.path.join(fx, "claude-turn.jsonl"))]
start = open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]
me = os.path.join(reg, "%d.json" % os.getpid())


def now_ms():
    return int(time.time() * 1000)


def registry(status):
    rec = json.load(open(os.path.join(fx, "sessions-PID-%s.json" % status)))
    rec.update(pid=os.getpid(), sessionId=sid, cwd=cwd, procStart=start, updatedAt=now_ms(),
               statusUpdatedAt=now_ms(), startedAt=now_ms())
    with open(me + ".tmp", "w") as f:
        json.dump(rec, f)
    os.replace(me + ".tmp", me)


def append(i):
    rec = json.loads(json.dumps(turn[i]))
    rec["sessionId"] = sid
    if "cwd" in rec:
        rec["cwd"] = cwd
    t = time.time()
    rec["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)
    with open(transcript, "a") as f:
        f.write(json.dumps(rec) + "\n")


def show(name):
    text = open(os.path.join(fx, name + ".txt"), encoding="utf-8").read().rstrip("\n")
    sys.stdout.write("\x1b[H\x1b[2J\x1b[0m" + text.replace("\n", "\r\n"))
    sys.stdout.flush()


def note(what, data=""):
    with open(os.path.join(home, "keys.log"), "a") as f:
        f.write(json.dumps({"what": what, "data": data, "t": time.time()}) + "\n")


tty.setraw(0)
append(0)
if mode == "wait":
    append(1)
    registry("waiting")
    note("waiting")
    show("permission")
else:
    registry("busy")
    show("idle")
note("ready", os.getpid())
try:
    while True:
        data = os.read(0, 1024).decode("utf-8", "replace")
        if not data:
            break
        note("key", data)
        if mode == "wait" and data in "123":
            registry("busy")
            append(2)
            append(3)
            registry("idle")
            show("idle")
            mode = "idle"
            note("proceeded")
finally:
    try:
        os.unlink(me)
    except OSError:
        pass
'''


class Host(object):
    """One test host: a user, and (unless silent) an sshd on addr for it."""

    def __init__(self, lab, alias, addr, nopython=False, wrong_key=False, silent=False):
        self.lab, self.alias, self.addr = lab, alias, addr
        self.silent = silent
        self.proc = None
        lab.hosts[alias] = self  # closed by lab.close() even if the rest of this fails
        self.port = free_port(addr)
        self.dir = os.path.join(lab.base, "hosts", alias)
        os.makedirs(self.dir)
        if silent:  # accepts TCP (the kernel does) and never says a word: ssh waits for a banner
            self.sock = socket.socket()  # (closed by close())
            self.sock.bind((addr, self.port))
            self.sock.listen(16)
            self.user = None
            lab.client_config(alias, addr, self.port, "nobody")
            return
        self.user = "os%s%s" % (lab.tag, alias[-1].lower())
        self.home = os.path.join(lab.base, "home", self.user)
        subprocess.run(["useradd", "-m", "-d", self.home, "-p", "*", "-s", "/bin/sh", self.user], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        lab.users.append(self.user)
        pw = pwd.getpwnam(self.user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.hostkey = os.path.join(self.dir, "hostkey")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.hostkey], check=True)
        auth = os.path.join(self.dir, "authorized_keys")
        shutil.copy(lab.client_key + ".pub", auth)
        os.chmod(auth, 0o644)
        with open(os.path.join(self.dir, "sshd_config"), "w") as f:
            f.write("ListenAddress %s:%d\nHostKey %s\nPidFile none\nUsePAM no\nPasswordAuthentication no\n"
                    "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nAuthorizedKeysFile %s\n"
                    "StrictModes no\nAllowUsers %s\nPermitUserEnvironment yes\nMaxStartups 100\n"
                    "LogLevel VERBOSE\n" % (addr, self.port, self.hostkey, auth, self.user))
        if nopython:  # a host whose PATH has no python3 (sshd sets PATH itself; the user's file wins)
            ssh_dir = os.path.join(self.home, ".ssh")
            os.makedirs(ssh_dir, exist_ok=True)
            with open(os.path.join(ssh_dir, "environment"), "w") as f:
                f.write("PATH=%s\n" % lab.nopython_bin)
        self.install_agents()
        self.chown()
        key = lab.other_key + ".pub" if wrong_key else self.hostkey + ".pub"
        with open(key) as f:
            kind, blob = f.read().split()[:2]
        with open(lab.known_hosts, "a") as f:
            f.write("[%s]:%d %s %s\n" % (addr, self.port, kind, blob))
        lab.client_config(alias, addr, self.port, self.user)
        self.start()

    def install_agents(self):
        fx = os.path.join(self.home, "fixtures")
        os.makedirs(fx, exist_ok=True)
        for name in os.listdir(os.path.join(FX, "remote")):
            shutil.copy(os.path.join(FX, "remote", name), fx)
        for name in ("permission.txt", "idle.txt"):
            shutil.copy(os.path.join(FX, "claude", name), fx)
        bin_dir = os.path.join(self.home, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        with open(os.path.join(bin_dir, "claude"), "w") as f:
            # the interpreter named directly: the process is then called "claude", as the real one is
            f.write(FAKE_CLAUDE.replace("%(python)s", HOST_PYTHON))
        os.chmod(os.path.join(bin_dir, "claude"), 0o755)
        os.makedirs(os.path.join(self.home, "proj"), exist_ok=True)

    def chown(self):
        for root, dirs, files in os.walk(self.home):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), self.uid, self.gid)
        os.chown(self.home, self.uid, self.gid)

    # -- sshd ----------------------------------------------------------------------------------
    def start(self):
        self.log = open(os.path.join(self.dir, "sshd.log"), "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", os.path.join(self.dir, "sshd_config")],
                                     stdout=self.log, stderr=self.log, start_new_session=True)

        def up():
            with socket.create_connection((self.addr, self.port), timeout=1) as s:
                return s.recv(8).startswith(b"SSH-")
        wait_until(up, message="sshd for %s did not start (see %s)" % (self.alias, self.dir))

    def sshd_pids(self):
        """The listening sshd and every sshd process under it (one pair per connection)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        table = proc_table()
        return [self.proc.pid] + [p for p in descendants(self.proc.pid, table) if table[p][1] == "sshd"]

    def kill(self):
        """The host drops off the network: sshd and its connections are killed."""
        for pid in self.sshd_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.proc is not None:
            self.proc.wait(10)
            self.proc = None
            self.log.close()

    def stop(self):
        """The host hangs: every sshd process of it is stopped (SIGSTOP) mid-stream."""
        self.stopped = self.sshd_pids()
        for pid in self.stopped:
            os.kill(pid, signal.SIGSTOP)

    def cont(self):
        for pid in getattr(self, "stopped", ()):
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
        self.stopped = []

    def sshd_log(self):
        with open(os.path.join(self.dir, "sshd.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    # -- the host's side -----------------------------------------------------------------------
    def ssh(self, command, check=True, timeout=20):
        """Run a command on the host over real ssh (the wrapper, our config)."""
        p = subprocess.run([self.lab.wrapper, "-o", "BatchMode=yes", self.alias, command], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, env=self.lab.env())
        if check and p.returncode != 0:
            raise RuntimeError("ssh %s %r: %s" % (self.alias, command, p.stderr.decode()))
        return p.stdout.decode()

    def tmux(self, *args):
        import shlex
        return self.ssh("tmux " + " ".join(shlex.quote(a) for a in args))

    def tmux_here(self, *args):
        """The host user's tmux server asked directly (as root, through its socket): no ssh login."""
        p = subprocess.run(["tmux", "-S", "/tmp/tmux-%d/default" % self.uid] + list(args), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=10)
        return p.stdout.decode()

    def processes(self):
        """{pid: comm} of this host user's processes."""
        return {p: c for p, (_, c, uid) in proc_table().items() if uid == self.uid}

    def path(self, *parts):
        return os.path.join(self.home, *parts)

    def server_info(self):
        """The host's opensessions runtime file (pid, port, ...), or None."""
        d = "/tmp/opensessions-%d" % self.uid
        for name in os.listdir(d) if os.path.isdir(d) else ():
            if name.startswith("server-") and name.endswith(".json"):
                try:
                    with open(os.path.join(d, name)) as f:
                        return json.load(f)
                except (OSError, ValueError):
                    pass
        return None

    def close(self):
        if self.silent:
            if getattr(self, "sock", None) is not None:
                self.sock.close()
            return
        self.cont()
        self.kill()


class SshLab(object):
    """The client side (key, ssh_config, known_hosts, ssh wrapper) and the hosts."""

    def __init__(self, base=None):
        self.tag = uuid.uuid4().hex[:6]
        self.base = base or "/tmp/osr-%s" % self.tag
        os.makedirs(os.path.join(self.base, "home"))
        os.makedirs(os.path.join(self.base, "hosts"))
        os.chmod(self.base, 0o755)
        os.chmod(os.path.join(self.base, "home"), 0o755)
        self.users, self.hosts = [], {}
        client = os.path.join(self.base, "client")
        os.makedirs(client, mode=0o700)
        self.client_key = os.path.join(client, "id_ed25519")
        self.other_key = os.path.join(client, "other_hostkey")
        for path in (self.client_key, self.other_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
        self.known_hosts = os.path.join(client, "known_hosts")
        open(self.known_hosts, "w").close()
        self.config = os.path.join(client, "ssh_config")
        open(self.config, "w").close()
        self.bin = os.path.join(self.base, "bin")
        os.makedirs(self.bin)
        os.chmod(self.bin, 0o755)
        self.wrapper = os.path.join(self.bin, "ssh")
        with open(self.wrapper, "w") as f:
            f.write('#!/bin/sh\nexec %s -F %s "$@"\n' % (SSH, self.config))
        os.chmod(self.wrapper, 0o755)
        self.nopython_bin = os.path.join(self.base, "nopython-bin")  # sh and tmux, no python3
        os.makedirs(self.nopython_bin)
        for tool in ("sh", "tmux", "env", "cat", "mkdir"):
            if shutil.which(tool):
                os.symlink(shutil.which(tool), os.path.join(self.nopython_bin, tool))
        os.chmod(self.nopython_bin, 0o755)

    def env(self, base=None):
        env = dict(base if base is not None else os.environ)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        return env

    def client_config(self, alias, addr, port, user):
        with open(self.config, "a") as f:
            f.write("Host %s\n  HostName %s\n  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"
                    "  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n\n"
                    % (alias, addr, port, user, self.client_key, self.known_hosts))

    def add(self, alias, addr, **kw):
        return Host(self, alias, addr, **kw)

    def close(self):
        for h in self.hosts.values():
            try:
                h.close()
            except Exception:
                pass
        uids = set()
        for user in self.users:
            try:
                uids.add(pwd.getpwnam(user).pw_uid)
            except KeyError:
                pass
        for _ in range(3):  # what the users run: tmux, opensessions servers, fake agents (by pid)
            left = [p for p, (_, _, uid) in proc_table().items() if uid in uids]
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        for user in self.users:
            subprocess.run(["userdel", "-r", "-f", user], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for uid in uids:
            for d in ("/tmp/tmux-%d" % uid, "/tmp/opensessions-%d" % uid):
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.base, ignore_errors=True)
