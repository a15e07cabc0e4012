/* boxd wire codec. See codec.h for the contract of every function. */
#include "codec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int frame_header_decode(const uint8_t *buf, size_t len, uint32_t max, uint32_t *body_len)
{
    if (len < BOX_FRAME_HDR)
        return -EAGAIN;
    uint32_t n = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 |
                 (uint32_t)buf[3];
    if (n > max)
        return -EMSGSIZE;
    if (n == 0)
        return -EBADMSG;
    *body_len = n;
    return 0;
}

void frame_header_encode(uint8_t out[BOX_FRAME_HDR], uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
}

/* ---- Validation ------------------------------------------------------------------------------
 * An explicit stack of "values still to read" per open container; no recursion, so hostile
 * nesting cannot exhaust the C stack. */

static uint64_t be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

int msg_validate(const uint8_t *buf, size_t len, unsigned max_depth, size_t *used)
{
    uint64_t pending[BOX_MAX_DEPTH + 1];
    unsigned depth = 0; /* open containers */
    uint64_t top = 1;   /* values left to read at the current level */
    size_t off = 0;

    if (max_depth > BOX_MAX_DEPTH)
        max_depth = BOX_MAX_DEPTH;

    for (;;) {
        while (top == 0) {
            if (depth == 0) {
                *used = off;
                return 0;
            }
            top = pending[--depth];
        }
        top--;
        if (off >= len)
            return -EAGAIN;
        uint8_t b = buf[off++];
        uint64_t skip = 0;     /* payload bytes after the header */
        uint64_t children = 0; /* values inside, for containers */
        unsigned hdr = 0;      /* length-field bytes */
        bool container = false;

        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b >= 0x80 && b <= 0x8f) {
            children = 2u * (b & 0x0f), container = true;
        } else if (b >= 0x90 && b <= 0x9f) {
            children = b & 0x0f, container = true;
        } else if (b >= 0xa0 && b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc1:
                return -EBADMSG;
            case 0xc4: case 0xd9: hdr = 1; break; /* bin8, str8 */
            case 0xc5: case 0xda: hdr = 2; break;
            case 0xc6: case 0xdb: hdr = 4; break;
            case 0xc7: hdr = 1; skip = 1; break; /* ext8: len + type */
            case 0xc8: hdr = 2; skip = 1; break;
            case 0xc9: hdr = 4; skip = 1; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break; /* fixext: type + data */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: hdr = 2; container = true; break; /* array16 */
            case 0xdd: hdr = 4; container = true; break;
            case 0xde: hdr = 2; container = true; break; /* map16 */
            case 0xdf: hdr = 4; container = true; break;
            default:
                return -EBADMSG;
            }
            if (hdr) {
                if (len - off < hdr)
                    return -EAGAIN;
                uint64_t n = be(buf + off, hdr);
                off += hdr;
                if (container)
                    children = (b == 0xde || b == 0xdf) ? 2 * n : n;
                else
                    skip += n;
            }
        }
        if (skip) {
            if (len - off < skip)
                return -EAGAIN;
            off += (size_t)skip;
        }
        if (container) {
            /* An empty container is a level too: msgpack-c counts it against its own stack
             * (and fails with NOMEM one level past 32), so it must count here. */
            if (depth >= max_depth)
                return -EBADMSG;
            if (children) {
                /* Every element takes at least one byte: a count the rest of the buffer cannot
                 * hold is a lie, and msgpack-c would allocate for it up front. */
                if (children > len - off)
                    return -EAGAIN;
                pending[depth++] = top;
                top = children;
            }
        }
    }
}

int msg_parse(const uint8_t *body, size_t len, msgpack_zone *zone, msgpack_object *out)
{
    size_t used = 0;
    int r = msg_validate(body, len, BOX_MAX_DEPTH, &used);
    if (r == -EAGAIN)
        return -EBADMSG; /* a frame body is complete by definition: truncated is malformed */
    if (r < 0)
        return r;
    if (used != len)
        return -EBADMSG;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack((const char *)body, len, &off, zone, out);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR)
        return -ENOMEM;
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len)
        return -EBADMSG;
    if (out->type != MSGPACK_OBJECT_MAP)
        return -EBADMSG;
    for (uint32_t i = 0; i < out->via.map.size; i++)
        if (out->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR)
            return -EBADMSG;
    return 0;
}

