/* The line splitter: the bytes of one output stream, cut into records. A record is one line
 * (with its '\n'), or a piece of max_line bytes of a longer one, or what is left unterminated
 * when the splitter is flushed (a pause in the output, EOF). A raw splitter (a terminal's
 * output: PROTOCOL.md 4.9) does not look for lines: each feed is emitted at once, cut every
 * max_line bytes, and nothing is ever held. Pure: no loop, no run; records go
 * to the emit callback, and the memory of the partial-line buffer is counted in *held.
 * Unit-tested in tests/agent/test_agent_units.c. */
#ifndef BOXD_LINESPLIT_H
#define BOXD_LINESPLIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A partial-line buffer larger than this is released once flushed: an idle stream keeps none. */
#define LINESPLIT_KEEP 4096u
/* The first size of the partial-line buffer; it doubles up to max_line. */
#define LINESPLIT_MIN 256u

typedef void (*linesplit_emit_cb)(void *arg, uint64_t ts, const char *data, size_t len);

struct linesplit {
    char *buf;          /* the unterminated line so far, or NULL */
    uint32_t len, cap;
    uint32_t max;       /* max_line: no record is longer */
    bool raw;           /* no line splitting (linesplit_set_raw) */
    uint64_t *held;     /* NULL, or a sum the buffer's capacity is added to */
    linesplit_emit_cb emit;
    void *arg;
};

void linesplit_init(struct linesplit *s, uint32_t max_line, uint64_t *held, linesplit_emit_cb emit,
                    void *arg);
/* Makes s raw: records are the bytes as fed, in pieces of at most max_line. */
void linesplit_set_raw(struct linesplit *s);
/* Consumes n bytes read at ts: every complete line, and every max_line piece, is emitted now;
 * an unterminated tail is kept (when its buffer cannot grow, it is emitted as a piece instead:
 * nothing is lost). */
void linesplit_feed(struct linesplit *s, uint64_t ts, const char *d, size_t n);
/* Emits the unterminated tail, if any, as a record. */
void linesplit_flush(struct linesplit *s, uint64_t ts);
/* Frees the buffer (its bytes are not emitted). Idempotent. */
void linesplit_release(struct linesplit *s);

#endif
