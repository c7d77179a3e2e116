/*
 * The native state store.
 *
 * A store is an AVL tree of entries, each with its subtree's size, so that
 * rank and index queries are O(log n). Both types use it: an ordered_set
 * orders keys by Erlang term order and matches them with == (as ETS
 * ordered_set); a set matches them exactly (=:=, as ETS set), so keys that
 * compare equal but are not identical (1 and 1.0) are ordered by their
 * external encoding.
 *
 * An entry keeps its key and value in external term format (ErlNifBinary),
 * so what comes back is === to what went in, memory is accounted exactly,
 * and nothing references a process heap. The key is also held as a term in
 * the store's arena environment, for comparisons; a removed entry leaves its
 * key there as garbage, and the arena is rebuilt from the encoded keys (on
 * a dirty scheduler) once garbage outnumbers live keys.
 *
 * Locks: `s->lock` (a rwlock) protects everything in a gn_store: readers
 * hold it shared, writers exclusive, so a reader never sees a half-applied
 * write. `gn_names_lock` protects the name registry; it is never held with a
 * store lock held.
 *
 * Lifetime: a store is a resource. Deleting it (delete/1, its owner's exit
 * with lifetime: owner) detaches the tree and the arena and hands them to
 * the reaper in O(1); the resource stays, flagged deleted, while any process
 * still holds a handle, and every use of it raises.
 */
#include <string.h>

#include "store.h"

typedef struct gn_node {
    struct gn_node *left, *right;
    size_t size;
    int height;
    ERL_NIF_TERM key; /* in the store's arena */
    ErlNifBinary kbin, vbin;
} gn_node;

typedef struct gn_store {
    ErlNifRWLock *lock;
    int ordered;
    int public_access;
    int named_lifetime;
    int deleted;
    int orphan; /* a named store whose owner exited */
    ErlNifPid owner;
    ErlNifMonitor monitor;
    ERL_NIF_TERM name; /* an atom, or 0 */
    size_t max_size;   /* SIZE_MAX: no cap */
    gn_node *root;
    ErlNifEnv *arena;
    size_t arena_dead;
    size_t memory; /* bytes held by entries */
} gn_store;

static ErlNifResourceType *gn_store_rtype;

/* ------------------------------------------------------------------------ */
/* Names                                                                     */

typedef struct gn_name {
    struct gn_name *next;
    ERL_NIF_TERM name;
    gn_store *store; /* holds a resource reference */
} gn_name;

static ErlNifMutex *gn_names_lock;
static gn_name *gn_names; /* few stores are named: a list */

/* Returns the store registered as `name` with a reference, or NULL. */
static gn_store *gn_name_lookup(ERL_NIF_TERM name)
{
    gn_store *s = NULL;
    enif_mutex_lock(gn_names_lock);
    for (gn_name *n = gn_names; n; n = n->next)
        if (enif_is_identical(n->name, name)) {
            s = n->store;
            enif_keep_resource(s);
            break;
        }
    enif_mutex_unlock(gn_names_lock);
    return s;
}

static void gn_name_remove(gn_store *s)
{
    gn_name *removed = NULL;
    enif_mutex_lock(gn_names_lock);
    for (gn_name **p = &gn_names; *p; p = &(*p)->next)
        if ((*p)->store == s) {
            removed = *p;
            *p = removed->next;
            break;
        }
    enif_mutex_unlock(gn_names_lock);
    if (removed) {
        gn_free(removed);
        enif_release_resource(s);
    }
}

/* ------------------------------------------------------------------------ */
/* Entries and the tree                                                      */

static size_t gn_node_bytes(const gn_node *n)
{
    /* the key counts twice: encoded, and as a term in the arena */
    return sizeof(gn_node) + 2 * n->kbin.size + n->vbin.size;
}

static void gn_node_free(gn_node *n)
{
    enif_release_binary(&n->kbin);
    enif_release_binary(&n->vbin);
    gn_free(n);
}

static void gn_tree_free(gn_node *n)
{
    while (n) {
        gn_tree_free(n->left);
        gn_node *right = n->right;
        gn_node_free(n);
        n = right;
    }
}

typedef struct gn_detached {
    gn_node *root;
    ErlNifEnv *arena;
} gn_detached;

static void gn_detached_free(void *arg)
{
    gn_detached *d = arg;
    gn_tree_free(d->root);
    if (d->arena)
        enif_free_env(d->arena);
    gn_free(d);
}

/* Hands the tree and arena to the reaper, leaving the store empty. O(1). */
static void gn_store_detach(gn_store *s)
{
    gn_detached *d = gn_alloc(sizeof(*d));
    if (d) {
        d->root = s->root;
        d->arena = s->arena;
        gn_reaper_push(gn_current ? gn_current->reaper : NULL, gn_detached_free, d);
    } else {
        gn_tree_free(s->root);
        enif_free_env(s->arena);
    }
    s->root = NULL;
    s->arena = enif_alloc_env();
    s->arena_dead = 0;
    s->memory = 0;
}

