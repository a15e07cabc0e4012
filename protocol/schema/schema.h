/* The protocol's names, declared once (PROTOCOL.md sections 6 and 10): message types, error
 * codes, limit names, the fields of every request and those of every reply and event. The
 * agent, the C client and boxctl take their names from here instead of writing string literals
 * (ctest schema.literals checks it), and tests/unit/test_schema.c holds these tables against
 * PROTOCOL.md (every name here is in the document and every name there is here).
 *
 * Each list is an X-macro, so an enum and its name table come from one line per name. The
 * tables are constant data; nothing here allocates. */
#ifndef BOX_SCHEMA_H
#define BOX_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Who sends a message type: a client (request), the agent (reply or event), or both under the
 * same name (`hello`, `info`, `logs`, `list` are a request and its reply). */
#define BOX_DIR_REQUEST 1u
#define BOX_DIR_AGENT 2u

/* X(ENUM, "name", directions) */
#define BOX_TYPES(X)                                                                              \
    X(HELLO, "hello", BOX_DIR_REQUEST | BOX_DIR_AGENT)                                            \
    X(PING, "ping", BOX_DIR_REQUEST)                                                              \
    X(INFO, "info", BOX_DIR_REQUEST | BOX_DIR_AGENT)                                              \
    X(SHUTDOWN, "shutdown", BOX_DIR_REQUEST)                                                      \
    X(EXEC, "exec", BOX_DIR_REQUEST)                                                              \
    X(CODE, "code", BOX_DIR_REQUEST)                                                              \
    X(STDIN, "stdin", BOX_DIR_REQUEST)                                                            \
    X(SIGNAL, "signal", BOX_DIR_REQUEST)                                                          \
    X(CANCEL, "cancel", BOX_DIR_REQUEST)                                                          \
    X(ATTACH, "attach", BOX_DIR_REQUEST)                                                          \
    X(DETACH, "detach", BOX_DIR_REQUEST)                                                          \
    X(WAIT, "wait", BOX_DIR_REQUEST)                                                              \
    X(LOGS, "logs", BOX_DIR_REQUEST | BOX_DIR_AGENT)                                              \
    X(LIST, "list", BOX_DIR_REQUEST | BOX_DIR_AGENT)                                              \
    X(RESIZE, "resize", BOX_DIR_REQUEST)                                                          \
    X(PONG, "pong", BOX_DIR_AGENT)                                                                \
    X(OK, "ok", BOX_DIR_AGENT)                                                                    \
    X(STARTED, "started", BOX_DIR_AGENT)                                                          \
    X(ERROR, "error", BOX_DIR_AGENT)                                                              \
    X(ATTACHED, "attached", BOX_DIR_AGENT)                                                        \
    X(OUTPUT, "output", BOX_DIR_AGENT)                                                            \
    X(GAP, "gap", BOX_DIR_AGENT)                                                                  \
    X(END, "end", BOX_DIR_AGENT)                                                                    \
    X(FILE_WRITE, "file_write", BOX_DIR_REQUEST)                                                    \
    X(FILE_DATA, "file_data", BOX_DIR_REQUEST)                                                      \
    X(FILE_ABORT, "file_abort", BOX_DIR_REQUEST)                                                    \
    X(FILE_READ, "file_read", BOX_DIR_REQUEST)                                                      \
    X(FILE_STAT, "file_stat", BOX_DIR_REQUEST | BOX_DIR_AGENT)                                      \
    X(FILE_LIST, "file_list", BOX_DIR_REQUEST | BOX_DIR_AGENT)                                      \
    X(FILE_MKDIR, "file_mkdir", BOX_DIR_REQUEST)                                                    \
    X(FILE_REMOVE, "file_remove", BOX_DIR_REQUEST)                                                  \
    X(FILE_RENAME, "file_rename", BOX_DIR_REQUEST)                                                  \
    X(FILE_CHMOD, "file_chmod", BOX_DIR_REQUEST)                                                    \
    X(FILE_SYMLINK, "file_symlink", BOX_DIR_REQUEST)                                                \
    X(FILE_WATCH, "file_watch", BOX_DIR_REQUEST)                                                    \
    X(FILE_UNWATCH, "file_unwatch", BOX_DIR_REQUEST)                                                \
    X(FILE_ACK, "file_ack", BOX_DIR_AGENT)                                                          \
    X(FILE_WRITTEN, "file_written", BOX_DIR_AGENT)                                                  \
    X(FILE_INFO, "file_info", BOX_DIR_AGENT)                                                        \
    X(FILE_CHUNK, "file_chunk", BOX_DIR_AGENT)                                                      \
    X(FILE_END, "file_end", BOX_DIR_AGENT)                                                          \
    X(FILE_WATCHING, "file_watching", BOX_DIR_AGENT)                                                \
    X(FILE_EVENT, "file_event", BOX_DIR_AGENT)

