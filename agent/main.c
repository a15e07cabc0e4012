/* boxd: the agent inside a box. Start-up and the command line.
 *
 * Start-up may fail and exit (bad options, no socket). From the moment the loop runs, boxd never
 * exits on a request's behalf: bad input gets an error reply, a bad peer is dropped, a failed run
 * gets a failed status. The loop ends only by a clean shutdown. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agent.h"
#include "auth.h"
#include "cgroup.h"
#include "code.h"
#include "conn.h"
#include "decode.h"
#include "environ.h"
#include "files.h"
#include "init.h"
#include "io.h"
#include "listen.h"
#include "log.h"
#include "request.h"
#include "run.h"
#include "runlimits.h"
#include "runstart.h"
#include "runtab.h"
#include "sandbox.h"
#include "sdnotify.h"
#include "shutdown.h"
#include "signals.h"
#include "spawn.h"
#include "taskstats.h"


static void usage(FILE *f)
{
    fprintf(f,
            "usage: boxd [--listen unix:PATH]... [options]\n"
            "\n"
            "The in-box execution agent. Serves the boxd protocol (protocol/PROTOCOL.md) on\n"
            "every --listen address; with none, on unix:" BOXD_DEFAULT_SOCKET ".\n"
            "\n"
            "options (sizes in bytes, times in milliseconds):\n"
            "  --listen ADDR          unix:PATH (mode 0600), vsock:PORT or virtio-port:NAME;\n"
            "                         may be repeated\n"
            "  --vsock-allow-cid N    also accept vsock connections from CID N (default: host only)\n"
            "  --vsock-any-cid        accept vsock connections from any CID\n"
            "\n"
            "access (see the README's threat model):\n"
            "  --allow-uid N          unix peers with this uid may connect (root and boxd's own\n"
            "                         uid always may); may be repeated\n"
            "  --socket-mode MODE     unix socket mode, octal, never world-writable (default 0600)\n"
            "  --socket-owner UID, --socket-group GID   unix socket ownership\n"
            "  --token-file PATH      hello must carry this token (a regular file owned by root\n"
            "                         or boxd's user, mode 0600 or tighter); as a VM's init,\n"
            "                         also boxd.token= on the kernel command line\n"
            "\n"
            "runs:\n"
            "  --user NAME            run as this user (HOME, USER, groups from passwd);\n"
            "                         default: boxd's own user. With a token, required unless\n"
            "                         --allow-root-runs: runs as root or as boxd's own uid could\n"
            "                         read the token and drive boxd\n"
            "  --allow-root-runs      with a token, let runs execute as root or boxd's own uid\n"
            "                         anyway (accepting that risk)\n"
            "  --seccomp PROFILE      default, strict or none (default: default); a request may\n"
            "                         ask for a stricter one\n"
            "  --allow-request-user USER[,USER...]\n"
            "                         a request may name one of these users for its run (default:\n"
            "                         none but the run user itself); uid 0 only if root is listed;\n"
            "                         may be repeated\n"
            "  --allow-seccomp-none   a request may ask for no seccomp filter\n"
            "  --run-nofile N         RLIMIT_NOFILE of runs (default 1048576)\n"
            "  --run-core N           RLIMIT_CORE of runs (default 0)\n"
            "  --run-memory-max N     memory.max of each run's cgroup, no swap (default: none);\n"
            "                         boxd refuses to start where runs get no memory controller\n"
            "  --run-pids-max N       pids.max of each run's cgroup (default: none); refused\n"
            "                         likewise without the pids controller (info.run_limits)\n"
            "  --run-oom-score-adj N  oom_score_adj of runs (default 0; boxd's own is -1000)\n"
            "  --max-frame N          largest request frame accepted (default 1048576)\n"
            "  --max-event N          largest frame sent (default 1048576)\n"
            "  --max-line N           lines longer than this are cut into pieces (default 65536)\n"
            "  --max-runs N           live runs at once (default 1024)\n"
            "  --max-finished N       finished runs remembered (default 256)\n"
            "  --max-conns N          connections at once (default 256)\n"
            "  --log-bytes N          output data kept per run (default 8388608)\n"
            "  --log-total N          memory of the output kept over all runs, live or not;\n"
            "                         past it the oldest finished runs are forgotten, then\n"
            "                         the largest logs lose their oldest records\n"
            "                         (default 268435456)\n"
            "  --stdin-bytes N        stdin queued per run (default 1048576)\n"
            "  --max-subs N           runs one connection may follow (default 1024)\n"
            "  --conn-queue N         unsent bytes per connection before reading its requests\n"
            "                         pauses (default 4194304; 4096 before hello)\n"
            "  --queue-total N        unsent bytes over all connections before reading any\n"
            "                         pauses (default 67108864)\n"
            "  --hello-timeout-ms N   a connection that has not passed hello by then is closed\n"
            "                         (default 5000; 0: no deadline). Connections before hello\n"
            "                         may hold max-conns minus 8 slots (a quarter when fewer);\n"
            "                         when full, the oldest of them is closed to admit a new one\n"
            "  --grace-ms N           TERM to KILL grace for cancel, timeout, shutdown (default 2000)\n"
            "  --drain-ms N           wait for output after a run's process exits (default 100)\n"
            "  --flush-ms N           send a partial line after this long (default 20)\n"
            "  --log-level LEVEL      error, warn, info (default) or debug (each run's end is a\n"
            "                         debug line); the log never blocks boxd: lines stderr\n"
            "                         cannot take are dropped and counted (info.log_dropped),\n"
            "                         and events peers can repeat at will are rate-limited\n"
            "  --help, --version\n");
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (s[0] < '0' || s[0] > '9')
        return -1;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

/* The longest time an option in ms may give (--grace-ms, --hello-timeout-ms): one hour, the
 * same bound as a request's grace_ms (decode.h). */
