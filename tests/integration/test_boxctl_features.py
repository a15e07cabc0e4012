"""boxctl does what the protocol does: token, --user, --seccomp, shutdown; it says what happened
(timeouts, reattaching to an existing id), shows lingering runs and the languages readably,
reads snippets from stdin, writes output in whole buffers, and its --help and man page come from
one option table."""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import BOXCTL_BIN, T, wait_for


def test_timeout_is_reported(boxctl):
    p = boxctl.run("exec", "--timeout", "300", "sleep 30")
    assert p.returncode != 0, p
    err = p.stderr.decode()
    assert "timed out after 300 ms" in err, err
    # Without a timeout nothing is said.
    p = boxctl.run("exec", "exit 3")
    assert p.returncode == 3 and p.stderr == b"", p


def test_existing_id_says_it_reattaches(boxctl):
    p = boxctl.run("exec", "--id", "again", "echo first")
    assert p.returncode == 0 and p.stdout == b"first\n" and p.stderr == b"", p
    p = boxctl.run("exec", "--id", "again", "echo second")
    assert p.returncode == 0 and p.stdout == b"first\n", p
    err = p.stderr.decode()
    assert "run again already exists" in err and "reattaching" in err, err
    p = boxctl.run("exec", "--detach", "--id", "again", "true")
    assert p.returncode == 0 and p.stdout == b"again\n", p
    assert "already exists" in p.stderr.decode(), p


def test_code_snippet_from_stdin(boxctl):
    for args in (["-f", "-"], ["-"]):
        p = boxctl.run("code", "--lang", "sh", *args, input=b"echo from-stdin\n")
        assert p.returncode == 0 and p.stdout == b"from-stdin\n", p


def test_list_shows_lingering(boxctl, boxd):
    c = boxd.client()
    rid = boxctl.run("exec", "--detach", "sleep 30 >/dev/null 2>&1 & exit 0").stdout.decode().strip()
    assert boxctl.run("wait", rid).returncode == 0

    def lingering():
        return [r for r in c.list()["runs"] if r["id"] == rid and r.get("lingering")]
    if not wait_for(lingering, T(5)):
        pytest.skip("this boxd does not keep the run lingering (no cgroup?)")
    p = boxctl.run("list")
    row = [l for l in p.stdout.decode().splitlines() if l.startswith(rid + " ")]
    assert row and "lingering" in row[0].split(), p.stdout
    boxctl.run("cancel", rid)


def test_info_languages_one_per_line(boxctl):
    p = boxctl.run("info")
    assert p.returncode == 0, p
    lines = p.stdout.decode().splitlines()
    head = [i for i, l in enumerate(lines) if l.startswith("languages: ")]
    assert len(head) == 1, p.stdout
    n = int(lines[head[0]].split()[1])
    langs = lines[head[0] + 1:head[0] + 1 + n]
    assert n >= 1 and len(langs) == n
    for l in langs:
        assert re.match(r"^  [a-z0-9_+-]+: /\S+ \(.*\); aliases: .*; file: \S+$", l), l
    assert any(l.startswith("  sh: ") for l in langs), langs