/* The error codes of section 6: X(ENUM, "code"). */
#define BOX_ERRORS(X)                                                                             \
    X(BAD_REQUEST, "bad_request")                                                                 \
    X(UNKNOWN_TYPE, "unknown_type")                                                               \
    X(TOO_LARGE, "too_large")                                                                     \
    X(NEED_HELLO, "need_hello")                                                                   \
    X(DENIED, "denied")                                                                           \
    X(UNAUTHORIZED, "unauthorized")                                                               \
    X(BAD_VERSION, "bad_version")                                                                 \
    X(NOT_FOUND, "not_found")                                                                     \
    X(RUN_ENDED, "run_ended")                                                                     \
    X(LIMIT, "limit")                                                                             \
    X(SPAWN_FAILED, "spawn_failed")                                                               \
    X(SHUTTING_DOWN, "shutting_down")                                                             \
    X(UNKNOWN_LANG, "unknown_lang")                                                               \
    X(INTERNAL, "internal")                                                                         \
    X(NOT_A_DIRECTORY, "not_a_directory")                                                           \
    X(IS_A_DIRECTORY, "is_a_directory")                                                             \
    X(EXISTS, "exists")                                                                             \
    X(PERMISSION_DENIED, "permission_denied")                                                       \
    X(NO_SPACE, "no_space")                                                                         \
    X(REFUSED, "refused")                                                                           \
    X(CHECKSUM_MISMATCH, "checksum_mismatch")                                                       \
    X(UNSUPPORTED, "unsupported")                                                                   \
    X(IO_ERROR, "io_error")

/* Where a limit's name appears: a key of `hello.limits` (and `info.limits`), and/or the `limit`
 * field of an `error` `limit` (the limit a request would exceed). */
#define BOX_LIM_HELLO 1u
#define BOX_LIM_ERROR 2u

/* X(ENUM, "name", where), in the order `hello.limits` lists them. */
#define BOX_LIMITS(X)                                                                             \
    X(MAX_FRAME, "max_frame", BOX_LIM_HELLO)                                                      \
    X(MAX_EVENT, "max_event", BOX_LIM_HELLO)                                                      \
    X(MAX_LINE, "max_line", BOX_LIM_HELLO)                                                        \
    X(MAX_RUNS, "max_runs", BOX_LIM_HELLO | BOX_LIM_ERROR)                                        \
    X(MAX_FINISHED, "max_finished", BOX_LIM_HELLO)                                                \
    X(MAX_CONNS, "max_conns", BOX_LIM_HELLO)                                                      \
    X(LOG_BYTES, "log_bytes", BOX_LIM_HELLO)                                                      \
    X(LOG_TOTAL, "log_total", BOX_LIM_HELLO)                                                      \
    X(STDIN_BYTES, "stdin_bytes", BOX_LIM_HELLO | BOX_LIM_ERROR)                                  \
    X(MAX_SUBS, "max_subs", BOX_LIM_HELLO | BOX_LIM_ERROR)                                        \
    X(CONN_QUEUE, "conn_queue", BOX_LIM_HELLO)                                                    \
    X(QUEUE_TOTAL, "queue_total", BOX_LIM_HELLO)                                                  \
    X(HELLO_TIMEOUT_MS, "hello_timeout_ms", BOX_LIM_HELLO)                                        \
    X(GRACE_MS, "grace_ms", BOX_LIM_HELLO)                                                        \
    X(DRAIN_MS, "drain_ms", BOX_LIM_HELLO)                                                        \
    X(FLUSH_MS, "flush_ms", BOX_LIM_HELLO)                                                        \
    X(MAX_CODE, "max_code", BOX_LIM_HELLO)                                                        \
    X(CODE_WAITING, "code_waiting", BOX_LIM_ERROR)                                                  \
    X(FILE_CHUNK, "file_chunk", BOX_LIM_HELLO)                                                      \
    X(FILE_WINDOW, "file_window", BOX_LIM_HELLO | BOX_LIM_ERROR)                                    \
    X(MAX_UPLOADS, "max_uploads", BOX_LIM_HELLO | BOX_LIM_ERROR)                                    \
    X(UPLOAD_TTL_MS, "upload_ttl_ms", BOX_LIM_HELLO)                                                \
    X(MAX_DOWNLOADS, "max_downloads", BOX_LIM_HELLO | BOX_LIM_ERROR)                                \
    X(LIST_MAX, "list_max", BOX_LIM_HELLO)                                                          \
    X(FILE_DEPTH, "file_depth", BOX_LIM_HELLO)                                                      \
    X(FILE_WORKERS, "file_workers", BOX_LIM_HELLO)                                                  \
    X(MAX_WATCHES, "max_watches", BOX_LIM_HELLO | BOX_LIM_ERROR)                                    \
    X(WATCH_DIRS, "watch_dirs", BOX_LIM_HELLO)

