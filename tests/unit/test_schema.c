/* protocol/schema against PROTOCOL.md: the message types (the `#### request|reply|event` headings
 * of section 10), the error codes (section 6's table), the limit names (`hello.limits.*` and the
 * values of the `error` reply's `limit` field), each request's fields (10.2) and the fields of
 * each reply and event (10.3) are the same sets in the table and in the document, both ways.
 *
 * usage: test_schema PROTOCOL.md */
#include "schema.h"
#include "unit.h"

#include <stdbool.h>

static const char *doc_path;
static char *doc;

#define MAXN 128
struct names {
    char v[MAXN][40];
    unsigned flags[MAXN];
    unsigned n;
};

static int find(const struct names *s, const char *name)
{
    for (unsigned i = 0; i < s->n; i++)
        if (strcmp(s->v[i], name) == 0)
            return (int)i;
    return -1;
}

static void add(struct names *s, const char *p, size_t len, unsigned flag)
{
    char tmp[40];
    if (len >= sizeof tmp)
        UNIT_FAIL("name too long in PROTOCOL.md: %.*s", (int)len, p);
    memcpy(tmp, p, len);
    tmp[len] = '\0';
    int i = find(s, tmp);
    if (i < 0) {
        if (s->n == MAXN)
            UNIT_FAIL("too many names");
        i = (int)s->n++;
        memcpy(s->v[i], tmp, len + 1);
        s->flags[i] = 0;
    }
    s->flags[i] |= flag;
}

static void load(void)
{
    FILE *f = fopen(doc_path, "r");
    if (f == NULL)
        UNIT_FAIL("cannot open %s", doc_path);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    CHECK(n > 1000 && n < sizeof buf - 1);
    buf[n] = '\0';
    doc = buf;
}

/* The first cell of a table row "| `name` | ...": the name, or NULL. */
static const char *first_cell(const char *line, size_t *len)
{
    if (strncmp(line, "| `", 3) != 0)
        return NULL;
    const char *e = strchr(line + 3, '`');
    if (e == NULL)
        return NULL;
    *len = (size_t)(e - (line + 3));
    return line + 3;
}

/* Walks the document line by line, calling fn(line, heading kind, heading name, section). */
struct pos {
    char kind[16], name[40]; /* of the last #### heading; kind "" before any */
    int section;             /* the ## number */
};

static void walk(void (*fn)(const char *line, const struct pos *p, void *arg), void *arg)
{
    struct pos p = {"", "", 0};
    for (const char *l = doc; *l;) {
        const char *nl = strchr(l, '\n');
        size_t len = nl ? (size_t)(nl - l) : strlen(l);
        char line[2048];
        size_t cut = len < sizeof line - 1 ? len : sizeof line - 1;
        memcpy(line, l, cut);
        line[cut] = '\0';
        if (strncmp(line, "## ", 3) == 0) {
            p.section = atoi(line + 3);
            p.kind[0] = '\0';
        } else if (strncmp(line, "#### ", 5) == 0) {
            char k[16], nm[40];
            if (sscanf(line, "#### %15s `%39[a-z_]`", k, nm) == 2) {
                snprintf(p.kind, sizeof p.kind, "%s", k);
                snprintf(p.name, sizeof p.name, "%s", nm);
            }
        }
        fn(line, &p, arg);
        l = nl ? nl + 1 : l + len;
    }
}

static void collect_types(const char *line, const struct pos *p, void *arg)
{
    if (strncmp(line, "#### ", 5) != 0 || p->section != 10 || p->kind[0] == '\0')
        return;
    add(arg, p->name, strlen(p->name),
        strcmp(p->kind, "request") == 0 ? BOX_DIR_REQUEST : BOX_DIR_AGENT);
}

static void test_types_match_the_document(void)
{
    load();
    struct names d = {.n = 0};
    walk(collect_types, &d);
    CHECK(d.n > 10);
    for (unsigned i = 0; i < d.n; i++) {
        int t = box_type_lookup(d.v[i], strlen(d.v[i]));
        if (t < 0)
            UNIT_FAIL("PROTOCOL.md has a message `%s` that schema.h lacks", d.v[i]);
        if (box_type_dirs((enum box_type)t) != d.flags[i])
            UNIT_FAIL("`%s`: directions %u in schema.h, %u in PROTOCOL.md", d.v[i],
                      box_type_dirs((enum box_type)t), d.flags[i]);
    }
    for (int t = 0; t < BOX_T__COUNT; t++)
        if (find(&d, box_type_str((enum box_type)t)) < 0)
            UNIT_FAIL("schema.h has a message `%s` that PROTOCOL.md section 10 lacks",
                      box_type_str((enum box_type)t));
}

static void collect_errors(const char *line, const struct pos *p, void *arg)
{
    size_t len;
    const char *n = first_cell(line, &len);
    if (p->section == 6 && n)
        add(arg, n, len, 1);
}

