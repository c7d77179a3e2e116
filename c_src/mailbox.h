/*
 * The native mailbox: the two-lane, bounded or unbounded, multi-producer
 * single-consumer queue of requests owned by one server process.
 */
#ifndef GN_MAILBOX_H
#define GN_MAILBOX_H

#include "gen_native.h"

/* Opens (or, on upgrade, takes over) the mailbox resource type. */
int gn_mailbox_load(ErlNifEnv *env, gn_priv *priv, ErlNifResourceFlags flags);

ERL_NIF_TERM gn_mailbox_new_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_send_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_cancel_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_adopt_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_discard_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_watermark_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_take_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_high_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_ack_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_info_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);
ERL_NIF_TERM gn_mailbox_hold_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]);

/* The largest batch mailbox_take/2 hands out in one call. Bounds the work of
 * one regular NIF call. */
#define GN_MAILBOX_MAX_BATCH 1024

#endif
