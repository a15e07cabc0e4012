/* JSON writer for boxctl. See json.h for the contract. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "json.h"

#include "codec.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void json_init(struct json *j, size_t max)
{
    memset(j, 0, sizeof *j);
    j->max = max;
    j->first[0] = true;
}

void json_destroy(struct json *j)
{
    free(j->buf);
    j->buf = NULL;
    j->len = j->cap = 0;
}

/* Makes room for n more bytes. Returns false (and records why) when it cannot. */
static bool reserve(struct json *j, size_t n)
{
    if (j->err != 0)
        return false;
    if (n > j->max || j->len > j->max - n) {
        j->err = -EMSGSIZE;
        return false;
    }
    if (j->len + n <= j->cap)
        return true;
    size_t cap = j->cap != 0 ? j->cap : 256;
    while (cap < j->len + n)
        cap = cap > SIZE_MAX / 2 ? j->len + n : cap * 2;
    if (cap > j->max)
        cap = j->max;
    char *p = realloc(j->buf, cap);
    if (p == NULL) {
        j->err = -ENOMEM;
        return false;
    }
    j->buf = p;
    j->cap = cap;
    return true;
}

static void put(struct json *j, const char *s, size_t n)
{
    if (!reserve(j, n))
        return;
    memcpy(j->buf + j->len, s, n);
    j->len += n;
}

static void putc1(struct json *j, char c)
{
    put(j, &c, 1);
}

/* Separator before a value: none after a key or for the first element, else a comma. */
static void before_value(struct json *j)
{
    if (j->key_pending) {
        j->key_pending = false;
        return;
    }
    if (j->depth > 0 && !j->first[j->depth])
        putc1(j, ',');
    j->first[j->depth] = false;
}

static void open_container(struct json *j, char c)
{
    before_value(j);
    if (j->depth >= JSON_MAX_DEPTH) {
        if (j->err == 0)
            j->err = -EOVERFLOW;
        return;
    }
    putc1(j, c);
    j->depth++;
    j->first[j->depth] = true;
}

static void close_container(struct json *j, char c)
{
    if (j->depth == 0) {
        if (j->err == 0)
            j->err = -EINVAL;
        return;
    }
    putc1(j, c);
    j->depth--;
}

void json_object_begin(struct json *j)
{
    open_container(j, '{');
}

void json_object_end(struct json *j)
{
    close_container(j, '}');
}

void json_array_begin(struct json *j)
{
    open_container(j, '[');
}

void json_array_end(struct json *j)
{
    close_container(j, ']');
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (s[0] >= 0x80), or 0 when it is
 * ill-formed; then *skip is the length of its maximal ill-formed prefix (at least 1), which
 * becomes a single U+FFFD. The ranges are those of Unicode's table 3-7. */
static size_t utf8_seq(const uint8_t *s, size_t n, size_t *skip)
{
    uint8_t c = s[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if (c >= 0xe0 && c <= 0xef)
        need = 2, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4)
        need = 3, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else {
        *skip = 1;
        return 0;
    }
    size_t k = 1;
    while (k <= need && k < n) {
        uint8_t b = s[k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf))
            break;
        k++;
    }
    if (k == need + 1)
        return k;
    *skip = k;
    return 0;
}

static void put_escaped(struct json *j, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *s = (const uint8_t *)str;
    /* Valid text (the common case) needs no decoding: bytes >= 0x80 are copied as they are. */
    bool valid = utf8_valid(s, n);
    size_t i = 0;

    putc1(j, '"');
    while (i < n && j->err == 0) {
        /* Copy the longest run that needs no escaping in one go. */
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] != '"' && s[run] != '\\' && s[run] != 0x7f &&
               (s[run] < 0x80 || valid))
            run++;
        if (run > i) {
            put(j, str + i, run - i);
            i = run;
            continue;
        }
        uint8_t c = s[i];
        if (c >= 0x80) {
            size_t skip = 0;
            size_t len = utf8_seq(s + i, n - i, &skip);
            if (len != 0) {
                put(j, str + i, len);
                i += len;
            } else {
                put(j, "\xef\xbf\xbd", 3); /* U+FFFD */
                i += skip;
            }
            continue;
        }
        switch (c) {
        case '"': put(j, "\\\"", 2); break;
        case '\\': put(j, "\\\\", 2); break;
        case '\b': put(j, "\\b", 2); break;
        case '\f': put(j, "\\f", 2); break;
        case '\n': put(j, "\\n", 2); break;
        case '\r': put(j, "\\r", 2); break;
        case '\t': put(j, "\\t", 2); break;
        default: {
            /* Other control characters, and DEL so that terminals never see it raw. */
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
            put(j, u, sizeof u);
        }
        }
        i++;
    }
    putc1(j, '"');
}

void json_keyn(struct json *j, const char *key, size_t n)
{
    before_value(j);
    put_escaped(j, key, n);
    putc1(j, ':');
    j->key_pending = true;
}

void json_key(struct json *j, const char *key)
{
    json_keyn(j, key, strlen(key));
}

void json_string(struct json *j, const char *s, size_t n)
{
    before_value(j);
    put_escaped(j, s, n);
}

void json_cstr(struct json *j, const char *s)
{
    json_string(j, s, strlen(s));
}

static void put_number(struct json *j, const char *s, int n)
{
    before_value(j);
    if (n > 0)
        put(j, s, (size_t)n);
}

void json_int(struct json *j, int64_t v)
{
    char b[32];
    put_number(j, b, snprintf(b, sizeof b, "%" PRId64, v));
}

void json_uint(struct json *j, uint64_t v)
{
    char b[32];
    put_number(j, b, snprintf(b, sizeof b, "%" PRIu64, v));
}

void json_double(struct json *j, double v)
{
    if (!isfinite(v)) {
        json_null(j);
        return;
    }
    char b[40];
    put_number(j, b, snprintf(b, sizeof b, "%.17g", v));
}

void json_bool(struct json *j, bool v)
{
    before_value(j);
    if (v)
        put(j, "true", 4);
    else
        put(j, "false", 5);
}

void json_null(struct json *j)
{
    before_value(j);
    put(j, "null", 4);
}

void json_newline(struct json *j)
{
    putc1(j, '\n');
}

int json_flush(struct json *j, int fd)
{
    if (j->err != 0)
        return j->err;
    size_t done = 0;
    while (done < j->len) {
        ssize_t n = write(fd, j->buf + done, j->len - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        done += (size_t)n;
    }
    j->len = 0;
    return 0;
}
