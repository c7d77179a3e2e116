/*
 * An LD_PRELOAD shim for the port program's tests (port_fsync_test.exs
 * compiles it): fdatasync on a file in a directory holding
 *
 *   FSYNC_HOLD   blocks until that file is removed (FSYNC_HELD is created
 *                once it blocks)
 *   FSYNC_FAIL   fails with EIO, as a disk that lost the pages would
 *
 * and creates FSYNC_DONE in that directory after each real fdatasync; and
 * writev (the journal's commits) on a file in a directory holding
 * WRITE_FAIL fails with ENOSPC. Without those files they are the real
 * calls (a pipe has no directory: libuv's writes to the VM go through).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
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

/* The directory of the file open as `fd` into dir; 0, or -1 (a pipe). */
static int dir_of(int fd, char dir[PATH_MAX])
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, dir, PATH_MAX - 1);
    if (n <= 0)
        return -1;
    dir[n] = 0;
    char *slash = strrchr(dir, '/');
    if (!slash)
        return -1;
    *slash = 0;
    return 0;
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
    static ssize_t (*real)(int, const struct iovec *, int);
    if (!real)
        real = (ssize_t(*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    char dir[PATH_MAX];
    if (dir_of(fd, dir) == 0 && exists(dir, "WRITE_FAIL")) {
        errno = ENOSPC;
        return -1;
    }
    return real(fd, iov, n);
}

int fdatasync(int fd)
{
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    char dir[PATH_MAX];
    if (dir_of(fd, dir) < 0)
        return real(fd);
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
