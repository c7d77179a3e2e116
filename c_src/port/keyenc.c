/*
 * Canonical key encodings (see keyenc.h): an external-term-format term
 * becomes bytes whose memcmp order is Erlang term order (OTP 25) and which
 * are equal exactly when the terms are the same key.
 *
 * Layout. Every encoding starts with a type byte, in term order
 * (number < atom < reference < fun < port < pid < tuple < map < [] < list
 * < bitstring), and every encoding is self-delimiting (no encoding is a
 * proper prefix of another), so a sequence of encodings compares like the
 * sequence of terms, element by element. Compound terms are the
 * concatenation of their parts:
 *
 *   0x10 0x11 0x12    negative, zero, positive number (GN_KEY_EQ), integer
 *                     (GN_KEY_EXACT)
 *   0x13 0x14 0x15    negative, zero, positive float (GN_KEY_EXACT only)
 *   0x20 text         atom
 *   0x30 node cr n w  reference: node (text), creation (4 bytes), n (1
 *                     byte, the id words without high zero words), the
 *                     words high first (4 bytes each)
 *   0x40 mod ix u nf  fun: module (text), index (4), old uniq (4, sign
 *        vars         bit flipped), uvar(number of free variables), them
 *   0x41 mod f ar     external fun (fun M:F/A): module, function (text),
 *                     uvar(arity)
 *   0x50 node cr id   port: node (text), creation (4), id (8)
 *   0x60 ser id node  pid: serial (4), id (4), node (text), creation (4)
 *        cr
 *   0x70 uvar(n) e..  tuple: arity, then the elements
 *   0x80 uvar(n) k.. v..   map: size, the keys in ascending order (always
 *                     encoded GN_KEY_EXACT, as the VM compares map keys),
 *                     then the values in key order
 *   0x90              []
 *   0xA0 head tail    a cons cell: [1, 2] is 0xA0 <1> 0xA0 <2> 0x90 and
 *                     [1 | 2] is 0xA0 <1> <2>
 *   0xB0 bits         bitstring
 *
 * Fixed-width fields are big-endian. uvar is an order-preserving varint:
 * 0xxxxxxx (< 2^7), 10xxxxxx +1 byte (< 2^14), 110xxxxx +2 (< 2^21),
 * 1110xxxx +3 (< 2^28), 0xF0 +8 bytes.
 *
 * Text (atoms, node and module names) and bitstrings: the bytes as they are,
 * except 0x00 which becomes 0x00 0xFF, then a terminator 0x00 0x08. A
 * bitstring whose last byte is partial (k = 1..7 bits) ends with that byte,
 * its unused bits zero, escaped the same way, then 0x00 k. Atoms are UTF-8
 * (Latin-1 atoms are converted), whose byte order is code point order, as
 * the VM orders atoms.
 *
 * Numbers. Zero is its type byte alone (0.0 and -0.0 included: OTP 25 has
 * 0.0 =:= -0.0, and ETS and maps treat them as one key). A nonzero number
 * is |x| = 0.1bbbb (binary) x 2^E, exact for integers of any size and for
 * floats, so an integer and a float of the same value get the same bytes
 * and compare by value:
 *
 *   type  uvar(E + 1100)  mantissa chunks  0x00
 *
 * The mantissa is the bits after the leading one, trailing zeros dropped,
 * 7 bits per byte with the high bit set (the last chunk padded with zeros),
 * so a shorter mantissa sorts first. For a negative number every byte after
 * the type byte is inverted (x ^ 0xFF), which reverses the order.
 *
 * GN_KEY_EXACT differs only in numbers: integers and floats get distinct
 * type bytes, all integers before all floats, which is how the VM orders
 * map keys (%{2 => 0} < %{1.0 => 0}); an EXACT encoding is therefore
 * ordered like a map key.
 *
 * Pids, ports and references are ordered as OTP 25 orders them: pids by
 * serial, id, then node and creation; ports and references by node,
 * creation, then id. A reference's trailing (high) zero words are dropped:
 * the VM takes #Ref<n.0.2.1> == #Ref<n.2.1>.
 *
 * Funs are ordered as OTP 25 does, local funs before external ones: a local
 * fun by module, index, old uniq, number of free variables, then the free
 * variables (in the current mode, so fun() -> X end for X = 1 and X = 1.0
 * are == but not =:=); the creator pid, arity, md5 and old index in the
 * external format are not part of a fun's identity and are left out. Old
 * uniq compares as a signed 32-bit integer, as the VM does. An external
 * fun is ordered by module, function, arity.
 *
 * Not accepted (-1): FLOAT_EXT (the old string format), ATOM_CACHE_REF,
 * compressed terms, the removed FUN_EXT, NaN and infinities, invalid UTF-8
 * atoms and atoms over 255 characters, maps with duplicate keys, references
 * with no id words or more than 5, the VM-internal atom index formats, and
 * nesting deeper than GN_KEY_MAX_DEPTH open containers (a container in last
 * position, such as a list's tail or a tuple's last element, does not
 * count). The walk keeps its own stack: hostile input cannot overflow the C
 * stack.
 *
 * Where this differs from the VM, all on input term_to_binary/1 does not
 * write: some values binary_to_term/1 refuses are accepted here (a local
 * pid's serial out of range, the old PID_EXT, PORT_EXT and REFERENCE_EXT
 * with any id); references of other nodes with fewer than 3 words or high
 * zero words follow ==, while OTP 25's own maps disagree with it about them
 * (and crash on some of 4 and 5 words).
 */
