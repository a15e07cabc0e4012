/* boxctl's shared declarations: the invocation (struct ctl), the parsed options (struct opts),
 * the command table's row type, and the helpers each file exports to the others.
 *
 * Where things live:
 *   main.c       the command table (add a command here), main(), dispatch
 *   options.c    the option table (every option once) and the one parser over it
 *   usage.c      --help and the man page, both made from the two tables
 *   text.c       errmsg, bounded buffers, byte strings, number and run-id parsing
 *   conn.c       endpoint, token, connect and hello, error messages that say what to do next
 *   render.c     output records (raw, captured, JSON), a run's outcome, agent maps as text/JSON
 *   follow.c     streaming a run: the poll loop, SIGINT, stdin feeding, wait, logs pages
 *   cmd_run.c    exec, code                      cmd_runs.c   attach wait logs cancel signal stdin
 *   cmd_agent.c  list info ping shutdown         cmd_files.c  cp ls rm mkdir watch
 *   cmd_tty.c    shell, and the interactive terminal loop of exec -t and attach
 *   cmd_tunnel.c tunnel forward
 *   json.c       the JSON writer
 *
 * Exit status: 2 usage errors, 1 connection/protocol errors and error replies, else what the
 * command says (exec, attach and wait: the run's exit code).
 */
#ifndef BOXD_BOXCTL_H
#define BOXD_BOXCTL_H

#include "client.h"
#include "json.h"
#include "schema.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef BOXD_VERSION
#define BOXD_VERSION "0.0.0"
#endif

#define EXIT_USAGE 2
#define EXIT_FAIL 1
#define DEFAULT_SOCKET "/run/boxd.sock"
#define CLIENT_NAME "boxctl/" BOXD_VERSION
/* hello's capability for terminal runs (PROTOCOL.md, terminal runs). */
#define CAP_TTY "tty"

/* How long to connect (with a hybrid-vsock handshake) and wait for hello, and for the reply to
 * a request that answers at once. Waiting for a run (wait, exec, attach) has no limit. */
#define HELLO_TIMEOUT_MS 10000
#define REPLY_TIMEOUT_MS 30000
/* Largest stdin chunk per request; one is in flight at a time (see follow.c). */
#define STDIN_CHUNK_MAX (64u * 1024u)
/* Room in a request for the fields around a stdin chunk. */
#define STDIN_FRAME_OVERHEAD 256u
/* --json rebuilds stdout/stderr from records up to this many bytes per stream. */
#define CAPTURE_MAX (64u << 20)
/* Most text a JSON writer buffers between flushes. */
#define JSON_BUF_MAX (1024u << 20)
/* logs: records per page request. */
#define LOGS_PAGE_RECORDS 1000
#define RUN_ID_MAX 64
/* The agent's token: at most this many bytes (boxd's AUTH_TOKEN_MAX), read from a file of at
 * most TOKEN_FILE_MAX bytes. */
#define TOKEN_MAX 256
#define TOKEN_FILE_MAX 4096
/* --wait-start: how often an id not yet known is asked for again. */
#define WAIT_START_POLL_MS 20

/* The streams of output records (PROTOCOL.md 4.3): a terminal run's bytes are stream 3. */
#define STREAM_STDOUT 1
#define STREAM_STDERR 2
#define STREAM_TTY 3

/* -ECANCELED: the failure has been reported on stderr already. */
#define ALREADY_REPORTED (-ECANCELED)

/* ---- text.c -------------------------------------------------------------------------------- */

void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A growable byte buffer with a hard cap: bytes past `max` are dropped and `over` is set. */
struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    size_t max;
    bool over;
    bool nomem;
};
void sbuf_init(struct sbuf *b, size_t max);
void sbuf_free(struct sbuf *b);
void sbuf_add(struct sbuf *b, const void *s, size_t n);
/* Appends a string literal. */
#define sbuf_lit(b, s) sbuf_add((b), (s), sizeof(s) - 1)
void sbuf_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

struct bytes {
    const char *p;
    size_t n;
};
bool bytes_is(struct bytes b, const char *s);
bool get_bytes(const msgpack_object *map, const char *key, struct bytes *b);
void sanitize(char *s, size_t n);
void bytes_cstr(struct bytes b, char *dst, size_t cap);
int parse_u64(const char *s, uint64_t *v);
bool valid_run_id(const char *s);
void sleep_ms(unsigned ms);

/* ---- options.c ----------------------------------------------------------------------------- */