#define OPT_MS_MAX DECODE_GRACE_MAX_MS

enum {
    OPT_LISTEN = 256, OPT_MAX_FRAME, OPT_MAX_EVENT, OPT_MAX_LINE, OPT_MAX_RUNS,
    OPT_MAX_FINISHED, OPT_MAX_CONNS, OPT_LOG_BYTES, OPT_STDIN_BYTES, OPT_MAX_SUBS,
    OPT_CONN_QUEUE, OPT_GRACE, OPT_DRAIN, OPT_FLUSH, OPT_LOG_LEVEL, OPT_HELP, OPT_VERSION,
    OPT_VSOCK_CID, OPT_VSOCK_ANY, OPT_ALLOW_UID, OPT_SOCKET_MODE, OPT_SOCKET_OWNER,
    OPT_SOCKET_GROUP, OPT_TOKEN_FILE, OPT_USER, OPT_SECCOMP, OPT_RUN_NOFILE, OPT_RUN_CORE,
    OPT_RUN_MEM, OPT_RUN_PIDS, OPT_RUN_OOM, OPT_LOG_TOTAL, OPT_ALLOW_REQ_USER, OPT_ALLOW_SECCOMP_NONE,
    OPT_QUEUE_TOTAL, OPT_HELLO_TIMEOUT,
    OPT_ALLOW_ROOT_RUNS,
};

