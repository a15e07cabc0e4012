/* Fuzz target: the frame decoder, driven the way a connection drives it.
 *
 * The input is a byte stream from a peer. The loop decodes a header, then the body behind it,
 * then the next header, as the agent's connection does with a max frame size, and checks:
 *   - a header decodes only when all four bytes are there, never to more than the max, never to 0;
 *   - -EMSGSIZE exactly when the length is over the max (the connection is dropped there), and
 *     -EBADMSG exactly for a zero length (answered bad_request; framing stays intact);
 *   - msg_parse on a body returns 0 or -EBADMSG, and 0 only for a map with str keys;
 *   - re-encoding a parsed body with msg_obj gives a frame that parses again, and whose
 *     re-encoding is byte for byte the same (the encoder's output is canonical).
 */
#include "codec.h"
#include "fuzz.h"

#include <errno.h>
#include <string.h>

/* Small enough that the fuzzer meets the limit, large enough for every PROTOCOL.md example. */
#define FUZZ_MAX_FRAME 4096u

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Encodes obj alone as a frame. Returns the frame (caller frees) and its length in *len. */
static uint8_t *encode(const msgpack_object *obj, size_t *len)
{
    struct msg_out o;
    FUZZ_CHECK(msg_out_init(&o, 0) == 0);
    msg_obj(&o, obj);
    FUZZ_CHECK(!o.failed);
    FUZZ_CHECK(msg_out_finish(&o) == 0);
    uint8_t *frame = (uint8_t *)msg_out_steal(&o, len);
    msg_out_destroy(&o);
    FUZZ_CHECK(frame != NULL && *len > BOX_FRAME_HDR);
    return frame;
}

static void check_body(const uint8_t *data, uint32_t n)
{
    /* An exact-size copy: in the stream the next frame follows, and a read past this body's end
     * would go unnoticed there. */
    uint8_t *body = malloc(n);
    FUZZ_CHECK(body != NULL);
    memcpy(body, data, n);

    msgpack_zone zone;
    msgpack_object obj;
    FUZZ_CHECK(msgpack_zone_init(&zone, 1024));
    int r = msg_parse(body, n, &zone, &obj);
    FUZZ_CHECK(r == 0 || r == -EBADMSG);
    if (r == 0) {
        FUZZ_CHECK(obj.type == MSGPACK_OBJECT_MAP);
        for (uint32_t i = 0; i < obj.via.map.size; i++)
            FUZZ_CHECK(obj.via.map.ptr[i].key.type == MSGPACK_OBJECT_STR);

        size_t l1;
        uint8_t *f1 = encode(&obj, &l1);
        uint32_t b1 = 0;
        FUZZ_CHECK(frame_header_decode(f1, l1, UINT32_MAX, &b1) == 0);
        FUZZ_CHECK(b1 == l1 - BOX_FRAME_HDR);
        /* Canonical encodings are never longer than what they encode. */
        FUZZ_CHECK(b1 <= n);

        msgpack_zone z2;
        msgpack_object again;
        FUZZ_CHECK(msgpack_zone_init(&z2, 1024));
        FUZZ_CHECK(msg_parse(f1 + BOX_FRAME_HDR, b1, &z2, &again) == 0);
        FUZZ_CHECK(again.via.map.size == obj.via.map.size);

        size_t l2;
        uint8_t *f2 = encode(&again, &l2);
        FUZZ_CHECK(l2 == l1 && memcmp(f1, f2, l1) == 0);

        free(f2);
        msgpack_zone_destroy(&z2);
        free(f1);
    }
    msgpack_zone_destroy(&zone);
    free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        size_t avail = size - off;
        uint32_t n = 0xdeadbeef;
        int r = frame_header_decode(data + off, avail, FUZZ_MAX_FRAME, &n);
        if (avail < BOX_FRAME_HDR) {
            /* The last bytes of the stream: a header still arriving. */
            FUZZ_CHECK(r == -EAGAIN && n == 0xdeadbeef);
            break;
        }
        uint32_t raw = be32(data + off);
        if (r == -EMSGSIZE) {
            FUZZ_CHECK(raw > FUZZ_MAX_FRAME && n == 0xdeadbeef);
            break; /* too_large: the stream cannot be trusted any more */
        }
        if (r == -EBADMSG) {
            FUZZ_CHECK(raw == 0 && n == 0xdeadbeef);
            off += BOX_FRAME_HDR; /* bad_request; the next frame starts right after */
            continue;
        }
        FUZZ_CHECK(r == 0);
        FUZZ_CHECK(n == raw && n >= 1 && n <= FUZZ_MAX_FRAME);
        /* The same header with only its own four bytes, and with fewer. */
        uint32_t m = 0;
        FUZZ_CHECK(frame_header_decode(data + off, BOX_FRAME_HDR, FUZZ_MAX_FRAME, &m) == 0);
        FUZZ_CHECK(m == n);
        FUZZ_CHECK(frame_header_decode(data + off, BOX_FRAME_HDR - 1, 0, &m) == -EAGAIN);
        if (avail - BOX_FRAME_HDR < n)
            break; /* the body is still arriving */
        check_body(data + off + BOX_FRAME_HDR, n);
        off += BOX_FRAME_HDR + n;
    }
    return 0;
}