static inline size_t gn_size(const gn_node *n)
{
    return n ? n->size : 0;
}

static inline int gn_height(const gn_node *n)
{
    return n ? n->height : 0;
}

static void gn_update(gn_node *n)
{
    int hl = gn_height(n->left), hr = gn_height(n->right);
    n->height = 1 + (hl > hr ? hl : hr);
    n->size = 1 + gn_size(n->left) + gn_size(n->right);
}

static gn_node *gn_rotate_right(gn_node *n)
{
    gn_node *l = n->left;
    n->left = l->right;
    l->right = n;
    gn_update(n);
    gn_update(l);
    return l;
}

static gn_node *gn_rotate_left(gn_node *n)
{
    gn_node *r = n->right;
    n->right = r->left;
    r->left = n;
    gn_update(n);
    gn_update(r);
    return r;
}

static gn_node *gn_balance(gn_node *n)
{
    gn_update(n);
    int b = gn_height(n->left) - gn_height(n->right);
    if (b > 1) {
        if (gn_height(n->left->left) < gn_height(n->left->right))
            n->left = gn_rotate_left(n->left);
        return gn_rotate_right(n);
    }
    if (b < -1) {
        if (gn_height(n->right->right) < gn_height(n->right->left))
            n->right = gn_rotate_right(n->right);
        return gn_rotate_left(n);
    }
    return n;
}

/* A key being looked up: the term, and its encoding once a set needs it. */
typedef struct gn_probe {
    ErlNifEnv *env;
    ERL_NIF_TERM key;
    ErlNifBinary bin;
    int has_bin;
} gn_probe;

static int gn_cmp(const gn_store *s, gn_probe *p, const gn_node *n)
{
    int c = enif_compare(p->key, n->key);
    if (c != 0 || s->ordered || enif_is_identical(p->key, n->key))
        return c;
    /* a set: equal (==) but not identical (=:=) keys, e.g. 1 and 1.0 */
    if (!p->has_bin) {
        if (!enif_term_to_binary(p->env, p->key, &p->bin))
            return -1;
        p->has_bin = 1;
    }
    size_t len = p->bin.size < n->kbin.size ? p->bin.size : n->kbin.size;
    c = memcmp(p->bin.data, n->kbin.data, len);
    if (c == 0)
        c = p->bin.size < n->kbin.size ? -1 : p->bin.size > n->kbin.size;
    return c;
}

static void gn_probe_done(gn_probe *p)
{
    if (p->has_bin)
        enif_release_binary(&p->bin);
}

static gn_node *gn_find(const gn_store *s, gn_probe *p)
{
    gn_node *n = s->root;
    while (n) {
        int c = gn_cmp(s, p, n);
        if (c == 0)
            return n;
        n = c < 0 ? n->left : n->right;
    }
    return NULL;
}

/* Inserts `node` (its key not in the tree). */
static gn_node *gn_insert(const gn_store *s, gn_node *n, gn_node *node, gn_probe *p)
{
    if (!n)
        return node;
    if (gn_cmp(s, p, n) < 0)
        n->left = gn_insert(s, n->left, node, p);
    else
        n->right = gn_insert(s, n->right, node, p);
    return gn_balance(n);
}

static gn_node *gn_remove_min(gn_node *n, gn_node **min)
{
    if (!n->left) {
        *min = n;
        return n->right;
    }
    n->left = gn_remove_min(n->left, min);
    return gn_balance(n);
}

/* Unlinks the entry matching p into *out. */
static gn_node *gn_remove(const gn_store *s, gn_node *n, gn_probe *p, gn_node **out)
{
    if (!n)
        return NULL;
    int c = gn_cmp(s, p, n);
    if (c < 0) {
        n->left = gn_remove(s, n->left, p, out);
    } else if (c > 0) {
        n->right = gn_remove(s, n->right, p, out);
    } else {
        *out = n;
        if (!n->left)
            return n->right;
        if (!n->right)
            return n->left;
        gn_node *min;
        gn_node *right = gn_remove_min(n->right, &min);
        min->left = n->left;
        min->right = right;
        return gn_balance(min);
    }
    return gn_balance(n);
}

/* ------------------------------------------------------------------------ */
/* Resource callbacks                                                        */

static void gn_store_dtor(ErlNifEnv *env, void *obj)
{
    (void)env;
    gn_store *s = obj;
    if (s->root || s->arena) {
        gn_detached *d = gn_alloc(sizeof(*d));
        if (d) {
            d->root = s->root;
            d->arena = s->arena;
            gn_reaper_push(gn_current ? gn_current->reaper : NULL, gn_detached_free, d);
        }
    }
    if (s->lock)
        enif_rwlock_destroy(s->lock);
}

static void gn_store_mark_deleted(gn_store *s)
{
    s->deleted = 1;
    gn_store_detach(s);
    if (s->arena) {
        enif_free_env(s->arena);
        s->arena = NULL;
    }
}

