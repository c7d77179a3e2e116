/*
 * The native mailbox: the queue of requests owned by one server process.
 *
 * Two lanes, `normal` (casts) and `high` (priority casts and calls), each a
 * FIFO holding at most `capacity` requests. A request is copied into the
 * environment of the chunk that holds it, so the sender's heap is never
 * referenced; a chunk, with its environment and every term in it, is freed
 * once all its items are taken, so one environment is allocated per
 * GN_CHUNK_ITEMS requests, not per request. The owner takes the high lane
 * first.
 *
 * Delivery. A normal cast to an idle server (both lanes empty, no wake
 * pending, no direct cast in flight, nobody blocked) is sent directly as
 * {'$gen_cast', Request}, exactly as GenServer.cast would, and counted in
 * `inflight` until the owner acks it. Otherwise the request is queued, and
 * the *sender* wakes the owner with one '$gn_wake' message if no wake is
 * pending (`signaled`). Because the sender sends the wake, it lands in the
 * owner's process mailbox before any message the sender sends afterwards;
 * the owner drains until the lanes are empty (the take that empties them
 * clears `signaled`) or, when process messages are waiting, up to what is
 * queued at that moment. So whatever a process queued before it sent a
 * message is handled before that message, system messages included.
 *
 * A normal call is not queued (it travels as a gen_server call); it is only
 * admitted against the normal lane's capacity, under the same policy.
 *
 * Overflow, when a lane is full: `reject` refuses the new request; `drop_newest`
 * discards it; `drop_oldest` discards the lane's oldest request (a dropped
 * high-lane call is handed back to the sender, which tells its caller);
 * `block` parks the sender in a FIFO of waiters, admitted in arrival order as
 * room appears (their casts are queued for them) and released with `closed`
 * if the owner dies. While anyone waits, newcomers wait behind them.
 *
 * keep_on_crash: a `keep` mailbox survives its owner's exit (closed, out of
 * the registry, lanes intact) until a new owner adopts it or it is discarded;
 * calls queued before an adoption are skipped by the new owner (each item
 * carries the `epoch` it was queued in).
 *
 * Locks: `mb->lock` protects everything in a gn_mailbox (`signaled` is an
 * atomic so that it can also be read as a hint). No code holds a registry
 * lock and a mailbox lock at once.
 *
 * Lifetime: the registry holds one resource reference per live mailbox. The
 * owner's exit fires the monitor's down callback, which closes the mailbox,
 * releases blocked senders, hands the queued items to the reaper (unless
 * `keep`) and drops the registry's reference, all in O(1) whatever the
 * queue holds.
 */
#include <string.h>

#include "mailbox.h"
#include "registry.h"

#define GN_CHUNK_ITEMS 256
#define GN_NORMAL 0
#define GN_HIGH 1

typedef enum { GN_REJECT, GN_DROP_NEWEST, GN_DROP_OLDEST, GN_BLOCK } gn_overflow;

typedef struct gn_item {
    ERL_NIF_TERM term; /* in the chunk's env */
    uint64_t seq;      /* order of arrival, over both lanes */
    uint32_t epoch;
    uint32_t is_call;
} gn_item;

typedef struct gn_chunk {
    struct gn_chunk *next;
    ErlNifEnv *env;      /* allocated with the chunk's first item */
    unsigned head, tail; /* items[head..tail) are live */
    gn_item items[GN_CHUNK_ITEMS];
} gn_chunk;

typedef struct gn_lane {
    gn_chunk *first, *last;
    size_t len;
} gn_lane;

/* The senders with requests in the normal lane, and the sequence number of
 * each one's last: when a process message waits, the owner drains only up to
 * the last request its sender queued (a sender that queued nothing waits for
 * nobody). Open addressing over the raw pid; an entry whose request has been
 * taken is stale and may be overwritten. Bounded: when full of live entries,
 * `overflow` makes every sender count as having queued up to the newest. */
#define GN_SENDERS 1024
typedef struct gn_sender {
    uint64_t key; /* the pid term's bits */
    uint64_t seq;
    uint32_t gen; /* a slot whose gen is not the table's is empty */
} gn_sender;

