/*
 * The store NIFs that read in key order: step (first, last, next, prev),
 * rank, at, to_list and range (by keys, or a slice by index). All but
 * to_list are for ordered sets only; to_list and range are dirty (their
 * work grows with the store).
 *
 * Locking: each takes the store's read lock with GN_VIEW (which first
 * purges what has expired) and holds it while it copies entries out.
 */
#include "store_access.h"

static ERL_NIF_TERM gn_entry(ErlNifEnv *env, const gn_node *n)
{
    return enif_make_tuple2(env, enif_make_copy(env, n->key), enif_make_copy(env, n->value));
}

/* store_step(Store, first | last | next | prev, Key) -> {ok, {K, V}} | error
 * Ordered sets only (the caller checks). */
ERL_NIF_TERM gn_store_step_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    int first = enif_is_identical(argv[1], gn_am_first),
        last = enif_is_identical(argv[1], gn_am_last);
    int next = enif_is_identical(argv[1], gn_am_next),
        prev = enif_is_identical(argv[1], gn_am_prev);
    if (!(first || last || next || prev))
        return enif_make_badarg(env);
    size_t cost = first || last ? 0 : gn_key_cost(env, argv[2], GN_INLINE_BYTES);
    if (gn_too_big(cost))
        return gn_go_dirty(env, gn_store_step_nif, argc, argv);
    if (!GN_VIEW_ORDERED(gn_store_step_nif, s, err))
        return err;
    gn_probe p = {.key = argv[2]};
    gn_node *found = NULL, *n = s->root;
    if (first || last) {
        while (n) {
            found = n;
            n = first ? n->left : n->right;
        }
    } else {
        while (n) {
            int c = gn_cmp(s, &p, n);
            if (next ? c < 0 : c > 0) {
                found = n;
                n = next ? n->left : n->right;
            } else {
                n = next ? n->right : n->left;
            }
        }
    }
    if (found && gn_too_big(cost + gn_entry_cost(found))) {
        gn_rw_runlock(s->lock);
        return gn_go_dirty(env, gn_store_step_nif, argc, argv);
    }
    cost += found ? gn_entry_cost(found) : 0;
    ERL_NIF_TERM result =
        found ? enif_make_tuple2(env, gn_am_ok, gn_entry(env, found)) : gn_am_error;
    gn_rw_runlock(s->lock);
    gn_charge(env, cost);
    return result;
}

/* store_rank(Store, Key) -> {ok, Index} | error (0-based) */
ERL_NIF_TERM gn_store_rank_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (gn_too_big(gn_key_cost(env, argv[1], GN_INLINE_BYTES)))
        return gn_go_dirty(env, gn_store_rank_nif, argc, argv);
    if (!GN_VIEW_ORDERED(gn_store_rank_nif, s, err))
        return err;
    gn_probe p = {.key = argv[1]};
    gn_node *n = s->root;
    size_t rank = 0;
    int found = 0;
    while (n) {
        int c = gn_cmp(s, &p, n);
        if (c == 0) {
            rank += gn_size(n->left);
            found = 1;
            break;
        }
        if (c < 0) {
            n = n->left;
        } else {
            rank += gn_size(n->left) + 1;
            n = n->right;
        }
    }
    gn_rw_runlock(s->lock);
    return found ? enif_make_tuple2(env, gn_am_ok, enif_make_uint64(env, rank)) : gn_am_error;
}

/* store_at(Store, Index) -> {ok, {K, V}} | error; a negative index counts
 * from the end. */
ERL_NIF_TERM gn_store_at_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifSInt64 i;
    if (!enif_get_int64(env, argv[1], &i))
        return enif_make_badarg(env);
    if (!GN_VIEW_ORDERED(gn_store_at_nif, s, err))
        return err;
    int64_t size = (int64_t)gn_size(s->root);
    if (i < 0)
        i += size;
    gn_node *n = (i >= 0 && i < size) ? gn_at(s->root, (size_t)i) : NULL;
    if (n && gn_too_big(gn_entry_cost(n))) {
        gn_rw_runlock(s->lock);
        return gn_go_dirty(env, gn_store_at_nif, argc, argv);
    }
    size_t cost = n ? gn_entry_cost(n) : 0;
    ERL_NIF_TERM result = n ? enif_make_tuple2(env, gn_am_ok, gn_entry(env, n)) : gn_am_error;
    gn_rw_runlock(s->lock);
    gn_charge(env, cost);
    return result;
}

