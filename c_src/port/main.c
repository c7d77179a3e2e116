/*
 * gen_native_port: the port program's event loop (libuv).
 *
 *   stdin   frames from the VM -> gn_port_feed
 *   idle    long work in slices while there is any -> gn_port_step
 *   timers  the TTL sweep (every --sweep ms, 1000 by default) and, with
 *           sync {interval, ms}, the fsync
 *   stdout  replies, after the journal has taken their writes
 *
 * The program ends by closing every handle, so that uv_run returns once
 * the writes queued on stdout and the thread-pool work are through; main
 * then flushes and fsyncs the journal (a clean end) or exits with the
 * status `stop` chose, without touching a journal that failed. Every uv_*
 * call that can fail is checked.
 *
 * See PROTOCOL.md for the frames, and dispatch.c (its table of ops) for
 * what they do.
 */
#include <ei.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "../snapshot.h"
#include "diag.h"
#include "port.h"
#include "raft.h"
#include "reply.h"

static uv_loop_t *loop;
static uv_pipe_t in_pipe, out_pipe;
static uv_idle_t stepper, spinner, gatherer;
static uint64_t last_read; /* uv_hrtime() of the last request bytes */
static uv_timer_t sweeper, syncer;
static uv_shutdown_t out_shutdown;
static gn_port *port;
static gn_raft *raft; /* a replicated program's member, or NULL */
static int closing;
static int exit_status;
static int journal_failed; /* the fatal event is out: never touch the journal again */

#define GN_EXIT_JOURNAL 5

static void stop(int status);

/* Fails hard on a uv_* error where the program cannot go on. */
static void check(int rc, const char *what)
{
    if (rc < 0) {
        gn_diag("%s: %s", what, uv_strerror(rc));
        gn_diag_flush(1000);
        exit(70);
    }
}

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
        gn_diag("writing to the VM: %s", uv_strerror(status));
        stop(1);
    }
}

/* Writes the port's output: at once what the pipe takes, the rest queued
 * behind the writes already queued (frames stay whole and in order). */
static void write_output(void)
{
    gn_buf *out = gn_port_output(port);
    if (out->len == 0)
        return;
    size_t done = 0;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&out_pipe) == 0) {
        uv_buf_t b = uv_buf_init((char *)out->data, (unsigned)out->len);
        int n = uv_try_write((uv_stream_t *)&out_pipe, &b, 1);
        done = n > 0 ? (size_t)n : 0;
    }
    if (done < out->len) {
        out_write *w = malloc(sizeof *w);
        if (!w)
            abort();
        memset(&w->data, 0, sizeof w->data);
        gn_buf_put(&w->data, out->data + done, out->len - done);
        uv_buf_t rest = uv_buf_init((char *)w->data.data, (unsigned)w->data.len);
        int rc = uv_write(&w->req, (uv_stream_t *)&out_pipe, &rest, 1, on_written);
        if (rc < 0) {
            gn_buf_free(&w->data);
            free(w);
            gn_diag("writing to the VM: %s", uv_strerror(rc));
            out->len = 0;
            stop(1);
            return;
        }
    }
    out->len = 0;
    if (out->cap > (4u << 20)) /* don't hold on to a big reply's room */
        gn_buf_free(out);
}

/* The journal failed (a write or an fdatasync): fail-stop. Nothing more is
 * acknowledged; the fatal event goes out, then the program exits. */
static void journal_failure(void)
{
    if (journal_failed)
        return;
    journal_failed = 1;
    gn_port_fail(port);
    write_output();
    stop(GN_EXIT_JOURNAL);
}

/* After a request, the loop polls without blocking for a moment before it
 * sleeps: the next request of a caller waiting on its reply usually comes
 * within microseconds, and a CPU that went idle (on a VM, a halted vCPU)
 * takes tens of microseconds to wake. */
#define GN_SPIN_NS 200000

/* Group commit with sync always: one fdatasync covers every write in the
 * journal buffer, and a commit blocks the loop, so writes arriving meanwhile
 * wait for the next. The callers whose writes the last fdatasync covered
 * come back with their next writes a round trip after their replies, while
 * the writes that arrived during the fdatasync are read at once: a commit
 * made then covers only those, and the callers split into two groups that
 * take turns, each fdatasync covering about half of them. So a commit waits
 * until as many requests have come as the last fdatasync covered, or for
 * as long as that fdatasync took, at most GN_SPIN_NS (the loop polls
 * meanwhile, as it does after any request). One caller alone never waits.
 */
static int group_commit;      /* a data directory and sync always */
static uint64_t batch_start;  /* gn_port_frames at the last commit */
static uint64_t last_batch;   /* requests the last fdatasync covered */
static uint64_t last_sync_ns; /* how long that commit took */
static uint64_t gather_until; /* uv_hrtime() to commit by; 0: not waiting */

static int gather(void);

