/* boxctl's option table and the one parser over it.
 *
 * Every option is declared once, below: its long name, short letter, whether it takes a value,
 * the value's name, its help text and the function that stores it. A command says which options
 * it takes by listing their long names in its row of the command table (main.c); global options
 * (-s, --token-file, --help...) are taken everywhere, before or after the command name. --help
 * and the man page are printed from this table and the command table (usage.c), so they cannot
 * drift from what the parser accepts.
 *
 * To add an option: one row here (and a field in struct opts if it stores something new), then
 * its name (its key, when it has one) in the `options` of each command row that takes it. A
 * long name or short letter may be on two rows when no command takes both (code's -l is
 * --lang, ls's is --long); the parser picks the row the command takes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int set_ms(const char *cmd, const char *opt, const char *arg, uint64_t *v, bool *has)
{
    if (parse_u64(arg, v) < 0)
        return usage_error(cmd, "--%s needs a number of milliseconds, not '%s'", opt, arg);
    if (has != NULL)
        *has = true;
    return 0;
}

static int set_socket(const char *c, struct opts *o, const char *a) { (void)c; o->socket = a; return 0; }
static int set_token_file(const char *c, struct opts *o, const char *a) { (void)c; o->token_file = a; return 0; }
static int set_help(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->help = true; return 0; }
static int set_version(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->version = true; return 0; }
static int set_man(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->man = true; return 0; }
static int set_argv(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->use_argv = true; return 0; }
static int set_stdin(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->feed = true; return 0; }
static int set_detach(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->detach = true; return 0; }
static int set_json(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->json = true; return 0; }
static int set_follow(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->follow = true; return 0; }
static int set_eof(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->eof = true; return 0; }
static int set_reboot(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->reboot = true; return 0; }
static int set_cwd(const char *c, struct opts *o, const char *a) { (void)c; o->cwd = a; return 0; }
static int set_file(const char *c, struct opts *o, const char *a) { (void)c; o->file = a; return 0; }
static int set_lang(const char *c, struct opts *o, const char *a) { (void)c; o->lang = a; return 0; }

static int set_timeout(const char *c, struct opts *o, const char *a)
{
    return set_ms(c, "timeout", a, &o->timeout_ms, &o->has_timeout);
}

static int set_grace(const char *c, struct opts *o, const char *a)
{
    return set_ms(c, "grace", a, &o->grace_ms, &o->has_grace);
}

static int set_wait_start(const char *c, struct opts *o, const char *a)
{
    return set_ms(c, "wait-start", a, &o->wait_start_ms, &o->has_wait_start);
}

static int set_from(const char *c, struct opts *o, const char *a)
{
    if (parse_u64(a, &o->from) < 0)
        return usage_error(c, "--from needs a sequence number, not '%s'", a);
    return 0;
}

static int set_env(const char *c, struct opts *o, const char *a)
{
    if (strchr(a, '=') == NULL || a[0] == '=')
        return usage_error(c, "-e needs K=V with a non-empty K, not '%s'", a);
    o->env[o->nenv++] = a; /* sized for every argument by main() */
    return 0;
}

static int set_id(const char *c, struct opts *o, const char *a)
{
    if (!valid_run_id(a))
        return usage_error(c, "'%s' is not a run id (1-64 of A-Z a-z 0-9 . _ : -)", a);
    o->id = a;
    return 0;
}

static int set_user(const char *c, struct opts *o, const char *a)
{
    if (a[0] == '\0' || strlen(a) > 63 || strchr(a, ':') != NULL)
        return usage_error(c, "--user needs a user name (1-63 bytes, no ':'), not '%s'", a);
    o->user = a;
    return 0;
}

static int set_seccomp(const char *c, struct opts *o, const char *a)
{
    if (strcmp(a, "none") != 0 && strcmp(a, "default") != 0 && strcmp(a, "strict") != 0)
        return usage_error(c, "--seccomp takes none, default or strict, not '%s'", a);
    o->seccomp = a;
    return 0;
}

static int set_tty(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->tty = true; return 0; }

static int set_detach_keys(const char *c, struct opts *o, const char *a)
{
    struct detach_keys k;
    if (detach_keys_parse(a, &k) < 0)
        return usage_error(c, "--detach-keys takes keys separated by commas, each a character "
                              "or ctrl-X (X one of a-z @ [ \\ ] ^ _), at most %d, or '' for "
                              "none; not '%s'",
                           DETACH_KEYS_MAX, a);
    o->detach_keys = a;
    return 0;
}

static int set_archive(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->archive = true; return 0; }
static int set_long(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->long_list = true; return 0; }
static int set_recursive(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->recursive = true; return 0; }
static int set_parents(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->parents = true; return 0; }
static int set_force(const char *c, struct opts *o, const char *a) { (void)c; (void)a; o->force = true; return 0; }

