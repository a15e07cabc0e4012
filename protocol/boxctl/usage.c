/* boxctl --help, boxctl COMMAND --help and the man page, all printed from the option table
 * (options.c) and the command table (main.c). The build makes man/boxctl.1 with `boxctl --man`. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "io.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define HELP_WIDTH 78
#define OPT_COLUMN 26

static const char intro[] =
    "Talk to the boxd agent of a box: over its unix socket inside the box, or from the host\n"
    "over vsock, a Firecracker/Cloud Hypervisor hybrid vsock socket, or QEMU's virtio-serial\n"
    "socket.\n";

static const char exit_text[] =
    "Exit status: 2 for a usage error; 1 when the agent cannot be reached, the connection breaks "
    "or the agent answers with an error; exec, code, attach, wait and shell exit with the run's "
    "exit code (128+N for signal N) unless --json is given, and shell, exec -t and attach on a "
    "terminal run with 0 after a detach (Ctrl-P Ctrl-Q).";

static const char env_text[] =
    "BOXD_SOCKET: the endpoint when -s is not given. BOXD_TOKEN_FILE: a file holding the "
    "agent's token, when --token-file is not given.";

static int flush(struct sbuf *b)
{
    int r = b->nomem ? EXIT_FAIL : box_write_all(STDOUT_FILENO, b->p, b->len) < 0 ? EXIT_FAIL : 0;
    sbuf_free(b);
    return r;
}

/* Appends text word-wrapped to HELP_WIDTH, each line indented by indent; '\n' in text starts a
 * new paragraph (with a blank line when blank is set). */
static void wrap(struct sbuf *b, const char *text, size_t indent, bool blank)
{
    const char *p = text;
    while (*p != '\0') {
        const char *end = strchr(p, '\n');
        if (end == NULL)
            end = p + strlen(p);
        size_t col = 0;
        const char *w = p;
        while (w < end) {
            while (w < end && *w == ' ')
                w++;
            const char *we = w;
            while (we < end && *we != ' ')
                we++;
            size_t n = (size_t)(we - w);
            if (n == 0)
                break;
            if (col > 0 && col + 1 + n > HELP_WIDTH - indent) {
                sbuf_lit(b, "\n");
                col = 0;
            }
            if (col == 0)
                sbuf_printf(b, "%*s", (int)indent, "");
            else
                sbuf_lit(b, " "), col++;
            sbuf_add(b, w, n);
            col += n;
            w = we;
        }
        sbuf_lit(b, "\n");
        p = *end == '\n' ? end + 1 : end;
        if (blank && *p != '\0')
            sbuf_lit(b, "\n");
    }
}

static void option_line(struct sbuf *b, const struct option_def *d)
{
    size_t start = b->len;
    if (d->shortname)
        sbuf_printf(b, "  -%c, --%s", d->shortname, d->name);
    else
        sbuf_printf(b, "      --%s", d->name);
    if (d->metavar != NULL)
        sbuf_printf(b, " %s", d->metavar);
    size_t col = b->len - start;
    if (col + 2 > OPT_COLUMN) {
        sbuf_lit(b, "\n");
        col = 0;
    }
    sbuf_printf(b, "%*s", (int)(OPT_COLUMN - col), "");
    col = OPT_COLUMN;
    /* The help's own line breaks are only hints: fill to HELP_WIDTH. */
    const char *w = d->help;
    while (*w != '\0') {
        while (*w == ' ' || *w == '\n')
            w++;
        size_t n = strcspn(w, " \n");
        if (n == 0)
            break;
        if (col > OPT_COLUMN && col + 1 + n > HELP_WIDTH) {
            sbuf_printf(b, "\n%*s", OPT_COLUMN, "");
            col = OPT_COLUMN;
        } else if (col > OPT_COLUMN) {
            sbuf_lit(b, " ");
            col++;
        }
        sbuf_add(b, w, n);
        col += n;
        w += n;
    }
    sbuf_lit(b, "\n");
}

