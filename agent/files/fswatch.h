/* file_watch (PROTOCOL.md 12.7). */
#ifndef BOXD_FILES_FSWATCH_H
#define BOXD_FILES_FSWATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "fsworker.h"

struct agent;
struct reqtag;
struct fswatches;

#define FILES_MAX_WATCHES 64u            /* watches at once, all connections */
#define FILES_WATCH_DIRS 8192u           /* directories one recursive watch covers at most */
#define FILES_WATCH_QUEUE (1024u * 1024u) /* unsent bytes past which a watch stops reading */
#define FILES_WATCH_PENDING 64u          /* new directories queued to be watched, per read */

struct fswatches *fswatches_new(struct agent *a, struct fsworker *w);
/* Starts a watch; its `file_watching` reply (or error) is sent when the I/O thread has added
 * it. Returns 0 with *id, -ENOSPC past FILES_MAX_WATCHES, -ENOMEM, or inotify_init1's errno. */
int fswatch_start(struct fswatches *ws, uint64_t conn_no, const struct reqtag *req,
                  const char *path, bool recursive, const struct fscred *cred, uint64_t *id);
/* Returns 0, or -ENOENT when connection conn_no has no watch id. */
int fswatch_stop(struct fswatches *ws, uint64_t conn_no, uint64_t id);
/* Closes watches of closed connections and resumes paused ones (from the files tick). */
void fswatches_tick(struct fswatches *ws);
/* After the I/O threads have stopped. */
void fswatches_free(struct fswatches *ws);

/* files.c's errno reply, shared. */
void files_send_errno(struct agent *a, uint64_t conn_no, const struct reqtag *req, int err,
                      const char *what, const char *path);

#endif
