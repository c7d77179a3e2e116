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

#include "reaper.h"

typedef struct gn_registry gn_registry;

/* Atoms, created in gn_make_atoms() at load; atoms are global to the VM so
 * they stay valid across upgrades. */
extern ERL_NIF_TERM gn_am_ok;
extern ERL_NIF_TERM gn_am_error;
extern ERL_NIF_TERM gn_am_true;
extern ERL_NIF_TERM gn_am_false;
extern ERL_NIF_TERM gn_am_not_native;
extern ERL_NIF_TERM gn_am_already_exists;
extern ERL_NIF_TERM gn_am_gen_cast; /* '$gen_cast' */
extern ERL_NIF_TERM gn_am_wake;     /* '$gn_wake', the message that wakes an owner */
extern ERL_NIF_TERM gn_am_length;
extern ERL_NIF_TERM gn_am_accepted;
extern ERL_NIF_TERM gn_am_max_length;

/* One per loaded library instance. The registry is shared by an upgraded
 * library with its predecessor (it holds data only, no code pointers); the
 * reaper thread is not, because its code lives in one .so. */
typedef struct gn_priv {
    ErlNifResourceType *mailbox_rtype;
    gn_registry *registry;
    gn_reaper *reaper;
} gn_priv;

/* The priv of the library instance whose code is running. Resource
 * callbacks (destructors, down) use it to find the live reaper. */
extern gn_priv *gn_current;

#endif
