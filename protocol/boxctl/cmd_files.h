/* boxctl's file commands: cp, ls, rm, mkdir (PROTOCOL.md section 12). */
#ifndef BOXCTL_CMD_FILES_H
#define BOXCTL_CMD_FILES_H

#include <stdbool.h>

/* True when cmd is one of them. */
bool cmd_files_has(const char *cmd);
/* Runs cmd (argv[0] is the command's name) against the agent at sock. Returns the exit status:
 * 0, 1 (the agent, the connection or an entry failed), 2 (usage). */
struct ctl;
int cmd_files_main(const char *cmd, int argc, char **argv, struct ctl *ctl);
/* The command's --help text, or NULL. */
const char *cmd_files_usage(const char *cmd);

#endif
