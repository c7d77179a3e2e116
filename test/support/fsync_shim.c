/*
 * An LD_PRELOAD shim for the port program's tests (port_fsync_test.exs
 * compiles it): fdatasync on a file in a directory holding
 *
 *   FSYNC_HOLD   blocks until that file is removed (FSYNC_HELD is created
 *                once it blocks)
 *   FSYNC_FAIL   fails with EIO, as a disk that lost the pages would
 *
 * and creates FSYNC_DONE in that directory after each real fdatasync.
 * Without those files it is the real fdatasync.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int exists(const char *dir, const char *name)
{
    char p[PATH_MAX + 32];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

static void touch(const char *dir, const char *name)
{
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    char link[64], dir[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, dir, sizeof dir - 1);
    char *slash = NULL;
    if (n > 0) {
        dir[n] = 0;
        slash = strrchr(dir, '/');
    }
    if (!slash)
        return real(fd);
    *slash = 0;
    if (exists(dir, "FSYNC_HOLD")) {
        touch(dir, "FSYNC_HELD");
        while (exists(dir, "FSYNC_HOLD"))
            usleep(1000);
    }
    if (exists(dir, "FSYNC_FAIL")) {
        errno = EIO;
        return -1;
    }
    int rc = real(fd);
    touch(dir, "FSYNC_DONE");
    return rc;
}
