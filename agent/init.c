#include "init.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/reboot.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "agent.h"
#include "log.h"
#include "io.h"

/* The inode of the initial PID namespace (include/linux/proc_ns.h, PROC_PID_INIT_INO). */
#define PID_NS_INIT_INO 0xEFFFFFFCu

const char *init_mode_str(enum agent_mode m)
{
    return m == MODE_VM ? "vm" : m == MODE_CONTAINER ? "container" : "daemon";
}

static bool is_fs(const char *path, unsigned long magic)
{
    struct statfs sf;
    return statfs(path, &sf) == 0 && (unsigned long)sf.f_type == magic;
}

/* True when path is a mount point: it is listed as one in mountinfo. */
static bool is_mountpoint(const char *path)
{
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (f == NULL)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        char mp[4096];
        if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && strcmp(mp, path) == 0)
            found = true;
    }
    fclose(f);
    return found;
}

/* Mounts fstype at path unless something is mounted there already. */
static void mount_missing(const char *src, const char *path, const char *fstype,
                          unsigned long flags, const char *data)
{
    if (is_mountpoint(path))
        return;
    mkdir(path, 0755);
    if (mount(src, path, fstype, flags, data) < 0)
        log_warn("init: mount %s on %s: %s", fstype, path, strerror(errno));
    else
        log_info("init: mounted %s on %s", fstype, path);
}

static void link_missing(const char *target, const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0)
        return;
    if (symlink(target, path) < 0)
        log_warn("init: symlink %s -> %s: %s", path, target, strerror(errno));
}

static void set_hostname(void)
{
    char name[65] = "";
    char buf[4096];
    if (box_read_small(AT_FDCWD, "/proc/cmdline", buf, sizeof buf) > 0) {
        for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
            const char *v = NULL;
            if (strncmp(tok, "hostname=", 9) == 0)
                v = tok + 9;
            else if (strncmp(tok, "boxd.hostname=", 14) == 0)
                v = tok + 14;
            if (v)
                snprintf(name, sizeof name, "%s", v);
        }
    }
    if (name[0] == '\0' && box_read_small(AT_FDCWD, "/etc/hostname", name, sizeof name) > 0)
        name[strcspn(name, " \t\r\n")] = '\0';
    if (name[0] == '\0')
        snprintf(name, sizeof name, "box");
    if (sethostname(name, strlen(name)) < 0)
        log_warn("init: sethostname %s: %s", name, strerror(errno));
    else
        log_info("init: hostname %s", name);
}

static void loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && !(ifr.ifr_flags & IFF_UP)) {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
            log_warn("init: lo up: %s", strerror(errno));
        else
            log_info("init: lo up");
    }
    close(s);
}

static void raise_nofile(void)
{
    unsigned long long max = 1048576;
    char buf[32];
    if (box_read_small(AT_FDCWD, "/proc/sys/fs/nr_open", buf, sizeof buf) > 0)
        max = strtoull(buf, NULL, 10);
    struct rlimit rl = {.rlim_cur = (rlim_t)max, .rlim_max = (rlim_t)max};
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        return;
    /* Without CAP_SYS_RESOURCE the hard limit stays: raise the soft one to it. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == 0) {
            log_info("init: RLIMIT_NOFILE %llu (the hard limit)", (unsigned long long)rl.rlim_max);
            return;
        }
    }
    log_warn("init: RLIMIT_NOFILE %llu: %s", max, strerror(errno));
}

static enum agent_mode detect(void)
{
    if (getpid() != 1)
        return MODE_DAEMON;
    /* /proc is needed to tell a VM from a container. A container runtime normally provides
     * it; a kernel never does. Mounting it where it is missing is a duty in both cases. */
    if (!is_fs("/proc", PROC_SUPER_MAGIC)) {
        mkdir("/proc", 0555);
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            return MODE_VM; /* no /proc at all: only a bare init is this bare */
    }
    struct stat st;
    if (stat("/proc/self/ns/pid", &st) == 0 && st.st_ino == PID_NS_INIT_INO)
        return MODE_VM;
    return MODE_CONTAINER;
}

