#!/usr/bin/env bash
# TPM entry point (also works from a plain clone: run-shell /path/to/opensessions.tmux).
# Uses dist/opensessions.pyz when built, else opensessions.py, with the first python3 on PATH.
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="$(command -v python3)"
if [ -z "$py" ]; then
  tmux display-message "opensessions: no python3 on PATH (needs Python 3.9+)"
  exit 0
fi
if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)'; then
  tmux display-message "opensessions: needs Python 3.9+, found $("$py" --version 2>&1)"
  exit 0
fi
app="$dir/opensessions.py"
pyz="$dir/dist/opensessions.pyz"
# Build (or rebuild after an update of opensessions or of Python: bytecode for another interpreter
# would make every command compile from source) the zipapp: it starts in milliseconds.
"$py" "$dir/build_zipapp.py" --if-stale >/dev/null 2>&1 || true
[ -f "$pyz" ] && app="$pyz"
if ! err="$("$py" "$app" tmux-setup 2>&1)"; then
  tmux display-message "opensessions: $err"
fi
exit 0
