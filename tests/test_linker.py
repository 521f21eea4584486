"""The linker, alone: link_threads and guess_threads_by_cwd are pure functions of threads, panes
and processes (no tmux, no /proc, no store). The server applies what they return."""
import opensessions as os_

CLAUDE_A = "0d3b3f4e-5f4e-4b8e-9a51-5f0c2c1a7e11"
CLAUDE_B = "1e4c4f5f-6a5f-4c9f-8b62-6a1d3d2b8f22"
CODEX = "019a2b3c-4d5e-7f60-8a9b-0c1d2e3f4a5b"

# two panes in session "api", both in /src/api; one in "web"
PANES = {"%1": ("api", "/src/api"), "%2": ("api", "/src/api"), "%3": ("web", "/src/web")}


def procs(agents=None, codex=None, extra=(), exact_starts=True):
    """A process table: a shell per pane (pids 100, 200, 300), the given agents under them."""
    table = {100: os_.Proc(100, 1, "zsh"), 200: os_.Proc(200, 1, "zsh"), 300: os_.Proc(300, 1, "zsh")}
    pane_of_pid = {100: "%1", 200: "%2", 300: "%3"}
    for pane, (agent, pid, args) in (agents or {}).items():
        table[pid] = os_.Proc(pid, {"%1": 100, "%2": 200, "%3": 300}[pane], agent, start=5)
        pane_of_pid[pid] = pane
    for p in extra:  # processes in no pane (a daemon)
        table[p.pid] = p
    open_threads = {pid: ("codex", tid) for pid, tid in (codex or {}).items()}  # Codex's open rollouts
    return os_.Processes(table, pane_of_pid, dict(agents or {}), open_threads, exact_starts)


def thread(agent, tid, **kw):
    t = os_.Thread(agent, tid, alive=kw.pop("alive", False), **{k: v for k, v in kw.items() if k != "link"})
    t.link = kw.get("link")
    return t


def apply(threads, links):
    """What the server does with links (Server._apply_links), without a store."""
    by_key = {t.key: t for t in threads}
    for key, pid, alive, pane, link in links:
        t = by_key[key]
        t.pid, t.alive, t.link = pid, alive, link
        t.pane = pane if (pane or alive) else t.pane


def test_a_pid_from_a_registry_hook_or_plugin_links_its_pane():
    ts = [thread("claude", CLAUDE_A, pid=110, cwd="/src/api"),
          thread("opencode", "ses_dff0ffa93ffebtZJZGz5f4eDGC", pid=310, cwd="/src/web")]
    p = procs({"%1": ("claude", 110, ["claude"]), "%3": ("opencode", 310, ["opencode"])})
    links, sessions = os_.link_threads(ts, PANES, p)
    assert links == [(("claude", CLAUDE_A), 110, True, "%1", "pid"),
                     (("opencode", "ses_dff0ffa93ffebtZJZGz5f4eDGC"), 310, True, "%3", "pid")]
    assert sessions == {}
    assert ts[0].pane is None and ts[0].alive is False  # read, never changed


def test_a_dead_pid_or_a_reused_one_is_not_alive():
    ts = [thread("claude", CLAUDE_A, pid=999, pane="%1", alive=True),
          thread("claude", CLAUDE_B, pid=110)]
    ts[1].proc_start = 4  # pid 110 now belongs to a process that started later (5)
    p = procs({"%1": ("claude", 110, ["claude"])})
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("claude", CLAUDE_A), 999, False, None, None),
                     (("claude", CLAUDE_B), 110, False, None, None)]
    # where start times cannot tell (ps without them), the pid alone decides
    links, _ = os_.link_threads(ts, PANES, procs({"%1": ("claude", 110, ["claude"])}, exact_starts=False))
    assert links[1] == (("claude", CLAUDE_B), 110, True, "%1", "pid")


def test_exact_pid_links_beat_cwd_guesses():
    # both threads are in /src/api; B is newer, but A's pid is the agent in %1
    ts = [thread("claude", CLAUDE_A, pid=110, cwd="/src/api", updated_at=1),
          thread("claude", CLAUDE_B, cwd="/src/api", updated_at=2)]
    p = procs({"%1": ("claude", 110, ["claude"])})
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("claude", CLAUDE_A), 110, True, "%1", "pid")]
    assert os_.guess_threads_by_cwd(ts, PANES, p, links) == []  # %1 is taken by its pid


