/* boxd-exec: the last step of starting a run, in a process that no longer shares boxd's memory.
 *
 * boxd's child (spawn.c) is made with CLONE_VM | CLONE_VFORK: it shares boxd's memory and holds
 * the spawner thread until it execs. It stays root for all of that, so the run's user can neither
 * signal nor ptrace it, and ends the window by exec'ing this program (embedded in boxd, run from
 * a sealed memfd). What needs the run's identity happens here, in a fresh, tiny address space
 * that holds nothing but the run's own argv and environment: if the run's user stops or traces
 * this process, it stops or reads only its own run's start, and the spawner has gone on already.
 *
 * Freestanding: no libc (built -nostdlib -static -ffreestanding, CMakeLists.txt), raw system
 * calls, x86_64. Its whole start costs one small exec (README, Benchmarks).
 *
 * Arguments (boxd makes them, spawn.c helper_args; a malformed set fails at stage exec, EINVAL):
 *   argv[0]  "boxd-exec"
 *   argv[1]  "N" (no identity change) or "UID:GID:GROUPS", GROUPS "-" (keep) or a comma list
 *   argv[2]  "N" (stay in the current directory) or "D" followed by the directory
 *   argv[3]  "N" (argv[4] is a path, no search), "P" followed by the PATH to search, or "F"
 *            followed by the program's path (argv[4] is then only its argv[0]: a login shell's
 *            "-sh")
 *   argv[4.] the run's argv; the environment is the run's.
 * fd 3 is the write end of boxd's status pipe: on failure a struct exec_status is written there
 * and the process exits 127; on success it is closed by the exec (FD_CLOEXEC, set here), so
 * boxd reads EOF. */
#include <stddef.h>
#include <stdint.h>

#include "boxd_exec.h"

#define NR_write 1
#define NR_rt_sigprocmask 14
#define NR_execve 59
#define NR_exit_group 231
#define NR_fcntl 72
#define NR_chdir 80
#define NR_setresuid 117
#define NR_setresgid 119
#define NR_setgroups 116
#define NR_prctl 157
#define PR_SET_DUMPABLE 4
#define F_SETFD 2
#define FD_CLOEXEC 1
#define E_NOENT 2
#define E_ACCES 13
#define E_NOTDIR 20
#define E_INVAL 22
#define MAX_GROUPS 64
#define PATH_MAX_ 4096

