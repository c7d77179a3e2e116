/*
 * An external term format walker that copies an encoding with the atoms this
 * node does not know replaced by placeholders (see etf_scan.h). It follows
 * the encoding iteratively,
 * counting the terms still to read, so a deeply nested term costs no C
 * stack; every length is checked against the bytes left before it is used.
 * No locks: the atom set belongs to its caller.
 */
#include <stdint.h>
#include <string.h>

#include "etf.h"
#include "etf_scan.h"
#include "snapshot.h"
#include "alloc.h"

struct gn_atom_slot {
    const unsigned char *text; /* NULL: free */
    size_t len;
    int latin1;
};

static uint64_t gn_atom_hash(const unsigned char *text, size_t len, int latin1)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)latin1;
    for (size_t i = 0; i < len; i++)
        h = (h ^ text[i]) * 1099511628211ull;
    return h;
}

static int gn_atom_set_add(gn_atom_set *set, const unsigned char *text, size_t len, int latin1)
{
    if (2 * (set->count + 1) > set->cap) {
        size_t cap = set->cap ? 2 * set->cap : 64;
        struct gn_atom_slot *slots = gn_alloc(cap * sizeof(*slots));
        if (!slots)
            return 0;
        memset(slots, 0, cap * sizeof(*slots));
        for (size_t i = 0; i < set->cap; i++) {
            struct gn_atom_slot *old = &set->slots[i];
            if (!old->text)
                continue;
            size_t j = gn_atom_hash(old->text, old->len, old->latin1) & (cap - 1);
            while (slots[j].text)
                j = (j + 1) & (cap - 1);
            slots[j] = *old;
        }
        gn_free(set->slots);
        set->slots = slots;
        set->cap = cap;
    }
    size_t j = gn_atom_hash(text, len, latin1) & (set->cap - 1);
    for (; set->slots[j].text; j = (j + 1) & (set->cap - 1)) {
        struct gn_atom_slot *s = &set->slots[j];
        if (s->len == len && s->latin1 == latin1 && memcmp(s->text, text, len) == 0)
            return 1;
    }
    set->slots[j].text = text;
    set->slots[j].len = len;
    set->slots[j].latin1 = latin1;
    set->count++;
    return 1;
}

void gn_atom_set_free(gn_atom_set *set)
{
    gn_free(set->slots);
    set->slots = NULL;
    set->cap = set->count = 0;
}

/* Strict UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), as the VM checks atom text: the number of characters, or -1.
 * *latin1 is set when every character is below 256. */
static long gn_utf8_chars(const unsigned char *p, size_t len, int *latin1)
{
    long chars = 0;
    *latin1 = 1;
    for (size_t i = 0; i < len; chars++) {
        unsigned c = p[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1, cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3, cp = c & 0x07;
        } else {
            return -1;
        }
        if (len - i - 1 < n)
            return -1;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return -1;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return -1;
        if (cp > 0xFF)
            *latin1 = 0;
        i += n + 1;
    }
    return chars;
}

typedef struct gn_scan {
    ErlNifEnv *env;
    const unsigned char *p, *end;
    unsigned char *out; /* cap bytes; n counts what the copy takes, */
    size_t cap, n;      /* written only while it fits */
    const unsigned char *marker;
    size_t marker_len;
    gn_atom_set *unknown;
} gn_scan;

static int gn_need(const gn_scan *s, size_t n)
{
    return (size_t)(s->end - s->p) >= n;
}

static void gn_emit(gn_scan *s, const unsigned char *bytes, size_t n)
{
    if (s->n <= s->cap && n <= s->cap - s->n)
        memcpy(s->out + s->n, bytes, n);
    s->n += n;
}

static void gn_copy(gn_scan *s, size_t n)
{
    gn_emit(s, s->p, n);
    s->p += n;
}