static void gn_store_down(ErlNifEnv *env, void *obj, ErlNifPid *pid, ErlNifMonitor *mon)
{
    (void)env;
    (void)pid;
    (void)mon;
    gn_store *s = obj;
    int unregister = 0;
    enif_rwlock_rwlock(s->lock);
    if (!s->deleted) {
        if (s->named_lifetime) {
            s->orphan = 1;
        } else {
            gn_store_mark_deleted(s);
            unregister = 1;
        }
    }
    enif_rwlock_rwunlock(s->lock);
    if (unregister)
        gn_name_remove(s); /* may drop the last reference: last */
}

int gn_store_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags)
{
    (void)priv;
    ErlNifResourceTypeInit init = {.dtor = gn_store_dtor, .stop = NULL, .down = gn_store_down};
    ErlNifResourceType *rt = enif_open_resource_type_x(env, "gn_store", &init, flags, NULL);
    if (!rt)
        return 0;
    gn_store_rtype = rt;
    if (!gn_names_lock && !(gn_names_lock = enif_mutex_create("gn_store_names")))
        return 0;
    return 1;
}

void gn_store_unload(void)
{
    /* Named stores still registered keep their resources: released here. */
    if (!gn_names_lock)
        return;
    enif_mutex_lock(gn_names_lock);
    gn_name *n = gn_names;
    gn_names = NULL;
    enif_mutex_unlock(gn_names_lock);
    while (n) {
        gn_name *next = n->next;
        enif_release_resource(n->store);
        gn_free(n);
        n = next;
    }
}

/* ------------------------------------------------------------------------ */
/* Access                                                                    */

/* Resolves a store handle and takes its lock; NULL after raising. `write`:
 * exclusive, and only for the owner of a protected store. Use or writes of
 * a deleted store raise store_deleted; a write by another process to a
 * protected store raises not_owner. */
static gn_store *gn_store_lock(ErlNifEnv *env, ERL_NIF_TERM term, int write, ERL_NIF_TERM *err)
{
    gn_store *s;
    if (!enif_get_resource(env, term, gn_store_rtype, (void **)&s)) {
        *err = enif_make_badarg(env);
        return NULL;
    }
    if (write)
        enif_rwlock_rwlock(s->lock);
    else
        enif_rwlock_rlock(s->lock);
    if (s->deleted) {
        *err = enif_raise_exception(env, gn_am_store_deleted);
        goto fail;
    }
    if (write && !s->public_access) {
        ErlNifPid self;
        if (s->orphan || !enif_self(env, &self) || enif_compare_pids(&self, &s->owner) != 0) {
            *err = enif_raise_exception(env, gn_am_not_owner);
            goto fail;
        }
    }
    return s;
fail:
    if (write)
        enif_rwlock_rwunlock(s->lock);
    else
        enif_rwlock_runlock(s->lock);
    return NULL;
}

#define GN_READ(env, t, s, err) ((s) = gn_store_lock((env), (t), 0, &(err)))
#define GN_WRITE(env, t, s, err) ((s) = gn_store_lock((env), (t), 1, &(err)))

static ERL_NIF_TERM gn_decode(ErlNifEnv *env, const ErlNifBinary *bin)
{
    ERL_NIF_TERM t;
    if (!enif_binary_to_term(env, bin->data, bin->size, &t, 0))
        return enif_make_badarg(env); /* cannot happen: we encoded it */
    return t;
}

static ERL_NIF_TERM gn_entry(ErlNifEnv *env, const gn_node *n)
{
    return enif_make_tuple2(env, gn_decode(env, &n->kbin), gn_decode(env, &n->vbin));
}

/* ------------------------------------------------------------------------ */
/* NIFs                                                                      */

/* store_new(Type, Name | nil, Access, Lifetime, MaxSize | infinity)
 *   -> {ok, Store} | {error, already_exists}
 * With the name of a named store whose owner exited: adopts it. */