static int parse_args(int argc, char **argv, struct agent *a)
{
    struct config *c = &a->cfg;
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"max-frame", required_argument, NULL, OPT_MAX_FRAME},
        {"max-event", required_argument, NULL, OPT_MAX_EVENT},
        {"max-line", required_argument, NULL, OPT_MAX_LINE},
        {"max-runs", required_argument, NULL, OPT_MAX_RUNS},
        {"max-finished", required_argument, NULL, OPT_MAX_FINISHED},
        {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
        {"log-bytes", required_argument, NULL, OPT_LOG_BYTES},
        {"log-total", required_argument, NULL, OPT_LOG_TOTAL},
        {"stdin-bytes", required_argument, NULL, OPT_STDIN_BYTES},
        {"max-subs", required_argument, NULL, OPT_MAX_SUBS},
        {"conn-queue", required_argument, NULL, OPT_CONN_QUEUE},
        {"queue-total", required_argument, NULL, OPT_QUEUE_TOTAL},
        {"hello-timeout-ms", required_argument, NULL, OPT_HELLO_TIMEOUT},
        {"grace-ms", required_argument, NULL, OPT_GRACE},
        {"drain-ms", required_argument, NULL, OPT_DRAIN},
        {"flush-ms", required_argument, NULL, OPT_FLUSH},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"vsock-allow-cid", required_argument, NULL, OPT_VSOCK_CID},
        {"vsock-any-cid", no_argument, NULL, OPT_VSOCK_ANY},
        {"allow-uid", required_argument, NULL, OPT_ALLOW_UID},
        {"socket-mode", required_argument, NULL, OPT_SOCKET_MODE},
        {"socket-owner", required_argument, NULL, OPT_SOCKET_OWNER},
        {"socket-group", required_argument, NULL, OPT_SOCKET_GROUP},
        {"token-file", required_argument, NULL, OPT_TOKEN_FILE},
        {"user", required_argument, NULL, OPT_USER},
        {"seccomp", required_argument, NULL, OPT_SECCOMP},
        {"allow-request-user", required_argument, NULL, OPT_ALLOW_REQ_USER},
        {"allow-root-runs", no_argument, NULL, OPT_ALLOW_ROOT_RUNS},
        {"allow-seccomp-none", no_argument, NULL, OPT_ALLOW_SECCOMP_NONE},
        {"run-nofile", required_argument, NULL, OPT_RUN_NOFILE},
        {"run-core", required_argument, NULL, OPT_RUN_CORE},
        {"run-memory-max", required_argument, NULL, OPT_RUN_MEM},
        {"run-pids-max", required_argument, NULL, OPT_RUN_PIDS},
        {"run-oom-score-adj", required_argument, NULL, OPT_RUN_OOM},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    int o, idx = 0;
    while ((o = getopt_long(argc, argv, "", opts, &idx)) != -1) {
        uint64_t v = 0;
        const char *name = o >= OPT_LISTEN ? opts[idx].name : "?";
        int bad = 0;
        switch (o) {
        case OPT_LISTEN:
            if (c->n_listen >= BOXD_MAX_LISTEN) {
                fprintf(stderr, "boxd: at most %d --listen\n", BOXD_MAX_LISTEN);
                return 2;
            }
            c->listen[c->n_listen++] = optarg;
            break;
        case OPT_MAX_FRAME:
            bad = parse_u64(optarg, 4096, 64u << 20, &v);
            c->max_frame = (uint32_t)v;
            break;
        case OPT_MAX_EVENT:
            bad = parse_u64(optarg, 64u * 1024u, 64u << 20, &v);
            c->max_event = (uint32_t)v;
            break;
        case OPT_MAX_LINE:
            bad = parse_u64(optarg, 16, 1u << 20, &v);
            c->max_line = (uint32_t)v;
            break;
        case OPT_MAX_RUNS:
            bad = parse_u64(optarg, 1, 1u << 20, &v);
            c->max_runs = (uint32_t)v;
            break;
        case OPT_MAX_FINISHED:
            bad = parse_u64(optarg, 0, 1u << 20, &v);
            c->max_finished = (uint32_t)v;
            break;
        case OPT_MAX_CONNS:
            bad = parse_u64(optarg, 1, 1u << 20, &v);
            c->max_conns = (uint32_t)v;
            break;
        case OPT_LOG_BYTES:
            bad = parse_u64(optarg, 4096, 1ull << 40, &v);
            c->log_bytes = v;
            break;
        case OPT_LOG_TOTAL:
            bad = parse_u64(optarg, 1u << 20, 1ull << 42, &v);
            c->log_total = v;
            break;
        case OPT_STDIN_BYTES:
            bad = parse_u64(optarg, 1, 1u << 30, &v);
            c->stdin_bytes = (uint32_t)v;
            break;
        case OPT_MAX_SUBS:
            bad = parse_u64(optarg, 1, 1u << 20, &v);
            c->max_subs = (uint32_t)v;
            break;
        case OPT_CONN_QUEUE:
            bad = parse_u64(optarg, 64u * 1024u, 1ull << 32, &v);
            c->conn_queue = v;
            break;
        case OPT_QUEUE_TOTAL:
            bad = parse_u64(optarg, 1u << 20, 1ull << 40, &v);
            c->queue_total = v;
            break;
        case OPT_HELLO_TIMEOUT:
            bad = parse_u64(optarg, 0, OPT_MS_MAX, &v);
            c->hello_timeout_ms = (uint32_t)v;
            break;
        case OPT_GRACE:
            bad = parse_u64(optarg, 0, OPT_MS_MAX, &v);
            c->grace_ms = (uint32_t)v;
            break;
        case OPT_DRAIN:
            bad = parse_u64(optarg, 0, 60u * 1000u, &v);
            c->drain_ms = (uint32_t)v;
            break;
        case OPT_FLUSH:
            bad = parse_u64(optarg, 1, 60u * 1000u, &v);
            c->flush_ms = (uint32_t)v;
            break;
        case OPT_LOG_LEVEL:
            if (strcmp(optarg, "error") == 0)
                log_set_level(LOG_ERR);
            else if (strcmp(optarg, "warn") == 0)
                log_set_level(LOG_WARN);
            else if (strcmp(optarg, "info") == 0)
                log_set_level(LOG_INFO);
            else if (strcmp(optarg, "debug") == 0)
                log_set_level(LOG_DEBUG);
            else
                bad = 1;
            break;
        case OPT_VSOCK_CID:
            bad = parse_u64(optarg, 3, 0xfffffffeu, &v);
            c->vsock_allow_cid = (uint32_t)v;
            break;
        case OPT_VSOCK_ANY:
            c->vsock_any_cid = true;
            break;
        case OPT_ALLOW_UID:
            bad = parse_u64(optarg, 0, 0xfffffffeu, &v) < 0 ||
                  auth_allow_uid(&a->auth, (uid_t)v) < 0;
            break;
        case OPT_SOCKET_MODE: {
            char *end;
            errno = 0;
            unsigned long m = strtoul(optarg, &end, 8);
            /* Never world-writable (or world-readable: connecting needs write). */
            bad = errno || *end || optarg[0] == '\0' || m > 0777 || (m & 0007);
            c->socket_mode = (uint32_t)m;
            break;
        }
        case OPT_SOCKET_OWNER:
            bad = parse_u64(optarg, 0, 0xfffffffeu, &v);
            c->socket_uid = (int64_t)v;
            break;
        case OPT_SOCKET_GROUP:
            bad = parse_u64(optarg, 0, 0xfffffffeu, &v);
            c->socket_gid = (int64_t)v;
            break;
        case OPT_TOKEN_FILE:
            c->token_file = optarg;
            break;
        case OPT_USER:
            c->run_user = optarg;
            break;
        case OPT_SECCOMP:
            bad = strcmp(optarg, "default") && strcmp(optarg, "strict") && strcmp(optarg, "none");
            c->seccomp = optarg;
            break;
        case OPT_ALLOW_REQ_USER:
            bad = auth_allow_users(&a->auth, optarg) < 0;
            break;
        case OPT_ALLOW_ROOT_RUNS:
            c->allow_root_runs = true;
            break;
        case OPT_ALLOW_SECCOMP_NONE:
            c->allow_seccomp_none = true;
            break;
        case OPT_RUN_NOFILE:
            bad = parse_u64(optarg, 16, 1u << 30, &v);
            c->run_nofile = v;
            break;
        case OPT_RUN_CORE:
            bad = parse_u64(optarg, 0, UINT64_MAX, &v);
            c->run_core = v;
            break;
        case OPT_RUN_MEM:
            bad = parse_u64(optarg, 1u << 20, UINT64_MAX, &v);
            c->run_memory_max = v;
            break;
        case OPT_RUN_PIDS:
            bad = parse_u64(optarg, 1, 1u << 22, &v);
            c->run_pids_max = v;
            break;
        case OPT_RUN_OOM: {
            char *end;
            errno = 0;
            long n = strtol(optarg, &end, 10);
            bad = errno || *end || optarg[0] == '\0' || n < -999 || n > 1000;
            c->run_oom_score_adj = (int)n;
            break;
        }
        case OPT_HELP:
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("boxd %s (protocol %d)\n", BOXD_VERSION, 1);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "boxd: bad value '%s' for --%s\n", optarg, name);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "boxd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    /* A record must fit an event with room to spare, with msgpack overhead. */
    if (c->max_line > c->max_event / 4) {
        fprintf(stderr, "boxd: --max-line must be at most a quarter of --max-event\n");
        return 2;
    }
    if (c->n_listen == 0)
        c->listen[c->n_listen++] = "unix:" BOXD_DEFAULT_SOCKET;
    return -1;
}