static int set_mode(const char *c, struct opts *o, const char *a)
{
    char *end;
    errno = 0;
    long v = strtol(a, &end, 8);
    if (a[0] == '\0' || *end != '\0' || errno != 0 || v < 0 || v > 07777)
        return usage_error(c, "-m takes an octal mode (0 to 7777), not '%s'", a);
    o->mode = (unsigned)v;
    o->has_mode = true;
    return 0;
}

/* clang-format off */
const struct option_def option_table[] = {
    /* Global: before the command or among its options. */
    {"socket", 's', ARG_REQUIRED, "ENDPOINT",
     "the agent to talk to (default: $BOXD_SOCKET, else " DEFAULT_SOCKET "):\n"
     "unix:PATH or PATH, vsock:CID:PORT, fc:UDS:PORT (Firecracker/Cloud Hypervisor\n"
     "hybrid vsock), serial:PATH (QEMU's virtio-serial chardev socket)",
     set_socket, true, NULL},
    {"token-file", 0, ARG_REQUIRED, "FILE",
     "send the token in FILE in hello (default: the file $BOXD_TOKEN_FILE names);\n"
     "trailing newlines are dropped, as boxd --token-file does",
     set_token_file, true, NULL},
    {"help", 'h', ARG_NONE, NULL, "show help (boxctl --help, boxctl COMMAND --help)", set_help, true, NULL},
    {"version", 0, ARG_NONE, NULL, "show boxctl's version and protocol version", set_version, true, NULL},
    {"man", 0, ARG_NONE, NULL, "print the man page (roff) on stdout", set_man, true, NULL},
    /* Starting runs. */
    {"argv", 0, ARG_NONE, NULL,
     "the operands are an argv array, executed directly (PATH searched), not /bin/sh -c",
     set_argv, false, NULL},
    {"lang", 'l', ARG_REQUIRED, "LANG",
     "the snippet's language: a name or alias (python, py, js, node, ts, bash, sh...)",
     set_lang, false, NULL},
    {"file", 'f', ARG_REQUIRED, "FILE", "read the snippet from FILE ('-': boxctl's stdin)",
     set_file, false, NULL},
    {"timeout", 0, ARG_REQUIRED, "MS",
     "stop the run after MS milliseconds (TERM, then KILL after the grace); boxctl\n"
     "says on stderr when it fired",
     set_timeout, false, NULL},
    {"grace", 0, ARG_REQUIRED, "MS", "time between TERM and KILL on timeout and cancel", set_grace,
     false, NULL},
    {"cwd", 0, ARG_REQUIRED, "DIR", "working directory (default: the run user's HOME, else /)",
     set_cwd, false, NULL},
    {"env", 'e', ARG_REQUIRED, "K=V", "add K=V to the run's environment (repeatable)", set_env,
     false, NULL},
    {"id", 0, ARG_REQUIRED, "RUN_ID",
     "choose the run's id; when a run with that id exists nothing is started and\n"
     "boxctl says so on stderr, then streams that run from its start",
     set_id, false, NULL},
    {"user", 'u', ARG_REQUIRED, "USER",
     "run as USER (the agent allows only its run user and its --allow-request-user list)",
     set_user, false, NULL},
    {"seccomp", 0, ARG_REQUIRED, "PROFILE",
     "seccomp profile: none, default or strict (never weaker than the agent's default\n"
     "unless it was started with --allow-seccomp-none)",
     set_seccomp, false, NULL},
    {"stdin", 0, ARG_NONE, NULL,
     "copy boxctl's stdin to the run's stdin; end-of-file closes it (without it the\n"
     "run's stdin is /dev/null)",
     set_stdin, false, NULL},
    {"detach", 'd', ARG_NONE, NULL,
     "start the run, print its id once it has started, and return", set_detach, false, NULL},
    /* Terminals. */
    {"tty", 't', ARG_NONE, NULL,
     "run on a pseudo-terminal, interactively, as 'boxctl shell' does (keys go to the run,\n"
     "boxctl's terminal is raw until the end or a detach)",
     set_tty, false, NULL},
    {"detach-keys", 0, ARG_REQUIRED, "KEYS",
     "the keys that detach from a terminal run and leave it going (default\n"
     DEFAULT_DETACH_KEYS ", as docker): characters or ctrl-X, comma-separated; '' for none",
     set_detach_keys, false, NULL},
    /* Output and runs. */
    {"json", 'j', ARG_NONE, NULL, "print JSON instead of text (the command's description says what)",
     set_json, false, NULL},
    {"from", 0, ARG_REQUIRED, "SEQ", "start at record SEQ (default 0)", set_from, false, NULL},
    {"follow", 'F', ARG_NONE, NULL, "after the retained records, stream new ones until the run ends",
     set_follow, false, NULL},
    {"wait-start", 'w', ARG_REQUIRED, "MS",
     "when the run id is not known yet (a run another boxctl is starting), ask again\n"
     "for up to MS milliseconds before giving up with not_found",
     set_wait_start, false, NULL},
    {"eof", 0, ARG_NONE, NULL, "close the run's stdin (after DATA, if given)", set_eof, false, NULL},
    {"reboot", 0, ARG_NONE, NULL, "reboot instead of powering off (a VM; elsewhere boxd just exits)",
     set_reboot, false, NULL},
    /* Files. */
    {"archive", 'a', ARG_NONE, NULL,
     "keep modes (all permission bits) and mtimes; without it files get their mode\n"
     "less the umask, and the time of copying",
     set_archive, false, NULL},
    {"long", 'l', ARG_NONE, NULL, "show each entry's kind, mode, size and mtime", set_long, false,
     NULL},
    {"recursive", 'R', ARG_NONE, NULL, "list subdirectories too (up to 64 levels)", set_recursive,
     false, "recursive-list"},
    {"recursive", 'r', ARG_NONE, NULL,
     "rm: remove directory trees; watch: watch the subdirectories too", set_recursive, false,
     NULL},
    {"force", 'f', ARG_NONE, NULL, "accepted for rm -f habits; changes nothing", set_force, false,
     NULL},
    {"parents", 'p', ARG_NONE, NULL, "make missing parents; existing directories are no error",
     set_parents, false, NULL},
    {"mode", 'm', ARG_REQUIRED, "MODE", "the new directories' mode, octal (default 755)",
     set_mode, false, NULL},
};
/* clang-format on */
const size_t option_count = sizeof option_table / sizeof option_table[0];