static void test_error_codes_match_the_document(void)
{
    load();
    struct names d = {.n = 0};
    walk(collect_errors, &d);
    CHECK(d.n > 10);
    for (unsigned i = 0; i < d.n; i++)
        if (box_err_lookup(d.v[i], strlen(d.v[i])) < 0)
            UNIT_FAIL("PROTOCOL.md section 6 has an error code `%s` that schema.h lacks", d.v[i]);
    for (int e = 0; e < BOX_ERR__COUNT; e++)
        if (find(&d, box_err_str((enum box_err)e)) < 0)
            UNIT_FAIL("schema.h has an error code `%s` that PROTOCOL.md section 6 lacks",
                      box_err_str((enum box_err)e));
    CHECK(box_err_is("limit", 5, BOX_ERR_LIMIT));
    CHECK(!box_err_is("limits", 6, BOX_ERR_LIMIT));
    CHECK(box_err_lookup("nope", 4) == -1);
}

static void collect_limits(const char *line, const struct pos *p, void *arg)
{
    size_t len;
    const char *n = first_cell(line, &len);
    if (p->section != 10 || n == NULL || strcmp(p->kind, "reply") != 0)
        return;
    if (strcmp(p->name, "hello") == 0 && len > 7 && strncmp(n, "limits.", 7) == 0)
        add(arg, n + 7, len - 7, BOX_LIM_HELLO);
    if (strcmp(p->name, "error") == 0 && len == 5 && strncmp(n, "limit", 5) == 0) {
        /* The values column: "`"max_runs"`, `"max_subs"`, ...". */
        for (const char *q = strstr(line, "`\""); q; q = strstr(q, "`\"")) {
            q += 2;
            const char *e = strchr(q, '"');
            CHECK(e != NULL);
            add(arg, q, (size_t)(e - q), BOX_LIM_ERROR);
            q = e;
        }
    }
}

static void test_limit_names_match_the_document(void)
{
    load();
    struct names d = {.n = 0};
    walk(collect_limits, &d);
    CHECK(d.n > 10);
    for (unsigned i = 0; i < d.n; i++) {
        int l = box_limit_lookup(d.v[i], strlen(d.v[i]));
        if (l < 0)
            UNIT_FAIL("PROTOCOL.md names a limit `%s` that schema.h lacks", d.v[i]);
        if (box_limit_where((enum box_limit)l) != d.flags[i])
            UNIT_FAIL("limit `%s`: where %u in schema.h, %u in PROTOCOL.md", d.v[i],
                      box_limit_where((enum box_limit)l), d.flags[i]);
    }
    for (int l = 0; l < BOX_LIM__COUNT; l++)
        if (find(&d, box_limit_str((enum box_limit)l)) < 0)
            UNIT_FAIL("schema.h has a limit `%s` that PROTOCOL.md lacks",
                      box_limit_str((enum box_limit)l));
}

struct req_fields {
    struct names per[BOX_T__COUNT];
};

static void collect_fields(const char *line, const struct pos *p, void *arg)
{
    struct req_fields *rf = arg;
    size_t len;
    const char *n = first_cell(line, &len);
    if (p->section != 10 || n == NULL || strcmp(p->kind, "request") != 0)
        return;
    if (memchr(n, '[', len) || memchr(n, '.', len))
        return; /* not a top-level field */
    int t = box_type_lookup(p->name, strlen(p->name));
    if (t < 0)
        UNIT_FAIL("request `%s` is not in schema.h", p->name);
    add(&rf->per[t], n, len, 1);
}

static void test_request_fields_match_the_document(void)
{
    load();
    static struct req_fields rf;
    walk(collect_fields, &rf);
    for (int t = 0; t < BOX_T__COUNT; t++) {
        const char *tn = box_type_str((enum box_type)t);
        box_fieldset want = box_request_fields((enum box_type)t);
        if (!(box_type_dirs((enum box_type)t) & BOX_DIR_REQUEST)) {
            CHECK_EQ(want, 0);
            continue;
        }
        box_fieldset got = 0;
        for (unsigned i = 0; i < rf.per[t].n; i++) {
            int f = box_field_lookup(rf.per[t].v[i], strlen(rf.per[t].v[i]));
            if (f < 0)
                UNIT_FAIL("request `%s`: PROTOCOL.md has a field `%s` that schema.h lacks", tn,
                          rf.per[t].v[i]);
            got |= BOX_FS(f);
        }
        for (int f = 0; f < BOX_F__COUNT; f++)
            if ((want ^ got) & BOX_FS(f))
                UNIT_FAIL("request `%s`: field `%s` is in %s only", tn,
                          box_field_str((enum box_field)f),
                          (want & BOX_FS(f)) ? "schema.c" : "PROTOCOL.md");
    }
}

struct reply_fields {
    struct names per[BOX_T__COUNT];
};