/* In-order walk over [from, to] (bounds optional), up to `limit` entries,
 * skipping the first `skip`, consed in reverse onto *acc. */
typedef struct gn_walk {
    ErlNifEnv *env;
    const gn_store *s;
    gn_probe *from, *to;
    size_t skip, limit, taken;
    ERL_NIF_TERM acc;
} gn_walk;

static void gn_walk_tree(gn_walk *w, gn_node *n)
{
    while (n && w->taken < w->limit) {
        int after_from = !w->from || gn_cmp(w->s, w->from, n) <= 0;
        int before_to = !w->to || gn_cmp(w->s, w->to, n) >= 0;
        if (w->skip && w->skip >= gn_size(n->left))
            w->skip -= gn_size(n->left); /* a slice skips whole subtrees: O(log n) */
        else if (after_from)
            gn_walk_tree(w, n->left);
        if (after_from && before_to && w->taken < w->limit) {
            if (w->skip)
                w->skip--;
            else {
                w->acc = enif_make_list_cell(w->env, gn_entry(w->env, n), w->acc);
                w->taken++;
            }
        }
        if (!before_to)
            return;
        n = n->right;
    }
}

static ERL_NIF_TERM gn_reverse(ErlNifEnv *env, ERL_NIF_TERM list)
{
    ERL_NIF_TERM out;
    enif_make_reverse_list(env, list, &out);
    return out;
}

/* store_to_list(Store) -> [{K, V}] (dirty) */
ERL_NIF_TERM gn_store_to_list_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_VIEW(gn_store_to_list_nif, s, err))
        return err;
    ERL_NIF_TERM acc = enif_make_list(env, 0);
    gn_iter it;
    gn_iter_start(&it, s);
    for (gn_node *n; (n = gn_iter_next(&it));)
        acc = enif_make_list_cell(env, gn_entry(env, n), acc);
    gn_rw_runlock(s->lock);
    return gn_reverse(env, acc);
}

/* store_range(Store, From, To, Limit | infinity) -> [{K, V}] (dirty)
 * store_range(Store, {index, I}, Count, _) -> slice */
ERL_NIF_TERM gn_store_range_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifUInt64 limit = SIZE_MAX;
    const ERL_NIF_TERM *slice;
    int arity;
    ErlNifSInt64 index;
    ErlNifUInt64 count;
    if (enif_get_tuple(env, argv[1], &arity, &slice) && arity == 2 &&
        enif_is_identical(slice[0], gn_am_index)) {
        if (!enif_get_int64(env, slice[1], &index) || !enif_get_uint64(env, argv[2], &count))
            return enif_make_badarg(env);
        if (!GN_VIEW_ORDERED(gn_store_range_nif, s, err))
            return err;
        int64_t size = (int64_t)gn_size(s->root);
        if (index < 0)
            index += size;
        if (index < 0)
            index = 0;
        gn_walk w = {env, s, NULL, NULL, (size_t)index, (size_t)count, 0, enif_make_list(env, 0)};
        gn_walk_tree(&w, s->root);
        gn_rw_runlock(s->lock);
        return gn_reverse(env, w.acc);
    }
    if (!enif_is_identical(argv[3], gn_am_infinity) && !enif_get_uint64(env, argv[3], &limit))
        return enif_make_badarg(env);
    if (!GN_VIEW_ORDERED(gn_store_range_nif, s, err))
        return err;
    gn_probe from = {.key = argv[1]}, to = {.key = argv[2]};
    gn_walk w = {env, s, &from, &to, 0, (size_t)limit, 0, enif_make_list(env, 0)};
    gn_walk_tree(&w, s->root);
    gn_rw_runlock(s->lock);
    return gn_reverse(env, w.acc);
}