typedef struct gn_waiter {
    struct gn_waiter *next;
    ErlNifPid pid;
    ErlNifEnv *env; /* holds tag and item */
    ERL_NIF_TERM tag;
    ERL_NIF_TERM item; /* 0 for a call waiting to be admitted */
    int lane;
    int is_call;
} gn_waiter;

typedef struct gn_mailbox {
    ErlNifMutex *lock;
    ErlNifPid owner;
    ErlNifMonitor monitor;
    uint64_t reg_hash;
    int closed;   /* no live owner */
    int keep;     /* keep_on_crash */
    int signaled; /* atomic: a wake is on its way to, or being handled by, the owner */
    uint32_t epoch;
    uint64_t inflight; /* direct casts sent and not yet acked by the owner */
    gn_lane lanes[2];
    size_t capacity; /* per lane; SIZE_MAX for infinity */
    gn_overflow overflow;
    gn_waiter *wait_head, *wait_tail;
    size_t waiting;
    size_t waiting_lane[2];
    uint64_t next_seq;
    gn_sender *senders;   /* GN_SENDERS slots, allocated on first use */
    uint32_t senders_gen; /* bumped to empty the table in O(1) */
    size_t senders_used;
    int senders_overflow;
    uint64_t accepted; /* atomic: an unbounded mailbox admits calls without the lock */
    uint64_t rejected, dropped;
    size_t max_length;
} gn_mailbox;

static ErlNifResourceType *gn_mailbox_rtype;

/* ------------------------------------------------------------------------ */
/* Lanes                                                                     */

/* Appends a copy of `term` to the lane. Call with mb->lock held. Returns 0
 * when out of memory, leaving the lane unchanged. */
static int gn_lane_push(gn_lane *lane, ERL_NIF_TERM term, uint64_t seq, uint32_t epoch, int is_call)
{
    gn_chunk *c = lane->last;
    if (!c || c->tail == GN_CHUNK_ITEMS) {
        gn_chunk *n = gn_alloc(sizeof(*n));
        if (!n)
            return 0;
        n->next = NULL;
        n->env = NULL;
        n->head = n->tail = 0;
        if (c)
            c->next = n;
        else
            lane->first = n;
        lane->last = n;
        c = n;
    }
    if (!c->env && !(c->env = enif_alloc_env()))
        return 0;
    gn_item *item = &c->items[c->tail++];
    item->term = enif_make_copy(c->env, term);
    item->seq = seq;
    item->epoch = epoch;
    item->is_call = (uint32_t)is_call;
    lane->len++;
    return 1;
}

/* Unlinks the head item and returns a pointer to it, valid until the chunks
 * pushed on *done are freed (after unlocking). Call with mb->lock held and
 * the lane non-empty. */
static gn_item *gn_lane_pop(gn_lane *lane, gn_chunk **done)
{
    gn_chunk *c = lane->first;
    gn_item *item = &c->items[c->head++];
    lane->len--;
    /* A used-up chunk goes, unless it is the tail chunk with room left
     * (requeued chunks in front can be partly filled). */
    if (c->head == c->tail && (c->tail == GN_CHUNK_ITEMS || c->next)) {
        lane->first = c->next;
        if (!lane->first)
            lane->last = NULL;
        c->next = *done;
        *done = c;
    }
    return item;
}

/* Frees a chain of chunks and every term in them. */
static void gn_chunks_free(void *arg)
{
    gn_chunk *c = arg;
    while (c) {
        gn_chunk *next = c->next;
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
    lane->first = lane->last = NULL;
    lane->len = 0;
}

static size_t gn_queued(const gn_mailbox *mb)
{
    return mb->lanes[GN_NORMAL].len + mb->lanes[GN_HIGH].len;
}

static void gn_note_length(gn_mailbox *mb)
{
    size_t len = gn_queued(mb);
    if (len > mb->max_length)
        mb->max_length = len;
}

/* The sequence number of the normal lane's oldest request; requests of a
 * sender entry below it are all taken. */
static uint64_t gn_normal_head_seq(const gn_mailbox *mb)
{
    const gn_chunk *c = mb->lanes[GN_NORMAL].first;
    return mb->lanes[GN_NORMAL].len ? c->items[c->head].seq : mb->next_seq;
}

static uint64_t gn_sender_key(const ErlNifPid *pid)
{
    return (uint64_t)pid->pid;
}

static size_t gn_sender_slot(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)(key & (GN_SENDERS - 1));
}

