/*
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
 * holds a registry lock and a mailbox lock at once.
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
 */
#include <string.h>
#include <time.h>

#include "mailbox.h"
#include "registry.h"

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

static ErlNifResourceType *gn_mailbox_rtype;
static ErlNifResourceType *gn_waiter_rtype;

static void gn_unlock(gn_mailbox *mb)
{
    __atomic_store_n(&mb->high_hint, mb->lanes[GN_HIGH].len, __ATOMIC_RELEASE);
    enif_mutex_unlock(mb->lock);
}

/* The lock-free path: message mode, unbounded. */
static int gn_lock_free(const gn_mailbox *mb)
{
    return !mb->queue && mb->capacity == SIZE_MAX;
}

/* ------------------------------------------------------------------------ */
/* Lanes                                                                     */

/* Microseconds, for costs only: clock_gettime() is a vDSO call, several
 * times cheaper than enif_monotonic_time() on the enqueue path. */
static uint64_t gn_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint16_t gn_cost_since(uint64_t t0)
{
    uint64_t us = gn_now_us() - t0;
    return us > UINT16_MAX ? UINT16_MAX : (uint16_t)us;
}

/* Whether copying `t` is small work: a walk that stops once it has seen
 * about `*budget` cells or `depth` levels, so O(budget) whatever the term.
 * What it cannot size cheaply (a fun's environment, a bignum, a bitstring
 * that is not a binary) counts as large. A binary over 64 bytes is
 * reference-counted: its copy shares the bytes. */
static int gn_term_small(ErlNifEnv *env, ERL_NIF_TERM t, long *budget, int depth)
{
    if (--*budget < 0 || depth == 0)
        return 0;
    switch (enif_term_type(env, t)) {
    case ERL_NIF_TERM_TYPE_ATOM:
    case ERL_NIF_TERM_TYPE_FLOAT:
    case ERL_NIF_TERM_TYPE_PID:
    case ERL_NIF_TERM_TYPE_PORT:
    case ERL_NIF_TERM_TYPE_REFERENCE:
        return 1;
    case ERL_NIF_TERM_TYPE_INTEGER: {
        ErlNifSInt64 i;
        ErlNifUInt64 u;
        return enif_get_int64(env, t, &i) || enif_get_uint64(env, t, &u);
    }
    case ERL_NIF_TERM_TYPE_BITSTRING: {
        ErlNifBinary bin;
        if (!enif_inspect_binary(env, t, &bin))
            return 0;
        if (bin.size <= 64)
            *budget -= (long)(bin.size / 8);
        return *budget >= 0;
    }
    case ERL_NIF_TERM_TYPE_TUPLE: {
        int arity;
        const ERL_NIF_TERM *elems;
        enif_get_tuple(env, t, &arity, &elems);
        for (int i = 0; i < arity; i++)
            if (!gn_term_small(env, elems[i], budget, depth - 1))
                return 0;
        return 1;
    }
    case ERL_NIF_TERM_TYPE_LIST: {
        ERL_NIF_TERM head;
        while (enif_get_list_cell(env, t, &head, &t))
            if (--*budget < 0 || !gn_term_small(env, head, budget, depth - 1))
                return 0;
        return enif_is_empty_list(env, t) || gn_term_small(env, t, budget, depth - 1);
    }
    case ERL_NIF_TERM_TYPE_MAP: {
        size_t size;
        enif_get_map_size(env, t, &size);
        if (size > (size_t)*budget)
            return 0;
        ErlNifMapIterator it;
        if (!enif_map_iterator_create(env, t, &it, ERL_NIF_MAP_ITERATOR_FIRST))
            return 0;
        ERL_NIF_TERM k, v;
        int small = 1;
        while (small && enif_map_iterator_get_pair(env, &it, &k, &v)) {
            small = gn_term_small(env, k, budget, depth - 1) &&
                    gn_term_small(env, v, budget, depth - 1);
            enif_map_iterator_next(env, &it);
        }
        enif_map_iterator_destroy(env, &it);
        return small;
    }
    default:
        return 0;
    }
}

/* A request whose copy may take longer than this many cells' worth (some
 * 10 us) is copied outside the lock, on a dirty scheduler. */
#define GN_SMALL_CELLS 2048
#define GN_SMALL_DEPTH 64
/* What a small request's copy is taken to cost, from the cells its walk
 * saw (a copy runs some 300 cells a microsecond here): timing each copy
 * would cost two clock reads per enqueue. */
#define GN_CELLS_PER_US 256

/* Appends `term` to the lane: the term itself if it lives in `own`, its
 * own env, else a copy; `cost` is what copying it out will cost (us). Call
 * with mb->lock held. Returns 0 when out of memory, leaving the lane
 * unchanged. */
static int gn_lane_push(gn_lane *lane, ERL_NIF_TERM term, ErlNifEnv *own, uint16_t cost,
                        uint64_t seq, uint32_t epoch, int is_call)
{
    gn_chunk *c = lane->last;
    if (!c || c->tail == GN_CHUNK_ITEMS) {
        gn_chunk *n = gn_alloc(sizeof(*n));
        if (!n)
            return 0;
        if (!(n->env = enif_alloc_env())) {
            gn_free(n);
            return 0;
        }
        n->next = NULL;
        n->head = n->tail = 0;
        if (c) {
            c->next = n;
        } else {
            lane->first = lane->cur = n;
            lane->pos = 0;
        }
        lane->last = n;
        c = n;
    }
    gn_item *item = &c->items[c->tail++];
    item->own = own;
    item->term = own ? term : enif_make_copy(c->env, term);
    item->cost = cost;
    item->seq = seq;
    item->epoch = epoch;
    item->is_call = (uint8_t)is_call;
    item->dead = 0;
    lane->len++;
    return 1;
}

/* The next item to take, or NULL if none is queued. Moves the cursor past
 * used-up chunks and past dead items (a rewind leaves them behind it). */
static gn_item *gn_lane_peek(gn_lane *lane)
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
static void gn_lane_take(gn_lane *lane)
{
    lane->pos++;
    lane->len--;
}

/* Retires items taken, oldest first, up to the cursor: dead ones, and at
 * most `live` live ones (SIZE_MAX: all). Chunks used up go on *done, to be
 * freed after unlocking. O(items retired). Call with mb->lock held. */
