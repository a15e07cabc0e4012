/* The language table's parser (code_table.h): a table's lines into entries. */
#include "code_table.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"
#include "log.h"

/* ---- Parsing ---------------------------------------------------------------------------------- */

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CODE_LANG_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("+-._", s[i]))
            return false;
    return true;
}

static bool file_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= 128 && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/* Splits s at commas into out (at most max). Returns the count, or -1 when there are too many
 * or one is empty. */
static int split_commas(char *s, char **out, unsigned max)
{
    unsigned n = 0;
    for (;;) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = '\0';
        if (*s == '\0' || n == max)
            return -1;
        out[n++] = s;
        if (comma == NULL)
            return (int)n;
        s = comma + 1;
    }
}

static void lang_free(struct code_lang *l)
{
    if (l) {
        free(l->buf);
        free(l);
    }
}

/* Parses one line (without its newline). Returns the entry, NULL for a blank or comment line,
 * or NULL with *bad set (and a warning logged) for a malformed one. */
static struct code_lang *parse_line(const char *line, size_t len, const char *src, unsigned lno,
                                    bool *bad)
{
    *bad = false;
    size_t i = 0;
    while (i < len && (line[i] == ' ' || line[i] == '\t'))
        i++;
    if (i == len || line[i] == '#')
        return NULL;
    const char *why = "out of memory";
    struct code_lang *l = calloc(1, sizeof *l);
    if (l == NULL || (l->buf = malloc(len + 1)) == NULL)
        goto fail;
    memcpy(l->buf, line, len);
    l->buf[len] = '\0';

    char *words[CODE_MAX_WORDS + 32];
    unsigned nw = 0;
    why = "too many words";
    for (char *s = l->buf;;) {
        while (*s == ' ' || *s == '\t' || *s == '\r')
            *s++ = '\0';
        if (*s == '\0')
            break;
        if (nw == sizeof words / sizeof words[0])
            goto fail;
        words[nw++] = s;
        while (*s && *s != ' ' && *s != '\t' && *s != '\r')
            s++;
    }
    why = "a language name is 1-32 letters, digits and + - . _";
    if (!name_ok(words[0]))
        goto fail;
    l->name = words[0];
    l->file = "main";
    if (nw == 2 && strcmp(words[1], "off") == 0) {
        l->off = true;
        return l;
    }
    unsigned w = 1;
    for (; w < nw; w++) {
        char *k = words[w], *eq = strchr(k, '=');
        if (eq == NULL) {
            why = "expected KEY=VALUE";
            goto fail;
        }
        *eq = '\0';
        char *v = eq + 1;
        if (strcmp(k, "cmd") == 0) {
            why = "cmd= needs a program";
            if (*v == '\0')
                goto fail;
            why = "too many command words";
            if (nw - w > CODE_MAX_WORDS)
                goto fail;
            l->cmd[l->n_cmd++] = v;
            for (w++; w < nw; w++)
                l->cmd[l->n_cmd++] = words[w];
            break;
        } else if (strcmp(k, "aliases") == 0) {
            int n = split_commas(v, l->aliases, CODE_MAX_ALIASES);
            why = "aliases= needs 1-8 names";
            if (n < 0)
                goto fail;
            l->n_aliases = (unsigned)n;
            for (unsigned j = 0; j < l->n_aliases; j++)
                if (!name_ok(l->aliases[j]))
                    goto fail;
        } else if (strcmp(k, "file") == 0) {
            why = "file= needs a plain file name";
            if (!file_ok(v))
                goto fail;
            l->file = v;
        } else if (strcmp(k, "env") == 0) {
            why = "env= needs K=V with a non-empty K (at most 8)";
            char *e = strchr(v, '=');
            if (e == NULL || e == v || l->n_env == CODE_MAX_ENV)
                goto fail;
            l->env[l->n_env++] = v;
        } else if (strcmp(k, "version") == 0) {
            if (strcmp(v, "-") == 0 || *v == '\0') {
                l->no_version = true;
                continue;
            }
            int n = split_commas(v, l->version, CODE_MAX_ARGS);
            why = "version= needs 1-8 arguments";
            if (n < 0)
                goto fail;
            l->n_version = (unsigned)n;
        } else if (strcmp(k, "probe") == 0) {
            int n = split_commas(v, l->probe, CODE_MAX_ARGS);
            why = "probe= needs 1-8 arguments";
            if (n < 0)
                goto fail;
            l->n_probe = (unsigned)n;
        } else {
            /* Unknown keys are skipped, so a table written for a newer boxd still loads. */
            log_warn("%s:%u: unknown key '%s' ignored", src, lno, k);
        }
    }
    why = "no cmd=";
    if (l->n_cmd == 0)
        goto fail;
    if (l->n_version == 0 && !l->no_version) {
        static char dflt[] = "--version";
        l->version[l->n_version++] = dflt;
    }
    return l;
fail:
    log_warn("%s:%u: %s; line skipped", src, lno, why);
    lang_free(l);
    *bad = true;
    return NULL;
}