/* Records that `pid` queued request `seq` in the normal lane. Call with
 * mb->lock held. */
static void gn_note_sender(gn_mailbox *mb, const ErlNifPid *pid, uint64_t seq)
{
    if (mb->senders_overflow)
        return;
    if (!mb->senders) {
        if (!(mb->senders = gn_alloc(GN_SENDERS * sizeof(gn_sender)))) {
            mb->senders_overflow = 1;
            return;
        }
        memset(mb->senders, 0, GN_SENDERS * sizeof(gn_sender));
        mb->senders_gen = 1;
    }
    uint32_t gen = mb->senders_gen;
    uint64_t key = gn_sender_key(pid), head = gn_normal_head_seq(mb);
    size_t i = gn_sender_slot(key), reuse = GN_SENDERS;
    for (size_t n = 0; n < GN_SENDERS; n++, i = (i + 1) & (GN_SENDERS - 1)) {
        gn_sender *e = &mb->senders[i];
        if (e->gen != gen)
            break;
        if (e->key == key) {
            e->seq = seq;
            return;
        }
        if (reuse == GN_SENDERS && e->seq < head)
            reuse = i;
    }
    if (reuse == GN_SENDERS && mb->senders[i].gen != gen && mb->senders_used < GN_SENDERS * 3 / 4) {
        reuse = i;
        mb->senders_used++;
    }
    if (reuse == GN_SENDERS) {
        mb->senders_overflow = 1;
        return;
    }
    mb->senders[reuse].key = key;
    mb->senders[reuse].seq = seq;
    mb->senders[reuse].gen = gen;
}

/* The sequence number of the last normal-lane request `pid` queued that is
 * still queued, or 0 if none. Call with mb->lock held. */
static uint64_t gn_sender_last(const gn_mailbox *mb, const ErlNifPid *pid)
{
    if (!mb->senders || mb->senders_used == 0)
        return 0;
    uint64_t key = gn_sender_key(pid), head = gn_normal_head_seq(mb), found = 0;
    size_t i = gn_sender_slot(key);
    for (size_t n = 0; n < GN_SENDERS; n++, i = (i + 1) & (GN_SENDERS - 1)) {
        const gn_sender *e = &mb->senders[i];
        if (e->gen != mb->senders_gen)
            break;
        /* a reused slot may leave an older duplicate further on */
        if (e->key == key && e->seq >= head && e->seq > found)
            found = e->seq;
    }
    return found;
}

/* With the normal lane empty, every entry is stale: start afresh. */
static void gn_senders_reset_if_empty(gn_mailbox *mb)
{
    if (mb->lanes[GN_NORMAL].len == 0 && mb->senders_used > 0) {
        if (++mb->senders_gen == 0) { /* wrapped: slots of gen 0 would look live */
            memset(mb->senders, 0, GN_SENDERS * sizeof(gn_sender));
            mb->senders_gen = 1;
        }
        mb->senders_used = 0;
        mb->senders_overflow = 0;
    }
}

/* ------------------------------------------------------------------------ */
/* Blocked senders                                                           */

/* Messages to send once mb->lock is released. */
typedef struct gn_outbox {
    gn_waiter *released; /* waiters to tell {Tag, Result}, then free */
    ERL_NIF_TERM result; /* ok (admitted) or closed */
} gn_outbox;

static void gn_waiter_free(gn_waiter *w)
{
    if (w->env)
        enif_free_env(w->env);
    gn_free(w);
}

static void gn_outbox_flush(ErlNifEnv *caller_env, gn_outbox *out)
{
    gn_waiter *w = out->released;
    while (w) {
        gn_waiter *next = w->next;
        ERL_NIF_TERM msg = enif_make_tuple2(w->env, w->tag, out->result);
        enif_send(caller_env, &w->pid, w->env, msg); /* fails only if the sender died */
        gn_waiter_free(w);
        w = next;
    }
    out->released = NULL;
}

/* Moves waiters whose lane has room, in arrival order, into the lanes; they
 * are to be told `ok`. Stops at the first that does not fit. Call with
 * mb->lock held. */
