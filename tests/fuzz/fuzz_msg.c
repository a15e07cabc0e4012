/* Fuzz target: the message decoder (msg_validate, msg_parse, the getters, utf8_valid).
 *
 * The input is one frame body. msgpack-c is the oracle:
 *   - msg_validate returns 0 with used == size exactly when msgpack_unpack succeeds on the whole
 *     input; 0 with used < size exactly when msgpack-c finds the same value and extra bytes;
 *   - msg_parse returns 0 exactly when, on top of that, the value is a map with str keys, and
 *     -EBADMSG otherwise (never -ENOMEM, never -EAGAIN);
 *   - every strict prefix of an accepted value is -EAGAIN, and the answer does not depend on a
 *     max_depth above BOX_MAX_DEPTH (it is capped);
 *   - the getters never crash, and agree with the type of what msg_get finds;
 *   - utf8_valid agrees with a reference written from Unicode's table of well-formed sequences,
 *     and msg_data encodes the input as str exactly when it is valid UTF-8, keeping every byte.
 */
#include "codec.h"
#include "fuzz.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

/* Whether msgpack_unpack can safely be run on an input that msg_validate called truncated.
 * msgpack-c allocates count * sizeof(msgpack_object) when it meets an array or map header, before
 * it knows whether the input holds that many elements; a 5-byte "array32 of 4 billion" makes it
 * ask for 96 GiB (which is why msg_validate exists). This scan shares nothing with msg_validate:
 * it treats every byte as a possible array16/32 or map16/32 marker and says no if any count that
 * follows one is larger than the whole input. Fixarray and fixmap counts are at most 15. */
static bool counts_bounded(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t count;
        if ((d[i] == 0xdc || d[i] == 0xde) && n - i > 2)
            count = (uint64_t)d[i + 1] << 8 | d[i + 2];
        else if ((d[i] == 0xdd || d[i] == 0xdf) && n - i > 4)
            count = (uint64_t)d[i + 1] << 24 | (uint64_t)d[i + 2] << 16 |
                    (uint64_t)d[i + 3] << 8 | d[i + 4];
        else
            continue;
        if (count > n)
            return false;
    }
    return true;
}

/* Unicode Table 3-7 (well-formed UTF-8 byte sequences), as byte ranges. */
static bool utf8_ref(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i], lo = 0x80, hi = 0xbf;
        size_t n;
        if (c <= 0x7f) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            n = 1;
        else if (c == 0xe0)
            n = 2, lo = 0xa0;
        else if ((c >= 0xe1 && c <= 0xec) || c == 0xee || c == 0xef)
            n = 2;
        else if (c == 0xed)
            n = 2, hi = 0x9f;
        else if (c == 0xf0)
            n = 3, lo = 0x90;
        else if (c >= 0xf1 && c <= 0xf3)
            n = 3;
        else if (c == 0xf4)
            n = 3, hi = 0x8f;
        else
            return false;
        if (len - i - 1 < n || s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += n + 1;
    }
    return true;
}

static int validate_copy(const uint8_t *data, size_t k, size_t *used)
{
    /* An exact-size copy, so that a read past k is caught. */
    uint8_t *d = malloc(k ? k : 1);
    FUZZ_CHECK(d != NULL);
    if (k)
        memcpy(d, data, k);
    int r = msg_validate(d, k, BOX_MAX_DEPTH, used);
    free(d);
    return r;
}

