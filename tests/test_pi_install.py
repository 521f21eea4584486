"""The Pi extension (and the OpenCode plugin) installed as the JSON configs are: a
user's own file there is backed up and given back, a symlink is written through and stays, the
ledger says what install did, and nothing is written into another user's file (run as root)."""
import json
import os

import pytest

import opensessions as os_


@pytest.fixture
def home(tmp_path):
    h = str(tmp_path / "home")
    os.makedirs(os.path.join(h, ".pi", "agent", "extensions"))
    return h


def env_of(home):
    return {"HOME": home, "XDG_STATE_HOME": os.path.join(home, ".local", "state"),
            "XDG_CONFIG_HOME": os.path.join(home, ".config")}


def ext_of(home):
    return os.path.join(home, ".pi", "agent", "extensions", "opensessions.ts")


def ledger(home):
    with open(os.path.join(home, ".local", "state", "opensessions", "installed.json")) as f:
        return json.load(f)


MINE = "// my own extension, kept in my dotfiles\nexport default function () {}\n"


def test_a_users_own_extension_behind_a_symlink_is_kept_and_given_back(home, tmp_path):
    dotfile = str(tmp_path / "dotfiles" / "opensessions.ts")
    os.makedirs(os.path.dirname(dotfile))
    with open(dotfile, "w") as f:
        f.write(MINE)
    os.chmod(dotfile, 0o640)
    ext = ext_of(home)
    os.symlink(dotfile, ext)
    done = os_.install_agents("opensessions", env_of(home))
    assert any("your own file there is kept in %s.opensessions.bak" % ext in d for d in done), done
    assert os.path.islink(ext) and os.readlink(ext) == dotfile  # the link stays a link
    assert open(dotfile).read() == os_.PI_EXTENSION and oct(os.stat(dotfile).st_mode & 0o777) == oct(0o640)
    assert open(ext + ".opensessions.bak").read() == MINE
    assert ledger(home)[os.path.realpath(ext)] == {"createdFile": False, "backup": True}
    assert os_.install_agents("opensessions", env_of(home)) == []  # idempotent
    done = os_.install_agents("opensessions", env_of(home), uninstall=True)
    assert any("gave back your own %s" % ext in d for d in done), done
    assert os.path.islink(ext) and open(dotfile).read() == MINE  # the user's link and file, as they were
    assert not os.path.exists(ext + ".opensessions.bak")


def test_an_extension_install_made_is_removed_and_a_users_own_is_left(home):
    ext = ext_of(home)
    os_.install_agents("opensessions", env_of(home))
    assert open(ext).read() == os_.PI_EXTENSION
    assert ledger(home)[os.path.realpath(ext)] == {"createdFile": True}
    os_.install_agents("opensessions", env_of(home), uninstall=True)
    assert not os.path.lexists(ext)
    with open(ext, "w") as f:  # the user's own, never installed by us: uninstall leaves it
        f.write(MINE)
    done = os_.install_agents("opensessions", env_of(home), uninstall=True)
    assert open(ext).read() == MINE and any("not ours" in d for d in done), done


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files owned by another user")
def test_run_as_root_nothing_is_written_into_another_users_file(home, tmp_path):
    theirs = str(tmp_path / "alice" / "notes.ts")
    os.makedirs(os.path.dirname(theirs))
    with open(theirs, "w") as f:
        f.write(MINE)
    os.chown(theirs, 1234, 1234)
    ext = ext_of(home)
    os.symlink(theirs, ext)
    with pytest.raises(os_.OpensessionsError, match="owned by uid 1234, not by you"):
        os_.install_agents("opensessions", env_of(home))
    st = os.stat(theirs)
    assert (st.st_uid, open(theirs).read()) == (1234, MINE)  # untouched, still theirs
    assert not os.path.exists(ext + ".opensessions.bak")
    # the JSON configs the same way: a settings.json leading into another user's file
    home2 = str(tmp_path / "home2")
    claude = os.path.join(home2, ".claude")
    os.makedirs(claude)
    home = home2
    settings = str(tmp_path / "alice" / "settings.json")
    with open(settings, "w") as f:
        json.dump({"model": "theirs"}, f)
    os.chown(settings, 1234, 1234)
    os.symlink(settings, os.path.join(claude, "settings.json"))
    with pytest.raises(os_.OpensessionsError, match="owned by uid 1234"):
        os_.install_agents("opensessions", env_of(home))
    assert os.stat(settings).st_uid == 1234 and json.load(open(settings)) == {"model": "theirs"}
    assert not os.path.exists(os.path.join(claude, "settings.json.opensessions.bak"))


def test_the_opencode_plugin_is_kept_the_same_way(home):
    plugin = os.path.join(home, ".config", "opencode", "plugins", "opensessions.js")
    os.makedirs(os.path.dirname(plugin))
    with open(plugin, "w") as f:
        f.write("// mine\n")
    os_.install_agents("opensessions", env_of(home))
    assert open(plugin).read() == os_.OPENCODE_PLUGIN and open(plugin + ".opensessions.bak").read() == "// mine\n"
    os_.install_agents("opensessions", env_of(home), uninstall=True)
    assert open(plugin).read() == "// mine\n"
