#!/usr/bin/env python3
"""Benchmark of issue 3: `depot run` against a private redis-server.

  python3 bench/daemon.py [--deposits 2000] [--producers 20] [--drops 200]

(1) drop-to-SUCCESS latency of a 100 KB deposit beyond the settle time
    (median and p99 over --drops sequential drops),
(2) --deposits small deposits over --producers producers dropped at once:
    deposits per second until all are SUCCESS (fsync on),
(3) peak RSS of the daemon (VmHWM) over the whole run.
Needs redis-server; builds the release binary.
"""
import argparse, io, os, resource, random, shutil, socket, statistics, subprocess, sys, tempfile, time, zipfile


class Resp:
    """Just enough RESP to XREAD the events stream."""
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def cmd(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return self.read()

    def read(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t in (b"+", b"-"):
            return rest.decode()
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode()
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(line)


def theia(p, tag, size):
    """A Theia deposit: pivot + one stored dataset zip with `size` bytes of data."""
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_STORED) as z:
        z.writestr("obs1.bin", random.randbytes(size))
    pivot = ('{"producer":{"producerId":"%s"},"datasets":[{"datasetId":"%s_DAT_1","observations":'
             '[{"observationId":"%s_OBS_1","result":{"dataFile":{"name":"obs1.bin"}}}]}]}' % (p, p, p))
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{p}_en.json", pivot)
        z.writestr(f"{p}_DAT_1.zip", inner.getvalue())
    return outer.getvalue()


def drop(root, p, name, data):
    d = os.path.join(root, "drop", p, "new")
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, "." + name + ".tmp1")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(d, name))