/* Whether the atom with this text is known to the VM. */
static int gn_atom_known(ErlNifEnv *env, const unsigned char *text, size_t len, int utf8)
{
    ERL_NIF_TERM atom;
    char buf[256];
    if (!utf8)
        return enif_make_existing_atom_len(env, (const char *)text, len, &atom, ERL_NIF_LATIN1);
    /* UTF-8 text within Latin-1: look it up as Latin-1 */
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < 0x80) {
            buf[n++] = (char)text[i];
        } else {
            buf[n++] = (char)(((text[i] & 0x03) << 6) | (text[i + 1] & 0x3F));
            i++;
        }
    }
    return enif_make_existing_atom_len(env, buf, n, &atom, ERL_NIF_LATIN1);
}

/* The placeholder of an unknown atom: {Marker, <<Text in UTF-8>>}, the same
 * for the same atom however it is encoded, different for different atoms,
 * and equal to no term of the snapshot (Marker is a fresh reference). */
static void gn_emit_placeholder(gn_scan *s, const unsigned char *text, size_t len, int utf8)
{
    unsigned char hdr[5];
    size_t bytes = len;
    if (!utf8)
        for (size_t i = 0; i < len; i++)
            bytes += text[i] >= 0x80;
    gn_emit(s, (const unsigned char *)"\150\002", 2); /* SMALL_TUPLE_EXT, 2 */
    gn_emit(s, s->marker, s->marker_len);
    hdr[0] = 109; /* BINARY_EXT */
    for (int i = 0; i < 4; i++)
        hdr[1 + i] = (unsigned char)(bytes >> (24 - 8 * i));
    gn_emit(s, hdr, 5);
    if (utf8) {
        gn_emit(s, text, len);
        return;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c[2] = {(unsigned char)(0xC0 | (text[i] >> 6)),
                              (unsigned char)(0x80 | (text[i] & 0x3F))};
        if (text[i] < 0x80)
            gn_emit(s, text + i, 1);
        else
            gn_emit(s, c, 2);
    }
}

/* An atom at s->p: checked; kept if the node knows it, else noted and
 * written out as its placeholder, or as '' where only an atom may stand
 * (`in_term` 0: the node of a pid, port or reference, a fun's module). */
static int gn_scan_atom(gn_scan *s, int in_term)
{
    size_t hdr, len;
    int utf8;
    if (!gn_need(s, 2))
        return 0;
    switch (s->p[0]) {
    case 100: /* ATOM_EXT */
        hdr = 3, utf8 = 0;
        break;
    case 115: /* SMALL_ATOM_EXT */
        hdr = 2, utf8 = 0;
        break;
    case 118: /* ATOM_UTF8_EXT */
        hdr = 3, utf8 = 1;
        break;
    case 119: /* SMALL_ATOM_UTF8_EXT */
        hdr = 2, utf8 = 1;
        break;
    default:
        return 0;
    }
    if (!gn_need(s, hdr))
        return 0;
    len = gn_be_get(s->p + 1, (int)hdr - 1);
    if (!gn_need(s, hdr + len))
        return 0;
    const unsigned char *text = s->p + hdr;
    int in_latin1 = 1;
    if (utf8) {
        long chars = gn_utf8_chars(text, len, &in_latin1);
        if (chars < 0 || chars > 255)
            return 0;
    } else if (len > 255) {
        return 0;
    }
    if (in_latin1 && gn_atom_known(s->env, text, len, utf8)) {
        gn_copy(s, hdr + len);
        return 1;
    }
    if (!gn_atom_set_add(s->unknown, text, len, !utf8))
        return 0;
    s->p += hdr + len;
    if (in_term)
        gn_emit_placeholder(s, text, len, utf8);
    else
        gn_emit(s, (const unsigned char *)"\167\000", 2); /* '' */
    return 1;
}

