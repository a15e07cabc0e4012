/* Unit tests of the pure parts of a run's output path, linked with the agent's own sources:
 * the line splitter (agent/linesplit.h), the retained log's retention arithmetic (runlog.h:
 * costs, first_seq, what a follower is owed, the total across logs), the follower bridge's
 * cursor arithmetic (sub.h: where a follower starts, the gap it is owed), and the allocation
 * seam (alloc.h). No loop, no process, no socket: each runs in microseconds. */
#include <stdlib.h>
#include <string.h>

#include "../unit/unit.h"
#include "alloc.h"
#include "linesplit.h"
#include "runlog.h"
#include "sub.h"

/* ---- The line splitter ---------------------------------------------------------------------- */

struct recs {
    char text[64][80];
    size_t len[64];
    uint64_t ts[64];
    int n;
};

static void collect(void *arg, uint64_t ts, const char *d, size_t n)
{
    struct recs *r = arg;
    CHECK(r->n < 64 && n < sizeof r->text[0]);
    memcpy(r->text[r->n], d, n);
    r->text[r->n][n] = '\0';
    r->len[r->n] = n;
    r->ts[r->n] = ts;
    r->n++;
}

static void test_linesplit_lines_and_tail(void)
{
    struct recs r = {.n = 0};
    uint64_t held = 0;
    struct linesplit s;
    linesplit_init(&s, 1024, &held, collect, &r);
    linesplit_feed(&s, 1, "one\ntwo\nthr", 11);
    CHECK_EQ(r.n, 2);
    CHECK(strcmp(r.text[0], "one\n") == 0 && strcmp(r.text[1], "two\n") == 0);
    CHECK_EQ(s.len, 3);                 /* "thr" waits for the rest of its line */
    CHECK_U64(held, LINESPLIT_MIN);     /* and its buffer counts in the total */
    linesplit_feed(&s, 2, "ee\n", 3);
    CHECK_EQ(r.n, 3);
    CHECK(strcmp(r.text[2], "three\n") == 0);
    CHECK_U64(r.ts[2], 2);              /* a line is stamped when it completes */
    linesplit_feed(&s, 3, "tail", 4);
    linesplit_flush(&s, 4);             /* a pause or EOF: the tail is a record of its own */
    CHECK_EQ(r.n, 4);
    CHECK(strcmp(r.text[3], "tail") == 0);
    linesplit_flush(&s, 5);             /* nothing held: nothing emitted */
    CHECK_EQ(r.n, 4);
    linesplit_release(&s);
    CHECK_U64(held, 0);
    linesplit_release(&s);              /* idempotent */
    CHECK_U64(held, 0);
}

static void test_linesplit_cuts_long_lines_at_max_line(void)
{
    struct recs r = {.n = 0};
    uint64_t held = 0;
    struct linesplit s;
    linesplit_init(&s, 8, &held, collect, &r);
    linesplit_feed(&s, 1, "abcdefghijklmnopqrs\n", 20); /* 19 bytes and '\n', max 8 */
    CHECK_EQ(r.n, 3);
    CHECK(strcmp(r.text[0], "abcdefgh") == 0);
    CHECK(strcmp(r.text[1], "ijklmnop") == 0);
    CHECK(strcmp(r.text[2], "qrs\n") == 0);
    /* A tail that grows past max_line across reads is cut there too. */
    linesplit_feed(&s, 2, "12345", 5);
    CHECK_EQ(r.n, 3);
    linesplit_feed(&s, 3, "6789", 4);
    CHECK_EQ(r.n, 4);
    CHECK(strcmp(r.text[3], "12345678") == 0);
    CHECK_EQ(s.len, 1);
    linesplit_release(&s);
    CHECK_U64(held, 0);
}

static void test_linesplit_out_of_memory_loses_nothing(void)
{
    struct recs r = {.n = 0};
    uint64_t held = 0;
    struct linesplit s;
    linesplit_init(&s, 64, &held, collect, &r);
    alloc_fail_nth(1); /* the partial buffer cannot be made */
    linesplit_feed(&s, 1, "part", 4);
    alloc_fail_nth(0);
    CHECK_EQ(r.n, 1); /* emitted as a piece instead of kept */
    CHECK(strcmp(r.text[0], "part") == 0);
    CHECK_EQ(s.len, 0);
    CHECK_U64(held, 0);
    linesplit_release(&s);
}

/* A terminal's output (PROTOCOL.md 4.9): no line splitting; each read is a record, cut at
 * max_line, and nothing is held for a flush. */
static void test_linesplit_raw_keeps_reads_whole(void)
{
    struct recs r = {.n = 0};
    uint64_t held = 0;
    struct linesplit s;
    linesplit_init(&s, 8, &held, collect, &r);
    linesplit_set_raw(&s);
    linesplit_feed(&s, 1, "a\nb\r\n$ ", 8);
    CHECK_EQ(r.n, 1);
    CHECK(strcmp(r.text[0], "a\nb\r\n$ ") == 0); /* newlines inside, a prompt at the end */
    CHECK_EQ(s.len, 0);
    CHECK_U64(held, 0);                        /* no partial-line buffer */
    linesplit_feed(&s, 2, "0123456789abcdefXY", 18);
    CHECK_EQ(r.n, 4);                          /* max_line pieces, then the rest */
    CHECK(strcmp(r.text[1], "01234567") == 0 && strcmp(r.text[2], "89abcdef") == 0);
    CHECK(strcmp(r.text[3], "XY") == 0);
    CHECK_U64(r.ts[3], 2);
    linesplit_flush(&s, 3);                    /* nothing held: nothing emitted */
    CHECK_EQ(r.n, 4);
    linesplit_release(&s);
    CHECK_U64(held, 0);
}