static void gn_lane_retire(gn_lane *lane, size_t live, gn_chunk **done)
{
    gn_chunk *c;
    while ((c = lane->first)) {
        if (c->head == GN_CHUNK_ITEMS) {
            lane->first = c->next;
            if (lane->cur == c) {
                lane->cur = c->next;
                lane->pos = 0;
            }
            if (!lane->first)
                lane->last = NULL;
            c->next = *done;
            *done = c;
            continue;
        }
        if (c == lane->cur && c->head == lane->pos)
            break;
        if (!c->items[c->head].dead) {
            if (live == 0)
                break;
            live--;
            lane->inflight--;
        }
        c->head++;
    }
}

/* Puts the items taken and not retired back in front of the queue, in
 * their order; O(1). Call with mb->lock held. */
static void gn_lane_rewind(gn_lane *lane)
{
    if (!lane->first)
        return;
    lane->cur = lane->first;
    lane->pos = lane->first->head;
    lane->len += lane->inflight;
    lane->inflight = 0;
}

/* Frees a chain of chunks and every term in them. */
static void gn_chunks_free(void *arg)
{
    gn_chunk *c = arg;
    while (c) {
        gn_chunk *next = c->next;
        for (unsigned i = 0; i < c->tail; i++)
            if (c->items[i].own)
                enif_free_env(c->items[i].own);
        if (c->env)
            enif_free_env(c->env);
        gn_free(c);
        c = next;
    }
}

/* Detaches the lane's chunks and hands them to the reaper; O(1). */
static void gn_lane_discard(gn_lane *lane)
{
    if (lane->first)
        gn_reap(gn_chunks_free, lane->first);
    memset(lane, 0, sizeof(*lane));
}

/* Normal requests waiting: queued, or in message mode sent and not acked. */
static size_t gn_normal_len(const gn_mailbox *mb)
{
    return mb->queue ? mb->lanes[GN_NORMAL].len : __atomic_load_n(&mb->sent, __ATOMIC_RELAXED);
}

static size_t gn_lane_len(const gn_mailbox *mb, int lane)
{
    return lane == GN_NORMAL ? gn_normal_len(mb) : mb->lanes[GN_HIGH].len;
}

static size_t gn_queued(const gn_mailbox *mb)
{
    return mb->lanes[GN_NORMAL].len + mb->lanes[GN_HIGH].len;
}