/* fds 0-2 must be open, so that no pipe or socket of ours lands on them (a run's stdio is
 * dup2'ed onto 0-2, and an agent fd there would be clobbered). A VM's init may start without. */
static void ensure_stdio(void)
{
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = open("/dev/null", O_RDWR);
            if (n >= 0 && n != fd) {
                dup2(n, fd);
                close(n);
            }
        }
}

static void make_boot_id(struct agent *a)
{
    /* The kernel's random uuid; else one from getrandom-backed bytes. */
    if (box_read_small(AT_FDCWD, "/proc/sys/kernel/random/uuid", a->boot_id,
                       sizeof a->boot_id) == 36)
        return;
    unsigned char b[16] = {0};
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, b, sizeof b) < 0)
            memset(b, 0, sizeof b);
        close(fd);
    }
    uint64_t t = now_real_ns() ^ (uint64_t)getpid();
    for (int i = 0; i < 8; i++)
        b[i] ^= (unsigned char)(t >> (8 * i));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(a->boot_id, sizeof a->boot_id,
             "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
             b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
             b[15]);
}

/* A handle that is still open once every owner has closed its own: a leak. It is reported
 * (one line each, with its type) and closed without a callback. */
static void on_walk_close(uv_handle_t *h, void *arg)
{
    unsigned *left = arg;
    if (uv_is_closing(h))
        return;
    log_err("loop: a %s handle is still open at exit (its owner never closed it)",
            uv_handle_type_name(uv_handle_get_type(h)));
    (*left)++;
    uv_close(h, NULL);
}

