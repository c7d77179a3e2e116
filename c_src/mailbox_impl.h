/*
 * The native mailbox's private header: the structs its files share, the
 * small helpers the enqueue and take paths inline, and what each file
 * offers the others. Nothing outside the mailbox's files includes it;
 * nif.c sees mailbox.h only.
 *
 * The native mailbox: the admission count, the priority lane and, in queue
 * mode, the queue of casts of one server process.
 *
 * Two modes, fixed when the mailbox is made:
 *
 *  - Message mode (the default). A normal cast is admitted here (counted in
 *    `sent` against `capacity`, under the overflow policy) and then travels
 *    as the process message {'$gen_cast', Request}, which the sender sends
 *    itself once this NIF has admitted it, so
 *    that its order with every other message is the VM's, exactly as for
 *    GenServer.cast. The owner acks each cast it handles (`sent` goes down).
 *    The normal lane stays empty.
 *  - Queue mode (drop_oldest, keep_on_crash, batches): normal casts wait in
 *    the normal lane, which the owner drains in batches; a queued cast
 *    cannot die with the process mailbox, can be evicted, and comes out in
 *    batches.
 *
 * In both modes the `high` lane holds priority casts and calls. A request
 * queued in an empty mailbox wakes the owner: the *sender* sends one
 * '$gn_wake' message if no wake is pending (`signaled`), so the wake lands
 * in the owner's process mailbox before any message sent after the request
 * was queued, by anyone: a sender that finds a wake pending but not yet
 * sent (`unsent`) sends one of its own. Only the owner, handling a wake, clears `signaled` (when it
 * finds both lanes empty), so at most one sender-sent wake is on its way.
 * The owner also looks at the high lane (`high_hint`) before each message it
 * handles, which is how a priority request overtakes what is already in the
 * process mailbox.
 *
 * A normal call is never queued: it travels as a gen_server call once it is
 * admitted against the normal lane's capacity, under the same policy, and
 * takes no room; under `block` a call that must wait comes back with its
 * whole message, which is sent to the owner when its turn comes.
 *
 * Overflow, when a lane is full: `reject` refuses the new request;
 * `drop_newest` discards it; `drop_oldest` (queue mode) discards the lane's
 * oldest request (a dropped high-lane call is handed back to the sender,
 * which tells its caller); `block` parks the sender in a FIFO of waiters,
 * admitted in arrival order as room appears (a cast is queued, or in message
 * mode sent to the owner, on its behalf, before the sender is told) and
 * released with `closed` if the owner dies. While anyone waits in a lane,
 * newcomers to that lane wait behind them.
 *
 * keep_on_crash: a `keep` mailbox survives its owner's exit (closed, out of
 * the registry, lanes intact) until a new owner adopts it or it is discarded;
 * calls queued before an adoption are skipped by the new owner (each item
 * carries the `epoch` it was queued in). Such a mailbox also `hold`s what
 * its owner takes: the items stay in their lane, behind the cursor, until
 * the owner acks them as handled (a lock-free count) or takes again; when
 * the owner dies, however it dies, the unacked ones go back in front in
 * O(1), so that no code of the dying process has to run.
 *
 * Counters: every request sent through here ends in exactly one of
 * `accepted`, `rejected`, `dropped`, `expired` (an evicted request moves from
 * accepted to dropped, a call whose caller gave up from accepted to expired).
 *
 * Locks: `mb->lock` protects everything in a gn_mailbox. An unbounded
 * message-mode mailbox admits casts and calls and takes acks without it:
 * `sent`, `accepted`, `max_length`, `closed` and the hints are atomics, and
 * the hints are refreshed from the locked fields by gn_unlock(). No code
 * holds a registry lock and a mailbox lock at once, except adopt, which
 * registers the new owner under mb->lock (mailbox, then registry; never
 * the other way round).
 *
 * Lifetime: the registry holds one resource reference per live mailbox. The
 * owner's exit fires the monitor's down callback, which closes the mailbox,
 * hands the blocked senders (to be told `closed`) and the queued items
 * (unless `keep`) to the reaper thread and drops the registry's reference,
 * all in O(1) whatever the queue holds. It only try-locks: if the lock is
 * busy, the whole close runs on the reaper thread instead, so that a
 * scheduler never waits for it there.
 *
 * Blocked senders: each is a resource (gn_waiter) linked in its lane's
 * doubly linked FIFO, and its resource term is the tag its sender waits
 * for, so cancelling one (mailbox_cancel) is O(1) and admitting them is
 * O(1 + admitted): each lane is served from its head and stops at the first
 * that does not fit. A waiter holds a reference to its mailbox.
 *
 * The files, each a concern (none calls "up" the list):
 *   mailbox_lane.c     a lane's chunks of items and its cursor: push, retire,
 *                      rewind, discard (peek and take are inline, here)
 *   mailbox_waiters.c  blocked senders: the FIFOs, admitting them into the
 *                      room made, releasing them, the outbox that tells them
 *   mailbox.c          the resources: types, callbacks (destructors, the
 *                      owner's exit), load; new, adopt and discard
 *   mailbox_owner.c    the owner's NIFs: take, watermark, high, ack, hold
 *   mailbox_send.c     the senders' NIFs: send, cancel, info
 *
 * Every function declared here that takes a gn_mailbox or one of its lanes
 * expects mb->lock held unless it says otherwise.
 */