/* Journal first, then the replies that acknowledge it. */
static void flush(void)
{
    if (journal_failed)
        return;
    int syncs = group_commit && gn_port_journal_pending(port);
    uint64_t t0 = syncs ? uv_hrtime() : 0;
    if (gn_port_commit(port) < 0) {
        journal_failure();
        return;
    }
    uint64_t frames = gn_port_frames(port);
    if (syncs) {
        last_sync_ns = uv_hrtime() - t0;
        last_batch = frames - batch_start;
    }
    batch_start = frames;
    if (gather_until) {
        gather_until = 0;
        if (!closing)
            check(uv_idle_stop(&gatherer), "uv_idle_stop");
    }
    write_output();
}

static void on_step(uv_idle_t *h)
{
    int more = gn_port_step(port);
    if (!gather())
        flush(); /* the commit may start a compaction */
    if (!more && !gn_port_busy(port) && !closing)
        check(uv_idle_stop(h), "uv_idle_stop");
}

static void kick(void)
{
    if (!closing)
        check(uv_idle_start(&stepper, on_step), "uv_idle_start");
}

static void on_spin(uv_idle_t *h)
{
    if (uv_hrtime() - last_read > GN_SPIN_NS && !closing)
        check(uv_idle_stop(h), "uv_idle_stop");
}

/* Whether the commit of the writes read so far waits for more (see
 * group_commit); the gatherer polls until it does not. */
static void on_gather(uv_idle_t *h);

static int gather(void)
{
    if (!group_commit || closing || !gn_port_journal_pending(port) ||
        gn_port_frames(port) - batch_start >= last_batch)
        return 0;
    uint64_t now = uv_hrtime();
    if (!gather_until) {
        uint64_t wait = last_sync_ns < GN_SPIN_NS ? last_sync_ns : GN_SPIN_NS;
        gather_until = now + wait;
        check(uv_idle_start(&gatherer, on_gather), "uv_idle_start");
    }
    return now < gather_until;
}

static void on_gather(uv_idle_t *h)
{
    (void)h;
    if (!gather())
        flush();
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
    if (closing)
        return;
    if (n > 0) {
        gn_port_feed(port, (const unsigned char *)buf->base, (size_t)n);
        if (raft)
            gn_raft_flush(raft); /* the writes just read, in one entry */
        if (gn_port_stopping(port) || !gather())
            flush();
        if (gn_port_stopping(port)) {
            stop(0);
            return;
        }
        kick();
        last_read = uv_hrtime();
        if (!closing)
            check(uv_idle_start(&spinner, on_spin), "uv_idle_start");
    } else if (n == UV_EOF) {
        flush(); /* the replies a group commit held */
        if (!gn_port_at_frame_boundary(port)) {
            gn_diag("stdin closed inside a frame");
            stop(3);
        } else {
            stop(0);
        }
    } else if (n < 0) {
        gn_diag("reading from the VM: %s", uv_strerror((int)n));
        stop(1);
    }
}

static void on_sweep(uv_timer_t *t)
{
    (void)t;
    if (raft)
        gn_raft_sweep(raft); /* expiry goes by the group's clock */
    else
        gn_port_sweep(port);
    kick();
}

/* After a replicated program's callbacks: their replies out, their long
 * work started. */
static void after_raft(void)
{
    if (closing)
        return;
    flush();
    kick();
}

static void on_synced(uv_fs_t *req)
{
    int result = (int)req->result;
    uv_fs_req_cleanup(req);
    free(req);
    if (journal_failed)
        return;
    if (gn_port_sync_done(port, result < 0 ? result : 0) < 0)
        journal_failure();
    else if (!closing)
        flush(); /* the syncs that waited for it */
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
    int rc = uv_fs_fdatasync(loop, req, fd, on_synced);
    if (rc < 0) {
        free(req);
        gn_port_sync_done(port, rc);
        journal_failure();
    }
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
    o->after(port, o->arg);
    if (!closing)
        flush();
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
    int rc = uv_queue_work(loop, &o->req, offload_work, offload_after);
    if (rc < 0) { /* cannot happen with a valid loop and callbacks: run it here */
        o->work(o->arg);
        offload_after(&o->req, rc);
    }
}

static void close_handle(uv_handle_t *h)
{
    if (h->type != UV_UNKNOWN_HANDLE && !uv_is_closing(h))
        uv_close(h, NULL);
}

static void on_out_shutdown(uv_shutdown_t *req, int status)
{
    (void)req;
    (void)status;
    close_handle((uv_handle_t *)&out_pipe);
}

/* Ends the program: closes every handle, so that uv_run returns once the
 * replies queued on stdout and the thread-pool work are through. */
