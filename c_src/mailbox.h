/*
 * The native mailbox: a multi-producer, single-consumer queue of cast
 * requests owned by one server process, and the registry that maps a
 * server's pid to it.
 */
#ifndef GN_MAILBOX_H
#define GN_MAILBOX_H

#include "gen_native.h"

/* Opens (or, on upgrade, takes over) the mailbox resource type. */
int gn_mailbox_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags);

gn_registry *gn_registry_new(void);
void gn_registry_retain(gn_registry *reg);
void gn_registry_release(gn_registry *reg);

ERL_NIF_TERM gn_mailbox_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_cast_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_ack_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_length_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* The largest batch mailbox_take/2 hands out in one call. Bounds the work of
 * one regular NIF call. */
#define GN_MAILBOX_MAX_BATCH 1024

#endif
