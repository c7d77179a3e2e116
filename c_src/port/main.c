/*
 * gen_native_port: the port program's event loop (libuv).
 *
 *   stdin   frames from the VM -> gn_port_feed
 *   idle    long work in slices while there is any -> gn_port_step
 *   timers  the TTL sweep (every --sweep ms, 1000 by default) and, with
 *           sync {interval, ms}, the fsync
 *   stdout  replies, after the journal has taken their writes
 *
 * See PROTOCOL.md for the frames and port.c for what they do.
 */
#include <ei.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "port.h"

static uv_loop_t *loop;
static uv_pipe_t in_pipe, out_pipe;
static uv_idle_t stepper, spinner;
static uint64_t last_read; /* uv_hrtime() of the last request bytes */
static uv_timer_t sweeper, syncer;
static gn_port *port;
static int inflight; /* thread-pool work under way */
static int closing;

static void finish(int status);

typedef struct {
    uv_write_t req;
    gn_buf data;
} out_write;

static void on_written(uv_write_t *req, int status)
{
    out_write *w = (out_write *)req;
    gn_buf_free(&w->data);
    free(w);
    if (status < 0 && !closing) {
        fprintf(stderr, "gen_native_port: writing to the VM: %s\n", uv_strerror(status));
        finish(1);
    }
}

/* Journal first, then the replies that acknowledge it. */
static void flush(void)
{
    if (gn_port_commit(port) < 0) {
        fprintf(stderr, "gen_native_port: cannot write the journal: exiting unacknowledged\n");
        exit(4);
    }
    gn_buf *out = gn_port_output(port);
    if (out->len == 0)
        return;
    uv_buf_t b = uv_buf_init((char *)out->data, (unsigned)out->len);
    int n = uv_try_write((uv_stream_t *)&out_pipe, &b, 1);
    size_t done = n > 0 ? (size_t)n : 0;
    if (done < out->len) {
        out_write *w = malloc(sizeof *w);
        if (!w)
            abort();
        memset(&w->data, 0, sizeof w->data);
        gn_buf_put(&w->data, out->data + done, out->len - done);
        uv_buf_t rest = uv_buf_init((char *)w->data.data, (unsigned)w->data.len);
        int rc = uv_write(&w->req, (uv_stream_t *)&out_pipe, &rest, 1, on_written);
        if (rc < 0) {
            fprintf(stderr, "gen_native_port: writing to the VM: %s\n", uv_strerror(rc));
            exit(1);
        }
    }
    out->len = 0;
    if (out->cap > (4u << 20)) /* don't hold on to a big reply's room */
        gn_buf_free(out);
}

static void on_step(uv_idle_t *h)
{
    int more = gn_port_step(port);
    flush(); /* the commit may start a compaction */
    if (!more && !gn_port_busy(port))
        uv_idle_stop(h);
}

static void kick(void)
{
    if (!closing)
        uv_idle_start(&stepper, on_step);
}

/* After a request, the loop polls without blocking for a moment before it
 * sleeps: the next request of a caller waiting on its reply usually comes
 * within microseconds, and a CPU that went idle (on a VM, a halted vCPU)
 * takes tens of microseconds to wake. */
#define GN_SPIN_NS 200000

static void on_spin(uv_idle_t *h)
{
    if (uv_hrtime() - last_read > GN_SPIN_NS)
        uv_idle_stop(h);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    static char chunk[256 << 10];
    *buf = uv_buf_init(chunk, sizeof chunk);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)s;
    if (n > 0) {
        gn_port_feed(port, (const unsigned char *)buf->base, (size_t)n);
        flush();
        kick();
        last_read = uv_hrtime();
        if (!closing)
            uv_idle_start(&spinner, on_spin);
    } else if (n == UV_EOF) {
        if (!gn_port_at_frame_boundary(port)) {
            fprintf(stderr, "gen_native_port: stdin closed inside a frame\n");
            finish(3);
        }
        finish(0);
    } else if (n < 0) {
        fprintf(stderr, "gen_native_port: reading from the VM: %s\n", uv_strerror((int)n));
        finish(1);
    }
}

static void on_sweep(uv_timer_t *t)
{
    (void)t;
    gn_port_sweep(port);
    kick();
}

static void on_synced(uv_fs_t *req)
{
    uv_fs_req_cleanup(req);
    free(req);
    gn_port_sync_done(port);
    inflight--;
    if (closing && !inflight)
        finish(0);
}