int gn_etf_neutralize(ErlNifEnv *env, const unsigned char *data, size_t len,
                      const unsigned char *marker, size_t marker_len, unsigned char *out,
                      size_t cap, size_t *used, gn_atom_set *unknown)
{
    gn_scan sc = {env, data, data + len, out, cap, 0, marker, marker_len, unknown};
    gn_scan *s = &sc;
    if (len < 1 || data[0] != 131)
        return 0;
    gn_copy(s, 1);
    uint64_t pending = 1; /* terms still to read */
    while (pending) {
        /* every term takes at least one byte */
        if (pending > (uint64_t)(s->end - s->p) || !gn_need(s, 1))
            return 0;
        pending--;
        size_t n;
        if (gn_etf_leaf(s->p, (size_t)(s->end - s->p), &n)) {
            if (!gn_need(s, n))
                return 0;
            gn_copy(s, n);
            continue;
        }
        switch (s->p[0]) {
        case 100:
        case 115:
        case 118:
        case 119:
            if (!gn_scan_atom(s, 1))
                return 0;
            continue;
        case 104: /* SMALL_TUPLE_EXT */
            if (!gn_need(s, 2))
                return 0;
            pending += s->p[1];
            n = 2;
            break;
        case 105: /* LARGE_TUPLE_EXT */
        case 108: /* LIST_EXT: the elements, then the tail */
        case 116: /* MAP_EXT: keys and values */
            if (!gn_need(s, 5))
                return 0;
            pending +=
                (uint64_t)gn_be_get(s->p + 1, 4) * (s->p[0] == 116 ? 2 : 1) + (s->p[0] == 108);
            n = 5;
            break;
        case 101: /* REFERENCE_EXT: node, id 4, creation 1 */
        case 102: /* PORT_EXT: node, id 4, creation 1 */
        case 103: /* PID_EXT: node, id 4, serial 4, creation 1 */
        case 88:  /* NEW_PID_EXT: node, id 4, serial 4, creation 4 */
        case 89:  /* NEW_PORT_EXT: node, id 4, creation 4 */
        case 120: /* V4_PORT_EXT: node, id 8, creation 4 */
        {
            unsigned tag = s->p[0];
            gn_copy(s, 1);
            if (!gn_scan_atom(s, 0))
                return 0;
            n = tag == 103 ? 9 : tag == 88 || tag == 120 ? 12 : tag == 89 ? 8 : 5;
            break;
        }
        case 114: /* NEW_REFERENCE_EXT: len 2, node, creation 1, id 4 x len */
        case 90:  /* NEWER_REFERENCE_EXT: len 2, node, creation 4, id 4 x len */
        {
            if (!gn_need(s, 3))
                return 0;
            size_t words = gn_be_get(s->p + 1, 2);
            size_t creation = s->p[0] == 114 ? 1 : 4;
            gn_copy(s, 3);
            if (!gn_scan_atom(s, 0))
                return 0;
            n = creation + 4 * words;
            break;
        }
        case 112: /* NEW_FUN_EXT: size 4, arity 1, uniq 16, index 4, numfree 4,
                   * module, old index, old uniq, pid, free variables */
            if (!gn_need(s, 30))
                return 0;
            pending += 3 + (uint64_t)gn_be_get(s->p + 26, 4);
            gn_copy(s, 30);
            if (!gn_scan_atom(s, 0))
                return 0;
            continue;
        case 113: /* EXPORT_EXT: module, function, arity */
            gn_copy(s, 1);
            if (!gn_scan_atom(s, 0) || !gn_scan_atom(s, 0))
                return 0;
            pending += 1;
            continue;
        default: /* compressed, atom cache references, old funs, a leaf's
                  * cut header, ... */
            return 0;
        }
        if (!gn_need(s, n))
            return 0;
        gn_copy(s, n);
    }
    if (s->p != s->end)
        return 0;
    if (s->n > cap || len > cap) {
        *used = s->n > len ? s->n : len;
        return 2;
    }
    *used = s->n;
    memset(out + s->n, 0, len - (s->n < len ? s->n : len));
    return 1;
}
