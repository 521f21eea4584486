"""Installing from a clone as the README says, then updating it: the no-pip line works on a fresh
HOME, and a later `git pull` of a changed opensessions.py goes through (local repos in a temp dir)."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT


def readme_line(marker):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f if marker in l]
    assert len(lines) == 1, lines
    return lines[0]


def git(*args, cwd=None, env=None):
    return subprocess.run(["git"] + list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)


@pytest.fixture
def gitenv(tmp_path):
    home = str(tmp_path / "home")  # a fresh HOME: no ~/.local/bin, no git config
    os.makedirs(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "XDG_"))}
    env.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid", LANG="C.UTF-8")
    return env


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_no_pip_line_on_a_fresh_home_then_git_pull(tmp_path, gitenv):
    if git("rev-parse", "--git-dir", cwd=ROOT).returncode != 0:
        pytest.skip("the tests run outside a git checkout: nothing to clone")
    upstream, user = str(tmp_path / "upstream"), str(tmp_path / "user")
    assert git("clone", "-q", ROOT, upstream, env=gitenv).returncode == 0
    assert git("ls-files", "-s", "opensessions.py", cwd=upstream).stdout.decode().startswith("100755 ")
    assert git("clone", "-q", upstream, user, env=gitenv).returncode == 0

    line = readme_line("# no pip")
    r = subprocess.run(["bash", "-c", line], cwd=user, env=gitenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    assert r.returncode == 0, (line, r.stderr.decode())
    link = os.path.join(gitenv["HOME"], ".local", "bin", "opensessions")
    assert os.path.realpath(link) == os.path.realpath(os.path.join(user, "opensessions.py"))
    r = subprocess.run([link, "--version"], env=gitenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0 and r.stdout.decode().startswith("opensessions "), r.stderr.decode()
    assert git("status", "--porcelain", cwd=user, env=gitenv).stdout == b""  # the install changed nothing git sees

    # upstream moves on: opensessions.py changes, and the user pulls (what TPM's prefix U does)
    with open(os.path.join(upstream, "opensessions.py"), "a") as f:
        f.write("\n# an update\n")
    assert git("commit", "-qam", "an update", cwd=upstream, env=gitenv).returncode == 0
    r = git("pull", "-q", "--ff-only", cwd=user, env=gitenv)
    assert r.returncode == 0, r.stderr.decode()
    with open(os.path.join(user, "opensessions.py")) as f:
        assert f.read().endswith("# an update\n")
    r = subprocess.run([link, "--version"], env=gitenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr.decode()  # still runs, through the same link

    # the line run a second time (the user follows the README again) does not fail either
    r = subprocess.run(["bash", "-c", line], cwd=user, env=gitenv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    assert r.returncode == 0, r.stderr.decode()
