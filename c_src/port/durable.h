/*
 * The data directory: a journal of every acknowledged write and snapshots
 * of every store, so state survives a restart of the program or the VM.
 *
 *   DIR/LOCK              flock()ed while a program uses the directory
 *   DIR/snapshot.gns      "GNP1" | generation (8) | records ... | END record
 *   DIR/journal.<G>.gnj   "GNJ1" | generation (8) | records ...
 *
 * A record is: body length (4) | CRC32 of the body (4) | body, with the
 * body: op (1) | store name length (2) | name | op fields. Every record is
 * an idempotent assignment (put key = value, delete key, clear, drop,
 * restore-as-replace, open-if-absent): a counter update is journaled as the
 * value it produced. That makes snapshots "fuzzy": one is written a slice
 * at a time while writes go on, into a new generation, and loading it then
 * replaying every journal of its generation and later gives exactly the
 * state the program acknowledged.
 *
 * Once fdatasyncs have covered GN_SYNC_REC_EVERY more bytes, the next
 * commit starts with a SYNC record naming the offset that is on disk (a
 * clean stop writes one for any bytes more), so a load can tell a crash
 * tail from damage (at most that many synced bytes, at the end, count as
 * tail):
 *
 *   - a record that fails its CRC or runs past the end of the newest
 *     journal, past every offset a SYNC record says was synced, is a torn
 *     tail: it is dropped with everything after it (the bytes are logged)
 *     and the file is cut there;
 *   - a bad record before a synced offset, or anywhere in an older journal
 *     (each was synced whole before the next began), is corruption: the
 *     load fails ("corrupt_journal", with the byte range);
 *   - a journal whose header is not "GNJ1" and the generation of its name
 *     fails the load ("bad_journal_header"); it is left as it is;
 *   - the lowest journal names the snapshot it follows: generation G > 1
 *     exists only once a compaction to G began, and compactions delete
 *     journals only below a snapshot in place. Without a snapshot, a
 *     lowest journal above 1 (or with one, a lowest journal above its
 *     generation) fails the load ("missing_snapshot", "missing_journal").
 *
 * With sync always, the newest journal may end in zeros written ahead of
 * its records (GN_PREALLOC): they are no record, and a load cuts them
 * without counting them as a torn tail; a clean stop or a compaction's
 * rotation cuts them first.
 *
 * A snapshot must be whole: any bad record, or a missing END, is an error.
 * A journal holding only its header, neither the lowest nor the newest, is
 * deleted on load (a compaction cut short before any write); every other
 * journal is loaded, however many there are. Files are created with mode
 * 0600, and a journal is never created over an existing file.
 *
 * Any failed write or fdatasync of the journal makes the journal "failed"
 * for good: after EIO Linux may mark the pages clean, so a retry could
 * report success for data that is gone. The caller must stop acknowledging
 * and exit (fail-stop).
 */
#ifndef GN_PORT_DURABLE_H
#define GN_PORT_DURABLE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "record.h"

typedef struct gn_durable gn_durable;

typedef void (*gn_apply_fn)(void *ctx, const gn_record *r);

/* Why a load failed: `kind` is one of "corrupt_snapshot", "corrupt_journal"
 * (bytes [from, to) of `path` unreadable, before data that was synced),
 * "bad_journal_header", "missing_snapshot", "missing_journal", "locked" or
 * "io_error" (then `text` says what). */
typedef struct gn_load_error {
    const char *kind;
    char path[4096];
    uint64_t from, to;
    char text[512];
} gn_load_error;

/* Opens (creating) and locks the directory, loads the snapshot and replays
 * the journals through `apply`. NULL on error, described in `err`.
 * *dropped gets the bytes cut from a torn tail. */
gn_durable *gn_durable_open(const char *dir, int sync, gn_apply_fn apply, void *ctx,
                            uint64_t *dropped, gn_load_error *err);
void gn_durable_close(gn_durable *d);

/* The journal's buffer: records appended here reach the file at commit. */
gn_buf *gn_durable_journal(gn_durable *d);
/* Writes the buffered records; with sync always, fsyncs too. 0 or -1 (the
 * journal has failed). */
int gn_durable_commit(gn_durable *d);
/* For sync {interval, ms}: the descriptor to fdatasync when written bytes
 * wait for one and none is in flight, else -1. The caller runs fdatasync
 * off the loop thread and passes its result (0 or -errno) to sync_done,
 * which returns -1 if it failed. No rotation happens while one is in
 * flight, and sync_now must not be called then. */
int gn_durable_sync_begin(gn_durable *d);
int gn_durable_sync_done(gn_durable *d, int result);
int gn_durable_sync_inflight(const gn_durable *d);
/* fdatasync now, on this thread, if anything written waits for it. 0 or -1. */
int gn_durable_sync_now(gn_durable *d);
/* Whether a write or fdatasync of the journal failed; then `kind` is
 * "fsync_failed" or "journal_write_failed" and `text` says more. */
int gn_durable_failed(const gn_durable *d, const char **kind, const char **text);

/* Whether the journal has outgrown the snapshot (GN_COMPACT_FACTOR). */
int gn_durable_wants_compaction(const gn_durable *d);

/* Compaction: begin rotates to a new journal generation and opens the new
 * snapshot's temporary file; the caller writes records with
 * gn_durable_snap_write (in slices) and then runs gn_durable_snap_finish
 * (fsync, rename, unlink old journals: slow, for the thread pool) and
 * gn_durable_snap_done on the loop. */
int gn_durable_snap_begin(gn_durable *d); /* 0, -1 on error, -2: busy, try again */
int gn_durable_snap_write(gn_durable *d, gn_buf *records);
void gn_durable_snap_finish(gn_durable *d); /* any thread */
int gn_durable_snap_done(gn_durable *d);    /* 0, or -1 if the snapshot failed */
int gn_durable_snap_running(const gn_durable *d);

/* Synced bytes between SYNC records: a 27-byte record per commit would
 * grow a journal of small records by half with sync always. */
#define GN_SYNC_REC_EVERY 4096u

/* With sync always, the journal is written ahead with zeros, this many
 * bytes at a time (durable.c, preallocate); a crash tail that ends in at
 * least GN_PREALLOC_MIN_ZEROS zeros counts as dropped only up to them. */
#define GN_PREALLOC (1u << 20)
#define GN_PREALLOC_MIN_ZEROS 4096u

#define GN_COMPACT_FACTOR 2
#define GN_COMPACT_MIN_BYTES (4u << 20)

#endif
