/*
 * Shared declarations for GenNative's NIF library: the atoms made once at
 * load, the per-library private data, and the background reaper that frees
 * large structures off the schedulers.
 *
 * Every C symbol carries the gn_ prefix.
 */
#ifndef GN_GEN_NATIVE_H
#define GN_GEN_NATIVE_H

#include <erl_nif.h>
#include <stdint.h>

#include "alloc.h"
#include "reaper.h"
#include "registry.h"

/* Atoms, created in gn_make_atoms() at load; atoms are global to the VM so
 * they stay valid across upgrades. gn_am_gen_cast is '$gen_cast' and
 * gn_am_wake '$gn_wake', the message that wakes a mailbox's owner;
 * gn_am_gn_high '$gn_high', the wrapper of a high-lane request. */
/* Atoms whose text is their name. */
/* clang-format off */
#define GN_ATOMS_PLAIN(X) \
    X(ok) \
    X(error) \
    X(enomem) \
    X(more) \
    X(true) \
    X(false) \
    X(not_native) \
    X(already_exists) \
    X(length) \
    X(high_length) \
    X(capacity) \
    X(overflow) \
    X(accepted) \
    X(rejected) \
    X(dropped) \
    X(max_length) \
    X(blocked_senders) \
    X(expired) \
    X(queue) \
    X(keep) \
    X(expire) \
    X(deadline) \
    X(closed) \
    X(full) \
    X(wait) \
    X(normal) \
    X(high) \
    X(cast) \
    X(call) \
    X(admit) \
    X(cancelled) \
    X(not_found) \
    X(infinity) \
    X(reject) \
    X(drop_newest) \
    X(drop_oldest) \
    X(block) \
    X(not_ready) \
    X(busy) \
    X(send) \
    X(none) \
    X(store_deleted) \
    X(not_owner) \
    X(ordered_set) \
    X(set) \
    X(nil) \
    X(public) \
    X(protected) \
    X(named) \
    X(owner) \
    X(put) \
    X(put_new) \
    X(not_integer) \
    X(type) \
    X(size) \
    X(memory) \
    X(name) \
    X(access) \
    X(lifetime) \
    X(first) \
    X(last) \
    X(next) \
    X(prev) \
    X(index) \
    X(not_ordered) \
    X(invalid_snapshot) \
    /* store (issue 10) */ \
    X(safe) \
    X(unsafe_snapshot) X(locked) X(unlocking) \
    X(system_limit)
/* clang-format on */
#define GN_ATOMS(X) GN_ATOMS_PLAIN(X) X(gen_cast) X(wake) X(gn_high)
#define GN_DECLARE_ATOM(name) extern ERL_NIF_TERM gn_am_##name;
GN_ATOMS(GN_DECLARE_ATOM)
#undef GN_DECLARE_ATOM

/* One per loaded library instance. The registry is shared by an upgraded
 * library with its predecessor (it holds data only, no code pointers); the
 * reaper thread is not, because its code lives in one .so. */
typedef struct gn_store_shared gn_store_shared;

/* The layout of what one library instance hands the next on upgrade: its
 * gn_priv, the mailboxes, the stores and their entries. Bump it whenever
 * any of those structs changes: an upgrade between two libraries whose
 * layouts differ is refused (the new module fails to load and the old code
 * runs on), as reading the old structs with the new code would corrupt
 * them. The value is no user-space address, so a library built before the
 * stamp existed (whose gn_priv starts with a pointer) is refused too. */
#ifndef GN_ABI
#define GN_ABI 2
#endif
#define GN_ABI_STAMP (UINT64_C(0x474e414249000000) | (uint64_t)(GN_ABI))

typedef struct gn_priv {
    uint64_t abi; /* GN_ABI_STAMP: the first member, in every version */
    ErlNifResourceType *mailbox_rtype;
    gn_registry *registry;
    gn_reaper *reaper;
    /* the stores' name registry and sweep list: shared, as the registry is,
     * by an upgraded library with its predecessor (store_impl.h) */
    gn_store_shared *stores;
} gn_priv;

/* The priv of the library instance whose code is running. Resource
 * callbacks (destructors, down) use it to find the live reaper. */
extern gn_priv *gn_current;

/* Hands fn(arg) to the live library's reaper (run at once if there is
 * none, as during unload). */
static inline void gn_reap(gn_free_fn *fn, void *arg)
{
    gn_reaper_push(gn_current ? gn_current->reaper : NULL, fn, arg);
}

#endif
