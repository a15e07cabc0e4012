/* The protocol's name tables (schema.h), the fields of each request (PROTOCOL.md 10.2) and those
 * of each reply and event (10.3, 10.4). */
#include "schema.h"

#include <string.h>

static const char *const type_names[] = {
#define X(e, s, d) s,
    BOX_TYPES(X)
#undef X
};
static const unsigned type_dirs[] = {
#define X(e, s, d) d,
    BOX_TYPES(X)
#undef X
};
static const char *const err_names[] = {
#define X(e, s) s,
    BOX_ERRORS(X)
#undef X
};
static const char *const limit_names[] = {
#define X(e, s, w) s,
    BOX_LIMITS(X)
#undef X
};
static const unsigned limit_where[] = {
#define X(e, s, w) w,
    BOX_LIMITS(X)
#undef X
};
static const char *const field_names[] = {
#define X(e, s) s,
    BOX_FIELDS(X)
#undef X
};
static const char *const rfield_names[] = {
#define X(e, s) s,
    BOX_REPLY_FIELDS(X)
#undef X
};

_Static_assert(BOX_F__COUNT <= 64, "box_fieldset holds at most 64 fields");

#define F(x) BOX_FS(BOX_F_##x)
/* Every request carries type and req (10.1). */
#define COMMON (F(TYPE) | F(REQ))
/* What exec and code share (4.1). */
#define RUN_OPTS                                                                                  \
    (F(ID) | F(ENV) | F(CWD) | F(TIMEOUT_MS) | F(GRACE_MS) | F(STDIN) | F(FOLLOW) | F(OUTPUT) |  \
     F(USER) | F(SECCOMP))

static const box_fieldset request_fields[BOX_T__COUNT] = {
    [BOX_T_HELLO] = COMMON | F(VERSION) | F(CLIENT) | F(TOKEN),
    [BOX_T_PING] = COMMON,
    [BOX_T_INFO] = COMMON,
    [BOX_T_SHUTDOWN] = COMMON | F(ACTION),
    [BOX_T_EXEC] = COMMON | RUN_OPTS | F(CMD) | F(ARGV) | F(TTY) | F(LOGIN),
    [BOX_T_CODE] = COMMON | RUN_OPTS | F(LANG) | F(CODE) | F(TIMEOUT) | F(TTY),
    [BOX_T_STDIN] = COMMON | F(ID) | F(DATA) | F(EOF_),
    [BOX_T_SIGNAL] = COMMON | F(ID) | F(SIGNAL),
    [BOX_T_CANCEL] = COMMON | F(ID) | F(GRACE_MS),
    [BOX_T_ATTACH] = COMMON | F(ID) | F(FROM_SEQ) | F(OUTPUT),
    [BOX_T_DETACH] = COMMON | F(ID),
    [BOX_T_WAIT] = COMMON | F(ID) | F(OUTPUT),
    [BOX_T_LOGS] = COMMON | F(ID) | F(FROM_SEQ) | F(MAX_RECORDS) | F(MAX_BYTES),
    [BOX_T_LIST] = COMMON,
    [BOX_T_RESIZE] = COMMON | F(ID) | F(ROWS) | F(COLS),
    /* The file requests (12). */
    [BOX_T_FILE_WRITE] = COMMON | F(SHA256) | F(PATH) | F(USER) | F(UPLOAD_ID) | F(MODE) | F(MKDIR) | F(OVERWRITE) | F(ATOMIC) | F(HASH) | F(FSYNC) | F(MTIME_NS),
    [BOX_T_FILE_DATA] = COMMON | F(UPLOAD_ID) | F(OFFSET) | F(DATA) | F(EOF_),
    [BOX_T_FILE_ABORT] = COMMON | F(UPLOAD_ID),
    [BOX_T_FILE_READ] = COMMON | F(SHA256) | F(PATH) | F(USER) | F(OFFSET) | F(LENGTH),
    [BOX_T_FILE_STAT] = COMMON | F(PATH) | F(USER),
    [BOX_T_FILE_LIST] = COMMON | F(PATH) | F(USER) | F(DEPTH),
    [BOX_T_FILE_MKDIR] = COMMON | F(PATH) | F(USER) | F(PARENTS) | F(MODE),
    [BOX_T_FILE_REMOVE] = COMMON | F(PATH) | F(USER) | F(RECURSIVE),
    [BOX_T_FILE_RENAME] = COMMON | F(FROM) | F(TO) | F(USER) | F(OVERWRITE),
    [BOX_T_FILE_CHMOD] = COMMON | F(PATH) | F(USER) | F(MODE) | F(MTIME_NS),
    [BOX_T_FILE_SYMLINK] = COMMON | F(PATH) | F(TARGET) | F(USER) | F(OVERWRITE),
    [BOX_T_FILE_WATCH] = COMMON | F(PATH) | F(USER) | F(RECURSIVE),
    [BOX_T_FILE_UNWATCH] = COMMON | F(WATCH),
};
#undef F