int print_main_help(void)
{
    struct sbuf b;
    sbuf_init(&b, 1u << 20);
    sbuf_printf(&b, "Usage: boxctl [GLOBAL OPTIONS] COMMAND [ARGS]...\n\n%s\nGlobal options:\n",
                intro);
    for (size_t i = 0; i < option_count; i++)
        if (option_table[i].global)
            option_line(&b, &option_table[i]);
    const char *group = NULL;
    for (size_t i = 0; i < command_count; i++) {
        const struct command *c = &command_table[i];
        if (group == NULL || strcmp(group, c->group) != 0) {
            group = c->group;
            sbuf_printf(&b, "\n%s:\n", group);
        }
        sbuf_printf(&b, "  %-10s %s\n", c->name, c->summary);
    }
    sbuf_lit(&b, "\n'boxctl COMMAND --help' describes a command and its options.\n\n");
    wrap(&b, env_text, 0, false);
    sbuf_lit(&b, "\n");
    wrap(&b, exit_text, 0, false);
    return flush(&b);
}

int print_command_help(const struct command *cmd)
{
    struct sbuf b;
    sbuf_init(&b, 1u << 20);
    const char *s = cmd->synopsis;
    bool first = true;
    do {
        const char *e = strchr(s, '\n');
        size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
        sbuf_printf(&b, "%s boxctl %s%s%.*s\n", first ? "Usage:" : "      ", cmd->name,
                    n > 0 ? " " : "", (int)n, s);
        first = false;
        s += n + (e != NULL);
    } while (*s != '\0');
    sbuf_lit(&b, "\n");
    wrap(&b, cmd->description, 0, true);
    if (cmd->options[0] != '\0') {
        sbuf_lit(&b, "\nOptions:\n");
        for (size_t i = 0; i < option_count; i++)
            if (!option_table[i].global && command_takes(cmd, option_key(&option_table[i])))
                option_line(&b, &option_table[i]);
    }
    sbuf_lit(&b, "\nGlobal options (also before the command): ");
    for (size_t i = 0, k = 0; i < option_count; i++)
        if (option_table[i].global)
            sbuf_printf(&b, "%s--%s", k++ ? ", " : "", option_table[i].name);
    sbuf_lit(&b, "; see 'boxctl --help'.\n");
    return flush(&b);
}

/* roff text: a leading '.' or '\'' and every backslash and '-' escaped. */
static void roff(struct sbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if ((i == 0 || s[i - 1] == '\n') && (ch == '.' || ch == '\''))
            sbuf_lit(b, "\\&");
        if (ch == '\\')
            sbuf_lit(b, "\\e");
        else if (ch == '-')
            sbuf_lit(b, "\\-");
        else
            sbuf_add(b, &ch, 1);
    }
}

static void roff_str(struct sbuf *b, const char *s)
{
    roff(b, s, strlen(s));
}

/* Paragraphs separated by '\n' become .PP paragraphs. */
static void roff_paras(struct sbuf *b, const char *s)
{
    while (*s != '\0') {
        const char *e = strchr(s, '\n');
        size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
        sbuf_lit(b, ".PP\n");
        roff(b, s, n);
        sbuf_lit(b, "\n");
        s += n + (e != NULL);
    }
}

static void roff_option(struct sbuf *b, const struct option_def *d)
{
    sbuf_lit(b, ".TP\n");
    if (d->shortname)
        sbuf_printf(b, "\\fB\\-%c\\fR, ", d->shortname);
    sbuf_lit(b, "\\fB\\-\\-");
    roff_str(b, d->name);
    sbuf_lit(b, "\\fR");
    if (d->metavar != NULL) {
        sbuf_lit(b, " \\fI");
        roff_str(b, d->metavar);
        sbuf_lit(b, "\\fR");
    }
    sbuf_lit(b, "\n");
    /* The help's line breaks are for the terminal: the man page fills. */
    for (const char *h = d->help; *h != '\0'; h++) {
        if (*h == '\n')
            sbuf_lit(b, " ");
        else
            roff(b, h, 1);
    }
    sbuf_lit(b, "\n");
}

/* The tables agree: every option a command row names exists, no short letter is taken twice.
 * The build runs `boxctl --man`, so a mistake in a table fails the build. */
