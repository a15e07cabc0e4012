/* The kernel's taskstats exit records (taskstats.h). */
#include "taskstats.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/taskstats.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent.h"
#include "log.h"
#include "io.h"

#define CPULIST_MAX 256u     /* /sys/devices/system/cpu/possible, e.g. "0-63" */
#define REPLY_WAIT_MS 1000   /* start-up only: the kernel answers within the send anyway */

/* Generic netlink attribute walking over a byte range: nla_len includes the header, the next
 * attribute starts at the aligned length. */
#define GENL_HDRLEN NLMSG_ALIGN(sizeof(struct genlmsghdr))

void taskstats_init(struct taskstats_listener *t)
{
    memset(t, 0, sizeof *t);
    t->fd = -1;
}

/* Appends one attribute to the message in buf (cap bytes). Returns 0 or -EMSGSIZE. */
static int put_attr(unsigned char *buf, size_t cap, uint16_t type, const void *data, size_t len)
{
    struct nlmsghdr *nh = (struct nlmsghdr *)buf;
    size_t at = NLMSG_ALIGN(nh->nlmsg_len);
    size_t need = NLA_ALIGN(NLA_HDRLEN + len);
    if (len > UINT16_MAX - NLA_HDRLEN || at + need > cap)
        return -EMSGSIZE;
    struct nlattr na = {.nla_len = (uint16_t)(NLA_HDRLEN + len), .nla_type = type};
    memcpy(buf + at, &na, sizeof na);
    memcpy(buf + at + NLA_HDRLEN, data, len);
    memset(buf + at + NLA_HDRLEN + len, 0, need - NLA_HDRLEN - len);
    nh->nlmsg_len = (uint32_t)(at + need);
    return 0;
}

/* Sends a generic netlink request and reads its answer into buf: 0 and *len for a reply,
 * 0 and *len 0 for an ack, or a negative errno (the kernel's, for a refusal). */
static int request(int fd, uint32_t seq, unsigned char *buf, size_t cap, uint16_t type,
                   uint16_t flags, uint8_t cmd, uint8_t version, uint16_t attr, const void *data,
                   size_t dlen, size_t *len)
{
    unsigned char msg[512];
    memset(msg, 0, sizeof msg);
    struct nlmsghdr *nh = (struct nlmsghdr *)msg;
    nh->nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
    nh->nlmsg_type = type;
    nh->nlmsg_flags = (uint16_t)(NLM_F_REQUEST | flags);
    nh->nlmsg_seq = seq;
    struct genlmsghdr gh = {.cmd = cmd, .version = version};
    memcpy(msg + NLMSG_HDRLEN, &gh, sizeof gh);
    int e = put_attr(msg, sizeof msg, attr, data, dlen);
    if (e < 0)
        return e;
    struct sockaddr_nl to = {.nl_family = AF_NETLINK};
    ssize_t w;
    do
        w = sendto(fd, msg, nh->nlmsg_len, 0, (struct sockaddr *)&to, sizeof to);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        return -errno;
    /* Exit records may already arrive (after a registration): skip what is not the answer. */
    for (int tries = 0; tries < 256; tries++) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = poll(&p, 1, REPLY_WAIT_MS);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return pr < 0 ? -errno : -ETIMEDOUT;
        struct sockaddr_nl from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(fd, buf, cap, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS)
                continue;
            return -errno;
        }
        if (from.nl_pid != 0 || (size_t)n < NLMSG_HDRLEN)
            continue;
        struct nlmsghdr *rh = (struct nlmsghdr *)buf;
        if (rh->nlmsg_seq != nh->nlmsg_seq || rh->nlmsg_len > (size_t)n)
            continue;
        if (rh->nlmsg_type == NLMSG_ERROR) {
            struct nlmsgerr err;
            if (rh->nlmsg_len < NLMSG_LENGTH(sizeof err))
                return -EBADMSG;
            memcpy(&err, NLMSG_DATA(rh), sizeof err);
            *len = 0;
            return err.error; /* 0: an ack */
        }
        *len = rh->nlmsg_len;
        return 0;
    }
    return -ETIMEDOUT;
}

/* The TASKSTATS family id from a CTRL_CMD_GETFAMILY reply. */
static int family_id(const unsigned char *buf, size_t len, uint16_t *id)
{
    size_t at = NLMSG_HDRLEN + GENL_HDRLEN;
    while (at + NLA_HDRLEN <= len) {
        struct nlattr na;
        memcpy(&na, buf + at, sizeof na);
        if (na.nla_len < NLA_HDRLEN || at + na.nla_len > len)
            break;
        if ((na.nla_type & NLA_TYPE_MASK) == CTRL_ATTR_FAMILY_ID &&
            na.nla_len >= NLA_HDRLEN + sizeof *id) {
            memcpy(id, buf + at + NLA_HDRLEN, sizeof *id);
            return 0;
        }
        at += NLA_ALIGN(na.nla_len);
    }
    return -ENOENT;
}