const msgpack_object *msg_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        /* msgpack-c may leave ptr NULL for an empty str: memcmp must not see it. */
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            (klen == 0 || memcmp(k->via.str.ptr, key, klen) == 0))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

int msg_get_str(const msgpack_object *map, const char *key, const char **s, size_t *len)
{
    const msgpack_object *o = msg_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return -ENOENT;
    if (o->type != MSGPACK_OBJECT_STR)
        return -EINVAL;
    *s = o->via.str.size ? o->via.str.ptr : ""; /* never NULL, even for msgpack-c's empty str */
    *len = o->via.str.size;
    return 0;
}

int msg_get_bytes(const msgpack_object *map, const char *key, const char **s, size_t *len)
{
    const msgpack_object *o = msg_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return -ENOENT;
    if (o->type == MSGPACK_OBJECT_STR) {
        *s = o->via.str.size ? o->via.str.ptr : "";
        *len = o->via.str.size;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_BIN) {
        *s = o->via.bin.size ? o->via.bin.ptr : "";
        *len = o->via.bin.size;
        return 0;
    }
    return -EINVAL;
}

int msg_get_u64(const msgpack_object *map, const char *key, uint64_t *v)
{
    const msgpack_object *o = msg_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return -ENOENT;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *v = o->via.u64;
        return 0;
    }
    return -EINVAL; /* negative integers are out of range, other types wrong */
}

int msg_get_i64(const msgpack_object *map, const char *key, int64_t *v)
{
    const msgpack_object *o = msg_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return -ENOENT;
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *v = o->via.i64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
        *v = (int64_t)o->via.u64;
        return 0;
    }
    return -EINVAL;
}

int msg_get_bool(const msgpack_object *map, const char *key, bool *v)
{
    const msgpack_object *o = msg_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return -ENOENT;
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return -EINVAL;
    *v = o->via.boolean;
    return 0;
}

bool utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        /* Fast paths: 32, then 8, ASCII bytes at a time (output is mostly ASCII lines). */
        while (len - i >= 32) {
            uint64_t w[4];
            memcpy(w, s + i, 32);
            if (((w[0] | w[1] | w[2] | w[3]) & 0x8080808080808080ull) != 0)
                break;
            i += 32;
        }
        if (i == len)
            break;
        if (len - i >= 8) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if ((w & 0x8080808080808080ull) == 0) {
                i += 8;
                continue;
            }
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        unsigned n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return false;
        if (len - i <= n)
            return false;
        for (unsigned k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}

/* ---- Encoding -------------------------------------------------------------------------------- */

static int sbuf_write(void *data, const char *buf, size_t len)
{
    struct msg_out *o = data;
    if (o->failed)
        return -1;
    if (msgpack_sbuffer_write(&o->sb, buf, len) != 0) {
        o->failed = true;
        return -1;
    }
    return 0;
}

int msg_out_init(struct msg_out *o, size_t initial)
{
    memset(o, 0, sizeof *o);
    if (initial < 64)
        initial = 64;
    o->sb.data = malloc(initial);
    if (o->sb.data == NULL)
        return -ENOMEM;
    o->sb.alloc = initial;
    o->sb.size = BOX_FRAME_HDR; /* reserved for the header */
    msgpack_packer_init(&o->pk, o, sbuf_write);
    return 0;
}

int msg_out_finish(struct msg_out *o)
{
    if (o->failed || o->sb.data == NULL || o->depth != 0)
        return -ENOMEM;
    size_t body = o->sb.size - BOX_FRAME_HDR;
    if (body > UINT32_MAX)
        return -EMSGSIZE;
    frame_header_encode((uint8_t *)o->sb.data, (uint32_t)body);
    return 0;
}