ERL_NIF_TERM gn_store_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    int ordered, pub, named;
    ErlNifUInt64 max = SIZE_MAX;
    if (enif_is_identical(argv[0], gn_am_ordered_set))
        ordered = 1;
    else if (enif_is_identical(argv[0], gn_am_set))
        ordered = 0;
    else
        return enif_make_badarg(env);
    int has_name = !enif_is_identical(argv[1], gn_am_nil);
    if (has_name && !enif_is_atom(env, argv[1]))
        return enif_make_badarg(env);
    if (enif_is_identical(argv[2], gn_am_public))
        pub = 1;
    else if (enif_is_identical(argv[2], gn_am_protected))
        pub = 0;
    else
        return enif_make_badarg(env);
    if (enif_is_identical(argv[3], gn_am_named))
        named = 1;
    else if (enif_is_identical(argv[3], gn_am_owner))
        named = 0;
    else
        return enif_make_badarg(env);
    if (named && !has_name)
        return enif_make_badarg(env);
    if (!enif_is_identical(argv[4], gn_am_infinity) &&
        (!enif_get_uint64(env, argv[4], &max) || max == 0))
        return enif_make_badarg(env);

    ErlNifPid self;
    if (!enif_self(env, &self))
        return enif_make_badarg(env);

    enif_mutex_lock(gn_names_lock);
    if (has_name) {
        for (gn_name *n = gn_names; n; n = n->next) {
            if (!enif_is_identical(n->name, argv[1]))
                continue;
            gn_store *old = n->store;
            enif_rwlock_rwlock(old->lock);
            ERL_NIF_TERM result;
            if (old->orphan && !old->deleted && old->ordered == ordered &&
                enif_monitor_process(env, old, &self, &old->monitor) == 0) {
                old->owner = self;
                old->orphan = 0;
                result = enif_make_tuple2(env, gn_am_ok, enif_make_resource(env, old));
            } else {
                result = enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
            }
            enif_rwlock_rwunlock(old->lock);
            enif_mutex_unlock(gn_names_lock);
            return result;
        }
    }

    gn_store *s = enif_alloc_resource(gn_store_rtype, sizeof(*s));
    gn_name *entry = has_name ? gn_alloc(sizeof(*entry)) : NULL;
    if (!s || (has_name && !entry))
        goto enomem;
    memset(s, 0, sizeof(*s));
    s->ordered = ordered;
    s->public_access = pub;
    s->named_lifetime = named;
    s->name = has_name ? argv[1] : 0;
    s->max_size = (size_t)max;
    s->owner = self;
    if (!(s->lock = enif_rwlock_create("gn_store")) || !(s->arena = enif_alloc_env()))
        goto enomem;
    if (enif_monitor_process(env, s, &self, &s->monitor) != 0)
        goto enomem;
    if (has_name) {
        entry->name = argv[1];
        entry->store = s;
        entry->next = gn_names;
        gn_names = entry;
        enif_keep_resource(s);
    }
    enif_mutex_unlock(gn_names_lock);
    ERL_NIF_TERM ref = enif_make_resource(env, s);
    enif_release_resource(s);
    return enif_make_tuple2(env, gn_am_ok, ref);

enomem:
    enif_mutex_unlock(gn_names_lock);
    if (entry)
        gn_free(entry);
    if (s)
        enif_release_resource(s);
    return enif_raise_exception(env, enif_make_atom(env, "enomem"));
}

/* store_whereis(Name) -> Store | nil */
ERL_NIF_TERM gn_store_whereis_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    if (!enif_is_atom(env, argv[0]))
        return enif_make_badarg(env);
    gn_store *s = gn_name_lookup(argv[0]);
    if (!s)
        return gn_am_nil;
    ERL_NIF_TERM ref = enif_make_resource(env, s);
    enif_release_resource(s);
    return ref;
}

/* Builds an entry for key/value; NULL when out of memory. */
static gn_node *gn_node_new(gn_store *s, ErlNifEnv *env, ERL_NIF_TERM key, ERL_NIF_TERM value)
{
    gn_node *n = gn_alloc(sizeof(*n));
    if (!n)
        return NULL;
    if (!enif_term_to_binary(env, key, &n->kbin)) {
        gn_free(n);
        return NULL;
    }
    if (!enif_term_to_binary(env, value, &n->vbin)) {
        enif_release_binary(&n->kbin);
        gn_free(n);
        return NULL;
    }
    n->left = n->right = NULL;
    n->size = 1;
    n->height = 1;
    n->key = enif_make_copy(s->arena, key);
    return n;
}

/* Replaces an entry's value; returns 0 when out of memory. */
static int gn_node_set(gn_store *s, ErlNifEnv *env, gn_node *n, ERL_NIF_TERM value)
{
    ErlNifBinary vbin;
    if (!enif_term_to_binary(env, value, &vbin))
        return 0;
    s->memory -= n->vbin.size;
    enif_release_binary(&n->vbin);
    n->vbin = vbin;
    s->memory += vbin.size;
    return 1;
}

/* store_put(Store, Key, Value, put | put_new) -> ok | true | false | {error, full} */
ERL_NIF_TERM gn_store_put_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err, result;
    gn_store *s;
    int put_new = enif_is_identical(argv[3], gn_am_put_new);
    if (!put_new && !enif_is_identical(argv[3], gn_am_put))
        return enif_make_badarg(env);
    if (!GN_WRITE(env, argv[0], s, err))
        return err;
    gn_probe p = {env, argv[1], {0}, 0};
    gn_node *n = gn_find(s, &p);
    if (n) {
        if (put_new)
            result = gn_am_false;
        else
            result = gn_node_set(s, env, n, argv[2]) ? gn_am_ok : 0;
    } else if (gn_size(s->root) >= s->max_size) {
        result = enif_make_tuple2(env, gn_am_error, gn_am_full);
    } else if ((n = gn_node_new(s, env, argv[1], argv[2]))) {
        s->root = gn_insert(s, s->root, n, &p);
        s->memory += gn_node_bytes(n);
        result = put_new ? gn_am_true : gn_am_ok;
    } else {
        result = 0;
    }
    enif_rwlock_rwunlock(s->lock);
    gn_probe_done(&p);
    return result ? result : enif_raise_exception(env, enif_make_atom(env, "enomem"));
}

