"""Summarise diag_exit_hooks' files: per close and worker, seconds from the close's start to each event."""
import glob
import json
import os
import sys

d = sys.argv[1]
children = {}
for fn in glob.glob(os.path.join(d, "child_*.jsonl")):
    pid = int(os.path.basename(fn)[6:-6])
    children[pid] = [json.loads(line) for line in open(fn)]
for fn in sorted(glob.glob(os.path.join(d, "parent_close_*.json"))):
    r = json.load(open(fn))
    t0 = r["close_start"]
    print(f"== {os.path.basename(fn)}: close {r['close_end'] - t0:.3f} s, seconds "
          + ", ".join(f"{k} {v:.3f}" for k, v in r["seconds"].items()))
    print("   meminfo at close:", r["meminfo_start"])
    print(f"   {'worker':22s} fast  results last_result   stop  serve_ret atexit1 atexit_last os_exit  exit")
    for pid, name in sorted(r["pids"].items(), key=lambda x: x[1]):
        ev = children.get(int(pid), [])
        first = {}
        for e in ev:
            first.setdefault(e["event"], e["t"])
        last_result = max((e["t"] for e in ev if e["event"] == "result"), default=float("nan"))
        nres = sum(e["event"] == "result" for e in ev)
        fast = next((e.get("fast") for e in ev if e["event"] == "serve_entry"), None)

        def rel(k):
            return f"{first[k] - t0:8.3f}" if k in first else "       -"
        ex = r["exits"].get(name)
        print(f"   {name:22s} {str(fast):5s} {nres:6d} {last_result - t0:10.3f} {rel('stop')} {rel('serve_return')} "
              f"{rel('atexit_first')} {rel('atexit_last')} {rel('os_exit')} "
              f"{(ex - t0) if ex else float('nan'):8.3f}")
    slow = [s for s in r["samples"] if s["t"] - t0 > 0.3]
    for s in slow[:: max(1, len(slow) // 12)]:
        print(f"   t={s['t'] - t0:6.2f} {s['meminfo']}")
        for name, p in s["procs"].items():
            print(f"      {name}: {p.get('state')} {p.get('wchan')} {p.get('stack', '')} "
                  f"threads={p.get('threads')}")