/* The possible CPUs as the kernel lists them ("0-1", "0,2-5"), which it also parses. */
static int possible_cpus(char *out, size_t cap)
{
    ssize_t n = box_read_small(AT_FDCWD, "/sys/devices/system/cpu/possible", out, cap);
    if (n < 0)
        return (int)n;
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' '))
        n--;
    if (n <= 0 || (size_t)n >= cap - 1)
        return -EINVAL; /* empty, or possibly cut */
    out[n] = '\0';
    return 0;
}

/* One record: the exiting task's pid and stats, nested in TASKSTATS_TYPE_AGGR_PID. Thread
 * groups' aggregates (AGGR_TGID) carry no memory figure and are skipped. */
static void one_record(struct agent *a, const unsigned char *p, size_t len)
{
    struct taskstats_listener *t = &a->taskstats;
    if (len < NLMSG_HDRLEN + GENL_HDRLEN)
        return;
    struct nlmsghdr nh;
    memcpy(&nh, p, sizeof nh);
    if (nh.nlmsg_type != t->family || nh.nlmsg_len > len || nh.nlmsg_len < NLMSG_HDRLEN)
        return;
    len = nh.nlmsg_len;
    size_t at = NLMSG_HDRLEN + GENL_HDRLEN;
    while (at + NLA_HDRLEN <= len) {
        struct nlattr na;
        memcpy(&na, p + at, sizeof na);
        if (na.nla_len < NLA_HDRLEN || at + na.nla_len > len)
            return;
        if ((na.nla_type & NLA_TYPE_MASK) == TASKSTATS_TYPE_AGGR_PID) {
            uint32_t pid = 0;
            bool have_pid = false;
            uint64_t hiwater = 0, btime = 0;
            bool have_stats = false;
            size_t in = at + NLA_HDRLEN, end = at + na.nla_len;
            while (in + NLA_HDRLEN <= end) {
                struct nlattr ia;
                memcpy(&ia, p + in, sizeof ia);
                if (ia.nla_len < NLA_HDRLEN || in + ia.nla_len > end)
                    return;
                const unsigned char *d = p + in + NLA_HDRLEN;
                size_t dl = ia.nla_len - NLA_HDRLEN;
                uint16_t ty = ia.nla_type & NLA_TYPE_MASK;
                if (ty == TASKSTATS_TYPE_PID && dl >= sizeof pid) {
                    memcpy(&pid, d, sizeof pid);
                    have_pid = true;
                } else if (ty == TASKSTATS_TYPE_STATS &&
                           dl >= offsetof(struct taskstats, hiwater_rss) + sizeof hiwater) {
                    /* The struct may be shorter (an older kernel) or longer (a newer one) than
                     * ours: only the fields present are read, unaligned. */
                    memcpy(&hiwater, d + offsetof(struct taskstats, hiwater_rss), sizeof hiwater);
                    uint32_t bt32;
                    memcpy(&bt32, d + offsetof(struct taskstats, ac_btime), sizeof bt32);
                    btime = bt32;
                    have_stats = true;
                }
                in += NLA_ALIGN(ia.nla_len);
            }
            if (have_pid && have_stats && pid > 0 && pid <= INT32_MAX &&
                t->on_exit != NULL && t->on_exit(t->exit_arg, (pid_t)pid, hiwater, btime))
                t->records++;
            return;
        }
        at += NLA_ALIGN(na.nla_len);
    }
}

unsigned taskstats_drain(struct agent *a, unsigned max)
{
    struct taskstats_listener *t = &a->taskstats;
    unsigned n_read = 0;
    while (t->fd >= 0 && n_read < max) {
        struct sockaddr_nl from;
        socklen_t fl = sizeof from;
        /* MSG_TRUNC: the record's real length, so a cut one is recognised and skipped. */
        ssize_t n = recvfrom(t->fd, t->buf, sizeof t->buf, MSG_DONTWAIT | MSG_TRUNC,
                             (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) {
                /* Records were lost (a burst of exits): those runs fall back to wait4. */
                t->overflows++;
                log_limited(LOG_RL_TASKSTATS, LOG_DEBUG,
                            "taskstats: exit records lost (socket overflow %llu)",
                            (unsigned long long)t->overflows);
                continue;
            }
            break; /* EAGAIN: drained */
        }
        n_read++;
        /* Only the kernel's records: any process may send to a netlink port. */
        if (from.nl_pid != 0 || (size_t)n > sizeof t->buf)
            continue;
        one_record(a, t->buf, (size_t)n);
    }
    return n_read;
}