/* store_get(Store, Key) -> {ok, Value} | error */
ERL_NIF_TERM gn_store_get_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err, result;
    gn_store *s;
    if (!GN_READ(env, argv[0], s, err))
        return err;
    gn_probe p = {env, argv[1], {0}, 0};
    gn_node *n = gn_find(s, &p);
    result = n ? enif_make_tuple2(env, gn_am_ok, gn_decode(env, &n->vbin)) : gn_am_error;
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&p);
    return result;
}

/* Removes the entry for key, if any; returns it, to be freed after the
 * value is read. Call with the write lock held. */
static gn_node *gn_unlink(gn_store *s, gn_probe *p)
{
    gn_node *out = NULL;
    s->root = gn_remove(s, s->root, p, &out);
    if (out) {
        s->memory -= gn_node_bytes(out);
        s->arena_dead++;
    }
    return out;
}

/* Once removed keys outnumber live ones in the arena, rebuild it from the
 * encoded keys. O(n): only reached from dirty NIFs or small stores. */
static void gn_arena_compact(gn_store *s)
{
    ErlNifEnv *fresh = enif_alloc_env();
    if (!fresh)
        return;
    gn_node *stack[128];
    int top = 0;
    gn_node *n = s->root;
    while (n || top) {
        while (n) {
            stack[top++] = n;
            n = n->left;
        }
        n = stack[--top];
        enif_binary_to_term(fresh, n->kbin.data, n->kbin.size, &n->key, 0);
        n = n->right;
    }
    enif_free_env(s->arena);
    s->arena = fresh;
    s->arena_dead = 0;
}

/* Compacting a store of up to this many entries stays well under 1 ms. */
#define GN_COMPACT_INLINE 4096

static void gn_maybe_compact(gn_store *s)
{
    size_t live = gn_size(s->root);
    if (s->arena_dead > live + 1024 && live <= GN_COMPACT_INLINE)
        gn_arena_compact(s);
}

/* store_delete_key(Store, Key) -> ok */
ERL_NIF_TERM gn_store_delete_key_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_WRITE(env, argv[0], s, err))
        return err;
    gn_probe p = {env, argv[1], {0}, 0};
    gn_node *n = gn_unlink(s, &p);
    gn_maybe_compact(s);
    enif_rwlock_rwunlock(s->lock);
    gn_probe_done(&p);
    if (n)
        gn_node_free(n);
    return gn_am_ok;
}

/* store_take(Store, Key) -> {ok, Value} | error */
ERL_NIF_TERM gn_store_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_WRITE(env, argv[0], s, err))
        return err;
    gn_probe p = {env, argv[1], {0}, 0};
    gn_node *n = gn_unlink(s, &p);
    gn_maybe_compact(s);
    enif_rwlock_rwunlock(s->lock);
    gn_probe_done(&p);
    if (!n)
        return gn_am_error;
    ERL_NIF_TERM v = gn_decode(env, &n->vbin);
    gn_node_free(n);
    return enif_make_tuple2(env, gn_am_ok, v);
}

/* store_update_counter(Store, Key, Incr, Default) -> Integer
 * Raises not_integer if the value (or Default) is not an integer. */
ERL_NIF_TERM gn_store_update_counter_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    ErlNifSInt64 incr, current;
    if (!enif_get_int64(env, argv[2], &incr))
        return enif_make_badarg(env);
    if (!GN_WRITE(env, argv[0], s, err))
        return err;
    gn_probe p = {env, argv[1], {0}, 0};
    gn_node *n = gn_find(s, &p);
    /* enif_raise_exception returns a term that may be 0: a flag for ENOMEM */
    ERL_NIF_TERM result = 0, value;
    int oom = 1;
    if (n) {
        if (!enif_get_int64(env, gn_decode(env, &n->vbin), &current)) {
            result = enif_raise_exception(env, gn_am_not_integer);
            oom = 0;
            goto out;
        }
    } else if (!enif_get_int64(env, argv[3], &current)) {
        result = enif_raise_exception(env, gn_am_not_integer);
        oom = 0;
        goto out;
    } else if (gn_size(s->root) >= s->max_size) {
        result = enif_make_tuple2(env, gn_am_error, gn_am_full);
        oom = 0;
        goto out;
    }
    if ((incr > 0 && current > INT64_MAX - incr) || (incr < 0 && current < INT64_MIN - incr)) {
        result = enif_raise_exception(env, gn_am_not_integer);
        oom = 0;
        goto out;
    }
    value = enif_make_int64(env, current + incr);
    if (n) {
        if (!gn_node_set(s, env, n, value))
            goto out;
    } else {
        if (!(n = gn_node_new(s, env, argv[1], value)))
            goto out;
        s->root = gn_insert(s, s->root, n, &p);
        s->memory += gn_node_bytes(n);
    }
    result = value;
    oom = 0;