static void gn_note_max(gn_mailbox *mb, size_t len)
{
    size_t max = __atomic_load_n(&mb->max_length, __ATOMIC_RELAXED);
    while (len > max && !__atomic_compare_exchange_n(&mb->max_length, &max, len, 1,
                                                     __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* The longest queue so far, the one now included. */
static size_t gn_max_length(gn_mailbox *mb)
{
    gn_note_max(mb, gn_normal_len(mb) + mb->lanes[GN_HIGH].len);
    return __atomic_load_n(&mb->max_length, __ATOMIC_RELAXED);
}

/* Call with mb->lock held. */
static void gn_note_length(gn_mailbox *mb)
{
    gn_note_max(mb, gn_normal_len(mb) + mb->lanes[GN_HIGH].len);
}

/* ------------------------------------------------------------------------ */
/* Blocked senders                                                           */

/* What to send once mb->lock is released. */
typedef struct gn_outbox {
    gn_waiter *released, *last; /* waiters to tell {Tag, w->result} */
    ErlNifPid owner;            /* gets the requests of `deliver` waiters */
} gn_outbox;

#define GN_OUTBOX(mb)                                                                              \
    {                                                                                              \
        NULL, NULL, (mb)->owner                                                                    \
    }

static void gn_outbox_add(gn_outbox *out, gn_waiter *w)
{
    w->next = NULL;
    if (out->last)
        out->last->next = w;
    else
        out->released = w;
    out->last = w;
}

/* Tells a waiter unlinked from its FIFO its result, frees its request, and
 * drops the FIFO's reference. Any thread; no lock held. */
static void gn_waiter_tell(ErlNifEnv *caller_env, gn_waiter *w)
{
    /* A waiter admitted into a lane handed its env (and request) over. */
    ErlNifEnv *menv = w->env ? w->env : enif_alloc_env();
    if (menv) {
        ERL_NIF_TERM msg = enif_make_tuple2(menv, enif_make_resource(menv, w), w->result);
        enif_send(caller_env, &w->pid, menv, msg); /* fails only if the sender died */
        enif_free_env(menv);
    }
    w->env = NULL;
    enif_release_resource(w);
}

/* Sends what the outbox holds: the admitted requests to the owner, the
 * results to their senders; charged to the caller's timeslice, as a
 * message that wakes a process costs far more than the one reduction the
 * NIF call counts (1% of a timeslice, about 10 us, per 4 messages). */
static void gn_outbox_flush(ErlNifEnv *caller_env, gn_outbox *out)
{
    gn_waiter *w = out->released;
    int sent = 0;
    while (w) {
        gn_waiter *next = w->next;
        /* The request reaches the owner before its sender is told, so it
         * comes before anything the sender sends next, and blocked senders'
         * requests arrive in the order they are admitted. */
        if (w->deliver)
            enif_send(caller_env, &out->owner, NULL,
                      w->deliver == GN_AS_CAST ? enif_make_tuple2(w->env, gn_am_gen_cast, w->item)
                                               : w->item);
        sent += w->deliver ? 2 : 1;
        gn_waiter_tell(caller_env, w); /* may free w */
        w = next;
    }
    out->released = out->last = NULL;
    if (sent)
        enif_consume_timeslice(caller_env, sent / 4 > 99 ? 100 : 1 + sent / 4);
}

/* Takes a waiter out of its lane's FIFO; O(1). Call with mb->lock held. */
static void gn_wait_unlink(gn_mailbox *mb, gn_waiter *w)
{
    int l = w->lane;
    if (w->prev)
        w->prev->next = w->next;
    else
        mb->wait_head[l] = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        mb->wait_tail[l] = w->prev;
    w->prev = w->next = NULL;
    w->linked = 0;
    mb->waiting--;
    mb->waiting_lane[l]--;
}

/* Wakes the owner unless a wake is pending, on the paths other than a
 * sender's enqueue (admitted waiters, refills). Call with mb->lock held: the
 * wake is sent before the lock is released, so a sender that then finds
 * `signaled` set knows the wake is already in the owner's process mailbox,
 * ahead of anything it sends next (a wake sent after unlocking could be
 * overtaken by a message caused by a later sender's cast). */
static void gn_signal(ErlNifEnv *env, gn_mailbox *mb)
{
    if (__atomic_load_n(&mb->signaled, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&mb->signaled, 1, __ATOMIC_RELEASE);
    enif_send(env, &mb->owner, NULL, gn_am_wake);
}

/* What an admitted call is told: go ahead, with or without a deadline. */
static ERL_NIF_TERM gn_admitted(const gn_mailbox *mb)
{
    return mb->expire ? gn_am_deadline : gn_am_ok;
}

/* Admits waiters whose lane has room, in arrival order within each lane (a
 * waiter that does not fit holds up those behind it in its lane only): a
 * queued cast or priority call goes into its lane, a message-mode cast is
 * counted and handed to the outbox to deliver, and so is a normal call (its
 * whole {'$gen_call', From, Request} message), which takes no room. A lane
 * filled while no wake is pending gets one. At most GN_ADMIT_SLICE at once
 * (calls take no room, so any number of them could fit): if more could go,
 * the owner gets a wake, whose take admits the next slice. Returns whether
 * more could go. O(1 + admitted). Call with mb->lock held. */
#define GN_ADMIT_SLICE 128

static int gn_admit_waiters(ErlNifEnv *env, gn_mailbox *mb, gn_outbox *out)
{
    int pushed = 0, more = 0;
    unsigned admitted = 0;
    for (int l = GN_NORMAL; l <= GN_HIGH && !more; l++) {
        gn_waiter *w;
        while ((w = mb->wait_head[l])) {
            if (admitted == GN_ADMIT_SLICE) {
                more = 1;
                break;
            }
            int into_lane = l == GN_HIGH || (mb->queue && !w->is_call);
            if (gn_lane_len(mb, l) >= mb->capacity ||
                (into_lane && !gn_lane_push(&mb->lanes[l], w->item, w->env, w->cost, mb->next_seq,
                                            mb->epoch, w->is_call)))
                break;
            if (into_lane) {
                w->env = NULL; /* the item's now: no copy under the lock */
                mb->next_seq++;
                pushed = 1;
            } else if (w->is_call) {
                w->deliver = GN_AS_IS;
            } else {
                w->deliver = GN_AS_CAST;
                __atomic_fetch_add(&mb->sent, 1, __ATOMIC_RELAXED);
            }
            w->result = gn_am_ok;
            gn_wait_unlink(mb, w);
            __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
            gn_outbox_add(out, w);
            admitted++;
        }
    }
    gn_note_length(mb);
    if (pushed || more)
        gn_signal(env, mb);
    return more;
}

/* Tells every waiter of a released chain `closed`: a reaper job, so that
 * an owner's exit costs O(1) however many senders wait. */
static void gn_waiters_close(void *arg)
{
    gn_waiter *w = arg;
    while (w) {
        gn_waiter *next = w->next;
        w->result = gn_am_closed;
        gn_waiter_tell(NULL, w);
        w = next;
    }
}

/* Detaches every waiter, for the reaper to tell `closed`; O(1). A cancel
 * that comes later finds its waiter's generation gone. Call with mb->lock
 * held. */
static void gn_release_waiters(gn_mailbox *mb)
{
    gn_waiter *all = mb->wait_head[GN_NORMAL];
    if (mb->wait_tail[GN_NORMAL])
        mb->wait_tail[GN_NORMAL]->next = mb->wait_head[GN_HIGH];
    else
        all = mb->wait_head[GN_HIGH];
    if (all)
        gn_reap(gn_waiters_close, all);
    for (int l = GN_NORMAL; l <= GN_HIGH; l++) {
        mb->wait_head[l] = mb->wait_tail[l] = NULL;
        mb->waiting_lane[l] = 0;
    }
    mb->waiting = 0;
    mb->wait_gen++;
}

/* ------------------------------------------------------------------------ */
/* Resource callbacks                                                        */

static void gn_mailbox_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_mailbox *mb = obj;
    /* No waiter is linked: each holds a reference to mb while it is. */
    gn_lane_discard(&mb->lanes[GN_NORMAL]);
    gn_lane_discard(&mb->lanes[GN_HIGH]);
    if (mb->lock)
        enif_mutex_destroy(mb->lock);
}

static void gn_waiter_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_waiter *w = obj;
    if (w->env)
        enif_free_env(w->env);
    if (w->mb)
        enif_release_resource(w->mb);
}

/* The owner has exited: closes the mailbox, keeps its lanes or frees them,
 * releases its blocked senders and takes it out of the registry, in O(1)
 * whatever it holds. Call with mb->lock held; unlocks. */
static void gn_mailbox_close(gn_mailbox *mb)
{
    gn_chunk *done = NULL;
    __atomic_store_n(&mb->closed, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&mb->sent, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    if (!mb->keep) {
        gn_lane_discard(&mb->lanes[GN_NORMAL]);
        gn_lane_discard(&mb->lanes[GN_HIGH]);
    } else {
        /* What the owner took out and had not handled goes back in front,
         * for the next owner: a take hands out the high lane's items
         * first, and the owner acks them in that order. */
        size_t acked = __atomic_load_n(&mb->acked, __ATOMIC_ACQUIRE);
        size_t high = mb->lanes[GN_HIGH].inflight;
        gn_lane_retire(&mb->lanes[GN_HIGH], acked < high ? acked : high, &done);
        gn_lane_retire(&mb->lanes[GN_NORMAL], acked < high ? 0 : acked - high, &done);
        gn_lane_rewind(&mb->lanes[GN_HIGH]);
        gn_lane_rewind(&mb->lanes[GN_NORMAL]);
        __atomic_store_n(&mb->acked, 0, __ATOMIC_RELAXED);
    }
    gn_release_waiters(mb);
    gn_unlock(mb);
    if (done)
        gn_reap(gn_chunks_free, done);
    /* may drop the last reference: last */
    gn_registry_remove(mb->registry, mb->reg_hash, mb);
}

static void gn_mailbox_close_deferred(void *arg)
{
    gn_mailbox *mb = arg;
    enif_mutex_lock(mb->lock);
    gn_mailbox_close(mb);
    enif_release_resource(mb);
}

/* The down callback runs on a normal scheduler: it never waits for the
 * lock (a sender or the reaper may hold it), but hands the close to the
 * reaper thread then. */
static void gn_mailbox_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)env;
    (void)pid;
    (void)mon;
    gn_mailbox *mb = obj;
    if (enif_mutex_trylock(mb->lock) != 0) {
        enif_keep_resource(mb);
        gn_reap(gn_mailbox_close_deferred, mb);
        return;
    }
    gn_mailbox_close(mb);
}

int gn_mailbox_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags)
{
    ErlNifResourceTypeInit init = {
        .dtor = gn_mailbox_dtor,
        .stop = NULL,
        .down = gn_mailbox_down,
    };
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "gn_mailbox", &init, flags, NULL);
    ErlNifResourceTypeInit winit = {.dtor = gn_waiter_dtor, .stop = NULL, .down = NULL};
    ErlNifResourceType *wrt = enif_open_resource_type_x(env, "gn_waiter", &winit, flags, NULL);
    if (!rt || !wrt)
        return 0;
    gn_mailbox_rtype = rt;
    gn_waiter_rtype = wrt;
    priv->mailbox_rtype = rt;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Owner side                                                                */

