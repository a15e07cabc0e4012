/* The line splitter (linesplit.h). */
#include "linesplit.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

void linesplit_init(struct linesplit *s, uint32_t max_line, uint64_t *held, linesplit_emit_cb emit,
                    void *arg)
{
    memset(s, 0, sizeof *s);
    s->max = max_line ? max_line : 1;
    s->held = held;
    s->emit = emit;
    s->arg = arg;
}

static void put(struct linesplit *s, uint64_t ts, const char *d, size_t n)
{
    if (s->len + n > s->cap) {
        uint32_t cap = s->cap ? s->cap : LINESPLIT_MIN;
        while (cap < s->len + n)
            cap *= 2;
        if (cap > s->max)
            cap = s->max;
        char *nb = boxd_realloc(s->buf, cap);
        if (nb == NULL) {
            /* Emit what is held and the new bytes as pieces instead of keeping them. */
            if (s->len)
                s->emit(s->arg, ts, s->buf, s->len);
            s->emit(s->arg, ts, d, n);
            s->len = 0;
            return;
        }
        s->buf = nb;
        if (s->held)
            *s->held += cap - s->cap;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, d, n);
    s->len += (uint32_t)n;
}

void linesplit_flush(struct linesplit *s, uint64_t ts)
{
    if (s->len == 0)
        return;
    s->emit(s->arg, ts, s->buf, s->len);
    s->len = 0;
    if (s->cap > LINESPLIT_KEEP)
        linesplit_release(s);
}

void linesplit_release(struct linesplit *s)
{
    if (s->held)
        *s->held -= s->cap;
    free(s->buf);
    s->buf = NULL;
    s->len = s->cap = 0;
}

/* Consumes seg bytes that end a line when complete (the last byte is '\n'), or are the
 * unterminated tail of a read when not. */
static void segment(struct linesplit *s, uint64_t ts, const char *d, size_t seg, bool complete)
{
    size_t max = s->max;
    if (s->len) {
        size_t take = seg < max - s->len ? seg : max - s->len;
        put(s, ts, d, take);
        d += take;
        seg -= take;
        if (s->len >= max || (seg == 0 && complete))
            linesplit_flush(s, ts);
        if (seg == 0)
            return;
    }
    while (seg > max) {
        s->emit(s->arg, ts, d, max);
        d += max;
        seg -= max;
    }
    if (complete || seg == max)
        s->emit(s->arg, ts, d, seg);
    else
        put(s, ts, d, seg);
}

void linesplit_set_raw(struct linesplit *s)
{
    s->raw = true;
}

void linesplit_feed(struct linesplit *s, uint64_t ts, const char *d, size_t n)
{
    while (s->raw && n > 0) {
        size_t piece = n < s->max ? n : s->max;
        s->emit(s->arg, ts, d, piece);
        d += piece;
        n -= piece;
    }
    while (n > 0) {
        const char *nl = memchr(d, '\n', n);
        size_t seg = nl ? (size_t)(nl - d) + 1 : n;
        segment(s, ts, d, seg, nl != NULL);
        d += seg;
        n -= seg;
    }
}
