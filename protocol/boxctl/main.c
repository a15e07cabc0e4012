/* boxctl: the CLI for boxd. One invocation is one connection: connect, hello, one command,
 * exit. boxctl.h says which file holds what.
 *
 * Output from runs is written to fds 1 and 2 with write()/writev(), never through stdio, so the
 * bytes are exactly those the run wrote; each output event's records go out in one writev per
 * stream change rather than one write per line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build; here for builds without it */
#endif
#include "boxctl.h"
#include "io.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The command table. To add a command:
 *   1. write its handler, int cmd_NAME(struct ctl *x, struct opts *o, int argc, char **argv),
 *      in a file of its own group (cmd_GROUP.c; CMakeLists.txt picks up every .c here) and
 *      declare it in boxctl.h;
 *   2. add one row below: name, --help group, summary, synopsis, description, the long names of
 *      the options it takes (rows of option_table in options.c; add a row there for a new one),
 *      and whether its options end at the first operand.
 * The handler gets the operands only (argv[0] is the first operand); it connects with
 * ctl_connect(x) once it has checked them, and returns boxctl's exit status. --help, the man
 * page and the parser all come from the row, nothing else needs editing.
 *
 * The group "Terminals" is last: shell (cmd_tty.c, which also has the interactive loop that
 * exec -t and attach on a terminal run share). */
