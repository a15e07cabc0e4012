/* Unit tests for protocol/codec: frame headers, msg_validate, msg_parse, the getters, utf8_valid
 * and the msg_out encoder.
 *
 * Inputs are written as hex specs ("81 a4 'type' a4 'exec'": hex bytes, and text between single
 * quotes copied as is) so that each test shows the exact bytes on the wire. Decoders are always
 * handed an exact-size heap copy of their input, so that a build with BOXD_SANITIZE=ON catches
 * any read past the end.
 */
#include "codec.h"
#include "unit.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The ENOMEM test makes msgpack-c ask for an impossible amount of memory; under ASan that must
 * come back as NULL, as it does from glibc, instead of aborting the test. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "allocator_may_return_null=1";
}

/* ---- Byte builder ---------------------------------------------------------------------------- */

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void bgrow(struct buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (p == NULL)
        UNIT_FAIL("out of memory");
    b->p = p;
    b->cap = cap;
}

static void bbyte(struct buf *b, uint8_t c)
{
    bgrow(b, 1);
    b->p[b->len++] = c;
}

static void bfill(struct buf *b, uint8_t c, size_t n)
{
    bgrow(b, n);
    memset(b->p + b->len, c, n);
    b->len += n;
}

static void bmem(struct buf *b, const void *p, size_t n)
{
    bgrow(b, n);
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Appends the bytes of a hex spec: pairs of hex digits, and 'text' copied verbatim. */
static void bhex(struct buf *b, const char *spec)
{
    const char *s = spec;
    while (*s) {
        if (*s == ' ') {
            s++;
        } else if (*s == '\'') {
            const char *end = strchr(s + 1, '\'');
            if (end == NULL)
                UNIT_FAIL("bad hex spec (unterminated text): %s", spec);
            bmem(b, s + 1, (size_t)(end - s - 1));
            s = end + 1;
        } else {
            int hi = hexval(s[0]), lo = hi < 0 ? -1 : hexval(s[1]);
            if (hi < 0 || lo < 0)
                UNIT_FAIL("bad hex spec at \"%s\"", s);
            bbyte(b, (uint8_t)(hi << 4 | lo));
            s += 2;
        }
    }
}

static struct buf hex(const char *spec)
{
    struct buf b = {0};
    bhex(&b, spec);
    return b;
}

static void bfree(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* An exact-size heap copy (one byte allocated for an empty input, none of it readable). */
static uint8_t *dup_exact(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    if (d == NULL)
        UNIT_FAIL("out of memory");
    if (n)
        memcpy(d, p, n);
    return d;
}

/* ---- Helpers over the codec ------------------------------------------------------------------ */

static int validate(const uint8_t *p, size_t n, unsigned max_depth, size_t *used)
{
    uint8_t *d = dup_exact(p, n);
    int r = msg_validate(d, n, max_depth, used);
    free(d);
    return r;
}

static int validate_buf(const struct buf *b)
{
    size_t used = 0;
    return validate(b->p, b->len, BOX_MAX_DEPTH, &used);
}

/* Parses an exact-size copy of p, kept alive in ps->body (parsed strings point into it). */
struct parsed {
    msgpack_zone zone;
    msgpack_object obj;
    uint8_t *body;
    int r;
};

static void parse_into(struct parsed *ps, const uint8_t *p, size_t n)
{
    if (!msgpack_zone_init(&ps->zone, 256))
        UNIT_FAIL("out of memory");
    ps->body = dup_exact(p, n);
    ps->r = msg_parse(ps->body, n, &ps->zone, &ps->obj);
}

static void parsed_destroy(struct parsed *ps)
{
    msgpack_zone_destroy(&ps->zone);
    free(ps->body);
}

static int parse_hex(const char *spec)
{
    struct buf b = hex(spec);
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    int r = ps.r;
    parsed_destroy(&ps);
    bfree(&b);
    return r;
}

#define HCHECK(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            UNIT_FAIL("CHECK failed: %s (value at line %d, %zu bytes, k=%zu)", #cond, line, n, k); \
    } while (0)

/* One complete msgpack value: msg_validate accepts it whole with used == n, calls every strict
 * prefix -EAGAIN, ignores whatever follows it, and msgpack-c agrees on its extent. */
static void check_value(const uint8_t *p, size_t n, int line)
{
    size_t used = 0, k = n;
    HCHECK(validate(p, n, BOX_MAX_DEPTH, &used) == 0);
    HCHECK(used == n);
    for (k = 0; k < n; k++) {
        if (n > 2048 && k > 32 && k < n - 32)
            continue; /* the middle of a long str/bin is all alike */
        used = 12345;
        HCHECK(validate(p, k, BOX_MAX_DEPTH, &used) == -EAGAIN);
        HCHECK(used == 12345);
    }
    k = n;

    struct buf t = {0};
    bmem(&t, p, n);
    bhex(&t, "c1 c1 dd ff ff ff ff");
    used = 0;
    HCHECK(validate(t.p, t.len, BOX_MAX_DEPTH, &used) == 0);
    HCHECK(used == n);
    bfree(&t);

    msgpack_zone z;
    msgpack_object o;
    size_t off = 0;
    HCHECK(msgpack_zone_init(&z, 256));
    uint8_t *d = dup_exact(p, n);
    HCHECK(msgpack_unpack((const char *)d, n, &off, &z, &o) == MSGPACK_UNPACK_SUCCESS);
    HCHECK(off == n);
    free(d);
    msgpack_zone_destroy(&z);
}

#define CHECK_VALUE(spec)                                                                          \
    do {                                                                                           \
        struct buf cv_ = hex(spec);                                                                \
        check_value(cv_.p, cv_.len, __LINE__);                                                     \
        bfree(&cv_);                                                                               \
    } while (0)

#define CHECK_VALIDATE(spec, want)                                                                 \
    do {                                                                                           \
        struct buf cv_ = hex(spec);                                                                \
        CHECK_EQ(validate_buf(&cv_), want);                                                        \
        bfree(&cv_);                                                                               \
    } while (0)

/* A header then `n` filler bytes, checked as one value: for str/bin/ext of a given length. */
static void check_sized(const char *head, size_t n, uint8_t fill, int line)
{
    struct buf b = hex(head);
    bfill(&b, fill, n);
    check_value(b.p, b.len, line);
    bfree(&b);
}

/* n copies of `elem` behind `head`, checked as one value: for arrays and maps of a given size. */
static void check_repeated(const char *head, const char *elem, size_t n, int line)
{
    struct buf b = hex(head);
    for (size_t i = 0; i < n; i++)
        bhex(&b, elem);
    check_value(b.p, b.len, line);
    bfree(&b);
}

/* A message with one member of every msgpack type family, in the encodings named by its keys. */
static struct buf every_type_message(void)
{
    struct buf b = {0};
    bhex(&b, "de 00 24");
    bhex(&b, "a6 'fixint' 07  a6 'negfix' e0  a3 'nil' c0  a1 't' c3  a1 'f' c2");
    bhex(&b, "a3 'f32' ca 3f 80 00 00  a3 'f64' cb 40 09 21 fb 54 44 2d 18");
    bhex(&b, "a2 'u8' cc 80  a3 'u16' cd 01 00  a3 'u32' ce 00 01 00 00");
    bhex(&b, "a3 'u64' cf 00 00 00 01 00 00 00 00");
    bhex(&b, "a2 'i8' d0 80  a3 'i16' d1 ff 00  a3 'i32' d2 ff ff 00 00");
    bhex(&b, "a3 'i64' d3 ff ff ff ff 00 00 00 00");
    bhex(&b, "a6 'fixstr' a3 'abc'  a4 'str8' d9 03 'xyz'  a5 'str16' da 00 02 'hi'");
    bhex(&b, "a5 'str32' db 00 00 00 01 'z'");
    bhex(&b, "a4 'bin8' c4 01 00  a5 'bin16' c5 00 01 ff  a5 'bin32' c6 00 00 00 02 01 02");
    bhex(&b, "a7 'fixext1' d4 01 aa  a7 'fixext2' d5 02 aa bb  a7 'fixext4' d6 03 01 02 03 04");
    bhex(&b, "a7 'fixext8' d7 04 01 02 03 04 05 06 07 08");
    bhex(&b, "a8 'fixext16' d8 05 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f");
    bhex(&b, "a4 'ext8' c7 03 06 'abc'  a5 'ext16' c8 00 01 07 00  a5 'ext32' c9 00 00 00 00 08");
    bhex(&b, "a8 'fixarray' 92 01 a1 'x'  a7 'array16' dc 00 01 c0");
    bhex(&b, "a7 'array32' dd 00 00 00 02 90 80");
    bhex(&b, "a6 'fixmap' 81 a1 'k' 01  a5 'map16' de 00 01 a1 'k' 91 02");
    bhex(&b, "a5 'map32' df 00 00 00 01 a1 'k' df 00 00 00 00");
    return b;
}

/* ---- Frame header ---------------------------------------------------------------------------- */

static void test_frame_header_roundtrip(void)
{
    static const uint32_t lens[] = {1,      2,      0x7f,       0x80,       0xff,       0x100,
                                    0x1234, 0xffff, 0x10000,    0x01020304, 0x7fffffff, 0x80000000,
                                    0xfffffffe, UINT32_MAX};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        uint8_t h[BOX_FRAME_HDR];
        frame_header_encode(h, lens[i]);
        CHECK_EQ(h[0], lens[i] >> 24);
        CHECK_EQ(h[1], (lens[i] >> 16) & 0xff);
        CHECK_EQ(h[2], (lens[i] >> 8) & 0xff);
        CHECK_EQ(h[3], lens[i] & 0xff);
        uint32_t n = 0;
        CHECK_EQ(frame_header_decode(h, sizeof h, UINT32_MAX, &n), 0);
        CHECK_U64(n, lens[i]);
        CHECK_EQ(frame_header_decode(h, sizeof h, lens[i], &n), 0);
        CHECK_U64(n, lens[i]);
    }
    uint8_t h[BOX_FRAME_HDR];
    frame_header_encode(h, 0x01020304);
    CHECK_MEM(h, "\x01\x02\x03\x04", 4);
    frame_header_encode(h, 0);
    CHECK_MEM(h, "\0\0\0\0", 4);
}