def test_a_cwd_guess_is_never_for_two_panes():
    ts = [thread("claude", CLAUDE_A, cwd="/src/api", updated_at=1)]
    p = procs({"%1": ("claude", 110, ["claude"]), "%2": ("claude", 210, ["claude"])})
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == []
    guesses = os_.guess_threads_by_cwd(ts, PANES, p, links)
    assert guesses == [(("claude", CLAUDE_A), 110, True, "%1", "cwd")]  # one pane only
    # two threads, two panes: the newest for the first pane, the other for the second
    ts.append(thread("claude", CLAUDE_B, cwd="/src/api", updated_at=2))
    assert os_.guess_threads_by_cwd(ts, PANES, p, []) == [
        (("claude", CLAUDE_B), 110, True, "%1", "cwd"), (("claude", CLAUDE_A), 210, True, "%2", "cwd")]


def test_a_cwd_guess_prefers_the_closest_directory_and_skips_hidden_and_taken_threads():
    panes = {"%1": ("api", "/src/api/sub")}
    ts = [thread("claude", CLAUDE_A, cwd="/src", updated_at=9),
          thread("claude", CLAUDE_B, cwd="/src/api", updated_at=1),
          thread("claude", "2f5d5a6a-7b6a-4d0a-9c73-7b2e4e3c9a33", cwd="/src/api/sub", subagent=True),
          thread("claude", "3a6e6b7b-8c7b-4e1b-8d84-8c3f5f4d0b44", cwd="/src/api/sub", pane="%9", alive=True),
          thread("codex", CODEX, cwd="/src/api/sub")]  # another agent
    p = os_.Processes({110: os_.Proc(110, 100, "claude")}, {110: "%1"}, {"%1": ("claude", 110, ["claude"])}, {}, True)
    assert os_.guess_threads_by_cwd(ts, panes, p, []) == [(("claude", CLAUDE_B), 110, True, "%1", "cwd")]


def test_a_thread_guessed_by_cwd_before_is_unlinked_when_nothing_guesses_it_again():
    ts = [thread("claude", CLAUDE_A, cwd="/src/api", pane="%1", alive=True, link="cwd")]
    links, _ = os_.link_threads(ts, PANES, procs())
    assert links == [(("claude", CLAUDE_A), None, False, None, None)]


def test_codex_open_rollout_fds_give_the_pid():
    ts = [thread("codex", CODEX, cwd="/src/web")]
    p = procs({"%3": ("codex", 310, ["codex"])}, codex={310: CODEX})
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("codex", CODEX), 310, True, "%3", "pid")]


def test_a_rollout_held_by_the_codex_daemon_keeps_the_thread_alive_without_a_pane():
    daemon = os_.Proc(900, 1, "codex")
    ts = [thread("codex", CODEX, cwd="/src/web")]
    p = procs(codex={900: CODEX}, extra=[daemon])
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("codex", CODEX), None, True, None, None)]
    # ... and its pane then comes from the TUI's `resume <id>`
    p = procs({"%3": ("codex", 310, ["codex", "resume", CODEX])}, codex={900: CODEX}, extra=[daemon])
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("codex", CODEX), 310, True, "%3", "pid")]


def test_resume_args_give_the_pid_unless_a_live_pid_says_otherwise():
    ts = [thread("claude", CLAUDE_A, cwd="/src/api")]
    p = procs({"%2": ("claude", 210, ["claude", "--resume", CLAUDE_A])})
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("claude", CLAUDE_A), 210, True, "%2", "pid")]
    # a hook's pid of a running process wins over another process's resume argument
    ts = [thread("claude", CLAUDE_A, pid=110, cwd="/src/api")]
    p = procs({"%1": ("claude", 110, ["claude"]), "%2": ("claude", 210, ["claude", "--resume", CLAUDE_A])})
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("claude", CLAUDE_A), 110, True, "%1", "pid")]
    # once applied, the guess leaves that thread alone: %2's agent has no thread to guess
    apply(ts, links)
    assert os_.guess_threads_by_cwd(ts, PANES, p, links) == []


def test_a_hook_named_pane_gets_its_session_once_tmux_tells_of_it():
    ts = [thread("claude", CLAUDE_A, pane="%3", session=None, link="api", alive=True),
          thread("claude", CLAUDE_B, pane="%9", session="old", link="api", alive=True)]
    links, sessions = os_.link_threads(ts, PANES, procs())
    assert links == [] and sessions == {("claude", CLAUDE_A): "web"}