static void gn_admit_waiters(gn_mailbox *mb, gn_outbox *out)
{
    gn_waiter **tail = &out->released;
    while (*tail)
        tail = &(*tail)->next;
    /* In arrival order within each lane; a waiter that does not fit holds up
     * those behind it in its own lane only. */
    int stuck[2] = {0, 0};
    gn_waiter **link = &mb->wait_head, *prev = NULL;
    while (*link) {
        gn_waiter *w = *link;
        gn_lane *lane = &mb->lanes[w->lane];
        if (stuck[w->lane] || lane->len >= mb->capacity ||
            (w->item && !gn_lane_push(lane, w->item, mb->next_seq, mb->epoch, w->is_call))) {
            stuck[w->lane] = 1;
            prev = w;
            link = &w->next;
            continue;
        }
        if (w->item) {
            if (w->lane == GN_NORMAL)
                gn_note_sender(mb, &w->pid, mb->next_seq);
            mb->next_seq++;
        }
        *link = w->next;
        if (mb->wait_tail == w)
            mb->wait_tail = prev;
        mb->waiting--;
        mb->waiting_lane[w->lane]--;
        __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
        w->next = NULL;
        *tail = w;
        tail = &w->next;
    }
    gn_note_length(mb);
}

/* Detaches every waiter, to be told `closed`. Call with mb->lock held. */
static void gn_release_waiters(gn_mailbox *mb, gn_outbox *out)
{
    out->released = mb->wait_head;
    out->result = gn_am_closed;
    mb->wait_head = mb->wait_tail = NULL;
    mb->waiting = 0;
    mb->waiting_lane[GN_NORMAL] = mb->waiting_lane[GN_HIGH] = 0;
}

/* ------------------------------------------------------------------------ */
/* Resource callbacks                                                        */

static void gn_mailbox_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_mailbox *mb = obj;
    gn_lane_discard(&mb->lanes[GN_NORMAL]);
    gn_lane_discard(&mb->lanes[GN_HIGH]);
    gn_waiter *w = mb->wait_head;
    while (w) {
        gn_waiter *next = w->next;
        gn_waiter_free(w);
        w = next;
    }
    if (mb->senders)
        gn_free(mb->senders);
    if (mb->lock)
        enif_mutex_destroy(mb->lock);
}

static void gn_mailbox_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)pid;
    (void)mon;
    gn_mailbox *mb = obj;
    gn_outbox out = {NULL, gn_am_closed};
    enif_mutex_lock(mb->lock);
    mb->closed = 1;
    mb->inflight = 0;
    __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    if (!mb->keep) {
        gn_lane_discard(&mb->lanes[GN_NORMAL]);
        gn_lane_discard(&mb->lanes[GN_HIGH]);
    }
    gn_release_waiters(mb, &out);
    enif_mutex_unlock(mb->lock);
    gn_outbox_flush(env, &out);
    /* may drop the last reference: last */
    gn_registry_remove(gn_current->registry, mb->reg_hash, mb);
}

int gn_mailbox_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags)
{
    ErlNifResourceTypeInit init = {
        .dtor = gn_mailbox_dtor,
        .stop = NULL,
        .down = gn_mailbox_down,
    };
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "gn_mailbox", &init, flags, NULL);
    if (!rt)
        return 0;
    gn_mailbox_rtype = rt;
    priv->mailbox_rtype = rt;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Owner side                                                                */

static int gn_get_overflow(ErlNifEnv *env, ERL_NIF_TERM t, gn_overflow *out)
{
    (void)env;
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
    if (enif_monitor_process(env, mb, &mb->owner, &mb->monitor) != 0)
        return 0;
    if (!gn_registry_insert(gn_current->registry, mb->reg_hash, &mb->owner, mb)) {
        enif_demonitor_process(env, mb, &mb->monitor);
        return 0;
    }
    return 1;
}

/* mailbox_new(Capacity, Overflow, Keep) -> Ref | {error, already_exists}
 * Creates the calling process's mailbox and registers it under its pid.
 * Capacity: pos_integer() | infinity; Overflow: reject | drop_newest |
 * drop_oldest | block; Keep: boolean(). */
