/* Unit tests of agent parts that are pure enough to test without a daemon: the vsock accept
 * filter (no vsock connection can be made on the development machine), the hello token check,
 * and the retained log's rules (retention, what a follower is owed, cursors).
 * Linked with the agent's own sources (all but main.c). */
#include <linux/vm_sockets.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/unit.h"
#include "agent.h"
#include "auth.h"
#include "codec.h"
#include "listen.h"
#include "runlog.h"

static void test_vsock_filter_host_only_by_default(void)
{
    struct agent a;
    memset(&a, 0, sizeof a);
    config_defaults(&a.cfg);
    CHECK(listen_vsock_peer_allowed(&a, VMADDR_CID_HOST));
    CHECK(!listen_vsock_peer_allowed(&a, VMADDR_CID_LOCAL)); /* another process in the guest */
    CHECK(!listen_vsock_peer_allowed(&a, 0));                /* the hypervisor */
    CHECK(!listen_vsock_peer_allowed(&a, 3));                /* another guest */
    CHECK(!listen_vsock_peer_allowed(&a, 0xffffffffu));
}

static void test_vsock_filter_allow_cid_and_any(void)
{
    struct agent a;
    memset(&a, 0, sizeof a);
    config_defaults(&a.cfg);
    a.cfg.vsock_allow_cid = 7;
    CHECK(listen_vsock_peer_allowed(&a, 7));
    CHECK(listen_vsock_peer_allowed(&a, VMADDR_CID_HOST));
    CHECK(!listen_vsock_peer_allowed(&a, 8));
    a.cfg.vsock_any_cid = true;
    CHECK(listen_vsock_peer_allowed(&a, 8));
    CHECK(listen_vsock_peer_allowed(&a, VMADDR_CID_LOCAL));
}

/* Builds a parsed {type: hello, token: T} (token omitted when t is NULL) and checks it. */
static int hello_with(struct agent *a, const char *t, size_t n)
{
    struct msg_out o;
    CHECK(msg_out_init(&o, 64) == 0);
    msg_map_open(&o);
    msg_kv_str(&o, "type", "hello");
    if (t) {
        msg_key(&o, "token");
        msg_strn(&o, t, n);
    }
    msg_map_close(&o);
    CHECK(msg_out_finish(&o) == 0);
    size_t len;
    char *buf = msg_out_steal(&o, &len);
    msgpack_zone z;
    CHECK(msgpack_zone_init(&z, 256));
    msgpack_object m;
    CHECK(msg_parse((const uint8_t *)buf + BOX_FRAME_HDR, len - BOX_FRAME_HDR, &z, &m) == 0);
    int r = auth_check_hello(a, &m);
    msgpack_zone_destroy(&z);
    free(buf);
    return r;
}

static void test_token_check(void)
{
    struct agent a;
    memset(&a, 0, sizeof a);
    /* No token configured: anything passes. */
    CHECK_EQ(hello_with(&a, NULL, 0), 0);
    CHECK_EQ(hello_with(&a, "x", 1), 0);
    strcpy(a.auth.token, "s3cret-token");
    a.auth.token_len = strlen(a.auth.token);
    CHECK_EQ(hello_with(&a, "s3cret-token", 12), 0);
    CHECK(hello_with(&a, NULL, 0) < 0);
    CHECK(hello_with(&a, "", 0) < 0);
    CHECK(hello_with(&a, "s3cret-toke", 11) < 0);           /* a prefix */
    CHECK(hello_with(&a, "s3cret-tokenX", 13) < 0);         /* longer */
    CHECK(hello_with(&a, "S3cret-token", 12) < 0);          /* first byte */
    CHECK(hello_with(&a, "s3cret-tokeN", 12) < 0);          /* last byte */
    CHECK(hello_with(&a, "s3cret-token\0", 13) < 0);        /* a NUL appended */
}

static void append_n(struct runlog *l, int n, uint32_t len)
{
    char buf[4096];
    memset(buf, 'a', sizeof buf);
    for (int i = 0; i < n; i++)
        CHECK_EQ(runlog_append(l, (uint64_t)i, 1 + i % 2, buf, len), 0);
}

