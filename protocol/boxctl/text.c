/* boxctl: messages on stderr, bounded buffers, byte strings, number and run-id parsing. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One line on stderr, "boxctl: " first, written with a single write() so that concurrent
 * output does not split it. Messages are short: a longer one is cut. */
void errmsg(const char *fmt, ...)
{
    char buf[2048];
    int n = snprintf(buf, sizeof buf, "boxctl: ");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    size_t len = (size_t)n + (size_t)m;
    if (len > sizeof buf - 2)
        len = sizeof buf - 2;
    buf[len++] = '\n';
    util_write_all(STDERR_FILENO, buf, len);
}

void sbuf_init(struct sbuf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void sbuf_free(struct sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void sbuf_add(struct sbuf *b, const void *s, size_t n)
{
    if (n > b->max - b->len) {
        n = b->max - b->len;
        b->over = true;
    }
    if (n == 0)
        return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap != 0 ? b->cap : 1024;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > b->max)
            cap = b->max;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->nomem = b->over = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        sbuf_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (big == NULL) {
        b->nomem = b->over = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sbuf_add(b, big, (size_t)n);
    free(big);
}

/* Parses a decimal unsigned integer (no sign, no spaces). Returns 0 or -EINVAL. */
int parse_u64(const char *s, uint64_t *v)
{
    if (s[0] < '0' || s[0] > '9')
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -EINVAL;
    *v = x;
    return 0;
}
bool bytes_is(struct bytes b, const char *s)
{
    size_t n = strlen(s);
    return b.p != NULL && b.n == n && memcmp(b.p, s, n) == 0;
}

bool get_bytes(const msgpack_object *map, const char *key, struct bytes *b)
{
    if (msg_get_bytes(map, key, &b->p, &b->n) == 0)
        return true;
    b->p = NULL;
    b->n = 0;
    return false;
}

/* Text from the agent going to a terminal in a message: control characters become '?'. */
void sanitize(char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            s[i] = '?';
}

/* Copies up to cap-1 bytes of b into dst as a C string. */
void bytes_cstr(struct bytes b, char *dst, size_t cap)
{
    size_t n = b.n < cap - 1 ? b.n : cap - 1;
    if (n > 0 && b.p != NULL)
        memcpy(dst, b.p, n);
    dst[n] = '\0';
}
bool valid_run_id(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > RUN_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return true;
}


void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000u), (long)(ms % 1000u) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}
