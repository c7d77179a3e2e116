/*
 * The reaper thread. Invariant: `lock` protects the job list and `stopping`;
 * jobs run outside the lock, in the order they were pushed.
 */
#include <erl_nif.h>
#include <stddef.h>

#include "alloc.h"
#include "reaper.h"

typedef struct gn_job {
    struct gn_job *next;
    gn_free_fn *fn;
    void *arg;
} gn_job;

struct gn_reaper {
    ErlNifMutex *lock;
    ErlNifCond *cond;
    gn_job *head, *tail;
    int stopping;
    ErlNifTid tid;
};

static void *gn_reaper_main(void *arg)
{
    gn_reaper *r = arg;
    for (;;) {
        enif_mutex_lock(r->lock);
        while (r->head == NULL && !r->stopping)
            enif_cond_wait(r->cond, r->lock);
        gn_job *jobs = r->head;
        r->head = r->tail = NULL;
        int stopping = r->stopping;
        enif_mutex_unlock(r->lock);

        while (jobs) {
            gn_job *next = jobs->next;
            jobs->fn(jobs->arg);
            gn_free(jobs);
            jobs = next;
        }
        if (stopping)
            return NULL;
    }
}

gn_reaper *gn_reaper_start(void)
{
    gn_reaper *r = gn_alloc(sizeof(*r));
    if (!r)
        return NULL;
    r->head = r->tail = NULL;
    r->stopping = 0;
    r->lock = enif_mutex_create("gn_reaper_lock");
    r->cond = enif_cond_create("gn_reaper_cond");
    if (!r->lock || !r->cond)
        goto fail;
    ErlNifThreadOpts *opts = enif_thread_opts_create("gn_reaper_opts");
    if (!opts)
        goto fail;
    int rc = enif_thread_create("gn_reaper", &r->tid, gn_reaper_main, r, opts);
    enif_thread_opts_destroy(opts);
    if (rc != 0)
        goto fail;
    return r;

fail:
    if (r->cond)
        enif_cond_destroy(r->cond);
    if (r->lock)
        enif_mutex_destroy(r->lock);
    gn_free(r);
    return NULL;
}

void gn_reaper_push(gn_reaper *r, gn_free_fn *fn, void *arg)
{
    gn_job *job = r ? gn_alloc(sizeof(*job)) : NULL;
    if (!job) {
        fn(arg);
        return;
    }
    job->next = NULL;
    job->fn = fn;
    job->arg = arg;
    enif_mutex_lock(r->lock);
    if (r->tail)
        r->tail->next = job;
    else
        r->head = job;
    r->tail = job;
    enif_cond_signal(r->cond);
    enif_mutex_unlock(r->lock);
}

void gn_reaper_stop(gn_reaper *r)
{
    if (!r)
        return;
    enif_mutex_lock(r->lock);
    r->stopping = 1;
    enif_cond_signal(r->cond);
    enif_mutex_unlock(r->lock);
    enif_thread_join(r->tid, NULL);
    enif_cond_destroy(r->cond);
    enif_mutex_destroy(r->lock);
    gn_free(r);
}