static void test_frame_header_eagain(void)
{
    /* Even a header whose first bytes already say "too large" needs all four bytes first. */
    static const char *const heads[] = {"00 00 00 05", "ff ff ff ff", "00 00 00 00"};
    for (size_t i = 0; i < 3; i++) {
        struct buf b = hex(heads[i]);
        for (size_t k = 0; k < BOX_FRAME_HDR; k++) {
            uint8_t *d = dup_exact(b.p, k);
            uint32_t n = 777;
            CHECK_EQ(frame_header_decode(d, k, 1024, &n), -EAGAIN);
            CHECK_EQ(n, 777);
            free(d);
        }
        bfree(&b);
    }
}

static void test_frame_header_limits(void)
{
    const uint32_t max = 1u << 20;
    uint8_t h[BOX_FRAME_HDR + 3] = {0};
    uint32_t n = 777;

    frame_header_encode(h, max);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, max, &n), 0);
    CHECK_EQ(n, max);

    n = 777;
    frame_header_encode(h, max + 1);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, max, &n), -EMSGSIZE);
    CHECK_EQ(n, 777);
    frame_header_encode(h, UINT32_MAX);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, max, &n), -EMSGSIZE);
    CHECK_EQ(n, 777);

    frame_header_encode(h, 0);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, max, &n), -EBADMSG);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, 0, &n), -EBADMSG);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, UINT32_MAX, &n), -EBADMSG);
    CHECK_EQ(n, 777);

    frame_header_encode(h, 1);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, 0, &n), -EMSGSIZE);
    CHECK_EQ(frame_header_decode(h, BOX_FRAME_HDR, 1, &n), 0);
    CHECK_EQ(n, 1);

    /* Body bytes after the header change nothing. */
    frame_header_encode(h, 3);
    memcpy(h + BOX_FRAME_HDR, "\xff\xff\xff", 3);
    CHECK_EQ(frame_header_decode(h, sizeof h, max, &n), 0);
    CHECK_EQ(n, 3);
}

/* ---- msg_validate: every type family --------------------------------------------------------- */

static void test_validate_scalars(void)
{
    CHECK_VALUE("00");
    CHECK_VALUE("7f");
    CHECK_VALUE("e0");
    CHECK_VALUE("ff");
    CHECK_VALUE("c0");
    CHECK_VALUE("c2");
    CHECK_VALUE("c3");
    CHECK_VALUE("ca 3f 80 00 00");
    CHECK_VALUE("ca 7f c0 00 00"); /* NaN is still a float */
    CHECK_VALUE("cb 40 09 21 fb 54 44 2d 18");
    CHECK_VALUE("cc 00");
    CHECK_VALUE("cc ff");
    CHECK_VALUE("cd ff ff");
    CHECK_VALUE("ce ff ff ff ff");
    CHECK_VALUE("cf ff ff ff ff ff ff ff ff");
    CHECK_VALUE("d0 80");
    CHECK_VALUE("d1 80 00");
    CHECK_VALUE("d2 80 00 00 00");
    CHECK_VALUE("d3 80 00 00 00 00 00 00 00");
}

static void test_validate_str(void)
{
    CHECK_VALUE("a0");
    CHECK_VALUE("a5 'hello'");
    check_sized("bf", 31, 'x', __LINE__);
    CHECK_VALUE("d9 00");
    check_sized("d9 ff", 255, 'x', __LINE__);
    CHECK_VALUE("da 00 00");
    check_sized("da 01 00", 256, 'x', __LINE__);
    check_sized("da ff ff", 65535, 'x', __LINE__);
    CHECK_VALUE("db 00 00 00 00");
    CHECK_VALUE("db 00 00 00 03 'abc'");
    check_sized("db 00 01 00 00", 65536, 'x', __LINE__);
    /* Bytes inside a str are not msgpack: a 0xc1 there is just a byte. */
    CHECK_VALUE("a2 c1 c1");
    CHECK_VALUE("d9 02 c1 dd");
}

static void test_validate_bin(void)
{
    CHECK_VALUE("c4 00");
    CHECK_VALUE("c4 03 00 c1 ff");
    check_sized("c4 ff", 255, 0xc1, __LINE__);
    CHECK_VALUE("c5 00 00");
    check_sized("c5 01 00", 256, 0xc1, __LINE__);
    CHECK_VALUE("c6 00 00 00 00");
    CHECK_VALUE("c6 00 00 00 01 c1");
    check_sized("c6 00 01 00 00", 65536, 0xdd, __LINE__);
}

static void test_validate_ext(void)
{
    CHECK_VALUE("d4 01 aa");
    CHECK_VALUE("d4 ff c1");
    CHECK_VALUE("d5 02 aa bb");
    CHECK_VALUE("d6 03 01 02 03 04");
    CHECK_VALUE("d7 04 01 02 03 04 05 06 07 08");
    CHECK_VALUE("d8 05 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f");
    CHECK_VALUE("c7 00 06");
    CHECK_VALUE("c7 03 06 'abc'");
    check_sized("c7 ff 06", 255, 0xc1, __LINE__);
    CHECK_VALUE("c8 00 00 07");
    check_sized("c8 01 00 07", 256, 0xc1, __LINE__);
    CHECK_VALUE("c9 00 00 00 00 08");
    check_sized("c9 00 01 00 00 08", 65536, 0, __LINE__);
}

static void test_validate_arrays(void)
{
    CHECK_VALUE("90");
    CHECK_VALUE("91 c0");
    CHECK_VALUE("93 01 a1 'x' c3");
    check_repeated("9f", "01", 15, __LINE__);
    CHECK_VALUE("dc 00 00");
    CHECK_VALUE("dc 00 02 01 02");
    check_repeated("dc 00 10", "a1 'x'", 16, __LINE__);
    check_repeated("dc ff ff", "c0", 65535, __LINE__);
    CHECK_VALUE("dd 00 00 00 00");
    CHECK_VALUE("dd 00 00 00 02 90 80");
    check_repeated("dd 00 01 00 00", "c2", 65536, __LINE__);
    /* Elements of every size: the count is of values, not bytes. */
    CHECK_VALUE("93 cf 00 00 00 00 00 00 00 01 db 00 00 00 01 'z' 92 90 91 80");
}

static void test_validate_maps(void)
{
    CHECK_VALUE("80");
    CHECK_VALUE("81 a1 'k' 01");
    check_repeated("8f", "a1 'k' c0", 15, __LINE__);
    CHECK_VALUE("de 00 00");
    check_repeated("de 00 10", "a1 'k' 91 01", 16, __LINE__);
    CHECK_VALUE("df 00 00 00 00");
    CHECK_VALUE("df 00 00 00 01 a1 'k' 81 a1 'j' c3");
    check_repeated("df 00 01 00 00", "01 02", 65536, __LINE__);
    /* msgpack allows keys of any type; msg_validate checks msgpack, msg_parse the protocol. */
    CHECK_VALUE("82 01 02 c0 90");
}

static void test_validate_every_type_message(void)
{
    struct buf b = every_type_message();
    check_value(b.p, b.len, __LINE__);
    bfree(&b);
}

/* A connection receives the message a byte at a time: until the last byte arrives every call
 * says "need more", never "bad", and never reads past what has arrived. */
static void test_validate_byte_at_a_time(void)
{
    struct buf msg = every_type_message();
    uint8_t *got = NULL;
    for (size_t k = 0; k <= msg.len; k++) {
        uint8_t *more = realloc(got, k ? k : 1);
        CHECK(more != NULL);
        got = more;
        if (k)
            got[k - 1] = msg.p[k - 1];
        size_t used = 99999;
        int r = msg_validate(got, k, BOX_MAX_DEPTH, &used);
        if (k < msg.len) {
            if (r != -EAGAIN)
                UNIT_FAIL("prefix of %zu/%zu bytes: %d, want -EAGAIN", k, msg.len, r);
            CHECK_EQ(used, 99999);
        } else {
            CHECK_EQ(r, 0);
            CHECK_EQ(used, msg.len);
        }
    }
    free(got);
    bfree(&msg);
}

static void test_validate_reserved_c1(void)
{
    CHECK_VALIDATE("c1", -EBADMSG);
    CHECK_VALIDATE("91 c1", -EBADMSG);
    CHECK_VALIDATE("92 01 c1", -EBADMSG);
    CHECK_VALIDATE("81 c1 01", -EBADMSG);
    CHECK_VALIDATE("81 a1 'k' c1", -EBADMSG);
    CHECK_VALIDATE("82 a1 'a' 01 a1 'b' 91 c1", -EBADMSG);
    CHECK_VALIDATE("93 c1 01 02", -EBADMSG);
    CHECK_VALIDATE("93 01 02 c1", -EBADMSG);
    /* After a complete value the walk stops: what follows is the caller's business. */
    size_t used = 0;
    struct buf b = hex("01 c1");
    CHECK_EQ(validate(b.p, b.len, BOX_MAX_DEPTH, &used), 0);
    CHECK_EQ(used, 1);
    bfree(&b);
    CHECK_EQ(parse_hex("81 a1 'k' c1"), -EBADMSG);
}

/* `levels` containers, each the only element of the one around it, around `inner`. */
static struct buf nest(const char *container, unsigned levels, const char *inner)
{
    struct buf b = {0};
    for (unsigned i = 0; i < levels; i++)
        bhex(&b, container);
    bhex(&b, inner);
    return b;
}