out:
    enif_rwlock_rwunlock(s->lock);
    gn_probe_done(&p);
    return oom ? enif_raise_exception(env, enif_make_atom(env, "enomem")) : result;
}

/* store_size(Store) -> non_neg_integer() */
ERL_NIF_TERM gn_store_size_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_READ(env, argv[0], s, err))
        return err;
    size_t n = gn_size(s->root);
    enif_rwlock_runlock(s->lock);
    return enif_make_uint64(env, n);
}

/* store_info(Store) -> #{type, size, memory, owner, name, access, lifetime} */
ERL_NIF_TERM gn_store_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_READ(env, argv[0], s, err))
        return err;
    ERL_NIF_TERM keys[] = {gn_am_type, gn_am_size,   gn_am_memory,  gn_am_owner,
                           gn_am_name, gn_am_access, gn_am_lifetime};
    ERL_NIF_TERM vals[] = {
        s->ordered ? gn_am_ordered_set : gn_am_set,
        enif_make_uint64(env, gn_size(s->root)),
        enif_make_uint64(env, sizeof(gn_store) + s->memory),
        s->orphan ? gn_am_nil : enif_make_pid(env, &s->owner),
        s->name ? s->name : gn_am_nil,
        s->public_access ? gn_am_public : gn_am_protected,
        s->named_lifetime ? gn_am_named : gn_am_owner,
    };
    enif_rwlock_runlock(s->lock);
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, 7, &map);
    return map;
}

/* store_delete(Store) -> ok: frees the store (owner only, or any process
 * for a public store); every later use raises store_deleted. */
ERL_NIF_TERM gn_store_delete_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_WRITE(env, argv[0], s, err))
        return err;
    gn_store_mark_deleted(s);
    enif_rwlock_rwunlock(s->lock);
    gn_name_remove(s);
    return gn_am_ok;
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
    if (!GN_READ(env, argv[0], s, err))
        return err;
    if (!s->ordered) {
        enif_rwlock_runlock(s->lock);
        return enif_raise_exception(env, gn_am_not_ordered);
    }
    gn_probe p = {env, argv[2], {0}, 0};
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
    ERL_NIF_TERM result =
        found ? enif_make_tuple2(env, gn_am_ok, gn_entry(env, found)) : gn_am_error;
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&p);
    return result;
}

/* store_rank(Store, Key) -> {ok, Index} | error (0-based) */
ERL_NIF_TERM gn_store_rank_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_READ(env, argv[0], s, err))
        return err;
    if (!s->ordered) {
        enif_rwlock_runlock(s->lock);
        return enif_raise_exception(env, gn_am_not_ordered);
    }
    gn_probe p = {env, argv[1], {0}, 0};
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
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&p);
    return found ? enif_make_tuple2(env, gn_am_ok, enif_make_uint64(env, rank)) : gn_am_error;
}

static gn_node *gn_at(gn_node *n, size_t i)
{
    while (n) {
        size_t l = gn_size(n->left);
        if (i < l) {
            n = n->left;
        } else if (i == l) {
            return n;
        } else {
            i -= l + 1;
            n = n->right;
        }
    }
    return NULL;
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
    if (!GN_READ(env, argv[0], s, err))
        return err;
    if (!s->ordered) {
        enif_rwlock_runlock(s->lock);
        return enif_raise_exception(env, gn_am_not_ordered);
    }
    int64_t size = (int64_t)gn_size(s->root);
    if (i < 0)
        i += size;
    gn_node *n = (i >= 0 && i < size) ? gn_at(s->root, (size_t)i) : NULL;
    ERL_NIF_TERM result = n ? enif_make_tuple2(env, gn_am_ok, gn_entry(env, n)) : gn_am_error;
    enif_rwlock_runlock(s->lock);
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
        if (after_from)
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
    if (!GN_READ(env, argv[0], s, err))
        return err;
    gn_walk w = {env, s, NULL, NULL, 0, SIZE_MAX, 0, enif_make_list(env, 0)};
    gn_walk_tree(&w, s->root);
    enif_rwlock_runlock(s->lock);
    return gn_reverse(env, w.acc);
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
        if (!GN_READ(env, argv[0], s, err))
            return err;
        if (!s->ordered) {
            enif_rwlock_runlock(s->lock);
            return enif_raise_exception(env, gn_am_not_ordered);
        }
        int64_t size = (int64_t)gn_size(s->root);
        if (index < 0)
            index += size;
        if (index < 0)
            index = 0;
        gn_walk w = {env, s, NULL, NULL, (size_t)index, (size_t)count, 0, enif_make_list(env, 0)};
        gn_walk_tree(&w, s->root);
        enif_rwlock_runlock(s->lock);
        return gn_reverse(env, w.acc);
    }
    if (!enif_is_identical(argv[3], gn_am_infinity) && !enif_get_uint64(env, argv[3], &limit))
        return enif_make_badarg(env);
    if (!GN_READ(env, argv[0], s, err))
        return err;
    if (!s->ordered) {
        enif_rwlock_runlock(s->lock);
        return enif_raise_exception(env, gn_am_not_ordered);
    }
    gn_probe from = {env, argv[1], {0}, 0}, to = {env, argv[2], {0}, 0};
    gn_walk w = {env, s, &from, &to, 0, (size_t)limit, 0, enif_make_list(env, 0)};
    gn_walk_tree(&w, s->root);
    enif_rwlock_runlock(s->lock);
    gn_probe_done(&from);
    gn_probe_done(&to);
    return gn_reverse(env, w.acc);
}

