/* agent/files/sha256.c against the FIPS 180-2 appendix B vectors (one block, two blocks, one
 * million 'a'), the empty message, and the padding edges (55, 56, 63, 64 bytes: where the
 * length no longer fits the last block). Every vector is also hashed in uneven pieces, so the
 * buffering of partial blocks across sha256_update calls is checked against the one-call digest. */
#include "unit.h"

#include "sha256.h"

static void digest_hex(const void *data, size_t n, char out[65])
{
    struct sha256 s;
    uint8_t d[32];
    sha256_init(&s);
    sha256_update(&s, data, n);
    sha256_final(&s, d);
    sha256_hex(d, out);
}

/* The same message fed in pieces of 1, 2, 3, ... step bytes, cycling. */
static void digest_hex_pieces(const uint8_t *data, size_t n, size_t step, char out[65])
{
    struct sha256 s;
    uint8_t d[32];
    sha256_init(&s);
    size_t off = 0, k = 1;
    while (off < n) {
        size_t len = k < n - off ? k : n - off;
        sha256_update(&s, data + off, len);
        off += len;
        k = k % step + 1;
    }
    sha256_final(&s, d);
    sha256_hex(d, out);
}

#define CHECK_HEX(got, want)                                                                       \
    do {                                                                                           \
        if (strcmp((got), (want)) != 0)                                                            \
            UNIT_FAIL("digest %s, want %s", (got), (want));                                       \
    } while (0)

static void test_fips_abc(void)
{
    char h[65];
    digest_hex("abc", 3, h);
    CHECK_HEX(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_fips_two_blocks(void)
{
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    const char *want = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
    char h[65];
    digest_hex(m, strlen(m), h);
    CHECK_HEX(h, want);
    for (size_t step = 1; step <= 64; step++) {
        digest_hex_pieces((const uint8_t *)m, strlen(m), step, h);
        CHECK_HEX(h, want);
    }
}

static void test_fips_million_a(void)
{
    const char *want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    size_t n = 1000000;
    uint8_t *m = malloc(n);
    CHECK(m != NULL);
    memset(m, 'a', n);
    char h[65];
    digest_hex(m, n, h);
    CHECK_HEX(h, want);
    /* Uneven pieces, and 1000 updates of 1000 bytes (block-unaligned each time). */
    digest_hex_pieces(m, n, 97, h);
    CHECK_HEX(h, want);
    struct sha256 s;
    uint8_t d[32];
    sha256_init(&s);
    for (int i = 0; i < 1000; i++)
        sha256_update(&s, m, 1000);
    sha256_final(&s, d);
    sha256_hex(d, h);
    CHECK_HEX(h, want);
    free(m);
}

static void test_empty(void)
{
    char h[65];
    digest_hex("", 0, h);
    CHECK_HEX(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    /* Zero-length updates change nothing. */
    struct sha256 s;
    uint8_t d[32];
    sha256_init(&s);
    sha256_update(&s, "", 0);
    sha256_update(&s, "abc", 3);
    sha256_update(&s, "", 0);
    sha256_final(&s, d);
    sha256_hex(d, h);
    CHECK_HEX(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/* Messages of 'a' at the padding edges; digests from sha256sum (coreutils). */
static void test_padding_edges(void)
{
    static const struct {
        size_t n;
        const char *want;
    } v[] = {
        {55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318"},
        {56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a"},
        {63, "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34"},
        {64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"},
        {65, "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0"},
    };
    uint8_t m[65];
    memset(m, 'a', sizeof m);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char h[65];
        digest_hex(m, v[i].n, h);
        CHECK_HEX(h, v[i].want);
        digest_hex_pieces(m, v[i].n, 7, h);
        CHECK_HEX(h, v[i].want);
    }
}

static void test_hex_format(void)
{
    uint8_t d[32];
    for (int i = 0; i < 32; i++)
        d[i] = (uint8_t)(i * 8 + 7);
    char h[65];
    memset(h, 'x', sizeof h);
    sha256_hex(d, h);
    CHECK_EQ(h[64], '\0');
    CHECK_HEX(h, "070f171f272f373f474f575f676f777f878f979fa7afb7bfc7cfd7dfe7eff7ff");
}

static const struct unit_test tests[] = {
    UNIT_TEST(test_fips_abc),       UNIT_TEST(test_fips_two_blocks), UNIT_TEST(test_fips_million_a),
    UNIT_TEST(test_empty),          UNIT_TEST(test_padding_edges),   UNIT_TEST(test_hex_format),
};

int main(int argc, char **argv)
{
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
