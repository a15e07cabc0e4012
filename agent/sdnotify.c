#include "sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

int sdnotify_send(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path) {
        log_warn("NOTIFY_SOCKET '%s': not an absolute path or an @abstract name that fits "
                 "sun_path: no readiness notification sent",
                 path);
        return -EINVAL;
    }
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace: the length below bounds the name */
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) {
        int e = errno;
        log_warn("NOTIFY_SOCKET: socket: %s", strerror(e));
        return -e;
    }
    ssize_t w;
    do
        w = sendto(s, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&sa,
                   (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n));
    while (w < 0 && errno == EINTR);
    int e = w < 0 ? errno : 0;
    close(s);
    if (e) {
        log_warn("NOTIFY_SOCKET %s: %s (the service manager does not get this state change)",
                 path, strerror(e));
        return -e;
    }
    return 0;
}

void sdnotify_ready(void)
{
    (void)sdnotify_send("READY=1\nSTATUS=serving");
}

void sdnotify_stopping(void)
{
    (void)sdnotify_send("STOPPING=1\nSTATUS=shutting down");
}