static void test_runlog_retention_counts_what_it_drops(void)
{
    struct runlog l;
    runlog_init(&l, 16384);
    append_n(&l, 2000, 100);
    CHECK_U64(l.next_seq, 2000);
    CHECK(l.data <= l.cap);
    CHECK(l.first_seq > 0);
    CHECK_U64(l.dropped_records, l.first_seq);
    CHECK_U64(l.dropped_bytes, l.first_seq * 100);
    /* What is retained is contiguous up to next_seq. */
    struct rl_cursor c;
    struct rl_rec r;
    runlog_seek(&l, 0, &c);
    uint64_t want = l.first_seq;
    while (runlog_next(&l, &c, &r)) {
        CHECK_U64(r.seq, want);
        CHECK_EQ(r.len, 100);
        CHECK_EQ(r.stream, 1 + (int)(r.seq % 2));
        want++;
    }
    CHECK_U64(want, 2000);
    runlog_destroy(&l);
}

static void test_runlog_never_drops_what_a_follower_is_owed(void)
{
    struct runlog l;
    runlog_init(&l, 16384);
    l.protect_seq = 10; /* a follower has been sent 0..9 */
    append_n(&l, 2000, 100);
    CHECK(l.first_seq <= 10);
    CHECK(l.data > l.cap); /* over the cap rather than losing owed records */
    l.protect_seq = UINT64_MAX;
    append_n(&l, 200, 100); /* the follower caught up: retention works again */
    CHECK(l.data <= l.cap);
    CHECK(l.first_seq > 10);
    runlog_destroy(&l);
}

static void test_runlog_seek_and_cost(void)
{
    struct runlog l;
    runlog_init(&l, 1u << 20);
    append_n(&l, 100, 10);
    struct rl_cursor c;
    struct rl_rec r;
    runlog_seek(&l, 42, &c);
    CHECK(runlog_next(&l, &c, &r));
    CHECK_U64(r.seq, 42);
    CHECK_U64(r.cost, 42u * (10u + RL_REC_COST));
    CHECK_U64(l.end_cost, 100u * (10u + RL_REC_COST));
    runlog_seek(&l, 1000, &c); /* past the end: nothing */
    CHECK(!runlog_next(&l, &c, &r));
    /* UTF-8 validity is decided at append. */
    CHECK_EQ(runlog_append(&l, 0, 1, "\xff\xfe", 2), 0);
    CHECK_EQ(runlog_append(&l, 0, 1, "h\xc3\xa9", 3), 0);
    runlog_seek(&l, 100, &c);
    CHECK(runlog_next(&l, &c, &r) && !r.utf8);
    CHECK(runlog_next(&l, &c, &r) && r.utf8);
    runlog_shrink(&l);
    CHECK(l.bytes > 0);
    runlog_destroy(&l);
}

/* Data bytes retained, counted by reading the log. */
static uint64_t retained_data(const struct runlog *l)
{
    struct rl_cursor c;
    struct rl_rec r;
    uint64_t n = 0;
    runlog_seek(l, 0, &c);
    while (runlog_next(l, &c, &r))
        n += r.len;
    return n;
}

/* The cap is data bytes (PROTOCOL 4.5, log_bytes), not memory: short lines, whose header and
 * padding outweigh their data, still keep about cap bytes of data. */
static void test_runlog_cap_counts_data(void)
{
    for (uint32_t len = 1; len <= 200; len = len * 3 + 1) {
        struct runlog l;
        runlog_init(&l, 65536);
        append_n(&l, 200000 / (int)len + 1000, len);
        uint64_t kept = retained_data(&l);
        CHECK(kept <= l.cap);
        CHECK(kept >= l.cap - l.cap / 4); /* within one chunk (a quarter of the cap at most) */
        CHECK_U64(kept + l.dropped_bytes, l.next_seq * len);
        CHECK_U64(l.dropped_records, l.first_seq);
        runlog_destroy(&l);
    }
}

/* The bound over many logs drops whole chunks from the head, never the last one, never what a
 * follower is owed, and counts what it drops as retention does. */