/* store_clear(Store) -> ok. O(1): the entries go to the reaper. */
ERL_NIF_TERM gn_store_clear_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err;
    gn_store *s;
    if (!GN_WRITE(env, argv[0], s, err))
        return err;
    gn_store_detach(s);
    enif_rwlock_rwunlock(s->lock);
    return gn_am_ok;
}

/* store_put_many(Store, [{K, V}]) -> ok | {error, full} (dirty)
 * All or nothing for the cap: checked before anything is written. */
ERL_NIF_TERM gn_store_put_many_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err, head, tail = argv[1];
    gn_store *s;
    unsigned len;
    if (!enif_get_list_length(env, argv[1], &len))
        return enif_make_badarg(env);
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *kv;
        int arity;
        if (!enif_get_tuple(env, head, &arity, &kv) || arity != 2)
            return enif_make_badarg(env);
    }
    if (!GN_WRITE(env, argv[0], s, err))
        return err;
    ERL_NIF_TERM result = gn_am_ok;
    if (s->max_size != SIZE_MAX && gn_size(s->root) + len > s->max_size) {
        /* count only the new keys */
        size_t fresh = 0;
        tail = argv[1];
        while (enif_get_list_cell(env, tail, &head, &tail)) {
            const ERL_NIF_TERM *kv;
            int arity;
            enif_get_tuple(env, head, &arity, &kv);
            gn_probe p = {env, kv[0], {0}, 0};
            fresh += gn_find(s, &p) == NULL;
            gn_probe_done(&p);
        }
        if (gn_size(s->root) + fresh > s->max_size) {
            enif_rwlock_rwunlock(s->lock);
            return enif_make_tuple2(env, gn_am_error, gn_am_full);
        }
    }
    tail = argv[1];
    while (enif_get_list_cell(env, tail, &head, &tail)) {
        const ERL_NIF_TERM *kv;
        int arity;
        enif_get_tuple(env, head, &arity, &kv);
        gn_probe p = {env, kv[0], {0}, 0};
        gn_node *n = gn_find(s, &p);
        if (n) {
            if (!gn_node_set(s, env, n, kv[1]))
                result = 0;
        } else if ((n = gn_node_new(s, env, kv[0], kv[1]))) {
            s->root = gn_insert(s, s->root, n, &p);
            s->memory += gn_node_bytes(n);
        } else {
            result = 0;
        }
        gn_probe_done(&p);
        if (!result)
            break;
    }
    if (s->arena_dead > gn_size(s->root) + 1024)
        gn_arena_compact(s);
    enif_rwlock_rwunlock(s->lock);
    return result ? result : enif_raise_exception(env, enif_make_atom(env, "enomem"));
}

/* ------------------------------------------------------------------------ */
/* Snapshots                                                                 */
/*
 * Format: "GNS1" | type (1 byte: 0 set, 1 ordered_set) | count (8, big
 * endian) | count x (klen (4) | key ETF | vlen (4) | value ETF) | CRC32 (4)
 * of everything before it. restore checks all of it, and builds the whole
 * tree, before a store exists: never a half-built store.
 */

static uint32_t gn_crc_table[256];
static int gn_crc_ready;

static void gn_crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        gn_crc_table[i] = c;
    }
    gn_crc_ready = 1;
}

static uint32_t gn_crc32(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = gn_crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void gn_put_be(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)(v & 0xFF);
}

static uint64_t gn_get_be(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v = (v << 8) | p[i];
    return v;
}

#define GN_SNAP_HEADER 13