#include <string.h>

#include "keyenc.h"

#define GN_KEY_MAX_DEPTH 10000
#define GN_KEY_EXP_BIAS 1100

enum {
    KT_NEG = 0x10,
    KT_ZERO = 0x11,
    KT_POS = 0x12,
    KT_FNEG = 0x13,
    KT_FZERO = 0x14,
    KT_FPOS = 0x15,
    KT_ATOM = 0x20,
    KT_REF = 0x30,
    KT_FUN = 0x40,
    KT_EXPORT = 0x41,
    KT_PORT = 0x50,
    KT_PID = 0x60,
    KT_TUPLE = 0x70,
    KT_MAP = 0x80,
    KT_NIL = 0x90,
    KT_CONS = 0xA0,
    KT_BITS = 0xB0,
};

/* External term format tags. */
enum {
    ETF_NEW_FLOAT = 70,
    ETF_BIT_BINARY = 77,
    ETF_NEW_PID = 88,
    ETF_NEW_PORT = 89,
    ETF_NEWER_REFERENCE = 90,
    ETF_SMALL_INTEGER = 97,
    ETF_INTEGER = 98,
    ETF_ATOM = 100,
    ETF_REFERENCE = 101,
    ETF_PORT = 102,
    ETF_PID = 103,
    ETF_SMALL_TUPLE = 104,
    ETF_LARGE_TUPLE = 105,
    ETF_NIL = 106,
    ETF_STRING = 107,
    ETF_LIST = 108,
    ETF_BINARY = 109,
    ETF_SMALL_BIG = 110,
    ETF_LARGE_BIG = 111,
    ETF_NEW_FUN = 112,
    ETF_EXPORT = 113,
    ETF_NEW_REFERENCE = 114,
    ETF_SMALL_ATOM = 115,
    ETF_MAP = 116,
    ETF_ATOM_UTF8 = 118,
    ETF_SMALL_ATOM_UTF8 = 119,
    ETF_V4_PORT = 120,
};

enum { K_SEQ, K_LIST, K_MAP }; /* frame kinds; K_SEQ and K_LIST pop early */

/* An open container: the terms it still has to give. */
typedef struct {
    size_t left;
    size_t span0; /* a map: its first pair in the span stack */
    unsigned char kind, mode;
} kframe;

/* A map pair being encoded: where its key and value went in `out`. */
typedef struct {
    size_t koff, klen, voff, vlen;
} kspan;

/* Per-thread scratch, kept between calls so that a call allocates nothing
 * once warm: the frame stack, the map pairs, the map reordering buffer. */
static _Thread_local gn_buf ke_frames, ke_spans, ke_tmp;

#define KE_SCRATCH_KEEP (1u << 20) /* bytes of scratch kept between calls */

static inline uint32_t get32(const unsigned char *p)
{
    return (uint32_t)gn_be_get(p, 4);
}

