/* The language table's parser (PROTOCOL.md 4.8, packaging/languages.conf): one table text or
 * file in, entries out. Pure but for its log lines: no loop, no process, so
 * tests/agent/test_code_table.c drives it directly. code.c loads the built-in table and the
 * overrides through it; code_snippet.c reads the chosen entry.
 *
 * Ownership: the entries belong to the struct code_langs they were loaded into, until
 * code_langs_free. */
#ifndef BOXD_CODE_TABLE_H
#define BOXD_CODE_TABLE_H

#include <stdbool.h>
#include <stddef.h>

#include "code.h"

#define CODE_MAX_LINE 2048u             /* one table line; longer ones are skipped */
#define CODE_MAX_TABLE_FILE (256u * 1024u) /* a table file; larger ones are not read */
#define CODE_MAX_ARGS 8u                /* version= and probe= arguments */

struct code_lang {
    char *buf; /* the line, cut into the strings below */
    const char *name;
    char *aliases[CODE_MAX_ALIASES];
    unsigned n_aliases;
    const char *file;
    char *env[CODE_MAX_ENV];
    unsigned n_env;
    char *cmd[CODE_MAX_WORDS];
    unsigned n_cmd;
    char *version[CODE_MAX_ARGS];
    unsigned n_version;
    bool no_version;
    char *probe[CODE_MAX_ARGS];
    unsigned n_probe;
    bool off; /* `NAME off`: only while loading */
};

/* The entries, in the order a request's lookups see them. */
struct code_langs {
    struct code_lang *langs[CODE_MAX_LANGS];
    unsigned n;
};

/* Adds the entries of one table text (len bytes, not NUL-terminated) to t: every name it
 * mentions replaces the earlier entries of that name, and `NAME off` removes it. A bad line is
 * logged with src and its number and skipped, never fatal. */
void code_langs_load_text(struct code_langs *t, const char *text, size_t len, const char *src);
/* The same for a table file (absent is not an error; one that is not a regular file of at most
 * CODE_MAX_TABLE_FILE bytes is logged and skipped). */
void code_langs_load_file(struct code_langs *t, const char *path);
/* Frees every entry of t. */
void code_langs_free(struct code_langs *t);
/* Whether name a is b (blen bytes), in any case. */
bool code_same_name(const char *a, const char *b, size_t blen);

#endif