static void on_sync_timer(uv_timer_t *t)
{
    (void)t;
    int fd = gn_port_sync_begin(port);
    if (fd < 0)
        return;
    uv_fs_t *req = malloc(sizeof *req);
    if (!req)
        abort();
    inflight++;
    uv_fs_fdatasync(loop, req, fd, on_synced);
}

typedef struct {
    uv_work_t req;
    void (*work)(void *);
    void (*after)(gn_port *, void *);
    void *arg;
} offloaded;

static void offload_work(uv_work_t *req)
{
    offloaded *o = (offloaded *)req;
    o->work(o->arg);
}

static void offload_after(uv_work_t *req, int status)
{
    (void)status;
    offloaded *o = (offloaded *)req;
    inflight--;
    if (!closing) {
        o->after(port, o->arg);
        flush();
    } else {
        o->after(port, o->arg);
        if (!inflight)
            finish(0);
    }
    free(o);
}

static void offload(gn_port *p, void (*work)(void *), void (*after)(gn_port *, void *), void *arg)
{
    (void)p;
    offloaded *o = malloc(sizeof *o);
    if (!o)
        abort();
    o->work = work;
    o->after = after;
    o->arg = arg;
    inflight++;
    uv_queue_work(loop, &o->req, offload_work, offload_after);
}

/* Ends the program: at a clean end of input, once thread-pool work is
 * through, with the journal on disk. */
static void finish(int status)
{
    if (status != 0) {
        exit(status);
    }
    if (!closing) {
        closing = 1;
        uv_read_stop((uv_stream_t *)&in_pipe);
        uv_idle_stop(&stepper);
        uv_idle_stop(&spinner);
        uv_timer_stop(&sweeper);
        uv_timer_stop(&syncer);
    }
    if (inflight)
        return; /* on_synced / offload_after call again */
    gn_port_commit(port);
    gn_port_free(port); /* fsyncs the journal */
    exit(0);
}

static void usage(void)
{
    fprintf(stderr, "usage: gen_native_port [--dir DIR] [--sync always|never|MS] [--sweep MS]\n");
    exit(64);
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int sync = 100;
    long sweep_ms = 1000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
            dir = argv[++i];
        } else if (!strcmp(argv[i], "--sync") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "always")) {
                sync = GN_SYNC_ALWAYS;
            } else if (!strcmp(v, "never")) {
                sync = GN_SYNC_NEVER;
            } else {
                char *end;
                long ms = strtol(v, &end, 10);
                if (*end || ms <= 0 || ms > 86400000)
                    usage();
                sync = (int)ms;
            }
        } else if (!strcmp(argv[i], "--sweep") && i + 1 < argc) {
            char *end;
            sweep_ms = strtol(argv[++i], &end, 10);
            if (*end || sweep_ms < 0 || sweep_ms > 86400000)
                usage();
        } else {
            usage();
        }
    }
    signal(SIGPIPE, SIG_IGN);
    ei_init();
    loop = uv_default_loop();
    port = gn_port_new(dir, sync);
    gn_port_set_offload(port, offload);

    uv_pipe_init(loop, &out_pipe, 0);
    if (uv_pipe_open(&out_pipe, 1) < 0) {
        fprintf(stderr, "gen_native_port: stdout is not a pipe: run me as an Erlang port\n");
        return 64;
    }
    int loaded = gn_port_load(port);
    flush();
    if (loaded < 0) {
        uv_run(loop, UV_RUN_DEFAULT); /* write the error event out */
        return 2;
    }
    uv_pipe_init(loop, &in_pipe, 0);
    if (uv_guess_handle(0) != UV_NAMED_PIPE || uv_pipe_open(&in_pipe, 0) < 0) {
        fprintf(stderr, "gen_native_port: stdin is not a pipe: run me as an Erlang port\n");
        return 64;
    }
    uv_read_start((uv_stream_t *)&in_pipe, on_alloc, on_read);
    uv_idle_init(loop, &stepper);
    uv_idle_init(loop, &spinner);
    uv_timer_init(loop, &sweeper);
    if (sweep_ms > 0)
        uv_timer_start(&sweeper, on_sweep, (uint64_t)sweep_ms, (uint64_t)sweep_ms);
    uv_timer_init(loop, &syncer);
    if (dir && sync > 0)
        uv_timer_start(&syncer, on_sync_timer, (uint64_t)sync, (uint64_t)sync);
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
