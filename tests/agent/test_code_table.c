/* Unit tests of the language table's parser (agent/code_table.c): entries, aliases, env,
 * version and probe arguments, overrides that replace every entry of a name, `NAME off`, and
 * the bad lines that are skipped; plus the built-in table (packaging/languages.conf) loading
 * whole. No loop, no process. */
#include <stdlib.h>
#include <string.h>

#include "../unit/unit.h"
#include "code_table.h"
#include "log.h"

static struct code_langs t;

static void load(const char *text)
{
    code_langs_load_text(&t, text, strlen(text), "test");
}

static const struct code_lang *get(unsigned i)
{
    CHECK(i < t.n);
    return t.langs[i];
}

static void test_one_entry_every_key(void)
{
    load("# a comment\n\n"
         "python aliases=py,python3 file=main.py env=A=1 env=B=2 version=-V probe=-c,0 "
         "cmd=python3 -u {file}\n");
    CHECK_EQ(t.n, 1);
    const struct code_lang *l = get(0);
    CHECK(strcmp(l->name, "python") == 0);
    CHECK_EQ(l->n_aliases, 2);
    CHECK(strcmp(l->aliases[0], "py") == 0 && strcmp(l->aliases[1], "python3") == 0);
    CHECK(strcmp(l->file, "main.py") == 0);
    CHECK_EQ(l->n_env, 2);
    CHECK(strcmp(l->env[0], "A=1") == 0 && strcmp(l->env[1], "B=2") == 0);
    CHECK_EQ(l->n_version, 1);
    CHECK(strcmp(l->version[0], "-V") == 0 && !l->no_version);
    CHECK_EQ(l->n_probe, 2);
    CHECK_EQ(l->n_cmd, 3);
    CHECK(strcmp(l->cmd[0], "python3") == 0 && strcmp(l->cmd[2], "{file}") == 0);
    code_langs_free(&t);
    CHECK_EQ(t.n, 0);
}

static void test_version_dash_and_defaults(void)
{
    load("sh version=- cmd=sh {file}\nbash cmd=bash {file}\n");
    CHECK_EQ(t.n, 2);
    CHECK(get(0)->no_version);
    CHECK(!get(1)->no_version && get(1)->n_version == 1); /* the default: --version */
    CHECK(strcmp(get(1)->version[0], "--version") == 0);
    CHECK(strcmp(get(1)->file, "main") == 0); /* the default file name */
    code_langs_free(&t);
}

static void test_bad_lines_are_skipped(void)
{
    load("no-cmd file=x\n"                    /* no cmd= */
         "bad/name cmd=x\n"                   /* a name with / */
         "x file=../up cmd=x\n"               /* a file that is not a plain name */
         "y aliases=a,,b cmd=y\n"             /* an empty alias */
         "e env==1 cmd=e\n"                  /* env= with an empty key */
         "k notkeyvalue cmd=k\n"             /* a word that is not KEY=VALUE */
         "c cmd=\n"                           /* cmd= without a program */
         "z frobnicate=1 cmd=z\n"             /* an unknown key: ignored, the entry kept */
         "good cmd=ok\n");
    CHECK_EQ(t.n, 2);
    CHECK(strcmp(get(0)->name, "z") == 0 && strcmp(get(0)->cmd[0], "z") == 0);
    CHECK(strcmp(get(1)->name, "good") == 0);
    code_langs_free(&t);
    /* A line over CODE_MAX_LINE is skipped, and the next one still read. */
    size_t n = CODE_MAX_LINE + 64;
    char *text = malloc(n + 32);
    memset(text, 'a', n);
    memcpy(text + n, "\nok cmd=ok\n", 12);
    load(text);
    free(text);
    CHECK_EQ(t.n, 1);
    CHECK(strcmp(get(0)->name, "ok") == 0);
    code_langs_free(&t);
}

static void test_override_replaces_every_entry_of_a_name(void)
{
    load("ts cmd=tsx {file}\nts cmd=deno run {file}\njs cmd=node {file}\n");
    CHECK_EQ(t.n, 3);
    load("TS cmd=bun run {file}\n"); /* names compare without case */
    CHECK_EQ(t.n, 2);
    CHECK(strcmp(get(0)->name, "js") == 0);
    CHECK(strcmp(get(1)->cmd[0], "bun") == 0);
    load("js off\n");
    CHECK_EQ(t.n, 1);
    CHECK(strcmp(get(0)->name, "TS") == 0);
    code_langs_free(&t);
}

static void test_same_name(void)
{
    CHECK(code_same_name("Python", "pYTHON", 6));
    CHECK(!code_same_name("python", "python3", 7));
    CHECK(!code_same_name("python3", "python", 6));
}

static void test_limits_on_words_and_aliases(void)
{
    char line[4096] = "many cmd=p";
    for (unsigned i = 0; i < CODE_MAX_WORDS + 1; i++)
        strcat(line, " w");
    strcat(line, "\nok cmd=ok\n");
    load(line);
    CHECK_EQ(t.n, 1); /* more than CODE_MAX_WORDS words: skipped */
    code_langs_free(&t);
    snprintf(line, sizeof line, "al aliases=a,b,c,d,e,f,g,h,i cmd=x\n");
    load(line);
    CHECK_EQ(t.n, 0); /* more than CODE_MAX_ALIASES */
}

int main(int argc, char **argv)
{
    log_set_level(LOG_ERR); /* the skipped lines are logged at warn */
    static const struct unit_test tests[] = {
        UNIT_TEST(test_one_entry_every_key),
        UNIT_TEST(test_version_dash_and_defaults),
        UNIT_TEST(test_bad_lines_are_skipped),
        UNIT_TEST(test_override_replaces_every_entry_of_a_name),
        UNIT_TEST(test_same_name),
        UNIT_TEST(test_limits_on_words_and_aliases),
    };
    return unit_main(argc, argv, tests, sizeof tests / sizeof tests[0]);
}