def test_writes_output_in_whole_buffers(boxctl, boxd):
    """200 000 lines must not cost 200 000 writes: count boxctl's write/writev calls."""
    if not os.path.exists("/usr/bin/strace"):
        pytest.skip("no strace")
    trace = os.path.join(boxd.workdir, "trace")
    p = subprocess.run(["/usr/bin/strace", "-f", "-c", "-e", "trace=write,writev", "-o", trace]
                       + boxctl.argv("exec", "seq 200000"), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=T(60),
                       # LeakSanitizer cannot run under ptrace: a sanitized boxctl skips it here.
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    assert p.returncode == 0 and p.stdout.count(b"\n") == 200000, p.stderr
    calls = 0
    with open(trace) as f:
        for line in f:
            parts = line.split()
            if parts and parts[-1] in ("write", "writev"):
                calls += int(parts[3])
    assert 0 < calls < 5000, calls


def test_shutdown(boxctl, boxd):
    p = boxctl.run("shutdown")
    assert p.returncode == 0 and b"shutting down" in p.stdout, p
    assert boxd.proc.wait(timeout=T(10)) == 0


def test_shutdown_reboot_outside_a_vm_exits(boxctl, boxd):
    p = boxctl.run("shutdown", "--reboot")
    assert p.returncode == 0, p
    assert boxd.proc.wait(timeout=T(10)) == 0


def test_user_and_seccomp_are_sent(boxctl):
    p = boxctl.run("exec", "--seccomp", "strict", "grep Seccomp_filters /proc/self/status")
    assert p.returncode == 0 and p.stdout.split()[-1] == b"2", p
    p = boxctl.run("exec", "--seccomp", "none", "true")
    assert p.returncode == 1 and "denied" in p.stderr.decode(), p
    assert "--allow-seccomp-none" in p.stderr.decode(), p
    p = boxctl.run("exec", "--user", "nobody", "id -un")
    assert p.returncode == 1 and "denied" in p.stderr.decode(), p
    p = boxctl.run("exec", "--seccomp", "weak", "true")
    assert p.returncode == 2 and "none, default or strict" in p.stderr.decode(), p


def test_user_allowed(boxctl, start_boxd):
    d = start_boxd("--allow-request-user", "nobody")
    p = boxctl.run("-s", d.sock, "exec", "--user", "nobody", "id -un", sock=False)
    assert p.returncode == 0 and p.stdout == b"nobody\n", p


def _token_file(d, name, text):
    path = os.path.join(d, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, text)
    os.close(fd)
    return path


def test_token_file_and_env(boxctl, start_boxd, tmp_path):
    tdir = "/tmp/boxctl-tok-%d" % os.getpid()
    os.makedirs(tdir, mode=0o700, exist_ok=True)
    try:
        good = _token_file(tdir, "good", b"s3cret-token\n")
        bad = _token_file(tdir, "bad", b"wrong\n")
        d = start_boxd("--token-file", good, "--user", "nobody")
        p = boxctl.run("-s", d.sock, "--token-file", good, "exec", "echo ok", sock=False)
        assert p.returncode == 0 and p.stdout == b"ok\n", p
        p = boxctl.run("-s", d.sock, "ping", sock=False, env={"BOXD_TOKEN_FILE": good})
        assert p.returncode == 0, p
        # A global option after the command name is taken too.
        p = boxctl.run("-s", d.sock, "ping", "--token-file", good, sock=False)
        assert p.returncode == 0, p
        p = boxctl.run("-s", d.sock, "--token-file", bad, "ping", sock=False)
        assert p.returncode == 1 and "refused the token" in p.stderr.decode(), p
        p = boxctl.run("-s", d.sock, "ping", sock=False, env={"BOXD_TOKEN_FILE": ""})
        err = p.stderr.decode()
        assert p.returncode == 1 and "--token-file" in err and "BOXD_TOKEN_FILE" in err, p
        p = boxctl.run("-s", d.sock, "--token-file", tdir + "/missing", "ping", sock=False)
        assert p.returncode == 1 and "No such file" in p.stderr.decode(), p
    finally:
        for f in os.listdir(tdir):
            os.unlink(os.path.join(tdir, f))
        os.rmdir(tdir)


def test_cancel_wait_start_finds_a_run_being_started(boxctl):
    """The README's cancel example as a script: the exec in the background may not have
    reached the agent when cancel runs; --wait-start asks again until it has."""
    script = ("'{b}' -s '{s}' exec --id long 'sleep 100' &\n"
              "'{b}' -s '{s}' cancel --wait-start 5000 long && "
              "'{b}' -s '{s}' wait --json long\nwait\n").format(b=BOXCTL_BIN, s=boxctl.sock)
    p = subprocess.run(["/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=T(20))
    j = json.loads(p.stdout.decode().splitlines()[-1])
    assert j["status"] == "cancelled", p
    p = boxctl.run("cancel", "--wait-start", "100", "never")
    assert p.returncode == 1 and "within --wait-start 100 ms" in p.stderr.decode(), p


def test_not_found_says_what_to_do(boxctl):
    p = boxctl.run("cancel", "nope")
    assert p.returncode == 1 and "boxctl list" in p.stderr.decode(), p


def test_help_and_man_come_from_the_option_table(boxctl):
    man = subprocess.run([BOXCTL_BIN, "--man"], stdout=subprocess.PIPE, check=True).stdout.decode()
    assert man.startswith('.\\" Generated') and ".TH BOXCTL 1" in man
    if shutil.which("groff"):
        g = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=man.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert g.returncode == 0 and g.stderr == b"", g.stderr
    top = subprocess.run([BOXCTL_BIN, "--help"], stdout=subprocess.PIPE, check=True).stdout.decode()
    cmds = re.findall(r"^  ([a-z]+) {2,}", top, re.M)
    assert {"exec", "code", "cancel", "shutdown", "list"} <= set(cmds), top
    for cmd in cmds:
        h = subprocess.run([BOXCTL_BIN, cmd, "--help"], stdout=subprocess.PIPE,
                           check=True).stdout.decode()
        assert ".SS %s\n" % cmd in man, cmd
        for opt in re.findall(r"^\s+(?:-\w, )?--([a-z-]+)", h, re.M):
            assert "\\-\\-" + opt.replace("-", "\\-") in man, (cmd, opt)
            # Every option in --help is accepted by the parser (unknown ones exit 2).
            r = subprocess.run([BOXCTL_BIN, "-s", "/nonexistent", cmd, "--" + opt, "x", "y"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert b"unknown option" not in r.stderr, (cmd, opt, r.stderr)
    p = boxctl.run("ping", "--lang", "py")
    assert p.returncode == 2 and "unknown option '--lang'" in p.stderr.decode(), p