void init_setup(struct agent *a)
{
    a->mode = detect();
    if (a->mode == MODE_DAEMON)
        return;
    const unsigned long nsd = MS_NOSUID | MS_NODEV, nsde = MS_NOSUID | MS_NODEV | MS_NOEXEC;
    if (a->mode == MODE_VM) {
        mount_missing("proc", "/proc", "proc", nsde, NULL);
        mount_missing("sysfs", "/sys", "sysfs", nsde, NULL);
        mount_missing("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
        mount_missing("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                      "gid=5,mode=620,ptmxmode=666");
        mount_missing("tmpfs", "/dev/shm", "tmpfs", nsd, "mode=1777");
        mount_missing("tmpfs", "/run", "tmpfs", nsd, "mode=0755");
        mount_missing("tmpfs", "/tmp", "tmpfs", nsd, "mode=1777");
        mount_missing("cgroup2", "/sys/fs/cgroup", "cgroup2", nsde, "nsdelegate");
        link_missing("/proc/self/fd", "/dev/fd");
        link_missing("/proc/self/fd/0", "/dev/stdin");
        link_missing("/proc/self/fd/1", "/dev/stdout");
        link_missing("/proc/self/fd/2", "/dev/stderr");
        link_missing("pts/ptmx", "/dev/ptmx");
        set_hostname();
        /* Ctrl-Alt-Del: the kernel sends SIGINT to PID 1 instead of rebooting at once. */
        if (reboot(RB_DISABLE_CAD) < 0)
            log_warn("init: disable Ctrl-Alt-Del: %s", strerror(errno));
    } else {
        /* A container's PID 1 in its own mount namespace: add only what is missing. Nothing
         * that exists is touched, so nothing of the host's can be changed from here. */
        mount_missing("sysfs", "/sys", "sysfs", nsde, NULL);
        if (is_fs("/sys", SYSFS_MAGIC))
            mount_missing("cgroup2", "/sys/fs/cgroup", "cgroup2", nsde, NULL);
        mount_missing("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                      "newinstance,gid=5,mode=620,ptmxmode=666");
        mount_missing("tmpfs", "/dev/shm", "tmpfs", nsd, "mode=1777");
        mount_missing("tmpfs", "/run", "tmpfs", nsd, "mode=0755");
    }
    loopback_up();
    raise_nofile();
}

/* Unmounts everything it can, deepest first, then remounts / read-only: the disk is clean
 * whatever the power-off does. Only ever called as a VM's init. */
static void unmount_all(void)
{
    for (int pass = 0; pass < 4; pass++) {
        FILE *f = fopen("/proc/self/mountinfo", "re");
        if (f == NULL)
            break;
        char mps[256][256];
        int n = 0;
        char line[4096];
        while (n < 256 && fgets(line, sizeof line, f)) {
            char mp[4096];
            if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1 && strcmp(mp, "/") != 0 &&
                strlen(mp) < sizeof mps[0])
                snprintf(mps[n++], sizeof mps[0], "%s", mp);
        }
        fclose(f);
        int done = 0;
        for (int i = n - 1; i >= 0; i--) {
            /* /proc is needed to read mountinfo again; it goes in the last pass. */
            if (strcmp(mps[i], "/proc") == 0 && pass < 3)
                continue;
            if (umount2(mps[i], 0) == 0 || umount2(mps[i], MNT_DETACH) == 0)
                done++;
        }
        if (done == 0)
            break;
    }
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0)
        log_warn("final: remount / read-only: %s", strerror(errno));
}

void init_final(struct agent *a, enum final_action act)
{
    sync();
    if (a->mode != MODE_VM)
        return;
    log_info("final: unmounting and %s", act == FINAL_REBOOT ? "rebooting" : "powering off");
    unmount_all();
    sync();
    reboot(act == FINAL_REBOOT ? RB_AUTOBOOT : RB_POWER_OFF);
    /* Only reached if reboot(2) failed: PID 1 must not exit (the kernel would panic). */
    for (;;)
        pause();
}

void init_fatal(struct agent *a, const char *why)
{
    log_err("fatal: %s", why);
    log_flush(500); /* nothing will write the queue out later: now, briefly */
    sync();
    if (a->mode == MODE_VM) {
        /* PID 1 must not exit (the kernel would panic): power off, cleanly, as init_final. */
        log_err("fatal: unmounting and powering off");
        unmount_all();
        sync();
        reboot(RB_POWER_OFF);
        for (;;)
            pause();
    }
    _exit(1);
}
