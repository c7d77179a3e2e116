/*
 * Jobs: long work run a slice at a time by gn_port_step. A store's jobs
 * (a streamed reply, a purge of many expired entries, a big put_many) run
 * before anything else on the store; global jobs (a restore, whose store
 * does not exist yet, and a compaction) run in the order they came.
 *
 * A job is a struct that begins with a gn_job: `run` does a slice of it,
 * `release` frees what it holds. Jobs know nothing of requests: the
 * requests that wait behind a store's jobs are dispatch.c's.
 */
#ifndef GN_PORT_JOBS_H
#define GN_PORT_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "port.h"
#include "pstore.h"

typedef struct gn_job gn_job;

/* Runs a slice of `j`, about until `deadline` (a CLOCK_MONOTONIC time in
 * ns); 1 when the job is through. `s` is its store, NULL for a global job. */
typedef int (*gn_job_run_fn)(gn_port *p, gn_pstore *s, gn_job *j, uint64_t deadline);
/* Frees what the job holds, not the job; NULL if it holds nothing. */
typedef void (*gn_job_release_fn)(gn_job *j);

struct gn_job {
    gn_job *next;
    gn_job_run_fn run;
    gn_job_release_fn release;
    gn_buf tag; /* the tag of the request it answers, if it does */
};

typedef struct gn_jobs {
    gn_pstore *busy;              /* stores with jobs or waiting requests */
    gn_job *global, *global_tail; /* restores and compactions */
} gn_jobs;

/* A job of `size` bytes (its struct's, which begins with gn_job), zeroed. */
void *gn_job_new(size_t size, gn_job_run_fn run, gn_job_release_fn release);
void gn_job_free(gn_job *j);

/* Puts `j` at the head of s's jobs: it runs next. */
void gn_jobs_push(gn_jobs *q, gn_pstore *s, gn_job *j);
void gn_jobs_push_global(gn_jobs *q, gn_job *j);
/* Puts `s` on the list of stores with work (jobs or waiting requests). */
void gn_jobs_mark_busy(gn_jobs *q, gn_pstore *s);

/* Runs a slice of s's first job, and frees it once it is through. */
void gn_jobs_run_next(gn_port *p, gn_pstore *s, uint64_t deadline);
/* Runs global jobs until the deadline; 1 while some remain. */
int gn_jobs_run_global(gn_jobs *q, gn_port *p, uint64_t deadline);

/* A store about to be freed: frees its jobs and takes it off the busy
 * list. */
void gn_jobs_forget(gn_jobs *q, gn_pstore *s);
/* Frees the global jobs. */
void gn_jobs_free(gn_jobs *q);

#endif