#ifndef GN_MAILBOX_IMPL_H
#define GN_MAILBOX_IMPL_H

#include "mailbox.h"

#define GN_CHUNK_ITEMS 256
#define GN_NORMAL 0
#define GN_HIGH 1

typedef enum { GN_REJECT, GN_DROP_NEWEST, GN_DROP_OLDEST, GN_BLOCK } gn_overflow;

typedef struct gn_item {
    ERL_NIF_TERM term; /* in `own` if set, else in the chunk's env */
    ErlNifEnv *own; /* a large request's own env, copied outside the lock; freed with the chunk */
    uint64_t seq;   /* order of arrival, over both lanes */
    uint32_t epoch;
    uint8_t is_call;
    uint8_t dead;  /* taken and gone for good (evicted, skipped): never handed out again */
    uint16_t cost; /* microseconds a copy out will take: measured for a large request, estimated
                      from its size for a small one */
} gn_item;

typedef struct gn_chunk {
    struct gn_chunk *next;
    ErlNifEnv *env;      /* allocated with the chunk */
    unsigned head, tail; /* items[head..tail) are held */
    gn_item items[GN_CHUNK_ITEMS];
} gn_chunk;

/* A lane holds its items from the first chunk's head to the last chunk's
 * tail. The cursor (cur, pos) splits them: before it, items taken out but
 * not retired yet (`inflight` live ones, and dead ones); from it on, the
 * `len` items queued. Only a `hold` mailbox (keep_on_crash) keeps taken
 * items until the owner has handled them; the others retire them at once.
 * Every chunk but the last is full. */
typedef struct gn_lane {
    gn_chunk *first, *last;
    gn_chunk *cur; /* the chunk of the next item to take; NULL iff first is */
    unsigned pos;  /* its index in cur */
    size_t len;
    size_t inflight;
} gn_lane;

/* A blocked sender: a resource, whose term is the tag the sender waits
 * for ({Tag, Result}) and hands back to cancel, which so finds it in O(1).
 * While it waits, its lane's FIFO holds the reference it was allocated
 * with; whoever unlinks it sends the reply and releases that reference. */
typedef struct gn_waiter {
    struct gn_waiter *prev, *next; /* in its lane's FIFO, then in an outbox */
    struct gn_mailbox *mb;         /* a resource reference, for cancel */
    ErlNifPid pid;
    ErlNifEnv *env;      /* holds item; freed once the sender is told */
    ERL_NIF_TERM item;   /* the request */
    ERL_NIF_TERM result; /* an atom, once released */
    uint64_t gen;        /* mb->wait_gen when it blocked */
    int lane;
    int is_call;
    int deliver;   /* on release, send the owner: GN_AS_IS or GN_AS_CAST */
    uint16_t cost; /* as gn_item's */
    int linked;    /* in its lane's FIFO, unless that FIFO was released (gen) */
} gn_waiter;