static int gn_get_overflow(ERL_NIF_TERM t, gn_overflow *out)
{
    if (enif_is_identical(t, gn_am_reject))
        *out = GN_REJECT;
    else if (enif_is_identical(t, gn_am_drop_newest))
        *out = GN_DROP_NEWEST;
    else if (enif_is_identical(t, gn_am_drop_oldest))
        *out = GN_DROP_OLDEST;
    else if (enif_is_identical(t, gn_am_block))
        *out = GN_BLOCK;
    else
        return 0;
    return 1;
}

static ERL_NIF_TERM gn_make_overflow(gn_overflow o)
{
    switch (o) {
    case GN_REJECT:
        return gn_am_reject;
    case GN_DROP_NEWEST:
        return gn_am_drop_newest;
    case GN_DROP_OLDEST:
        return gn_am_drop_oldest;
    default:
        return gn_am_block;
    }
}

/* Makes the calling process the owner of mb: monitor and registry. */
static int gn_take_ownership(ErlNifEnv *env, gn_mailbox *mb)
{
    if (!enif_self(env, &mb->owner))
        return 0;
    mb->reg_hash = gn_registry_hash(enif_make_pid(env, &mb->owner));
    mb->registry = gn_current->registry;
    if (enif_monitor_process(env, mb, &mb->owner, &mb->monitor) != 0)
        return 0;
    if (!gn_registry_insert(mb->registry, mb->reg_hash, &mb->owner, mb)) {
        enif_demonitor_process(env, mb, &mb->monitor);
        return 0;
    }
    return 1;
}

/* Reads a list of the atoms queue, keep and expire. */
static int gn_get_flags(ErlNifEnv *env, ERL_NIF_TERM list, int *queue, int *keep, int *expire)
{
    ERL_NIF_TERM head, tail = list;
    *queue = *keep = *expire = 0;
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        if (enif_is_identical(head, gn_am_queue))
            *queue = 1;
        else if (enif_is_identical(head, gn_am_keep))
            *keep = 1;
        else if (enif_is_identical(head, gn_am_expire))
            *expire = 1;
        else
            return 0;
    }
    return enif_is_empty_list(env, tail);
}

/* mailbox_new(Capacity, Overflow, Flags) -> Ref | {error, already_exists}
 * Creates the calling process's mailbox and registers it under its pid.
 * Capacity: pos_integer() | infinity; Overflow: reject | drop_newest |
 * drop_oldest | block; Flags: a list of queue (queue mode), keep
 * (keep_on_crash, needs queue) and expire (drop_expired_calls).
 * drop_oldest needs queue mode: only a queued cast can be evicted. */
ERL_NIF_TERM gn_mailbox_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifUInt64 cap;
    gn_overflow overflow;
    size_t capacity;
    int queue, keep, expire;
    if (enif_is_identical(argv[0], gn_am_infinity))
        capacity = SIZE_MAX;
    else if (enif_get_uint64(env, argv[0], &cap) && cap > 0 && cap < SIZE_MAX)
        capacity = (size_t)cap;
    else
        return enif_make_badarg(env);
    if (!gn_get_overflow(argv[1], &overflow) || !gn_get_flags(env, argv[2], &queue, &keep, &expire))
        return enif_make_badarg(env);
    if ((keep || overflow == GN_DROP_OLDEST) && !queue)
        return enif_make_badarg(env);

    gn_mailbox *mb = enif_alloc_resource(gn_mailbox_rtype, sizeof(*mb));
    if (!mb)
        return enif_raise_exception(env, gn_am_enomem);
    memset(mb, 0, sizeof(*mb));
    mb->capacity = capacity;
    mb->overflow = overflow;
    mb->next_seq = 1;
    mb->queue = queue;
    mb->keep = keep;
    mb->hold = keep;
    mb->expire = expire;
    mb->closed = 1; /* until owned: the destructor must not find it live */
    if (!(mb->lock = enif_mutex_create("gn_mailbox"))) {
        enif_release_resource(mb);
        return enif_raise_exception(env, gn_am_enomem);
    }
    if (!gn_take_ownership(env, mb)) {
        enif_release_resource(mb);
        return enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
    }
    mb->closed = 0;
    ERL_NIF_TERM ref = enif_make_resource(env, mb);
    enif_release_resource(mb);
    return ref;
}

/* Resolves a mailbox handle the calling process owns; NULL (badarg) for a
 * foreign term, another process's mailbox, or one whose owner has exited. */
static gn_mailbox *gn_owned_mailbox(ErlNifEnv *env, ERL_NIF_TERM term)
{
    gn_mailbox *mb;
    ErlNifPid self;
    if (!enif_get_resource(env, term, gn_mailbox_rtype, (void **)&mb))
        return NULL;
    if (!enif_self(env, &self) || enif_compare_pids(&self, &mb->owner) != 0)
        return NULL;
    return mb;
}

/* A take copies its requests out of the lanes, under the lock, on the
 * owner's scheduler: it stops before a request that would take it past
 * this budget, and hands a request too big for a normal scheduler to a
 * dirty one. A copy out costs about what the copy in cost its sender,
 * noted in `cost` (timed for a large request, estimated from its size for
 * a small one): the budget goes by those (so that a batch of small
 * requests is never cut short because the thread was preempted), and
 * the time actually spent is charged to the owner's timeslice. */
#define GN_TAKE_BUDGET_US 250
#define GN_TAKE_DIRTY_US 600

static ERL_NIF_TERM gn_take(ErlNifEnv *env, const ERL_NIF_TERM argv[], int dirty);

static ERL_NIF_TERM gn_mailbox_take_dirty(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return gn_take(env, argv, 1);
}