static void test_runlog_drop_oldest(void)
{
    uint64_t total = 0;
    struct runlog l;
    runlog_init(&l, 1u << 20);
    l.total = &total;
    CHECK(!runlog_can_drop(&l)); /* empty */
    CHECK_U64(runlog_drop_oldest(&l), 0);
    append_n(&l, 10, 10);
    CHECK(!runlog_can_drop(&l)); /* one chunk: the last is kept */
    append_n(&l, 5000, 10);
    CHECK_U64(total, l.bytes);
    CHECK(runlog_can_drop(&l));
    l.protect_seq = 0; /* a follower that has nothing yet */
    CHECK(!runlog_can_drop(&l));
    CHECK_U64(runlog_drop_oldest(&l), 0);
    l.protect_seq = 3000;
    uint64_t before = l.bytes, data = retained_data(&l);
    uint64_t freed = runlog_drop_oldest(&l);
    CHECK(freed > 0);
    CHECK_U64(l.bytes, before - freed);
    CHECK_U64(total, l.bytes);
    CHECK(l.first_seq > 0 && l.first_seq <= 3000);
    CHECK_U64(l.dropped_records, l.first_seq);
    CHECK_U64(l.dropped_bytes, l.first_seq * 10);
    CHECK_U64(retained_data(&l), data - l.dropped_bytes);
    CHECK_U64(l.data, retained_data(&l));
    while (runlog_drop_oldest(&l) > 0)
        ;
    CHECK(l.first_seq <= 3000); /* stopped at what is owed */
    l.protect_seq = UINT64_MAX;
    while (runlog_drop_oldest(&l) > 0)
        ;
    CHECK(!runlog_can_drop(&l));
    CHECK_U64(l.next_seq, 5010); /* the last chunk, with the last record, is still there */
    struct rl_cursor c;
    struct rl_rec r;
    runlog_seek(&l, 5009, &c);
    CHECK(runlog_next(&l, &c, &r) && r.seq == 5009);
    CHECK_U64(l.data, retained_data(&l));
    runlog_destroy(&l);
    CHECK_U64(total, 0);
}

/* A follower keeps its cursor between events (runlog_valid) instead of seeking: what it reads
 * must be what a fresh seek reads, while retention drops chunks under it (ASan sees a cursor
 * into a freed chunk), and the cursor must stop being valid exactly when its chunk goes. */
static void test_runlog_kept_cursor(void)
{
    struct runlog l;
    runlog_init(&l, 16384);
    struct rl_cursor kept;
    memset(&kept, 0, sizeof kept);
    uint64_t next = 0, valid = 0, stale = 0;
    uint32_t x = 12345;
    for (int round = 0; round < 3000; round++) {
        x = x * 1103515245u + 12345u;
        append_n(&l, 1 + (int)(x >> 16) % 7, 1 + (x >> 8) % 300);
        l.protect_seq = UINT64_MAX; /* a reader that may fall behind the retained log */
        if (next < l.first_seq)
            next = l.first_seq;
        struct rl_cursor fresh, c;
        runlog_seek(&l, next, &fresh);
        if (runlog_valid(&l, &kept, next)) {
            c = kept;
            valid++;
            /* The same place (a kept cursor may sit at the end of the chunk before). */
            struct rl_cursor c1 = c, c2 = fresh;
            struct rl_rec r1, r2;
            bool m1 = runlog_next(&l, &c1, &r1), m2 = runlog_next(&l, &c2, &r2);
            CHECK(m1 == m2);
            if (m1 && m2)
                CHECK(r1.seq == r2.seq && r1.data == r2.data && r1.cost == r2.cost);
            CHECK_U64(c.cost, fresh.cost);
        } else {
            c = fresh;
            stale++;
        }
        /* Read a few records, or to the end, and keep the position; every other stretch of
         * 100 rounds, read none, so retention overtakes the reader. */
        int want = (round / 100) % 2 ? 0 : 1 + (int)(x >> 20) % 12;
        struct rl_rec r;
        struct rl_cursor at = c;
        while (want-- > 0 && runlog_next(&l, &c, &r)) {
            CHECK_U64(r.seq, next);
            next++;
            at = c;
        }
        kept = at;
    }
    CHECK(valid > 1000); /* the point: most reads go on from the kept cursor */
    CHECK(stale > 10);   /* and retention did make some stale */
    CHECK(l.dropped_records > 0);
    /* At the end of the log, then appends into a new chunk: still valid, reads them. */
    runlog_seek(&l, l.next_seq, &kept);
    uint64_t end = l.next_seq;
    append_n(&l, 3, 100);
    CHECK(runlog_valid(&l, &kept, end));
    struct rl_rec r;
    CHECK(runlog_next(&l, &kept, &r) && r.seq == end);
    /* Shrinking may move the last chunk: every cursor is stale. */
    runlog_shrink(&l);
    CHECK(!runlog_valid(&l, &kept, end + 1));
    runlog_destroy(&l);
}

static const struct unit_test tests[] = {
    UNIT_TEST(test_vsock_filter_host_only_by_default),
    UNIT_TEST(test_vsock_filter_allow_cid_and_any),
    UNIT_TEST(test_token_check),
    UNIT_TEST(test_runlog_retention_counts_what_it_drops),
    UNIT_TEST(test_runlog_never_drops_what_a_follower_is_owed),
    UNIT_TEST(test_runlog_seek_and_cost),
    UNIT_TEST(test_runlog_kept_cursor),
    UNIT_TEST(test_runlog_cap_counts_data),
    UNIT_TEST(test_runlog_drop_oldest),
};

int main(int argc, char **argv)
{
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