static int validate_nest(const char *container, unsigned levels, const char *inner,
                         unsigned max_depth)
{
    struct buf b = nest(container, levels, inner);
    size_t used = 0;
    int r = validate(b.p, b.len, max_depth, &used);
    if (r == 0 && used != b.len)
        UNIT_FAIL("nest %s x%u: used %zu of %zu", container, levels, used, b.len);
    bfree(&b);
    return r;
}

static void test_validate_depth(void)
{
    static const char *const containers[] = {"91", "81 a1 'k'", "dc 00 01", "dd 00 00 00 01",
                                             "de 00 01 a0", "df 00 00 00 01 c0"};
    for (size_t i = 0; i < sizeof containers / sizeof containers[0]; i++) {
        const char *c = containers[i];
        /* BOX_MAX_DEPTH containers around a scalar: accepted; one more: refused. */
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH, "01", BOX_MAX_DEPTH), 0);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH + 1, "01", BOX_MAX_DEPTH), -EBADMSG);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH + 40, "01", BOX_MAX_DEPTH), -EBADMSG);
        /* An empty container is a level too (msgpack-c counts it against its own stack). */
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH - 1, "90", BOX_MAX_DEPTH), 0);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH - 1, "80", BOX_MAX_DEPTH), 0);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH, "90", BOX_MAX_DEPTH), -EBADMSG);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH, "80", BOX_MAX_DEPTH), -EBADMSG);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH, "dc 00 00", BOX_MAX_DEPTH), -EBADMSG);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH, "df 00 00 00 00", BOX_MAX_DEPTH), -EBADMSG);
        /* A smaller limit from the caller; a larger one is capped at BOX_MAX_DEPTH. */
        CHECK_EQ(validate_nest(c, 2, "01", 2), 0);
        CHECK_EQ(validate_nest(c, 3, "01", 2), -EBADMSG);
        CHECK_EQ(validate_nest(c, 2, "90", 2), -EBADMSG);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH + 1, "01", 1000), -EBADMSG);
        CHECK_EQ(validate_nest(c, BOX_MAX_DEPTH, "01", 1000), 0);
    }
    CHECK_EQ(validate_nest("91", 0, "01", 0), 0);
    CHECK_EQ(validate_nest("91", 0, "90", 0), -EBADMSG);

    /* Depth is per path, not a running total: siblings each reach the limit. */
    struct buf b = hex("92");
    for (int i = 0; i < 2; i++)
        for (unsigned j = 0; j < BOX_MAX_DEPTH; j++)
            bhex(&b, j == BOX_MAX_DEPTH - 1 ? "01" : "91");
    CHECK_EQ(validate_buf(&b), 0);
    bfree(&b);
    b = hex("92");
    for (unsigned j = 0; j < BOX_MAX_DEPTH - 1; j++)
        bhex(&b, j == BOX_MAX_DEPTH - 2 ? "01" : "91");
    for (unsigned j = 0; j < BOX_MAX_DEPTH + 1; j++)
        bhex(&b, j == BOX_MAX_DEPTH ? "01" : "91");
    CHECK_EQ(validate_buf(&b), -EBADMSG);
    bfree(&b);

    /* msg_parse: a map at the limit is a request; one level more is bad_request, not -ENOMEM. */
    static const char *const inner[] = {"01", "80", "90"};
    for (size_t i = 0; i < 3; i++) {
        b = nest("81 a1 'k'", BOX_MAX_DEPTH - (i ? 1 : 0), inner[i]);
        struct parsed ps;
        parse_into(&ps, b.p, b.len);
        CHECK_EQ(ps.r, 0);
        parsed_destroy(&ps);
        bfree(&b);
        b = nest("81 a1 'k'", BOX_MAX_DEPTH + (i ? 0 : 1), inner[i]);
        parse_into(&ps, b.p, b.len);
        CHECK_EQ(ps.r, -EBADMSG);
        parsed_destroy(&ps);
        bfree(&b);
    }
}

/* A zone that allocated moved its free pointer, or pushed a new chunk at the head of its list. */
static bool zone_untouched(const msgpack_zone *z, const msgpack_zone_chunk_list *before)
{
    return z->chunk_list.free == before->free && z->chunk_list.ptr == before->ptr &&
           z->chunk_list.head == before->head;
}

/* "array32 of 4 billion" in five bytes must not make msgpack-c allocate 96 GiB. */
static void test_validate_impossible_counts(void)
{
    static const char *const lies[] = {
        "dd ff ff ff ff",
        "df ff ff ff ff",
        "dc ff ff",
        "de ff ff",
        "dd 00 00 00 04 01 02 03",
        "81 a1 'k' dd ff ff ff ff",
        "81 a1 'k' df 80 00 00 00 01 02",
        "82 a1 'a' 91 01 a1 'b' 92 dd 7f ff ff ff",
        "9f 01",
        "8f 01 02",
    };
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        struct buf b = hex(lies[i]);
        CHECK_EQ(validate_buf(&b), -EAGAIN);

        msgpack_zone z;
        CHECK(msgpack_zone_init(&z, 1024));
        msgpack_zone_chunk_list before = z.chunk_list;
        msgpack_object o;
        uint8_t *d = dup_exact(b.p, b.len);
        CHECK_EQ(msg_parse(d, b.len, &z, &o), -EBADMSG);
        if (!zone_untouched(&z, &before))
            UNIT_FAIL("msg_parse allocated for \"%s\"", lies[i]);
        free(d);
        msgpack_zone_destroy(&z);
        bfree(&b);
    }
    /* The same count backed by enough bytes is fine. */
    CHECK_VALUE("dd 00 00 00 03 01 02 03");
    /* A huge str or bin is only truncated: msgpack-c does not allocate for those. */
    CHECK_VALIDATE("db ff ff ff ff 'abc'", -EAGAIN);
    CHECK_VALIDATE("c6 ff ff ff ff", -EAGAIN);
    CHECK_VALIDATE("c9 ff ff ff ff 01", -EAGAIN);
    CHECK_EQ(parse_hex("81 a1 'k' db ff ff ff ff 'abc'"), -EBADMSG);
}

static void test_validate_truncated_headers(void)
{
    /* Every marker with a length or payload, cut inside its own header. */
    static const char *const cuts[] = {
        "",    "ca 00 00 00", "cb 00", "cc", "cd 00", "ce 00 00", "cf 00 00 00 00 00 00 00",
        "d0",  "d1 00",       "d2",    "d3 00 00", "d9", "da 00", "db 00 00 00", "c4", "c5 00",
        "c6",  "c7",          "c7 01", "c7 01 05", "c8 00", "c8 00 01 05", "c9 00 00 00 01",
        "d4",  "d4 01",       "d5 01 02", "d8 01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e",
        "dc",  "dc 00",       "dd 00 00 00", "de 00", "df", "a3 'ab'", "91", "81 a1 'k'",
    };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        struct buf b = hex(cuts[i]);
        if (validate_buf(&b) != -EAGAIN)
            UNIT_FAIL("\"%s\": %d, want -EAGAIN", cuts[i], validate_buf(&b));
        bfree(&b);
    }
}

/* ---- msg_parse ------------------------------------------------------------------------------- */

static void test_parse_valid_map(void)
{
    struct buf b = hex("85 a4 'type' a4 'exec' a3 'req' 07 a4 'argv' 92 a4 'echo' a2 'hi'"
                       "a3 'env' 81 a1 'A' a1 'B' a3 'cwd' a1 '/'");
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    CHECK_EQ(ps.r, 0);
    CHECK_EQ(ps.obj.type, MSGPACK_OBJECT_MAP);
    CHECK_EQ(ps.obj.via.map.size, 5);
    const char *s;
    size_t n;
    CHECK_EQ(msg_get_str(&ps.obj, "type", &s, &n), 0);
    CHECK(n == 4 && memcmp(s, "exec", 4) == 0);
    /* Strings point into the body: no copy, and no NUL terminator. */
    CHECK(s >= (const char *)ps.body && s < (const char *)ps.body + b.len);
    const msgpack_object *argv = msg_get(&ps.obj, "argv");
    CHECK(argv != NULL && argv->type == MSGPACK_OBJECT_ARRAY && argv->via.array.size == 2);
    CHECK_EQ(argv->via.array.ptr[1].type, MSGPACK_OBJECT_STR);
    CHECK(argv->via.array.ptr[1].via.str.size == 2);
    CHECK_EQ(msg_get_str(msg_get(&ps.obj, "env"), "A", &s, &n), 0);
    CHECK(n == 1 && s[0] == 'B');
    parsed_destroy(&ps);
    bfree(&b);

    CHECK_EQ(parse_hex("80"), 0);
    CHECK_EQ(parse_hex("de 00 00"), 0);
    CHECK_EQ(parse_hex("df 00 00 00 01 a0 c0"), 0);
    CHECK_EQ(parse_hex("81 d9 04 'type' a2 'hi'"), 0);
    CHECK_EQ(parse_hex("81 db 00 00 00 01 'k' c0"), 0);
    /* Only the top-level keys are the protocol's business; nested maps may have any keys. */
    CHECK_EQ(parse_hex("81 a1 'k' 81 01 02"), 0);

    struct buf every = every_type_message();
    parse_into(&ps, every.p, every.len);
    CHECK_EQ(ps.r, 0);
    CHECK_EQ(ps.obj.via.map.size, 36);
    parsed_destroy(&ps);
    bfree(&every);
}

