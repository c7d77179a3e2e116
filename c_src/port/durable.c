/*
 * The data directory (durable.h): its lock, loading the snapshot and
 * journals, the journal's writes and syncs, and writing a snapshot. The
 * records themselves are record.c's.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "durable.h"

/* ------------------------------------------------------------------------ */
/* Files                                                                     */

struct gn_durable {
    char *dir;
    int sync;
    int lock_fd;
    int journal_fd;
    uint64_t gen;           /* the journal's generation */
    uint64_t journal_bytes; /* of records in the file */
    uint64_t allocated;     /* the file's size: zeros past journal_bytes (sync always) */
    uint64_t snapshot_bytes;
    uint64_t first_gen;   /* the lowest journal generation on disk */
    uint64_t synced;      /* bytes of the journal known to be on disk */
    uint64_t marked;      /* the synced offset the last SYNC record names */
    uint64_t sync_target; /* what the fdatasync in flight covers */
    int sync_inflight;
    const char *fail_kind; /* the journal failed: fail-stop */
    char fail_text[300];
    gn_buf journal; /* records waiting for commit */
    /* compaction */
    int snap_running;
    int snap_fd;
    uint64_t snap_gen, snap_records, snap_written;
    int snap_failed;
};

static char *path_of(const gn_durable *d, const char *name)
{
    size_t n = strlen(d->dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p)
        abort();
    snprintf(p, n, "%s/%s", d->dir, name);
    return p;
}