/* The fields of requests (section 10.2, top level): X(ENUM, "name"). */
#define BOX_FIELDS(X)                                                                             \
    X(TYPE, "type")                                                                               \
    X(REQ, "req")                                                                                 \
    X(VERSION, "version")                                                                         \
    X(CLIENT, "client")                                                                           \
    X(TOKEN, "token")                                                                             \
    X(ACTION, "action")                                                                           \
    X(ID, "id")                                                                                   \
    X(CMD, "cmd")                                                                                 \
    X(ARGV, "argv")                                                                               \
    X(ENV, "env")                                                                                 \
    X(CWD, "cwd")                                                                                 \
    X(TIMEOUT_MS, "timeout_ms")                                                               \
    X(TIMEOUT, "timeout")                                                                         \
    X(GRACE_MS, "grace_ms")                                                                       \
    X(STDIN, "stdin")                                                                             \
    X(FOLLOW, "follow")                                                                           \
    X(OUTPUT, "output")                                                                           \
    X(USER, "user")                                                                               \
    X(SECCOMP, "seccomp")                                                                         \
    X(LANG, "lang")                                                                               \
    X(CODE, "code")                                                                               \
    X(DATA, "data")                                                                               \
    X(EOF_, "eof")                                                                                \
    X(SIGNAL, "signal")                                                                           \
    X(FROM_SEQ, "from_seq")                                                                       \
    X(MAX_RECORDS, "max_records")                                                                 \
    X(MAX_BYTES, "max_bytes")                                                                       \
    X(PATH, "path")                                                                                 \
    X(UPLOAD_ID, "upload_id")                                                                       \
    X(MODE, "mode")                                                                                 \
    X(MKDIR, "mkdir")                                                                               \
    X(OVERWRITE, "overwrite")                                                                       \
    X(ATOMIC, "atomic")                                                                             \
    X(HASH, "hash")                                                                                 \
    X(FSYNC, "fsync")                                                                               \
    X(MTIME_NS, "mtime_ns")                                                                         \
    X(OFFSET, "offset")                                                                             \
    X(LENGTH, "length")                                                                             \
    X(DEPTH, "depth")                                                                               \
    X(PARENTS, "parents")                                                                           \
    X(RECURSIVE, "recursive")                                                                       \
    X(FROM, "from")                                                                                 \
    X(TO, "to")                                                                                     \
    X(TARGET, "target")                                                                             \
    X(WATCH, "watch")                                                                             \
    X(SHA256, "sha256")                                                                           \
    X(TTY, "tty")                                                                                 \
    X(ROWS, "rows")                                                                               \
    X(COLS, "cols")                                                                               \
    X(LOGIN, "login")

/* The fields of the agent's replies and events (sections 10.3 and 10.4): X(ENUM, "name"). Every key at any
 * depth (`runs[].state`, `run_limits.nofile`, `languages[].path` give `state`, `nofile`, `path`)
 * but those of `limits`, which are limit names (BOX_LIMITS). The request fields above are a
 * list of their own, so a name such as `id` is in both. */