static void on_readable(uv_poll_t *h, int status, int events)
{
    (void)events;
    struct agent *a = h->data;
    /* Bounded: a fork bomb in the box must not hold the loop. The poll is level-triggered, so
     * what is left is read on the next iteration. */
    taskstats_drain(a, TASKSTATS_WAKEUP_MSGS);
    if (status < 0) {
        /* An overflow is a socket error (POLLERR), on which libuv stops the handle and reports
         * UV_EBADF. The drain above read the error (ENOBUFS, counted), so watching goes on. */
        int e = uv_poll_start(h, UV_READABLE, on_readable);
        if (e < 0) {
            log_warn("taskstats: uv_poll_start: %s: max_rss_kb without a cgroup is now wait4's "
                     "figure", uv_strerror(e));
            taskstats_stop(a);
        }
    }
}

static int listen_kernel(struct agent *a);

/* The test seam (taskstats.h): how the listener starts. listen_kernel, unless a build that must
 * hold no OS resource beyond its loop (the connection fuzzer) set another at start-up. */
static taskstats_listen_fn listen_fn = listen_kernel;

void taskstats_set_listener(taskstats_listen_fn fn)
{
    listen_fn = fn ? fn : listen_kernel;
}

int taskstats_start(struct agent *a, taskstats_exit_cb on_exit, void *arg)
{
    a->taskstats.on_exit = on_exit;
    a->taskstats.exit_arg = arg;
    return listen_fn(a);
}

/* The real listener: the netlink socket, registered for every possible CPU's exits. */
static int listen_kernel(struct agent *a)
{
    struct taskstats_listener *t = &a->taskstats;
    const char *stage = "socket";
    int e;
    if (geteuid() != 0) {
        log_debug("taskstats: not root: max_rss_kb without a cgroup is wait4's figure");
        return -EPERM;
    }
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_GENERIC);
    if (fd < 0) {
        e = -errno;
        goto fail;
    }
    struct sockaddr_nl me = {.nl_family = AF_NETLINK};
    stage = "bind";
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        e = -errno;
        goto fail;
    }
    /* Root may go past rmem_max; else the kernel caps it there. */
    int rcv = (int)TASKSTATS_RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof rcv) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    size_t len;
    stage = "family";
    e = request(fd, 1, t->buf, sizeof t->buf, GENL_ID_CTRL, 0, CTRL_CMD_GETFAMILY, 1,
                CTRL_ATTR_FAMILY_NAME, TASKSTATS_GENL_NAME, sizeof TASKSTATS_GENL_NAME, &len);
    if (e == 0)
        e = len > 0 ? family_id(t->buf, len, &t->family) : -ENOENT;
    if (e < 0)
        goto fail;
    char cpus[CPULIST_MAX];
    stage = "cpus";
    if ((e = possible_cpus(cpus, sizeof cpus)) < 0)
        goto fail;
    /* Refused (EINVAL) outside the initial user and PID namespaces. */
    stage = "register";
    e = request(fd, 2, t->buf, sizeof t->buf, t->family, NLM_F_ACK, TASKSTATS_CMD_GET,
                TASKSTATS_GENL_VERSION, TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, cpus,
                strlen(cpus) + 1, &len);
    if (e < 0)
        goto fail;
    stage = "uv_poll_init";
    if ((e = uv_poll_init(a->loop, &t->poll, fd)) < 0)
        goto fail;
    t->poll.data = a;
    t->polling = true;
    t->fd = fd;
    if ((e = uv_poll_start(&t->poll, UV_READABLE, on_readable)) < 0) {
        stage = "uv_poll_start";
        taskstats_stop(a); /* closes fd in the close callback */
        log_debug("taskstats: %s: %s: max_rss_kb without a cgroup is wait4's figure", stage,
                  uv_strerror(e));
        return e;
    }
    log_debug("taskstats: listening for exit records (family %u, cpus %s)", t->family, cpus);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    log_debug("taskstats: %s: %s: max_rss_kb without a cgroup is wait4's figure", stage,
              strerror(-e));
    return e;
}

static void on_closed(uv_handle_t *h)
{
    struct agent *a = h->data;
    if (a->taskstats.fd >= 0)
        close(a->taskstats.fd);
    a->taskstats.fd = -1;
}

void taskstats_stop(struct agent *a)
{
    struct taskstats_listener *t = &a->taskstats;
    if (!t->polling) {
        if (t->fd >= 0)
            close(t->fd);
        t->fd = -1;
        return;
    }
    t->polling = false;
    uv_close((uv_handle_t *)&t->poll, on_closed);
}