bool code_same_name(const char *a, const char *b, size_t blen)
{
    return strlen(a) == blen && strncasecmp(a, b, blen) == 0;
}

/* Adds the entries of one table text to t: every name it mentions replaces the earlier
 * entries of that name. */
void code_langs_load_text(struct code_langs *t, const char *text, size_t len, const char *src)
{
    struct code_lang *nl[CODE_MAX_LANGS];
    unsigned n = 0, lno = 0, bad_lines = 0;
    size_t at = 0;
    while (at < len) {
        const char *eol = memchr(text + at, '\n', len - at);
        size_t ll = eol ? (size_t)(eol - (text + at)) : len - at;
        lno++;
        if (ll > CODE_MAX_LINE) {
            log_warn("%s:%u: line longer than %u bytes skipped", src, lno, CODE_MAX_LINE);
            bad_lines++;
        } else {
            bool bad;
            struct code_lang *l = parse_line(text + at, ll, src, lno, &bad);
            bad_lines += bad;
            if (l && n == CODE_MAX_LANGS) {
                log_warn("%s:%u: more than %u entries; the rest is skipped", src, lno,
                         CODE_MAX_LANGS);
                lang_free(l);
                break;
            }
            if (l)
                nl[n++] = l;
        }
        at += ll + 1;
    }
    /* Drop the earlier entries this text names. */
    unsigned kept = 0;
    for (unsigned i = 0; i < t->n; i++) {
        bool replaced = false;
        for (unsigned j = 0; j < n && !replaced; j++)
            replaced = code_same_name(t->langs[i]->name, nl[j]->name, strlen(nl[j]->name));
        if (replaced)
            lang_free(t->langs[i]);
        else
            t->langs[kept++] = t->langs[i];
    }
    t->n = kept;
    for (unsigned j = 0; j < n; j++) {
        if (nl[j]->off || t->n == CODE_MAX_LANGS)
            lang_free(nl[j]);
        else
            t->langs[t->n++] = nl[j];
    }
    log_info("languages: %s loaded (%u entries, %u bad lines)", src, n, bad_lines);
}

/* Reads a table file (absent is not an error) and adds it. */
void code_langs_load_file(struct code_langs *t, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno != ENOENT)
            log_warn("languages: cannot open %s: %s", path, strerror(errno));
        return;
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > (off_t)CODE_MAX_TABLE_FILE) {
        log_warn("languages: %s is not a regular file of at most %u bytes", path,
                 CODE_MAX_TABLE_FILE);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL)
        goto out;
    ssize_t got = box_read_fd(fd, buf, (size_t)st.st_size + 1);
    if (got < 0) {
        log_warn("languages: cannot read %s: %s", path, strerror((int)-got));
        goto out;
    }
    code_langs_load_text(t, buf, (size_t)got, path);
out:
    free(buf);
    close(fd);
}

void code_langs_free(struct code_langs *t)
{
    for (unsigned i = 0; i < t->n; i++)
        lang_free(t->langs[i]);
    t->n = 0;
}