/* mailbox_take(Ref, Max, Upto, Wake) -> [Request] | {more, [Request]}
 * Pops up to Max requests, the high lane first, then normal requests whose
 * sequence number is at most Upto (infinity: all; high: none), then admits
 * blocked senders into the room made. Calls queued before the last adoption
 * are skipped. A list of fewer than Max means the lanes were emptied or
 * Upto reached; {more, Requests}: the take stopped at its time budget
 * (large requests) with more to take, as if it had taken Max.
 * Wake = true when the owner is handling a wake: finding both lanes empty
 * then clears `signaled`, so that the next request wakes the owner again,
 * and lanes refilled by blocked senders get a wake of their own. In a hold
 * mailbox, the requests taken before are retired first (the owner takes
 * only once it has handled them), and those taken now are held. */
ERL_NIF_TERM gn_mailbox_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    return gn_take(env, argv, 0);
}

static ERL_NIF_TERM gn_take(ErlNifEnv *env, const ERL_NIF_TERM argv[], int dirty)
{
    unsigned max;
    ErlNifUInt64 upto = UINT64_MAX;
    int high_only = 0, wake;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb || !enif_get_uint(env, argv[1], &max) || max == 0 || max > GN_MAILBOX_MAX_BATCH)
        return enif_make_badarg(env);
    if (enif_is_identical(argv[2], gn_am_high))
        high_only = 1;
    else if (!enif_is_identical(argv[2], gn_am_infinity) && !enif_get_uint64(env, argv[2], &upto))
        return enif_make_badarg(env);
    if (enif_is_identical(argv[3], gn_am_true))
        wake = 1;
    else if (enif_is_identical(argv[3], gn_am_false))
        wake = 0;
    else
        return enif_make_badarg(env);

    ERL_NIF_TERM batch[GN_MAILBOX_MAX_BATCH];
    gn_chunk *done = NULL;
    gn_outbox out = GN_OUTBOX(mb);
    unsigned n = 0;
    int cut = 0, too_big = 0;
    ErlNifTime start = enif_monotonic_time(ERL_NIF_USEC);
    unsigned long costs = 0;
    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        gn_unlock(mb);
        return enif_make_badarg(env);
    }
    /* Message-mode casts are counted without the lock, and the longest
     * queue noted when the owner is about to shorten it: here, or at an ack. */
    gn_note_length(mb);
    if (mb->hold) {
        /* The owner takes again only once it has handled all it took. */
        gn_lane_retire(&mb->lanes[GN_HIGH], SIZE_MAX, &done);
        gn_lane_retire(&mb->lanes[GN_NORMAL], SIZE_MAX, &done);
        __atomic_store_n(&mb->acked, 0, __ATOMIC_RELAXED);
    }
    for (int l = GN_HIGH; l >= (high_only ? GN_HIGH : GN_NORMAL) && !cut && !too_big; l--) {
        gn_lane *lane = &mb->lanes[l];
        gn_item *item;
        while (n < max && (item = gn_lane_peek(lane))) {
            if (l == GN_NORMAL && item->seq > upto)
                break;
            if (n > 0 && costs + item->cost > GN_TAKE_BUDGET_US) {
                cut = 1;
                break;
            }
            if (n == 0 && !dirty && item->cost > GN_TAKE_DIRTY_US) {
                too_big = 1;
                break;
            }
            gn_lane_take(lane);
            if (item->is_call && item->epoch != mb->epoch) {
                /* its caller exited with the old owner */
                __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
                mb->dropped++;
                item->dead = 1;
                continue;
            }
            batch[n++] = enif_make_copy(env, item->term);
            costs += item->cost;
            if (mb->hold)
                lane->inflight++;
            else
                item->dead = 1;
        }
        if (!mb->hold)
            gn_lane_retire(lane, SIZE_MAX, &done);
    }
    if (too_big) {
        /* nothing taken: take again on a dirty scheduler */
        gn_unlock(mb);
        gn_chunks_free(done);
        return enif_schedule_nif(env, "mailbox_take", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 gn_mailbox_take_dirty, 4, argv);
    }
    if (mb->waiting) {
        /* The owner is draining: a lane it refills needs no wake unless the
         * drain ends with this take. */
        int was = __atomic_load_n(&mb->signaled, __ATOMIC_RELAXED);
        int more = gn_admit_waiters(env, mb, &out);
        if (wake && was && (gn_queued(mb) > 0 || more) && n < max && !cut)
            enif_send(env, &mb->owner, NULL, gn_am_wake);
    }
    if (wake && gn_queued(mb) == 0)
        __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    gn_unlock(mb);
    gn_chunks_free(done);
    gn_outbox_flush(env, &out);
    if (!dirty) {
        ErlNifTime spent = enif_monotonic_time(ERL_NIF_USEC) - start;
        int percent = 1 + (int)(n / 32) + (int)(spent / 10);
        enif_consume_timeslice(env, percent > 100 ? 100 : percent);
    }
    ERL_NIF_TERM list = enif_make_list_from_array(env, batch, n);
    return cut ? enif_make_tuple2(env, gn_am_more, list) : list;
}

/* mailbox_watermark(Ref) -> Seq | none
 * The newest request in the normal lane: what the owner drains up to before
 * it handles the process messages waiting now, since any of their senders
 * may have known of anything queued before. none: the lane is empty. */
ERL_NIF_TERM gn_mailbox_watermark_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb)
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    size_t len = mb->lanes[GN_NORMAL].len;
    uint64_t mark = mb->next_seq - 1;
    gn_unlock(mb);
    return len ? enif_make_uint64(env, mark) : gn_am_none;
}

/* Takes one off `sent`, not below zero: a cast sent with GenServer.cast was
 * never counted. Notes the longest queue on the way. */
static void gn_sent_dec(gn_mailbox *mb)
{
    size_t sent = __atomic_load_n(&mb->sent, __ATOMIC_RELAXED);
    gn_note_max(mb, sent + __atomic_load_n(&mb->high_hint, __ATOMIC_RELAXED));
    while (sent > 0 && !__atomic_compare_exchange_n(&mb->sent, &sent, sent - 1, 1, __ATOMIC_RELAXED,
                                                    __ATOMIC_RELAXED))
        ;
}

/* mailbox_high(Ref) -> boolean()
 * Whether priority requests wait: the owner asks before each call or other
 * message it handles. Reads a hint only, so it needs no lock and no owner
 * check; it is on the path of every call. */
ERL_NIF_TERM gn_mailbox_high_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb))
        return enif_make_badarg(env);
    return __atomic_load_n(&mb->high_hint, __ATOMIC_ACQUIRE) ? gn_am_true : gn_am_false;
}

