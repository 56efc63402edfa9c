/* For bench/daemon.py --ceiling only, never for a real deployment.
 *
 * LD_PRELOAD'ed into the daemon to measure what fsync costs it, and so the
 * most that batching fsyncs could ever win:
 *   NOFSYNC=all     every fsync/fdatasync returns at once (no durability);
 *   NOFSYNC=shared  only those a group commit of one producer's deposits
 *                   would share: the folders releases/ and previous/, the
 *                   producer's publish folder (the one holding `current`)
 *                   and the spool record's outcome (fdatasync of a .json).
 *                   Release files and staging folders are still synced.
 * In shared mode each call costs a readlink, an fstat and perhaps a
 * faccessat more (a few microseconds): the ceiling it gives is a little low.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int mode(void) {
    const char *m = getenv("NOFSYNC");
    if (!m || !strcmp(m, "all")) return 0;
    return 1;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Would a per-producer group commit sync this once per batch? */
static int shared_point(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    struct stat st;
    if (fstat(fd, &st) != 0) return 0;
    if (S_ISDIR(st.st_mode)) {
        if (ends_with(path, "/releases") || ends_with(path, "/previous")) return 1;
        return faccessat(fd, "current", F_OK, AT_SYMLINK_NOFOLLOW) == 0;
    }
    return strstr(path, "/.depot/spool/") && ends_with(path, ".json");
}

/* libc's own, looked up once: the calls still made are part of what is
 * measured, and a dlsym per call would add to them. */
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

__attribute__((constructor)) static void init(void) {
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
}

int fsync(int fd) {
    if (mode() == 0 || shared_point(fd)) return 0;
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if (mode() == 0 || shared_point(fd)) return 0;
    return real_fdatasync(fd);
}