enum { GN_KEEP = 0, GN_AS_IS, GN_AS_CAST };

typedef struct gn_mailbox {
    ErlNifMutex *lock;
    ErlNifPid owner;
    ErlNifMonitor monitor;
    uint64_t reg_hash;
    gn_registry *registry; /* the one it is registered in while owned */
    int closed;            /* atomic: no live owner */
    int keep;              /* keep_on_crash */
    int hold;              /* keep_on_crash: items taken are held until handled */
    int queue;             /* queue mode: normal casts wait in the normal lane */
    int expire;            /* drop_expired_calls: calls carry their deadline */
    int signaled;          /* atomic: a wake is on its way to, or being handled by, the owner */
    int unsent; /* atomic: senders that set `signaled` and have not sent their wake yet */
    uint32_t epoch;
    gn_lane lanes[2];
    size_t capacity; /* per lane; SIZE_MAX for infinity */
    gn_overflow overflow;
    gn_waiter *wait_head[2], *wait_tail[2]; /* per lane, doubly linked */
    uint64_t wait_gen;                      /* bumped when all are released */
    size_t waiting;
    size_t waiting_lane[2];
    size_t high_hint; /* atomic copy of lanes[GN_HIGH].len */
    size_t acked;     /* atomic; hold: items of the last take handled so far */
    uint64_t next_seq;
    uint64_t rejected, dropped, expired;
    /* What every message-mode cast writes, on a cache line of its own (the
     * fields above are mostly read). Padding, not _Alignas: a resource is
     * not allocated 64-byte aligned, and the compiler would assume it is. */
    char pad1[64];
    size_t sent;       /* atomic; message mode: casts sent as messages, not yet acked */
    uint64_t accepted; /* atomic */
    char pad2[64];
    /* The longest queue: noted by senders on the locked paths, and by the
     * owner whenever it is about to shorten the queue (an ack, a take),
     * since without the lock the queue only grows in between. */
    size_t max_length; /* atomic */
} gn_mailbox;

/* What to send once mb->lock is released. */
typedef struct gn_outbox {
    gn_waiter *released, *last; /* waiters to tell {Tag, w->result} */
    ErlNifPid owner;            /* gets the requests of `deliver` waiters */
} gn_outbox;

#define GN_OUTBOX(mb)                                                                              \
    {                                                                                              \
        NULL, NULL, (mb)->owner                                                                    \
    }

/* The resource types (mailbox.c): a gn_mailbox, a gn_waiter. */
extern ErlNifResourceType *gn_mailbox_rtype;
extern ErlNifResourceType *gn_waiter_rtype;

/* Releases mb->lock, refreshing the lock-free readers' hint first. */
static inline void gn_unlock(gn_mailbox *mb)
{
    __atomic_store_n(&mb->high_hint, mb->lanes[GN_HIGH].len, __ATOMIC_RELEASE);
    enif_mutex_unlock(mb->lock);
}

/* The lock-free path: message mode, unbounded. */
static inline int gn_lock_free(const gn_mailbox *mb)
{
    return !mb->queue && mb->capacity == SIZE_MAX;
}

/* ------------------------------------------------------------------------ */
/* Lanes (mailbox_lane.c; peek and take inline)                              */

/* Appends `term` to the lane: the term itself if it lives in `own`, its
 * own env, else a copy; `cost` is what copying it out will cost (us). Call
 * with mb->lock held. Returns 0 when out of memory, leaving the lane
 * unchanged. */
int gn_lane_push(gn_lane *lane, ERL_NIF_TERM term, ErlNifEnv *own, uint16_t cost, uint64_t seq,
                 uint32_t epoch, int is_call);

/* The next item to take, or NULL if none is queued. Moves the cursor past
 * used-up chunks and past dead items (a rewind leaves them behind it). */