/* Every getter on key, checked against what msg_get finds there. */
static void check_getters(const msgpack_object *map, const char *key)
{
    const msgpack_object *o = msg_get(map, key);
    bool absent = o == NULL || o->type == MSGPACK_OBJECT_NIL;
    const char *s = NULL;
    size_t n = 0;
    uint64_t u = 0;
    int64_t v = 0;
    bool b = false;

    int r = msg_get_str(map, key, &s, &n);
    if (absent)
        FUZZ_CHECK(r == -ENOENT);
    else if (o->type == MSGPACK_OBJECT_STR)
        FUZZ_CHECK(r == 0 && s != NULL && n == o->via.str.size && (n == 0 || s == o->via.str.ptr));
    else
        FUZZ_CHECK(r == -EINVAL);
    if (r == 0)
        (void)utf8_valid((const uint8_t *)s, n);

    r = msg_get_bytes(map, key, &s, &n);
    if (absent)
        FUZZ_CHECK(r == -ENOENT);
    else if (o->type == MSGPACK_OBJECT_STR || o->type == MSGPACK_OBJECT_BIN)
        FUZZ_CHECK(r == 0 && s != NULL &&
                   n == (o->type == MSGPACK_OBJECT_STR ? o->via.str.size : o->via.bin.size));
    else
        FUZZ_CHECK(r == -EINVAL);

    r = msg_get_u64(map, key, &u);
    if (absent)
        FUZZ_CHECK(r == -ENOENT);
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        FUZZ_CHECK(r == 0 && u == o->via.u64);
    else
        FUZZ_CHECK(r == -EINVAL);

    r = msg_get_i64(map, key, &v);
    if (absent)
        FUZZ_CHECK(r == -ENOENT);
    else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
        FUZZ_CHECK(r == 0 && v == o->via.i64 && v < 0);
    else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
        FUZZ_CHECK(r == 0 && v >= 0 && (uint64_t)v == o->via.u64);
    else
        FUZZ_CHECK(r == -EINVAL);

    r = msg_get_bool(map, key, &b);
    if (absent)
        FUZZ_CHECK(r == -ENOENT);
    else if (o->type == MSGPACK_OBJECT_BOOLEAN)
        FUZZ_CHECK(r == 0 && b == o->via.boolean);
    else
        FUZZ_CHECK(r == -EINVAL);
}

static const char *const protocol_keys[] = {
    "type",    "req",      "id",          "version",   "client",     "cmd",      "argv",
    "env",     "cwd",      "timeout_ms",  "grace_ms",  "stdin",      "follow",   "output",
    "data",    "eof",      "signal",      "from_seq",  "max_records", "max_bytes", "lines",
    "status",  "exit_code", "next_seq",   "code",      "message",    "",
};

static void check_map(const msgpack_object *obj)
{
    for (size_t i = 0; i < sizeof protocol_keys / sizeof protocol_keys[0]; i++)
        check_getters(obj, protocol_keys[i]);
    if (obj->type != MSGPACK_OBJECT_MAP)
        return;
    /* Every key the map has (as a C string, when it has no NUL inside). */
    for (uint32_t i = 0; i < obj->via.map.size && i < 64; i++) {
        const msgpack_object *k = &obj->via.map.ptr[i].key;
        /* An empty str may come with a NULL pointer (see test_get_empty_str_first). */
        size_t n = k->type == MSGPACK_OBJECT_STR ? k->via.str.size : 0;
        if (k->type != MSGPACK_OBJECT_STR || n > 255 ||
            (n > 0 && memchr(k->via.str.ptr, 0, n) != NULL))
            continue;
        char key[256];
        if (n > 0)
            memcpy(key, k->via.str.ptr, n);
        key[n] = '\0';
        FUZZ_CHECK(msg_get(obj, key) != NULL);
        check_getters(obj, key);
    }
}