ERL_NIF_TERM gn_mailbox_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifUInt64 cap;
    gn_overflow overflow;
    size_t capacity;
    if (enif_is_identical(argv[0], gn_am_infinity))
        capacity = SIZE_MAX;
    else if (enif_get_uint64(env, argv[0], &cap) && cap > 0)
        capacity = (size_t)cap;
    else
        return enif_make_badarg(env);
    if (!gn_get_overflow(env, argv[1], &overflow))
        return enif_make_badarg(env);
    if (!enif_is_identical(argv[2], gn_am_true) && !enif_is_identical(argv[2], gn_am_false))
        return enif_make_badarg(env);

    gn_mailbox *mb = enif_alloc_resource(gn_mailbox_rtype, sizeof(*mb));
    if (!mb)
        return enif_raise_exception(env, enif_make_atom(env, "enomem"));
    memset(mb, 0, sizeof(*mb));
    mb->capacity = capacity;
    mb->overflow = overflow;
    mb->next_seq = 1; /* 0: requests put back in front by requeue */
    mb->keep = enif_is_identical(argv[2], gn_am_true);
    mb->closed = 1; /* until owned: the destructor must not find it live */
    if (!(mb->lock = enif_mutex_create("gn_mailbox"))) {
        enif_release_resource(mb);
        return enif_raise_exception(env, enif_make_atom(env, "enomem"));
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

/* mailbox_take(Ref, Max, Upto) -> [Request]
 * Pops up to Max requests, the high lane first, then normal requests whose
 * sequence number is at most Upto (or all: Upto = infinity), then admits
 * blocked senders into the room made. Calls queued before the last adoption
 * are skipped. Fewer than Max means the lanes were emptied or Upto reached;
 * emptying both lanes clears `signaled`, so the next request wakes the
 * owner again. */
ERL_NIF_TERM gn_mailbox_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    unsigned max;
    ErlNifUInt64 upto = UINT64_MAX;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb || !enif_get_uint(env, argv[1], &max) || max == 0 || max > GN_MAILBOX_MAX_BATCH)
        return enif_make_badarg(env);
    if (!enif_is_identical(argv[2], gn_am_infinity) && !enif_get_uint64(env, argv[2], &upto))
        return enif_make_badarg(env);

    ERL_NIF_TERM batch[GN_MAILBOX_MAX_BATCH];
    gn_chunk *done = NULL;
    gn_outbox out = {NULL, gn_am_ok};
    unsigned n = 0;
    enif_mutex_lock(mb->lock);
    if (mb->closed) {
        enif_mutex_unlock(mb->lock);
        return enif_make_badarg(env);
    }
    for (int l = GN_HIGH; l >= GN_NORMAL; l--) {
        gn_lane *lane = &mb->lanes[l];
        while (n < max && lane->len > 0) {
            if (l == GN_NORMAL && lane->first->items[lane->first->head].seq > upto)
                break;
            gn_item *item = gn_lane_pop(lane, &done);
            if (item->is_call && item->epoch != mb->epoch) {
                /* its caller exited with the old owner */
                __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
                mb->dropped++;
            } else
                batch[n++] = enif_make_copy(env, item->term);
        }
    }
    /* Senders admitted into the room made may refill the lanes after the
     * owner saw a short batch: then the owner gets a wake, as from a sender. */
    int refilled = 0;
    if (mb->waiting) {
        size_t before = gn_queued(mb);
        gn_admit_waiters(mb, &out);
        refilled = gn_queued(mb) > before;
    }
    gn_senders_reset_if_empty(mb);
    if (gn_queued(mb) == 0)
        __atomic_store_n(&mb->signaled, 0, __ATOMIC_RELEASE);
    enif_mutex_unlock(mb->lock);
    gn_chunks_free(done);
    gn_outbox_flush(env, &out);
    if (refilled)
        enif_send(env, &mb->owner, NULL, gn_am_wake);
    enif_consume_timeslice(env, 1 + (int)(n / 32));
    return enif_make_list_from_array(env, batch, n);
}

/* mailbox_watermark(Ref, [Pid] | any) -> Seq | none
 * How far the owner must drain the normal lane before it handles process
 * messages from these senders: the last request any of them still has
 * queued; none if they have nothing queued. `any` (a sender unknown): the
 * newest request queued. */