/* mailbox_ack(Ref, What) -> ok | high
 * The owner is about to handle a process message, or has handled requests
 * it took. What: cast (a {'$gen_cast', _}: in message mode one fewer is
 * waiting, and a blocked sender may fit now), expired (a call whose caller
 * gave up, which the owner skips: it moves from accepted to expired), or N,
 * a count: the next N requests of its last take are handled (or skipped),
 * so that a keep_on_crash mailbox does not hand them out again if the
 * owner dies; lock-free. Returns high when priority requests wait, to be
 * handled first. */
ERL_NIF_TERM gn_mailbox_ack_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    unsigned handled;
    int cast = enif_is_identical(argv[1], gn_am_cast);
    int expired = enif_is_identical(argv[1], gn_am_expired);
    int count = !cast && !expired && enif_get_uint(env, argv[1], &handled);
    if (!mb || (!cast && !expired && !count))
        return enif_make_badarg(env);
    if (count) {
        /* Only the owner writes it; the down callback reads it after the
         * owner has exited, and the next take resets it. */
        if (mb->hold)
            __atomic_fetch_add(&mb->acked, handled, __ATOMIC_RELEASE);
    } else if (expired) {
        enif_mutex_lock(mb->lock);
        __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
        mb->expired++;
        gn_unlock(mb);
    } else if (cast && !mb->queue) {
        if (gn_lock_free(mb)) {
            gn_sent_dec(mb);
        } else {
            gn_outbox out = GN_OUTBOX(mb);
            enif_mutex_lock(mb->lock);
            gn_sent_dec(mb);
            if (mb->waiting && !mb->closed)
                gn_admit_waiters(env, mb, &out);
            gn_unlock(mb);
            gn_outbox_flush(env, &out);
        }
    }
    return __atomic_load_n(&mb->high_hint, __ATOMIC_ACQUIRE) ? gn_am_high : gn_am_ok;
}

/* mailbox_adopt(Ref) -> non_neg_integer() | not_ready
 * The calling process becomes the owner of a kept mailbox whose owner has
 * exited; returns how many requests wait in it. Calls queued for the old
 * owner will be skipped. not_ready: the old owner's exit has not reached
 * the mailbox yet. */
ERL_NIF_TERM gn_mailbox_adopt_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb))
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    if (!mb->closed && mb->keep) {
        gn_unlock(mb);
        return gn_am_not_ready;
    }
    if (!mb->closed || !mb->keep || !gn_take_ownership(env, mb)) {
        gn_unlock(mb);
        return enif_make_badarg(env);
    }
    __atomic_store_n(&mb->closed, 0, __ATOMIC_RELEASE);
    mb->epoch++;
    size_t len = gn_queued(mb);
    /* The new owner wakes itself if anything waits. */
    __atomic_store_n(&mb->signaled, len > 0, __ATOMIC_RELEASE);
    gn_unlock(mb);
    return enif_make_uint64(env, len);
}

/* mailbox_discard(Ref) -> ok
 * The mailbox is not to be kept: frees what it holds if its owner has
 * exited, or lets the owner's exit free it. */
ERL_NIF_TERM gn_mailbox_discard_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb))
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    mb->keep = 0;
    if (mb->closed) {
        gn_lane_discard(&mb->lanes[GN_NORMAL]);
        gn_lane_discard(&mb->lanes[GN_HIGH]);
    }
    gn_unlock(mb);
    return gn_am_ok;
}

/* mailbox_hold(Ref, Ms, Notify) -> ok (dirty I/O; a test hook, not API)
 * Holds the mailbox's lock for Ms milliseconds (at most 2000), telling
 * Notify `locked` once it has it and `unlocking` just before it lets go:
 * the only way to have the lock busy at a chosen moment, since every
 * critical section of the mailbox is O(1). The tests use it to show that
 * the owner-down callback never waits for the lock. */
ERL_NIF_TERM gn_mailbox_hold_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb;
    unsigned ms;
    ErlNifPid notify;
    if (!enif_get_resource(env, argv[0], gn_mailbox_rtype, (void **)&mb) ||
        !enif_get_uint(env, argv[1], &ms) || ms > 2000 || !enif_get_local_pid(env, argv[2], &notify))
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    enif_send(env, &notify, NULL, gn_am_locked);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    enif_send(env, &notify, NULL, gn_am_unlocking);
    enif_mutex_unlock(mb->lock);
    return gn_am_ok;
}

/* ------------------------------------------------------------------------ */
/* Sender side                                                               */

/* An enqueue costs far more than the one reduction a NIF call is charged,
 * most of all under contention; unreported, a producer's timeslice stretches
 * past a millisecond. Charge 1% of a timeslice (about 10 us) every 8 calls
 * per scheduler thread. */
static __thread unsigned gn_enqueue_calls;

static void gn_charge_enqueue(ErlNifEnv *env)
{
    if ((++gn_enqueue_calls & 7) == 0)
        enif_consume_timeslice(env, 1);
}

/* Each scheduler thread remembers the last mailbox it delivered to, with a
 * resource reference that keeps it allocated, so a producer casting to one
 * server in a loop skips the registry (a hash and a shared lock). A cached
 * mailbox found closed is dropped and looked up again (the pid may belong
 * to a new server). At most one reference per thread is held this way. */
static __thread gn_mailbox *gn_cache_mb;

static void gn_cache_forget(gn_mailbox *mb)
{
    if (gn_cache_mb == mb) {
        gn_cache_mb = NULL;
        enif_release_resource(mb);
    }
}

static gn_mailbox *gn_cached_mailbox(ERL_NIF_TERM pid_term, const ErlNifPid *pid)
{
    gn_mailbox *mb = gn_cache_mb;
    if (mb && enif_compare_pids(&mb->owner, pid) == 0)
        return mb;
    uint64_t hash = gn_registry_hash(pid_term);
    if (!(mb = gn_registry_lookup(gn_current->registry, hash, pid)))
        return NULL;
    /* The lookup's reference becomes the cache's. */
    if (gn_cache_mb)
        enif_release_resource(gn_cache_mb);
    gn_cache_mb = mb;
    return mb;
}

/* The mailbox of `pid_term`, live if it has one, not locked; NULL if none.
 * A closed one is returned only when the pid has no live mailbox either:
 * its requests are dropped, as send/2 to a dead process drops messages. */