/* clang-format off */
const struct command command_table[] = {
    {"exec", "Runs", "run a command and stream its output",
     "[OPTIONS] CMD...\n[OPTIONS] --argv PROGRAM [ARG]...",
     "Run CMD as a shell expression (/bin/sh -c CMD; several words are joined with spaces) and "
     "stream the run's stdout and stderr to boxctl's stdout and stderr, byte for byte. Options "
     "come before CMD; use -- when CMD starts with '-'.\n"
     "With --json, one JSON object is printed when the run ends: id, status, exit_code, signal, "
     "reason, result, stdout, stderr, duration_ms (and errno, stage when it could not be "
     "started); the exit status is then 0 whenever the outcome was obtained. With --detach the "
     "id is printed once the run has started (so 'boxctl cancel ID' right after finds it); "
     "with --detach --json, {id, pid, existing}.\n"
     "Ctrl-C cancels the run and keeps streaming until it has ended; a second Ctrl-C stops "
     "waiting (exit 130) and leaves the agent to finish the cancel.\n"
     "With -t the run gets a pseudo-terminal of boxctl's window size and boxctl's terminal "
     "is its, as with 'boxctl shell': keys go to the run (Ctrl-C interrupts its foreground "
     "job), the detach keys leave it going. 'boxctl exec -t top', 'boxctl exec -t --argv "
     "vim notes.txt'. With -t --detach the terminal run is started and its id printed; "
     "'boxctl attach ID' takes it over.\n"
     "Exit status: the run's exit code: 128+N when it was killed by signal N, 127 when the "
     "program was not found, 126 when it could not be started otherwise.",
     "argv timeout grace cwd env id user seccomp stdin detach json tty detach-keys", true,
     cmd_exec},
    {"code", "Runs", "run a snippet of code in one of the box's languages",
     "--lang LANG [OPTIONS] (CODE | -f FILE | -)",
     "Run a snippet with the box's interpreter for LANG (python, js, ts, bash, sh, ruby, perl, "
     "php, or what the box's language table adds; 'boxctl info' lists them) and stream its "
     "output like exec. The snippet is CODE, the contents of FILE, or boxctl's stdin with '-' "
     "or -f -. The agent writes it to a private file (main.py, main.js...) that is removed when "
     "the run ends. --json prints exec's object plus output (the snippet's stdout).\n"
     "Exit status: as for exec. A language the box does not have is an error (exit 1) that lists "
     "the languages it has.",
     "lang file timeout grace cwd env id user seccomp stdin detach json", false, cmd_code},
    {"attach", "Requests on runs", "stream a run's output until it ends, or take its terminal",
     "RUN_ID [--from SEQ] [--detach-keys KEYS]",
     "Stream a run's output from record SEQ (default 0) on, live, until it ends, like exec. "
     "Records dropped by the agent's log retention are reported on stderr. Ctrl-C cancels the "
     "run (a second Ctrl-C stops waiting).\n"
     "A terminal run (boxctl shell, exec -t) is taken over interactively instead: its retained "
     "screen output is replayed first, then keys go to it and its output comes live, on "
     "boxctl's raw terminal, which gets boxctl's window size. Ctrl-C is a key like any other "
     "there; Ctrl-P Ctrl-Q (--detach-keys) detaches again.\n"
     "Exit status: the run's exit code (as for exec); 0 after a detach; 1 for connection "
     "errors and error replies.",
     "from wait-start detach-keys", false, cmd_attach},
    {"wait", "Requests on runs", "wait for a run to end and show its outcome", "RUN_ID [--json]",
     "Wait until the run has ended, then print a one-line summary, or with --json the same JSON "
     "object as exec --json (the exit status is then 0).\n"
     "Exit status: the run's exit code (as for exec); 1 for connection errors and error replies.",
     "json wait-start", false, cmd_wait},
    {"logs", "Requests on runs", "print a run's retained output",
     "RUN_ID [--json] [--follow] [--from SEQ]",
     "Print a run's retained output: the data of each record, to stdout or stderr by stream. "
     "--json prints a JSON array of {timestamp, level, message, seq, stream} (timestamp RFC 3339 "
     "UTC with nanoseconds, level \"info\" for stdout and \"error\" for stderr, message without "
     "its final newline); with --follow, one JSON object per line instead of an array.",
     "json follow from wait-start", false, cmd_logs},
    {"cancel", "Requests on runs", "cancel a run (TERM, then KILL after the grace period)",
     "RUN_ID [--grace MS] [--wait-start MS]",
     "Cancel a run: TERM and CONT to its process group, KILL after the grace period. Returns at "
     "once; 'boxctl wait RUN_ID' waits for the end. Cancelling an ended run does nothing. A run "
     "that another boxctl is still starting (exec --id ID &) may not be known yet: --wait-start "
     "asks again until it is.",
     "grace wait-start", false, cmd_cancel},
    {"signal", "Requests on runs", "send a signal to a run's process group", "RUN_ID SIG",
     "Send signal SIG (a number, or a name such as TERM or SIGTERM) to the run's process group. "
     "Fails with run_ended once the run has ended.",
     "wait-start", false, cmd_signal},
    {"stdin", "Requests on runs", "write to a run's stdin", "RUN_ID [--eof] [DATA|-]",
     "Write DATA (exactly, no newline added) to the stdin of a run started with exec --stdin, "
     "or with '-' copy boxctl's own stdin. --eof then closes the run's stdin; with --eof alone "
     "it only closes it.",
     "eof wait-start", false, cmd_stdin},
    {"list", "Agent", "list the agent's runs", "[--json]",
     "List the agent's runs (live, lingering and recently finished) as a table: ID STATE STATUS "
     "EXIT PID CMD. STATE is running, ended, or lingering (ended, with processes it left "
     "behind still alive). --json prints the runs as a JSON array, with every field.",
     "json", false, cmd_list},
    {"info", "Agent", "show the agent's state, limits and languages", "[--json]",
     "Show the agent's version, boot id, pid, counters and limits, and one line per language "
     "the box can run with its interpreter and version.",
     "json", false, cmd_info},
    {"ping", "Agent", "measure the round trip to the agent", "",
     "Send a ping and print the round-trip time.", "", false, cmd_ping},
    {"shutdown", "Agent", "shut the box down (power off, or --reboot)", "[--reboot]",
     "Ask the agent for a clean shutdown: runs are cancelled (TERM, grace, KILL), their ends "
     "sent, then a VM powers off (or reboots with --reboot) and a container's or daemon's boxd "
     "exits. Returns once the agent has accepted it.",
     "reboot", false, cmd_shutdown},
    {"cp", "Files", "copy files and directories into or out of the box",
     "[-a] [--user U] [--json] SRC... DST",
     "Copy files and directories into or out of the box. A path inside the box starts with ':' "
     "(':/work/app'); either every SRC is local and DST is in the box, or the reverse: "
     "'boxctl cp ./src package.json :/work/' copies two entries into /work, "
     "'boxctl cp :/work/dist ./dist' a directory out of the box.\n"
     "Directory semantics are docker cp's and kubectl cp's:\n"
     "- SRC a file, DST an existing directory (or ending in '/'): copied into it as DST/NAME.\n"
     "- SRC a file, DST anything else: copied to DST (replaced atomically if it exists).\n"
     "- SRC a directory, DST an existing directory: copied into it as DST/NAME.\n"
     "- SRC a directory, DST missing: DST is created with SRC's contents.\n"
     "- several SRCs: DST must be a directory (it is created when missing).\n"
     "Symbolic links are kept as links, both ways, with their targets unchanged. FIFOs, devices "
     "and sockets are refused and reported. Files are written atomically (temp file, rename); a "
     "file named on the command line is fsynced before its rename, the entries of a directory "
     "are not (run 'sync' in the box when they must be on disk at once). --user acts as that "
     "user in the box (the agent's policy for exec applies). --json prints {files, dirs, "
     "symlinks, bytes, seconds, errors: [{path, code, message}...]} at the end. A progress line "
     "is shown on a terminal (stderr) for copies that take over a second.\n"
     "Exit status: 0 when every entry was copied; 1 when any failed (each is named on stderr, "
     "and in errors with --json) or the agent cannot be reached; 2 for a usage error.",
     "archive user json", true, cmd_cp},
    {"ls", "Files", "list a directory in the box", "[-l] [-R] [--user U] [--json] :PATH...",
     "List a directory in the box (or describe a file), one entry a line, directories with a "
     "trailing '/'. -l adds kind, mode, size and mtime (symbolic links: ' -> TARGET'); -R lists "
     "subdirectories too (up to 64 levels); --json prints one JSON object a line: {name, kind, "
     "mode, size, mtime_ns}.\n"
     "Exit status: 0, or 1 when a path failed (named on stderr) or the agent cannot be reached.",
     "long recursive-list user json", true, cmd_ls},
    {"rm", "Files", "remove files, links or directories in the box", "[-r] [--user U] :PATH...",
     "Remove files, symbolic links (never their targets) or empty directories in the box; -r "
     "removes directory trees.\n"
     "Exit status: 0, or 1 when a path failed (named on stderr) or the agent cannot be reached.",
     "recursive force user", true, cmd_rm},
    {"mkdir", "Files", "make directories in the box", "[-p] [-m MODE] [--user U] :PATH...",
     "Make directories in the box; -p makes parents and accepts existing ones; -m sets the mode "
     "(octal, default 755).\n"
     "Exit status: 0, or 1 when a path failed (named on stderr) or the agent cannot be reached.",
     "parents mode user", true, cmd_mkdir},
    {"watch", "Files", "print changes under a directory in the box",
     "[-r] [--user U] [--json] :PATH",
     "Print changes under a directory in the box as they happen, one line each (SEQ EVENT NAME, "
     "directories with a trailing '/'), until interrupted; -r watches its subdirectories too. "
     "'overflow' means events were lost: list the directory again. --json prints each event as "
     "a JSON object {seq, event, name, dir}.",
     "recursive user json", true, cmd_watch},
    {"shell", "Terminals", "an interactive shell (or CMD) on a terminal in the box",
     "[--user U] [--cwd DIR] [-e K=V]... [--detach-keys KEYS] [CMD [ARG]...]",
     "Start the run user's login shell (or --user's: the shell of its passwd entry, as a login "
     "shell, in its HOME) on a pseudo-terminal in the box, or CMD with its ARGs (executed "
     "directly, PATH searched, as exec --argv), like 'docker exec -it' or 'ssh -t'. The "
     "terminal gets boxctl's window size and follows it (SIGWINCH), and TERM is boxctl's "
     "$TERM unless -e TERM=... says otherwise. boxctl's own terminal is raw meanwhile: every "
     "key goes to the box, so Ctrl-C interrupts the shell's foreground job, Ctrl-Z stops it "
     "and Ctrl-D ends the shell, as on any terminal. The terminal's modes come back on every "
     "way out, even when boxctl is killed with SIGKILL (a small guard process restores them).\n"
     "Detach: Ctrl-P then Ctrl-Q leaves the run going and returns to your terminal with "
     "'boxctl: detached from ID; boxctl attach ID to return'; 'boxctl attach ID', from here or "
     "anywhere else, replays the screen output the agent kept and goes on. --detach-keys "
     "chooses other keys ('ctrl-a,d'; '' for none); a detach key typed alone is held until the "
     "next key shows it is not the sequence, then both are sent. When boxctl gets SIGTERM, "
     "SIGHUP or SIGINT, or the connection breaks, the run keeps going too.\n"
     "Examples: 'boxctl shell'; 'boxctl shell --user dev --cwd /work'; 'boxctl shell top'; "
     "'boxctl shell -e TERM=vt100 -- bash --norc'.\n"
     "When stdin is not a terminal the run gets 24x80, what comes on stdin is typed in as it "
     "comes, and its end sends ^D once.\n"
     "Exit status: the shell's (or CMD's) exit code ('exit 3' in the shell: 3), 128+N when "
     "it was killed by signal N, 127/126 when CMD was not found or could not be started; 0 "
     "after a detach; 1 when the agent cannot be reached, lacks terminal runs (capability "
     "\"tty\") or refuses the request.",
     "user cwd env detach-keys", true, cmd_shell},
    {"tunnel", "Tunnels", "relay stdin/stdout to a TCP address or unix socket in the box",
     "[--user U] HOST:PORT | unix:PATH",
     "Open a tunnel to HOST:PORT (an IPv4 or IPv6 address, [::1]:22, or a name of the box's "
     "/etc/hosts such as localhost) "
     "or to the unix socket PATH inside the box, and relay boxctl's stdin to it and what it "
     "sends to stdout, byte for byte. EOF on stdin half-closes the tunnel (the server reads "
     "EOF and may still answer); boxctl exits when the tunnel has closed both ways. The connect "
     "is made as the runs' user, or --user U where the agent allows it, so a socket that user "
     "may not write to is refused. This is what ssh needs as a ProxyCommand:\n"
     "  ssh -o ProxyCommand='boxctl -s SOCK tunnel 127.0.0.1:22' user@box\n"
     "Exit status: 0 when the tunnel closed normally; 1 when the connect failed (the message "
     "says why: ECONNREFUSED when nothing listens there, EACCES when the user may not connect) "
     "or the tunnel was reset.",
     "user", false, cmd_tunnel},
    {"forward", "Tunnels", "forward a local TCP port to an address in the box",
     "[--user U] [BIND:]LPORT:HOST:PORT",
     "Listen on BIND:LPORT on this machine (BIND defaults to 127.0.0.1, so only local clients "
     "can connect; LPORT 0 picks a free port) and open one tunnel to HOST:PORT in the box for "
     "each accepted connection, up to 64 at once, all over one agent connection. The first "
     "line printed says where it listens. Runs until interrupted (Ctrl-C). HOST:PORT may be "
     "unix:PATH for a unix socket in the box.\n"
     "Example: boxctl forward 8080:127.0.0.1:3000, then open http://127.0.0.1:8080/.",
     "user", false, cmd_forward},
};
/* clang-format on */
const size_t command_count = sizeof command_table / sizeof command_table[0];

