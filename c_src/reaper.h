/*
 * The reaper: one background thread per loaded library that runs free
 * functions handed to it. Destroying a mailbox with a million pending terms,
 * or (later) a store with a million entries, is O(n); a destructor or a down
 * callback may run on a normal scheduler, so they only detach the structure
 * and push it here, in O(1).
 */
#ifndef GN_REAPER_H
#define GN_REAPER_H

typedef struct gn_reaper gn_reaper;
typedef void gn_free_fn(void *arg);

gn_reaper *gn_reaper_start(void);
/* Queues fn(arg). Never blocks on the work itself. If the job cannot be
 * queued (out of memory), fn(arg) runs at once so nothing leaks. */
void gn_reaper_push(gn_reaper *r, gn_free_fn *fn, void *arg);
/* Runs every queued job, then stops and frees the reaper. */
void gn_reaper_stop(gn_reaper *r);

#endif