ERL_NIF_TERM gn_mailbox_watermark_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    int any = enif_is_identical(argv[1], gn_am_any);
    if (!mb || (!any && !enif_is_list(env, argv[1])))
        return enif_make_badarg(env);
    uint64_t mark = 0;
    ERL_NIF_TERM head, tail = argv[1];
    enif_mutex_lock(mb->lock);
    if ((any || mb->senders_overflow) && mb->lanes[GN_NORMAL].len > 0) {
        mark = mb->next_seq - 1;
    } else if (!any) {
        ErlNifPid pid;
        while (enif_get_list_cell(env, tail, &head, &tail)) {
            if (!enif_get_local_pid(env, head, &pid))
                continue;
            uint64_t last = gn_sender_last(mb, &pid);
            if (last > mark)
                mark = last;
        }
    }
    enif_mutex_unlock(mb->lock);
    return mark ? enif_make_uint64(env, mark) : gn_am_none;
}

/* Which lane a request taken out goes back to: the high lane for the
 * {'$gn_high', {cast | call, ...}} wrappers GenNative puts there. */
static int gn_requeue_lane(ErlNifEnv *env, ERL_NIF_TERM item, int *is_call)
{
    const ERL_NIF_TERM *outer, *inner;
    int arity;
    *is_call = 0;
    if (!enif_get_tuple(env, item, &arity, &outer) || arity < 2)
        return GN_NORMAL;
    if (arity == 3 && enif_is_identical(outer[0], gn_am_gn_call)) {
        *is_call = 1;
        return GN_NORMAL;
    }
    if (arity != 2 || !enif_is_identical(outer[0], gn_am_gn_high) ||
        !enif_get_tuple(env, outer[1], &arity, &inner) || arity < 1)
        return GN_NORMAL;
    *is_call = enif_is_identical(inner[0], gn_am_call);
    return GN_HIGH;
}

/* mailbox_requeue(Ref, [Request]) -> ok
 * Puts requests the owner took out but did not handle (its batch, when it
 * crashed) back at the front of their lanes, in order, so that a
 * keep_on_crash mailbox hands them to the next owner. At most one batch. */
ERL_NIF_TERM gn_mailbox_requeue_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    unsigned n;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb || !enif_get_list_length(env, argv[1], &n) || n > GN_MAILBOX_MAX_BATCH)
        return enif_make_badarg(env);
    gn_lane front[2] = {{NULL, NULL, 0}, {NULL, NULL, 0}};
    ERL_NIF_TERM head, tail = argv[1];
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        int is_call;
        int l = gn_requeue_lane(env, head, &is_call);
        /* sequence 0: before everything still queued */
        if (!gn_lane_push(&front[l], head, 0, mb->epoch, is_call)) {
            gn_chunks_free(front[GN_NORMAL].first);
            gn_chunks_free(front[GN_HIGH].first);
            return enif_raise_exception(env, enif_make_atom(env, "enomem"));
        }
    }
    enif_mutex_lock(mb->lock);
    for (int l = GN_NORMAL; l <= GN_HIGH; l++) {
        gn_lane *lane = &mb->lanes[l];
        if (!front[l].first)
            continue;
        front[l].last->next = lane->first;
        if (!lane->last)
            lane->last = front[l].last;
        lane->first = front[l].first;
        lane->len += front[l].len;
    }
    gn_note_length(mb);
    enif_mutex_unlock(mb->lock);
    return gn_am_ok;
}

/* mailbox_ack(Ref) -> ok
 * The owner has handled a direct cast. Also called for casts that did not
 * come through the mailbox (GenServer.cast), hence the floor at zero:
 * `inflight` only steers casts between the direct and the queued path. */
ERL_NIF_TERM gn_mailbox_ack_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    gn_mailbox *mb = gn_owned_mailbox(env, argv[0]);
    if (!mb)
        return enif_make_badarg(env);
    enif_mutex_lock(mb->lock);
    if (mb->inflight > 0)
        mb->inflight--;
    enif_mutex_unlock(mb->lock);
    return gn_am_ok;
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
        enif_mutex_unlock(mb->lock);
        return gn_am_not_ready;
    }
    if (!mb->closed || !mb->keep || !gn_take_ownership(env, mb)) {
        enif_mutex_unlock(mb->lock);
        return enif_make_badarg(env);
    }
    mb->closed = 0;
    mb->epoch++;
    size_t len = gn_queued(mb);
    /* The new owner wakes itself if anything waits. */
    __atomic_store_n(&mb->signaled, len > 0, __ATOMIC_RELEASE);
    enif_mutex_unlock(mb->lock);
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

