/*
 * External term format (etf.h): bounded decoding of requests, and
 * encoding through ei into a gn_buf.
 */
#include <ei.h>
#include <string.h>

#include "etf.h"

/* ETF tags (erts/emulator/beam/external.h) */
enum {
    T_NEW_FLOAT = 70,
    T_BIT_BINARY = 77,
    T_COMPRESSED = 80,
    T_ATOM_CACHE_REF = 82,
    T_NEW_PID = 88,
    T_NEW_PORT = 89,
    T_NEWER_REFERENCE = 90,
    T_SMALL_INTEGER = 97,
    T_INTEGER = 98,
    T_FLOAT = 99,
    T_ATOM = 100,
    T_REFERENCE = 101,
    T_PORT = 102,
    T_PID = 103,
    T_SMALL_TUPLE = 104,
    T_LARGE_TUPLE = 105,
    T_NIL = 106,
    T_STRING = 107,
    T_LIST = 108,
    T_BINARY = 109,
    T_SMALL_BIG = 110,
    T_LARGE_BIG = 111,
    T_NEW_FUN = 112,
    T_EXPORT = 113,
    T_NEW_REFERENCE = 114,
    T_SMALL_ATOM = 115,
    T_MAP = 116,
    T_V4_PORT = 120,
    T_ATOM_UTF8 = 118,
    T_SMALL_ATOM_UTF8 = 119,
};

static int need(const gn_etf *e, size_t n)
{
    return e->len - e->at >= n ? 0 : -1;
}

static uint64_t be(const gn_etf *e, size_t off, int bytes)
{
    return gn_be_get(e->buf + e->at + off, bytes);
}

/* Moves past `n` bytes. */
static int adv(gn_etf *e, size_t n)
{
    if (need(e, n))
        return -1;
    e->at += n;
    return 0;
}

/* Moves past an atom (the node of a pid, port or reference). */
static int skip_atom(gn_etf *e)
{
    char name[1024];
    size_t len;
    return gn_etf_atom(e, name, &len);
}

/* Skips one term; composite terms push their element count on an explicit
 * stack (no recursion: hostile nesting cannot overflow the C stack). */