#define BOX_REPLY_FIELDS(X)                                                                       \
    X(TYPE, "type")                                                                               \
    X(REQ, "req")                                                                                 \
    X(VERSION, "version")                                                                         \
    X(AGENT, "agent")                                                                             \
    X(BOOT_ID, "boot_id")                                                                         \
    X(PID, "pid")                                                                                 \
    X(CAPABILITIES, "capabilities")                                                               \
    X(LIMITS, "limits")                                                                           \
    X(TS_NS, "ts_ns")                                                                             \
    X(PID1, "pid1")                                                                               \
    X(MODE, "mode")                                                                               \
    X(SUBREAPER, "subreaper")                                                                     \
    X(UPTIME_MS, "uptime_ms")                                                                     \
    X(RUNS_LIVE, "runs_live")                                                                     \
    X(RUNS_STARTING, "runs_starting")                                                             \
    X(SPAWNER, "spawner")                                                                         \
    X(RUNS_FINISHED, "runs_finished")                                                             \
    X(CONNS, "conns")                                                                             \
    X(REAPED, "reaped")                                                                           \
    X(STARTED_TOTAL, "started_total")                                                             \
    X(LOG_DROPPED, "log_dropped")                                                                 \
    X(LOG_SUPPRESSED, "log_suppressed")                                                           \
    X(SHUTTING_DOWN, "shutting_down")                                                             \
    X(KILL_MECHANISM, "kill_mechanism")                                                           \
    X(CGROUP, "cgroup")                                                                           \
    X(CONTROLLERS, "controllers")                                                                 \
    X(RUN_LIMITS, "run_limits")                                                                   \
    X(NOFILE, "nofile")                                                                           \
    X(CORE, "core")                                                                               \
    X(OOM_SCORE_ADJ, "oom_score_adj")                                                             \
    X(MEMORY_MAX, "memory_max")                                                                   \
    X(SWAP_MAX, "swap_max")                                                                       \
    X(PIDS_MAX, "pids_max")                                                                       \
    X(LANGUAGES, "languages")                                                                     \
    X(NAME, "name")                                                                               \
    X(ALIASES, "aliases")                                                                         \
    X(PATH, "path")                                                                               \
    X(FILE, "file")                                                                               \
    X(ID, "id")                                                                                   \
    X(ENDED, "ended")                                                                             \
    X(STARTED_NS, "started_ns")                                                                   \
    X(EXISTING, "existing")                                                                       \
    X(CODE, "code")                                                                               \
    X(MESSAGE, "message")                                                                         \
    X(ERRNO, "errno")                                                                             \
    X(ERRNO_NAME, "errno_name")                                                                   \
    X(STAGE, "stage")                                                                             \
    X(LIMIT, "limit")                                                                             \
    X(VERSIONS, "versions")                                                                       \
    X(AVAILABLE, "available")                                                                     \
    X(FIRST_SEQ, "first_seq")                                                                     \
    X(DROPPED_RECORDS, "dropped_records")                                                         \
    X(DROPPED_BYTES, "dropped_bytes")                                                             \
    X(NEXT_SEQ, "next_seq")                                                                       \
    X(LINES, "lines")                                                                             \
    X(FROM_SEQ, "from_seq")                                                                       \
    X(TO_SEQ, "to_seq")                                                                           \
    X(STATUS, "status")                                                                           \
    X(REASON, "reason")                                                                           \
    X(EXIT_CODE, "exit_code")                                                                     \
    X(SIGNAL, "signal")                                                                           \
    X(ENDED_NS, "ended_ns")                                                                       \
    X(DURATION_MS, "duration_ms")                                                                 \
    X(CPU_USER_US, "cpu_user_us")                                                                 \
    X(CPU_SYS_US, "cpu_sys_us")                                                                   \
    X(MAX_RSS_KB, "max_rss_kb")                                                                   \
    X(RESULT, "result")                                                                           \
    X(STDOUT, "stdout")                                                                           \
    X(STDERR, "stderr")                                                                           \
    X(OUTPUT_TRUNCATED, "output_truncated")                                                       \
    X(MORE, "more")                                                                               \
    X(RUNS, "runs")                                                                               \
    X(STATE, "state")                                                                             \
    X(CMD, "cmd")                                                                                 \
    X(ARGV, "argv")                                                                               \
    X(LATE_BYTES, "late_bytes")                                                                   \
    X(LINGERING, "lingering")                                                                     \
    X(BACKGROUND_KILLED, "background_killed")                                                     \
    X(SLOT_RELEASED, "slot_released")                                                             \
    X(TRUNCATED, "truncated")                                                                     \
    X(UPLOAD_ID, "upload_id")                                                                     \
    X(OFFSET, "offset")                                                                           \
    X(SIZE, "size")                                                                               \
    X(SHA256, "sha256")                                                                           \
    X(LENGTH, "length")                                                                           \
    X(MTIME_NS, "mtime_ns")                                                                       \
    X(DATA, "data")                                                                               \
    X(BYTES, "bytes")                                                                             \
    X(WATCH, "watch")                                                                             \
    X(DIRS, "dirs")                                                                               \
    X(SEQ, "seq")                                                                                 \
    X(EVENT, "event")                                                                             \
    X(DIR, "dir")                                                                                 \
    X(ENTRY, "entry")                                                                             \
    X(KIND, "kind")                                                                               \
    X(UID, "uid")                                                                                 \
    X(GID, "gid")                                                                                 \
    X(TARGET, "target")                                                                           \
    X(ENTRIES, "entries")                                                                         \
    X(TTY, "tty")                                                                                 \
    X(ROWS, "rows")                                                                               \
    X(COLS, "cols")

