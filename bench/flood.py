#!/usr/bin/env python3
"""Benchmark of issue 12: 100,000 tiny files dropped into one producer's new/.

  python3 bench/flood.py [--files 100000] [--binary target/release/depot] [--all]

Reports the claim rate (files taken out of new/ per second, from the first
drop until new/ is empty), how many deposits reached a terminal state in
that time, and the daemon's peak RSS (VmHWM). With --all it also waits for
every deposit to end (they are one producer's, so they run one at a time).
The files are a few bytes each and not zips: each ends NOT_A_ZIP, so the
pipeline's per-deposit cost is the smallest there is and the claim path is
what is measured. fsync on, settle_ms 200. Needs redis-server; builds the
release binary unless --binary is given.
"""
import argparse, os, random, shutil, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon import Resp  # noqa: E402


def vmhwm(pid):
    with open(f"/proc/{pid}/status") as f:
        return int([l for l in f if l.startswith("VmHWM")][0].split()[1]) / 1024


def terminal_count(r):
    ids = r.cmd("ZRANGE", "depot:deposits", 0, -1) or []
    n = 0
    for i in range(0, len(ids), 500):
        for s in r.cmd("EVAL", "local o={} for i,k in ipairs(KEYS) do o[i]=redis.call('HGET',k,'state') or '' end return o",
                       len(ids[i:i + 500]), *[f"depot:deposit:{x}" for x in ids[i:i + 500]]) or []:
            n += s in ("SUCCESS", "FAILURE")
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--binary", default="")
    ap.add_argument("--all", action="store_true", help="also wait until every deposit ended")
    ap.add_argument("--others", type=int, default=20,
                    help="deposits another producer drops right after the flood starts: how long until they are "
                         "all SUCCESS tells whether one producer's flood slows the others")
    a = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = a.binary or os.path.join(repo, "target/release/depot")
    if not a.binary:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=repo, check=True)
    work = tempfile.mkdtemp(prefix="depot-flood-")
    port = random.randint(20000, 40000)
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    daemon = None
    try:
        time.sleep(0.5)
        cfg = os.path.join(work, "config.toml")
        for d in ("drop/FLOD/new", "drop/OTHR/new", "publish", "stage"):
            os.makedirs(os.path.join(work, d))
        with open(cfg, "w") as f:
            f.write(f'drop_root = "drop"\npublish_root = "publish"\n[redis]\nurl = "redis://127.0.0.1:{port}"\n'
                    '[watch]\nsettle_ms = 200\n')
        # Made beside new/ first, then renamed in as fast as Python can:
        # the flood is the renames, as an rsync of many files would do.
        stage = os.path.join(work, "stage")
        for i in range(a.files):
            with open(os.path.join(stage, f"f{i:06}.zip"), "wb") as f:
                f.write(b"tiny %d" % i)
        daemon = subprocess.Popen([binary, "run", "--config", cfg], stderr=open(os.path.join(work, "daemon.log"), "w"),
                                  env=dict(os.environ, RUST_LOG="warn"))
        time.sleep(1.0)
        r = Resp(port)
        new = os.path.join(work, "drop/FLOD/new")
        t0 = time.time()
        for i in range(a.files):
            os.rename(os.path.join(stage, f"f{i:06}.zip"), os.path.join(new, f"f{i:06}.zip"))
        t_dropped = time.time()
        from daemon import theia, drop
        for i in range(a.others):
            drop(work, "OTHR", f"OTHR_{i:03}.zip", theia("OTHR", "o", 2000))
        t_others = time.time()
        others_done = None
        peak = 0.0
        while True:
            if others_done is None and a.others:
                states = [r.cmd("HGET", f"depot:deposit:{x}", "state")
                          for x in (r.cmd("ZRANGE", "depot:deposits", 0, -1) or []) if "-OTHR-" in x]
                if len(states) == a.others and all(s == "SUCCESS" for s in states):
                    others_done = time.time() - t_others
            left = len(os.listdir(new))
            peak = max(peak, vmhwm(daemon.pid))
            if left == 0:
                break
            if time.time() - t0 > 1800:
                raise SystemExit(f"timed out: {left} files still in new/")
            time.sleep(0.5)
        t1 = time.time()
        ended = terminal_count(r)
        print(f"{a.files} files dropped in {t_dropped - t0:.1f} s; all claimed after {t1 - t0:.1f} s "
              f"= {a.files / (t1 - t0):.0f} claims/s (settle 200 ms included); {ended} ended by then")
        print(f"daemon peak RSS (VmHWM) while claiming: {peak:.1f} MiB")
        if a.others:
            print(f"{a.others} deposits of another producer dropped during the flood: all SUCCESS after "
                  + (f"{others_done:.1f} s" if others_done is not None else "more than the flood's claiming"))
        if a.all:
            while terminal_count(r) < a.files:
                if time.time() - t0 > 3600:
                    raise SystemExit("timed out waiting for every deposit to end")
                time.sleep(5)
            t2 = time.time()
            print(f"all {a.files} ended after {t2 - t0:.1f} s = {a.files / (t2 - t0):.0f} deposits/s (one producer, "
                  f"one at a time); peak RSS {vmhwm(daemon.pid):.1f} MiB")
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait(60)
        redis.terminate()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