/* Returns the live mailbox of `pid_term`, locked, or NULL if it has none. */
static gn_mailbox *gn_lock_target(ErlNifEnv *env, ERL_NIF_TERM pid_term, ErlNifPid *pid)
{
    if (!enif_get_local_pid(env, pid_term, pid))
        return NULL;
    gn_mailbox *mb = gn_cached_mailbox(pid_term, pid);
    if (!mb)
        return NULL;
    enif_mutex_lock(mb->lock);
    if (!mb->closed)
        return mb;
    enif_mutex_unlock(mb->lock);
    gn_cache_forget(mb);
    if (!(mb = gn_cached_mailbox(pid_term, pid)))
        return NULL;
    enif_mutex_lock(mb->lock);
    return mb; /* possibly closed: the caller drops the request */
}

/* mailbox_send(Pid, Item, Lane, Kind) ->
 *     ok | {ok, DroppedCall} | not_native | full | dropped | busy | {wait, Tag}
 *
 * Lane: normal | high. Kind: cast (Item is queued), call (Item, a call
 * wrapped by GenNative, is queued; never sent directly) or admit (a normal
 * call asks for room, nothing is queued; under overflow: block it gets
 * `busy` and comes back as a queued call, so that blocked calls keep their
 * order). See the top of this file for what each result means. */
ERL_NIF_TERM gn_mailbox_send_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
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
    gn_charge_enqueue(env);

    if (admit) {
        /* A call to an unbounded mailbox only needs counting. */
        if (!enif_get_local_pid(env, argv[0], &pid))
            return gn_am_not_native;
        gn_mailbox *mb = gn_cached_mailbox(argv[0], &pid);
        if (!mb)
            return gn_am_not_native;
        if (mb->capacity == SIZE_MAX) {
            __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
            return gn_am_ok;
        }
    }

    gn_mailbox *mb = gn_lock_target(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_native;
    if (mb->closed) {
        enif_mutex_unlock(mb->lock);
        return gn_am_ok; /* dropped, as send/2 to a dead process is */
    }

    enum { QUEUED, DIRECT, WAKE, NONE } how = NONE;
    ERL_NIF_TERM result = gn_am_ok;
    gn_chunk *done = NULL;
    gn_lane *lane = &mb->lanes[lane_ix];
    ErlNifPid self;
    enif_self(env, &self);

    if (mb->waiting_lane[lane_ix] > 0 || lane->len >= mb->capacity) {
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
                 * that accepted + rejected + dropped is what was sent. */
                gn_item *old = gn_lane_pop(lane, &done);
                __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
                mb->dropped++;
                if (old->is_call && old->epoch == mb->epoch)
                    result = enif_make_tuple2(env, gn_am_ok, enif_make_copy(env, old->term));
            }
            break;
        case GN_BLOCK: {
            if (admit) {
                result = gn_am_busy;
                goto unlock;
            }
            gn_waiter *w = gn_alloc(sizeof(*w));
            ErlNifEnv *wenv = w ? enif_alloc_env() : NULL;
            if (!wenv) {
                if (w)
                    gn_free(w);
                enif_mutex_unlock(mb->lock);
                return enif_raise_exception(env, enif_make_atom(env, "enomem"));
            }
            w->next = NULL;
            w->pid = self;
            w->env = wenv;
            w->tag = enif_make_ref(wenv);
            w->item = enif_make_copy(wenv, argv[1]);
            w->lane = lane_ix;
            w->is_call = is_call;
            if (mb->wait_tail)
                mb->wait_tail->next = w;
            else
                mb->wait_head = w;
            mb->wait_tail = w;
            mb->waiting++;
            mb->waiting_lane[lane_ix]++;
            result = enif_make_tuple2(env, gn_am_wait, enif_make_copy(env, w->tag));
            goto unlock;
        }
        }
    }

    __atomic_fetch_add(&mb->accepted, 1, __ATOMIC_RELAXED);
    if (admit)
        goto unlock;
    int signaled = __atomic_load_n(&mb->signaled, __ATOMIC_RELAXED);
    /* keep_on_crash mailboxes queue everything: a direct cast would die in
     * the process mailbox with its owner. */
    if (lane_ix == GN_NORMAL && !is_call && !mb->keep && !signaled && gn_queued(mb) == 0 &&
        mb->inflight == 0) {
        mb->inflight++;
        how = DIRECT;
    } else {
        uint64_t seq = mb->next_seq;
        if (!gn_lane_push(lane, argv[1], seq, mb->epoch, is_call)) {
            __atomic_fetch_sub(&mb->accepted, 1, __ATOMIC_RELAXED);
            enif_mutex_unlock(mb->lock);
            gn_chunks_free(done);
            return enif_raise_exception(env, enif_make_atom(env, "enomem"));
        }
        mb->next_seq++;
        if (lane_ix == GN_NORMAL)
            gn_note_sender(mb, &self, seq);
        gn_note_length(mb);
        how = QUEUED;
        if (!signaled) {
            __atomic_store_n(&mb->signaled, 1, __ATOMIC_RELEASE);
            how = WAKE;
        }
    }

