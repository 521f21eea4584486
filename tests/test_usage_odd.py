"""Odd numbers in usage: one count of 10^400 in a Qwen or Pi file is a
skipped (and counted) field, not a thread that never appears; `opensessions usage` gives one line
for odd history entries (a string or a list where a number belongs, updatedAt 1e20) and for a
--since of 400 digits, and carries on."""
import json
import os
import subprocess

import opensessions as os_
from conftest import PYTHON, SCRIPT, ServerProc, retry_until

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "fixtures")
HUGE = "1" + "0" * 400  # as JSON text: an int Python reads whole, that no float can hold


def test_a_huge_count_is_a_skipped_field_for_pi_qwen_and_gemini():
    pi = json.loads('{"type": "message", "message": {"role": "assistant", "model": "m", "stopReason": "stop",'
                    ' "usage": {"input": %s, "output": 5, "cacheRead": "7", "cost": {"total": %s}}}}' % (HUGE, HUGE))
    state = os_.pi_reduce(os_.new_thread_state("pi", "x"), pi)
    assert state["status"] == "done" and state["usage"]["output"] == 5 and state["usage"]["input"] == 0
    assert state["bad"] == 3  # input, cacheRead, cost: skipped and counted
    assert json.dumps(os_.usage_json(state["usage"]))  # and it encodes
    qwen = json.loads('{"type": "assistant", "message": {"parts": [{"text": "hi"}]}, "usageMetadata":'
                      ' {"promptTokenCount": %s, "candidatesTokenCount": 3}}' % HUGE)
    state = os_.qwen_reduce(os_.new_thread_state("qwen", "x"), qwen)
    assert state["usage"]["output"] == 3 and state["bad"] == 1
    gemini = json.loads('{"type": "gemini", "id": "m1", "content": "hi", "tokens": {"input": %s, "output": 2,'
                        ' "cached": 1e999}}' % HUGE)
    state = os_.gemini_reduce(os_.new_thread_state("gemini", "x"), gemini)
    assert state["usage"]["output"] == 2 and state["bad"] == 2


def test_a_pi_thread_with_a_huge_count_still_appears(env, tmux):
    env.vars["OPENSESSIONS_LIST_HOURS"] = "1000000"
    env.vars["OPENSESSIONS_RECENT_DAYS"] = "100000"
    name = open(os.path.join(FX, "pi", "session-filename.txt")).read().strip()
    tid = os_.pi_id_from_path(name)
    d = os.path.join(env.home, ".pi", "agent", "sessions", os_.pi_cwd_dir_name("/home/dev/proj"))
    os.makedirs(d)
    text = open(os.path.join(FX, "pi", "session.jsonl")).read().replace('"input": 12,', '"input": %s,' % HUGE, 1)
    assert HUGE in text
    with open(os.path.join(d, name), "w") as f:
        f.write(text)
    server = ServerProc(env, tmux)
    try:
        t = retry_until(lambda: [t for t in server.state()["threads"] if t["id"] == tid], timeout=10)[0]
        assert t["usage"]["output"] == 15 and t["usage"]["input"] == 24  # the two other calls counted
        assert json.loads(server.get("/health")[1])["skippedRecords"] >= 1
    finally:
        server.stop()


def test_usage_skips_odd_history_entries_with_one_line(server, env, tmux):
    key = os_.socket_key(tmux.socket)
    state_dir = os.path.join(env.home, ".local", "state", "opensessions")
    os.makedirs(state_dir, exist_ok=True)
    good = {"agent": "claude", "id": "good", "session": "s", "updatedAt": os_.now_ms() - 1000,
            "usage": {"input": 100, "output": 10, "cacheRead": 0, "cacheWrite": 0, "cost": 0.5}}
    odd = [dict(good, id="str-time", updatedAt="yesterday"), dict(good, id="list-time", updatedAt=[1]),
           dict(good, id="far", updatedAt=1e20), dict(good, id=["list"]), dict(good, id="sess", session=["x"]),
           dict(good, id="str-usage", usage={"input": "12", "output": [3], "cost": "a lot"}), "not an object"]
    with open(os.path.join(state_dir, "usage-%s.json" % key), "w") as f:
        json.dump({"threads": [good] + odd}, f)

    def usage(*args):
        return subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "usage"] + list(args), env=env.vars,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    r = usage("--since", "30d")
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "skipped 6 odd entries in the usage history" in lines[0], lines
    assert b"TOTAL" in r.stdout and b"$0.50" in r.stdout  # the good one, and the one with odd fields (cost 0)
    r = usage("--since", "9" * 400 + "d", "--json")
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["since"] == 0


def test_a_thread_without_usage_yet_is_not_an_odd_entry():
    """`opensessions usage` said "skipped 1 odd entry in /state (first: usage is not an object)" for
    a thread a hook reported before its agent recorded tokens (usage null, as /state documents)."""
    good = {"agent": "claude", "id": "good", "updatedAt": os_.now_ms(),
            "usage": {"input": 100, "output": 10, "cacheRead": 0, "cacheWrite": 0, "cost": 0.5}}
    fresh = {"agent": "claude", "id": "fresh", "updatedAt": os_.now_ms(), "usage": None}
    said = []
    threads = os_.usage_threads({"sessions": [{"name": "web", "threads": [good, fresh]}], "threads": [fresh]},
                                {"threads": [fresh]}, None, warn=said.append)
    assert [t["id"] for t in threads] == ["good"] and said == []
    os_.usage_threads({"sessions": [], "threads": [dict(fresh, usage="12")]}, warn=said.append)
    assert said == ["usage: skipped 1 odd entry in /state (first: usage is not an object)"]  # odd is still said


def test_parse_since_reaching_before_1970_is_everything():
    now = os_.now_ms()
    assert os_.parse_since("1d", now) == now - 86400000
    assert os_.parse_since("9" * 400 + "d", now) == 0
    assert os_.parse_since("100000w", now) == 0
