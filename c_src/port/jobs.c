/*
 * Jobs (jobs.h): the queues of long work, per store and global, and
 * running them a slice at a time.
 */
#include <stdlib.h>

#include "clock.h"
#include "jobs.h"

void *gn_job_new(size_t size, gn_job_run_fn run, gn_job_release_fn release)
{
    gn_job *j = calloc(1, size);
    if (!j)
        abort();
    j->run = run;
    j->release = release;
    return j;
}

void gn_job_free(gn_job *j)
{
    if (j->release)
        j->release(j);
    gn_buf_free(&j->tag);
    free(j);
}

void gn_jobs_mark_busy(gn_jobs *q, gn_pstore *s)
{
    if (!s->busy) {
        s->busy = 1;
        s->next_busy = q->busy;
        q->busy = s;
    }
}

void gn_jobs_push(gn_jobs *q, gn_pstore *s, gn_job *j)
{
    j->next = s->jobs;
    s->jobs = j;
    gn_jobs_mark_busy(q, s);
}

void gn_jobs_push_global(gn_jobs *q, gn_job *j)
{
    j->next = NULL;
    if (q->global_tail)
        q->global_tail->next = j;
    else
        q->global = j;
    q->global_tail = j;
}

void gn_jobs_run_next(gn_port *p, gn_pstore *s, uint64_t deadline)
{
    gn_job *j = s->jobs;
    if (j->run(p, s, j, deadline)) {
        s->jobs = j->next;
        gn_job_free(j);
    }
}

int gn_jobs_run_global(gn_jobs *q, gn_port *p, uint64_t deadline)
{
    while (q->global && gn_now_ns() < deadline) {
        gn_job *j = q->global;
        if (!j->run(p, NULL, j, deadline))
            break;
        q->global = j->next;
        if (!q->global)
            q->global_tail = NULL;
        gn_job_free(j);
    }
    return q->global != NULL;
}

static void free_list(gn_job *j)
{
    for (gn_job *next; j; j = next) {
        next = j->next;
        gn_job_free(j);
    }
}

void gn_jobs_forget(gn_jobs *q, gn_pstore *s)
{
    free_list(s->jobs);
    s->jobs = NULL;
    if (s->busy) {
        gn_pstore **at = &q->busy;
        while (*at != s)
            at = &(*at)->next_busy;
        *at = s->next_busy;
        s->busy = 0;
    }
}

void gn_jobs_free(gn_jobs *q)
{
    free_list(q->global);
    q->global = q->global_tail = NULL;
}
