/* The agent's own log: one line per notable event, on stderr (the console when PID 1).
 * Never called from a child after fork, never given a secret. */
#ifndef BOXD_LOG_H
#define BOXD_LOG_H

#include <stdint.h>

enum log_level { LOG_ERR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level lvl);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

/* Clocks, in nanoseconds. */
uint64_t now_real_ns(void);
uint64_t now_mono_ns(void);

#endif
