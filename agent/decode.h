/* Pure request decoders (PROTOCOL.md 4 and 10.2): each takes the parsed msgpack map of one
 * request and fills a typed struct, or returns -1 with {code, message} in *err. They touch no
 * connection, no run and no agent state, so they are unit-tested alone with golden frames
 * (tests/agent/test_decode.c); the handlers (request*.c) act on what they fill.
 *
 * Strings they return point into the msgpack object (borrowed: valid while its zone is). Each
 * decoder checks its fields in the order the handlers always have, so that a request with two
 * faults gets the same error as before. Unknown fields are ignored (PROTOCOL.md section 2); an
 * optional field sent as nil is absent.
 *
 * The error messages are part of what clients and tests see; change them only with the docs. */
#ifndef BOXD_DECODE_H
#define BOXD_DECODE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "schema.h"

/* Bounds of request fields (PROTOCOL.md 10.2). */
#define DECODE_MAX_ARGV 4096u            /* exec argv[] entries */
#define DECODE_MAX_ENV 4096u             /* env entries */
#define DECODE_LOGS_MAX_RECORDS 100000u  /* the largest page a `logs` request may ask for */
#define DECODE_LOGS_RECORDS 1000u        /* its default */
#define DECODE_LOGS_BYTES (256u * 1024u) /* its default max_bytes */
/* The longest grace a request may give, ms: one hour. */
#define DECODE_GRACE_MAX_MS (3600u * 1000u)
/* The longest timeout, ms: what a uint32 of seconds would hold. */
#define DECODE_TIMEOUT_MAX_MS (UINT32_MAX * 1000ull)
/* Longest `req`: a str of at most this many bytes (10.1). */
#define DECODE_REQ_STR_MAX 64u

/* A decoder's refusal. with_id: the error names the run (carries its `id`), as the errors about
 * a field of stdin and signal always have; errors from the other fields carry none. */
struct decode_err {
    enum box_err code;
    bool with_id;
    char message[256];
};

/* A run id a request names (stdin, signal, cancel, attach, detach, wait, logs): required. */
int decode_run_id(const msgpack_object *m, const char **id, size_t *len, struct decode_err *err);
/* Whether id (len bytes) is a well-formed run id character by character (letters, digits and
 * . _ : -); its length is checked by the caller. */
bool decode_id_char_ok(char ch);

/* hello: version must be BOX_PROTOCOL_VERSION. Returns 0, or -1 with bad_version or
 * bad_request (the reply adds `versions`). The token is auth.c's (auth_check_hello). */
int decode_hello(const msgpack_object *m, uint64_t version_spoken, struct decode_err *err);

/* shutdown: action "poweroff" (default) or "reboot". */
int decode_shutdown(const msgpack_object *m, bool *reboot, struct decode_err *err);

/* stdin: data (str or bin, default empty) and eof (default false). */
struct dec_stdin {
    const char *data;
    size_t len;
    bool eof;
};
int decode_stdin(const msgpack_object *m, struct dec_stdin *out, struct decode_err *err);

/* A signal, by number (1 to NSIG-1) or name (HUP, SIGHUP, any case). Returns it, or -1. */
int decode_signal_value(const msgpack_object *o);
/* signal: the `signal` field. */
int decode_signal(const msgpack_object *m, int *sig, struct decode_err *err);

/* cancel: grace_ms, at most DECODE_GRACE_MAX_MS, dflt when absent (the run's own grace). */
int decode_cancel(const msgpack_object *m, uint64_t dflt, uint64_t *grace_ms,
                  struct decode_err *err);

/* attach: from_seq (default 0) and output (default false). */
struct dec_attach {
    uint64_t from_seq;
    bool output;
};
int decode_attach(const msgpack_object *m, struct dec_attach *out, struct decode_err *err);

/* wait: output (default false). */
int decode_wait(const msgpack_object *m, bool *output, struct decode_err *err);

/* logs: from_seq, max_records (1 to DECODE_LOGS_MAX_RECORDS; 0 counts as 1), max_bytes. */
struct dec_logs {
    uint64_t from_seq, max_records, max_bytes;
};
int decode_logs(const msgpack_object *m, struct dec_logs *out, struct decode_err *err);

/* What exec and code share (PROTOCOL.md 4.1), before the request's own fields: the id, the
 * flags and times. With timeout_alias (code), `timeout` is a synonym of timeout_ms. dflt_grace
 * is the agent's --grace-ms. */
struct dec_run {
    const char *id; /* NULL when absent */
    size_t id_len;
    bool follow, want_output, want_stdin;
    uint64_t timeout_ms, grace_ms;
};
int decode_run(const msgpack_object *m, bool timeout_alias, uint64_t dflt_grace,
               struct dec_run *out, struct decode_err *err);
/* The request's `user`: *user NULL when absent. Its syntax only; the policy is the handler's. */
int decode_user(const msgpack_object *m, size_t max, const char **user, size_t *len,
                struct decode_err *err);
/* The request's `seccomp`: *given false when absent, else *profile (enum seccomp_profile). */
int decode_seccomp(const msgpack_object *m, bool *given, int *profile, struct decode_err *err);

/* env and cwd, checked completely (4.1): NULL when absent or nil; env_bytes is what the env's
 * strings take as K=V with NULs. */
struct dec_env {
    const msgpack_object *env, *cwd;
    uint64_t env_bytes;
};
int decode_env(const msgpack_object *m, struct dec_env *out, struct decode_err *err);

/* exec: exactly one of cmd (a str) and argv (1 to DECODE_MAX_ARGV entries; each is checked to
 * be a string without NUL when it is copied, decode_take_str); or, with login true (only when
 * the request has a tty, given by tty), neither: the run user's login shell. */
struct dec_exec {
    const msgpack_object *cmd, *argv;
    bool login;
};
int decode_exec(const msgpack_object *m, bool tty, struct dec_exec *out, struct decode_err *err);

/* A terminal's size (exec and code's `tty`, resize): rows and cols, each 1 to DECODE_TTY_MAX. */
#define DECODE_TTY_MAX 4096u
struct dec_tty {
    bool given; /* the request has a `tty` (decode_tty); resize's are required */
    uint16_t rows, cols;
};
/* exec and code: `tty?: {rows, cols}`. */
int decode_tty(const msgpack_object *m, struct dec_tty *out, struct decode_err *err);
/* resize: rows and cols at the top level, both required; errors name the run (with_id). */
int decode_resize(const msgpack_object *m, struct dec_tty *out, struct decode_err *err);

/* code: lang (str, may be absent: then len 0) and code (str or bin, required, at most max). */
struct dec_code {
    const char *lang, *code;
    size_t lang_len, code_len;
};
int decode_code(const msgpack_object *m, size_t max, struct dec_code *out,
                struct decode_err *err);

/* Copies a msgpack str into a NUL-terminated string at *at, refusing embedded NULs: 0, or -1
 * when o is not a str or holds a NUL. Advances *at past the copy. */
int decode_take_str(const msgpack_object *o, char **at, char **out);

#endif
