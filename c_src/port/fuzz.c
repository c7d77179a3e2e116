/*
 * The fuzz target (libFuzzer): the frame decoder, the request decoder, the
 * key encoder and every op, on a fresh in-memory program per input.
 *
 *   make fuzz FUZZ_TIME=600
 *
 * An input is fed twice: as a raw frame stream (lengths and all, split at
 * an input-chosen point so frames straddle reads), and as the body of one
 * frame. Long work is run to the end, and everything is freed: leaks and
 * any memory error abort the run.
 *
 * An input that starts with "GNRF" goes instead to what a replicated
 * program decodes (raft_log.c, image.c): the rest of it as a log entry, as
 * a request under a request id, as a snapshot (its request ids, then its
 * image loaded into a program). */
#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include "../snapshot.h"
#include "image.h"
#include "port.h"
#include "raft_log.h"

static void drain(gn_port *p)
{
    for (int i = 0; i < 100000 && gn_port_step(p); i++)
        ;
    gn_port_output(p)->len = 0;
}

/* The program's start, as main() has it: the CRC table. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    gn_crc32_init();
    return 0;
}

static void fuzz_replication(const uint8_t *data, size_t size)
{
    gn_entry e;
    if (gn_entry_parse(data, size, &e) == 0) {
        if (e.body + e.body_len > data + size)
            __builtin_trap();
        size_t at = 0;
        gn_item it;
        while (gn_item_next(&e, &at, &it) == 1)
            if (it.frame + it.frame_len > e.body + e.body_len)
                __builtin_trap();
    }
    gn_buf inner = {0};
    uint64_t client, seq;
    gn_unwrap_rid(data, size, &inner, &client, &seq);
    int local;
    gn_unwrap_read(data, size, &inner, &local);
    gn_buf_free(&inner);
    gn_rids ids = {0};
    int64_t clock;
    size_t at = gn_snapshot_parse(data, size, &clock, &ids);
    gn_rids_clear(&ids);
    gn_port *p = gn_port_new(NULL, GN_SYNC_NEVER);
    gn_port_load(p);
    gn_image_load(p, data + at, size - at);
    gn_buf img = {0};
    gn_image_write(p, &img); /* what was loaded writes back */
    gn_buf_free(&img);
    drain(p);
    gn_port_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gn_port_stderr = 0;
    if (size >= 4 && memcmp(data, "GNRF", 4) == 0) {
        fuzz_replication(data + 4, size - 4);
        return 0;
    }
    gn_port *p = gn_port_new(NULL, GN_SYNC_NEVER);
    gn_port_load(p);
    size_t cut = size ? data[0] % (size + 1) : 0;
    gn_port_feed(p, data, cut);
    gn_port_feed(p, data + cut, size - cut);
    drain(p);
    gn_port_free(p);

    p = gn_port_new(NULL, GN_SYNC_NEVER);
    gn_port_load(p);
    unsigned char len[4];
    gn_be_put(len, size, 4);
    gn_port_feed(p, len, 4);
    gn_port_feed(p, data, size);
    drain(p);
    gn_port_free(p);
    return 0;
}
