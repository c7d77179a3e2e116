/*
 * The fuzz target (libFuzzer) for the snapshot checker, gn_etf_neutralize
 * (etf_scan.c): each input is one untrusted encoding, as restore reads a
 * key's or a value's from a snapshot.
 *
 *   make fuzz-etf FUZZ_TIME=600
 *
 * Built outside the VM, so the one enif_* call etf_scan.c makes is stubbed
 * here, deterministically from the atom's text; built with -DGN_SANITIZE,
 * so gn_alloc is malloc and ASan sees every byte. Besides memory errors
 * and undefined behaviour, it traps when a property of the result breaks:
 * the copy fits (asking once for a larger buffer) and is padded with zeros,
 * a second call gives the same bytes, the copy is accepted again unchanged
 * and names no atom the node does not know,
 * and the set of unknown atoms holds each unknown atom once, pointing into
 * the input. Not part of the NIF: the Makefile leaves it out of NIF_SRC.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The checker itself, in this translation unit, so the set's private slots
 * can be checked; the Makefile builds this file alone. */
#include "etf_scan.c"

#define gn_check(cond)                                                                             \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

/* Set while the checker reads its own copy, whose atoms are all known. */
static int gn_fuzz_copy_pass;

/* Which atoms "this node" knows: '' (as every node does) and those whose
 * first byte is odd, so inputs reach both outcomes. */
static int gn_fuzz_known(const unsigned char *text, size_t len)
{
    return len == 0 || (text[0] & 1);
}

int enif_make_existing_atom_len(ErlNifEnv *env, const char *name, size_t len, ERL_NIF_TERM *atom,
                                ErlNifCharEncoding enc)
{
    (void)env;
    gn_check(name && atom && enc == ERL_NIF_LATIN1 && len <= 255);
    gn_check(!gn_fuzz_copy_pass || gn_fuzz_known((const unsigned char *)name, len));
    *atom = 0;
    return gn_fuzz_known((const unsigned char *)name, len);
}

/* The set after a successful call: counted right, each entry once and
 * reachable from its hash, inside the encoding, and not one the stub knows. */
static void gn_fuzz_check_set(const gn_atom_set *set, const uint8_t *data, size_t len)
{
    size_t live = 0;
    gn_check(set->cap == 0 || (set->cap & (set->cap - 1)) == 0);
    gn_check(2 * set->count <= set->cap);
    gn_check(set->count <= len / 2); /* an atom takes at least 2 bytes */
    for (size_t i = 0; i < set->cap; i++) {
        const struct gn_atom_slot *s = &set->slots[i];
        if (!s->text)
            continue;
        live++;
        gn_check(s->text >= data && s->len <= 4 * 255 && s->len <= (size_t)(data + len - s->text));
        if (s->latin1) {
            gn_check(s->len <= 255 && !gn_fuzz_known(s->text, s->len));
        } else {
            int in_latin1;
            long chars = gn_utf8_chars(s->text, s->len, &in_latin1);
            gn_check(chars >= 0 && chars <= 255);
        }
        /* probing from its hash meets no hole and no equal entry before it */
        size_t j = gn_atom_hash(s->text, s->len, s->latin1) & (set->cap - 1);
        for (; j != i; j = (j + 1) & (set->cap - 1)) {
            const struct gn_atom_slot *t = &set->slots[j];
            gn_check(t->text);
            gn_check(!(t->len == s->len && t->latin1 == s->latin1 &&
                       memcmp(t->text, s->text, s->len) == 0));
        }
    }
    gn_check(live == set->count);
}

/* The placeholders' marker: any encoded term whose atoms the stub knows. */
static const unsigned char gn_fuzz_marker[] = {97, 7};

/* One call as restore makes it: a buffer of the input's size first, then
 * one as large as the copy asked for. Returns the result; *out is malloc'd. */
static int gn_fuzz_neutralize(const uint8_t *data, size_t size, unsigned char **out, size_t *used,
                              gn_atom_set *unknown)
{
    size_t cap = size ? size : 1;
    int r;
    *out = malloc(cap);
    gn_check(*out);
    r = gn_etf_neutralize(NULL, data, size, gn_fuzz_marker, sizeof(gn_fuzz_marker), *out, cap, used,
                          unknown);
    if (r == 2) {
        gn_check(*used > cap);
        cap = *used;
        free(*out);
        *out = malloc(cap);
        gn_check(*out);
        r = gn_etf_neutralize(NULL, data, size, gn_fuzz_marker, sizeof(gn_fuzz_marker), *out, cap,
                              used, unknown);
        gn_check(r == 1 && *used == cap);
    }
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *out, *again, *third = NULL;
    gn_atom_set unknown = {NULL, 0, 0}, unknown2 = {NULL, 0, 0};
    size_t used = (size_t)-1, used2 = (size_t)-1;

    int ok = gn_fuzz_neutralize(data, size, &out, &used, &unknown);
    int ok2 = gn_fuzz_neutralize(data, size, &again, &used2, &unknown2);
    gn_check(ok == ok2 && ok != 2);
    if (ok) {
        size_t padded = used > size ? used : size;
        gn_check(used >= 2 && used == used2);
        /* a placeholder takes 9 bytes and the marker's more than the
         * 3 of the smallest unknown atom, and twice its text at most */
        gn_check(used <= size + (size / 3 + 1) * (7 + sizeof(gn_fuzz_marker)) + size);
        gn_check(out[0] == 131);
        gn_check(memcmp(out, again, padded) == 0);
        for (size_t i = used; i < size; i++)
            gn_check(out[i] == 0);
        gn_check(unknown.count == unknown2.count);
        gn_fuzz_check_set(&unknown, data, size);

        /* The copy, without its padding, is taken again as it is. */
        size_t used3 = (size_t)-1;
        gn_fuzz_copy_pass = 1;
        int ok3 = gn_fuzz_neutralize(out, used, &third, &used3, &unknown);
        gn_fuzz_copy_pass = 0;
        gn_check(ok3 == 1 && used3 == used && memcmp(third, out, used) == 0);
        gn_check(unknown.count == unknown2.count); /* the copy's atoms are known */
    }
    gn_atom_set_free(&unknown);
    gn_atom_set_free(&unknown2);
    gn_check(!unknown.slots && !unknown.cap && !unknown.count);
    free(out);
    free(again);
    free(third);
    return 0;
}
