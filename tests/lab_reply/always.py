import sys
sys.argv_agents = sys.argv[1:]; sys.argv = [sys.argv[0], "none"]
exec(open("/tmp/reply-lab/mustshow.py").read().split("agents = sys.argv[1:]")[0])
for a in sys.argv_agents:
    step(a, "", ["--text", "please FAKE_WRITE"], lambda t: t["status"] == "waiting")
    step(a, "", ["--approve-always"], lambda t: t["status"] == "done")