enum box_type {
#define X(e, s, d) BOX_T_##e,
    BOX_TYPES(X)
#undef X
    BOX_T__COUNT
};

enum box_err {
#define X(e, s) BOX_ERR_##e,
    BOX_ERRORS(X)
#undef X
    BOX_ERR__COUNT
};

enum box_limit {
#define X(e, s, w) BOX_LIM_##e,
    BOX_LIMITS(X)
#undef X
    BOX_LIM__COUNT
};

enum box_field {
#define X(e, s) BOX_F_##e,
    BOX_FIELDS(X)
#undef X
    BOX_F__COUNT
};

enum box_rfield {
#define X(e, s) BOX_RF_##e,
    BOX_REPLY_FIELDS(X)
#undef X
    BOX_RF__COUNT
};

/* A set of fields, bit (1 << enum box_field). */
typedef uint64_t box_fieldset;
#define BOX_FS(f) ((box_fieldset)1 << (f))

/* The names (static strings). An out-of-range value gives "?". */
const char *box_type_str(enum box_type t);
const char *box_err_str(enum box_err e);
const char *box_limit_str(enum box_limit l);
const char *box_field_str(enum box_field f);
const char *box_rfield_str(enum box_rfield f);

/* Who sends type t (BOX_DIR_*); where limit l appears (BOX_LIM_*). */
unsigned box_type_dirs(enum box_type t);
unsigned box_limit_where(enum box_limit l);
/* The fields a request of type t may carry (10.2); 0 for a type that is not a request. */
box_fieldset box_request_fields(enum box_type t);
/* The fields the agent's message t may carry (10.3, every depth as in BOX_REPLY_FIELDS), as *n
 * enum box_rfield values in the document's order; NULL with *n 0 for a type the agent does not
 * send. The array is static. */
const uint8_t *box_reply_fields(enum box_type t, size_t *n);

/* Looks a name of len bytes up (not NUL-terminated). Returns the enum value, or -1. */
int box_type_lookup(const char *s, size_t len);
int box_err_lookup(const char *s, size_t len);
int box_limit_lookup(const char *s, size_t len);
int box_field_lookup(const char *s, size_t len);
int box_rfield_lookup(const char *s, size_t len);

/* Whether the len bytes at s are the name of code e (for clients reading an error's `code`). */
bool box_err_is(const char *s, size_t len, enum box_err e);

/* Shorthands for the encoders and readers: BOX_KEY(EXIT_CODE) is "exit_code" (a reply or event
 * field), BOX_REQ_KEY(TOKEN) is "token" (a request field), BOX_TYPE(END) is "end". */
#define BOX_KEY(f) box_rfield_str(BOX_RF_##f)
#define BOX_REQ_KEY(f) box_field_str(BOX_F_##f)
#define BOX_TYPE(t) box_type_str(BOX_T_##t)

#endif
