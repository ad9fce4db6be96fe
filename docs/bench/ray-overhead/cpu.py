"""CPU seconds per process (by name) over a 15 s window while `copl bench train --modes ray-1` trains.

    .venv/bin/python docs/bench/ray-overhead/cpu.py [SECONDS_BEFORE_THE_WINDOW]   # from the repository root
"""
import os, subprocess, sys, time
HZ = os.sysconf("SC_CLK_TCK")
def snap():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit(): continue
        try:
            stat = open(f"/proc/{pid}/stat").read()
            name = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")[:70] or stat.split()[1]
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        out[pid] = (name.replace(os.getcwd() + "/", ""), (int(f[11]) + int(f[12])) / HZ)
    return out
p = subprocess.Popen([".venv/bin/copl", "bench", "train", "--epochs", "12", "--modes", "ray-1", "--out", "runs/bench-ray-overhead"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 45)
a = snap(); t0 = time.time(); time.sleep(15); b = snap(); dt = time.time() - t0
rows = sorted(((b[k][1] - a[k][1], b[k][0]) for k in b if k in a), reverse=True)
tot = sum(r[0] for r in rows)
print(f"window {dt:.1f} s, total CPU {tot:.1f} s")
for cpu, name in rows[:15]:
    print(f"{cpu:6.2f} s {cpu/dt:6.1%}  {name}")
p.wait()
