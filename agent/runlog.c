#include "runlog.h"

#include "alloc.h"
#include "codec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Chunks start small so a thousand quiet runs cost little, and grow to this size. */
#define RL_CHUNK_MIN 1024u
#define RL_CHUNK_MAX (64u * 1024u)

struct rl_hdr {
    uint64_t ts_ns;
    uint32_t len;
    uint16_t stream;
    uint16_t utf8; /* the data is valid UTF-8: decided once, here, not per follower */
};

struct rl_chunk {
    struct rl_chunk *next;
    uint64_t first_seq, first_cost;
    uint32_t n, used, cap;
    uint32_t data_bytes;
    char buf[];
};

static void account(struct runlog *l, int64_t delta)
{
    l->bytes += (uint64_t)delta;
    if (l->total)
        *l->total += (uint64_t)delta;
}

void runlog_init(struct runlog *l, uint64_t cap)
{
    memset(l, 0, sizeof *l);
    l->cap = cap;
    l->protect_seq = UINT64_MAX;
}

void runlog_destroy(struct runlog *l)
{
    struct rl_chunk *c = l->head;
    while (c) {
        struct rl_chunk *next = c->next;
        free(c);
        c = next;
    }
    l->head = l->tail = NULL;
    l->data = 0;
    l->gen++;
    account(l, -(int64_t)l->bytes);
}

static void drop_head(struct runlog *l)
{
    struct rl_chunk *c = l->head;
    l->head = c->next;
    if (l->head == NULL)
        l->tail = NULL;
    l->dropped_records += c->n;
    l->dropped_bytes += c->data_bytes;
    l->data -= c->data_bytes;
    l->first_seq = c->first_seq + c->n;
    l->first_cost = c->first_cost + c->data_bytes + (uint64_t)c->n * RL_REC_COST;
    account(l, -(int64_t)(sizeof *c + c->cap));
    free(c);
}

int runlog_append(struct runlog *l, uint64_t ts_ns, int stream, const char *data, uint32_t len)
{
    size_t need = sizeof(struct rl_hdr) + len;
    need = (need + 7u) & ~(size_t)7u;
    struct rl_chunk *t = l->tail;
    if (t == NULL || t->cap - t->used < need) {
        /* Chunks grow, but stay a quarter of the cap at most: retention drops whole chunks,
         * so this keeps what is retained close to the cap. */
        size_t max = RL_CHUNK_MAX;
        if (max > l->cap / 4)
            max = (size_t)(l->cap / 4);
        size_t cap = t ? (size_t)t->cap * 2 : RL_CHUNK_MIN;
        if (cap > max)
            cap = max;
        if (cap < need)
            cap = need;
        struct rl_chunk *c = boxd_malloc(sizeof *c + cap);
        if (c == NULL)
            return -ENOMEM;
        c->next = NULL;
        c->first_seq = l->next_seq;
        c->first_cost = l->end_cost;
        c->n = c->used = c->data_bytes = 0;
        c->cap = (uint32_t)cap;
        if (t)
            t->next = c;
        else
            l->head = c;
        l->tail = t = c;
        account(l, (int64_t)(sizeof *c + cap));
    }
    struct rl_hdr h = {.ts_ns = ts_ns,
                       .len = len,
                       .stream = (uint16_t)stream,
                       .utf8 = utf8_valid((const uint8_t *)data, len)};
    memcpy(t->buf + t->used, &h, sizeof h);
    memcpy(t->buf + t->used + sizeof h, data, len);
    t->used += (uint32_t)need;
    t->n++;
    t->data_bytes += len;
    l->data += len;
    l->next_seq++;
    l->end_cost += len + RL_REC_COST;
    /* Keep the data within the cap, always keeping the last chunk, and never dropping what a
     * follower is still owed (flow control keeps that part small). */
    while (l->data > l->cap && runlog_can_drop(l))
        drop_head(l);
    return 0;
}

bool runlog_can_drop(const struct runlog *l)
{
    const struct rl_chunk *h = l->head;
    return h != NULL && h != l->tail && h->first_seq + h->n <= l->protect_seq;
}

uint64_t runlog_drop_oldest(struct runlog *l)
{
    if (!runlog_can_drop(l))
        return 0;
    uint64_t before = l->bytes;
    drop_head(l);
    return before - l->bytes;
}

void runlog_seek(const struct runlog *l, uint64_t seq, struct rl_cursor *c)
{
    const struct rl_chunk *k = l->head;
    while (k && k->next && k->next->first_seq <= seq)
        k = k->next;
    c->chunk = k;
    c->pos = 0;
    c->gen = l->gen;
    c->chunk_seq = k ? k->first_seq : 0;
    if (k == NULL || seq < k->first_seq) {
        c->seq = l->first_seq;
        c->cost = l->first_cost;
        return;
    }
    c->seq = k->first_seq;
    c->cost = k->first_cost;
    while (c->seq < seq && c->pos < k->used) {
        struct rl_hdr h;
        memcpy(&h, k->buf + c->pos, sizeof h);
        c->pos += (uint32_t)((sizeof h + h.len + 7u) & ~(size_t)7u);
        c->seq++;
        c->cost += h.len + RL_REC_COST;
    }
}

bool runlog_next(const struct runlog *l, struct rl_cursor *c, struct rl_rec *r)
{
    (void)l;
    const struct rl_chunk *k = c->chunk;
    if (k == NULL)
        return false;
    while (c->pos >= k->used) {
        if (k->next == NULL)
            return false; /* stays at the end of the last chunk */
        k = k->next;
        c->chunk = k;
        c->chunk_seq = k->first_seq;
        c->pos = 0;
    }
    struct rl_hdr h;
    memcpy(&h, k->buf + c->pos, sizeof h);
    r->seq = c->seq;
    r->ts_ns = h.ts_ns;
    r->cost = c->cost;
    r->stream = (int)h.stream;
    r->utf8 = h.utf8 != 0;
    r->data = k->buf + c->pos + sizeof h;
    r->len = h.len;
    c->pos += (uint32_t)((sizeof h + h.len + 7u) & ~(size_t)7u);
    c->seq++;
    c->cost += h.len + RL_REC_COST;
    return true;
}

void runlog_shrink(struct runlog *l)
{
    struct rl_chunk *t = l->tail;
    if (t == NULL || t->used == t->cap)
        return;
    /* Find the predecessor to relink after realloc. */
    struct rl_chunk *prev = NULL;
    if (l->head != t)
        for (prev = l->head; prev->next != t; prev = prev->next)
            ;
    struct rl_chunk *n = realloc(t, sizeof *t + t->used);
    if (n == NULL)
        return; /* keeping the slack is harmless */
    account(l, -(int64_t)(n->cap - n->used));
    n->cap = n->used;
    l->gen++;
    if (prev)
        prev->next = n;
    else
        l->head = n;
    l->tail = n;
}
