/* agent/passwd.c: /etc/passwd and /etc/group parsed without NSS (what boxd-static relies on). */
#include <stdlib.h>
#include <string.h>

#include "../unit/unit.h"
#include "passwd.h"

static char dir[] = "/tmp/boxd-passwd-XXXXXX";

static const char *write_file(const char *name, const char *text)
{
    static char path[2][256];
    static int which;
    char *p = path[which++ % 2];
    snprintf(p, 256, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    CHECK(f != NULL);
    CHECK(fputs(text, f) >= 0);
    CHECK(fclose(f) == 0);
    return p;
}

static void cleanup(void)
{
    char p[300];
    snprintf(p, sizeof p, "%s/passwd", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/group", dir);
    unlink(p);
    rmdir(dir);
}

/* Each test runs in a child process of its own: a fresh directory each, removed when the test
 * fails (exit) or ends (each test calls cleanup last; the harness leaves with _exit). */
static void setup(void)
{
    CHECK(mkdtemp(dir) != NULL);
    atexit(cleanup);
}

static const char PASSWD[] =
    "root:x:0:0:root:/root:/bin/bash\n"
    "# a comment line\n"
    "\n"
    "broken line without fields\n"
    "badid:x:12a:1:bad:/x:/bin/sh\n"
    "huge:x:4294967295:1:(uid_t)-1 is never a user:/x:/bin/sh\n"
    "+nisuser::::::\n"
    "box:x:1000:1000:Box User,,,:/home/box:/bin/sh\n"
    "nohome:x:1001:1001:::/bin/sh\n"
    "last:x:1002:1002:no newline at the end:/home/last:/bin/sh";

static void test_find_by_name_and_uid(void)
{
    setup();
    const char *p = write_file("passwd", PASSWD);
    struct passwd_entry e;
    CHECK(passwd_find(p, "box", 0, &e) == 0);
    CHECK(e.uid == 1000 && e.gid == 1000);
    CHECK(strcmp(e.name, "box") == 0 && strcmp(e.home, "/home/box") == 0);
    CHECK(strcmp(e.shell, "/bin/sh") == 0); /* a tty run's login shell (PROTOCOL.md 4.9) */
    CHECK(passwd_find(p, NULL, 0, &e) == 0 && strcmp(e.name, "root") == 0);
    CHECK(passwd_find(p, NULL, 1000, &e) == 0 && strcmp(e.name, "box") == 0);
    CHECK(passwd_find(p, "last", 0, &e) == 0 && e.uid == 1002);
    CHECK(passwd_find(p, "nohome", 0, &e) == 0 && e.home[0] == '\0');
    cleanup();
}

static void test_bad_lines_are_skipped_not_matched(void)
{
    setup();
    const char *p = write_file("passwd", PASSWD);
    struct passwd_entry e;
    CHECK(passwd_find(p, "badid", 0, &e) == -ENOENT);
    CHECK(passwd_find(p, "huge", 0, &e) == -ENOENT);
    CHECK(passwd_find(p, "+nisuser", 0, &e) == -ENOENT);
    CHECK(passwd_find(p, "broken line without fields", 0, &e) == -ENOENT);
    CHECK(passwd_find(p, "nobody", 0, &e) == -ENOENT);
    CHECK(passwd_find(p, "", 0, &e) == -ENOENT);
    /* A prefix of a name is not the name. */
    CHECK(passwd_find(p, "bo", 0, &e) == -ENOENT);
    CHECK(passwd_find("/nonexistent/passwd", "box", 0, &e) == -ENOENT);
    cleanup();
}

static void test_overlong_line_skipped_rest_still_read(void)
{
    setup();
    size_t n = PASSWD_LINE_MAX + 1; /* one byte over */
    char *text = malloc(n + 128);
    CHECK(text != NULL);
    memcpy(text, "long:x:5:5:", 11);
    memset(text + 11, 'g', n - 11);
    strcpy(text + n, ":/h:/bin/sh\nafter:x:7:7::/home/after:/bin/sh\n");
    const char *p = write_file("passwd", text);
    free(text);
    struct passwd_entry e;
    CHECK(passwd_find(p, "long", 0, &e) == -ENOENT);
    CHECK(passwd_find(p, "after", 0, &e) == 0 && e.uid == 7);
    cleanup();
}

static void test_name_or_home_too_long_is_an_error(void)
{
    setup();
    char text[1024];
    char home[400];
    memset(home, 'h', sizeof home - 1);
    home[sizeof home - 1] = '\0';
    snprintf(text, sizeof text, "deep:x:9:9::/%s:/bin/sh\n", home);
    const char *p = write_file("passwd", text);
    struct passwd_entry e;
    CHECK(passwd_find(p, "deep", 0, &e) == -ENAMETOOLONG);
    cleanup();
}

static void test_groups_primary_first_each_once(void)
{
    setup();
    const char *g = write_file("group",
                               "root:x:0:\n"
                               "box:x:1000:\n"
                               "sudo:x:27:alice,box\n"
                               "boxer:x:30:boxer\n"   /* a longer name containing "box" */
                               "again:x:1000:box\n"   /* the primary gid again */
                               "bad:x:nope:box\n"
                               "dup:x:27:box\n"       /* a gid already taken */
                               "last:x:40:alice,box");
    gid_t gs[8];
    int n = passwd_user_groups(g, "box", 1000, gs, 8);
    CHECK(n == 3);
    CHECK(gs[0] == 1000 && gs[1] == 27 && gs[2] == 40);
    /* Bounded by max. */
    CHECK(passwd_user_groups(g, "box", 1000, gs, 2) == 2);
    /* No file: the primary group only. */
    CHECK(passwd_user_groups("/nonexistent/group", "box", 5, gs, 8) == 1 && gs[0] == 5);
    CHECK(passwd_user_groups(g, "nobody", 65534, gs, 8) == 1);
    cleanup();
}

static void test_a_group_line_with_many_members(void)
{
    setup();
    /* 3000 members (about 30 KB on one line) before the user: still found. */
    size_t cap = 3000 * 12 + 256;
    char *text = malloc(cap);
    CHECK(text != NULL);
    size_t len = (size_t)snprintf(text, cap, "big:x:500:");
    for (int i = 0; i < 3000; i++)
        len += (size_t)snprintf(text + len, cap - len, "user%05d,", i);
    snprintf(text + len, cap - len, "box\n");
    const char *g = write_file("group", text);
    free(text);
    gid_t gs[4];
    CHECK(passwd_user_groups(g, "box", 1000, gs, 4) == 2 && gs[1] == 500);
    cleanup();
}

int main(int argc, char **argv)
{
    static const struct unit_test tests[] = {
        UNIT_TEST(test_find_by_name_and_uid),
        UNIT_TEST(test_bad_lines_are_skipped_not_matched),
        UNIT_TEST(test_overlong_line_skipped_rest_still_read),
        UNIT_TEST(test_name_or_home_too_long_is_an_error),
        UNIT_TEST(test_groups_primary_first_each_once),
        UNIT_TEST(test_a_group_line_with_many_members),
    };
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