static inline size_t put_uvar(unsigned char *p, uint64_t u)
{
    if (u < 0x80) {
        p[0] = (unsigned char)u;
        return 1;
    }
    if (u < 0x4000) {
        p[0] = (unsigned char)(0x80 | u >> 8);
        p[1] = (unsigned char)u;
        return 2;
    }
    if (u < 0x200000) {
        p[0] = (unsigned char)(0xC0 | u >> 16);
        p[1] = (unsigned char)(u >> 8);
        p[2] = (unsigned char)u;
        return 3;
    }
    if (u < 0x10000000) {
        p[0] = (unsigned char)(0xE0 | u >> 24);
        p[1] = (unsigned char)(u >> 16);
        p[2] = (unsigned char)(u >> 8);
        p[3] = (unsigned char)u;
        return 4;
    }
    p[0] = 0xF0;
    for (int k = 8; k >= 1; k--, u >>= 8)
        p[k] = (unsigned char)u;
    return 9;
}

static inline void out_uvar(gn_buf *out, uint64_t u)
{
    gn_buf_room(out, 9);
    out->len += put_uvar(out->data + out->len, u);
}

static inline void invert(unsigned char *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        p[k] = (unsigned char)~p[k];
}

/* A nonzero number: `w` holds the mantissa bits after the leading one,
 * left-aligned. */
static void put_num(gn_buf *out, unsigned char type, int neg, int64_t e, uint64_t w)
{
    gn_buf_room(out, 32);
    unsigned char *p = out->data + out->len;
    size_t k = 0;
    p[k++] = type;
    k += put_uvar(p + k, (uint64_t)(e + GN_KEY_EXP_BIAS));
    while (w) {
        p[k++] = (unsigned char)(0x80 | w >> 57);
        w <<= 7;
    }
    p[k++] = 0;
    if (neg)
        invert(p + 1, k - 1);
    out->len += k;
}

/* A nonzero integer of magnitude m. */
static inline void put_int(gn_buf *out, int neg, uint64_t m)
{
    int bits = 64 - __builtin_clzll(m);
    uint64_t w = bits == 1 ? 0 : m << (65 - bits);
    put_num(out, neg ? KT_NEG : KT_POS, neg, bits, w);
}

static inline void put_small(gn_buf *out, int64_t v)
{
    if (v == 0) {
        gn_buf_room(out, 1);
        out->data[out->len++] = KT_ZERO;
    } else if (v < 0) {
        put_int(out, 1, (uint64_t)0 - (uint64_t)v);
    } else {
        put_int(out, 0, (uint64_t)v);
    }
}

/* A bignum: n little-endian digit bytes. */
static void put_big(gn_buf *out, const unsigned char *d, size_t n, int neg)
{
    size_t top = n;
    while (top > 0 && d[top - 1] == 0)
        top--;
    if (top == 0) {
        put_small(out, 0);
        return;
    }
    top--;
    if (top < 8) {
        uint64_t m = 0;
        for (size_t k = top + 1; k-- > 0;)
            m = m << 8 | d[k];
        put_int(out, neg, m);
        return;
    }
    size_t low = 0;
    while (d[low] == 0)
        low++;
    int topbits = 32 - __builtin_clz(d[top]);
    size_t start = out->len;
    /* mantissa: at most 8 bits per byte, 7 per chunk */
    gn_buf_room(out, 16 + (top - low + 1) + (top - low + 1) / 7 + 2);
    unsigned char *p = out->data;
    size_t k = out->len;
    p[k++] = neg ? KT_NEG : KT_POS;
    k += put_uvar(p + k, (uint64_t)top * 8 + (uint64_t)topbits + GN_KEY_EXP_BIAS);
    size_t mant = k;
    uint32_t acc = d[top] & ((1u << (topbits - 1)) - 1);
    int nb = topbits - 1;
    for (size_t j = top; j-- > low;) {
        acc = acc << 8 | d[j];
        nb += 8;
        while (nb >= 7) {
            p[k++] = (unsigned char)(0x80 | ((acc >> (nb - 7)) & 0x7F));
            nb -= 7;
        }
        acc &= (1u << nb) - 1;
    }
    if (nb > 0)
        p[k++] = (unsigned char)(0x80 | ((acc << (7 - nb)) & 0x7F));
    while (k > mant && p[k - 1] == 0x80) /* the padding of the lowest byte */
        k--;
    p[k++] = 0;
    if (neg)
        invert(p + start + 1, k - start - 1);
    out->len = k;
}