/* Releases everything, so sanitizers see a clean exit. Returns the number of handles that were
 * still open after every owner closed its own (0 for a clean exit). */
static unsigned teardown(struct agent *a)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &a->conns) conn_close(container_of(pos, struct conn, link));
    conns_close(a);
    listen_close_all(a);
    /* No spawn may be under way while the runs go: the spawner thread stops first. */
    runs_spawner_halt(a);
    uv_close((uv_handle_t *)&a->spawn_async, NULL);
    runs_destroy(a);
    files_stop(a);
    uv_poll_stop(&a->sig_poll);
    uv_close((uv_handle_t *)&a->sig_poll, NULL);
    uv_close((uv_handle_t *)&a->shutdown_timer, NULL);
    taskstats_stop(a);
    code_close(a);
    log_stop();
    uv_run(a->loop, UV_RUN_DEFAULT);
    /* Anything left (there should be nothing) is reported, then closed without a callback. */
    unsigned left = 0;
    uv_walk(a->loop, on_walk_close, &left);
    uv_run(a->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(a->loop) != 0) {
        log_err("loop: still busy after its handles were closed");
        left++;
    }
    close(a->sig_fd);
    agent_release(a);
    sandbox_destroy(a);
    cgroup_destroy(a);
    code_destroy(a);
    return left;
}

/* The exit status under BOXD_STRICT_EXIT=1 when the loop still held handles at exit. */
#define EXIT_LEAKED_HANDLES 70

/* taskstats' callback: the runs' table knows which exits are runs'. */
static bool note_exit_peak(void *arg, pid_t pid, uint64_t hiwater_kb, uint64_t btime_s)
{
    return runs_note_exit_peak(arg, pid, hiwater_kb, btime_s);
}

