#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "durable.h"

/* ------------------------------------------------------------------------ */
/* CRC32 (IEEE), slicing by 4                                                */

static uint32_t crc_tab[4][256];

static void crc_init(void)
{
    if (crc_tab[0][1])
        return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 4; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xFF];
}

uint32_t gn_port_crc32(uint32_t crc, const unsigned char *p, size_t n)
{
    crc_init();
    uint32_t c = ~crc;
    while (n >= 4) {
        c ^= (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        c = crc_tab[3][c & 0xFF] ^ crc_tab[2][(c >> 8) & 0xFF] ^ crc_tab[1][(c >> 16) & 0xFF] ^
            crc_tab[0][c >> 24];
        p += 4;
        n -= 4;
    }
    while (n--)
        c = crc_tab[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return ~c;
}

/* ------------------------------------------------------------------------ */
/* Records                                                                   */

void gn_rec_begin(gn_buf *b, size_t *mark, int op, const char *name, size_t name_len)
{
    *mark = b->len;
    gn_buf_be(b, 0, 8); /* length and CRC, filled in by gn_rec_end */
    gn_buf_byte(b, (unsigned char)op);
    gn_buf_be(b, name_len, 2);
    gn_buf_put(b, name, name_len);
}

void gn_rec_entry(gn_buf *b, const unsigned char *key, size_t key_len, const unsigned char *val,
                  size_t val_len, int64_t expires)
{
    gn_buf_be(b, key_len, 4);
    gn_buf_put(b, key, key_len);
    gn_buf_be(b, val_len, 4);
    gn_buf_put(b, val, val_len);
    gn_buf_be(b, (uint64_t)expires, 8);
}

void gn_rec_end(gn_buf *b, size_t mark)
{
    size_t body = b->len - mark - 8;
    uint32_t crc = gn_port_crc32(0, b->data + mark + 8, body);
    for (int i = 0; i < 4; i++) {
        b->data[mark + (size_t)i] = (unsigned char)(body >> (24 - 8 * i));
        b->data[mark + 4 + (size_t)i] = (unsigned char)(crc >> (24 - 8 * i));
    }
}

int gn_entry_next(gn_entry_iter *it, const unsigned char **key, size_t *key_len,
                  const unsigned char **val, size_t *val_len, int64_t *expires)
{
    size_t left = (size_t)(it->end - it->at);
    if (left < 4)
        return -1;
    size_t kl = (size_t)gn_get_be(it->at, 4);
    if (left - 4 < kl || left - 4 - kl < 4)
        return -1;
    size_t vl = (size_t)gn_get_be(it->at + 4 + kl, 4);
    if (left - 8 - kl < vl || left - 8 - kl - vl < 8)
        return -1;
    *key = it->at + 4;
    *key_len = kl;
    *val = it->at + 8 + kl;
    *val_len = vl;
    *expires = (int64_t)gn_get_be(it->at + 8 + kl + vl, 8);
    it->at += 16 + kl + vl;
    return 0;
}

/* Parses a record body; 0, or -1 if it is malformed. */
static int parse_body(const unsigned char *p, size_t n, gn_record *r)
{
    memset(r, 0, sizeof *r);
    if (n < 3)
        return -1;
    r->op = p[0];
    r->name_len = (size_t)gn_get_be(p + 1, 2);
    if (n - 3 < r->name_len)
        return -1;
    r->name = (const char *)p + 3;
    const unsigned char *f = p + 3 + r->name_len, *end = p + n;
    size_t left = (size_t)(end - f);
    switch (r->op) {
    case GN_REC_OPEN:
        if (left != 9)
            return -1;
        r->ordered = f[0];
        r->max_size = gn_get_be(f + 1, 8);
        return 0;
    case GN_REC_DROP:
    case GN_REC_CLEAR:
        return left == 0 ? 0 : -1;
    case GN_REC_PUT: {
        gn_entry_iter it = {f, end};
        if (gn_entry_next(&it, &r->key, &r->key_len, &r->val, &r->val_len, &r->expires))
            return -1;
        return it.at == end ? 0 : -1;
    }
    case GN_REC_DEL:
        if (left < 4 || left - 4 != gn_get_be(f, 4))
            return -1;
        r->key = f + 4;
        r->key_len = left - 4;
        return 0;
    case GN_REC_RESTORE:
        if (left < 9)
            return -1;
        r->ordered = f[0];
        r->max_size = gn_get_be(f + 1, 8);
        f += 9;
        left -= 9;
        /* fall through */
    case GN_REC_MANY: {
        if (left < 4)
            return -1;
        r->count = (uint32_t)gn_get_be(f, 4);
        r->entries = f + 4;
        r->entries_len = left - 4;
        /* check every entry now: applying never meets a bad one */
        gn_entry_iter it = {r->entries, end};
        const unsigned char *k, *v;
        size_t kl, vl;
        int64_t x;
        for (uint32_t i = 0; i < r->count; i++)
            if (gn_entry_next(&it, &k, &kl, &v, &vl, &x))
                return -1;
        return it.at == end ? 0 : -1;
    }
    case GN_REC_END:
        if (left != 8)
            return -1;
        r->records = gn_get_be(f, 8);
        return 0;
    default:
        return -1;
    }
}

/* ------------------------------------------------------------------------ */
/* Files                                                                     */

struct gn_durable {
    char *dir;
    int sync;
    int lock_fd;
    int journal_fd;
    uint64_t gen;           /* the journal's generation */
    uint64_t journal_bytes; /* in the file */
    uint64_t snapshot_bytes;
    int unsynced; /* written bytes not yet fsynced */
    int sync_inflight;
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

/* Walks the records of a file after its 12-byte header. Returns the
 * offset where valid records end. */
static size_t walk_records(const unsigned char *p, size_t n, gn_apply_fn apply, void *ctx,
                           uint64_t *records, int *saw_end)
{
    size_t at = 12;
    *records = 0;
    *saw_end = 0;
    while (n - at >= 8) {
        size_t len = (size_t)gn_get_be(p + at, 4);
        uint32_t crc = (uint32_t)gn_get_be(p + at + 4, 4);
        if (n - at - 8 < len || gn_port_crc32(0, p + at + 8, len) != crc)
            break;
        gn_record r;
        if (parse_body(p + at + 8, len, &r))
            break;
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

gn_durable *gn_durable_open(const char *dir, int sync, gn_apply_fn apply, void *ctx,
                            uint64_t *dropped, char *err, size_t errlen)
{
    gn_durable *d = calloc(1, sizeof *d);
    if (!d)
        abort();
    d->dir = strdup(dir);
    d->sync = sync;
    d->journal_fd = d->lock_fd = d->snap_fd = -1;
    *dropped = 0;
    char *p = NULL;

    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
        goto fail;
    }
    p = path_of(d, "LOCK");
    d->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    free(p);
    p = NULL;
    if (d->lock_fd < 0) {
        snprintf(err, errlen, "cannot open %s/LOCK: %s", dir, strerror(errno));
        goto fail;
    }
    /* a program still closing on this directory: wait for it, a while */
    for (int tries = 0; flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0; tries++) {
        if (tries == 100) {
            snprintf(err, errlen, "locked");
            goto fail;
        }
        usleep(50 * 1000);
    }

    /* the snapshot: all of it or an error */
    uint64_t snap_gen = 0;
    unsigned char *data;
    size_t len;
    p = path_of(d, "snapshot.gns");
    if (read_file(p, &data, &len) == 0) {
        uint64_t records;
        int saw_end = 0;
        if (len < 12 || memcmp(data, "GNP1", 4) != 0 ||
            walk_records(data, len, apply, ctx, &records, &saw_end) != len || !saw_end) {
            free(data);
            snprintf(err, errlen, "corrupt_snapshot");
            goto fail;
        }
        snap_gen = gn_get_be(data + 4, 8);
        d->snapshot_bytes = len;
        free(data);
    } else if (errno != ENOENT) {
        snprintf(err, errlen, "cannot read %s: %s", p, strerror(errno));
        goto fail;
    }
    free(p);
    p = path_of(d, "snapshot.tmp");
    unlink(p); /* a compaction cut short */
    free(p);
    p = NULL;

    /* the journals of that generation and later, in order */
    uint64_t gens[1024];
    size_t ngens = 0;
    DIR *dh = opendir(dir);
    if (!dh) {
        snprintf(err, errlen, "cannot list %s: %s", dir, strerror(errno));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(dh))) {
        uint64_t g;
        char tail[8];
        if (sscanf(de->d_name, "journal.%" SCNu64 ".%7s", &g, tail) == 2 &&
            strcmp(tail, "gnj") == 0) {
            if (g < snap_gen) {
                char *old = journal_path(d, g);
                unlink(old);
                free(old);
            } else if (ngens < sizeof gens / sizeof gens[0]) {
                gens[ngens++] = g;
            }
        }
    }
    closedir(dh);
    qsort(gens, ngens, sizeof gens[0], cmp_u64);
    for (size_t i = 0; i < ngens; i++) {
        p = journal_path(d, gens[i]);
        if (read_file(p, &data, &len) < 0) {
            snprintf(err, errlen, "cannot read %s: %s", p, strerror(errno));
            goto fail;
        }
        uint64_t records;
        int saw_end;
        size_t good = 12;
        if (len >= 12 && memcmp(data, "GNJ1", 4) == 0)
            good = walk_records(data, len, apply, ctx, &records, &saw_end);
        free(data);
        if (good < len) {
            *dropped += len - (good < len ? good : len);
            /* cut the torn tail, so appends follow the last good record */
            if (truncate(p, (off_t)(good <= len ? good : 0)) < 0) {
                snprintf(err, errlen, "cannot truncate %s: %s", p, strerror(errno));
                goto fail;
            }
        }
        free(p);
        p = NULL;
    }

    /* append to the newest journal, or start one */
    d->gen = ngens ? gens[ngens - 1] : (snap_gen ? snap_gen : 1);
    p = journal_path(d, d->gen);
    d->journal_fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (d->journal_fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", p, strerror(errno));
        goto fail;
    }
    struct stat st;
    fstat(d->journal_fd, &st);
    if (st.st_size < 12) {
        if (ftruncate(d->journal_fd, 0) < 0 || write_header(d->journal_fd, "GNJ1", d->gen) < 0 ||
            fsync(d->journal_fd) < 0 || fsync_dir(d) < 0) {
            snprintf(err, errlen, "cannot write %s: %s", p, strerror(errno));
            goto fail;
        }
        st.st_size = 12;
    }
    d->journal_bytes = (uint64_t)st.st_size;
    free(p);
    return d;
fail:
    free(p);
    gn_durable_close(d);
    return NULL;
}

void gn_durable_close(gn_durable *d)
{
    if (!d)
        return;
    if (d->journal_fd >= 0) {
        gn_durable_commit(d);
        fsync(d->journal_fd);
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
        return 0;
    if (write_all(d->journal_fd, d->journal.data, d->journal.len) < 0)
        return -1;
    d->journal_bytes += d->journal.len;
    d->journal.len = 0;
    d->unsynced = 1;
    if (d->sync == 0) /* GN_SYNC_ALWAYS */
        return gn_durable_sync_now(d);
    return 0;
}

int gn_durable_sync_now(gn_durable *d)
{
    if (!d->unsynced)
        return 0;
    if (fdatasync(d->journal_fd) < 0)
        return -1;
    d->unsynced = 0;
    return 0;
}

int gn_durable_sync_begin(gn_durable *d)
{
    if (!d->unsynced || d->sync_inflight)
        return -1;
    d->unsynced = 0;
    d->sync_inflight = 1;
    return d->journal_fd;
}

void gn_durable_sync_done(gn_durable *d)
{
    d->sync_inflight = 0;
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
    if (gn_durable_commit(d) < 0 || fdatasync(d->journal_fd) < 0)
        return -1;
    uint64_t next = d->gen + 1;
    char *jp = journal_path(d, next);
    int fd = open(jp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    free(jp);
    if (fd < 0)
        return -1;
    if (write_header(fd, "GNJ1", next) < 0 || fsync(fd) < 0) {
        close(fd);
        return -1;
    }
    char *sp = path_of(d, "snapshot.tmp");
    d->snap_fd = open_new(sp);
    free(sp);
    if (d->snap_fd < 0 || write_header(d->snap_fd, "GNP1", next) < 0) {
        close(fd);
        return -1;
    }
    fsync_dir(d);
    close(d->journal_fd);
    d->journal_fd = fd;
    d->gen = next;
    d->journal_bytes = 12;
    d->unsynced = 0;
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
    for (size_t at = 0; at + 8 <= records->len; at += 8 + (size_t)gn_get_be(records->data + at, 4))
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
        for (uint64_t g = d->snap_gen; g-- > 0;) {
            char *jp = journal_path(d, g);
            int gone = unlink(jp);
            free(jp);
            if (gone < 0 && g + 1 < d->snap_gen)
                break; /* older ones went at an earlier compaction */
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
    d->snapshot_bytes = d->snap_written;
    return 0;
}