/* NEW_FLOAT_EXT's 8 bytes. Returns -1 for NaN and infinities. */
static int put_float(gn_buf *out, const unsigned char *q, int exact)
{
    uint64_t bits = 0;
    for (int k = 0; k < 8; k++)
        bits = bits << 8 | q[k];
    int neg = (int)(bits >> 63);
    int bexp = (int)(bits >> 52 & 0x7FF);
    uint64_t frac = bits & ((UINT64_C(1) << 52) - 1);
    if (bexp == 0x7FF)
        return -1;
    if (bexp == 0 && frac == 0) {
        gn_buf_room(out, 1);
        out->data[out->len++] = exact ? KT_FZERO : KT_ZERO;
        return 0;
    }
    int64_t e;
    uint64_t w;
    if (bexp) {
        e = bexp - 1022;
        w = frac << 12;
    } else { /* subnormal: 0.f x 2^-1022 */
        int top = 63 - __builtin_clzll(frac);
        e = top - 1073;
        w = top ? frac << (64 - top) : 0;
    }
    unsigned char type = exact ? (neg ? KT_FNEG : KT_FPOS) : (neg ? KT_NEG : KT_POS);
    put_num(out, type, neg, e, w);
    return 0;
}

/* Bytes with 0x00 escaped as 0x00 0xFF. */
static void put_escaped(gn_buf *out, const unsigned char *p, size_t n)
{
    while (n) {
        const unsigned char *z = memchr(p, 0, n);
        size_t run = z ? (size_t)(z - p) : n;
        if (run) {
            gn_buf_room(out, run);
            memcpy(out->data + out->len, p, run);
            out->len += run;
        }
        if (!z)
            return;
        gn_buf_room(out, 2);
        out->data[out->len++] = 0x00;
        out->data[out->len++] = 0xFF;
        p += run + 1;
        n -= run + 1;
    }
}

static inline void put_end(gn_buf *out, unsigned char bits)
{
    gn_buf_room(out, 2);
    out->data[out->len++] = 0x00;
    out->data[out->len++] = bits;
}

/* Validates UTF-8 as the VM does for atoms (no overlong forms, no
 * surrogates, at most U+10FFFF); returns the number of characters or -1. */
