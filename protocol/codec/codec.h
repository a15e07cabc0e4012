/* boxd wire codec: frames and msgpack messages.
 *
 * Pure functions over bytes. The codec knows msgpack and the frame header, and nothing about
 * sockets, event loops or the agent. Every decoder returns:
 *    0          complete
 *   -EAGAIN     need more bytes
 *   -EBADMSG    malformed
 *   -EMSGSIZE   over a limit
 * and never one code for both "need more" and "bad".
 */
#ifndef BOXD_CODEC_H
#define BOXD_CODEC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BOX_PROTOCOL_VERSION 1
#define BOX_FRAME_HDR 4u
/* Deepest nesting a message may have; a deeper body is malformed. */
#define BOX_MAX_DEPTH 32u

/* Decodes the frame header at buf[0..len). On 0 stores the body length in *body_len.
 * Returns -EAGAIN when len < 4, -EMSGSIZE when the body would exceed max, -EBADMSG for an empty
 * body. Nothing is allocated. */
int frame_header_decode(const uint8_t *buf, size_t len, uint32_t max, uint32_t *body_len);

/* Writes the 4-byte big-endian header for a body of len bytes. */
void frame_header_encode(uint8_t out[BOX_FRAME_HDR], uint32_t len);

/* Walks one msgpack value at buf[0..len) without allocating. Checks that it is complete, that
 * nesting stays within max_depth and that every container's element count can be backed by the
 * remaining bytes (so a 5-byte "array of 4 billion" is refused before msgpack-c would allocate
 * for it). On 0 stores the encoded size in *used. Returns -EAGAIN if the value is truncated,
 * -EBADMSG if it is invalid (reserved byte 0xc1, depth, impossible count). */
int msg_validate(const uint8_t *buf, size_t len, unsigned max_depth, size_t *used);

/* Parses a frame body into *out, allocating from zone (which the caller owns and destroys).
 * The body must be exactly one msgpack map whose keys are all str. Returns 0, -EBADMSG, or
 * -ENOMEM. The validation above runs first, so allocation is bounded by a small multiple of len. */
int msg_parse(const uint8_t *body, size_t len, msgpack_zone *zone, msgpack_object *out);

/* Lookup in a parsed map. Returns NULL when key is absent (or out is not a map). */
const msgpack_object *msg_get(const msgpack_object *map, const char *key);

/* Typed getters: 0 found and of the right type, -ENOENT absent (or nil), -EINVAL wrong type or
 * out of range. Strings are not NUL-terminated: use the returned length. */
int msg_get_str(const msgpack_object *map, const char *key, const char **s, size_t *len);
/* Accepts str or bin. */
int msg_get_bytes(const msgpack_object *map, const char *key, const char **s, size_t *len);
int msg_get_u64(const msgpack_object *map, const char *key, uint64_t *v);
int msg_get_i64(const msgpack_object *map, const char *key, int64_t *v);
int msg_get_bool(const msgpack_object *map, const char *key, bool *v);

/* True when s[0..len) is valid UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). */
bool utf8_valid(const uint8_t *s, size_t len);

/* ---- Encoding --------------------------------------------------------------------------------
 * struct msg_out builds one frame: msg_out_init reserves the header, the msgpack_packer `pk`
 * appends the body, msg_out_finish fills in the length. The buffer is heap memory owned by the
 * msg_out until msg_out_steal hands it to the caller (to be released with free()). */
#define MSG_MAX_OPEN 8
struct msg_out {
    msgpack_sbuffer sb;
    msgpack_packer pk;
    bool failed; /* an allocation failed (or maps were misnested); finish returns -ENOMEM */
    unsigned depth;                 /* maps opened with msg_map_open and not yet closed */
    size_t open_at[MSG_MAX_OPEN];   /* where each open map's header is */
    uint32_t open_n[MSG_MAX_OPEN];  /* keys written into it so far */
};

int msg_out_init(struct msg_out *o, size_t initial);
/* Fills in the frame length. Returns 0, -ENOMEM (an append failed), -EMSGSIZE (body > 4 GiB). */
int msg_out_finish(struct msg_out *o);
/* Takes the finished frame: *len bytes at the returned pointer, owned by the caller. */
char *msg_out_steal(struct msg_out *o, size_t *len);
void msg_out_destroy(struct msg_out *o);
/* Bytes written so far, header included. */
size_t msg_out_size(const struct msg_out *o);

/* Packer helpers; each records failure in o->failed instead of returning it. */
void msg_key(struct msg_out *o, const char *key);
void msg_str(struct msg_out *o, const char *s);
void msg_strn(struct msg_out *o, const char *s, size_t n);
/* Packs as str when the bytes are valid UTF-8, else as bin: no byte is lost. */
void msg_data(struct msg_out *o, const char *s, size_t n);
/* The same, when the caller already knows whether the bytes are valid UTF-8. */
void msg_data_known(struct msg_out *o, const char *s, size_t n, bool utf8);
/* A bin value filled in place (a socket read straight into the frame): msg_bin_reserve makes
 * room for a bin 32 header and max bytes and returns where the bytes go (NULL: no memory, o
 * failed); msg_bin_commit(o, n) then writes the header for the n <= max bytes put there. Nothing
 * may be packed in between. */
char *msg_bin_reserve(struct msg_out *o, size_t max);
void msg_bin_commit(struct msg_out *o, size_t n);
/* One output record as an `output` event's `lines` holds it (PROTOCOL.md): the array
 * [seq, ts_ns, stream, data], data as msg_data_known packs it. The same bytes as msg_array(4),
 * three msg_u64 and msg_data_known, written with one capacity check instead of six packer
 * calls: streaming packs one per line. */
void msg_line(struct msg_out *o, uint64_t seq, uint64_t ts_ns, uint64_t stream, const char *data,
              size_t n, bool utf8);
void msg_kv_str(struct msg_out *o, const char *key, const char *s);
void msg_kv_i64(struct msg_out *o, const char *key, int64_t v);
void msg_kv_u64(struct msg_out *o, const char *key, uint64_t v);
void msg_kv_bool(struct msg_out *o, const char *key, bool v);
void msg_kv_nil(struct msg_out *o, const char *key);
/* Copies a parsed object (e.g. a request's `req`) into the output. */
void msg_obj(struct msg_out *o, const msgpack_object *obj);
void msg_map(struct msg_out *o, uint32_t n);
void msg_array(struct msg_out *o, uint32_t n);
void msg_i64(struct msg_out *o, int64_t v);
void msg_u64(struct msg_out *o, uint64_t v);
/* Maps whose size is counted as they are written: msg_map_open writes a map32 header with a
 * placeholder count; every msg_key (and msg_kv_*) adds one to the innermost open map; and
 * msg_map_close patches the count in. This keeps encoders free of hand-counted field totals. */
void msg_map_open(struct msg_out *o);
void msg_map_close(struct msg_out *o);
/* Arrays whose length is known only at the end: open returns the header's offset, close
 * patches in the element count the caller kept. */
size_t msg_array_open(struct msg_out *o);
void msg_array_close(struct msg_out *o, size_t at, uint32_t n);
/* Appends n bytes that are already one encoded msgpack value (e.g. a saved `req`). */
void msg_raw(struct msg_out *o, const void *bytes, size_t n);

#endif