static void on_spawns_done(uv_async_t *h)
{
    runs_spawns_done(h->data);
}

/* On the spawner thread. */
static void notify_loop(void *arg)
{
    /* It fails only for a handle that is not an async one: there is nothing to check. */
    (void)uv_async_send(arg);
}

static void on_warm(uv_timer_t *t)
{
    struct agent *a = t->data;
    if (!a->shutting_down)
        code_warm(a);
}

/* A start-up failure. As a VM's init, returning from main would panic the kernel: the fatal
 * path logs, then powers off cleanly. Elsewhere main returns rc. */
static int startup_failed(struct agent *a, int rc)
{
    if (a->mode == MODE_VM)
        init_fatal(a, "start-up failed (see above)");
    return rc;
}

int main(int argc, char **argv)
{
    struct agent agent;
    struct agent *a = &agent;
    memset(a, 0, sizeof *a);
    a->start_mono_ns = now_mono_ns();
    config_defaults(&a->cfg);
    int rc = parse_args(argc, argv, a);
    if (rc >= 0) {
        /* Even --help: PID 1 must not return. Only init_setup can tell a VM's init. */
        if (getpid() == 1) {
            init_setup(a);
            return startup_failed(a, rc);
        }
        return rc;
    }

    /* Block signals first: every later thread and child inherits the mask (children reset it),
     * and no SIGCHLD can be lost between here and the signalfd. */
    if (signals_block() < 0) {
        perror("boxd: sigprocmask");
        if (getpid() == 1)
            init_setup(a);
        return startup_failed(a, 1);
    }
    ensure_stdio();
    log_open();
    a->pid = getpid();
    a->pid1 = a->pid == 1;
    init_setup(a);
    /* Memory pressure kills a run, never the agent. */
    int ofd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (ofd >= 0) {
        if (write(ofd, "-1000", 5) < 0)
            log_warn("oom_score_adj -1000: %s: boxd cannot exempt itself from the kernel's OOM "
                     "killer (lowering it needs CAP_SYS_RESOURCE, which boxd lacks when it is "
                     "not root or runs in an unprivileged container). Harmless on a "
                     "development machine: boxd works the same, but under memory pressure the "
                     "kernel may pick boxd as well as a run. To avoid it, run boxd as root, or "
                     "set the score from outside (systemd OOMScoreAdjust=-1000, docker "
                     "--oom-score-adj -1000)",
                     strerror(errno));
        close(ofd);
    }
    int ae = auth_init(a, a->cfg.token_file);
    if (ae < 0) {
        fprintf(stderr, "boxd: token file %s: %s\n", a->cfg.token_file,
                ae == -EPERM ? "must be a regular file owned by root or boxd's user, readable "
                               "only by its owner (chown root, chmod 600)"
                             : strerror(-ae));
        return startup_failed(a, 1);
    }
    if (!a->pid1) {
        /* Not the box's init: adopt our runs' orphans so they are still reaped by us. */
        a->subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0;
    }
    make_boot_id(a);
    if (agent_init(a) < 0) {
        fprintf(stderr, "boxd: start-up failed: %s\n", strerror(errno ? errno : ENOMEM));
        return startup_failed(a, 1);
    }
    if (environ_init(a) < 0) {
        fprintf(stderr, "boxd: --user %s: no such user\n", a->cfg.run_user);
        agent_release(a);
        return startup_failed(a, 1);
    }
    char why[1024];
    if (auth_check_policy(a, why, sizeof why) < 0) {
        /* A VM's init must not return (the kernel would panic, and the message scroll away):
         * it says why on the console and powers off. */
        if (a->mode == MODE_VM)
            init_fatal(a, why);
        fprintf(stderr, "boxd: %s\n", why);
        agent_release(a);
        return 1;
    }
    snprintf(a->oom_adj, sizeof a->oom_adj, "%d", a->cfg.run_oom_score_adj);
    /* The loop, and the file I/O threads before the filters: the filters guard their tids as
     * they guard boxd's pid (sandbox.h). */
    a->loop = uv_default_loop();
    if (files_start(a) < 0)
        log_warn("files: no I/O threads: file requests are answered `internal`");
    a->sandbox.n_guard_tids = files_tids(a, a->sandbox.guard_tids, SANDBOX_GUARD_TIDS);
    if (sandbox_init(a) < 0) {
        fprintf(stderr, "boxd: cannot set up the sandbox (the seccomp filters, the exec helper "
                        "or the spawner thread): see the log above\n");
        sandbox_destroy(a);
        agent_release(a);
        return startup_failed(a, 1);
    }
    cgroup_init(a);
    runs_spare(a);
    if (runlimits_check(a, why, sizeof why) < 0) {
        if (a->mode == MODE_VM)
            init_fatal(a, why);
        fprintf(stderr, "boxd: %s\n", why);
        cgroup_destroy(a);
        sandbox_destroy(a);
        agent_release(a);
        return 1;
    }
    if (log_start(a->loop) < 0)
        log_warn("log: no timer: lines the console cannot take at once are dropped");
    /* The spawner thread's "spawns done": uv_async_send is its one thread-safe call. */
    int e = uv_async_init(a->loop, &a->spawn_async, on_spawns_done);
    if (e < 0) {
        /* Start-up fails as it does for the signalfd just below. */
        fprintf(stderr, "boxd: uv_async_init: %s\n", uv_strerror(e));
        return 1;
    }
    a->spawn_async.data = a;
    spawner_set_notify(a->sandbox.spawner, notify_loop, &a->spawn_async);
    if (a->sandbox.spawner_none)
        spawner_set_notify(a->sandbox.spawner_none, notify_loop, &a->spawn_async);
    conns_init(a, request_frame);
    if (signals_start(a, agent_shutdown_on_signal) < 0) {
        perror("boxd: signalfd");
        return startup_failed(a, 1);
    }
    taskstats_start(a, note_exit_peak, a); /* without it, max_rss_kb falls back (taskstats.h) */
    for (unsigned i = 0; i < a->cfg.n_listen; i++)
        if (listen_start(a, a->cfg.listen[i]) < 0) {
            /* Start-up failed: release everything so a sanitizer sees a clean exit. */
            (void)teardown(a);
            return startup_failed(a, 1);
        }

    a->sig_nondefault = spawn_signals_changed();
    /* A run holds up to seven descriptors (two or three pipe ends; its cgroup directory,
     * cgroup.procs, cgroup.events, cpu.stat): let max_runs fit (the soft limit up to the hard
     * one). */
    struct rlimit nof;
    if (getrlimit(RLIMIT_NOFILE, &nof) == 0 && nof.rlim_cur < nof.rlim_max) {
        nof.rlim_cur = nof.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nof);
    }

    /* From now on we must not die. */
    signals_reap(a);
    log_info("boxd %s ready in %.1f ms: pid %d, mode %s%s, boot %s", BOXD_VERSION,
             (double)(now_mono_ns() - a->start_mono_ns) / 1e6, (int)a->pid,
             init_mode_str(a->mode), a->subreaper ? " (subreaper)" : "", a->boot_id);
    sdnotify_ready();
    /* Just after ready, once: the language table and interpreter versions (code.h). */
    uv_timer_t warm;
    uv_timer_init(a->loop, &warm);
    warm.data = a;
    uv_timer_start(&warm, on_warm, 0, 0);
    uv_run(a->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&warm, NULL);
    if (!a->shutting_down)
        init_fatal(a, "the event loop stopped by itself");

    log_info("stopped");
    unsigned left = teardown(a);
    init_final(a, a->final_action);
    /* In the tests (BOXD_STRICT_EXIT=1, tests/integration/conftest.py) a loop that still held
     * handles at exit is a failure: the exit status says so. */
    const char *strict = getenv("BOXD_STRICT_EXIT");
    if (left > 0 && strict != NULL && strcmp(strict, "1") == 0)
        return EXIT_LEAKED_HANDLES;
    return a->exit_code;
}