static long utf8_chars(const unsigned char *p, size_t n)
{
    long chars = 0;
    size_t k = 0;
    while (k < n) {
        unsigned char c = p[k];
        chars++;
        if (c < 0x80) {
            k++;
            continue;
        }
        size_t more;
        uint32_t cp, min;
        if (c >= 0xC2 && c < 0xE0) {
            more = 1;
            cp = c & 0x1F;
            min = 0x80;
        } else if (c >= 0xE0 && c < 0xF0) {
            more = 2;
            cp = c & 0x0F;
            min = 0x800;
        } else if (c >= 0xF0 && c < 0xF5) {
            more = 3;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return -1;
        }
        if (more > n - k - 1)
            return -1;
        for (size_t j = 1; j <= more; j++) {
            if ((p[k + j] & 0xC0) != 0x80)
                return -1;
            cp = cp << 6 | (p[k + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000))
            return -1;
        k += more + 1;
    }
    return chars;
}

/* An atom term at buf[*ip] (any of the four atom tags): appends its text.
 * Returns 0 or -1. */
static int put_atom(const unsigned char *buf, size_t len, size_t *ip, gn_buf *out)
{
    size_t i = *ip, n;
    if (len - i < 2)
        return -1;
    unsigned char tag = buf[i];
    int latin1;
    switch (tag) {
    case ETF_ATOM:
    case ETF_ATOM_UTF8:
        if (len - i < 3)
            return -1;
        n = (size_t)buf[i + 1] << 8 | buf[i + 2];
        i += 3;
        latin1 = tag == ETF_ATOM;
        break;
    case ETF_SMALL_ATOM:
    case ETF_SMALL_ATOM_UTF8:
        n = buf[i + 1];
        i += 2;
        latin1 = tag == ETF_SMALL_ATOM;
        break;
    default:
        return -1;
    }
    if (n > len - i)
        return -1;
    const unsigned char *p = buf + i;
    if (latin1) {
        if (n > 255)
            return -1;
        gn_buf_room(out, 2 * n + 2);
        unsigned char *o = out->data + out->len;
        for (size_t k = 0; k < n; k++) {
            unsigned char c = p[k];
            if (c >= 0x80) {
                *o++ = (unsigned char)(0xC0 | c >> 6);
                *o++ = (unsigned char)(0x80 | (c & 0x3F));
            } else if (c) {
                *o++ = c;
            } else {
                *o++ = 0x00;
                *o++ = 0xFF;
            }
        }
        *o++ = 0x00;
        *o++ = 0x08;
        out->len = (size_t)(o - out->data);
    } else {
        long chars = utf8_chars(p, n);
        if (chars < 0 || chars > 255)
            return -1;
        put_escaped(out, p, n);
        put_end(out, 8);
    }
    *ip = i + n;
    return 0;
}

/* The fields of a pid: node (encoded text, appended to `out`), id, serial,
 * creation. */
static int read_pid(const unsigned char *buf, size_t len, size_t *ip, gn_buf *out, uint32_t *id,
                    uint32_t *serial, uint32_t *creation)
{
    size_t i = *ip;
    if (i >= len)
        return -1;
    unsigned char tag = buf[i++];
    if (tag != ETF_PID && tag != ETF_NEW_PID)
        return -1;
    if (put_atom(buf, len, &i, out) < 0)
        return -1;
    size_t crlen = tag == ETF_PID ? 1 : 4;
    if (len - i < 8 + crlen)
        return -1;
    *id = get32(buf + i);
    *serial = get32(buf + i + 4);
    *creation = crlen == 1 ? buf[i + 8] : get32(buf + i + 8);
    *ip = i + 8 + crlen;
    return 0;
}

static int span_less(const unsigned char *d, const kspan *a, const kspan *b)
{
    size_t n = a->klen < b->klen ? a->klen : b->klen;
    int c = memcmp(d + a->koff, d + b->koff, n);
    return c < 0 || (c == 0 && a->klen < b->klen);
}

static void sift_down(const unsigned char *d, kspan *s, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n)
            return;
        if (child + 1 < n && span_less(d, &s[child], &s[child + 1]))
            child++;
        if (!span_less(d, &s[root], &s[child]))
            return;
        kspan t = s[root];
        s[root] = s[child];
        s[child] = t;
        root = child;
    }
}

/* Sorts a map's pairs by key bytes: insertion sort when few (OTP writes a
 * small map's keys already in order), heapsort otherwise. */
static void sort_spans(const unsigned char *d, kspan *s, size_t n)
{
    if (n <= 16) {
        for (size_t j = 1; j < n; j++) {
            kspan t = s[j];
            size_t k = j;
            while (k > 0 && span_less(d, &t, &s[k - 1])) {
                s[k] = s[k - 1];
                k--;
            }
            s[k] = t;
        }
        return;
    }
    for (size_t j = n / 2; j-- > 0;)
        sift_down(d, s, j, n);
    for (size_t j = n; j-- > 1;) {
        kspan t = s[0];
        s[0] = s[j];
        s[j] = t;
        sift_down(d, s, 0, j);
    }
}

/* A map whose n pairs were encoded in external order at s[0].koff onwards:
 * rewrites them as the keys in order, then the values. Returns -1 for a
 * duplicate key. */