def wait_success(r, last_id, want, timeout=600):
    """Read events until `want` SUCCESS/FAILURE events; returns (last_id, [(id, state, t)])."""
    got = []
    deadline = time.time() + timeout
    while len(got) < want:
        if time.time() > deadline:
            raise SystemExit(f"timed out: {len(got)}/{want}")
        res = r.cmd("XREAD", "BLOCK", 1000, "COUNT", 1000, "STREAMS", "depot:events", last_id)
        if not res:
            continue
        for _, entries in res:
            for eid, fields in entries:
                last_id = eid
                kv = dict(zip(fields[::2], fields[1::2]))
                if kv.get("state") in ("SUCCESS", "FAILURE"):
                    # When Redis recorded it (the entry id is its clock, in
                    # ms), not when we read it: reading waits for the drops.
                    got.append((kv["id"], kv["state"], int(eid.split("-")[0]) / 1000))
    return last_id, got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deposits", type=int, default=2000)
    ap.add_argument("--producers", type=int, default=20)
    ap.add_argument("--drops", type=int, default=200)
    ap.add_argument("--settle-ms", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=0, help="workers.concurrency (0: the default)")
    ap.add_argument("--binary", default="", help="a depot binary to run instead of building target/release/depot")
    ap.add_argument("--distinct", action="store_true",
                    help="every deposit with data of its own (by default a producer's deposits are the same bytes, "
                         "so unchanged files are linked to the current release)")
    ap.add_argument("--keep", action="store_true",
                    help="leave the work folder (delete it later): on ext4 without a journal, deleting its ~15,000 "
                         "inodes slows every inode creation in the same groups for 1-6 minutes, i.e. the next run")
    ap.add_argument("--no-baseline", action="store_true", help="skip bench/baseline.py (the issue's Python ingester)")
    ap.add_argument("--ceiling", choices=["all", "shared"], default=None,
                    help="not a valid configuration, a measurement: run the daemon with bench/nofsync.c preloaded, "
                         "so that every fsync (all) or those a group commit of a producer's deposits would share "
                         "(shared: releases/, previous/, the producer's publish folder, the outcome record) return at "
                         "once; the ceiling of what batching fsyncs could win")
    ap.add_argument("--config-extra", default="", help="TOML appended to the config (e.g. '[publish]\\nfsync = false')")
    a = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = a.binary or os.path.join(repo, "target/release/depot")
    if not a.binary:
        subprocess.run(["cargo", "build", "--release", "-q"], cwd=repo, check=True)
    work = tempfile.mkdtemp(prefix="depot-bench-")
    port = random.randint(20000, 40000)
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", work], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    monitor = None
    if os.environ.get("BENCH_MONITOR"):
        # Every Redis command with its time, for finding stalls.
        monitor = subprocess.Popen(["redis-cli", "-p", str(port), "monitor"], stdout=open(os.environ["BENCH_MONITOR"], "w"))
    cfg = os.path.join(work, "config.toml")
    for root in ("drop", "publish"):
        os.makedirs(os.path.join(work, root))
    with open(cfg, "w") as f:
        f.write(f'drop_root = "drop"\npublish_root = "publish"\n[redis]\nurl = "redis://127.0.0.1:{port}"\n'
                f'[watch]\nsettle_ms = {a.settle_ms}\n[producers]\npattern = "^[A-Z]{{4}}$"\n'
                + (f'[workers]\nconcurrency = {a.concurrency}\n' if a.concurrency else '')
                + a.config_extra.replace("\\n", "\n") + "\n")
    env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "warn"))
    if a.ceiling:
        shim = os.path.join(work, "nofsync.so")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", shim, os.path.join(repo, "bench", "nofsync.c"), "-ldl"],
                       check=True)
        env.update(LD_PRELOAD=shim, NOFSYNC=a.ceiling)
        print(f"    CEILING RUN: the daemon's fsyncs ({a.ceiling}) are no-ops; not a durable configuration")
    daemon = subprocess.Popen([binary, "run", "--config", cfg],
                              stderr=open(os.path.join(work, "daemon.log"), "w"), env=env)
    try:
        time.sleep(1.0)
        r = Resp(port)
        last = "0-0"
        # (1) latency
        lat = []
        data = theia("LATX", "x", 100_000)
        for i in range(a.drops):
            t0 = time.time()
            drop(work, "LATX", f"LATX_{i:04}.zip", data)
            last, got = wait_success(r, last, 1)
            lat.append((got[0][2] - t0) * 1000 - a.settle_ms)
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0.0
        if lat:
            print(f"(1) drop-to-SUCCESS beyond settle_ms={a.settle_ms}: median {statistics.median(lat):.1f} ms, p99 {p99:.1f} ms over {a.drops} drops")
        # (2) throughput
        names = ["%s%s" % (chr(65 + i // 26), chr(65 + i % 26)) for i in range(a.producers)]
        producers = [f"TP{n}" for n in names]
        per = a.deposits // len(producers)
        if a.distinct:
            deposits = {(p, i): theia(p, "t", 2000) for i in range(per) for p in producers}
        else:
            same = {p: theia(p, "t", 2000) for p in producers}
            deposits = {(p, i): same[p] for i in range(per) for p in producers}
        t0 = time.time()
        for i in range(per):
            for p in producers:
                drop(work, p, f"{p}_{i:05}.zip", deposits[(p, i)])
        t_dropped = time.time()
        last, got = wait_success(r, last, per * len(producers))
        t1 = got[-1][2]
        ok = sum(1 for g in got if g[1] == "SUCCESS")
        n = per * len(producers)
        print(f"(2) {n} deposits over {len(producers)} producers (fsync on): {ok} SUCCESS in {t1 - t0:.2f} s "
              f"= {n / (t1 - t0):.0f} deposits/s (dropping took {t_dropped - t0:.2f} s; settle {a.settle_ms} ms included; "
              f"first SUCCESS after {got[0][2] - t0:.2f} s)")
        # The baseline waits no settle time: the daemon's rate without the
        # settle_ms it is configured to wait (for comparison, not the figure).
        print(f"    less the settle time: {n / (t1 - t0 - a.settle_ms / 1000):.0f} deposits/s")
        if not a.no_baseline:
            # The same deposits through bench/baseline.py, in this run, for the ratio.
            base = os.path.join(work, "baseline")
            os.makedirs(os.path.join(base, "publish"))
            for i in range(per):
                for p in producers:
                    drop(base, p, f"{p}_{i:05}.zip", deposits[(p, i)])
            b0 = time.time()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, os.path.join(repo, "bench", "baseline.py"), os.path.join(base, "drop"),
                            os.path.join(base, "publish"), str(n)], check=True)
            rate = n / (time.time() - b0)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            print(f"    baseline (bench/baseline.py, same deposits, fsync on): {rate:.0f} deposits/s; "
                  f"depot/baseline = {n / (t1 - t0) / rate:.2f}x")
            bu, bs = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
            print(f"    baseline CPU: user {bu:.2f} s, system {bs:.2f} s = {(bu + bs) / n * 1000:.2f} ms per deposit")
        for who, pid in (("daemon", daemon.pid), ("redis-server", redis.pid)):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                tck = os.sysconf("SC_CLK_TCK")
                user, system = int(fields[11]) / tck, int(fields[12]) / tck
            print(f"    {who} CPU over the whole run: user {user:.2f} s, system {system:.2f} s"
                  + (f" = {(user + system) / n * 1000:.2f} ms per deposit (throughput run only)" if a.drops == 0 else ""))
        with open(f"/proc/{daemon.pid}/status") as f:
            hwm = [l for l in f if l.startswith("VmHWM")][0].split()[1]
        print(f"(3) daemon peak RSS (VmHWM): {int(hwm) / 1024:.1f} MiB")
    finally:
        daemon.terminate()
        daemon.wait(30)
        if monitor:
            monitor.terminate()
            monitor.wait()
        redis.terminate()
        redis.wait()
        if os.environ.get("BENCH_KEEP_LOG"):
            shutil.copy(os.path.join(work, "daemon.log"), os.environ["BENCH_KEEP_LOG"])
        if a.keep:
            print(f"    work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