static int check_tables(void)
{
    int bad = 0;
    for (size_t i = 0; i < command_count; i++) {
        const char *p = command_table[i].options;
        while (*p != '\0') {
            while (*p == ' ')
                p++;
            size_t n = strcspn(p, " ");
            if (n == 0)
                break;
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)n, p);
            const struct option_def *d = option_find(name);
            if (d == NULL || d->global) {
                errmsg("command table: %s names option '%s', which is not a command option in "
                       "options.c", command_table[i].name, name);
                bad = 1;
            }
            p += n;
        }
    }
    /* A short letter or long name on two rows: no command (and nothing global) may take both. */
    for (size_t i = 0; i < option_count; i++)
        for (size_t k = i + 1; k < option_count; k++) {
            const struct option_def *a = &option_table[i], *o = &option_table[k];
            bool same_short = a->shortname != 0 && a->shortname == o->shortname;
            if (!same_short && strcmp(a->name, o->name) != 0)
                continue;
            if (strcmp(option_key(a), option_key(o)) == 0) {
                errmsg("option table: --%s and --%s share the key '%s'", a->name, o->name,
                       option_key(a));
                bad = 1;
                continue;
            }
            bool clash = a->global || o->global;
            for (size_t c = 0; c < command_count && !clash; c++)
                clash = command_takes(&command_table[c], option_key(a)) &&
                        command_takes(&command_table[c], option_key(o));
            if (clash) {
                if (same_short)
                    errmsg("option table: -%c is both --%s and --%s", a->shortname, a->name,
                           o->name);
                else
                    errmsg("option table: --%s is on two rows a command takes together", a->name);
                bad = 1;
            }
        }
    return bad ? EXIT_FAIL : 0;
}

int print_man(void)
{
    if (check_tables() != 0)
        return EXIT_FAIL;
    struct sbuf b;
    sbuf_init(&b, 1u << 20);
    sbuf_lit(&b, ".\\\" Generated by `boxctl --man` from its option and command tables: do not edit.\n");
    sbuf_printf(&b, ".TH BOXCTL 1 \"\" \"boxctl %s\" \"User Commands\"\n", BOXD_VERSION);
    sbuf_lit(&b, ".SH NAME\nboxctl \\- control the boxd agent of a box\n.SH SYNOPSIS\n");
    sbuf_lit(&b, ".B boxctl\n[\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...\n");
    sbuf_lit(&b, ".SH DESCRIPTION\n");
    roff_paras(&b, "boxctl talks to the boxd agent of a box: over its unix socket inside the box, or "
                   "from the host over vsock, a Firecracker/Cloud Hypervisor hybrid vsock socket, "
                   "or QEMU's virtio-serial socket. One invocation is one connection and one "
                   "command.");
    sbuf_lit(&b, ".SH GLOBAL OPTIONS\n");
    for (size_t i = 0; i < option_count; i++)
        if (option_table[i].global)
            roff_option(&b, &option_table[i]);
    sbuf_lit(&b, ".SH COMMANDS\n");
    for (size_t i = 0; i < command_count; i++) {
        const struct command *c = &command_table[i];
        sbuf_lit(&b, ".SS ");
        roff_str(&b, c->name);
        sbuf_lit(&b, "\n");
        const char *s = c->synopsis;
        do {
            const char *e = strchr(s, '\n');
            size_t n = e != NULL ? (size_t)(e - s) : strlen(s);
            sbuf_lit(&b, ".PP\n\\fBboxctl ");
            roff_str(&b, c->name);
            sbuf_lit(&b, "\\fR ");
            roff(&b, s, n);
            sbuf_lit(&b, "\n");
            s += n + (e != NULL);
        } while (*s != '\0');
        roff_paras(&b, c->description);
        for (size_t k = 0; k < option_count; k++)
            if (!option_table[k].global && command_takes(c, option_key(&option_table[k])))
                roff_option(&b, &option_table[k]);
    }
    sbuf_lit(&b, ".SH ENVIRONMENT\n");
    roff_paras(&b, env_text);
    sbuf_lit(&b, ".SH EXIT STATUS\n");
    roff_paras(&b, exit_text);
    sbuf_lit(&b, ".SH SEE ALSO\n.BR boxd (8)\n");
    return flush(&b);
}

int usage_error(const char *cmd, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (cmd != NULL)
        errmsg("%s: %s (see 'boxctl %s --help')", cmd, buf, cmd);
    else
        errmsg("%s (see 'boxctl --help')", buf);
    return EXIT_USAGE;
}
