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

static int pass(int fd, const char *name) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    return real(fd);
}

int fsync(int fd) {
    if (mode() == 0 || shared_point(fd)) return 0;
    return pass(fd, "fsync");
}

int fdatasync(int fd) {
    if (mode() == 0 || shared_point(fd)) return 0;
    return pass(fd, "fdatasync");
}