/* store_snapshot(Store) -> binary() (dirty) */
ERL_NIF_TERM gn_store_snapshot_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    (void)argc;
    ERL_NIF_TERM err, out;
    gn_store *s;
    if (!GN_READ(env, argv[0], s, err))
        return err;
    size_t total = GN_SNAP_HEADER + 4, count = 0;
    gn_node *stack[128];
    int top = 0;
    for (gn_node *n = s->root; n || top;) {
        while (n) {
            stack[top++] = n;
            n = n->left;
        }
        n = stack[--top];
        total += 8 + n->kbin.size + n->vbin.size;
        count++;
        n = n->right;
    }
    unsigned char *p = enif_make_new_binary(env, total, &out);
    if (!p) {
        enif_rwlock_runlock(s->lock);
        return enif_raise_exception(env, enif_make_atom(env, "enomem"));
    }
    memcpy(p, "GNS1", 4);
    p[4] = (unsigned char)s->ordered;
    gn_put_be(p + 5, count, 8);
    unsigned char *w = p + GN_SNAP_HEADER;
    for (gn_node *n = s->root; n || top;) {
        while (n) {
            stack[top++] = n;
            n = n->left;
        }
        n = stack[--top];
        gn_put_be(w, n->kbin.size, 4);
        memcpy(w + 4, n->kbin.data, n->kbin.size);
        w += 4 + n->kbin.size;
        gn_put_be(w, n->vbin.size, 4);
        memcpy(w + 4, n->vbin.data, n->vbin.size);
        w += 4 + n->vbin.size;
        n = n->right;
    }
    enif_rwlock_runlock(s->lock);
    if (!gn_crc_ready)
        gn_crc_init();
    gn_put_be(w, gn_crc32(p, total - 4), 4);
    return out;
}

/* store_restore(Binary, Name | nil, Access, Lifetime, MaxSize | infinity)
 *   -> {ok, Store} | {error, invalid_snapshot | already_exists | full} (dirty) */
ERL_NIF_TERM gn_store_restore_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[])
{
    ErlNifBinary bin;
    if (!enif_inspect_binary(env, argv[0], &bin))
        return enif_make_badarg(env);
    ERL_NIF_TERM invalid = enif_make_tuple2(env, gn_am_error, gn_am_invalid_snapshot);
    if (!gn_crc_ready)
        gn_crc_init();
    if (bin.size < GN_SNAP_HEADER + 4 || memcmp(bin.data, "GNS1", 4) != 0 || bin.data[4] > 1 ||
        gn_crc32(bin.data, bin.size - 4) != (uint32_t)gn_get_be(bin.data + bin.size - 4, 4))
        return invalid;
    uint64_t count = gn_get_be(bin.data + 5, 8);
    const unsigned char *r = bin.data + GN_SNAP_HEADER, *end = bin.data + bin.size - 4;

    /* A new store, even where new/2 would adopt an orphaned named one. */
    if (!enif_is_identical(argv[1], gn_am_nil) && enif_is_atom(env, argv[1])) {
        gn_store *held = gn_name_lookup(argv[1]);
        if (held) {
            enif_release_resource(held);
            return enif_make_tuple2(env, gn_am_error, gn_am_already_exists);
        }
    }

    /* Create the store, fill it, and only then hand it out. */
    ERL_NIF_TERM args[5] = {bin.data[4] ? gn_am_ordered_set : gn_am_set, argv[1], argv[2], argv[3],
                            argv[4]};
    (void)argc;
    ERL_NIF_TERM created = gn_store_new_nif(env, 5, args);
    const ERL_NIF_TERM *tuple;
    int arity;
    gn_store *s;
    if (!enif_get_tuple(env, created, &arity, &tuple) || !enif_is_identical(tuple[0], gn_am_ok))
        return created; /* already_exists, or an exception */
    enif_get_resource(env, tuple[1], gn_store_rtype, (void **)&s);
    enif_rwlock_rwlock(s->lock);
    int ok = 1;
    for (uint64_t i = 0; ok && i < count; i++) {
        ERL_NIF_TERM key, value;
        size_t klen, vlen;
        if (end - r < 4 || (klen = gn_get_be(r, 4), (size_t)(end - r - 4) < klen)) {
            ok = 0;
            break;
        }
        if (enif_binary_to_term(env, r + 4, klen, &key, 0) != klen) {
            ok = 0;
            break;
        }
        r += 4 + klen;
        if (end - r < 4 || (vlen = gn_get_be(r, 4), (size_t)(end - r - 4) < vlen) ||
            enif_binary_to_term(env, r + 4, vlen, &value, 0) != vlen) {
            ok = 0;
            break;
        }
        r += 4 + vlen;
        gn_probe p = {env, key, {0}, 0};
        gn_node *n = gn_find(s, &p);
        if (!n && gn_size(s->root) >= s->max_size) {
            gn_probe_done(&p);
            enif_rwlock_rwunlock(s->lock);
            gn_store_delete_nif(env, 1, &tuple[1]);
            return enif_make_tuple2(env, gn_am_error, gn_am_full);
        }
        if (n)
            ok = gn_node_set(s, env, n, value);
        else if ((n = gn_node_new(s, env, key, value))) {
            s->root = gn_insert(s, s->root, n, &p);
            s->memory += gn_node_bytes(n);
        } else
            ok = 0;
        gn_probe_done(&p);
    }
    if (r != end)
        ok = 0;
    enif_rwlock_rwunlock(s->lock);
    if (!ok) {
        gn_store_delete_nif(env, 1, &tuple[1]);
        return invalid;
    }
    return created;
}

