"""Reply planners against the real agents' screens (tests/fixtures/<agent>/, FORMATS.md): Gemini CLI,
Qwen Code and Pi answered as Claude Code, Codex and OpenCode are; "always" read from each option's own
words; multi-line text as one paste; refusals that are final at once. Pure: screens in, steps out."""
import os

import pytest

import opensessions as o

FX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def screen(path):
    with open(os.path.join(FX, path), encoding="utf-8") as f:
        return f.read()


def keys_of(steps):
    return [k for s in steps if s[0] == "keys" for k in s[1]]


def answer_of(steps):
    return [s[1] for s in steps if s[0] == "answer"][0]


GEMINI_SHELL = "gemini/replies/screens/04-write-always-prompt.esc.txt"
GEMINI_FILE = "gemini/replies/screens/14-file-once-prompt.esc.txt"
QWEN_SHELL = "qwen/replies/screens/04-write-always-prompt.esc.txt"
QWEN_FILE = "qwen/replies/screens/17-file-once-prompt.esc.txt"


# -- Gemini CLI and Qwen Code: the digit read from the prompt, never assumed ---------------------------

@pytest.mark.parametrize("agent,path,action,key", [
    ("gemini", GEMINI_SHELL, "approve", "1"), ("gemini", GEMINI_SHELL, "approve-always", "2"),
    ("gemini", GEMINI_SHELL, "deny", "3"),  # shell prompt: 3. No, suggest changes (esc)
    ("gemini", GEMINI_FILE, "approve", "1"), ("gemini", GEMINI_FILE, "approve-always", "2"),
    ("gemini", GEMINI_FILE, "deny", "4"),  # file prompt: 3 is "Modify with external editor"
    ("qwen", QWEN_SHELL, "approve", "1"), ("qwen", QWEN_SHELL, "approve-always", "2"),
    ("qwen", QWEN_SHELL, "deny", "4"),
    ("qwen", QWEN_FILE, "approve", "1"), ("qwen", QWEN_FILE, "approve-always", "2"),
    ("qwen", QWEN_FILE, "deny", "3"),  # file prompt: No is 3
])
def test_gemini_and_qwen_permission_digits(agent, path, action, key):
    steps = o.reply_plan(agent, action, screen(path))
    assert keys_of(steps) == [key]
    gone = steps[-1]
    assert gone[0] == "expect" and not gone[2](screen(path))  # the prompt is still up on the same screen
    after = {"gemini": "gemini/replies/screens/13-date-deny-digit-after-3.txt",
             "qwen": "qwen/replies/screens/16-date-deny-digit-after-4.txt"}[agent]
    assert gone[2](screen(after))


def test_always_says_what_it_covers_in_the_agents_words():
    assert answer_of(o.reply_plan("qwen", "approve-always", screen(QWEN_SHELL))) == (
        "“2. Always allow run 'echo *' commands in this project”; Qwen wrote it to <project>/.qwen/settings.json")
    assert answer_of(o.reply_plan("qwen", "approve-always", screen(QWEN_FILE))).startswith(
        "“2. Yes, allow always”; Qwen switches this run to auto-accept edits")
    said = answer_of(o.reply_plan("gemini", "approve-always", screen(GEMINI_SHELL)))
    assert said.startswith("“2. Allow for this session”; Gemini allows, until it exits, shell commands with "
                           "the same first word")
    assert answer_of(o.reply_plan("gemini", "deny", screen(GEMINI_FILE))) == "“4. No, suggest changes”"
    # Claude's option 2 for a shell write is directory access, not this command: it says so
    said = answer_of(o.reply_plan("claude", "approve-always", screen("claude/options/screens/01-redirect-prompt.esc.txt")))
    assert said.startswith("“2. Yes, and always allow access to /home/dev/work/claude from this project”; "
                           "Claude allows access to that directory, not this command")
    # the typographic apostrophe of "don’t" (U+2019) is read as "don't"
    steps = o.reply_plan("claude", "approve-always", screen("claude/options/screens/06-npm-prompt.esc.txt"))
    assert keys_of(steps) == ["2"] and answer_of(steps) == "“2. Yes, and don’t ask again for: npm *”"
    # a Write prompt's "always" is accept-edits for the session; "(shift+tab)" wrapped onto the next line
    steps = o.reply_plan("claude", "approve-always", screen("claude/options/screens/19-file-overwrite-prompt.esc.txt"))
    assert keys_of(steps) == ["2"] and "for this session”" in answer_of(steps)
    assert keys_of(o.reply_plan("claude", "deny", screen("claude/options/screens/19-file-overwrite-prompt.esc.txt"))) == ["3"]


def test_switch_to_auto_mode_is_never_taken_for_always():
    only_auto = screen("claude/options/screens/06-npm-prompt.txt").replace(
        "2. Yes, and don’t ask again for: npm *", "2. Yes, and switch to auto mode right now")
    with pytest.raises(o.ReplyRefused) as refused:
        o.reply_plan("claude", "approve-always", only_auto)
    assert str(refused.value).startswith("this Claude Code prompt has no option to approve always; it offers: 1. Yes; "
                                         "2. Yes, and switch to auto mode right now;")
    assert refused.value.wait == 0


