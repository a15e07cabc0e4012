/* /etc/passwd and /etc/group, read as files: no NSS.
 *
 * A box's users live in its /etc/passwd. NSS would load modules into PID 1 (libnss_systemd and
 * its dependencies, half a megabyte of resident memory), and a static boxd (boxd-static) has no
 * NSS at all: getpwnam in a static glibc binary needs the shared libnss of the build's glibc at
 * run time, which a busybox-only root does not have. So boxd parses the files itself.
 *
 * Format (passwd(5), group(5)): one entry a line, fields separated by ':'; passwd has 7 fields
 * (name:password:uid:gid:gecos:home:shell), group 4 (name:password:gid:member,member...). Lines
 * that do not parse (too few fields, a non-numeric id, an id over 2^32-2, an empty name, NIS
 * "+"/"-" entries) are skipped, never fatal. Lines longer than PASSWD_LINE_MAX are skipped whole
 * (the rest of the file is still read). */
#ifndef BOXD_PASSWD_H
#define BOXD_PASSWD_H

#include <stddef.h>
#include <sys/types.h>

/* Longest line considered: a group line may list many members. */
#define PASSWD_LINE_MAX 65536

struct passwd_entry {
    char name[64];
    uid_t uid;
    gid_t gid;
    char home[256];
    char shell[256]; /* empty when the entry has none, or one too long to be a path here */
};

/* Finds the first entry whose name is name (name non-NULL) or whose uid is uid (name NULL) in
 * the passwd file at path. Returns 0 (e filled), -ENOENT (no such entry), -ENAMETOOLONG (the
 * entry's name or home does not fit e), -ENOMEM, or the errno of opening the file. */
int passwd_find(const char *path, const char *name, uid_t uid, struct passwd_entry *e);

/* The supplementary groups of user: primary first, then the gid of every group in the group
 * file at path that lists user as a member, each gid once, at most max. Returns how many were
 * stored (at least 1: the primary group, also when the file cannot be read). */
int passwd_user_groups(const char *path, const char *user, gid_t primary, gid_t *groups, int max);

#endif
