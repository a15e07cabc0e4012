/* A run's retained log: output records (one line, or a piece of one) kept in chunks, capped in
 * data bytes. When the cap is passed the oldest chunk is dropped and counted, never silently
 * lost. The memory the chunks hold (data, a header per record, slack) is counted in bytes and
 * in *total, which the caller bounds across logs (runlog_drop_oldest).
 *
 * Records are numbered from 0 without gaps. Each chunk holds records back to back: a fixed
 * header (struct rl_hdr) then the data. Lookup by seq walks the chunk list, then one chunk. */
#ifndef BOXD_RUNLOG_H
#define BOXD_RUNLOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rl_chunk;

struct runlog {
    struct rl_chunk *head, *tail;
    uint64_t first_seq; /* oldest retained record */
    uint64_t next_seq;  /* seq the next record will get */
    uint64_t first_cost; /* cost (below) of everything before first_seq */
    uint64_t end_cost;   /* cost of everything ever appended */
    uint64_t protect_seq; /* records from this seq on are owed to a follower: never dropped */
    uint64_t data;      /* data bytes of the retained records: what cap limits */
    uint64_t bytes;     /* memory held by chunks */
    uint64_t *total;    /* NULL, or a sum over many logs that bytes is added to */
    uint64_t cap;       /* data bytes kept at most (the last chunk is always kept) */
    uint64_t dropped_records, dropped_bytes;
    uint64_t gen; /* changes when chunks move or all go (shrink, destroy): older cursors are stale */
};

/* A record's cost is its data length plus RL_REC_COST: about the memory it takes, so flow
 * control measured in cost bounds memory however short the lines are. */
#define RL_REC_COST 24u

struct rl_rec {
    uint64_t seq, ts_ns, cost; /* cost: cumulative cost before this record */
    int stream;
    bool utf8; /* data is valid UTF-8 (sent as str, else bin) */
    const char *data;
    uint32_t len;
};

/* A read position. It stays valid across appends as long as its chunk is retained (retention
 * drops from the head, so: its chunk's first seq is not before the log's) and the log's gen is
 * the one it was taken at; a cursor at the end then reads the records appended since. */
struct rl_cursor {
    const struct rl_chunk *chunk;
    uint32_t pos; /* byte position inside the chunk */
    uint64_t seq, cost;
    uint64_t chunk_seq; /* the chunk's first seq */
    uint64_t gen;
};

void runlog_init(struct runlog *l, uint64_t cap);
void runlog_destroy(struct runlog *l);

/* Appends one record. Returns 0 or -ENOMEM (nothing appended). len must be <= UINT32_MAX.
 * Past the cap (in data bytes) the oldest chunks are dropped, except the last one and those
 * holding records >= protect_seq. */
int runlog_append(struct runlog *l, uint64_t ts_ns, int stream, const char *data, uint32_t len);

/* The oldest chunk may go: it is not the last one and holds no record >= protect_seq. */
bool runlog_can_drop(const struct runlog *l);
/* Drops the oldest chunk when runlog_can_drop, counting its records as dropped (for a bound
 * over many logs). Returns the memory released, 0 if nothing could go. */
uint64_t runlog_drop_oldest(struct runlog *l);

/* Positions c at the first retained record with seq >= seq. Walks the chunk list and one
 * chunk: a reader that goes on from where it stopped keeps its cursor instead (runlog_valid). */
void runlog_seek(const struct runlog *l, uint64_t seq, struct rl_cursor *c);

/* c is still valid for l and positioned at seq. */
static inline bool runlog_valid(const struct runlog *l, const struct rl_cursor *c, uint64_t seq)
{
    return c->chunk != NULL && c->gen == l->gen && c->chunk_seq >= l->first_seq && c->seq == seq;
}

/* Reads the record at c and advances. Returns false at the end of the log, where c stays: a
 * later call reads what was appended meanwhile. */
bool runlog_next(const struct runlog *l, struct rl_cursor *c, struct rl_rec *r);

/* Releases slack in the last chunk (for a run that will write no more). */
void runlog_shrink(struct runlog *l);

#endif
