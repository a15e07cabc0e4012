/* A small JSON writer for boxctl's --json output.
 *
 * struct json is caller-allocated; it owns a heap buffer that collects the text until
 * json_flush() writes it out. Commas and colons are placed automatically from the nesting, so a
 * caller writes keys and values in order and nothing else. The output is compact (no spaces).
 *
 * Strings are byte strings: `"`, `\` and every control character are escaped (\n, \t, ...,
 * \u00XX), valid UTF-8 is copied unchanged, and each maximal ill-formed subsequence (as Unicode
 * and Python's errors="replace" define it) becomes one U+FFFD. So output from a run is always
 * valid JSON, whatever bytes it wrote.
 *
 * The writer functions return nothing: the first failure (out of memory, the buffer cap, nesting
 * deeper than JSON_MAX_DEPTH) is kept in `err` and reported by json_flush(); later writes are
 * ignored.
 */
#ifndef BOXD_JSON_H
#define BOXD_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64

struct json {
    char *buf;         /* owned; the text not yet flushed */
    size_t len;
    size_t cap;
    size_t max;        /* hard cap on buffered text, set by json_init */
    int err;           /* first error: -ENOMEM, -EMSGSIZE (over max), -EOVERFLOW (depth) */
    unsigned depth;    /* open objects and arrays */
    bool key_pending;  /* a key was written: its value needs no comma */
    bool first[JSON_MAX_DEPTH + 1]; /* no element yet in the container at this depth */
};

/* Prepares an empty writer that buffers at most max bytes between flushes. */
void json_init(struct json *j, size_t max);
/* Releases the buffer. */
void json_destroy(struct json *j);

void json_object_begin(struct json *j);
void json_object_end(struct json *j);
void json_array_begin(struct json *j);
void json_array_end(struct json *j);

/* Writes a key (escaped like any string) inside an object; the next call writes its value. */
void json_key(struct json *j, const char *key);
void json_keyn(struct json *j, const char *key, size_t n);

/* Values. json_string takes n arbitrary bytes (see above); json_cstr a NUL-terminated string. */
void json_string(struct json *j, const char *s, size_t n);
void json_cstr(struct json *j, const char *s);
void json_int(struct json *j, int64_t v);
void json_uint(struct json *j, uint64_t v);
/* NaN and infinities are not JSON: they are written as null. */
void json_double(struct json *j, double v);
void json_bool(struct json *j, bool v);
void json_null(struct json *j);

/* Ends a top-level value with "\n" (one JSON text per line, JSON Lines). */
void json_newline(struct json *j);

/* Writes the buffered text to fd (EINTR and short writes handled) and empties the buffer; the
 * nesting state is kept, so a long array can be streamed in pieces. Returns 0, the writer's
 * first error, or -errno from write(). */
int json_flush(struct json *j, int fd);

#endif
