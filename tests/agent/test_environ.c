/* Unit tests of a run's environment (agent/environ.c): the clean base, the request's variables
 * over it (a later one of the same key wins), and nothing of the agent's own environment. */
#include <stdlib.h>
#include <string.h>

#include "../unit/unit.h"
#include "environ.h"

static struct identity id(void)
{
    struct identity i;
    memset(&i, 0, sizeof i);
    snprintf(i.home, sizeof i.home, "/home/alice");
    snprintf(i.user, sizeof i.user, "alice");
    return i;
}

static size_t count(char *const *envp)
{
    size_t n = 0;
    while (envp[n])
        n++;
    return n;
}

static void test_base_only(void)
{
    setenv("BOXD_TEST_SECRET", "x", 1); /* the agent's own: never in a run's */
    char *envp[ENVIRON_BASE_MAX + 1];
    struct environ_build b;
    struct identity i = id();
    environ_begin(&b, envp, ENVIRON_BASE_MAX);
    environ_finish(&b, &i, "/work");
    CHECK_EQ(count(envp), 7);
    CHECK(strcmp(environ_get(envp, "PATH"), ENVIRON_PATH) == 0);
    CHECK(strcmp(environ_get(envp, "HOME"), "/home/alice") == 0);
    CHECK(strcmp(environ_get(envp, "USER"), "alice") == 0);
    CHECK(strcmp(environ_get(envp, "LOGNAME"), "alice") == 0);
    CHECK(strcmp(environ_get(envp, "SHELL"), "/bin/sh") == 0);
    CHECK(strcmp(environ_get(envp, "LANG"), "C.UTF-8") == 0);
    CHECK(strcmp(environ_get(envp, "PWD"), "/work") == 0);
    CHECK(environ_get(envp, "BOXD_TEST_SECRET") == NULL);
    CHECK(environ_get(envp, "PAT") == NULL); /* a prefix of a key is not the key */
}

static void test_request_overrides_base_and_itself(void)
{
    char *envp[ENVIRON_BASE_MAX + 4];
    struct environ_build b;
    struct identity i = id();
    environ_begin(&b, envp, ENVIRON_BASE_MAX + 3);
    char lang[] = "PYTHONUNBUFFERED=1", path[] = "PATH=/opt/bin", home[] = "HOME=/srv",
         again[] = "PATH=/x", pathx[] = "PATHX=1";
    environ_set(&b, lang, 16);  /* what a language entry sets */
    environ_set(&b, path, 4);   /* the request's own, over the base */
    environ_set(&b, home, 4);
    environ_set(&b, pathx, 5);  /* PATHX is not PATH */
    environ_set(&b, again, 4);  /* a later PATH wins */
    environ_finish(&b, &i, "/srv");
    CHECK(strcmp(environ_get(envp, "PATH"), "/x") == 0);
    CHECK(strcmp(environ_get(envp, "PATHX"), "1") == 0);
    CHECK(strcmp(environ_get(envp, "HOME"), "/srv") == 0);
    CHECK(strcmp(environ_get(envp, "PYTHONUNBUFFERED"), "1") == 0);
    CHECK(strcmp(environ_get(envp, "USER"), "alice") == 0);
    CHECK_EQ(count(envp), 4 + 5); /* 4 set (PATH twice counts once) + USER LOGNAME SHELL LANG PWD */
}

static void test_full_block_drops_the_rest(void)
{
    char *envp[3];
    struct environ_build b;
    struct identity i = id();
    environ_begin(&b, envp, 2);
    char a[] = "A=1";
    environ_set(&b, a, 1);
    environ_finish(&b, &i, "/");
    CHECK_EQ(count(envp), 2); /* never past cap */
    CHECK(strcmp(envp[0], "A=1") == 0);
    CHECK(strncmp(envp[1], "PATH=", 5) == 0);
}

static void test_default_cwd(void)
{
    struct identity i = id();
    snprintf(i.home, sizeof i.home, "/nonexistent-boxd-test");
    CHECK(strcmp(environ_default_cwd(&i), "/") == 0);
    snprintf(i.home, sizeof i.home, "/tmp");
    CHECK(strcmp(environ_default_cwd(&i), "/tmp") == 0);
}

int main(int argc, char **argv)
{
    static const struct unit_test tests[] = {
        UNIT_TEST(test_base_only),
        UNIT_TEST(test_request_overrides_base_and_itself),
        UNIT_TEST(test_full_block_drops_the_rest),
        UNIT_TEST(test_default_cwd),
    };
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