static void test_parse_not_a_map(void)
{
    static const char *const bodies[] = {"c0", "01", "ff", "c3", "a4 'type'", "c4 01 00",
                                         "90", "91 80", "dc 00 00", "ca 00 00 00 00",
                                         "d4 01 01", "92 a4 'type' a4 'ping'"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        if (parse_hex(bodies[i]) != -EBADMSG)
            UNIT_FAIL("\"%s\" parsed", bodies[i]);
    /* An empty body too (framing refuses it first, but msg_parse must not trust that). */
    CHECK_EQ(parse_hex(""), -EBADMSG);
}

static void test_parse_non_str_key(void)
{
    static const char *const bodies[] = {
        "81 01 01",          "81 c0 01",          "81 c4 01 'k' 01",
        "81 90 01",          "81 80 01",          "81 c3 01",
        "81 ca 00 00 00 00 01", "81 d4 01 01 01", "82 a1 'k' 01 ff 01",
        "82 a1 'a' 01 c4 01 'b' 02",              "de 00 01 d0 01 01",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++)
        if (parse_hex(bodies[i]) != -EBADMSG)
            UNIT_FAIL("\"%s\" parsed", bodies[i]);
}

static void test_parse_trailing_and_truncated(void)
{
    CHECK_EQ(parse_hex("81 a1 'k' 01 c0"), -EBADMSG);
    CHECK_EQ(parse_hex("80 80"), -EBADMSG);
    CHECK_EQ(parse_hex("80 00"), -EBADMSG);
    CHECK_EQ(parse_hex("80 c1"), -EBADMSG);
    CHECK_EQ(parse_hex("81 a1 'k' 01 81 a1 'k' 01"), -EBADMSG);
    /* A frame body is complete by definition: a truncated one is malformed, not "need more". */
    CHECK_EQ(parse_hex("81"), -EBADMSG);
    CHECK_EQ(parse_hex("81 a1 'k'"), -EBADMSG);
    CHECK_EQ(parse_hex("81 a2 'k'"), -EBADMSG);
    CHECK_EQ(parse_hex("81 a1 'k' cd 01"), -EBADMSG);
    struct buf b = every_type_message();
    for (size_t k = 0; k < b.len; k++) {
        struct parsed ps;
        parse_into(&ps, b.p, k);
        if (ps.r != -EBADMSG)
            UNIT_FAIL("prefix of %zu bytes: %d", k, ps.r);
        parsed_destroy(&ps);
    }
    bfree(&b);
}

/* Fault injection: the zone cannot grow, so msgpack-c runs out of memory part way. */
static void test_parse_enomem(void)
{
    struct buf b = hex("81 a4 'argv' 9f 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f");
    msgpack_zone z;
    CHECK(msgpack_zone_init(&z, 16));
    /* The next chunk the zone asks malloc() for is larger than any address space. */
    z.chunk_size = (size_t)1 << 62;
    msgpack_object o;
    uint8_t *d = dup_exact(b.p, b.len);
    CHECK_EQ(msg_parse(d, b.len, &z, &o), -ENOMEM);
    free(d);
    z.chunk_size = 16;
    msgpack_zone_destroy(&z);
    bfree(&b);
}

/* ---- Getters --------------------------------------------------------------------------------- */

static struct buf getter_message(void)
{
    struct buf b = hex("de 00 1a");
    bhex(&b, "a3 'fix' 05  a3 'neg' ff  a2 'u8' cc ff  a3 'u16' cd ff ff  a3 'u32' ce ff ff ff ff");
    bhex(&b, "a3 'u64' cf ff ff ff ff ff ff ff ff  a4 'u63b' cf 80 00 00 00 00 00 00 00");
    bhex(&b, "a3 'i8p' d0 05  a2 'i8' d0 80  a3 'i16' d1 80 00  a3 'i32' d2 80 00 00 00");
    bhex(&b, "a3 'i64' d3 80 00 00 00 00 00 00 00  a4 'i64p' d3 00 00 00 00 00 00 00 07");
    bhex(&b, "a6 'i64max' cf 7f ff ff ff ff ff ff ff");
    bhex(&b, "a3 'nil' c0  a1 't' c3  a1 'f' c2  a1 's' a2 'hi'  a1 'b' c4 03 00 ff 01");
    bhex(&b, "a2 'fl' cb 3f f0 00 00 00 00 00 00  a3 'arr' 91 01  a3 'map' 81 a1 'k' 01");
    bhex(&b, "a3 'ext' d4 01 02  a3 61 00 62 01  a0 c3  a2 'es' a0");
    return b;
}

static void test_get_absent_and_nil(void)
{
    struct buf b = getter_message();
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    CHECK_EQ(ps.r, 0);
    static const char *const keys[] = {"absent", "nil", "fi", "fixx", "a", "S", "u6"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *s = "sentinel";
        size_t n = 42;
        uint64_t u = 42;
        int64_t v = 42;
        bool t = true;
        CHECK_EQ(msg_get_str(&ps.obj, keys[i], &s, &n), -ENOENT);
        CHECK_EQ(msg_get_bytes(&ps.obj, keys[i], &s, &n), -ENOENT);
        CHECK_EQ(msg_get_u64(&ps.obj, keys[i], &u), -ENOENT);
        CHECK_EQ(msg_get_i64(&ps.obj, keys[i], &v), -ENOENT);
        CHECK_EQ(msg_get_bool(&ps.obj, keys[i], &t), -ENOENT);
        CHECK(strcmp(s, "sentinel") == 0 && n == 42 && u == 42 && v == 42 && t);
    }
    CHECK(msg_get(&ps.obj, "nil") != NULL);
    CHECK(msg_get(&ps.obj, "absent") == NULL);
    /* Keys are compared by length too: "a" does not match the key "a\0b". */
    CHECK(msg_get(&ps.obj, "a") == NULL);
    /* The empty key is a key like any other. */
    bool t = false;
    CHECK_EQ(msg_get_bool(&ps.obj, "", &t), 0);
    CHECK(t);
    /* Not a map (or no map at all): everything is absent. */
    const msgpack_object *arr = msg_get(&ps.obj, "arr");
    CHECK(arr != NULL);
    CHECK(msg_get(arr, "fix") == NULL);
    CHECK(msg_get(NULL, "fix") == NULL);
    int64_t v;
    CHECK_EQ(msg_get_i64(arr, "fix", &v), -ENOENT);
    CHECK_EQ(msg_get_i64(NULL, "fix", &v), -ENOENT);
    parsed_destroy(&ps);
    bfree(&b);
}

/* msgpack-c gives an empty str a NULL pointer when no str, bin or fixed-size value came before
 * it in the body (found by fuzz_msg). msg_get must not hand that pointer to memcmp, and the
 * getters must not hand it to callers, who may well memcmp or memchr it with length 0. */
static void test_get_empty_str_first(void)
{
    struct buf b = hex("82 a0 a0 a1 'k' c3");
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    CHECK_EQ(ps.r, 0);
    CHECK(msg_get(&ps.obj, "") == &ps.obj.via.map.ptr[0].val);
    const char *s = NULL;
    size_t n = 42;
    CHECK_EQ(msg_get_str(&ps.obj, "", &s, &n), 0);
    CHECK(s != NULL);
    CHECK_EQ(n, 0);
    s = NULL;
    n = 42;
    CHECK_EQ(msg_get_bytes(&ps.obj, "", &s, &n), 0);
    CHECK(s != NULL);
    CHECK_EQ(n, 0);
    bool t = false;
    CHECK_EQ(msg_get_bool(&ps.obj, "k", &t), 0);
    CHECK(t);
    parsed_destroy(&ps);
    bfree(&b);
}

static void test_get_wrong_type(void)
{
    struct buf b = getter_message();
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    CHECK_EQ(ps.r, 0);
    const char *s = "sentinel";
    size_t n = 42;
    uint64_t u = 42;
    int64_t v = 42;
    bool t = true;
    static const char *const not_str[] = {"fix", "neg", "t", "b", "fl", "arr", "map", "ext"};
    for (size_t i = 0; i < sizeof not_str / sizeof not_str[0]; i++)
        CHECK_EQ(msg_get_str(&ps.obj, not_str[i], &s, &n), -EINVAL);
    static const char *const not_bytes[] = {"fix", "neg", "t", "fl", "arr", "map", "ext"};
    for (size_t i = 0; i < sizeof not_bytes / sizeof not_bytes[0]; i++)
        CHECK_EQ(msg_get_bytes(&ps.obj, not_bytes[i], &s, &n), -EINVAL);
    static const char *const not_int[] = {"s", "b", "t", "f", "fl", "arr", "map", "ext", "es"};
    for (size_t i = 0; i < sizeof not_int / sizeof not_int[0]; i++) {
        CHECK_EQ(msg_get_u64(&ps.obj, not_int[i], &u), -EINVAL);
        CHECK_EQ(msg_get_i64(&ps.obj, not_int[i], &v), -EINVAL);
    }
    static const char *const not_bool[] = {"fix", "s", "b", "fl", "arr", "map", "ext", "es"};
    for (size_t i = 0; i < sizeof not_bool / sizeof not_bool[0]; i++)
        CHECK_EQ(msg_get_bool(&ps.obj, not_bool[i], &t), -EINVAL);
    /* 0 is not false and false is not 0. */
    CHECK_EQ(msg_get_bool(&ps.obj, "fix", &t), -EINVAL);
    CHECK_EQ(msg_get_u64(&ps.obj, "f", &u), -EINVAL);
    CHECK(strcmp(s, "sentinel") == 0 && n == 42 && u == 42 && v == 42 && t);
    parsed_destroy(&ps);
    bfree(&b);
}

static void test_get_i64(void)
{
    struct buf b = getter_message();
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    CHECK_EQ(ps.r, 0);
    static const struct {
        const char *key;
        int64_t want;
    } ok[] = {
        {"fix", 5},           {"neg", -1},          {"u8", 255},
        {"u16", 65535},       {"u32", 4294967295},  {"i8p", 5},
        {"i8", -128},         {"i16", -32768},      {"i32", INT32_MIN},
        {"i64", INT64_MIN},   {"i64p", 7},          {"i64max", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int64_t v = 42;
        CHECK_EQ(msg_get_i64(&ps.obj, ok[i].key, &v), 0);
        if (v != ok[i].want)
            UNIT_FAIL("%s: %" PRId64 ", want %" PRId64, ok[i].key, v, ok[i].want);
    }
    /* Above INT64_MAX does not fit. */
    int64_t v = 42;
    CHECK_EQ(msg_get_i64(&ps.obj, "u64", &v), -EINVAL);
    CHECK_EQ(msg_get_i64(&ps.obj, "u63b", &v), -EINVAL);
    CHECK_EQ(v, 42);
    parsed_destroy(&ps);
    bfree(&b);
}

static void test_get_u64(void)
{
    struct buf b = getter_message();
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    CHECK_EQ(ps.r, 0);
    static const struct {
        const char *key;
        uint64_t want;
    } ok[] = {
        {"fix", 5},          {"u8", 255},    {"u16", 65535},
        {"u32", 4294967295}, {"u64", UINT64_MAX}, {"u63b", (uint64_t)1 << 63},
        {"i8p", 5},          {"i64p", 7},    {"i64max", INT64_MAX},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        uint64_t u = 42;
        CHECK_EQ(msg_get_u64(&ps.obj, ok[i].key, &u), 0);
        if (u != ok[i].want)
            UNIT_FAIL("%s: %" PRIu64 ", want %" PRIu64, ok[i].key, u, ok[i].want);
    }
    static const char *const negative[] = {"neg", "i8", "i16", "i32", "i64"};
    for (size_t i = 0; i < sizeof negative / sizeof negative[0]; i++) {
        uint64_t u = 42;
        CHECK_EQ(msg_get_u64(&ps.obj, negative[i], &u), -EINVAL);
        CHECK_U64(u, 42);
    }
    parsed_destroy(&ps);
    bfree(&b);
}

static void test_get_str_bytes_bool(void)
{
    struct buf b = getter_message();
    struct parsed ps;
    parse_into(&ps, b.p, b.len);
    CHECK_EQ(ps.r, 0);
    const char *s;
    size_t n;
    CHECK_EQ(msg_get_str(&ps.obj, "s", &s, &n), 0);
    CHECK(n == 2 && memcmp(s, "hi", 2) == 0);
    CHECK_EQ(msg_get_str(&ps.obj, "es", &s, &n), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(msg_get_bytes(&ps.obj, "s", &s, &n), 0);
    CHECK(n == 2 && memcmp(s, "hi", 2) == 0);
    CHECK_EQ(msg_get_bytes(&ps.obj, "b", &s, &n), 0);
    CHECK(n == 3 && memcmp(s, "\0\xff\x01", 3) == 0);
    /* A str getter does not take bin: only `data` fields may be either. */
    CHECK_EQ(msg_get_str(&ps.obj, "b", &s, &n), -EINVAL);
    bool t = false, f = true;
    CHECK_EQ(msg_get_bool(&ps.obj, "t", &t), 0);
    CHECK_EQ(msg_get_bool(&ps.obj, "f", &f), 0);
    CHECK(t && !f);
    parsed_destroy(&ps);
    bfree(&b);
}

/* ---- utf8_valid ------------------------------------------------------------------------------ */

static bool utf8(const char *spec)
{
    struct buf b = hex(spec);
    uint8_t *d = dup_exact(b.p, b.len);
    bool ok = utf8_valid(d, b.len);
    free(d);
    bfree(&b);
    return ok;
}

/* The reference: Unicode's table of well-formed byte sequences (Table 3-7), written as byte
 * ranges rather than decoded code points, so it shares no logic with utf8_valid. */
static bool utf8_ref(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        uint8_t lo = 0x80, hi = 0xbf;
        size_t n;
        if (c <= 0x7f) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c == 0xe0) {
            n = 2, lo = 0xa0;
        } else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef) {
            n = 2;
        } else if (c == 0xed) {
            n = 2, hi = 0x9f;
        } else if (c == 0xf0) {
            n = 3, lo = 0x90;
        } else if (c >= 0xf1 && c <= 0xf3) {
            n = 3;
        } else if (c == 0xf4) {
            n = 3, hi = 0x8f;
        } else {
            return false;
        }
        if (len - i - 1 < n)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += n + 1;
    }
    return true;
}