static char *journal_path(const gn_durable *d, uint64_t gen)
{
    char name[64];
    snprintf(name, sizeof name, "journal.%" PRIu64 ".gnj", gen);
    return path_of(d, name);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_dir(const gn_durable *d)
{
    int fd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int read_file(const char *path, unsigned char **data, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    unsigned char *buf = malloc(n ? n : 1);
    if (!buf)
        abort();
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *data = buf;
    *len = got;
    return 0;
}

/* Walks the records of a file after its 12-byte header, applying all but
 * SYNC records. Returns the offset where valid records end. */
static size_t walk_records(const unsigned char *p, size_t n, gn_apply_fn apply, void *ctx,
                           uint64_t *records, int *saw_end)
{
    size_t at = 12;
    *records = 0;
    *saw_end = 0;
    while (n - at >= 8) {
        size_t len = (size_t)gn_be_get(p + at, 4);
        uint32_t crc = (uint32_t)gn_be_get(p + at + 4, 4);
        if (n - at - 8 < len || gn_crc32(p + at + 8, len) != crc)
            break;
        gn_record r;
        if (gn_record_parse(p + at + 8, len, &r))
            break;
        if (r.op == GN_REC_SYNC) {
            if (r.at != at || r.synced > at)
                break;
            at += 8 + len;
            continue;
        }
        if (r.op == GN_REC_END) {
            if (r.records != *records)
                break;
            *saw_end = 1;
            at += 8 + len;
            break;
        }
        apply(ctx, &r);
        (*records)++;
        at += 8 + len;
    }
    return at;
}

#define GN_SYNC_REC_LEN 27 /* length (4) | CRC (4) | op (1) | name length (2) | 2 offsets */

/* Looks for SYNC records after the damaged record at `bad` (they are found
 * by their fixed shape, their CRC and the offset they name as their own,
 * so a copy inside a value does not count). Returns the highest offset
 * they say was synced, and in *next where the first of them starts. */
static uint64_t synced_after(const unsigned char *p, size_t n, size_t bad, size_t *next)
{
    static const unsigned char shape[4] = {0, 0, 0, GN_SYNC_REC_LEN - 8};
    uint64_t synced = 0;
    *next = n;
    if (bad >= n)
        return 0;
    for (size_t at = bad + 1; n - at >= GN_SYNC_REC_LEN; at++) {
        const unsigned char *hit = memmem(p + at, n - at, shape, 4);
        if (!hit || (size_t)(n - (size_t)(hit - p)) < GN_SYNC_REC_LEN)
            break;
        at = (size_t)(hit - p);
        gn_record r;
        if (gn_crc32(hit + 8, GN_SYNC_REC_LEN - 8) != (uint32_t)gn_be_get(hit + 4, 4) ||
            gn_record_parse(hit + 8, GN_SYNC_REC_LEN - 8, &r) || r.op != GN_REC_SYNC || r.at != at)
            continue;
        if (*next == n)
            *next = at;
        if (r.synced > synced)
            synced = r.synced;
    }
    return synced;
}

static int open_new(const char *path)
{
    return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

static int write_header(int fd, const char *magic, uint64_t gen)
{
    unsigned char h[12];
    memcpy(h, magic, 4);
    for (int i = 0; i < 8; i++)
        h[4 + i] = (unsigned char)(gen >> (56 - 8 * i));
    return write_all(fd, h, 12);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void fail(gn_durable *d, const char *kind, const char *what)
{
    if (!d->fail_kind) {
        d->fail_kind = kind;
        snprintf(d->fail_text, sizeof d->fail_text, "%s journal.%" PRIu64 ".gnj in %s: %s", what,
                 d->gen, d->dir, strerror(errno));
    }
}

static void load_error(gn_load_error *err, const char *kind, const char *path)
{
    err->kind = kind;
    snprintf(err->path, sizeof err->path, "%s", path);
}

static void io_error(gn_load_error *err, const char *what, const char *path)
{
    err->kind = "io_error";
    snprintf(err->text, sizeof err->text, "%s %s: %s", what, path, strerror(errno));
}

/* Whether the n bytes of a journal end with a SYNC record that names
 * everything before it as synced (as a clean stop leaves it). */
static int sealed(const unsigned char *p, size_t n)
{
    if (n < 12 + GN_SYNC_REC_LEN)
        return 0;
    const unsigned char *rec = p + n - GN_SYNC_REC_LEN;
    gn_record r;
    return gn_be_get(rec, 4) == GN_SYNC_REC_LEN - 8 &&
           gn_crc32(rec + 8, GN_SYNC_REC_LEN - 8) == (uint32_t)gn_be_get(rec + 4, 4) &&
           !gn_record_parse(rec + 8, GN_SYNC_REC_LEN - 8, &r) && r.op == GN_REC_SYNC &&
           r.at == n - GN_SYNC_REC_LEN && r.synced == r.at;
}

/* Whether the n bytes at p are all zero. */
static int all_zero(const unsigned char *p, size_t n)
{
    return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Replays one journal; 0, or -1 with `err` filled in. `newest`: the one
 * writes append to, the only one that may end in a torn tail. *is_sealed:
 * whether it ends with a SYNC record covering all of it but itself. */
static int load_journal(const char *path, uint64_t gen, int newest, gn_apply_fn apply, void *ctx,
                        uint64_t *dropped, size_t *size, int *is_sealed, gn_load_error *err)
{
    *is_sealed = 0;
    unsigned char *data;
    size_t len;
    if (read_file(path, &data, &len) < 0) {
        io_error(err, "cannot read", path);
        return -1;
    }
    *size = len;
    if (len < 12) { /* created, and cut short before its header: no records */
        free(data);
        return 0;
    }
    if (memcmp(data, "GNJ1", 4) != 0 || gn_be_get(data + 4, 8) != gen) {
        free(data);
        load_error(err, "bad_journal_header", path);
        return -1;
    }
    uint64_t records;
    int saw_end;
    size_t good = walk_records(data, len, apply, ctx, &records, &saw_end);
    if (newest && !saw_end && good < len && all_zero(data + good, len - good)) {
        /* the zeros a program with sync always writes ahead (see
         * preallocate): no record, nothing dropped */
        *size = good;
        *is_sealed = sealed(data, good);
        free(data);
        if (truncate(path, (off_t)good) < 0) {
            io_error(err, "cannot truncate", path);
            return -1;
        }
        return 0;
    }
    if (good < len || saw_end) {
        size_t next;
        uint64_t synced = synced_after(data, len, good, &next);
        if (!newest || saw_end || synced > good) {
            size_t rec_len = len - good >= 8 ? (size_t)gn_be_get(data + good, 4) : 0;
            free(data);
            load_error(err, "corrupt_journal", path);
            err->from = good;
            err->to = rec_len && len - good - 8 >= rec_len ? good + 8 + rec_len : next;
            if (err->to > next)
                err->to = next;
            return -1;
        }
        /* a crash tail: cut it, so appends follow the last good record; the
         * zeros written ahead of it are no record (see preallocate) */
        size_t end = len;
        while (end > good && data[end - 1] == 0)
            end--;
        *dropped += len - end >= GN_PREALLOC_MIN_ZEROS ? end - good : len - good;
        *size = good;
        if (truncate(path, (off_t)good) < 0) {
            free(data);
            io_error(err, "cannot truncate", path);
            return -1;
        }
    } else {
        *is_sealed = sealed(data, len);
    }
    free(data);
    return 0;
}

static void push_gen(uint64_t **gens, size_t *n, size_t *cap, uint64_t g)
{
    if (*n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        *gens = realloc(*gens, *cap * sizeof **gens);
        if (!*gens)
            abort();
    }
    (*gens)[(*n)++] = g;
}

gn_durable *gn_durable_open(const char *dir, int sync, gn_apply_fn apply, void *ctx,
                            uint64_t *dropped, gn_load_error *err)
{
    gn_durable *d = calloc(1, sizeof *d);
    if (!d)
        abort();
    d->dir = strdup(dir);
    d->sync = sync;
    d->journal_fd = d->lock_fd = d->snap_fd = -1;
    *dropped = 0;
    memset(err, 0, sizeof *err);
    char *p = NULL;
    uint64_t *gens = NULL, *drop = NULL;
    size_t ngens = 0, cap = 0, ndrop = 0, dcap = 0;

    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        io_error(err, "cannot create", dir);
        goto fail;
    }
    p = path_of(d, "LOCK");
    d->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (d->lock_fd < 0) {
        io_error(err, "cannot open", p);
        goto fail;
    }
    free(p);
    p = NULL;
    /* a program still closing on this directory: wait for it, a while */
    for (int tries = 0; flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0; tries++) {
        if (tries == 100) {
            load_error(err, "locked", dir);
            goto fail;
        }
        usleep(50 * 1000);
    }

    /* the snapshot: all of it or an error */
    uint64_t snap_gen = 0;
    int have_snap = 0;
    unsigned char *data;
    size_t len;
    p = path_of(d, "snapshot.gns");
    if (read_file(p, &data, &len) == 0) {
        uint64_t records;
        int saw_end = 0;
        if (len < 12 || memcmp(data, "GNP1", 4) != 0 ||
            walk_records(data, len, apply, ctx, &records, &saw_end) != len || !saw_end) {
            free(data);
            load_error(err, "corrupt_snapshot", p);
            goto fail;
        }
        snap_gen = gn_be_get(data + 4, 8);
        have_snap = 1;
        d->snapshot_bytes = len;
        free(data);
    } else if (errno != ENOENT) {
        io_error(err, "cannot read", p);
        goto fail;
    }
    free(p);
    p = NULL;

    /* the journals of that generation and later, in order: all of them
     * (what no load needs is deleted only once the load has succeeded: a
     * failed load changes no file) */
    DIR *dh = opendir(dir);
    if (!dh) {
        io_error(err, "cannot list", dir);
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(dh))) {
        uint64_t g;
        char tail[8];
        if (sscanf(de->d_name, "journal.%" SCNu64 ".%7s", &g, tail) == 2 &&
            strcmp(tail, "gnj") == 0) {
            if (have_snap && g < snap_gen) {
                push_gen(&drop, &ndrop, &dcap, g); /* a compaction ended before deleting it */
            } else {
                push_gen(&gens, &ngens, &cap, g);
            }
        }
    }
    closedir(dh);
    if (ngens) /* qsort takes no NULL array, even empty */
        qsort(gens, ngens, sizeof *gens, cmp_u64);
    if (ngens && gens[0] > (have_snap ? snap_gen : 1)) {
        if (have_snap) {
            p = journal_path(d, snap_gen);
            load_error(err, "missing_journal", p);
        } else {
            p = path_of(d, "snapshot.gns");
            load_error(err, "missing_snapshot", p);
        }
        goto fail;
    }
    size_t kept = 0;
    int newest_sealed = 0;
    for (size_t i = 0; i < ngens; i++) {
        p = journal_path(d, gens[i]);
        size_t size;
        int newest = i + 1 == ngens;
        if (load_journal(p, gens[i], newest, apply, ctx, dropped, &size, &newest_sealed, err) < 0)
            goto fail;
        if (size <= 12 && i > 0 && !newest)
            push_gen(&drop, &ndrop, &dcap, gens[i]); /* a compaction cut short before any write */
        else
            gens[kept++] = gens[i];
        free(p);
        p = NULL;
    }
    ngens = kept;
    for (size_t i = 0; i < ndrop; i++) {
        p = journal_path(d, drop[i]);
        if (unlink(p) < 0 && errno != ENOENT) {
            io_error(err, "cannot delete", p);
            goto fail;
        }
        free(p);
        p = NULL;
    }
    p = path_of(d, "snapshot.tmp");
    unlink(p); /* a compaction cut short */
    free(p);
    p = NULL;

    /* append to the newest journal, or start one */
    d->gen = ngens ? gens[ngens - 1] : (have_snap ? snap_gen : 1);
    d->first_gen = ngens ? gens[0] : d->gen;
    p = journal_path(d, d->gen);
    d->journal_fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (d->journal_fd < 0) {
        io_error(err, "cannot open", p);
        goto fail;
    }
    struct stat st;
    if (fstat(d->journal_fd, &st) < 0) {
        io_error(err, "cannot stat", p);
        goto fail;
    }
    if (st.st_size < 12) { /* new, or created and cut short before its header */
        if (ftruncate(d->journal_fd, 0) < 0 || write_header(d->journal_fd, "GNJ1", d->gen) < 0 ||
            fsync_dir(d) < 0) {
            io_error(err, "cannot write", p);
            goto fail;
        }
        st.st_size = 12;
    }
    /* what was read may have been in the page cache only: from here on it
     * counts as synced, and the next commit's SYNC record says so */
    if (fdatasync(d->journal_fd) < 0) {
        io_error(err, "cannot fdatasync", p);
        goto fail;
    }
    if (lseek(d->journal_fd, st.st_size, SEEK_SET) < 0) {
        io_error(err, "cannot seek", p);
        goto fail;
    }
    d->journal_bytes = d->synced = d->allocated = (uint64_t)st.st_size;
    /* a header needs no SYNC record, nor a journal a clean stop sealed
     * with one: without this, each restart would append another */
    d->marked = st.st_size == 12 || (ngens && newest_sealed) ? (uint64_t)st.st_size : 0;
    free(p);
    free(gens);
    free(drop);
    return d;
fail:
    free(p);
    free(gens);
    free(drop);
    gn_durable_close(d);
    return NULL;
}

/* The SYNC record saying the first d->synced bytes are on disk, to be
 * written at d->journal_bytes. */
static void sync_record(const gn_durable *d, unsigned char *rec)
{
    gn_buf b = {0};
    size_t mark;
    gn_rec_begin(&b, &mark, GN_REC_SYNC, "", 0);
    gn_buf_be(&b, d->synced, 8);
    gn_buf_be(&b, d->journal_bytes, 8);
    gn_rec_end(&b, mark);
    memcpy(rec, b.data, GN_SYNC_REC_LEN);
    gn_buf_free(&b);
}

static int writev_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t w = writev(fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

/* With sync always, the journal file is written ahead with zeros, a
 * GN_PREALLOC at a time: an fdatasync of records that overwrite those
 * zeros changes no metadata (neither the file's size nor its blocks), so
 * it need not wait for a commit of the file system's own journal, which
 * every other writer on the file system shares: it is fewer disk writes
 * and less waiting on other work. The zeros are no record: a load drops
 * them silently, and a clean stop or a rotation cuts them. Failing to
 * write them is no error: the records then extend the file themselves.
 * The zeros go through pwrite, which leaves the file offset, where
 * writev appends the records, alone. */
static void preallocate(gn_durable *d, size_t need)
{
    static const unsigned char zeros[1 << 16];
    if (d->sync != 0 || d->journal_bytes + need <= d->allocated)
        return;
    uint64_t to = (d->journal_bytes + need + GN_PREALLOC - 1) / GN_PREALLOC * GN_PREALLOC;
    uint64_t at = d->allocated > d->journal_bytes ? d->allocated : d->journal_bytes;
    while (at < to) {
        size_t n = to - at < sizeof zeros ? (size_t)(to - at) : sizeof zeros;
        ssize_t w = pwrite(d->journal_fd, zeros, n, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        at += (uint64_t)w;
    }
    d->allocated = at;
}

/* Cuts the zeros written ahead, and syncs the file's new size. 0 or -1. */
static int cut_ahead(gn_durable *d)
{
    if (d->allocated <= d->journal_bytes)
        return 0;
    if (ftruncate(d->journal_fd, (off_t)d->journal_bytes) < 0 || fdatasync(d->journal_fd) < 0)
        return -1;
    d->allocated = d->journal_bytes;
    return 0;
}

/* Writes the buffered records, after a SYNC record if fdatasyncs since the
 * last one covered GN_SYNC_REC_EVERY bytes more; with `force`, a SYNC
 * record alone, for any bytes more. */
static int write_journal(gn_durable *d, int force)
{
    if (d->fail_kind)
        return -1;
    unsigned char rec[GN_SYNC_REC_LEN];
    struct iovec iov[2];
    int n = 0;
    int mark = force ? d->synced > d->marked
                     : d->journal.len && d->synced >= d->marked + GN_SYNC_REC_EVERY;
    if (mark) {
        sync_record(d, rec);
        iov[n++] = (struct iovec){rec, sizeof rec};
    }
    if (d->journal.len)
        iov[n++] = (struct iovec){d->journal.data, d->journal.len};
    if (n == 0)
        return 0;
    preallocate(d, (mark ? sizeof rec : 0) + d->journal.len);
    if (writev_all(d->journal_fd, iov, n) < 0) {
        fail(d, "journal_write_failed", "cannot write");
        return -1;
    }
    if (mark) {
        d->marked = d->synced;
        d->journal_bytes += sizeof rec;
    }
    d->journal_bytes += d->journal.len;
    d->journal.len = 0;
    return 0;
}

void gn_durable_close(gn_durable *d)
{
    if (!d)
        return;
    if (d->journal_fd >= 0) {
        /* a clean stop: everything synced, and a SYNC record that says so,
         * so that damage anywhere in this journal reads as corruption */
        if (gn_durable_commit(d) == 0 && gn_durable_sync_now(d) == 0 && write_journal(d, 1) == 0 &&
            gn_durable_sync_now(d) == 0)
            cut_ahead(d);
        close(d->journal_fd);
    }
    if (d->snap_fd >= 0)
        close(d->snap_fd);
    if (d->lock_fd >= 0)
        close(d->lock_fd); /* releases the flock */
    gn_buf_free(&d->journal);
    free(d->dir);
    free(d);
}

gn_buf *gn_durable_journal(gn_durable *d)
{
    return &d->journal;
}

int gn_durable_commit(gn_durable *d)
{
    if (d->journal.len == 0)
        return d->fail_kind ? -1 : 0;
    if (write_journal(d, 0) < 0)
        return -1;
    if (d->sync == 0) /* GN_SYNC_ALWAYS */
        return gn_durable_sync_now(d);
    return 0;
}

int gn_durable_sync_now(gn_durable *d)
{
    if (d->fail_kind)
        return -1;
    if (d->synced == d->journal_bytes)
        return 0;
    if (fdatasync(d->journal_fd) < 0) {
        fail(d, "fsync_failed", "fdatasync");
        return -1;
    }
    d->synced = d->journal_bytes;
    return 0;
}

int gn_durable_sync_begin(gn_durable *d)
{
    if (d->fail_kind || d->sync_inflight || d->synced == d->journal_bytes)
        return -1;
    d->sync_inflight = 1;
    d->sync_target = d->journal_bytes;
    return d->journal_fd;
}

int gn_durable_sync_done(gn_durable *d, int result)
{
    d->sync_inflight = 0;
    if (result < 0) {
        errno = -result;
        fail(d, "fsync_failed", "fdatasync");
        return -1;
    }
    if (d->sync_target > d->synced)
        d->synced = d->sync_target;
    return d->fail_kind ? -1 : 0;
}

int gn_durable_sync_inflight(const gn_durable *d)
{
    return d->sync_inflight;
}

int gn_durable_failed(const gn_durable *d, const char **kind, const char **text)
{
    if (!d->fail_kind)
        return 0;
    *kind = d->fail_kind;
    *text = d->fail_text;
    return 1;
}

int gn_durable_wants_compaction(const gn_durable *d)
{
    return !d->snap_running && d->journal_bytes > GN_COMPACT_MIN_BYTES &&
           d->journal_bytes > GN_COMPACT_FACTOR * d->snapshot_bytes;
}

int gn_durable_snap_running(const gn_durable *d)
{
    return d->snap_running;
}

int gn_durable_snap_begin(gn_durable *d)
{
    if (d->snap_running || d->sync_inflight)
        return -2;
    /* the current journal is complete and on disk; new writes go to the next */
    if (gn_durable_commit(d) < 0 || gn_durable_sync_now(d) < 0)
        return -1;
    /* only the newest journal may end in zeros */
    if (cut_ahead(d) < 0) {
        fail(d, "journal_write_failed", "cannot cut");
        return -1;
    }
    uint64_t next = d->gen + 1;
    char *jp = journal_path(d, next);
    /* never over an existing file: it could hold records no load has read */
    int fd = open(jp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(jp);
        return -1;
    }
    char *sp = path_of(d, "snapshot.tmp");
    if (write_header(fd, "GNJ1", next) < 0 || fsync(fd) < 0 || (d->snap_fd = open_new(sp)) < 0 ||
        write_header(d->snap_fd, "GNP1", next) < 0 || fsync_dir(d) < 0) {
        close(fd);
        unlink(jp); /* holds no record yet */
        if (d->snap_fd >= 0) {
            close(d->snap_fd);
            d->snap_fd = -1;
            unlink(sp);
        }
        free(jp);
        free(sp);
        return -1;
    }
    free(jp);
    free(sp);
    close(d->journal_fd);
    d->journal_fd = fd;
    d->gen = next;
    d->journal_bytes = d->synced = d->marked = d->allocated = 12;
    d->snap_running = 1;
    d->snap_gen = next;
    d->snap_records = 0;
    d->snap_written = 12;
    d->snap_failed = 0;
    return 0;
}

int gn_durable_snap_write(gn_durable *d, gn_buf *records)
{
    /* count the records (each is length | crc | body) */
    for (size_t at = 0; at + 8 <= records->len; at += 8 + (size_t)gn_be_get(records->data + at, 4))
        d->snap_records++;
    if (!d->snap_failed && write_all(d->snap_fd, records->data, records->len) < 0)
        d->snap_failed = 1;
    d->snap_written += records->len;
    records->len = 0;
    return d->snap_failed ? -1 : 0;
}

void gn_durable_snap_finish(gn_durable *d)
{
    gn_buf end = {0};
    size_t mark;
    gn_rec_begin(&end, &mark, GN_REC_END, "", 0);
    gn_buf_be(&end, d->snap_records, 8);
    gn_rec_end(&end, mark);
    if (d->snap_failed || write_all(d->snap_fd, end.data, end.len) < 0 || fsync(d->snap_fd) < 0)
        d->snap_failed = 1;
    d->snap_written += end.len;
    gn_buf_free(&end);
    close(d->snap_fd);
    d->snap_fd = -1;
    char *tmp = path_of(d, "snapshot.tmp"), *snap = path_of(d, "snapshot.gns");
    if (!d->snap_failed && (rename(tmp, snap) < 0 || fsync_dir(d) < 0))
        d->snap_failed = 1;
    if (d->snap_failed) {
        unlink(tmp);
    } else {
        /* every journal before the new snapshot's, gaps and all (header-only
         * journals may have been deleted on load) */
        for (uint64_t g = d->first_gen; g < d->snap_gen; g++) {
            char *jp = journal_path(d, g);
            unlink(jp);
            free(jp);
        }
    }
    free(tmp);
    free(snap);
}

int gn_durable_snap_done(gn_durable *d)
{
    d->snap_running = 0;
    if (d->snap_failed)
        return -1;
    d->first_gen = d->snap_gen;
    d->snapshot_bytes = d->snap_written;
    return 0;
}
