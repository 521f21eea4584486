"""What the server keeps across its own restart and across tmux's: threads, their unseen marks and
ages stay; pane links go when the tmux server is a new one; a cold start's passing states change
nothing."""
import json
import os
import shutil

import opensessions as os_
from conftest import AttachedClient, ServerProc, lab_home, retry_until


def test_a_new_tmux_server_drops_pane_links_not_ages(env, tmux):
    shutil.rmtree(env.home)
    lab_home(env.home)
    env.vars["OPENSESSIONS_LIST_HOURS"] = "1000000"  # fixture records are dated 2026-11-22
    env.vars["OPENSESSIONS_RECENT_DAYS"] = "100000"
    tmux.kill()  # its pane sat in the HOME just replaced
    tmux.new_session("main", cwd=env.home)
    s = ServerProc(env, tmux)
    try:
        pane = s.session("main")["windows"][0]["panes"][0]["id"]
        for tid in ("unseen-one", "seen-one"):
            for status in ("running", "done"):
                assert s.post("/api/agent-event", {"agent": "amp", "status": status, "threadId": tid,
                                                   "paneId": pane})[0] == 204
        client = AttachedClient(tmux, "main")  # looks at seen-one's window (and so at unseen-one's)
        try:
            retry_until(lambda: not any(t["unseen"] for t in s.session("main")["threads"]))
        finally:
            client.close()
        retry_until(lambda: not s.state()["clients"])  # nobody looks any more
        assert s.post("/api/agent-event", {"agent": "amp", "status": "running", "threadId": "unseen-one",
                                           "paneId": pane})[0] == 204
        assert s.post("/api/agent-event", {"agent": "amp", "status": "done", "threadId": "unseen-one",
                                           "paneId": pane})[0] == 204
        retry_until(lambda: [t["unseen"] for t in s.session("main")["threads"] if t["id"] == "unseen-one"] == [True])
        st = s.state()
        before = {t["id"]: t for x in st["sessions"] for t in x["threads"]}
        before.update({t["id"]: t for t in st["threads"]})
        assert len(before) > 5 and before["seen-one"]["pane"] == pane
    finally:
        s.stop()
    tmux.kill()
    tmux.new_session("main", cwd=env.home)  # pane ids start again: the same %0 is a new shell now
    s = ServerProc(env, tmux)
    try:
        assert s.session("main")["windows"][0]["panes"][0]["id"] == pane
        st = s.state()
        after = {t["id"]: dict(t, _session=x["name"]) for x in st["sessions"] for t in x["threads"]}
        after.update({t["id"]: dict(t, _session=None) for t in st["threads"]})
        for tid in ("unseen-one", "seen-one"):
            assert after[tid]["session"] == "main" and after[tid]["pane"] is None and not after[tid]["alive"]
        assert after["unseen-one"]["unseen"] is True and after["seen-one"]["unseen"] is False
        assert {k: (t["updatedAt"], t["unseen"]) for k, t in after.items()} == \
            {k: (t["updatedAt"], t["unseen"]) for k, t in before.items()}
        assert not any(t["pane"] == pane for t in after.values())
    finally:
        s.stop()


class StubTmux(object):
    instance_id = "100:1795000000"

    def __init__(self, base):
        self.socket_path = os.path.join(base, "stub.sock")

    def alive(self):
        return True

    def instance(self):
        return self.instance_id

    def run(self, *args, **kw):
        return ""


def test_a_cold_start_passing_through_a_transient_status_changes_nothing(env):
    srv = os_.Server(StubTmux(env.base), environ=env.vars)
    seen = srv.apply_thread_update("claude", "seen", status="interrupted", updated_at=1795000000000)
    srv.publish()
    assert seen.unseen is True  # nobody looked
    seen.unseen = False  # now someone has
    # a restart: the registry is read before the transcript (idle for a moment, with no time of its own)
    srv.cold_starting = True
    srv._known_before_cold = frozenset(srv.store.threads)
    srv._status_before_cold = {k: t.status for k, t in srv.store.threads.items()}
    srv.apply_thread_update("claude", "seen", status="idle")
    srv.apply_thread_update("claude", "seen", status="interrupted", updated_at=1795000000000)
    srv.cold_starting = False
    srv.publish()
    assert (seen.status, seen.unseen, seen.updated_at) == ("interrupted", False, 1795000000000)
    # live, a whole quick turn read at once still counts: done -> running -> done is a finished turn
    live = srv.apply_thread_update("codex", "live", status="done", updated_at=1795000000000)
    srv.publish()
    srv.apply_thread_update("codex", "live", status="running", updated_at=1795000001000)
    srv.apply_thread_update("codex", "live", status="done", updated_at=1795000002000)
    srv.publish()
    assert live.unseen is True and live.updated_at == 1795000002000


def test_a_tmux_server_replaced_under_a_running_server_unlinks_panes(env):
    srv = os_.Server(StubTmux(env.base), environ=env.vars)
    srv.tmux_instance = srv.tmux.instance()
    t = srv.apply_thread_update("claude", "t1", status="done", pane="%3", session="main", pid=4242, alive=True)
    t.unseen, t.updated_at = True, 1795000000000
    srv._on_control_exit()  # same tmux server: nothing changes
    assert (t.pane, t.pid, t.alive) == ("%3", 4242, True)
    srv.tmux.instance_id = "200:1795000999"  # kill-server, and a new server on the same socket
    srv._on_control_exit()
    assert (t.pane, t.pid, t.alive, t.session, t.unseen, t.updated_at) == (None, None, False, "main", True, 1795000000000)
    assert srv.tmux_instance == "200:1795000999"
    srv.state_file.save_now()  # the state file says whose pane ids its threads hold
    with open(srv.state_file.path) as f:
        assert json.load(f)["tmux"] == "200:1795000999"