const struct command *command_find(const char *name)
{
    for (size_t i = 0; i < command_count; i++)
        if (strcmp(command_table[i].name, name) == 0)
            return &command_table[i];
    return NULL;
}

bool command_takes(const struct command *cmd, const char *option)
{
    size_t n = strlen(option);
    for (const char *p = cmd->options; *p != '\0';) {
        while (*p == ' ')
            p++;
        const char *e = p;
        while (*e != '\0' && *e != ' ')
            e++;
        if ((size_t)(e - p) == n && memcmp(p, option, n) == 0)
            return true;
        p = e;
    }
    return false;
}

int main(int argc, char **argv)
{
    struct opts o;
    memset(&o, 0, sizeof o);
    o.env = calloc((size_t)argc + 1, sizeof *o.env);
    if (o.env == NULL) {
        errmsg("out of memory");
        return EXIT_FAIL;
    }
    char **ops;
    int nops;
    int ret = options_parse(NULL, argc, argv, 1, &o, &ops, &nops);
    if (ret != 0)
        goto out;
    if (o.man) {
        ret = print_man();
        goto out;
    }
    if (o.version) {
        static const char v[] = "boxctl " BOXD_VERSION " (boxd protocol version 1)\n";
        ret = box_write_all(STDOUT_FILENO, v, sizeof v - 1) < 0 ? EXIT_FAIL : 0;
        goto out;
    }
    if (nops == 0) {
        ret = o.help ? print_main_help() : usage_error(NULL, "missing COMMAND");
        goto out;
    }
    const char *name = ops[0];
    if (strcmp(name, "help") == 0) {
        if (nops < 2) {
            ret = print_main_help();
            goto out;
        }
        name = ops[1];
        o.help = true;
    }
    const struct command *cmd = command_find(name);
    if (cmd == NULL) {
        ret = usage_error(NULL, "unknown command '%s'", name);
        goto out;
    }
    if (o.help) {
        ret = print_command_help(cmd);
        goto out;
    }
    ret = options_parse(cmd, nops, ops, 1, &o, &ops, &nops);
    if (ret != 0)
        goto out;
    if (o.help) {
        ret = print_command_help(cmd);
        goto out;
    }

    struct ctl x;
    memset(&x, 0, sizeof x);
    x.sock = o.socket;
    if (x.sock == NULL) {
        const char *env = getenv("BOXD_SOCKET");
        x.sock = env != NULL && env[0] != '\0' ? env : DEFAULT_SOCKET;
    }
    const char *why = NULL;
    if (box_endpoint_parse(x.sock, &x.ep, &why) < 0) {
        ret = usage_error(NULL, "-s %s: %s", x.sock, why);
        goto out;
    }
    x.token_file = o.token_file;
    if (x.token_file == NULL) {
        const char *env = getenv("BOXD_TOKEN_FILE");
        x.token_file = env != NULL && env[0] != '\0' ? env : NULL;
    }
    ret = cmd->run(&x, &o, nops, ops);
    ctl_close(&x);
out:
    free(o.env);
    return ret;
}
