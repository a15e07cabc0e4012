/* Code runs: the language table, finding interpreters, and the snippet's private file
 * (PROTOCOL.md 4.8).
 *
 * The table is data, not code. Its default is packaging/languages.conf, compiled into boxd; a box
 * image overrides it with /etc/boxd/languages.conf and then the file named by the environment
 * variable BOXD_LANGUAGES. Both are read once, by code_init, at the first request that needs the
 * table (`code` or `info`); a bad line is logged and skipped, never fatal.
 *
 * Availability is decided "right now" at each request: the entry's program is searched in the
 * PATH the run would have (stat and access, no process). Two things need a process, the
 * `version=` command (for info) and the `probe=` command (for entries that need one). Each is
 * an internal run (run.h): started through run_start like every run (the spawner thread,
 * seccomp, a cgroup of its own, the runs' user, rlimits, oom_score_adj), never on the loop's
 * thread, killed with its whole tree at CODE_PROBE_MS or when its main process exits, at most
 * CODE_PROBES_MAX at once, at most once per interpreter binary (cached by device, inode, size
 * and mtime, CODE_CACHE_MAX results). A request that needs a result not known yet gets
 * -EINPROGRESS and is held (code_hold) until the probes end, at most CODE_HOLD_MS; then it is
 * dispatched again (request_retry) and what is still unknown counts as failed. code_warm starts
 * the default PATH's probes just after start-up, so that requests find the cache warm.
 *
 * Ownership: the table hangs off a->code, is made by code_init and freed by code_destroy (called
 * at teardown). Entries returned by code_resolve stay valid until code_destroy. */
#ifndef BOXD_CODE_H
#define BOXD_CODE_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent.h"

/* Largest snippet a `code` request may carry (limits.max_code); larger is `too_large`. */
#define CODE_MAX_BYTES (256u * 1024u)
/* Longest language name a request may give. */
#define CODE_LANG_MAX 32u
/* The override files. */
#define CODE_SYSTEM_TABLE "/etc/boxd/languages.conf"
#define CODE_TABLE_ENV "BOXD_LANGUAGES"
/* Bounds on the version and probe commands (see above). */
#define CODE_PROBE_MS 400u      /* one probe's deadline; then its tree is killed */
#define CODE_PROBES_MAX 4u      /* probes running at once */
#define CODE_CACHE_MAX 64u      /* results kept, and probes queued */
#define CODE_HOLD_MS 1000u      /* the longest a request waits for probes */
#define CODE_HELD_MAX 64u       /* requests waiting for probes (more: `limit`) */
#define CODE_HELD_BYTES (8u * 1024u * 1024u) /* and their frames' bytes */
/* Entries in the whole table. */
#define CODE_MAX_LANGS 128u
/* Per entry. */
#define CODE_MAX_WORDS 32u
#define CODE_MAX_ALIASES 8u
#define CODE_MAX_ENV 8u

struct msg_out;
struct code_lang;
struct identity;

/* A language chosen for a request: the entry and the interpreter found for it. */
struct code_choice {
    const struct code_lang *lang;
    char program[PATH_MAX]; /* absolute path of the interpreter */
};

/* The snippet written for a run, and the argv and environment that run it. */
struct code_prep {
    char *tmpdir;                       /* heap; owned here until handed to the run */
    char *argv[CODE_MAX_WORDS + 1];     /* into strings (and choice->program) */
    char *env[CODE_MAX_ENV + 1];        /* "K=V", borrowed from the table */
    size_t n_env;
    char desc[CODE_LANG_MAX + 64];      /* what `list` shows: "python: main.py" */
    char *strings;
};

/* Loads the table into a->code if it is not loaded yet. Returns 0, or -ENOMEM (a->code stays
 * NULL and the next request tries again). */
int code_init(struct agent *a);
/* Loads the table and starts the probe and version commands of every interpreter found in the
 * default PATH, so that the cache is warm before the first request (called once, just after
 * the agent is ready). Never waits for them. */
void code_warm(struct agent *a);
/* Frees a->code (safe when it was never made), after the loop has closed its handles. For the
 * agent's teardown. */
void code_destroy(struct agent *a);
/* At teardown, before the loop's last run: closes the probe timer. */
void code_close(struct agent *a);

/* Finds the language a request names (a name or an alias, any case) and an interpreter for it in
 * path (the run's PATH). Returns 0 and fills *out; -ENOENT when no such language exists or none
 * of its programs is found here (the caller lists code_available); -ENOMEM; -EINPROGRESS when,
 * with wait, the entry to use depends on a probe not done yet (it has been started: hold the
 * request). Without wait, a probe not done counts as failed. */
int code_resolve(struct agent *a, const char *name, size_t len, const char *path, bool wait,
                 struct code_choice *out);

/* The names of the languages usable with path (borrowed from the table). */
struct code_names {
    const char *list[CODE_MAX_LANGS];
    unsigned n;
};
/* Fills ns. Returns 0, or -EINPROGRESS when, with wait, some language's probe is not done yet
 * (started: hold the request). */
int code_available(struct agent *a, const char *path, bool wait, struct code_names *ns);
/* Writes them as a msgpack array (`available`). */
void code_put_available(struct msg_out *o, const struct code_names *ns);
/* The same names as one comma-separated string for messages, into buf ("none" for none). */
void code_available_text(const struct code_names *ns, char *buf, size_t size);
/* 0 when everything info's `languages` shows for the default PATH is known; -EINPROGRESS when,
 * with wait, a probe or version command it needs is not done (started: hold the request). */
int code_languages_ready(struct agent *a, bool wait);
/* Writes info's `languages`: [{name, aliases, path, version, file}] for those usable now with
 * the runs' default PATH, from what is known (a version not known yet is nil). */
void code_put_languages(struct msg_out *o, struct agent *a);

/* Holds a request (its frame body, copied) until the probes it needs end, or deadline_ns
 * (CLOCK_MONOTONIC); then request_retry dispatches it again. Returns 0; -ENOBUFS when
 * CODE_HELD_MAX requests or CODE_HELD_BYTES are held (answer `limit`); -ENOMEM. */
int code_hold(struct agent *a, uint64_t conn_no, const uint8_t *body, size_t len,
              uint64_t deadline_ns);

/* Modes of the snippet's directory and file (both the agent's, group the run's: code.c). */
#define CODE_DIR_MODE 0750
#define CODE_FILE_MODE 0440

/* Makes the run's private directory (mkdtemp under /tmp: the agent's, group the run's gid,
 * mode CODE_DIR_MODE), writes the snippet in it (O_CREAT|O_EXCL|O_NOFOLLOW, the agent's, group
 * the run's gid, mode CODE_FILE_MODE) and fills p with the argv. The run can read its snippet
 * but neither it nor any other run can change, replace or add to it. Returns 0, or a negative
 * errno with nothing left behind. On success the caller hands p->tmpdir to the run (or removes
 * it with code_dir_remove) and then calls code_prep_free. */
int code_prepare(const struct code_choice *c, const struct identity *id, const char *code,
                 size_t len, struct code_prep *p);
void code_prep_free(struct code_prep *p);

/* Removes dir and everything in it without following symlinks, to a bounded depth and entry
 * count. Logs what it could not remove, with the run id. Never fails the caller. */
void code_dir_remove(const char *dir, const char *run_id);

#endif