/* Every option's value, filled in by options_parse from the option table. */
struct opts {
    /* global */
    const char *socket, *token_file;
    bool help, version, man;
    /* runs */
    bool use_argv, feed, detach, json, follow, eof, reboot, tty;
    bool has_timeout, has_grace, has_wait_start;
    uint64_t timeout_ms, grace_ms, wait_start_ms, from;
    const char *cwd, *id, *lang, *file, *user, *seccomp;
    const char **env; /* K=V strings from argv; nenv of them */
    size_t nenv;
    const char *detach_keys; /* --detach-keys as given; NULL: the default */
    /* files */
    bool archive, long_list, recursive, parents, force;
    unsigned mode; /* mkdir -m; 0755 unless has_mode */
    bool has_mode;
};

enum opt_arg { ARG_NONE, ARG_REQUIRED };

struct option_def {
    const char *name;   /* long name, without "--" */
    char shortname;     /* 0: none */
    enum opt_arg arg;
    const char *metavar;
    const char *help;   /* one line or more (\n between lines) for --help and the man page */
    /* Stores the value; returns 0 or EXIT_USAGE after reporting. */
    int (*set)(const char *cmd, struct opts *o, const char *arg);
    bool global;        /* taken before the command and by every command */
    /* The name command rows list it by; NULL: name. Two rows may share a long name (ls -R and
     * rm -r are both --recursive) when no command takes both. */
    const char *key;
};
extern const struct option_def option_table[];
extern const size_t option_count;
const struct option_def *option_find(const char *name);
/* The name command rows list d by (its key, else its long name). */
const char *option_key(const struct option_def *d);

/* Detach keys (--detach-keys): "ctrl-p,ctrl-q" is Ctrl-P then Ctrl-Q. */
#define DETACH_KEYS_MAX 8
#define DEFAULT_DETACH_KEYS "ctrl-p,ctrl-q"
struct detach_keys {
    unsigned char k[DETACH_KEYS_MAX];
    size_t n; /* 0: no detach keys */
};
/* Parses s (keys separated by commas: one character, or ctrl-X). Returns 0 or -EINVAL. */
int detach_keys_parse(const char *s, struct detach_keys *k);

/* Parses argv[first..argc) against the options of cmd (NULL: before the command: globals only)
 * into o; operands are gathered into *operands (pointing into argv, *noperands of them). With
 * stop_at_operand, everything from the first operand on is an operand (exec's CMD keeps its own
 * options). When cmd is NULL parsing stops at the first operand (the command name), whose index
 * is stored in *noperands' place as the operand list. Returns 0 or EXIT_USAGE (reported). */
struct command;
int options_parse(const struct command *cmd, int argc, char **argv, int first, struct opts *o,
                  char ***operands, int *noperands);

/* ---- main.c: the command table ------------------------------------------------------------- */

struct ctl;
struct command {
    const char *name;
    const char *group;     /* heading in --help: "Runs", "Requests on runs", "Agent", "Files" */
    const char *summary;   /* one line */
    const char *synopsis;  /* "RUN_ID [--from SEQ]": after "boxctl NAME " */
    const char *description; /* paragraphs for --help and the man page */
    const char *options;   /* long names of its options, space-separated (globals implied) */
    bool stop_at_operand;  /* options end at the first operand */
    int (*run)(struct ctl *x, struct opts *o, int argc, char **argv);
};
extern const struct command command_table[];
extern const size_t command_count;
const struct command *command_find(const char *name);
bool command_takes(const struct command *cmd, const char *option);

/* ---- usage.c ------------------------------------------------------------------------------- */

int print_main_help(void);
int print_command_help(const struct command *cmd);
int print_man(void);
int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- conn.c -------------------------------------------------------------------------------- */

/* One boxctl invocation: the endpoint, the token, the connection, a message buffer. */
struct ctl {
    const char *sock; /* as given */
    const char *token_file;
    struct box_endpoint ep;
    struct box_client c;
    struct box_msg m;
    bool connected;
    bool msg_ready;
    bool cap_tty; /* hello listed the capability "tty" (terminal runs, resize) */
};

const char *io_error(int r);
void print_agent_error(const struct box_msg *m);
int request_failed(struct ctl *x, int r);
int ctl_connect(struct ctl *x);
void ctl_close(struct ctl *x);
int req_with_id(struct ctl *x, struct msg_out *o, const char *type, const char *id,
                uint32_t nfields, uint64_t *req);
int simple_request(struct ctl *x, const char *type);
/* True when x->m is an `error` with this code. */
bool error_is(const struct box_msg *m, enum box_err code);

/* ---- render.c ------------------------------------------------------------------------------ */

enum sink_mode { SINK_RAW, SINK_CAPTURE, SINK_JSON };
struct sink {
    enum sink_mode mode;
    struct sbuf cap[2];
    struct json *j;
    bool lines;
    bool gap;
    uint64_t next_seq;
};
void sink_init(struct sink *s, enum sink_mode mode);
void sink_destroy(struct sink *s);
int sink_lines(struct sink *s, const msgpack_object *lines);
void warn_gap(const char *id, uint64_t from, uint64_t to);