static void check_data(const uint8_t *data, size_t size)
{
    bool valid = utf8_valid(data, size);
    FUZZ_CHECK(valid == utf8_ref(data, size));

    struct msg_out o;
    FUZZ_CHECK(msg_out_init(&o, 0) == 0);
    msg_map(&o, 1);
    msg_key(&o, "data");
    msg_data(&o, (const char *)data, size);
    FUZZ_CHECK(msg_out_finish(&o) == 0);
    size_t len;
    uint8_t *frame = (uint8_t *)msg_out_steal(&o, &len);
    msg_out_destroy(&o);
    uint32_t body = 0;
    FUZZ_CHECK(frame_header_decode(frame, len, UINT32_MAX, &body) == 0);
    FUZZ_CHECK(body == len - BOX_FRAME_HDR);

    msgpack_zone zone;
    msgpack_object obj;
    FUZZ_CHECK(msgpack_zone_init(&zone, 256));
    FUZZ_CHECK(msg_parse(frame + BOX_FRAME_HDR, body, &zone, &obj) == 0);
    const msgpack_object *d = msg_get(&obj, "data");
    FUZZ_CHECK(d != NULL);
    FUZZ_CHECK(d->type == (valid ? MSGPACK_OBJECT_STR : MSGPACK_OBJECT_BIN));
    const char *s;
    size_t n;
    FUZZ_CHECK(msg_get_bytes(&obj, "data", &s, &n) == 0);
    FUZZ_CHECK(n == size && (size == 0 || memcmp(s, data, size) == 0));
    msgpack_zone_destroy(&zone);
    free(frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t used = SIZE_MAX;
    int v = msg_validate(data, size, BOX_MAX_DEPTH, &used);
    FUZZ_CHECK(v == 0 || v == -EAGAIN || v == -EBADMSG);
    if (v == 0)
        FUZZ_CHECK(used >= 1 && used <= size);
    else
        FUZZ_CHECK(used == SIZE_MAX);

    /* A max_depth above BOX_MAX_DEPTH is capped, so it answers the same. */
    size_t used2 = SIZE_MAX;
    FUZZ_CHECK(msg_validate(data, size, BOX_MAX_DEPTH + 9, &used2) == v && used2 == used);
    /* A lower limit only ever refuses more. */
    size_t used3 = SIZE_MAX;
    int v3 = msg_validate(data, size, 3, &used3);
    if (v3 == 0)
        FUZZ_CHECK(v == 0 && used3 == used);

    /* Strict prefixes of an accepted value are truncated, never bad and never complete. A few
     * cuts per input keep the target fast; the unit tests try every cut of their messages. */
    if (v == 0) {
        size_t cuts[4] = {0, used / 2, used - 1, (size_t)data[0] % used};
        for (size_t i = 0; i < 4; i++) {
            size_t u = SIZE_MAX;
            FUZZ_CHECK(validate_copy(data, cuts[i], &u) == -EAGAIN && u == SIZE_MAX);
        }
        /* The value alone, with nothing after it. */
        size_t u = SIZE_MAX;
        FUZZ_CHECK(validate_copy(data, used, &u) == 0 && u == used);
    } else if (size > 0) {
        /* A prefix of a truncated value is truncated too; of a bad one, truncated or bad. */
        size_t u = SIZE_MAX;
        int rp = validate_copy(data, size - 1, &u);
        FUZZ_CHECK(rp == -EAGAIN || (v == -EBADMSG && rp == -EBADMSG));
    }

    msgpack_zone zone;
    FUZZ_CHECK(msgpack_zone_init(&zone, 1024));
    msgpack_object obj;
    bool whole = false, map_of_str = false;
    if (v != -EAGAIN || counts_bounded(data, size)) {
        size_t off = 0;
        msgpack_unpack_return ur = msgpack_unpack((const char *)data, size, &off, &zone, &obj);
        whole = ur == MSGPACK_UNPACK_SUCCESS;
        FUZZ_CHECK(whole == (v == 0 && used == size));
        if (v == 0 && used < size)
            FUZZ_CHECK(ur == MSGPACK_UNPACK_EXTRA_BYTES && off == used);
        if (v != 0)
            FUZZ_CHECK(ur != MSGPACK_UNPACK_SUCCESS && ur != MSGPACK_UNPACK_EXTRA_BYTES);
        if (ur == MSGPACK_UNPACK_SUCCESS || ur == MSGPACK_UNPACK_EXTRA_BYTES)
            check_map(&obj); /* any value, map or not: the getters must cope */
        if (whole && obj.type == MSGPACK_OBJECT_MAP) {
            map_of_str = true;
            for (uint32_t i = 0; i < obj.via.map.size; i++)
                if (obj.via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
                    map_of_str = false;
        }
    }
    msgpack_zone_destroy(&zone);

    FUZZ_CHECK(msgpack_zone_init(&zone, 1024));
    int p = msg_parse(data, size, &zone, &obj);
    FUZZ_CHECK(p == 0 || p == -EBADMSG);
    if (v != -EAGAIN || counts_bounded(data, size))
        FUZZ_CHECK((p == 0) == map_of_str);
    else
        FUZZ_CHECK(p == -EBADMSG);
    if (p == 0)
        check_map(&obj);
    msgpack_zone_destroy(&zone);

    check_data(data, size);
    return 0;
}
