/*
 * Diagnostics on stderr that never block the event loop: lines go to a
 * bounded queue (64 KiB) that a thread of their own writes out. When
 * nobody drains stderr the queue fills, and further lines are counted and
 * dropped (the count is written once the pipe moves again). Everything a
 * caller must know also reaches the VM as an event: stderr is for people.
 */
#ifndef GN_PORT_DIAG_H
#define GN_PORT_DIAG_H

/* Queues "gen_native_port: <text>\n"; a no-op when gn_port_stderr is 0. */
void gn_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Before exit: waits up to `ms` for the queue to be written. */
void gn_diag_flush(int ms);

#endif