static void test_utf8_ascii(void)
{
    CHECK(utf8_valid((const uint8_t *)"", 0));
    CHECK(utf8(""));
    CHECK(utf8("'hello'"));
    CHECK(utf8("00"));
    CHECK(utf8("7f"));
    uint8_t all[128];
    for (int i = 0; i < 128; i++)
        all[i] = (uint8_t)i;
    for (size_t n = 0; n <= sizeof all; n++)
        CHECK(utf8_valid(all, n));
}

static void test_utf8_multibyte(void)
{
    CHECK(utf8("c2 80"));          /* U+0080 */
    CHECK(utf8("c3 a9"));          /* e acute */
    CHECK(utf8("df bf"));          /* U+07FF */
    CHECK(utf8("e0 a0 80"));       /* U+0800 */
    CHECK(utf8("e2 82 ac"));       /* euro sign */
    CHECK(utf8("ed 9f bf"));       /* U+D7FF, just below the surrogates */
    CHECK(utf8("ee 80 80"));       /* U+E000, just above */
    CHECK(utf8("ef bf bd"));       /* U+FFFD */
    CHECK(utf8("ef bf bf"));       /* U+FFFF */
    CHECK(utf8("f0 90 80 80"));    /* U+10000 */
    CHECK(utf8("f0 9f 98 80"));    /* an emoji */
    CHECK(utf8("f3 bf bf bf"));    /* U+FFFFF */
    CHECK(utf8("f4 8f bf bf"));    /* U+10FFFF, the last code point */
    CHECK(utf8("'a' c3 a9 'b' e2 82 ac 'c' f0 9f 98 80 'd'"));
}

static void test_utf8_overlong(void)
{
    CHECK(!utf8("c0 80"));
    CHECK(!utf8("c0 af"));
    CHECK(!utf8("c1 bf"));
    CHECK(!utf8("e0 80 80"));
    CHECK(!utf8("e0 80 af"));
    CHECK(!utf8("e0 9f bf"));
    CHECK(!utf8("f0 80 80 80"));
    CHECK(!utf8("f0 80 80 af"));
    CHECK(!utf8("f0 8f bf bf"));
    /* Five- and six-byte forms are gone from UTF-8 altogether. */
    CHECK(!utf8("f8 88 80 80 80"));
    CHECK(!utf8("fc 84 80 80 80 80"));
}

static void test_utf8_surrogates(void)
{
    CHECK(!utf8("ed a0 80")); /* U+D800 */
    CHECK(!utf8("ed ad bf")); /* U+DB7F */
    CHECK(!utf8("ed b0 80")); /* U+DC00 */
    CHECK(!utf8("ed bf bf")); /* U+DFFF */
    CHECK(!utf8("ed a0 bd ed b8 80")); /* a CESU-8 pair */
    CHECK(!utf8("'abc' ed a0 80 'abc'"));
}

static void test_utf8_above_max(void)
{
    CHECK(!utf8("f4 90 80 80")); /* U+110000 */
    CHECK(!utf8("f4 bf bf bf"));
    CHECK(!utf8("f5 80 80 80"));
    CHECK(!utf8("f7 bf bf bf"));
    CHECK(!utf8("fe"));
    CHECK(!utf8("ff"));
    CHECK(!utf8("'abcdefgh' ff 'abcdefgh'"));
}

static void test_utf8_truncated(void)
{
    static const char *const cuts[] = {"c3",       "e2",       "e2 82",       "f0",
                                       "f0 9f",    "f0 9f 98", "f4 8f bf",    "df"};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char spec[64];
        CHECK(!utf8(cuts[i]));
        snprintf(spec, sizeof spec, "'abc' %s", cuts[i]);
        CHECK(!utf8(spec));
        /* Cut short by a following ASCII byte rather than by the end of the buffer. */
        snprintf(spec, sizeof spec, "%s 'a'", cuts[i]);
        CHECK(!utf8(spec));
        snprintf(spec, sizeof spec, "%s 'abcdefghijklmnop'", cuts[i]);
        CHECK(!utf8(spec));
    }
    /* A new lead byte where a continuation byte should be. */
    CHECK(!utf8("e2 c3 a9"));
    CHECK(!utf8("f0 9f e2 82 ac"));
}

static void test_utf8_lone_continuation(void)
{
    CHECK(!utf8("80"));
    CHECK(!utf8("bf"));
    CHECK(!utf8("'a' 80 'b'"));
    CHECK(!utf8("c3 a9 a9"));
    CHECK(!utf8("e2 82 ac ac"));
    CHECK(!utf8("f0 9f 98 80 80"));
    for (unsigned c = 0x80; c <= 0xbf; c++) {
        uint8_t d[1] = {(uint8_t)c};
        CHECK(!utf8_valid(d, 1));
    }
}

/* Long buffers, so that the 32- and 8-bytes-at-a-time ASCII paths meet every kind of byte at
 * every offset within and across their words. */