int gn_etf_skip(gn_etf *e, gn_slice *out)
{
    size_t start = e->at;
    /* terms still to skip, per open level */
    uint64_t stack[64];
    uint64_t *pending = stack;
    size_t depth = 0, cap = 64;
    uint64_t *heap = NULL;
    int rc = -1;

    pending[0] = 1;
    depth = 1;
    while (depth > 0) {
        if (pending[depth - 1] == 0) {
            depth--;
            continue;
        }
        pending[depth - 1]--;
        if (need(e, 1))
            goto done;
        unsigned char tag = e->buf[e->at];
        uint64_t children = 0;
        switch (tag) {
        case T_SMALL_INTEGER:
            if (adv(e, 2))
                goto done;
            break;
        case T_INTEGER:
            if (adv(e, 5))
                goto done;
            break;
        case T_NEW_FLOAT:
            if (adv(e, 9))
                goto done;
            break;
        case T_FLOAT:
            if (adv(e, 32))
                goto done;
            break;
        case T_ATOM:
        case T_SMALL_ATOM:
        case T_ATOM_UTF8:
        case T_SMALL_ATOM_UTF8:
            if (skip_atom(e))
                goto done;
            break;
        case T_SMALL_TUPLE:
            if (need(e, 2))
                goto done;
            children = be(e, 1, 1);
            e->at += 2;
            break;
        case T_LARGE_TUPLE:
            if (need(e, 5))
                goto done;
            children = be(e, 1, 4);
            e->at += 5;
            break;
        case T_MAP:
            if (need(e, 5))
                goto done;
            children = 2 * be(e, 1, 4);
            e->at += 5;
            break;
        case T_NIL:
            e->at += 1;
            break;
        case T_STRING:
            if (need(e, 3) || adv(e, 3 + be(e, 1, 2)))
                goto done;
            break;
        case T_LIST:
            if (need(e, 5))
                goto done;
            children = be(e, 1, 4) + 1; /* the elements and the tail */
            e->at += 5;
            break;
        case T_BINARY:
            if (need(e, 5) || adv(e, 5 + be(e, 1, 4)))
                goto done;
            break;
        case T_BIT_BINARY:
            if (need(e, 6))
                goto done;
            {
                uint64_t n = be(e, 1, 4);
                unsigned bits = e->buf[e->at + 5];
                /* the VM's rule: an empty bitstring has 0 bits in its last byte */
                if ((n == 0 ? bits != 0 : bits < 1 || bits > 8) || adv(e, 6 + n))
                    goto done;
            }
            break;
        case T_SMALL_BIG:
            if (need(e, 2) || adv(e, 3 + be(e, 1, 1)))
                goto done;
            break;
        case T_LARGE_BIG:
            if (need(e, 5) || adv(e, 6 + be(e, 1, 4)))
                goto done;
            break;
        case T_PID:
        case T_NEW_PID:
            e->at += 1;
            if (skip_atom(e) || adv(e, tag == T_PID ? 9 : 12))
                goto done;
            break;
        case T_PORT:
        case T_NEW_PORT:
        case T_V4_PORT:
            e->at += 1;
            if (skip_atom(e) || adv(e, tag == T_PORT ? 5 : tag == T_NEW_PORT ? 8 : 12))
                goto done;
            break;
        case T_REFERENCE:
            e->at += 1;
            if (skip_atom(e) || adv(e, 5))
                goto done;
            break;
        case T_NEW_REFERENCE:
        case T_NEWER_REFERENCE: {
            if (need(e, 3))
                goto done;
            uint64_t words = be(e, 1, 2);
            if (words > 5)
                goto done;
            e->at += 3;
            if (skip_atom(e) || adv(e, (tag == T_NEW_REFERENCE ? 1 : 4) + 4 * words))
                goto done;
            break;
        }
        case T_EXPORT:
            e->at += 1;
            children = 3;
            break;
        case T_NEW_FUN: {
            if (need(e, 5))
                goto done;
            uint64_t size = be(e, 1, 4);
            /* Size counts itself and what follows the tag: arity, uniq,
             * index, numfree, then module, old index, old uniq, pid and
             * the free variables, walked as terms */
            if (size < 4 + 1 + 16 + 4 + 4 || need(e, 1 + (size_t)size))
                goto done;
            uint64_t numfree = be(e, 1 + 4 + 1 + 16 + 4, 4);
            e->at += 1 + 4 + 1 + 16 + 4 + 4;
            /* module, old index, old uniq, pid, free variables: a level */
            children = 4 + numfree;
            break;
        }
        default:
            goto done; /* compressed, atom cache references, unknown tags */
        }
        if (children > 0) {
            if (depth >= GN_ETF_MAX_DEPTH || children > e->len - e->at)
                goto done; /* each child takes at least a byte */
            if (depth == cap) {
                size_t ncap = cap * 4;
                uint64_t *n = malloc(ncap * sizeof *n);
                if (!n)
                    goto done;
                memcpy(n, pending, depth * sizeof *n);
                free(heap);
                heap = pending = n;
                cap = ncap;
            }
            pending[depth++] = children;
        }
    }
    if (out) {
        out->data = e->buf + start;
        out->len = e->at - start;
    }
    rc = 0;
done:
    free(heap);
    if (rc)
        e->at = start;
    return rc;
}

int gn_etf_tuple(gn_etf *e, uint32_t *arity)
{
    if (need(e, 2))
        return -1;
    if (e->buf[e->at] == T_SMALL_TUPLE) {
        *arity = (uint32_t)be(e, 1, 1);
        e->at += 2;
        return 0;
    }
    if (e->buf[e->at] == T_LARGE_TUPLE && !need(e, 5)) {
        *arity = (uint32_t)be(e, 1, 4);
        e->at += 5;
        return 0;
    }
    return -1;
}

int gn_etf_list(gn_etf *e, uint32_t *n, int *has_tail)
{
    if (need(e, 1))
        return -1;
    if (e->buf[e->at] == T_NIL) {
        e->at++;
        *n = 0;
        *has_tail = 0;
        return 0;
    }
    if (e->buf[e->at] == T_LIST && !need(e, 5)) {
        *n = (uint32_t)be(e, 1, 4);
        e->at += 5;
        *has_tail = 1;
        return 0;
    }
    return -1;
}

int gn_etf_nil(gn_etf *e)
{
    if (need(e, 1) || e->buf[e->at] != T_NIL)
        return -1;
    e->at++;
    return 0;
}

int gn_etf_atom(gn_etf *e, char name[1024], size_t *len)
{
    if (need(e, 2))
        return -1;
    unsigned char tag = e->buf[e->at];
    size_t n, head;
    if (tag == T_SMALL_ATOM || tag == T_SMALL_ATOM_UTF8) {
        n = e->buf[e->at + 1];
        head = 2;
    } else if ((tag == T_ATOM || tag == T_ATOM_UTF8) && !need(e, 3)) {
        n = (size_t)be(e, 1, 2);
        head = 3;
    } else {
        return -1;
    }
    if (need(e, head + n))
        return -1;
    const unsigned char *p = e->buf + e->at + head;
    size_t out = 0;
    if (tag == T_ATOM || tag == T_SMALL_ATOM) { /* Latin-1 */
        if (n > 255)
            return -1;
        for (size_t i = 0; i < n; i++) {
            if (p[i] < 0x80) {
                name[out++] = (char)p[i];
            } else {
                name[out++] = (char)(0xC0 | (p[i] >> 6));
                name[out++] = (char)(0x80 | (p[i] & 0x3F));
            }
        }
    } else {
        if (n > 1020)
            return -1;
        memcpy(name, p, n);
        out = n;
    }
    *len = out;
    e->at += head + n;
    return 0;
}

