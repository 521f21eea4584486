import json, os, sys
home, port = sys.argv[1], sys.argv[2]
for d in ("work/claude", "work/codex", "work/opencode", ".claude", ".codex", ".config/opencode"):
    os.makedirs(os.path.join(home, d), exist_ok=True)
key = "sk-ant-fake-not-a-real-key"
json.dump({"hasCompletedOnboarding": True, "lastOnboardingVersion": "2.1.330", "theme": "dark",
           "customApiKeyResponses": {"approved": [key[-20:]], "rejected": []},
           "projects": {home + "/work/claude": {"hasTrustDialogAccepted": True}}},
          open(home + "/.claude.json", "w"), indent=2)
open(home + "/.codex/config.toml", "w").write("""model = "fake-model"
model_provider = "fake"
check_for_update_on_startup = false
approval_policy = "on-request"
sandbox_mode = "workspace-write"

[model_providers.fake]
name = "Fake"
base_url = "http://127.0.0.1:%s/v1"
env_key = "FAKE_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[projects.%s]
trust_level = "trusted"
""" % (port, json.dumps(home + "/work/codex")))
json.dump({"$schema": "https://opencode.ai/config.json",
           "provider": {"fake": {"npm": "@ai-sdk/openai-compatible", "name": "Fake",
                                 "options": {"baseURL": "http://127.0.0.1:%s/v1" % port, "apiKey": "sk-fake-not-a-real-key"},
                                 "models": {"fake-model": {"name": "Fake Model", "tool_call": True}}}},
           "model": "fake/fake-model", "small_model": "fake/fake-model", "autoupdate": False, "share": "disabled"},
          open(home + "/.config/opencode/opencode.json", "w"), indent=2)