static void test_utf8_long_mixed(void)
{
    uint8_t buf[80];
    static const char *const seqs[] = {"c3 a9", "e2 82 ac", "f0 9f 98 80", "f4 8f bf bf"};
    static const char *const bad[] = {"80", "ff", "c0 80", "ed a0 80", "f4 90 80 80", "c3"};
    for (size_t pos = 0; pos < 72; pos++) {
        for (size_t len = pos; len <= sizeof buf; len += 7) {
            memset(buf, 'a', sizeof buf);
            uint8_t *d = dup_exact(buf, len);
            CHECK(utf8_valid(d, len));
            free(d);
        }
        for (size_t i = 0; i < 4; i++) {
            struct buf s = hex(seqs[i]);
            memset(buf, 'a', sizeof buf);
            memcpy(buf + pos, s.p, s.len);
            CHECK(utf8_valid(buf, sizeof buf));
            /* The same sequence cut by the end of the buffer. */
            for (size_t cut = 1; cut < s.len; cut++) {
                uint8_t *d = dup_exact(buf, pos + cut);
                CHECK(!utf8_valid(d, pos + cut));
                free(d);
            }
            bfree(&s);
        }
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            struct buf s = hex(bad[i]);
            memset(buf, 'a', sizeof buf);
            memcpy(buf + pos, s.p, s.len);
            if (utf8_valid(buf, sizeof buf))
                UNIT_FAIL("%s at offset %zu accepted", bad[i], pos);
            bfree(&s);
        }
    }

    /* Random mixes against the reference. */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    uint8_t r[256];
    for (int iter = 0; iter < 200000; iter++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t len = (size_t)(x % sizeof r);
        unsigned mode = (unsigned)(x >> 60);
        for (size_t i = 0; i < len;) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            unsigned pick = (unsigned)(x % 64);
            if (pick < 40 || mode == 0) {
                r[i++] = (uint8_t)(x >> 8) & 0x7f;
            } else if (pick < 60) {
                /* A well-formed code point (surrogates and all). */
                uint32_t cp = (uint32_t)(x >> 16) % 0x110000;
                if (cp < 0x80)
                    cp += 0x80;
                uint8_t e[4];
                size_t n;
                if (cp < 0x800)
                    e[0] = (uint8_t)(0xc0 | cp >> 6), e[1] = (uint8_t)(0x80 | (cp & 0x3f)), n = 2;
                else if (cp < 0x10000)
                    e[0] = (uint8_t)(0xe0 | cp >> 12), e[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f)),
                    e[2] = (uint8_t)(0x80 | (cp & 0x3f)), n = 3;
                else
                    e[0] = (uint8_t)(0xf0 | cp >> 18), e[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f)),
                    e[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f)), e[3] = (uint8_t)(0x80 | (cp & 0x3f)),
                    n = 4;
                for (size_t k = 0; k < n && i < len; k++)
                    r[i++] = e[k];
            } else {
                r[i++] = (uint8_t)(x >> 24);
            }
        }
        uint8_t *d = dup_exact(r, len);
        if (utf8_valid(d, len) != utf8_ref(d, len))
            UNIT_FAIL("iteration %d (%zu bytes): utf8_valid %d, reference %d", iter, len,
                      utf8_valid(d, len), utf8_ref(d, len));
        free(d);
    }
}

/* Every sequence of up to three bytes, and four-byte ones around every lead byte. */
static void test_utf8_exhaustive(void)
{
    uint8_t s[4];
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        CHECK(utf8_valid(s, 1) == utf8_ref(s, 1));
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            if (utf8_valid(s, 2) != utf8_ref(s, 2))
                UNIT_FAIL("%02x %02x", a, b);
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                if (utf8_valid(s, 3) != utf8_ref(s, 3))
                    UNIT_FAIL("%02x %02x %02x", a, b, c);
            }
        }
    }
    static const uint8_t edge[] = {0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xff};
    for (unsigned a = 0xe0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++)
            for (size_t c = 0; c < sizeof edge; c++)
                for (size_t d = 0; d < sizeof edge; d++) {
                    s[0] = (uint8_t)a, s[1] = (uint8_t)b, s[2] = edge[c], s[3] = edge[d];
                    if (utf8_valid(s, 4) != utf8_ref(s, 4))
                        UNIT_FAIL("%02x %02x %02x %02x", s[0], s[1], s[2], s[3]);
                }
}

/* ---- msg_out --------------------------------------------------------------------------------- */

/* Finishes and steals a frame, checks its header, and parses its body into *ps. */
static void finish_and_parse(struct msg_out *o, struct parsed *ps, uint8_t **frame, size_t *len)
{
    size_t size = msg_out_size(o);
    CHECK_EQ(msg_out_finish(o), 0);
    char *p = msg_out_steal(o, len);
    CHECK(p != NULL);
    CHECK_EQ(*len, size);
    CHECK_EQ(msg_out_size(o), 0);
    msg_out_destroy(o); /* harmless after steal */
    uint32_t n = 0;
    CHECK_EQ(frame_header_decode((const uint8_t *)p, *len, UINT32_MAX, &n), 0);
    CHECK_EQ(n, *len - BOX_FRAME_HDR);
    parse_into(ps, (const uint8_t *)p + BOX_FRAME_HDR, n);
    *frame = (uint8_t *)p;
}

static void test_out_roundtrip(void)
{
    /* A request whose `req` is echoed back with msg_obj. */
    struct parsed req;
    struct buf rb = hex("82 a4 'type' a4 'ping' a3 'req' 92 07 a2 'id'");
    parse_into(&req, rb.p, rb.len);
    CHECK_EQ(req.r, 0);

    struct msg_out o;
    CHECK_EQ(msg_out_init(&o, 0), 0);
    CHECK_EQ(msg_out_size(&o), BOX_FRAME_HDR);
    msg_map(&o, 15);
    msg_kv_str(&o, "type", "pong");
    msg_key(&o, "req");
    msg_obj(&o, msg_get(&req.obj, "req"));
    msg_kv_i64(&o, "neg", -5);
    msg_kv_i64(&o, "i64min", INT64_MIN);
    msg_kv_i64(&o, "pos", 42);
    msg_kv_u64(&o, "u64max", UINT64_MAX);
    msg_kv_u64(&o, "zero", 0);
    msg_kv_bool(&o, "yes", true);
    msg_kv_bool(&o, "no", false);
    msg_kv_nil(&o, "nothing");
    msg_key(&o, "argv");
    msg_array(&o, 4);
    msg_str(&o, "/bin/echo");
    msg_strn(&o, "a\0b", 3);
    msg_i64(&o, -1);
    msg_u64(&o, 7);
    msg_key(&o, "text");
    msg_data(&o, "h\xc3\xa9llo\n", 7);
    msg_key(&o, "raw");
    msg_data(&o, "\xff\xfe\0", 3);
    msg_key(&o, "empty");
    msg_strn(&o, "", 0);
    msg_key(&o, "lines");
    msg_array(&o, 1);
    msg_array(&o, 2);
    msg_u64(&o, 0);
    msg_data(&o, "ok\n", 3);
    CHECK(!o.failed);

    struct parsed ps;
    uint8_t *frame;
    size_t len;
    finish_and_parse(&o, &ps, &frame, &len);
    CHECK_EQ(ps.r, 0);
    CHECK_EQ(ps.obj.via.map.size, 15);

    const char *s;
    size_t n;
    int64_t v;
    uint64_t u;
    bool t;
    CHECK_EQ(msg_get_str(&ps.obj, "type", &s, &n), 0);
    CHECK(n == 4 && memcmp(s, "pong", 4) == 0);
    CHECK(msgpack_object_equal(*msg_get(&ps.obj, "req"), *msg_get(&req.obj, "req")));
    CHECK_EQ(msg_get_i64(&ps.obj, "neg", &v), 0);
    CHECK_EQ(v, -5);
    CHECK_EQ(msg_get_i64(&ps.obj, "i64min", &v), 0);
    CHECK(v == INT64_MIN);
    CHECK_EQ(msg_get_i64(&ps.obj, "pos", &v), 0);
    CHECK_EQ(v, 42);
    CHECK_EQ(msg_get_u64(&ps.obj, "pos", &u), 0); /* a positive i64 reads back as u64 too */
    CHECK_U64(u, 42);
    CHECK_EQ(msg_get_u64(&ps.obj, "u64max", &u), 0);
    CHECK_U64(u, UINT64_MAX);
    CHECK_EQ(msg_get_u64(&ps.obj, "zero", &u), 0);
    CHECK_U64(u, 0);
    CHECK_EQ(msg_get_bool(&ps.obj, "yes", &t), 0);
    CHECK(t);
    CHECK_EQ(msg_get_bool(&ps.obj, "no", &t), 0);
    CHECK(!t);
    CHECK(msg_get(&ps.obj, "nothing") != NULL);
    CHECK_EQ(msg_get(&ps.obj, "nothing")->type, MSGPACK_OBJECT_NIL);
    CHECK_EQ(msg_get_str(&ps.obj, "nothing", &s, &n), -ENOENT);

    const msgpack_object *argv = msg_get(&ps.obj, "argv");
    CHECK(argv != NULL && argv->type == MSGPACK_OBJECT_ARRAY && argv->via.array.size == 4);
    const msgpack_object *a = argv->via.array.ptr;
    CHECK(a[0].type == MSGPACK_OBJECT_STR && a[0].via.str.size == 9);
    CHECK_MEM(a[0].via.str.ptr, "/bin/echo", 9);
    CHECK(a[1].type == MSGPACK_OBJECT_STR && a[1].via.str.size == 3);
    CHECK_MEM(a[1].via.str.ptr, "a\0b", 3);
    CHECK(a[2].type == MSGPACK_OBJECT_NEGATIVE_INTEGER && a[2].via.i64 == -1);
    CHECK(a[3].type == MSGPACK_OBJECT_POSITIVE_INTEGER && a[3].via.u64 == 7);

    CHECK_EQ(msg_get(&ps.obj, "text")->type, MSGPACK_OBJECT_STR);
    CHECK_EQ(msg_get_bytes(&ps.obj, "text", &s, &n), 0);
    CHECK(n == 7 && memcmp(s, "h\xc3\xa9llo\n", 7) == 0);
    CHECK_EQ(msg_get(&ps.obj, "raw")->type, MSGPACK_OBJECT_BIN);
    CHECK_EQ(msg_get_bytes(&ps.obj, "raw", &s, &n), 0);
    CHECK(n == 3 && memcmp(s, "\xff\xfe\0", 3) == 0);
    CHECK_EQ(msg_get_str(&ps.obj, "empty", &s, &n), 0);
    CHECK_EQ(n, 0);
    const msgpack_object *lines = msg_get(&ps.obj, "lines");
    CHECK(lines && lines->type == MSGPACK_OBJECT_ARRAY && lines->via.array.size == 1);
    CHECK_EQ(lines->via.array.ptr[0].via.array.size, 2);

    parsed_destroy(&ps);
    free(frame);
    parsed_destroy(&req);
    bfree(&rb);
}

