# source me: environment for the lab agents (throwaway HOME, fake model on loopback)
LAB=/tmp/reply-lab
export HOME=$LAB/home
export PATH=$LAB/npm/node_modules/.bin:/usr/local/bin:/usr/bin:/bin
unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy TMUX TMUX_PANE
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 DISABLE_TELEMETRY=1 DISABLE_ERROR_REPORTING=1
export ANTHROPIC_API_KEY=sk-ant-fake-not-a-real-key FAKE_KEY=sk-fake-not-a-real-key OPENAI_API_KEY=sk-fake-not-a-real-key
export OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_MODELS_FETCH=1 OPENCODE_DISABLE_LSP_DOWNLOAD=1
export FAKE_LLM_PORT=${FAKE_LLM_PORT:-18391}
export ANTHROPIC_BASE_URL=http://127.0.0.1:$FAKE_LLM_PORT OPENAI_BASE_URL=http://127.0.0.1:$FAKE_LLM_PORT/v1
export LANG=C.UTF-8 TERM=xterm-256color
TM="tmux -L reply-lab -f /dev/null"