_Static_assert(BOX_RF__COUNT <= 256, "box_reply_fields lists fields as uint8_t");

/* The fields of each message the agent sends (10.3, 10.4), in the document's order. */
#define R(x) BOX_RF_##x
/* Every message the agent sends carries type, and req when its request had one. */
#define RCOMMON R(TYPE), R(REQ)
static const uint8_t rf_hello[] = {
    RCOMMON, R(VERSION), R(AGENT), R(BOOT_ID), R(PID), R(CAPABILITIES), R(LIMITS)};
static const uint8_t rf_pong[] = {RCOMMON, R(TS_NS)};
static const uint8_t rf_info[] = {
    RCOMMON, R(VERSION), R(AGENT), R(BOOT_ID), R(PID), R(PID1), R(MODE), R(SUBREAPER), R(UPTIME_MS),
    R(RUNS_LIVE), R(RUNS_STARTING), R(SPAWNER), R(RUNS_FINISHED), R(CONNS), R(REAPED),
    R(STARTED_TOTAL), R(LOG_DROPPED), R(LOG_SUPPRESSED), R(SHUTTING_DOWN), R(KILL_MECHANISM),
    R(CGROUP), R(CONTROLLERS), R(LIMITS), R(RUN_LIMITS), R(NOFILE), R(CORE), R(OOM_SCORE_ADJ),
    R(MEMORY_MAX), R(SWAP_MAX), R(PIDS_MAX), R(LANGUAGES), R(NAME), R(ALIASES), R(PATH), R(FILE)};
static const uint8_t rf_ok[] = {RCOMMON, R(ID), R(ENDED)};
static const uint8_t rf_started[] = {RCOMMON, R(ID), R(PID), R(STARTED_NS), R(EXISTING)};
static const uint8_t rf_error[] = {
    RCOMMON, R(CODE), R(MESSAGE), R(ID), R(ERRNO), R(ERRNO_NAME), R(STAGE), R(EXISTING), R(LIMIT),
    R(VERSIONS), R(AVAILABLE)};
static const uint8_t rf_attached[] = {
    RCOMMON, R(ID), R(FIRST_SEQ), R(DROPPED_RECORDS), R(DROPPED_BYTES), R(NEXT_SEQ), R(ENDED),
    R(TTY), R(ROWS), R(COLS)};
static const uint8_t rf_output[] = {RCOMMON, R(ID), R(LINES)};
static const uint8_t rf_gap[] = {RCOMMON, R(ID), R(FROM_SEQ), R(TO_SEQ)};
static const uint8_t rf_end[] = {
    RCOMMON, R(ID), R(STATUS), R(REASON), R(EXIT_CODE), R(SIGNAL), R(ERRNO), R(ERRNO_NAME),
    R(STAGE), R(STARTED_NS), R(ENDED_NS), R(DURATION_MS), R(CPU_USER_US), R(CPU_SYS_US),
    R(MAX_RSS_KB), R(NEXT_SEQ), R(FIRST_SEQ), R(DROPPED_RECORDS), R(DROPPED_BYTES), R(RESULT),
    R(STDOUT), R(STDERR), R(OUTPUT_TRUNCATED)};
static const uint8_t rf_logs[] = {
    RCOMMON, R(ID), R(LINES), R(NEXT_SEQ), R(MORE), R(ENDED), R(FIRST_SEQ), R(DROPPED_RECORDS),
    R(DROPPED_BYTES)};
static const uint8_t rf_list[] = {
    RCOMMON, R(RUNS), R(ID), R(PID), R(STATE), R(STATUS), R(REASON), R(EXIT_CODE), R(ENDED_NS),
    R(CMD), R(ARGV), R(STARTED_NS), R(NEXT_SEQ), R(FIRST_SEQ), R(DROPPED_RECORDS), R(DROPPED_BYTES),
    R(LATE_BYTES), R(LINGERING), R(CGROUP), R(BACKGROUND_KILLED), R(SLOT_RELEASED), R(TTY),
    R(ROWS), R(COLS), R(TRUNCATED)};
/* The file replies and events (10.4); the file requests' `ok` and `error` are those above. */
static const uint8_t rf_file_ack[] = {RCOMMON, R(UPLOAD_ID), R(OFFSET)};
static const uint8_t rf_file_written[] = {RCOMMON, R(UPLOAD_ID), R(PATH), R(SIZE), R(SHA256)};
static const uint8_t rf_file_info[] = {
    RCOMMON, R(PATH), R(SIZE), R(MODE), R(MTIME_NS), R(OFFSET), R(LENGTH)};