struct end_info {
    struct bytes id, status, reason, stage, errno_name, result, out, err;
    bool has_exit, has_signal, has_errno, has_duration;
    bool truncated;
    bool with_output;
    int64_t exit_code, sig, err_no, duration_ms;
};
void end_parse(const msgpack_object *m, struct end_info *e);
int spawn_exit_code(bool has_errno, int64_t err_no, struct bytes name);
int end_exit_code(const struct end_info *e);
/* Says on stderr what the end means when it is not plain: could not start, timed out. */
void report_end(const struct end_info *e, uint64_t timeout_ms);
int end_print_json(const struct end_info *e, const struct sink *cap);
void json_mp(struct json *j, const msgpack_object *o);
void text_mp(struct sbuf *b, const msgpack_object *o);
bool key_is(const msgpack_object *k, const char *s);
void text_map(struct sbuf *b, const char *prefix, const msgpack_object *map);
int print_json_value(const msgpack_object *o, bool skip_envelope);

/* ---- follow.c ------------------------------------------------------------------------------ */

enum follow_result { F_CONTINUE, F_END, F_ERROR, F_DETACHED, F_FAILED };
struct follow {
    struct ctl *x;
    struct sink *sink;
    uint64_t req;
    char id[RUN_ID_MAX + 1];
    bool started;
    bool cancel_on_sigint;
    unsigned sigints;
    bool cancel_wanted;
    bool cancel_sent;
    uint64_t cancel_req;
    bool feed;
    bool feed_wait;
    uint64_t feed_req;
    size_t chunk;
    char *feed_buf;
};
int sigint_install(void);
int follow_run(struct follow *f);
int wait_end(struct ctl *x, const char *id, bool output);
int logs_pages(struct ctl *x, const char *id, uint64_t *from, struct sink *s);

/* ---- cmd_run.c: starting runs --------------------------------------------------------------- */

/* What an exec or code request carries, taken from the parsed options and the operands. */
struct exec_opts {
    const char *lang; /* code: the language (the request is `code`, not `exec`) */
    const char *code; /* its snippet */
    size_t code_len;
    bool use_argv, feed, detach, json;
    bool has_timeout, has_grace;
    uint64_t timeout_ms, grace_ms;
    const char *cwd, *id, *user, *seccomp;
    const char **env; /* K=V strings, from argv */
    size_t nenv;
    char **words; /* CMD words or the argv array */
    size_t nwords;
    /* A terminal run: `tty: {rows, cols}`, TERM (unless env sets it; NULL: the agent's
     * default), and for a shell without CMD `login: true`. */
    bool tty, login;
    unsigned rows, cols;
    const char *term;
};
void exec_opts_from(struct exec_opts *e, const struct opts *o);
/* Sends the exec (or code) request e describes; its req in *req. */
int exec_request(struct ctl *x, const struct exec_opts *e, uint64_t *req);

/* ---- cmd_tty.c: terminals ------------------------------------------------------------------ */

/* Runs e (e->tty set) interactively on boxctl's terminal, connected already. Returns boxctl's
 * exit status. */
int tty_exec(struct ctl *x, struct exec_opts *e, const char *detach_keys);
/* attach found a terminal run: the `attached` reply (for req) is in x->m. Continues as the
 * interactive loop. */
int tty_attach(struct ctl *x, const char *id, uint64_t req, const char *detach_keys);
/* True when the agent said it has terminal runs (hello's capability "tty"); otherwise says so
 * on stderr, with what to do. */
bool tty_supported(struct ctl *x);
/* Fills e->rows/cols from boxctl's terminal (24x80 when stdin is not one) and e->term. */
void tty_size_and_term(struct exec_opts *e);

/* ---- commands ------------------------------------------------------------------------------ */

int cmd_exec(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_code(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_attach(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_wait(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_logs(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_cancel(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_signal(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_stdin(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_list(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_info(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_ping(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_shutdown(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_shell(struct ctl *x, struct opts *o, int argc, char **argv);
/* cmd_files.c */
int cmd_cp(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_ls(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_rm(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_mkdir(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_watch(struct ctl *x, struct opts *o, int argc, char **argv);
/* cmd_tunnel.c */
int cmd_tunnel(struct ctl *x, struct opts *o, int argc, char **argv);
int cmd_forward(struct ctl *x, struct opts *o, int argc, char **argv);

/* The single RUN_ID operand (and up to `more` others). Returns 0 or EXIT_USAGE (reported). */
int take_run_id(const char *cmd, int argc, char **argv, int more, const char **id);

#endif
