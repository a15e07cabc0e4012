/* Unit tests of the one PATH search (agent/pathwalk.c), used by the spawn and by code runs'
 * interpreter look-up: order, empty entries, a candidate too long for the buffer. */
#include <string.h>

#include "../unit/unit.h"
#include "pathwalk.h"

static void test_order_and_empty_entries(void)
{
    struct path_walk w;
    char buf[64];
    path_walk_begin(&w, "/usr/bin::rel:/bin:");
    const char *want[] = {"/usr/bin/ls", "ls", "rel/ls", "/bin/ls", "ls"};
    for (size_t i = 0; i < 5; i++) {
        CHECK(path_walk_next(&w, "ls", buf, sizeof buf));
        if (strcmp(buf, want[i]) != 0)
            UNIT_FAIL("candidate %zu: %s, want %s", i, buf, want[i]);
    }
    CHECK(!path_walk_next(&w, "ls", buf, sizeof buf));
    path_walk_begin(&w, NULL); /* one empty entry */
    CHECK(path_walk_next(&w, "x", buf, sizeof buf) && strcmp(buf, "x") == 0);
    CHECK(!path_walk_next(&w, "x", buf, sizeof buf));
}

static void test_too_long_is_skipped(void)
{
    struct path_walk w;
    char buf[12];
    path_walk_begin(&w, "/a/very/long/dir:/b");
    CHECK(path_walk_next(&w, "prog", buf, sizeof buf));
    CHECK(strcmp(buf, "/b/prog") == 0);
    CHECK(!path_walk_next(&w, "prog", buf, sizeof buf));
    path_walk_begin(&w, "/abcdef");
    CHECK(path_walk_next(&w, "pro", buf, sizeof buf)); /* "/abcdef/pro" + NUL: 12 bytes fit */
    path_walk_begin(&w, "/abcdef");
    CHECK(!path_walk_next(&w, "prog", buf, sizeof buf)); /* 13 bytes do not */
}

int main(int argc, char **argv)
{
    static const struct unit_test tests[] = {
        UNIT_TEST(test_order_and_empty_entries),
        UNIT_TEST(test_too_long_is_skipped),
    };
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