static inline gn_item *gn_lane_peek(gn_lane *lane)
{
    while (lane->len > 0) {
        if (lane->pos == lane->cur->tail) {
            /* len > 0: a full chunk with more behind it */
            lane->cur = lane->cur->next;
            lane->pos = 0;
            continue;
        }
        gn_item *item = &lane->cur->items[lane->pos];
        if (!item->dead)
            return item;
        lane->pos++;
    }
    return NULL;
}

/* Takes the item gn_lane_peek() returned: it moves behind the cursor, where
 * it stays valid until retired. The caller counts it in `inflight` or marks
 * it dead. */
static inline void gn_lane_take(gn_lane *lane)
{
    lane->pos++;
    lane->len--;
}

/* Retires items taken, oldest first, up to the cursor: dead ones, and at
 * most `live` live ones (SIZE_MAX: all). Chunks used up go on *done, to be
 * freed after unlocking. O(items retired). Call with mb->lock held. */
void gn_lane_retire(gn_lane *lane, size_t live, gn_chunk **done);
/* Puts the items taken and not retired back in front of the queue, in
 * their order; O(1). Call with mb->lock held. */
void gn_lane_rewind(gn_lane *lane);
/* Frees a chain of chunks and every term in them. */
void gn_chunks_free(void *arg);
/* Detaches the lane's chunks and hands them to the reaper; O(1). */
void gn_lane_discard(gn_lane *lane);

/* ------------------------------------------------------------------------ */
/* Lengths                                                                   */

/* Normal requests waiting: queued, or in message mode sent and not acked. */
static inline size_t gn_normal_len(const gn_mailbox *mb)
{
    return mb->queue ? mb->lanes[GN_NORMAL].len : __atomic_load_n(&mb->sent, __ATOMIC_RELAXED);
}

static inline size_t gn_lane_len(const gn_mailbox *mb, int lane)
{
    return lane == GN_NORMAL ? gn_normal_len(mb) : mb->lanes[GN_HIGH].len;
}

static inline size_t gn_queued(const gn_mailbox *mb)
{
    return mb->lanes[GN_NORMAL].len + mb->lanes[GN_HIGH].len;
}

/* Notes `len` as the longest queue if it is. Lock-free. */
static inline void gn_note_max(gn_mailbox *mb, size_t len)
{
    size_t max = __atomic_load_n(&mb->max_length, __ATOMIC_RELAXED);
    while (len > max && !__atomic_compare_exchange_n(&mb->max_length, &max, len, 1,
                                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* Call with mb->lock held. */
static inline void gn_note_length(gn_mailbox *mb)
{
    gn_note_max(mb, gn_normal_len(mb) + mb->lanes[GN_HIGH].len);
}

/* ------------------------------------------------------------------------ */
/* Blocked senders (mailbox_waiters.c)                                       */

/* Sends what the outbox holds: the admitted requests to the owner, the
 * results to their senders; charged to the caller's timeslice, as a
 * message that wakes a process costs far more than the one reduction the
 * NIF call counts (1% of a timeslice, about 10 us, per 4 messages). */
void gn_outbox_flush(ErlNifEnv *caller_env, gn_outbox *out);
/* Takes a waiter out of its lane's FIFO; O(1). Call with mb->lock held. */
void gn_wait_unlink(gn_mailbox *mb, gn_waiter *w);
/* Admits waiters whose lane has room, in arrival order within each lane (a
 * waiter that does not fit holds up those behind it in its lane only): a
 * queued cast or priority call goes into its lane, a message-mode cast is
 * counted and handed to the outbox to deliver, and so is a normal call (its
 * whole {'$gen_call', From, Request} message), which takes no room. A lane
 * filled while no wake is pending gets one. At most GN_ADMIT_SLICE at once
 * (calls take no room, so any number of them could fit): if more could go,
 * the owner gets a wake, whose take admits the next slice. Returns whether
 * more could go. O(1 + admitted). Call with mb->lock held. */
int gn_admit_waiters(ErlNifEnv *env, gn_mailbox *mb, gn_outbox *out);
/* Detaches every waiter, for the reaper to tell `closed`; O(1). A cancel
 * that comes later finds its waiter's generation gone. Call with mb->lock
 * held. */
void gn_release_waiters(gn_mailbox *mb);

#endif