static int finish_map(gn_buf *out, kspan *s, size_t n)
{
    size_t start = s[0].koff, end = out->len;
    for (size_t j = 0; j < n; j++) {
        s[j].klen = s[j].voff - s[j].koff;
        s[j].vlen = (j + 1 < n ? s[j + 1].koff : end) - s[j].voff;
    }
    if (n == 1)
        return 0;
    sort_spans(out->data, s, n);
    for (size_t j = 1; j < n; j++) {
        if (s[j].klen == s[j - 1].klen &&
            memcmp(out->data + s[j].koff, out->data + s[j - 1].koff, s[j].klen) == 0)
            return -1;
    }
    size_t total = end - start;
    ke_tmp.len = 0;
    gn_buf_room(&ke_tmp, total);
    memcpy(ke_tmp.data, out->data + start, total);
    unsigned char *p = out->data + start;
    for (size_t j = 0; j < n; j++) {
        memcpy(p, ke_tmp.data + (s[j].koff - start), s[j].klen);
        p += s[j].klen;
    }
    for (size_t j = 0; j < n; j++) {
        memcpy(p, ke_tmp.data + (s[j].voff - start), s[j].vlen);
        p += s[j].vlen;
    }
    return 0;
}

static void trim_scratch(gn_buf *b)
{
    if (b->cap > KE_SCRATCH_KEEP)
        gn_buf_free(b);
    b->len = 0;
}

/* Opens a container of `left` terms. */
static int push(size_t *depth, unsigned char kind, unsigned char mode, size_t left, size_t span0)
{
    if (*depth >= GN_KEY_MAX_DEPTH)
        return -1;
    ke_frames.len = *depth * sizeof(kframe);
    gn_buf_room(&ke_frames, sizeof(kframe));
    kframe *f = (kframe *)(void *)ke_frames.data + *depth;
    f->left = left;
    f->span0 = span0;
    f->kind = kind;
    f->mode = mode;
    (*depth)++;
    return 0;
}

#define NEED(n)                                                                                    \
    do {                                                                                           \
        if ((size_t)(n) > len - i)                                                                 \
            goto fail;                                                                             \
    } while (0)

#define BYTE(c)                                                                                    \
    do {                                                                                           \
        gn_buf_room(out, 1);                                                                       \
        out->data[out->len++] = (c);                                                               \
    } while (0)