char *msg_out_steal(struct msg_out *o, size_t *len)
{
    char *p = o->sb.data;
    *len = o->sb.size;
    o->sb.data = NULL;
    o->sb.size = o->sb.alloc = 0;
    return p;
}

void msg_out_destroy(struct msg_out *o)
{
    free(o->sb.data);
    o->sb.data = NULL;
    o->sb.size = o->sb.alloc = 0;
}

size_t msg_out_size(const struct msg_out *o)
{
    return o->sb.size;
}

void msg_strn(struct msg_out *o, const char *s, size_t n)
{
    if (msgpack_pack_str(&o->pk, n) != 0 || msgpack_pack_str_body(&o->pk, s, n) != 0)
        o->failed = true;
}

void msg_str(struct msg_out *o, const char *s)
{
    msg_strn(o, s, strlen(s));
}

void msg_key(struct msg_out *o, const char *key)
{
    if (o->depth > 0)
        o->open_n[o->depth - 1]++;
    msg_strn(o, key, strlen(key));
}

static void patch32(struct msg_out *o, size_t at, uint8_t marker, uint32_t n)
{
    if (o->failed || at + 5 > o->sb.size)
        return;
    uint8_t *p = (uint8_t *)o->sb.data + at;
    p[0] = marker;
    frame_header_encode(p + 1, n);
}

void msg_map_open(struct msg_out *o)
{
    static const uint8_t hdr[5] = {0xdf, 0, 0, 0, 0};
    if (o->depth >= MSG_MAX_OPEN) {
        o->failed = true;
        return;
    }
    o->open_at[o->depth] = o->sb.size;
    o->open_n[o->depth] = 0;
    o->depth++;
    sbuf_write(o, (const char *)hdr, sizeof hdr);
}

void msg_map_close(struct msg_out *o)
{
    if (o->depth == 0) {
        o->failed = true;
        return;
    }
    o->depth--;
    patch32(o, o->open_at[o->depth], 0xdf, o->open_n[o->depth]);
}

size_t msg_array_open(struct msg_out *o)
{
    static const uint8_t hdr[5] = {0xdd, 0, 0, 0, 0};
    size_t at = o->sb.size;
    sbuf_write(o, (const char *)hdr, sizeof hdr);
    return at;
}

void msg_array_close(struct msg_out *o, size_t at, uint32_t n)
{
    patch32(o, at, 0xdd, n);
}

void msg_data_known(struct msg_out *o, const char *s, size_t n, bool utf8)
{
    if (utf8) {
        msg_strn(o, s, n);
        return;
    }
    if (msgpack_pack_bin(&o->pk, n) != 0 || msgpack_pack_bin_body(&o->pk, s, n) != 0)
        o->failed = true;
}

/* Grows the buffer so n more bytes fit; false (and failed) when it cannot. */
static bool out_reserve(struct msg_out *o, size_t n)
{
    if (o->failed)
        return false;
    if (o->sb.alloc - o->sb.size >= n)
        return true;
    size_t want = o->sb.alloc ? o->sb.alloc : 64;
    while (want - o->sb.size < n) {
        if (want > SIZE_MAX / 2) {
            o->failed = true;
            return false;
        }
        want *= 2;
    }
    char *p = realloc(o->sb.data, want);
    if (p == NULL) {
        o->failed = true;
        return false;
    }
    o->sb.data = p;
    o->sb.alloc = want;
    return true;
}