int gn_etf_int64(gn_etf *e, int64_t *v)
{
    if (need(e, 2))
        return -1;
    unsigned char tag = e->buf[e->at];
    if (tag == T_SMALL_INTEGER) {
        *v = e->buf[e->at + 1];
        e->at += 2;
        return 0;
    }
    if (tag == T_INTEGER && !need(e, 5)) {
        *v = (int32_t)(uint32_t)be(e, 1, 4);
        e->at += 5;
        return 0;
    }
    if (tag == T_SMALL_BIG && !need(e, 3)) {
        size_t n = e->buf[e->at + 1];
        int neg = e->buf[e->at + 2];
        if (need(e, 3 + n) || neg > 1)
            return -1;
        uint64_t mag = 0;
        for (size_t i = 0; i < n; i++) { /* little-endian digits */
            unsigned char d = e->buf[e->at + 3 + i];
            if (i >= 8 && d)
                return -1;
            if (i < 8)
                mag |= (uint64_t)d << (8 * i);
        }
        if (neg ? mag > (uint64_t)INT64_MAX + 1 : mag > (uint64_t)INT64_MAX)
            return -1;
        *v = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        e->at += 3 + n;
        return 0;
    }
    return -1;
}

int gn_etf_binary(gn_etf *e, gn_slice *bin)
{
    if (need(e, 5) || e->buf[e->at] != T_BINARY)
        return -1;
    size_t n = (size_t)be(e, 1, 4);
    if (need(e, 5 + n))
        return -1;
    bin->data = e->buf + e->at + 5;
    bin->len = n;
    e->at += 5 + n;
    return 0;
}

int gn_etf_is_atom(const gn_etf *e, const char *want)
{
    gn_etf probe = *e;
    char name[1024];
    size_t len;
    return gn_etf_atom(&probe, name, &len) == 0 && len == strlen(want) &&
           memcmp(name, want, len) == 0;
}

/* ------------------------------------------------------------------------ */
/* Encoding: ei's encoders write into reserved room at the buffer's end.     */

#define EI_INTO(b, room, call)                                                                     \
    do {                                                                                           \
        gn_buf_reserve((b), (room));                                                               \
        int ix_ = 0;                                                                               \
        char *at_ = (char *)(b)->data + (b)->len;                                                  \
        (void)(call);                                                                              \
        (b)->len += (size_t)ix_;                                                                   \
    } while (0)

void gn_enc_version(gn_buf *b)
{
    EI_INTO(b, 1, ei_encode_version(at_, &ix_));
}

void gn_enc_atom_len(gn_buf *b, const char *name, size_t len)
{
    EI_INTO(b, len + 3, ei_encode_atom_len_as(at_, &ix_, name, (int)len, ERLANG_UTF8, ERLANG_UTF8));
}

void gn_enc_atom(gn_buf *b, const char *name)
{
    gn_enc_atom_len(b, name, strlen(name));
}

void gn_enc_tuple(gn_buf *b, uint32_t arity)
{
    EI_INTO(b, 5, ei_encode_tuple_header(at_, &ix_, (int)arity));
}

void gn_enc_list(gn_buf *b, uint32_t n)
{
    EI_INTO(b, 5, ei_encode_list_header(at_, &ix_, (int)n));
}

void gn_enc_nil(gn_buf *b)
{
    gn_buf_byte(b, T_NIL);
}

void gn_enc_map(gn_buf *b, uint32_t n)
{
    EI_INTO(b, 5, ei_encode_map_header(at_, &ix_, (int)n));
}

void gn_enc_int(gn_buf *b, int64_t v)
{
    EI_INTO(b, 16, ei_encode_longlong(at_, &ix_, v));
}

void gn_enc_binary(gn_buf *b, const void *data, size_t len)
{
    gn_buf_byte(b, T_BINARY);
    gn_buf_be(b, len, 4);
    gn_buf_put(b, data, len);
}

void gn_enc_string(gn_buf *b, const char *text)
{
    gn_enc_binary(b, text, strlen(text));
}
