"""Pure model: validation, status rules, attention order, unseen rule, path helpers."""
import pytest
from hypothesis import given, strategies as st

import opensessions as os_
from opensessions import ApiError, Thread


def test_set_status_validates_and_clears():
    assert os_.validate_set_status({"session": "a", "text": "Deploying", "tone": "warn"}) == \
        ("a", {"text": "Deploying", "tone": "warn"})
    assert os_.validate_set_status({"session": "a", "text": None}) == ("a", None)
    assert os_.validate_set_status({"session": "a", "text": "x"})[1]["tone"] == "neutral"
    for bad in ({"text": "x"}, {"session": "", "text": "x"}, {"session": "a"},
                {"session": "a", "text": 3}, {"session": "a", "text": "x", "tone": "loud"}):
        with pytest.raises(ApiError) as e:
            os_.validate_set_status(bad)
        assert e.value.status == 400 and e.value.message


def test_set_progress_forms():
    s, p = os_.validate_set_progress({"session": "a", "current": 3, "total": 10, "label": "svc"})
    assert p == {"current": 3, "total": 10, "label": "svc", "percent": 30.0}
    assert os_.validate_set_progress({"session": "a", "percent": 55})[1]["percent"] == 55
    assert os_.validate_set_progress({"session": "a", "clear": True}) == ("a", None)
    for bad in ({"session": "a"}, {"session": "a", "percent": 101}, {"session": "a", "current": 1},
                {"session": "a", "current": 1, "total": 0}, {"session": "a", "percent": True},
                {"session": "a", "percent": "50"}):
        with pytest.raises(ApiError):
            os_.validate_set_progress(bad)


def test_log_truncates_and_caps():
    _, entry = os_.validate_log({"session": "a", "message": "x" * 900, "tone": "success"}, clock=lambda: 12.5)
    assert len(entry["message"]) == os_.MAX_LOG_MESSAGE and entry["ts"] == 12500
    logs = []
    for i in range(80):
        logs = os_.apply_log(logs, {"message": str(i)})
    assert len(logs) == os_.MAX_LOGS and logs[0]["message"] == "30" and logs[-1]["message"] == "79"


def test_agent_event_normalizes_status_and_checks_types():
    ev = os_.validate_agent_event({"agent": "Claude", "status": "busy", "threadId": "t1", "paneId": "%3"})
    assert ev["agent"] == "claude" and ev["status"] == "running" and ev["paneId"] == "%3"
    for bad in ({"agent": "claude"}, {"agent": "claude", "status": "dancing"},
                {"agent": "", "status": "done"}, {"agent": "claude", "status": "done", "paneId": "3"},
                {"agent": "claude", "status": "done", "threadId": 5},
                {"agent": "claude", "status": "done", "pid": -1}):
        with pytest.raises(ApiError):
            os_.validate_agent_event(bad)


def test_session_state_follows_attention_priority():
    def t(status, unseen=False):
        return Thread("claude", status + str(unseen), status=status, unseen=unseen)
    assert os_.session_state([]) is None
    assert os_.session_state([t("done"), t("running")]) == "running"
    assert os_.session_state([t("done", True), t("running")]) == "done-unseen"
    assert os_.session_state([t("interrupted"), t("done", True)]) == "interrupted"
    assert os_.session_state([t("waiting"), t("interrupted")]) == "waiting"
    assert os_.session_state([t("waiting"), t("error")]) == "error"
    assert os_.session_state([t("idle"), t("done")]) == "done"
    subagent = t("error")
    subagent.subagent = True  # a subagent does not count for its session
    assert os_.session_state([subagent, t("idle")]) == "idle"


def test_unseen_rule():
    assert os_.becomes_unseen("running", "done", viewed=False)
    assert not os_.becomes_unseen("running", "done", viewed=True)
    assert not os_.becomes_unseen("done", "done", viewed=False)
    assert not os_.becomes_unseen("done", "running", viewed=False)
    for s in ("error", "interrupted", "waiting"):
        assert os_.becomes_unseen("running", s, viewed=False)


def test_most_specific_dir():
    assert os_.most_specific_dir("/a/b/c", ["/a", "/a/b", "/x"]) == "/a/b"
    assert os_.most_specific_dir("/a/bc", ["/a/b"]) is None
    assert os_.most_specific_dir("/a/b", ["/a/b/"]) == "/a/b/"
    assert os_.most_specific_dir(None, ["/a"]) is None