static void test_out_large_frame(void)
{
    struct msg_out o;
    CHECK_EQ(msg_out_init(&o, 1), 0); /* any initial size works; the buffer grows */
    size_t big = 300000;
    char *s = malloc(big);
    CHECK(s != NULL);
    for (size_t i = 0; i < big; i++)
        s[i] = (char)('a' + i % 26);
    msg_map(&o, 1);
    msg_key(&o, "data");
    msg_data(&o, s, big);
    struct parsed ps;
    uint8_t *frame;
    size_t len;
    finish_and_parse(&o, &ps, &frame, &len);
    CHECK_EQ(ps.r, 0);
    CHECK_EQ(len, BOX_FRAME_HDR + 1 + 5 + 5 + big); /* fixmap, fixstr key, str32 header */
    CHECK_EQ(frame[4 + 1 + 5], 0xdb);
    const char *got;
    size_t n;
    CHECK_EQ(msg_get_str(&ps.obj, "data", &got, &n), 0);
    CHECK_EQ(n, big);
    CHECK_MEM(got, s, big);
    /* The frame is refused by a peer whose max is one byte smaller than the body. */
    uint32_t body = 0;
    CHECK_EQ(frame_header_decode(frame, len, (uint32_t)(len - BOX_FRAME_HDR - 1), &body),
             -EMSGSIZE);
    parsed_destroy(&ps);
    free(frame);
    free(s);
}

static void test_out_data_str_or_bin(void)
{
    static const struct {
        const char *bytes;
        size_t n;
        bool str;
    } cases[] = {
        {"", 0, true},
        {"hello\n", 6, true},
        {"caf\xc3\xa9", 5, true},
        {"\xf0\x9f\x98\x80", 4, true},
        {"nul\0inside", 10, true},
        {"\xff", 1, false},
        {"\xc0\x80", 2, false},
        {"\xed\xa0\x80", 3, false},
        {"\xe2\x82", 2, false},
        {"\xf4\x90\x80\x80", 4, false},
        {"abcdefghijklmnopqrstuvwxyz\x80", 27, false},
        {"\x80" "abcdefghijklmnopqrstuvwxyz", 27, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct msg_out o;
        CHECK_EQ(msg_out_init(&o, 64), 0);
        msg_map(&o, 1);
        msg_key(&o, "data");
        msg_data(&o, cases[i].bytes, cases[i].n);
        struct parsed ps;
        uint8_t *frame;
        size_t len;
        finish_and_parse(&o, &ps, &frame, &len);
        CHECK_EQ(ps.r, 0);
        const msgpack_object *d = msg_get(&ps.obj, "data");
        CHECK(d != NULL);
        if (d->type != (cases[i].str ? MSGPACK_OBJECT_STR : MSGPACK_OBJECT_BIN))
            UNIT_FAIL("case %zu: type %d", i, (int)d->type);
        const char *s;
        size_t n;
        CHECK_EQ(msg_get_bytes(&ps.obj, "data", &s, &n), 0);
        CHECK_EQ(n, cases[i].n);
        CHECK(n == 0 || memcmp(s, cases[i].bytes, n) == 0);
        parsed_destroy(&ps);
        free(frame);
    }
}

/* msg_obj copies any parsed value; encoding what it produced again gives the same bytes. */
static void test_out_obj_copy(void)
{
    struct buf b = every_type_message();
    struct parsed in;
    parse_into(&in, b.p, b.len);
    CHECK_EQ(in.r, 0);

    struct msg_out o;
    CHECK_EQ(msg_out_init(&o, 16), 0);
    msg_obj(&o, &in.obj);
    struct parsed once;
    uint8_t *f1;
    size_t l1;
    finish_and_parse(&o, &once, &f1, &l1);
    CHECK_EQ(once.r, 0);
    CHECK(msgpack_object_equal(in.obj, once.obj));

    CHECK_EQ(msg_out_init(&o, 16), 0);
    msg_obj(&o, &once.obj);
    struct parsed twice;
    uint8_t *f2;
    size_t l2;
    finish_and_parse(&o, &twice, &f2, &l2);
    CHECK_EQ(twice.r, 0);
    CHECK_EQ(l1, l2);
    CHECK_MEM(f1, f2, l1);

    /* Each member on its own, inside a new message, as a reply echoes `req`. */
    for (uint32_t i = 0; i < in.obj.via.map.size; i++) {
        const msgpack_object_kv *kv = &in.obj.via.map.ptr[i];
        CHECK_EQ(msg_out_init(&o, 0), 0);
        msg_map(&o, 2);
        msg_kv_str(&o, "type", "echo");
        msg_key(&o, "v");
        msg_obj(&o, &kv->val);
        struct parsed one;
        uint8_t *f;
        size_t l;
        finish_and_parse(&o, &one, &f, &l);
        CHECK_EQ(one.r, 0);
        if (!msgpack_object_equal(*msg_get(&one.obj, "v"), kv->val))
            UNIT_FAIL("member %.*s not copied", (int)kv->key.via.str.size, kv->key.via.str.ptr);
        parsed_destroy(&one);
        free(f);
    }

    parsed_destroy(&twice);
    free(f2);
    parsed_destroy(&once);
    free(f1);
    parsed_destroy(&in);
    bfree(&b);
}

static void test_out_errors(void)
{
    struct msg_out o;

    /* A failed append sticks: nothing more is written and finish reports it. */
    CHECK_EQ(msg_out_init(&o, 0), 0);
    msg_map(&o, 1);
    o.failed = true;
    size_t size = msg_out_size(&o);
    msg_kv_str(&o, "type", "x");
    msg_kv_u64(&o, "n", 1);
    msg_obj(&o, &(msgpack_object){.type = MSGPACK_OBJECT_NIL});
    CHECK_EQ(msg_out_size(&o), size);
    CHECK(o.failed);
    CHECK_EQ(msg_out_finish(&o), -ENOMEM);
    msg_out_destroy(&o);
    msg_out_destroy(&o); /* idempotent */

    /* Finishing what was already stolen. */
    CHECK_EQ(msg_out_init(&o, 0), 0);
    msg_map(&o, 0);
    CHECK_EQ(msg_out_finish(&o), 0);
    size_t len;
    char *p = msg_out_steal(&o, &len);
    CHECK(p != NULL);
    CHECK_EQ(len, BOX_FRAME_HDR + 1);
    CHECK_MEM(p, "\0\0\0\x01\x80", 5);
    CHECK_EQ(msg_out_finish(&o), -ENOMEM);
    msg_out_destroy(&o);
    free(p);

    /* A body over 4 GiB cannot be framed. Building one would take 4 GiB, so the size is faked:
     * finish must refuse on the size alone, before it writes anything. */
    CHECK_EQ(msg_out_init(&o, 0), 0);
    size_t real = o.sb.size;
    o.sb.size = (size_t)UINT32_MAX + BOX_FRAME_HDR + 1;
    CHECK_EQ(msg_out_finish(&o), -EMSGSIZE);
    o.sb.size = (size_t)UINT32_MAX + BOX_FRAME_HDR;
    CHECK_EQ(msg_out_finish(&o), 0); /* exactly 4 GiB - 1 fits */
    CHECK_MEM(o.sb.data, "\xff\xff\xff\xff", 4);
    o.sb.size = real;
    msg_out_destroy(&o);
}

/* Maps counted as they are written and arrays patched at the end, as the agent's events use. */
static void test_out_open_close(void)
{
    struct msg_out o;
    CHECK_EQ(msg_out_init(&o, 0), 0);
    msg_map_open(&o);
    msg_kv_str(&o, "type", "list");
    msg_key(&o, "runs");
    size_t at = msg_array_open(&o);
    for (int i = 0; i < 3; i++) {
        msg_map_open(&o);
        msg_kv_str(&o, "id", i == 0 ? "r1" : i == 1 ? "r2" : "r3");
        msg_kv_i64(&o, "pid", 100 + i);
        if (i == 2) {
            msg_key(&o, "limits"); /* a third level of counted map */
            msg_map_open(&o);
            msg_kv_u64(&o, "max_frame", 1u << 20);
            msg_map_close(&o);
        }
        msg_map_close(&o);
    }
    msg_array_close(&o, at, 3);
    msg_key(&o, "req");
    msg_raw(&o, "\x92\x07\xa2id", 5); /* a saved `req`, already encoded */
    msg_raw(&o, "", 0);
    msg_key(&o, "empty");
    msg_map_open(&o);
    msg_map_close(&o);
    msg_kv_nil(&o, "nothing");
    msg_kv_bool(&o, "more", false);
    msg_kv_u64(&o, "next_seq", 9);
    msg_map_close(&o);

    struct parsed ps;
    uint8_t *frame;
    size_t len;
    finish_and_parse(&o, &ps, &frame, &len);
    CHECK_EQ(ps.r, 0);
    CHECK_EQ(frame[BOX_FRAME_HDR], 0xdf); /* map32 with its count patched in */
    CHECK_EQ(ps.obj.via.map.size, 7);
    const msgpack_object *runs = msg_get(&ps.obj, "runs");
    CHECK(runs != NULL && runs->type == MSGPACK_OBJECT_ARRAY);
    CHECK_EQ(runs->via.array.size, 3);
    for (uint32_t i = 0; i < 3; i++) {
        const msgpack_object *r = &runs->via.array.ptr[i];
        CHECK_EQ(r->type, MSGPACK_OBJECT_MAP);
        CHECK_EQ(r->via.map.size, i == 2 ? 3 : 2);
        int64_t pid;
        CHECK_EQ(msg_get_i64(r, "pid", &pid), 0);
        CHECK_EQ(pid, 100 + (int)i);
    }
    uint64_t u;
    const msgpack_object *limits = msg_get(&runs->via.array.ptr[2], "limits");
    CHECK(limits != NULL && limits->type == MSGPACK_OBJECT_MAP && limits->via.map.size == 1);
    CHECK_EQ(msg_get_u64(limits, "max_frame", &u), 0);
    CHECK_U64(u, 1u << 20);
    const msgpack_object *req = msg_get(&ps.obj, "req");
    CHECK(req != NULL && req->type == MSGPACK_OBJECT_ARRAY && req->via.array.size == 2);
    CHECK_EQ(req->via.array.ptr[0].via.u64, 7);
    const msgpack_object *empty = msg_get(&ps.obj, "empty");
    CHECK(empty != NULL && empty->type == MSGPACK_OBJECT_MAP && empty->via.map.size == 0);
    CHECK_EQ(msg_get_u64(&ps.obj, "next_seq", &u), 0);
    CHECK_U64(u, 9);
    parsed_destroy(&ps);
    free(frame);

    /* MSG_MAX_OPEN levels of counted maps. */
    CHECK_EQ(msg_out_init(&o, 0), 0);
    for (int i = 0; i < MSG_MAX_OPEN; i++) {
        msg_map_open(&o);
        msg_kv_i64(&o, "level", i);
        if (i < MSG_MAX_OPEN - 1)
            msg_key(&o, "next");
    }
    for (int i = 0; i < MSG_MAX_OPEN; i++)
        msg_map_close(&o);
    CHECK(!o.failed);
    finish_and_parse(&o, &ps, &frame, &len);
    CHECK_EQ(ps.r, 0);
    CHECK_EQ(ps.obj.via.map.size, 2);
    parsed_destroy(&ps);
    free(frame);
}

/* Misnested counted maps are caught: the frame is refused instead of sent malformed. */
/* msg_line writes the bytes the packer calls it stands for would, at every width boundary of
 * every field, for str and bin, into buffers that start too small (it grows them). */
static void test_out_line_same_bytes(void)
{
    static const uint64_t nums[] = {0,          1,           0x7f,        0x80,
                                    0xff,       0x100,       0xffff,      0x10000,
                                    0xffffffffu, 0x100000000ull, 1793000000123456789ull, UINT64_MAX};
    static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536, 70000};
    size_t nn = sizeof nums / sizeof nums[0];
    char *data = malloc(70000);
    CHECK(data != NULL);
    for (size_t i = 0; i < 70000; i++)
        data[i] = (char)('a' + i % 26);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
        for (size_t k = 0; k < nn; k++)
            for (int utf8 = 0; utf8 <= 1; utf8++) {
                uint64_t seq = nums[k], ts = nums[(k + 3) % nn], stream = nums[(k + 7) % nn];
                struct msg_out a, b;
                CHECK_EQ(msg_out_init(&a, 0), 0);
                CHECK_EQ(msg_out_init(&b, 0), 0);
                for (int rep = 0; rep < 2; rep++) {
                    msg_array(&a, 4);
                    msg_u64(&a, seq);
                    msg_u64(&a, ts);
                    msg_u64(&a, stream);
                    msg_data_known(&a, data, lens[li], utf8);
                    msg_line(&b, seq, ts, stream, data, lens[li], utf8);
                }
                CHECK(!a.failed && !b.failed);
                CHECK_EQ(msg_out_size(&a), msg_out_size(&b));
                /* From after the frame header, which is filled in only by msg_out_finish. */
                if (msg_out_size(&a) == msg_out_size(&b) &&
                    memcmp(a.sb.data + BOX_FRAME_HDR, b.sb.data + BOX_FRAME_HDR,
                           msg_out_size(&a) - BOX_FRAME_HDR) != 0)
                    UNIT_FAIL("msg_line differs: seq %llu ts %llu stream %llu len %zu utf8 %d",
                              (unsigned long long)seq, (unsigned long long)ts,
                              (unsigned long long)stream, lens[li], utf8);
                msg_out_destroy(&a);
                msg_out_destroy(&b);
            }
    free(data);

    /* A line in an event parses back as the record it was. */
    struct msg_out o;
    CHECK_EQ(msg_out_init(&o, 0), 0);
    msg_map_open(&o);
    msg_key(&o, "lines");
    size_t arr = msg_array_open(&o);
    msg_line(&o, 7, 1793000000123456789ull, 2, "oops\n", 5, true);
    msg_line(&o, 8, 1793000000123456790ull, 1, "\xff\n", 2, false);
    msg_array_close(&o, arr, 2);
    msg_map_close(&o);
    struct parsed ps;
    uint8_t *frame;
    size_t len;
    finish_and_parse(&o, &ps, &frame, &len);
    CHECK_EQ(ps.r, 0);
    const msgpack_object *lines = msg_get(&ps.obj, "lines");
    CHECK(lines && lines->type == MSGPACK_OBJECT_ARRAY && lines->via.array.size == 2);
    if (lines && lines->type == MSGPACK_OBJECT_ARRAY && lines->via.array.size == 2) {
        const msgpack_object *l0 = lines->via.array.ptr[0].via.array.ptr;
        const msgpack_object *l1 = lines->via.array.ptr[1].via.array.ptr;
        CHECK_EQ(l0[0].via.u64, 7);
        CHECK_EQ(l0[1].via.u64, 1793000000123456789ull);
        CHECK_EQ(l0[2].via.u64, 2);
        CHECK(l0[3].type == MSGPACK_OBJECT_STR && l0[3].via.str.size == 5 &&
              memcmp(l0[3].via.str.ptr, "oops\n", 5) == 0);
        CHECK(l1[3].type == MSGPACK_OBJECT_BIN && l1[3].via.bin.size == 2 &&
              (uint8_t)l1[3].via.bin.ptr[0] == 0xff);
    }
    parsed_destroy(&ps);
    free(frame);
}