static gn_mailbox *gn_target(ErlNifEnv *env, ERL_NIF_TERM pid_term, ErlNifPid *pid)
{
    if (!enif_get_local_pid(env, pid_term, pid))
        return NULL;
    gn_mailbox *mb = gn_cached_mailbox(pid_term, pid);
    if (!mb || !__atomic_load_n(&mb->closed, __ATOMIC_ACQUIRE))
        return mb;
    gn_cache_forget(mb);
    return gn_cached_mailbox(pid_term, pid);
}

/* Returns the mailbox of `pid_term` locked (possibly closed), or NULL. */
static gn_mailbox *gn_lock_target(ErlNifEnv *env, ERL_NIF_TERM pid_term, ErlNifPid *pid)
{
    gn_mailbox *mb = gn_target(env, pid_term, pid);
    if (mb)
        enif_mutex_lock(mb->lock);
    return mb;
}

/* Parks the caller as a blocked sender of `item`. Call with mb->lock held.
 * Returns {wait, Tag}, or 0 when out of memory. */
static ERL_NIF_TERM gn_block(ErlNifEnv *env, gn_mailbox *mb, const ErlNifPid *self,
                             ERL_NIF_TERM item, ErlNifEnv **own, uint16_t cost, int lane,
                             int is_call)
{
    gn_waiter *w = enif_alloc_resource(gn_waiter_rtype, sizeof(*w));
    if (!w)
        return 0;
    memset(w, 0, sizeof(*w));
    if (*own) {
        /* copied already, outside the lock */
        w->env = *own;
        *own = NULL;
        w->item = item;
        w->cost = cost;
    } else if ((w->env = enif_alloc_env())) {
        w->item = enif_make_copy(w->env, item);
        w->cost = cost;
    } else {
        enif_release_resource(w);
        return 0;
    }
    enif_keep_resource(mb);
    w->mb = mb;
    w->pid = *self;
    w->result = gn_am_ok;
    w->lane = lane;
    w->is_call = is_call;
    w->deliver = GN_KEEP;
    w->gen = mb->wait_gen;
    w->linked = 1;
    /* the allocation's reference is the FIFO's */
    w->prev = mb->wait_tail[lane];
    if (w->prev)
        w->prev->next = w;
    else
        mb->wait_head[lane] = w;
    mb->wait_tail[lane] = w;
    mb->waiting++;
    mb->waiting_lane[lane]++;
    return enif_make_tuple2(env, gn_am_wait, enif_make_resource(env, w));
}

/* mailbox_send(Pid, Item, Lane, Kind) ->
 *     ok | send | deadline | busy | {ok, DroppedCall} | not_native | full | dropped | {wait, Tag}
 *
 * Lane: normal | high. Kind: cast (Item is a normal cast, or a wrapped
 * priority cast), admit (a normal call asks for room; nothing is queued; it
 * is told ok, or deadline when the server skips calls whose caller gave up,
 * so the call must carry its deadline; under block, busy: it is to come
 * back as a call) or call (on the high lane, Item is a priority call
 * wrapped by GenNative, to queue; on the normal lane, Item is the
 * {'$gen_call', From, Request} message of a normal call, sent to the owner
 * from here as soon as there is room). A normal cast admitted in message
 * mode gets `send`: the caller sends {'$gen_cast', Item} itself, with send/2,
 * which costs less than enif_send. See the top of this file for what each
 * result means.
 *
 * A request the mailbox keeps (queued, or held by a blocked sender) is
 * copied into it. A large one is copied before the lock is taken, on a
 * dirty scheduler, so that the lock is held O(1) and no normal scheduler
 * copies more than a few thousand cells. */
static ERL_NIF_TERM gn_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[], int dirty);

ERL_NIF_TERM gn_mailbox_send_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    return gn_send(env, argc, argv, 0);
}

static ERL_NIF_TERM gn_mailbox_send_dirty(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    return gn_send(env, argc, argv, 1);
}