static void stop(int status)
{
    if (closing)
        return;
    closing = 1;
    exit_status = status;
    close_handle((uv_handle_t *)&in_pipe);
    close_handle((uv_handle_t *)&stepper);
    close_handle((uv_handle_t *)&spinner);
    close_handle((uv_handle_t *)&gatherer);
    close_handle((uv_handle_t *)&sweeper);
    close_handle((uv_handle_t *)&syncer);
    if (raft)
        gn_raft_close(raft);
    raft = NULL;
    if (uv_shutdown(&out_shutdown, (uv_stream_t *)&out_pipe, on_out_shutdown) < 0)
        close_handle((uv_handle_t *)&out_pipe);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: gen_native_port [--dir DIR] [--sync always|never|MS] [--sweep MS]\n"
            "         [--raft-id ID --raft-address HOST:PORT [--raft-members ID=HOST:PORT,...]\n"
            "          [--raft-reads linearizable|local] [--raft-election-ms MS]\n"
            "          [--raft-snapshot-every N]]\n");
    exit(64);
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int sync = 100;
    long sweep_ms = 1000;
    gn_raft_config rc_cfg = {0};
    for (int i = 1; i < argc; i++) {
        if (!strncmp(argv[i], "--raft-", 7) && i + 1 < argc) {
            const char *opt = argv[i] + 7, *v = argv[++i];
            char *end;
            unsigned long long n = strtoull(v, &end, 10);
            if (!strcmp(opt, "id") && !*end && n > 0)
                rc_cfg.id = n;
            else if (!strcmp(opt, "address"))
                rc_cfg.address = v;
            else if (!strcmp(opt, "members"))
                rc_cfg.members = v;
            else if (!strcmp(opt, "reads") && (!strcmp(v, "local") || !strcmp(v, "linearizable")))
                rc_cfg.local_reads = !strcmp(v, "local");
            else if (!strcmp(opt, "election-ms") && !*end && n >= 10 && n <= 600000) {
                rc_cfg.election_ms = (unsigned)n;
                rc_cfg.heartbeat_ms = (unsigned)(n / 5 ? n / 5 : 1);
            } else if (!strcmp(opt, "snapshot-every") && !*end && n > 0 && n <= 1u << 30)
                rc_cfg.snapshot_every = (unsigned)n;
            else
                usage();
        } else if (!strcmp(argv[i], "--dir") && i + 1 < argc) {
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
    if ((rc_cfg.id || rc_cfg.address || rc_cfg.members) && (!rc_cfg.id || !rc_cfg.address || !dir))
        usage(); /* a member needs its id, its address and a directory */
    rc_cfg.dir = dir;
    signal(SIGPIPE, SIG_IGN);
    ei_init();
    gn_crc32_init(); /* before any thread: journal records, snapshots */
    loop = uv_default_loop();
    /* a member's stores live in memory: the Raft log is their journal */
    port = gn_port_new(rc_cfg.id ? NULL : dir, sync);
    gn_port_set_offload(port, offload);

    check(uv_pipe_init(loop, &out_pipe, 0), "uv_pipe_init");
    if (uv_pipe_open(&out_pipe, 1) < 0) {
        fprintf(stderr, "gen_native_port: stdout is not a pipe: run me as an Erlang port\n");
        return 64;
    }
    int loaded = gn_port_load(port);
    if (loaded == 0 && rc_cfg.id) {
        char err[512];
        const char *kind;
        if (!(raft = gn_raft_start(loop, port, &rc_cfg, after_raft, &kind, err, sizeof err))) {
            gn_port_output(port)->len = 0; /* not ready after all */
            gn_error_text(gn_port_output(port), NULL, kind, err);
            gn_diag("%s: %s", kind, err);
            loaded = -1;
        }
    }
    write_output();
    if (loaded < 0) {
        stop(2); /* write the error event out */
        uv_run(loop, UV_RUN_DEFAULT);
        gn_diag_flush(1000);
        return 2;
    }
    check(uv_pipe_init(loop, &in_pipe, 0), "uv_pipe_init");
    if (uv_guess_handle(0) != UV_NAMED_PIPE || uv_pipe_open(&in_pipe, 0) < 0) {
        fprintf(stderr, "gen_native_port: stdin is not a pipe: run me as an Erlang port\n");
        return 64;
    }
    check(uv_read_start((uv_stream_t *)&in_pipe, on_alloc, on_read), "uv_read_start");
    check(uv_idle_init(loop, &stepper), "uv_idle_init");
    check(uv_idle_init(loop, &spinner), "uv_idle_init");
    check(uv_idle_init(loop, &gatherer), "uv_idle_init");
    group_commit = dir && !raft && sync == GN_SYNC_ALWAYS;
    check(uv_timer_init(loop, &sweeper), "uv_timer_init");
    if (sweep_ms > 0)
        check(uv_timer_start(&sweeper, on_sweep, (uint64_t)sweep_ms, (uint64_t)sweep_ms),
              "uv_timer_start");
    check(uv_timer_init(loop, &syncer), "uv_timer_init");
    if (dir && !raft && sync > 0)
        check(uv_timer_start(&syncer, on_sync_timer, (uint64_t)sync, (uint64_t)sync),
              "uv_timer_start");
    uv_run(loop, UV_RUN_DEFAULT); /* until stop() has closed every handle */
    if (exit_status != 0 || journal_failed) {
        gn_diag_flush(1000);
        _exit(journal_failed ? GN_EXIT_JOURNAL : exit_status);
    }
    /* a clean end of input: the journal on disk, then exit 0 */
    int rc = gn_port_commit(port);
    gn_port_free(port); /* fsyncs the journal */
    gn_diag_flush(1000);
    return rc < 0 ? GN_EXIT_JOURNAL : 0;
}