/* msgpack's shortest encoding of an unsigned integer, as msgpack_pack_uint64 writes it. */
static inline size_t put_uint(uint8_t *p, uint64_t v)
{
    if (v < 0x80) {
        p[0] = (uint8_t)v;
        return 1;
    }
    if (v > 0xffffffffu) { /* timestamps: the common wide case, as one big-endian store */
        uint64_t be = __builtin_bswap64(v);
        p[0] = 0xcf;
        memcpy(p + 1, &be, 8);
        return 9;
    }
    unsigned n = v <= 0xff ? 1 : v <= 0xffff ? 2 : 4;
    p[0] = n == 1 ? 0xcc : n == 2 ? 0xcd : 0xce;
    for (unsigned i = 0; i < n; i++)
        p[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    return 1 + n;
}

/* A str or bin header for n bytes, as msgpack_pack_str / msgpack_pack_bin write it. */
static inline size_t put_data_hdr(uint8_t *p, size_t n, bool str)
{
    if (str && n < 32) {
        p[0] = (uint8_t)(0xa0 | n);
        return 1;
    }
    unsigned w = n <= 0xff ? 1 : n <= 0xffff ? 2 : 4;
    if (str)
        p[0] = w == 1 ? 0xd9 : w == 2 ? 0xda : 0xdb;
    else
        p[0] = w == 1 ? 0xc4 : w == 2 ? 0xc5 : 0xc6;
    for (unsigned i = 0; i < w; i++)
        p[1 + i] = (uint8_t)(n >> (8 * (w - 1 - i)));
    return 1 + w;
}

void msg_line(struct msg_out *o, uint64_t seq, uint64_t ts_ns, uint64_t stream, const char *data,
              size_t n, bool utf8)
{
    if (n > UINT32_MAX) {
        o->failed = true;
        return;
    }
    /* fixarray, three uint64 of at most 9 bytes, a 5-byte header, the data */
    if (!out_reserve(o, 1 + 3 * 9 + 5 + n))
        return;
    uint8_t *p0 = (uint8_t *)o->sb.data + o->sb.size, *p = p0;
    *p++ = 0x94;
    p += put_uint(p, seq);
    p += put_uint(p, ts_ns);
    p += put_uint(p, stream);
    p += put_data_hdr(p, n, utf8);
    if (n)
        memcpy(p, data, n);
    o->sb.size += (size_t)(p - p0) + n;
}

char *msg_bin_reserve(struct msg_out *o, size_t max)
{
    if (max > UINT32_MAX || !out_reserve(o, 5 + max))
        return NULL;
    return o->sb.data + o->sb.size + 5;
}

void msg_bin_commit(struct msg_out *o, size_t n)
{
    uint8_t *p = (uint8_t *)o->sb.data + o->sb.size;
    p[0] = 0xc6; /* bin 32: its length is known only after the bytes are in */
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    o->sb.size += 5 + n;
}

void msg_data(struct msg_out *o, const char *s, size_t n)
{
    msg_data_known(o, s, n, utf8_valid((const uint8_t *)s, n));
}

void msg_kv_str(struct msg_out *o, const char *key, const char *s)
{
    msg_key(o, key);
    msg_str(o, s);
}

void msg_kv_i64(struct msg_out *o, const char *key, int64_t v)
{
    msg_key(o, key);
    msg_i64(o, v);
}

void msg_kv_u64(struct msg_out *o, const char *key, uint64_t v)
{
    msg_key(o, key);
    msg_u64(o, v);
}

void msg_kv_bool(struct msg_out *o, const char *key, bool v)
{
    msg_key(o, key);
    if ((v ? msgpack_pack_true(&o->pk) : msgpack_pack_false(&o->pk)) != 0)
        o->failed = true;
}

void msg_kv_nil(struct msg_out *o, const char *key)
{
    msg_key(o, key);
    if (msgpack_pack_nil(&o->pk) != 0)
        o->failed = true;
}

void msg_obj(struct msg_out *o, const msgpack_object *obj)
{
    if (msgpack_pack_object(&o->pk, *obj) != 0)
        o->failed = true;
}

void msg_map(struct msg_out *o, uint32_t n)
{
    if (msgpack_pack_map(&o->pk, n) != 0)
        o->failed = true;
}

void msg_array(struct msg_out *o, uint32_t n)
{
    if (msgpack_pack_array(&o->pk, n) != 0)
        o->failed = true;
}

void msg_i64(struct msg_out *o, int64_t v)
{
    if (msgpack_pack_int64(&o->pk, v) != 0)
        o->failed = true;
}

void msg_u64(struct msg_out *o, uint64_t v)
{
    if (msgpack_pack_uint64(&o->pk, v) != 0)
        o->failed = true;
}

void msg_raw(struct msg_out *o, const void *bytes, size_t n)
{
    sbuf_write(o, bytes, n);
}