@pytest.mark.parametrize("text,kind", [
    ("Yes", "once"), ("Yes, proceed", "once"), ("Allow once", "once"), ("Yes, allow once", "once"),
    ("Allow for this session", "always"), ("Yes, allow always", "always"),
    ("Always allow run 'echo *' commands for this user", "always"),
    ("Yes, and don’t ask again for: curl *", "always"),
    ("Yes, and don't ask again for commands that start with `echo hi` (p)", "always"),
    ("No", "deny"), ("No, suggest changes (esc)", "deny"), ("No, and tell Codex what to do differently (esc)", "deny"),
    ("Modify with external editor", None), ("Yes, and switch to auto mode · auto mode handles these prompts for you", None),
])
def test_option_kinds_from_their_own_words(text, kind):
    assert o.option_kind(text) == kind


# -- text: only into an empty input, and at once when the screen shows a permission prompt ---------------

@pytest.mark.parametrize("agent,idle", [
    ("gemini", "gemini/replies/screens/09-other-cmd-after-Escape.txt"),
    ("qwen", "qwen/replies/screens/05-write-always-after-2.txt"),
    ("pi", "pi/text/screens/01-idle.txt"),
])
def test_text_into_an_idle_input(agent, idle):
    steps = o.reply_plan(agent, "text", screen(idle), "say hi")
    assert ("literal", "say hi") in steps and keys_of(steps) == ["Enter"]
    submitted = steps[-1][2]
    assert submitted(screen(idle))  # an empty input after Enter is a submitted prompt


@pytest.mark.parametrize("agent,path", [("gemini", GEMINI_SHELL), ("qwen", QWEN_FILE)])
def test_text_on_a_permission_prompt_is_refused_at_once(agent, path):
    with pytest.raises(o.ReplyRefused, match="is asking for a permission") as refused:
        o.reply_plan(agent, "text", screen(path), "hi")
    assert refused.value.wait == 0


def test_qwen_input_holding_the_old_prompt_after_esc_is_not_typed_into():
    after_esc = screen("qwen/err500-esc/screens/02-after-esc.esc.txt")
    assert o.qwen_prompt(after_esc) == ("input", "then FAKE_ERR500")  # the U+200B at the cursor dropped
    with pytest.raises(o.ReplyRefused, match=r"Qwen Code's input already holds text \('then FAKE_ERR500'\)"):
        o.reply_plan("qwen", "text", after_esc, "say hi after esc")


def test_busy_screens_wait_longer_than_unknown_ones():
    # Gemini runs a hook after each turn ("Executing Hook … (esc to cancel, 1s)"): an Enter then is lost
    busy = screen("gemini/replies/screens/01-text-answered.txt")
    assert o.gemini_prompt(busy) == ("busy", "")
    with pytest.raises(o.ReplyRefused, match="is busy") as refused:
        o.reply_plan("gemini", "text", busy, "hi")
    assert refused.value.wait == o.BUSY_WAIT
    assert o.qwen_prompt(screen("qwen/err500-esc/screens/01-retrying.txt"))[0] == "busy"
    assert o.pi_prompt(screen("pi/screens/02-slow-running.txt"))[0] == "busy"


def test_pi_has_no_permission_prompt_and_amp_is_refused_with_its_reason():
    for action in ("approve", "approve-always", "deny"):
        with pytest.raises(o.ReplyRefused, match="Pi never asks for a permission") as refused:
            o.reply_plan("pi", action, screen("pi/text/screens/01-idle.txt"))
        assert refused.value.wait == 0
    with pytest.raises(o.ReplyRefused, match="replying to Amp is not supported: its screens were never seen"):
        o.reply_plan("amp", "approve", "")


# -- multi-line text: one bracketed paste, then Enter once it shows ---------------------------------------

PASTED = "pasted line one (send-keys)\npasted line two\npasted line three"


@pytest.mark.parametrize("agent,before,pasted,after", [
    ("claude", "claude/paste/screens/01-text-answered.txt", "claude/paste/screens/02-pasted-send-keys.txt",
     "claude/paste/screens/03-pasted-send-keys-after-enter.txt"),
    ("codex", "codex/idle.txt", "codex/paste/screens/02-pasted-send-keys.txt",
     "codex/paste/screens/03-pasted-send-keys-after-enter.txt"),
    ("opencode", "opencode/idle.txt", "opencode/paste/screens/02-pasted-send-keys.txt",
     "opencode/paste/screens/03-pasted-send-keys-after-enter.txt"),
    ("gemini", "gemini/replies/screens/09-other-cmd-after-Escape.txt", "gemini/paste/screens/02-pasted-send-keys.txt",
     "gemini/paste/screens/03-pasted-send-keys-after-enter.txt"),
    ("pi", "pi/text/screens/01-idle.txt", "pi/paste/screens/02-pasted-send-keys.txt",
     "pi/paste/screens/03-pasted-send-keys-after-enter.txt"),
])
def test_multi_line_text_is_one_paste_then_enter_once_it_shows(agent, before, pasted, after):
    steps = o.reply_plan(agent, "text", screen(before), PASTED)
    sending = [s for s in steps if s[0] in ("paste", "literal", "keys")]
    assert sending == [("paste", PASTED), ("keys", ["Enter"])]
    shown = next(s for s in steps if s[0] == "expect")
    assert not shown[2](screen(before)) and shown[2](screen(pasted))
    assert steps[-1][2](screen(after)) and not steps[-1][2](screen(pasted))


