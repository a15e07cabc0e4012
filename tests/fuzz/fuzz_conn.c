/* Fuzz target: one connection's real state machine (agent/conn.c, request.c, run.c, events.c)
 * fed arbitrary bytes, without a socket.
 *
 * The spawner's child maker is replaced (spawn_set_maker) by one that refuses every run (stage
 * "fuzz"), the taskstats listener (taskstats_set_listener) by one that opens no netlink socket,
 * and no spawner thread is even started (sandbox_init never runs): exec and code requests go
 * through parsing, limits, the run table, the spawn-failure path, eviction and every request on
 * ended runs, and nothing is ever started.
 *
 * Input: byte 0 picks the mode: bit 0 set sends a valid hello first (so most inputs reach the
 * handlers behind the gate); bits 1-7 choose the chunk size in which the rest is fed (1 to 128
 * bytes), so frames split at every boundary are exercised. When the last byte has its high bit
 * set (and the input is longer than two bytes), it is not fed: it arms the allocation fault
 * (agent/alloc.h), so that allocation number N = 1 + (its low 7 bits) from the start of the
 * input (after the hello) fails, and the out-of-memory branches behind it run.
 *
 * Invariants, after every input:
 *   - every frame the agent sent is a well-formed frame holding one msgpack map with a `type`;
 *   - once the connection is freed, the agent holds no connection, no live run, and at most
 *     max_finished finished runs (and, after the loop ran, none of their handles leak: checked
 *     by LeakSanitizer at exit in the libFuzzer build).
 */
#include "fuzz.h"

#include <errno.h>
#include <string.h>

#include "agent.h"
#include "alloc.h"
#include "codec.h"
#include "conn.h"
#include "log.h"
#include "request.h"
#include "run.h"
#include "sandbox.h"
#include "spawn.h"
#include "taskstats.h"

static struct agent A;
static int ready;

static void sink(void *arg, const char *frame, size_t len)
{
    (void)arg;
    uint32_t body;
    FUZZ_CHECK(frame_header_decode((const uint8_t *)frame, len, UINT32_MAX, &body) == 0);
    FUZZ_CHECK(body + BOX_FRAME_HDR == len);
    msgpack_zone z;
    FUZZ_CHECK(msgpack_zone_init(&z, 1024));
    msgpack_object m;
    FUZZ_CHECK(msg_parse((const uint8_t *)frame + BOX_FRAME_HDR, body, &z, &m) == 0);
    const char *t;
    size_t tl;
    FUZZ_CHECK(msg_get_str(&m, "type", &t, &tl) == 0 && tl > 0);
    msgpack_zone_destroy(&z);
}

/* The connection fuzzer drives every request, exec included: it must never start a process. */
static pid_t refuse_spawn(const struct spawn_req *req, char *const *helper_argv, int status_fd,
                          const char **stage, pid_t *failed_pid)
{
    (void)req;
    (void)helper_argv;
    (void)status_fd;
    *failed_pid = 0;
    *stage = "fuzz";
    return -EPERM;
}

/* The fuzzer holds no OS resource beyond its loop: no netlink socket for taskstats. */
static int refuse_taskstats(struct agent *a)
{
    (void)a;
    return -ENOSYS;
}

static void setup(void)
{
    spawn_set_maker(refuse_spawn);
    taskstats_set_listener(refuse_taskstats);
    memset(&A, 0, sizeof A);
    config_defaults(&A.cfg);
    A.cfg.max_finished = 16;
    A.cfg.max_runs = 64;
    A.cfg.log_bytes = 64u * 1024u;
    log_set_level(LOG_ERR);
    FUZZ_CHECK(agent_init(&A) == 0);
    A.loop = uv_default_loop();
    A.pid = 4242;
    snprintf(A.boot_id, sizeof A.boot_id, "00000000-0000-4000-8000-000000000000");
    FUZZ_CHECK(identity_lookup(NULL, &A.ident) == 0);
    A.cg.runs_fd = A.cg.base_fd = -1;
    /* A `shutdown` request starts the shutdown timer; it is reset after every input. */
    uv_timer_init(A.loop, &A.shutdown_timer);
    A.shutdown_timer.data = &A;
    conns_init(&A, request_frame);
    ready = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready)
        setup();
    if (size == 0)
        return 0;
    struct conn *c = conn_new_detached(&A, sink, NULL);
    FUZZ_CHECK(c != NULL);
    uint8_t mode = data[0];
    data++;
    size--;
    uint64_t fail_at = 0;
    if (size > 1 && (data[size - 1] & 0x80)) {
        fail_at = 1u + (uint64_t)(data[size - 1] & 0x7f);
        size--;
    }
    if (mode & 1) {
        static const uint8_t hello[] = {0, 0, 0, 16, 0x82, 0xa4, 't', 'y', 'p', 'e', 0xa5, 'h',
                                        'e', 'l', 'l', 'o', 0xa7, 'v', 'e', 'r', 's', 'i', 'o',
                                        'n', 0x01};
        /* {type: "hello", version: 1} is 21 bytes of body; fix the length. */
        uint8_t h[sizeof hello];
        memcpy(h, hello, sizeof h);
        frame_header_encode(h, (uint32_t)(sizeof h - BOX_FRAME_HDR));
        conn_feed(c, h, sizeof h);
        FUZZ_CHECK(c->hello);
    }
    alloc_fail_nth(fail_at); /* after the hello, which must pass */
    size_t chunk = (size_t)(mode >> 1) + 1;
    for (size_t at = 0; at < size && !c->closing; at += chunk) {
        size_t n = size - at < chunk ? size - at : chunk;
        conn_feed(c, data + at, n);
    }
    conn_close(c);
    conn_detached_free(c);
    alloc_fail_nth(0);
    /* A shutdown request is honoured as far as the agent goes (no new runs, listeners closed);
     * the harness takes it back so the next input starts from a serving agent. */
    uv_timer_stop(&A.shutdown_timer);
    A.shutting_down = false;
    /* Let close callbacks of evicted runs' handles run. */
    uv_run(A.loop, UV_RUN_NOWAIT);
    FUZZ_CHECK(A.n_conns == 0);
    FUZZ_CHECK(A.n_live == 0);
    FUZZ_CHECK(A.n_finished <= A.cfg.max_finished);
    return 0;
}