unlock:
    enif_mutex_unlock(mb->lock);
    gn_chunks_free(done);
    /* Sent from the caller's environment, so it is ordered with the caller's
     * other messages to the owner; fails only if the owner died (dropped, as
     * with send/2). */
    if (how == DIRECT)
        enif_send(env, &pid, NULL, enif_make_tuple2(env, gn_am_gen_cast, argv[1]));
    else if (how == WAKE)
        enif_send(env, &pid, NULL, gn_am_wake);
    return result;
}

/* mailbox_cancel(Pid, Tag) -> cancelled | not_found
 * A blocked sender gives up; its request counts as rejected. not_found: it
 * was admitted or released already, and {Tag, Result} is on its way. */
ERL_NIF_TERM gn_mailbox_cancel_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ErlNifPid pid;
    if (!enif_is_pid(env, argv[0]) || !enif_is_ref(env, argv[1]))
        return enif_make_badarg(env);
    gn_mailbox *mb = gn_lock_target(env, argv[0], &pid);
    if (!mb)
        return gn_am_not_found;
    gn_waiter *found = NULL;
    for (gn_waiter **p = &mb->wait_head, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        if (enif_is_identical((*p)->tag, argv[1])) {
            found = *p;
            *p = found->next;
            if (mb->wait_tail == found)
                mb->wait_tail = prev;
            mb->waiting--;
            mb->waiting_lane[found->lane]--;
            mb->rejected++; /* it gave up: sent, never accepted */
            break;
        }
    }
    /* Those behind it may fit now. */
    gn_outbox out = {NULL, gn_am_ok};
    if (found && mb->waiting && !mb->closed)
        gn_admit_waiters(mb, &out);
    enif_mutex_unlock(mb->lock);
    gn_outbox_flush(env, &out);
    if (!found)
        return gn_am_not_found;
    gn_waiter_free(found);
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
    ERL_NIF_TERM keys[] = {gn_am_length,   gn_am_high_length, gn_am_capacity,
                           gn_am_overflow, gn_am_accepted,    gn_am_rejected,
                           gn_am_dropped,  gn_am_max_length,  gn_am_blocked_senders};
    ERL_NIF_TERM vals[] = {
        enif_make_uint64(env, mb->lanes[GN_NORMAL].len),
        enif_make_uint64(env, mb->lanes[GN_HIGH].len),
        mb->capacity == SIZE_MAX ? gn_am_infinity : enif_make_uint64(env, mb->capacity),
        gn_make_overflow(mb->overflow),
        enif_make_uint64(env, __atomic_load_n(&mb->accepted, __ATOMIC_RELAXED)),
        enif_make_uint64(env, mb->rejected),
        enif_make_uint64(env, mb->dropped),
        enif_make_uint64(env, mb->max_length),
        enif_make_uint64(env, mb->waiting),
    };
    enif_mutex_unlock(mb->lock);
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, sizeof(keys) / sizeof(keys[0]), &map);
    return map;
}
