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
 */
#include <stddef.h>
#include <stdint.h>

#include "../snapshot.h"
#include "port.h"

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gn_port_stderr = 0;
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
