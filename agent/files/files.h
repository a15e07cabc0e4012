/* Files in and out of a box (PROTOCOL.md section 12): uploads (streamed, atomic, checked,
 * resumable), downloads (streamed, flow-controlled), stat, list, mkdir, remove, rename, chmod.
 *
 * The loop side lives here: decoding requests, the table of uploads, the downloads' flow
 * control, encoding replies. Every file system call is made on the I/O threads (fsworker.h) as
 * the acting user (fsops.h). The hooks into the rest of the agent are: files_start and
 * files_stop (main.c), files_request (request.c's dispatch), files_put_limits and the `files`
 * capability (hello and info). */
#ifndef BOXD_FILES_FILES_H
#define BOXD_FILES_FILES_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct agent;
struct conn;
struct msg_out;
struct reqtag;

/* Named limits, reported in hello.limits. */
#define FILES_CHUNK (512u * 1024u)         /* data bytes per file_chunk event */
#define FILES_WINDOW (16u * 1024u * 1024u) /* upload bytes accepted and not yet written */
#define FILES_MAX_UPLOADS 64u              /* uploads held at once, live or kept for resume */
#define FILES_UPLOAD_TTL_MS 600000u        /* a kept upload nobody writes to is dropped then */
#define FILES_LIST_MAX 100000u             /* entries in one file_list reply */
#define FILES_MAX_DOWNLOADS 64u            /* file_read streams at once */

/* Starts the I/O threads and the timer. Returns 0 or -ENOMEM. */
int files_start(struct agent *a);
/* Stops the threads, drops queued work and closes the handles. The temp files of unfinished
 * uploads are left where they are (removing them as root could remove another user's file that
 * took the name in a sticky directory); PROTOCOL.md 12.2 says so. */
void files_stop(struct agent *a);
/* The I/O threads' tids (at most max into out), for the seccomp filters to guard as they
 * guard boxd's own pid (sandbox.h). Returns how many. */
size_t files_tids(const struct agent *a, pid_t *out, size_t max);

/* Handles a request whose type is one of the file requests. Returns 1 when it was one (and
 * it has been answered), 0 when it was not (the caller goes on), -1 when it was one but the
 * connection has not passed hello (the caller answers need_hello). */
int files_request(struct conn *c, const msgpack_object *m, const struct reqtag *req,
                  const char *type, size_t tlen);

/* The I/O threads (fsworker.h), for other requests that act as a user (tunnel.h's connects);
 * NULL when they could not be started. */
struct fsworker *files_worker(const struct agent *a);

/* The files' limits, into an open `limits` map. */
void files_put_limits(struct msg_out *o);

#endif