static const uint8_t rf_file_chunk[] = {RCOMMON, R(OFFSET), R(DATA)};
static const uint8_t rf_file_end[] = {RCOMMON, R(BYTES), R(SHA256)};
static const uint8_t rf_file_watching[] = {RCOMMON, R(WATCH), R(DIRS)};
static const uint8_t rf_file_event[] = {RCOMMON, R(WATCH), R(SEQ), R(EVENT), R(NAME), R(DIR)};
/* An entry of file_stat and of file_list (12.4). */
#define RENTRY R(NAME), R(KIND), R(MODE), R(SIZE), R(MTIME_NS), R(UID), R(GID), R(TARGET)
static const uint8_t rf_file_stat[] = {RCOMMON, R(ENTRY), RENTRY};
static const uint8_t rf_file_list[] = {RCOMMON, R(ENTRIES), RENTRY, R(TRUNCATED)};
#undef RENTRY
#undef RCOMMON
#undef R

#define N(a) (sizeof(a) / sizeof((a)[0]))

struct rf_list {
    const uint8_t *v;
    size_t n;
};
#define L(a) {a, N(a)}
static const struct rf_list reply_fields[BOX_T__COUNT] = {
    [BOX_T_HELLO] = L(rf_hello),   [BOX_T_PONG] = L(rf_pong),         [BOX_T_INFO] = L(rf_info),
    [BOX_T_OK] = L(rf_ok),         [BOX_T_STARTED] = L(rf_started),   [BOX_T_ERROR] = L(rf_error),
    [BOX_T_OUTPUT] = L(rf_output), [BOX_T_ATTACHED] = L(rf_attached), [BOX_T_GAP] = L(rf_gap),
    [BOX_T_END] = L(rf_end),       [BOX_T_LOGS] = L(rf_logs),         [BOX_T_LIST] = L(rf_list),
    [BOX_T_FILE_ACK] = L(rf_file_ack),
    [BOX_T_FILE_WRITTEN] = L(rf_file_written),
    [BOX_T_FILE_INFO] = L(rf_file_info),
    [BOX_T_FILE_CHUNK] = L(rf_file_chunk),
    [BOX_T_FILE_END] = L(rf_file_end),
    [BOX_T_FILE_WATCHING] = L(rf_file_watching),
    [BOX_T_FILE_EVENT] = L(rf_file_event),
    [BOX_T_FILE_STAT] = L(rf_file_stat),
    [BOX_T_FILE_LIST] = L(rf_file_list),
};
#undef L


const char *box_type_str(enum box_type t)
{
    return (unsigned)t < N(type_names) ? type_names[t] : "?";
}

const char *box_err_str(enum box_err e)
{
    return (unsigned)e < N(err_names) ? err_names[e] : "?";
}

const char *box_limit_str(enum box_limit l)
{
    return (unsigned)l < N(limit_names) ? limit_names[l] : "?";
}

const char *box_field_str(enum box_field f)
{
    return (unsigned)f < N(field_names) ? field_names[f] : "?";
}

const char *box_rfield_str(enum box_rfield f)
{
    return (unsigned)f < N(rfield_names) ? rfield_names[f] : "?";
}

unsigned box_type_dirs(enum box_type t)
{
    return (unsigned)t < N(type_dirs) ? type_dirs[t] : 0;
}

unsigned box_limit_where(enum box_limit l)
{
    return (unsigned)l < N(limit_where) ? limit_where[l] : 0;
}

box_fieldset box_request_fields(enum box_type t)
{
    return (unsigned)t < N(request_fields) ? request_fields[t] : 0;
}

const uint8_t *box_reply_fields(enum box_type t, size_t *n)
{
    const struct rf_list *l = (unsigned)t < N(reply_fields) ? &reply_fields[t] : NULL;
    *n = l ? l->n : 0;
    return *n ? l->v : NULL;
}

static int lookup(const char *const *names, size_t n, const char *s, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return (int)i;
    return -1;
}

int box_type_lookup(const char *s, size_t len)
{
    return lookup(type_names, N(type_names), s, len);
}

int box_err_lookup(const char *s, size_t len)
{
    return lookup(err_names, N(err_names), s, len);
}

int box_limit_lookup(const char *s, size_t len)
{
    return lookup(limit_names, N(limit_names), s, len);
}

int box_field_lookup(const char *s, size_t len)
{
    return lookup(field_names, N(field_names), s, len);
}

int box_rfield_lookup(const char *s, size_t len)
{
    return lookup(rfield_names, N(rfield_names), s, len);
}

bool box_err_is(const char *s, size_t len, enum box_err e)
{
    const char *n = box_err_str(e);
    return strlen(n) == len && memcmp(n, s, len) == 0;
}
