#!/usr/bin/env python3
"""The issue's throughput baseline: a plain single-process Python ingester.

  python3 bench/baseline.py DROP_ROOT PUBLISH_ROOT COUNT

It polls every producer's new/ folder, unpacks each Theia deposit with
zipfile (the pivot at the release root, each dataset zip one level down),
fsyncs every file it wrote and the release folders, renames the release
into releases/, flips the `current` symlink with a rename, fsyncs the
producer folder, and moves the deposit to previous/. No queue, no status,
no MD5 or name checks. It exits after COUNT deposits; bench/daemon.py runs
it on the same deposits as the daemon, in the same run, for the ratio.
"""
import io, os, sys, time, zipfile


def fsync_path(p):
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def ingest(drop, publish, p, name, seq):
    src = os.path.join(drop, p, "new", name)
    rel_id = "%08d-%s" % (seq, p)
    stage = os.path.join(publish, ".staging", rel_id)
    os.makedirs(stage)
    dirs = [stage]
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith(".zip"):
                d = os.path.join(stage, info.filename[:-4])
                os.mkdir(d)
                dirs.append(d)
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    for i2 in inner.infolist():
                        write(os.path.join(d, i2.filename), inner.read(i2))
            else:
                write(os.path.join(stage, info.filename), data)
    for d in dirs:
        fsync_path(d)
    releases = os.path.join(publish, p, "releases")
    os.makedirs(releases, exist_ok=True)
    os.rename(stage, os.path.join(releases, rel_id))
    fsync_path(releases)
    tmp = os.path.join(publish, p, ".current.tmp")
    os.symlink(os.path.join("releases", rel_id), tmp)
    os.rename(tmp, os.path.join(publish, p, "current"))
    fsync_path(os.path.join(publish, p))
    prev = os.path.join(drop, p, "previous")
    os.makedirs(prev, exist_ok=True)
    for old in os.listdir(prev):
        os.unlink(os.path.join(prev, old))
    os.rename(src, os.path.join(prev, name))


def main():
    drop, publish, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(os.path.join(publish, ".staging"), exist_ok=True)
    done = 0
    while done < count:
        found = False
        for p in sorted(os.listdir(drop)):
            new = os.path.join(drop, p, "new")
            if not os.path.isdir(new):
                continue
            for name in sorted(os.listdir(new)):
                if name.startswith(".") or not name.endswith(".zip"):
                    continue
                found = True
                done += 1
                ingest(drop, publish, p, name, done)
        if not found:
            time.sleep(0.01)


if __name__ == "__main__":
    main()