static ERL_NIF_TERM gn_send(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[], int dirty)
{
    ErlNifPid pid;
    int lane_ix, is_call, admit;
    if (!enif_is_pid(env, argv[0]))
        return enif_make_badarg(env);
    if (enif_is_identical(argv[2], gn_am_normal))
        lane_ix = GN_NORMAL;
    else if (enif_is_identical(argv[2], gn_am_high))
        lane_ix = GN_HIGH;
    else
        return enif_make_badarg(env);
    admit = enif_is_identical(argv[3], gn_am_admit);
    is_call = admit || enif_is_identical(argv[3], gn_am_call);
    if (!is_call && !enif_is_identical(argv[3], gn_am_cast))
        return enif_make_badarg(env);
    if (admit && lane_ix != GN_NORMAL)
        return enif_make_badarg(env);
    if (!dirty)
        gn_charge_enqueue(env);

    gn_mailbox *mb = gn_target(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_native;
    /* sent as a process message: a message-mode cast, a normal call */
    int direct = lane_ix == GN_NORMAL && (!mb->queue || is_call);

    if (direct && mb->capacity == SIZE_MAX) {
        /* Unbounded message mode: count, and send; no lock. */
        if (__atomic_load_n(&mb->closed, __ATOMIC_ACQUIRE))
            return gn_am_ok; /* dropped, as send/2 to a dead process is */
        __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
        if (admit)
            return gn_admitted(mb);
        if (is_call) {
            enif_send(env, &pid, NULL, argv[1]);
            return gn_am_ok;
        }
        __atomic_fetch_add(&mb->sent, 1, __ATOMIC_RELAXED);
        return gn_am_send;
    }

    /* What the mailbox may keep: a queued request, or a blocked sender's. */
    ERL_NIF_TERM item = argv[1];
    ErlNifEnv *own = NULL;
    uint16_t cost = 0;
    long budget = GN_SMALL_CELLS;
    if (!admit && (!direct || mb->overflow == GN_BLOCK) &&
        !gn_term_small(env, item, &budget, GN_SMALL_DEPTH)) {
        if (!dirty)
            return enif_schedule_nif(env, "mailbox_send", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                     gn_mailbox_send_dirty, argc, argv);
        if (!(own = enif_alloc_env()))
            return enif_raise_exception(env, gn_am_enomem);
        uint64_t t0 = gn_now_us();
        item = enif_make_copy(own, argv[1]);
        cost = gn_cost_since(t0);
    } else {
        cost = (uint16_t)((GN_SMALL_CELLS - budget) / GN_CELLS_PER_US);
    }

    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        gn_unlock(mb);
        if (own)
            enif_free_env(own);
        return gn_am_ok;
    }

    enum { SEND_AS_IS, WAKE, WAKE_TOO, NONE } how = NONE;
    ERL_NIF_TERM result = gn_am_ok;
    gn_chunk *done = NULL;
    gn_lane *lane = &mb->lanes[lane_ix];
    ErlNifPid self;
    enif_self(env, &self);

    if (mb->waiting_lane[lane_ix] > 0 || gn_lane_len(mb, lane_ix) >= mb->capacity) {
        switch (mb->overflow) {
        case GN_REJECT:
            mb->rejected++;
            result = gn_am_full;
            goto unlock;
        case GN_DROP_NEWEST:
            mb->dropped++;
            result = gn_am_dropped;
            goto unlock;
        case GN_DROP_OLDEST:
            if (lane->len > 0) {
                /* The evicted request moves from accepted to dropped, so
                 * that the counters add up to what was sent. */
                gn_item *old = gn_lane_peek(lane);
                gn_lane_take(lane);
                old->dead = 1;
                __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
                mb->dropped++;
                if (old->is_call && old->epoch == mb->epoch)
                    result = enif_make_tuple2(env, gn_am_ok, enif_make_copy(env, old->term));
                /* A held lane keeps it behind the cursor with the items
                 * in flight until they are retired. */
                if (!mb->hold)
                    gn_lane_retire(lane, SIZE_MAX, &done);
            }
            break;
        case GN_BLOCK:
            if (admit) {
                result = gn_am_busy;
                goto unlock;
            }
            result = gn_block(env, mb, &self, item, &own, cost, lane_ix, is_call);
            if (!result) {
                gn_unlock(mb);
                if (own)
                    enif_free_env(own);
                return enif_raise_exception(env, gn_am_enomem);
            }
            goto unlock;
        }
    }

    __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
    if (admit) {
        if (result == gn_am_ok)
            result = gn_admitted(mb);
        goto unlock;
    }
    if (direct) {
        if (!is_call) {
            __atomic_fetch_add(&mb->sent, 1, __ATOMIC_RELAXED);
            gn_note_length(mb);
        }
        if (is_call)
            how = SEND_AS_IS;
        else
            result = gn_am_send;
        goto unlock;
    }
    if (!gn_lane_push(lane, item, own, cost, mb->next_seq, mb->epoch, is_call)) {
        __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
        gn_unlock(mb);
        gn_chunks_free(done);
        if (own)
            enif_free_env(own);
        return enif_raise_exception(env, gn_am_enomem);
    }
    own = NULL; /* the item's now */
    mb->next_seq++;
    gn_note_length(mb);
    /* The wake goes out after unlocking, to keep the lock short on this
     * path. A sender that finds a wake pending but not sent yet sends one
     * too: its own wake, not the other's, must precede what it sends next. */
    if (!__atomic_load_n(&mb->signaled, __ATOMIC_RELAXED)) {
        __atomic_store_n(&mb->signaled, 1, __ATOMIC_RELEASE);
        __atomic_fetch_add(&mb->unsent, 1, __ATOMIC_RELAXED);
        how = WAKE;
    } else if (__atomic_load_n(&mb->unsent, __ATOMIC_ACQUIRE) > 0) {
        how = WAKE_TOO;
    }

unlock:
    gn_unlock(mb);
    gn_chunks_free(done);
    if (own) /* not kept: rejected, dropped, or sent as a message */
        enif_free_env(own);
    /* Sent from the caller's environment, so it is ordered with the caller's
     * other messages to the owner; fails only if the owner died (dropped, as
     * with send/2). */
    if (how == SEND_AS_IS)
        enif_send(env, &pid, NULL, argv[1]);
    else if (how == WAKE || how == WAKE_TOO)
        enif_send(env, &pid, NULL, gn_am_wake);
    if (how == WAKE)
        __atomic_fetch_sub(&mb->unsent, 1, __ATOMIC_RELEASE);
    return result;
}

/* mailbox_cancel(Pid, Tag) -> cancelled | not_found
 * A blocked sender gives up; its request counts as rejected. not_found: it
 * was admitted or released already, and {Tag, Result} is on its way. O(1)
 * (plus the waiters behind it it lets in). */
ERL_NIF_TERM gn_mailbox_cancel_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_waiter *w;
    if (!enif_is_pid(env, argv[0]) ||
        !enif_get_resource(env, argv[1], gn_waiter_rtype, (void **)&w))
        return enif_make_badarg(env);
    gn_mailbox *mb = w->mb;
    gn_outbox out = GN_OUTBOX(mb);
    enif_mutex_lock(mb->lock);
    int found = w->linked && w->gen == mb->wait_gen;
    if (found) {
        gn_wait_unlink(mb, w);
        mb->rejected++; /* it gave up: sent, never accepted */
        /* Those behind it may fit now. */
        if (mb->waiting && !mb->closed)
            gn_admit_waiters(env, mb, &out);
    }
    gn_unlock(mb);
    gn_outbox_flush(env, &out);
    if (!found)
        return gn_am_not_found;
    if (w->env)
        enif_free_env(w->env);
    w->env = NULL;
    enif_release_resource(w); /* the FIFO's reference */
    return gn_am_cancelled;
}

/* mailbox_info(Pid) -> map() | not_native
 * O(1), without a message to the owner. */
ERL_NIF_TERM gn_mailbox_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifPid pid;
    if (!enif_is_pid(env, argv[0]))
        return enif_make_badarg(env);
    gn_mailbox *mb = gn_lock_target(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_native;
    ERL_NIF_TERM keys[] = {gn_am_length,     gn_am_high_length,    gn_am_capacity, gn_am_overflow,
                           gn_am_accepted,   gn_am_rejected,       gn_am_dropped,  gn_am_expired,
                           gn_am_max_length, gn_am_blocked_senders};
    ERL_NIF_TERM vals[] = {
        enif_make_uint64(env, gn_normal_len(mb)),
        enif_make_uint64(env, mb->lanes[GN_HIGH].len),
        mb->capacity == SIZE_MAX ? gn_am_infinity : enif_make_uint64(env, mb->capacity),
        gn_make_overflow(mb->overflow),
        enif_make_uint64(env, __atomic_load_n(&mb->accepted, __ATOMIC_RELAXED)),
        enif_make_uint64(env, mb->rejected),
        enif_make_uint64(env, mb->dropped),
        enif_make_uint64(env, mb->expired),
        enif_make_uint64(env, gn_max_length(mb)),
        enif_make_uint64(env, mb->waiting),
    };
    gn_unlock(mb);
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, sizeof(keys) / sizeof(keys[0]), &map);
    return map;
}