static long sys3(long n, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static long sys4(long n, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

static void __attribute__((noreturn)) fail(int stage, long err)
{
    struct exec_status st = {stage, (int32_t)-err};
    sys3(NR_write, EXEC_STATUS_FD, (long)&st, sizeof st); /* one write < PIPE_BUF: atomic */
    for (;;)
        sys3(NR_exit_group, 127, 0, 0);
}

static size_t slen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

/* Parses a decimal number (at most 32 bits). Returns the first char after it, or NULL. */
static const char *num(const char *s, unsigned long *out)
{
    unsigned long v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        v = v * 10 + (unsigned long)(*p - '0');
        if (v > 0xffffffffUL)
            return NULL;
        p++;
    }
    *out = v;
    return p == s ? NULL : p;
}

static long try_exec(const char *path, char **argv, char **envp)
{
    return sys3(NR_execve, (long)path, (long)argv, (long)envp);
}

int boxd_exec_main(long *sp);
int boxd_exec_main(long *sp)
{
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    char **envp = argv + argc + 1;
    if (argc < 5)
        fail(EXEC_STAGE_EXEC, -E_INVAL);
    const char *ids = argv[1], *cwd = argv[2], *path = argv[3];
    char **run_argv = argv + 4;

    /* The identity. Groups first, then the gid, while still root. */
    if (ids[0] != 'N') {
        unsigned long uid, gid, g;
        unsigned groups[MAX_GROUPS];
        long ngroups = -1;
        const char *p = num(ids, &uid);
        p = p && *p == ':' ? num(p + 1, &gid) : NULL;
        if (p == NULL || *p != ':')
            fail(EXEC_STAGE_EXEC, -E_INVAL);
        p++;
        if (p[0] != '-') {
            ngroups = 0;
            while (*p) {
                p = num(p, &g);
                if (p == NULL || (*p != ',' && *p != '\0') || ngroups == MAX_GROUPS)
                    fail(EXEC_STAGE_EXEC, -E_INVAL);
                groups[ngroups++] = (unsigned)g;
                if (*p == ',')
                    p++;
            }
        }
        long e;
        if (ngroups >= 0 && (e = sys3(NR_setgroups, ngroups, (long)groups, 0)) < 0)
            fail(EXEC_STAGE_USER, e);
        if ((e = sys3(NR_setresgid, (long)gid, (long)gid, (long)gid)) < 0)
            fail(EXEC_STAGE_USER, e);
        /* The uid in two steps, so that there is no moment at which the run's user may ptrace
         * this process (or open its /proc/PID/mem) while it still holds privilege:
         *  1. real and effective uid become the user's, the saved uid stays 0. The kernel lets
         *     a user trace only a process whose real, effective AND saved uids are all its own,
         *     so this one is still not traceable. Changing the effective uid makes the kernel
         *     reset "dumpable" to fs.suid_dumpable, which may be 1 - hence step 2, after it
         *     (set before, it would be undone here).
         *  2. not dumpable: from now on only CAP_SYS_PTRACE may trace it, whatever its uids.
         *  3. the saved uid goes too: every capability is dropped now. The effective uid does
         *     not change, so dumpable stays 0 until the exec below, which sets it for the
         *     new program as for any exec of an ordinary user.
         * Signals are another matter: from step 1 the user may signal this process (stop it,
         * kill it). That stops this run's start only: boxd has gone on already, and gives up
         * on it after a deadline (spawn.h). */
        if ((e = sys3(NR_setresuid, (long)uid, (long)uid, 0)) < 0)
            fail(EXEC_STAGE_USER, e);
        if ((e = sys3(NR_prctl, PR_SET_DUMPABLE, 0, 0)) < 0)
            fail(EXEC_STAGE_USER, e);
        if ((e = sys3(NR_setresuid, -1, -1, (long)uid)) < 0)
            fail(EXEC_STAGE_USER, e);
    }

    /* The working directory, as the run's user, so permissions apply. */
    if (cwd[0] == 'D') {
        long e = sys3(NR_chdir, (long)(cwd + 1), 0, 0);
        if (e < 0)
            fail(EXEC_STAGE_CHDIR, e);
    } else if (cwd[0] != 'N') {
        fail(EXEC_STAGE_EXEC, -E_INVAL);
    }

    /* An empty mask (boxd's child ran with every signal blocked), and the status pipe closed
     * by the exec that succeeds. */
    uint64_t none = 0;
    sys4(NR_rt_sigprocmask, 2 /* SIG_SETMASK */, (long)&none, 0, sizeof none);
    sys3(NR_fcntl, EXEC_STATUS_FD, F_SETFD, FD_CLOEXEC);

    /* exec, searching the run's PATH like boxd's own child does (spawn.c): EACCES from any
     * candidate wins over ENOENT, as in the shell. */
    if (path[0] == 'F')
        fail(EXEC_STAGE_EXEC, try_exec(path + 1, run_argv, envp));
    const char *file = run_argv[0];
    int has_slash = 0;
    for (const char *c = file; *c; c++)
        if (*c == '/')
            has_slash = 1;
    if (has_slash || path[0] != 'P')
        fail(EXEC_STAGE_EXEC, try_exec(file, run_argv, envp));
    size_t flen = slen(file);
    long err = -E_NOENT;
    const char *sp2 = path + 1;
    char buf[PATH_MAX_];
    for (;;) {
        const char *colon = sp2;
        while (*colon && *colon != ':')
            colon++;
        size_t dlen = (size_t)(colon - sp2);
        /* An empty entry means the current directory. */
        if (dlen + 1 + flen + 1 <= sizeof buf) {
            size_t n = 0;
            for (; n < dlen; n++)
                buf[n] = sp2[n];
            if (dlen)
                buf[n++] = '/';
            for (size_t i = 0; i <= flen; i++)
                buf[n + i] = file[i];
            long e = try_exec(buf, run_argv, envp);
            if (e == -E_ACCES || (e != -E_NOENT && e != -E_NOTDIR && err != -E_ACCES))
                err = e;
        }
        if (*colon == '\0')
            break;
        sp2 = colon + 1;
    }
    fail(EXEC_STAGE_EXEC, err);
}

/* The entry point: the kernel leaves argc, argv, envp at the stack pointer. */
__asm__(".text\n"
        ".globl _start\n"
        ".type _start,@function\n"
        "_start:\n"
        "    xor %ebp, %ebp\n"
        "    mov %rsp, %rdi\n"
        "    and $-16, %rsp\n"
        "    call boxd_exec_main\n"
        "    hlt\n"
        ".size _start, .-_start\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");