const char *option_key(const struct option_def *d)
{
    return d->key != NULL ? d->key : d->name;
}

const struct option_def *option_find(const char *key)
{
    for (size_t i = 0; i < option_count; i++)
        if (strcmp(option_key(&option_table[i]), key) == 0)
            return &option_table[i];
    return NULL;
}

static bool allowed(const struct command *cmd, const struct option_def *d)
{
    return d->global || (cmd != NULL && command_takes(cmd, option_key(d)));
}

/* The row cmd takes by long name or short letter (rows may share them across commands). */
static const struct option_def *find_long(const struct command *cmd, const char *name)
{
    for (size_t i = 0; i < option_count; i++)
        if (strcmp(option_table[i].name, name) == 0 && allowed(cmd, &option_table[i]))
            return &option_table[i];
    return NULL;
}

static const struct option_def *find_short(const struct command *cmd, char ch)
{
    for (size_t i = 0; i < option_count; i++)
        if (option_table[i].shortname == ch && allowed(cmd, &option_table[i]))
            return &option_table[i];
    return NULL;
}

int options_parse(const struct command *cmd, int argc, char **argv, int first, struct opts *o,
                  char ***operands, int *noperands)
{
    const char *cname = cmd != NULL ? cmd->name : NULL;
    /* Operands are gathered in place at the front of argv[first..): argv is ours to reorder. */
    int nops = 0;
    bool only_operands = false;
    for (int i = first; i < argc; i++) {
        char *a = argv[i];
        if (only_operands || a[0] != '-' || a[1] == '\0') {
            argv[first + nops++] = a;
            if (cmd == NULL || cmd->stop_at_operand)
                only_operands = true;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_operands = true;
            continue;
        }
        const struct option_def *d;
        const char *val = NULL;
        if (a[1] == '-') {
            char name[64];
            const char *eq = strchr(a + 2, '=');
            size_t n = eq != NULL ? (size_t)(eq - (a + 2)) : strlen(a + 2);
            if (n >= sizeof name)
                return usage_error(cname, "unknown option '%s'", a);
            memcpy(name, a + 2, n);
            name[n] = '\0';
            d = find_long(cmd, name);
            if (d == NULL)
                return usage_error(cname, "unknown option '--%s'", name);
            if (eq != NULL) {
                if (d->arg == ARG_NONE)
                    return usage_error(cname, "option '--%s' takes no value", name);
                val = eq + 1;
            }
        } else {
            /* Letters of options without a value may be bundled (rm -rf, ls -lR); a letter
             * that takes a value ends the bundle, the rest being its value (-m700). */
            const char *l = a + 1;
            for (;;) {
                d = find_short(cmd, *l);
                if (d == NULL)
                    return usage_error(cname, "unknown option '-%c'", *l);
                if (d->arg == ARG_REQUIRED || l[1] == '\0')
                    break;
                int r = d->set(cname, o, NULL);
                if (r != 0)
                    return r;
                l++;
            }
            if (d->arg == ARG_REQUIRED && l[1] != '\0')
                val = l + 1;
        }
        if (d->arg == ARG_REQUIRED && val == NULL) {
            if (i + 1 >= argc)
                return usage_error(cname, "option '--%s' needs a value (%s)", d->name,
                                   d->metavar);
            val = argv[++i];
        }
        int r = d->set(cname, o, val);
        if (r != 0)
            return r;
    }
    *operands = argv + first;
    *noperands = nops;
    return 0;
}