/* ---- Retention arithmetic ------------------------------------------------------------------- */

static void append_n(struct runlog *l, int n, uint32_t len)
{
    char buf[512];
    memset(buf, 'x', sizeof buf);
    for (int i = 0; i < n; i++)
        CHECK_EQ(runlog_append(l, (uint64_t)i, 1, buf, len), 0);
}

static void test_runlog_costs_add_up_across_drops(void)
{
    struct runlog l;
    uint64_t total = 0;
    runlog_init(&l, 4096);
    l.total = &total;
    append_n(&l, 200, 100);
    CHECK_U64(l.next_seq, 200);
    CHECK_U64(l.end_cost, 200u * (100u + RL_REC_COST));
    CHECK(l.first_seq > 0); /* over the cap: the oldest went */
    CHECK_U64(l.dropped_records, l.first_seq);
    CHECK_U64(l.dropped_bytes, l.first_seq * 100u);
    /* Everything before first_seq costs exactly what was dropped. */
    CHECK_U64(l.first_cost, l.first_seq * (100u + RL_REC_COST));
    CHECK(l.data <= l.cap);
    CHECK_U64(total, l.bytes);
    runlog_destroy(&l);
    CHECK_U64(total, 0);
}

static void test_runlog_protect_holds_what_is_owed(void)
{
    struct runlog l;
    runlog_init(&l, 4096);
    l.protect_seq = 5; /* a follower still needs seq 5 on */
    append_n(&l, 300, 100);
    CHECK(l.first_seq <= 5);
    CHECK(l.data > l.cap); /* past the cap rather than drop what is owed */
    l.protect_seq = UINT64_MAX;
    while (runlog_drop_oldest(&l) > 0)
        ;
    CHECK(l.first_seq > 5);
    runlog_destroy(&l);
}

/* ---- The bridge's cursor -------------------------------------------------------------------- */

static void test_sub_start_clamps_and_costs(void)
{
    struct runlog l;
    runlog_init(&l, 1u << 20);
    append_n(&l, 10, 10);
    uint64_t seq, cost;
    sub_start_at(&l, 0, &seq, &cost);
    CHECK_U64(seq, 0);
    CHECK_U64(cost, 0);
    sub_start_at(&l, 4, &seq, &cost);
    CHECK_U64(seq, 4);
    CHECK_U64(cost, 4u * (10u + RL_REC_COST));
    sub_start_at(&l, 1000, &seq, &cost); /* past the end: at the end, owed nothing yet */
    CHECK_U64(seq, 10);
    CHECK_U64(cost, l.end_cost);
    uint64_t from, to;
    CHECK(!sub_gap(&l, 0, &from, &to)); /* nothing dropped */
    runlog_destroy(&l);
}

static void test_sub_gap_after_retention(void)
{
    struct runlog l;
    runlog_init(&l, 2048);
    append_n(&l, 100, 100);
    CHECK(l.first_seq > 0);
    uint64_t seq, cost, from, to;
    sub_start_at(&l, 0, &seq, &cost); /* attach from 0 after records went */
    CHECK_U64(seq, 0);
    CHECK_U64(cost, l.first_cost);    /* owed from what is retained */
    CHECK(sub_gap(&l, seq, &from, &to));
    CHECK_U64(from, 0);
    CHECK_U64(to, l.first_seq);
    CHECK(!sub_gap(&l, l.first_seq, &from, &to));
    runlog_destroy(&l);
}

/* ---- The allocation seam -------------------------------------------------------------------- */

static void test_alloc_fails_the_nth_once(void)
{
    uint64_t before = alloc_injected();
    alloc_fail_nth(3);
    void *a = boxd_malloc(8), *b = boxd_calloc(1, 8), *c = boxd_malloc(8), *d = boxd_malloc(8);
    CHECK(a != NULL && b != NULL && c == NULL && d != NULL);
    CHECK_U64(alloc_injected(), before + 1);
    free(a);
    free(b);
    free(d);
    alloc_fail_nth(0);
    CHECK((a = boxd_realloc(NULL, 8)) != NULL);
    free(a);
}

static const struct unit_test tests[] = {
    UNIT_TEST(test_linesplit_lines_and_tail),
    UNIT_TEST(test_linesplit_cuts_long_lines_at_max_line),
    UNIT_TEST(test_linesplit_out_of_memory_loses_nothing),
    UNIT_TEST(test_linesplit_raw_keeps_reads_whole),
    UNIT_TEST(test_runlog_costs_add_up_across_drops),
    UNIT_TEST(test_runlog_protect_holds_what_is_owed),
    UNIT_TEST(test_sub_start_clamps_and_costs),
    UNIT_TEST(test_sub_gap_after_retention),
    UNIT_TEST(test_alloc_fails_the_nth_once),
};

int main(int argc, char **argv)
{
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
