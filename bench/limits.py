#!/usr/bin/env python3
"""What the unit's LimitNOFILE=, MemoryMax= and TasksMax= must hold:
peak open descriptors, threads and RSS of `depot run` under the heaviest
load a producer can make within the default limits.

  python3 bench/limits.py [--binary target/release/depot]

Load: 8 producers (workers.concurrency) drop at once a Theia deposit whose
pivots fill limits.max_metadata_bytes (16 MiB, many observations: parsed,
not just read), with 4,000 small files in one dataset; then one producer
drops 2,000 tiny files at once. Sampled every 20 ms from /proc.
"""
import argparse, io, json, os, random, shutil, subprocess, sys, tempfile, threading, time, zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon import Resp  # noqa: E402


def deposit(p, obs):
    files = {f"f{i:05}.txt": b"x" * 100 for i in range(4000)}
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in files.items():
            z.writestr(n, b)
    names = list(files)
    observations = [{"observationId": f"{p}_OBS_{i}", "result": {"dataFile": {"name": names[i % len(names)]}}}
                    for i in range(obs)]
    pivot = json.dumps({"producer": {"producerId": p},
                        "datasets": [{"datasetId": f"{p}_DAT_1", "observations": observations}]}).encode()
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as z:
        for lang in ("en", "fr"):
            z.writestr(f"{p}_{lang}.json", pivot)
        z.writestr(f"{p}_DAT_1.zip", inner.getvalue())
    return outer.getvalue(), len(pivot)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="")
    a = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = a.binary or os.path.join(repo, "target/release/depot")
    if not a.binary:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=repo, check=True)
    work = tempfile.mkdtemp(prefix="depot-limits-")
    port = random.randint(20000, 40000)
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL)
    daemon = None
    peak = {"fds": 0, "threads": 0, "rss": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak["fds"] = max(peak["fds"], len(os.listdir(f"/proc/{daemon.pid}/fd")))
                with open(f"/proc/{daemon.pid}/status") as f:
                    for l in f:
                        if l.startswith("Threads:"):
                            peak["threads"] = max(peak["threads"], int(l.split()[1]))
                        if l.startswith("VmHWM:"):
                            peak["rss"] = max(peak["rss"], int(l.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(0.02)

    try:
        time.sleep(0.5)
        for d in ("drop", "publish"):
            os.makedirs(os.path.join(work, d))
        cfg = os.path.join(work, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'drop_root = "drop"\npublish_root = "publish"\n[redis]\nurl = "redis://127.0.0.1:{port}"\n'
                    '[watch]\nsettle_ms = 200\n')
        producers = [f"LIM{chr(65 + i)}" for i in range(8)]
        # Two pivots of ~7.9 MiB each: together just under 16 MiB.
        obs = 75_000
        deps = {}
        for p in producers:
            deps[p], size = deposit(p, obs)
        print(f"each deposit: 2 pivots of {size / 2**20:.1f} MiB ({obs} observations), 4,000 files")
        daemon = subprocess.Popen([binary, "run", "--config", cfg], stderr=open(os.path.join(work, "daemon.log"), "w"),
                                  env=dict(os.environ, RUST_LOG="warn"))
        time.sleep(1.0)
        t = threading.Thread(target=sample)
        t.start()
        r = Resp(port)
        for p in producers:
            d = os.path.join(work, "drop", p, "new")
            os.makedirs(d)
            with open(os.path.join(d, f".{p}.tmp"), "wb") as f:
                f.write(deps[p])
        for p in producers:
            d = os.path.join(work, "drop", p, "new")
            os.rename(os.path.join(d, f".{p}.tmp"), os.path.join(d, f"{p}_THEIA.zip"))
        deadline = time.time() + 600
        while time.time() < deadline:
            states = [r.cmd("HGET", f"depot:producer:{p}", "last_state") for p in producers]
            if all(s in ("SUCCESS", "FAILURE") for s in states):
                break
            time.sleep(0.2)
        print(f"8 big deposits: {states}")
        flood = os.path.join(work, "drop", "FLOD", "new")
        os.makedirs(flood)
        for i in range(2000):
            with open(os.path.join(flood, f"f{i:05}.zip"), "wb") as f:
                f.write(b"tiny")
        while os.listdir(flood) and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        stop.set()
        t.join()
        print(f"peak: {peak['fds']} open descriptors, {peak['threads']} threads, RSS {peak['rss']} MiB")
    finally:
        stop.set()
        if daemon:
            daemon.terminate()
            daemon.wait(60)
        redis.terminate()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