def test_a_cwd_guess_stays_a_guess_at_the_next_link_until_a_source_vouches_for_the_pid():
    ts = [thread("claude", CLAUDE_A, cwd="/src/api", updated_at=1)]
    p = procs({"%1": ("claude", 110, ["claude"])})
    links, _ = os_.link_threads(ts, PANES, p)
    apply(ts, os_.guess_threads_by_cwd(ts, PANES, p, links))
    assert (ts[0].pid, ts[0].link) == (110, "cwd")
    # the next refresh: the guessed pid is still only our guess (replies need an exact link)
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("claude", CLAUDE_A), 110, True, "%1", "cwd")]
    assert os_.guess_threads_by_cwd(ts, PANES, p, links) == []  # and %1 is not guessed twice
    # a registry/hook/plugin gives the pid (the server clears the guess mark): exact from then on
    ts[0].link = None
    links, _ = os_.link_threads(ts, PANES, p)
    assert links == [(("claude", CLAUDE_A), 110, True, "%1", "pid")]


def test_live_conversations_name_what_can_change_now():
    """What the Linker holds where files are watched by stat or kqueue (a pure function): threads
    whose agent runs, threads a hook said were under way within the hour, the conversation an agent
    was started on (`resume <id>`) or holds open (Codex's rollout, a daemon's too), and for an
    agent in a pane with no thread linked, the directory it runs in."""
    now = 10 * 3600 * 1000
    ts = [thread("claude", CLAUDE_A, cwd="/src/api", alive=True, pane="%1"),
          thread("claude", CLAUDE_B, cwd="/src/web", status="running", updated_at=now - 3599 * 1000),
          thread("codex", "019a2b3c-0000-7f60-8a9b-0c1d2e3f4a5b", status="running", updated_at=now - 3601 * 1000),
          thread("codex", "019a2b3c-1111-7f60-8a9b-0c1d2e3f4a5b", status="idle", updated_at=now)]
    daemon = os_.Proc(900, 1, "codex")
    p = procs({"%1": ("claude", 110, ["claude"]), "%2": ("codex", 210, ["codex", "resume", CODEX]),
               "%3": ("claude", 310, ["claude"])}, codex={900: CODEX}, extra=[daemon])
    threads, cwds = os_.live_conversations(ts, PANES, p, now)
    assert threads == [("claude", CLAUDE_A, "/src/api"), ("claude", CLAUDE_B, "/src/web"),
                       ("codex", CODEX, "/src/api"), ("codex", CODEX, None)]
    # %1's agent is linked to its thread; %2's was started on a conversation it names
    assert cwds == [("claude", "/src/web")]


def test_the_linker_holds_live_files_only_where_files_are_watched_by_stat_or_kqueue():
    """Each link tells the watchers what can change now (live_conversations) where a hold makes a
    difference; under inotify it makes no pass over the threads for it."""
    from conftest import FakeLoop
    import types
    store = os_.Store(lambda: 1000.0)
    store.sessions = [{"name": "api", "id": "$1", "windows": [{"panes": [{"id": "%1", "cwd": "/src/api", "pid": 100}]}]}]
    store.threads[("claude", CLAUDE_A)] = thread("claude", CLAUDE_A, cwd="/src/api")
    held, wanted = [], [False]
    probes = types.SimpleNamespace(has_proc=True)
    loop = FakeLoop()
    loop.post = loop.remove_reader = lambda *a: None  # (the agent pid here is made up: its exit is not awaited)
    linker = os_.Linker(store, loop, probes, lambda: 1000.0, lambda: None, lambda *a: None, lambda: None,
                        holds_wanted=lambda: wanted[0], hold_files=lambda threads, cwds: held.append((threads, cwds)))
    p = procs({"%1": ("claude", 110, ["claude", "--resume", CLAUDE_A])})
    linker.proc_table, linker.pane_of_pid, linker.pane_agents = p.table, p.pane_of_pid, p.agents
    linker.link()
    assert held == []  # inotify: nothing to hold
    wanted[0] = True
    linker.link()
    assert held == [([("claude", CLAUDE_A, "/src/api"), ("claude", CLAUDE_A, "/src/api")], [])]
    linker.close()
