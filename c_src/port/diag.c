/*
 * Diagnostics off the loop thread (see diag.h). The mutex guards the
 * queue, its length, the dropped count and `writing`; the writer thread
 * takes the whole queue at once and writes it with the mutex released.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "diag.h"
#include "port.h"

#define GN_DIAG_MAX (64u << 10)

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER, idle = PTHREAD_COND_INITIALIZER;
static char queue[GN_DIAG_MAX];
static size_t queued;
static unsigned long dropped;
static int started, writing;

static void write_out(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(2, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* stderr closed: nothing to tell anyone */
        p += w;
        n -= (size_t)w;
    }
}

static void *writer(void *arg)
{
    static char batch[GN_DIAG_MAX];
    (void)arg;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!queued && !dropped)
            pthread_cond_wait(&wake, &mu);
        size_t n = queued;
        unsigned long lost = dropped;
        memcpy(batch, queue, n);
        queued = 0;
        dropped = 0;
        writing = 1;
        pthread_mutex_unlock(&mu);
        if (lost) {
            char note[100];
            int k =
                snprintf(note, sizeof note,
                         "gen_native_port: %lu diagnostics dropped (stderr not drained)\n", lost);
            write_out(note, (size_t)k);
        }
        write_out(batch, n);
        pthread_mutex_lock(&mu);
        writing = 0;
        pthread_cond_broadcast(&idle);
    }
    return NULL;
}

void gn_diag(const char *fmt, ...)
{
    if (!gn_port_stderr)
        return;
    char line[1024];
    int n = snprintf(line, sizeof line, "gen_native_port: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = strlen(line);
    line[len++] = '\n';
    pthread_mutex_lock(&mu);
    if (!started) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        started = pthread_create(&t, &attr, writer, NULL) == 0 ? 1 : -1;
        pthread_attr_destroy(&attr);
    }
    if (started < 0 || queued + len > sizeof queue) {
        dropped++;
    } else {
        memcpy(queue + queued, line, len);
        queued += len;
    }
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&mu);
}

void gn_diag_flush(int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&mu);
    while (started > 0 && (queued || writing))
        if (pthread_cond_timedwait(&idle, &mu, &until) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&mu);
}
