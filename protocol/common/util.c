/* Small I/O helpers. See util.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* EAGAIN on a non-blocking fd: wait until it takes more. Returns 0 or -errno. */
static int wait_writable(int fd)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, -1) >= 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

int util_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int r = wait_writable(fd);
                if (r < 0)
                    return r;
                continue;
            }
            return -errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int util_writev_all(int fd, struct iovec *iov, int n)
{
    while (n > 0 && iov[0].iov_len == 0) {
        iov++;
        n--;
    }
    while (n > 0) {
        ssize_t w = writev(fd, iov, n < IOV_MAX ? n : IOV_MAX);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int r = wait_writable(fd);
                if (r < 0)
                    return r;
                continue;
            }
            return -errno;
        }
        size_t done = (size_t)w;
        while (n > 0 && done >= iov[0].iov_len) {
            done -= iov[0].iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov[0].iov_base = (char *)iov[0].iov_base + done;
            iov[0].iov_len -= done;
        }
    }
    return 0;
}

int util_read_small_file(const char *path, char *buf, size_t cap, size_t *len)
{
    if (cap == 0)
        return -EINVAL;
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -errno;
    size_t have = 0;
    int r = 0;
    for (;;) {
        if (have == cap - 1) {
            /* Full: one more byte means the file is too big. */
            char extra;
            ssize_t n = read(fd, &extra, 1);
            if (n < 0 && errno == EINTR)
                continue;
            r = n < 0 ? -errno : n > 0 ? -EFBIG : 0;
            break;
        }
        ssize_t n = read(fd, buf + have, cap - 1 - have);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r = -errno;
            break;
        }
        if (n == 0)
            break;
        have += (size_t)n;
    }
    close(fd);
    buf[r == 0 ? have : 0] = '\0';
    if (len != NULL)
        *len = r == 0 ? have : 0;
    return r;
}

int util_read_fd_all(int fd, size_t max, char **buf, size_t *len)
{
    size_t cap = 4096, have = 0;
    char *p = malloc(cap);
    if (p == NULL)
        return -ENOMEM;
    for (;;) {
        if (cap - have < 2) {
            if (cap > max + 1) {
                free(p);
                return -EFBIG;
            }
            size_t ncap = cap * 2 > max + 2 ? max + 2 : cap * 2;
            char *q = realloc(p, ncap);
            if (q == NULL) {
                free(p);
                return -ENOMEM;
            }
            p = q;
            cap = ncap;
        }
        ssize_t n = read(fd, p + have, cap - have - 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            free(p);
            return e;
        }
        if (n == 0)
            break;
        have += (size_t)n;
        if (have > max) {
            free(p);
            return -EFBIG;
        }
    }
    p[have] = '\0';
    *buf = p;
    *len = have;
    return 0;
}