def test_gemini_enter_waits_two_seconds_after_a_paste_and_opencode_shows_a_placeholder():
    steps = o.reply_plan("gemini", "text", screen("gemini/replies/screens/09-other-cmd-after-Escape.txt"), PASTED)
    shown = next(s for s in steps if s[0] == "expect")
    assert shown[3] >= 2.0  # Gemini ignored an Enter 0-1.2 s after a paste (gemini/paste/delay/)
    assert o.opencode_input(screen("opencode/paste/screens/02-pasted-send-keys.txt")) == "[Pasted ~3 lines]"
    assert o.opencode_input(screen("opencode/idle.txt")) == ""


def test_qwen_paste_is_looked_for_longer_it_draws_late():
    steps = o.reply_plan("qwen", "text", screen("qwen/replies/screens/05-write-always-after-2.txt"), PASTED)
    assert steps[0][0] == "hold"  # the input looked empty over more than one frame first
    shown = next(s for s in steps if s[0] == "expect")
    assert shown[4] >= 3.0
    # 1.5 s after the paste the screen still showed the empty input (qwen/paste/screens/02-…)
    assert not shown[2](screen("qwen/paste/screens/02-pasted-send-keys.txt"))


def test_text_rules():
    assert o.check_reply_text("one\r\ntwo\n") == "one\ntwo"
    assert o.check_reply_text("a\n\tindented") == "a\n\tindented"  # a tab inside a paste is kept
    for bad in ("tab\tin one line", "two\nlines\x1b[A", "\n".join(["x"] * (o.MAX_REPLY_LINES + 1))):
        with pytest.raises(o.ReplyRefused):
            o.check_reply_text(bad)


# -- waiting for the screen: only while it changes ------------------------------------------------

class Clock(object):
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def test_a_definite_other_prompt_is_refused_without_looking_again():
    clock = Clock()
    reads = []

    def read():
        reads.append(clock.t)
        return screen(QWEN_SHELL)
    with pytest.raises(o.ReplyRefused, match="is asking for a permission"):
        o.plan_when_ready(read, lambda s: o.reply_plan("qwen", "text", s, "hi"), clock=clock, sleep=clock.sleep)
    assert reads == [0.0]


def test_a_still_screen_ends_the_wait_and_a_changing_one_is_followed():
    clock = Clock()
    idle = screen("claude/idle.txt")
    with pytest.raises(o.ReplyRefused):
        o.plan_when_ready(lambda: idle, lambda s: o.reply_plan("claude", "approve", s), clock=clock, sleep=clock.sleep)
    assert clock.t <= o.REPLY_SCREEN_STILL + 0.1
    # the prompt drawn a moment after the status said waiting: found
    clock = Clock()
    frames = [idle + "x" * i for i in range(8)] + [screen("claude/permission.txt")]
    steps, _ = o.plan_when_ready(lambda: frames.pop(0) if len(frames) > 1 else frames[0],
                                 lambda s: o.reply_plan("claude", "approve", s), clock=clock, sleep=clock.sleep)
    assert keys_of(steps) == ["1"]


@pytest.mark.parametrize("status,sentence", [
    ("error", "Codex stopped on an error; there is no permission to answer"),
    ("done", "Codex has finished its turn; there is no permission to answer"),
    ("running", "Codex is working on a turn; there is no permission to answer"),
    ("idle", "Codex is idle at its prompt; there is no permission to answer"),
])
def test_refusals_are_sentences(status, sentence):
    assert o.reply_status_refusal("Codex", "approve", status) == sentence
    assert o.reply_status_refusal("Codex", "approve", "waiting") is None
    assert o.reply_status_refusal("Codex", "text", "running").startswith(
        "Codex is working on a turn; text is sent only when it waits for input")


def test_qwen_suggestion_in_its_input_is_not_typed_text():
    # after a turn Qwen Code shows a suggested next prompt in its input, in the placeholder's colour,
    # the cursor before it (captured from the real CLI: qwen/replies/screens/23-…)
    shown = screen("qwen/replies/screens/23-suggestion-after-turn.esc.txt")
    assert o.qwen_prompt(shown) == ("input", "")
    steps = o.reply_plan("qwen", "text", shown, "say hi")
    assert ("literal", "say hi") in steps
    # without the escapes it cannot be told from typed text: refused (nothing typed over it)
    with pytest.raises(o.ReplyRefused, match="already holds text"):
        o.reply_plan("qwen", "text", screen("qwen/replies/screens/23-suggestion-after-turn.txt"), "say hi")