def test_tmux_socket_resolution():
    env = {"TMUX_TMPDIR": "/t", "TMUX": "/s/sock,123,0"}
    assert os_.tmux_socket_path(socket_path="/x/y", environ=env) == "/x/y"
    assert os_.tmux_socket_path(socket_name="w", environ=env).endswith("/t/tmux-%d/w" % os_.os.getuid())
    assert os_.tmux_socket_path(environ=env) == "/s/sock"
    assert os_.tmux_socket_path(environ={}) == "/tmp/tmux-%d/default" % os_.os.getuid()
    assert os_.parse_tmux_env("/p/with,comma,77,3") == "/p/with,comma"


def test_host_check():
    for ok in ("127.0.0.1", "127.0.0.1:7391", "localhost:1", "[::1]:7391", "[::1]", "LOCALHOST", None):
        assert os_.host_is_loopback(ok), ok
    for bad in ("evil.com", "evil.com:7391", "127.0.0.1.evil.com", "localhost:x", "[::2]:1", "0.0.0.0"):
        assert not os_.host_is_loopback(bad), bad


def test_atomic_write_and_read_json(tmp_path):
    p = str(tmp_path / "f.json")
    os_.atomic_write(p, '{"a": 1}')
    assert os_.read_json_file(p) == {"a": 1}
    assert os_.read_json_file(str(tmp_path / "missing"), 7) == 7
    with open(p, "w") as f:
        f.write("{broken")
    with pytest.raises(os_.OpensessionsError) as e:
        os_.read_json_file(p)
    assert "f.json" in str(e.value)
    assert [n for n in tmp_path.iterdir() if n.name.startswith(".")] == []


def test_private_dir_is_0700(tmp_path):
    d = str(tmp_path / "rt")
    os_.ensure_private_dir(d)
    assert (os_.os.stat(d).st_mode & 0o777) == 0o700


@given(st.dictionaries(st.text(max_size=12), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.lists(st.integers(), max_size=3)), max_size=6))
def test_validators_raise_only_api_errors(body):
    for fn in (os_.validate_set_status, os_.validate_set_progress, os_.validate_log,
               os_.validate_notify, os_.validate_agent_event):
        try:
            fn(body)
        except ApiError as e:
            assert e.status == 400 and isinstance(e.message, str)


def test_one_number_coercion():
    n = os_.as_number
    assert n(3) == 3 and n(2.5) == 2.5 and n(2.9, kind=int) == 2
    for bad in (True, None, "7", float("inf"), float("nan"), [], {}):
        assert n(bad) is None and n(bad, 0) == 0
    assert n("72036", None, int, text=True) == 72036 and n("1.5", -1, int, text=True) == -1
    assert n(-1, 0, low=0) == 0 and n(5, 0, high=4) == 0
    assert os_.token_count(1e300) == 10 ** 15 and os_.token_count(-5) == 0 and os_.token_count("9") == 0


def test_one_control_character_rule():
    """C0, DEL, C1 and U+2028/U+2029 everywhere: a row, a typed reply, a restore record, a screen."""
    for ch in ("\x00", "\n", "\x7f", "\x9b", "\u2028", "\u2029"):
        assert os_.CONTROL_CHARS.search("a" + ch) and os_.clean_text("a%sb" % ch) == "a b"
        with pytest.raises(os_.ReplyRefused):
            os_.check_reply_text("hi" + ch)
    assert os_.resurrect_escape("x\u2028\x9by") == "x\\u2028\\x9by"
    assert "control character" in os_.record_problem({"agent": "claude", "id": "44444444-4444-4444-8444-444444444444",
                                                       "flags": ["--x\u2028"]}, pane=False)
    assert os_.strip_escapes("a\tb\x07\u2028\nc\x1b[1m") == "a\tb\nc"  # a screen keeps its tabs and lines


def test_thread_updates_are_cleaned_by_the_model():
    """What a watcher, hook or plugin says is made safe before the apply step keeps it (pure)."""
    out = os_.clean_thread_fields({"title": "a\nb\x1b", "cwd": "/w\ud800", "pid": 12.5, "attempt": True,
                                   "updated_at": float("inf"), "status": "running"})
    assert out == {"title": "a b ", "cwd": "/w\ufffd", "pid": None, "attempt": None, "updated_at": None,
                   "status": "running"}
    assert os_.clean_thread_fields({"pid": 4242, "attempt": 2.0, "updated_at": 5}) == \
        {"pid": 4242, "attempt": 2.0, "updated_at": 5}
