"""Restores at the same time type the resume command once: a restore claims
the pane (a compare-and-set of a tmux option, in one tmux command sequence) before it waits for
the prompt and for `clear`; another restore finds it claimed and types nothing."""
import json
import os
import subprocess
import threading

import pytest

import opensessions as os_
from conftest import PYTHON, SCRIPT, TmuxServer, retry_until

SID = "7a3c1e52-1d0b-4c1e-9a57-0c4f2f6d9e11"

AGENT = r"""#!/bin/sh
# a fake claude: one line per start, one line per line it reads (a command typed into it)
printf 'start\t%s\t%s\n' "$$" "$*" >> "$CLAIM_LOG"
while read -r line; do printf 'line\t%s\n' "$line" >> "$CLAIM_LOG"; done
"""


@pytest.fixture
def world(env):
    bindir = os.path.join(env.base, "bin")
    os.makedirs(bindir)
    with open(os.path.join(bindir, "claude"), "w") as f:
        f.write(AGENT)
    os.chmod(os.path.join(bindir, "claude"), 0o755)
    env.vars["PATH"] = bindir + os.pathsep + env.vars["PATH"]
    env.vars["CLAIM_LOG"] = os.path.join(env.base, "agent.log")
    cwd = os.path.join(env.home, "proj")
    os.makedirs(cwd)
    transcript = os.path.join(env.home, ".claude", "projects", os_.claude_project_dir_name(cwd), SID + ".jsonl")
    os.makedirs(os.path.dirname(transcript))
    with open(transcript, "w") as f:
        f.write("{}\n")
    rdir = os.path.join(env.base, "resurrect")
    os.makedirs(rdir)
    with open(os.path.join(rdir, "opensessions_20261122T030000.json"), "w") as f:
        json.dump({"version": 1, "records": [{"session": "work", "window": 0, "paneIndex": 0, "agent": "claude",
                                              "id": SID, "cwd": cwd}]}, f)
    os.symlink("opensessions_20261122T030000.json", os.path.join(rdir, "opensessions_last"))
    tmux = TmuxServer(env, "claim")
    tmux.new_session("seed", cwd=env.home)
    tmux.run("set-option", "-g", "@resurrect-dir", rdir)
    tmux.run("set-option", "-g", "default-command", "bash --norc --noprofile")
    yield env, tmux, cwd
    tmux.kill()


def agent_log(env):
    try:
        with open(env.vars["CLAIM_LOG"]) as f:
            return [l.rstrip("\n").split("\t") for l in f if l.strip()]
    except OSError:
        return []


def restore(env, tmux):
    return subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "restore"], env=env.vars,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)


@pytest.mark.parametrize("round_", range(3))
def test_restores_at_the_same_time_type_the_command_once(world, round_):
    env, tmux, cwd = world
    tmux.run("new-session", "-d", "-s", "work", "-c", cwd, "-x", "150", "-y", "40")
    retry_until(lambda: tmux.run("display-message", "-p", "-t", "=work:0.0", "#{pane_current_command}").strip()
                == "bash" and tmux.run("capture-pane", "-p", "-t", "=work:0.0").strip())
    results = [None] * 4

    def run(i):
        results[i] = restore(env, tmux)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    starts = retry_until(lambda: [l for l in agent_log(env) if l[0] == "start"], timeout=10)
    # the agent runs once, and nothing more was typed into it (a second `clear` or command line)
    assert len(starts) == 1 and starts[0][2] == "--resume " + SID, agent_log(env)
    assert [l for l in agent_log(env) if l[0] == "line"] == []
    log = open(os.path.join(env.home, ".local", "state", "opensessions", "opensessions.log")).read()
    assert log.count("restore: typed 1 of 1") == 1, log
    assert log.count("restore: typed 0 of 1") == 3, log
    assert tmux.run("show-options", "-pqv", "-t", "=work:0.0", "@opensessions-restored").strip() == SID
    assert tmux.run("show-options", "-pqv", "-t", "=work:0.0", "@opensessions-restoring").strip() == ""


def test_a_claim_is_a_compare_and_set_and_a_dead_restores_claim_is_taken_over(world):
    env, tmux, cwd = world
    pane = tmux.run("display-message", "-p", "-t", "=seed:0.0", "#{pane_id}").strip()
    r1 = os_.Resurrect(tmux.tmux, env.vars)
    r2 = os_.Resurrect(tmux.tmux, env.vars)
    claim = r1.claim_pane(pane)
    assert claim and claim.startswith("claim-%d-" % os.getpid())
    assert r2.claim_pane(pane) is None  # a live restore holds it
    r1.release_pane(pane, claim)
    assert tmux.run("show-options", "-pqv", "-t", pane, "@opensessions-restoring").strip() == ""
    dead = subprocess.Popen(["true"])
    dead.wait()
    tmux.run("set-option", "-p", "-t", pane, "@opensessions-restoring", "claim-%d-abcd" % dead.pid)
    assert r2.claim_pane(pane) is not None  # its restore died: the claim is taken over