static void test_out_open_close_errors(void)
{
    struct msg_out o;
    CHECK_EQ(msg_out_init(&o, 0), 0);
    msg_map_open(&o);
    msg_kv_str(&o, "type", "x");
    CHECK_EQ(msg_out_finish(&o), -ENOMEM); /* still open */
    msg_map_close(&o);
    CHECK_EQ(msg_out_finish(&o), 0);
    msg_map_close(&o); /* one close too many */
    CHECK(o.failed);
    CHECK_EQ(msg_out_finish(&o), -ENOMEM);
    msg_out_destroy(&o);

    CHECK_EQ(msg_out_init(&o, 0), 0);
    for (int i = 0; i < MSG_MAX_OPEN; i++) {
        msg_map_open(&o);
        msg_key(&o, "k");
    }
    CHECK(!o.failed);
    msg_map_open(&o); /* one level past MSG_MAX_OPEN */
    CHECK(o.failed);
    for (int i = 0; i < MSG_MAX_OPEN; i++)
        msg_map_close(&o);
    CHECK_EQ(msg_out_finish(&o), -ENOMEM);
    msg_out_destroy(&o);

    /* After a failure, closing patches nothing (and writes nothing past the buffer). */
    CHECK_EQ(msg_out_init(&o, 0), 0);
    msg_map_open(&o);
    size_t at = msg_array_open(&o);
    size_t size = msg_out_size(&o);
    o.failed = true;
    msg_array_close(&o, at, 5);
    msg_map_close(&o);
    CHECK_EQ(msg_out_size(&o), size);
    CHECK_MEM(o.sb.data + BOX_FRAME_HDR, "\xdf\0\0\0\0\xdd\0\0\0\0", 10);
    CHECK_EQ(msg_out_finish(&o), -ENOMEM);
    msg_out_destroy(&o);
}

static const struct unit_test tests[] = {
    UNIT_TEST(test_frame_header_roundtrip),
    UNIT_TEST(test_frame_header_eagain),
    UNIT_TEST(test_frame_header_limits),
    UNIT_TEST(test_validate_scalars),
    UNIT_TEST(test_validate_str),
    UNIT_TEST(test_validate_bin),
    UNIT_TEST(test_validate_ext),
    UNIT_TEST(test_validate_arrays),
    UNIT_TEST(test_validate_maps),
    UNIT_TEST(test_validate_every_type_message),
    UNIT_TEST(test_validate_byte_at_a_time),
    UNIT_TEST(test_validate_reserved_c1),
    UNIT_TEST(test_validate_depth),
    UNIT_TEST(test_validate_impossible_counts),
    UNIT_TEST(test_validate_truncated_headers),
    UNIT_TEST(test_parse_valid_map),
    UNIT_TEST(test_parse_not_a_map),
    UNIT_TEST(test_parse_non_str_key),
    UNIT_TEST(test_parse_trailing_and_truncated),
    UNIT_TEST(test_parse_enomem),
    UNIT_TEST(test_get_absent_and_nil),
    UNIT_TEST(test_get_empty_str_first),
    UNIT_TEST(test_get_wrong_type),
    UNIT_TEST(test_get_i64),
    UNIT_TEST(test_get_u64),
    UNIT_TEST(test_get_str_bytes_bool),
    UNIT_TEST(test_utf8_ascii),
    UNIT_TEST(test_utf8_multibyte),
    UNIT_TEST(test_utf8_overlong),
    UNIT_TEST(test_utf8_surrogates),
    UNIT_TEST(test_utf8_above_max),
    UNIT_TEST(test_utf8_truncated),
    UNIT_TEST(test_utf8_lone_continuation),
    UNIT_TEST(test_utf8_long_mixed),
    UNIT_TEST(test_utf8_exhaustive),
    UNIT_TEST(test_out_roundtrip),
    UNIT_TEST(test_out_large_frame),
    UNIT_TEST(test_out_data_str_or_bin),
    UNIT_TEST(test_out_obj_copy),
    UNIT_TEST(test_out_errors),
    UNIT_TEST(test_out_open_close),
    UNIT_TEST(test_out_open_close_errors),
    UNIT_TEST(test_out_line_same_bytes),
};

int main(int argc, char **argv)
{
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