/* A field of a reply or event table, at any depth, by its last key: `runs[].state` is `state`.
 * Rows for array elements (`capabilities[]`, `lines[][0]`) name no key, and the keys of `limits`
 * are limit names (test_limit_names_match_the_document). */
static void collect_reply_fields(const char *line, const struct pos *p, void *arg)
{
    struct reply_fields *rf = arg;
    size_t len;
    const char *n = first_cell(line, &len);
    if (p->section != 10 || n == NULL ||
        (strcmp(p->kind, "reply") != 0 && strcmp(p->kind, "event") != 0))
        return;
    if (n[len - 1] == ']' || (len > 7 && strncmp(n, "limits.", 7) == 0))
        return;
    const char *key = n;
    for (const char *q = n; q < n + len; q++)
        if (*q == '.' || *q == ']')
            key = q + 1;
    int t = box_type_lookup(p->name, strlen(p->name));
    if (t < 0)
        UNIT_FAIL("%s `%s` is not in schema.h", p->kind, p->name);
    add(&rf->per[t], key, (size_t)(n + len - key), 1);
}

static void test_reply_fields_match_the_document(void)
{
    load();
    static struct reply_fields rf;
    walk(collect_reply_fields, &rf);
    bool used[BOX_RF__COUNT] = {false};
    for (int t = 0; t < BOX_T__COUNT; t++) {
        const char *tn = box_type_str((enum box_type)t);
        size_t n;
        const uint8_t *want = box_reply_fields((enum box_type)t, &n);
        if (!(box_type_dirs((enum box_type)t) & BOX_DIR_AGENT)) {
            CHECK(want == NULL && n == 0);
            continue;
        }
        CHECK(want != NULL && n > 0);
        for (unsigned i = 0; i < rf.per[t].n; i++) {
            const char *d = rf.per[t].v[i];
            int f = box_rfield_lookup(d, strlen(d));
            if (f < 0)
                UNIT_FAIL("reply/event `%s`: PROTOCOL.md has a field `%s` that schema.h lacks", tn,
                          d);
            bool listed = false;
            for (size_t j = 0; j < n; j++)
                listed |= want[j] == f;
            if (!listed)
                UNIT_FAIL("reply/event `%s`: field `%s` is in PROTOCOL.md only", tn, d);
        }
        for (size_t j = 0; j < n; j++) {
            CHECK(want[j] < BOX_RF__COUNT);
            used[want[j]] = true;
            if (find(&rf.per[t], box_rfield_str((enum box_rfield)want[j])) < 0)
                UNIT_FAIL("reply/event `%s`: field `%s` is in schema.c only", tn,
                          box_rfield_str((enum box_rfield)want[j]));
        }
    }
    for (int f = 0; f < BOX_RF__COUNT; f++)
        if (!used[f])
            UNIT_FAIL("schema.h has a reply field `%s` that no message in schema.c carries",
                      box_rfield_str((enum box_rfield)f));
}

static void test_names_and_lookups_agree(void)
{
    for (int t = 0; t < BOX_T__COUNT; t++)
        CHECK_EQ(box_type_lookup(box_type_str((enum box_type)t),
                                 strlen(box_type_str((enum box_type)t))), t);
    for (int f = 0; f < BOX_F__COUNT; f++)
        CHECK_EQ(box_field_lookup(box_field_str((enum box_field)f),
                                  strlen(box_field_str((enum box_field)f))), f);
    for (int f = 0; f < BOX_RF__COUNT; f++)
        CHECK_EQ(box_rfield_lookup(box_rfield_str((enum box_rfield)f),
                                   strlen(box_rfield_str((enum box_rfield)f))), f);
    CHECK(strcmp(BOX_KEY(EXIT_CODE), "exit_code") == 0);
    CHECK(strcmp(BOX_REQ_KEY(TOKEN), "token") == 0);
    CHECK(strcmp(BOX_TYPE(END), "end") == 0);
    CHECK(strcmp(box_rfield_str(BOX_RF__COUNT), "?") == 0);
    CHECK(box_rfield_lookup("exit", 4) == -1);
    CHECK(strcmp(box_err_str(BOX_ERR__COUNT), "?") == 0);
    CHECK(strcmp(box_type_str((enum box_type)-1), "?") == 0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROTOCOL.md [TEST]\n", argv[0]);
        return 2;
    }
    doc_path = argv[1];
    static const struct unit_test tests[] = {
        UNIT_TEST(test_types_match_the_document),
        UNIT_TEST(test_error_codes_match_the_document),
        UNIT_TEST(test_limit_names_match_the_document),
        UNIT_TEST(test_request_fields_match_the_document),
        UNIT_TEST(test_reply_fields_match_the_document),
        UNIT_TEST(test_names_and_lookups_agree),
    };
    return unit_main(argc - 1, argv + 1, tests, sizeof tests / sizeof tests[0]);
}