int gn_key_encode(const unsigned char *buf, size_t len, size_t *index, gn_buf *out, int mode)
{
    size_t i = *index, depth = 0, nspans = 0;
    int m = mode == GN_KEY_EXACT;
    uint32_t u32, id, serial, creation;
    size_t n;

    if (i > len)
        return -1;
    for (;;) {
        /* one term at buf[i], in mode m */
        NEED(1);
        unsigned char tag = buf[i++];
        switch (tag) {
        case ETF_SMALL_INTEGER:
            NEED(1);
            put_small(out, buf[i++]);
            break;
        case ETF_INTEGER:
            NEED(4);
            put_small(out, (int32_t)get32(buf + i));
            i += 4;
            break;
        case ETF_SMALL_BIG:
        case ETF_LARGE_BIG:
            if (tag == ETF_SMALL_BIG) {
                NEED(2);
                n = buf[i++];
            } else {
                NEED(5);
                n = get32(buf + i);
                i += 4;
            }
            NEED(1);
            i++; /* the sign: any nonzero byte is negative, as for the VM */
            NEED(n);
            put_big(out, buf + i, n, buf[i - 1] != 0);
            i += n;
            break;
        case ETF_NEW_FLOAT:
            NEED(8);
            if (put_float(out, buf + i, m) < 0)
                goto fail;
            i += 8;
            break;
        case ETF_ATOM:
        case ETF_SMALL_ATOM:
        case ETF_ATOM_UTF8:
        case ETF_SMALL_ATOM_UTF8:
            BYTE(KT_ATOM);
            i--;
            if (put_atom(buf, len, &i, out) < 0)
                goto fail;
            break;
        case ETF_REFERENCE:
        case ETF_NEW_REFERENCE:
        case ETF_NEWER_REFERENCE: {
            if (tag == ETF_REFERENCE) {
                n = 1;
            } else {
                NEED(2);
                n = (size_t)buf[i] << 8 | buf[i + 1];
                i += 2;
                if (n == 0 || n > 5) /* the VM's reading of 0 is unclear */
                    goto fail;
            }
            BYTE(KT_REF);
            if (put_atom(buf, len, &i, out) < 0)
                goto fail;
            const unsigned char *words;
            if (tag == ETF_REFERENCE) {
                NEED(5);
                words = buf + i;
                creation = buf[i + 4];
                i += 5;
            } else {
                size_t crlen = tag == ETF_NEW_REFERENCE ? 1 : 4;
                NEED(crlen + 4 * n);
                creation = crlen == 1 ? buf[i] : get32(buf + i);
                words = buf + i + crlen;
                i += crlen + 4 * n;
            }
            while (n > 0 && get32(words + 4 * (n - 1)) == 0)
                n--;
            gn_buf_room(out, 5 + 4 * n);
            gn_buf_be(out, creation, 4);
            out->data[out->len++] = (unsigned char)n;
            while (n-- > 0)
                gn_buf_be(out, get32(words + 4 * n), 4);
            break;
        }
        case ETF_NEW_FUN: {
            /* Size, Arity, Uniq, Index, NumFree, Module, OldIndex, OldUniq,
             * Pid, free variables */
            NEED(4 + 1 + 16 + 4 + 4);
            uint32_t fun_index = get32(buf + i + 21);
            n = get32(buf + i + 25);
            i += 29;
            NEED(n); /* every term takes a byte at least */
            BYTE(KT_FUN);
            if (put_atom(buf, len, &i, out) < 0)
                goto fail;
            int32_t old_uniq = 0;
            for (int k = 0; k < 2; k++) { /* OldIndex (unused), OldUniq */
                NEED(1);
                if (buf[i] == ETF_SMALL_INTEGER) {
                    NEED(2);
                    old_uniq = buf[i + 1];
                    i += 2;
                } else if (buf[i] == ETF_INTEGER) {
                    NEED(5);
                    old_uniq = (int32_t)get32(buf + i + 1);
                    i += 5;
                } else {
                    goto fail;
                }
            }
            size_t mark = out->len; /* the creator pid is not part of the fun */
            if (read_pid(buf, len, &i, out, &id, &serial, &creation) < 0)
                goto fail;
            out->len = mark;
            gn_buf_be(out, fun_index, 4);
            gn_buf_be(out, (uint32_t)old_uniq ^ 0x80000000u, 4);
            out_uvar(out, n);
            if (n && push(&depth, K_SEQ, (unsigned char)m, n, 0) < 0)
                goto fail;
            break;
        }
        case ETF_EXPORT:
            BYTE(KT_EXPORT);
            if (put_atom(buf, len, &i, out) < 0 || put_atom(buf, len, &i, out) < 0)
                goto fail;
            NEED(2);
            if (buf[i] == ETF_SMALL_INTEGER) {
                u32 = buf[i + 1];
                i += 2;
            } else if (buf[i] == ETF_INTEGER) {
                NEED(5);
                u32 = get32(buf + i + 1);
                if (u32 & 0x80000000u)
                    goto fail;
                i += 5;
            } else {
                goto fail;
            }
            out_uvar(out, u32);
            break;
        case ETF_PORT:
        case ETF_NEW_PORT:
        case ETF_V4_PORT: {
            BYTE(KT_PORT);
            if (put_atom(buf, len, &i, out) < 0)
                goto fail;
            size_t idlen = tag == ETF_V4_PORT ? 8 : 4, crlen = tag == ETF_PORT ? 1 : 4;
            NEED(idlen + crlen);
            uint64_t port_id = idlen == 8 ? gn_be_get(buf + i, 8) : get32(buf + i);
            creation = crlen == 1 ? buf[i + idlen] : get32(buf + i + idlen);
            i += idlen + crlen;
            gn_buf_be(out, creation, 4);
            gn_buf_be(out, port_id, 8);
            break;
        }
        case ETF_PID:
        case ETF_NEW_PID: {
            /* the node goes after serial and id: encode it, then move it */
            i--;
            BYTE(KT_PID);
            size_t at = out->len;
            gn_buf_be(out, 0, 8);
            if (read_pid(buf, len, &i, out, &id, &serial, &creation) < 0)
                goto fail;
            unsigned char *p = out->data + at;
            gn_be_put(p, serial, 4);
            gn_be_put(p + 4, id, 4);
            gn_buf_be(out, creation, 4);
            break;
        }
        case ETF_SMALL_TUPLE:
        case ETF_LARGE_TUPLE:
            if (tag == ETF_SMALL_TUPLE) {
                NEED(1);
                n = buf[i++];
            } else {
                NEED(4);
                n = get32(buf + i);
                i += 4;
            }
            NEED(n);
            gn_buf_room(out, 10);
            out->data[out->len++] = KT_TUPLE;
            out->len += put_uvar(out->data + out->len, n);
            if (n && push(&depth, K_SEQ, (unsigned char)m, n, 0) < 0)
                goto fail;
            break;
        case ETF_MAP:
            NEED(4);
            n = get32(buf + i);
            i += 4;
            if (n > (len - i) / 2)
                goto fail;
            gn_buf_room(out, 10);
            out->data[out->len++] = KT_MAP;
            out->len += put_uvar(out->data + out->len, n);
            if (n && push(&depth, K_MAP, (unsigned char)m, 2 * n, nspans) < 0)
                goto fail;
            break;
        case ETF_NIL:
            BYTE(KT_NIL);
            break;
        case ETF_STRING: {
            NEED(2);
            n = (size_t)buf[i] << 8 | buf[i + 1];
            i += 2;
            NEED(n);
            gn_buf_room(out, 6 * n + 1);
            for (size_t k = 0; k < n; k++) {
                out->data[out->len++] = KT_CONS;
                put_small(out, buf[i + k]);
            }
            out->data[out->len++] = KT_NIL;
            i += n;
            break;
        }
        case ETF_LIST:
            NEED(4);
            n = get32(buf + i);
            i += 4;
            NEED(n);
            if (push(&depth, K_LIST, (unsigned char)m, n + 1, 0) < 0)
                goto fail;
            break;
        case ETF_BINARY:
            NEED(4);
            n = get32(buf + i);
            i += 4;
            NEED(n);
            BYTE(KT_BITS);
            put_escaped(out, buf + i, n);
            put_end(out, 8);
            i += n;
            break;
        case ETF_BIT_BINARY: {
            NEED(5);
            n = get32(buf + i);
            unsigned bits = buf[i + 4];
            i += 5;
            NEED(n);
            if (n == 0 ? bits != 0 : bits == 0 || bits > 8)
                goto fail;
            BYTE(KT_BITS);
            if (n == 0 || bits == 8) {
                put_escaped(out, buf + i, n);
                put_end(out, 8);
            } else {
                unsigned char last = (unsigned char)(buf[i + n - 1] & (0xFF00u >> bits));
                put_escaped(out, buf + i, n - 1);
                put_escaped(out, &last, 1);
                put_end(out, (unsigned char)bits);
            }
            i += n;
            break;
        }
        default: /* FLOAT_EXT, ATOM_CACHE_REF, compressed, FUN_EXT, unknown */
            goto fail;
        }

        /* the next term: close the containers that are done */
        kframe *f;
        for (;;) {
            if (depth == 0)
                goto done;
            f = (kframe *)(void *)ke_frames.data + depth - 1;
            if (f->left)
                break;
            /* only maps stay open after their last term */
            kspan *s = (kspan *)(void *)ke_spans.data + f->span0;
            if (finish_map(out, s, nspans - f->span0) < 0)
                goto fail;
            nspans = f->span0;
            depth--;
        }
        m = f->mode;
        if (f->kind == K_LIST) {
            if (f->left > 1)
                BYTE(KT_CONS);
        } else if (f->kind == K_MAP) {
            if ((f->left & 1) == 0) { /* a key */
                ke_spans.len = nspans * sizeof(kspan);
                gn_buf_room(&ke_spans, sizeof(kspan));
                kspan *s = (kspan *)(void *)ke_spans.data + nspans++;
                s->koff = out->len;
                m = GN_KEY_EXACT;
            } else {
                ((kspan *)(void *)ke_spans.data)[nspans - 1].voff = out->len;
            }
        }
        /* a tuple's or a list's last term is taken in its parent's place, so
         * a long chain of tails or last elements does not deepen the stack */
        if (--f->left == 0 && f->kind != K_MAP)
            depth--;
    }
done:
    *index = i;
    trim_scratch(&ke_frames);
    trim_scratch(&ke_spans);
    trim_scratch(&ke_tmp);
    return 0;
fail:
    trim_scratch(&ke_frames);
    trim_scratch(&ke_spans);
    trim_scratch(&ke_tmp);
    return -1;
}
