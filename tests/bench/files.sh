#!/usr/bin/env bash
# The file transfer benchmark: boxctl cp against plain pipes, in one run, as ratios.
#
#   1 GiB up and down: `boxctl cp FILE :DST` and `boxctl cp :SRC FILE` against `cat SRC | cat > DST`
#     (and up against `cat | dd conv=fsync`, since an atomic upload fsyncs before its rename)
#     (and against `ssh HOST 'cat > DST'` when BENCH_SSH_HOST is set and answers; else skipped);
#   a 10 000-file tree up and down: `boxctl cp -a` (one file_tree_write / file_tree_read,
#     PROTOCOL.md 12.8) against `tar c | tar x` through a pipe;
#   the tree up durable: file_tree_write with fsync: true (one syncfs per 64 files, through the
#     test client) against `tar c | tar x && sync`.
#
# Each pair alternates, baseline first, BENCH_FILES_ROUNDS times; medians are reported. The
# ratio is baseline seconds / boxd seconds (1.0: as fast as the pipe; the targets are >= 0.7x
# for one large file and >= 0.5x for trees). The tree is a real node_modules (npm install of a
# few packages) when npm answers, else generated.
#
# usage: tests/bench/files.sh     (as root; builds build-bench/ if needed)
#   BENCH_FILES_MB=1024  BENCH_FILES_ROUNDS=3  BENCH_SSH_HOST=user@localhost
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}
MB=${BENCH_FILES_MB:-1024}
ROUNDS=${BENCH_FILES_ROUNDS:-3}
if [ ! -x "$BUILD/boxd" ] || [ ! -x "$BUILD/boxctl" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" -j2 --target boxd boxctl >/dev/null
fi
WORK=$(mktemp -d /tmp/boxd-bench-files-XXXXXX)
SOCK=$WORK/boxd.sock
"$BUILD/boxd" --listen "unix:$SOCK" 2>"$WORK/boxd.log" &
BOXD=$!
trap 'kill $BOXD 2>/dev/null; wait $BOXD 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
CTL="$BUILD/boxctl -s $SOCK"

secs() { # runs "$@", prints its wall seconds
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

head -c $((MB * 1048576)) /dev/urandom >"$WORK/big"
cat "$WORK/big" >/dev/null
mkdir -p "$WORK/tree"
if command -v npm >/dev/null && timeout 120 npm install --no-audit --no-fund --silent \
     --prefix "$WORK/tree" lodash rxjs moment date-fns @babel/core >/dev/null 2>&1; then
  TREE_HOW=npm
else
  TREE_HOW=generated
  for i in $(seq 0 9999); do d="$WORK/tree/d$((i / 100))"; mkdir -p "$d"; echo "file $i" >"$d/f$i.js"; done
fi
NFILES=$(find "$WORK/tree" -type f | wc -l)

pipe_up() { cat "$WORK/big" | cat >"$WORK/pipe.out"; }
# The same with the fsync an atomic upload makes before its rename (dd conv=fsync).
sync_up() { cat "$WORK/big" | dd of="$WORK/sync.out" bs=1M conv=fsync status=none; }
box_up() { $CTL cp "$WORK/big" ":$WORK/box.out"; }
pipe_down() { cat "$WORK/box.out" | cat >"$WORK/pipe.back"; }
box_down() { $CTL cp ":$WORK/box.out" "$WORK/box.back"; }
tar_up() { rm -rf "$WORK/tar.out"; mkdir "$WORK/tar.out"; tar c -C "$WORK/tree" . | tar x -C "$WORK/tar.out"; }
tree_up() { rm -rf "$WORK/tree.box"; $CTL cp -a "$WORK/tree" ":$WORK/tree.box"; }
tar_down() { rm -rf "$WORK/tar.back"; mkdir "$WORK/tar.back"; tar c -C "$WORK/tree.box" . | tar x -C "$WORK/tar.back"; }
tree_down() { rm -rf "$WORK/tree.back"; $CTL cp -a ":$WORK/tree.box" "$WORK/tree.back"; }
# The tree up with every file durable before its rename (the agent's syncfs batches).
tree_up_sync() {
  rm -rf "$WORK/tree.sync"
  PYTHONPATH="$ROOT/tests/integration" /usr/bin/python3 -c '
import sys, boxd_client, files_client as fc
c = boxd_client.Client(sys.argv[1]); c.hello()
w = fc.tree_write(c, sys.argv[3], fc.local_entries(sys.argv[2]), fsync=True)
assert w["failed"] == 0, w["errors"][:3]' "$SOCK" "$WORK/tree" "$WORK/tree.sync"
}
tar_up_sync() { rm -rf "$WORK/tar.sync"; mkdir "$WORK/tar.sync"; tar c -C "$WORK/tree" . | tar x -C "$WORK/tar.sync"; sync -f "$WORK/tar.sync"; }
ssh_up() { ssh -o BatchMode=yes "$BENCH_SSH_HOST" "cat > $WORK/ssh.out" <"$WORK/big"; }

declare -A RES
for pair in "sync_up box_up" "pipe_up box_up" "pipe_down box_down" "tar_up tree_up" "tar_down tree_down" "tar_up_sync tree_up_sync"; do
  set -- $pair
  : >"$WORK/a"; : >"$WORK/b"
  for _ in $(seq "$ROUNDS"); do
    secs "$1" >>"$WORK/a"
    secs "$2" >>"$WORK/b"
  done
  RES[$1]=$(median <"$WORK/a"); RES[$2]=$(median <"$WORK/b")
  [ "$1" = sync_up ] && RES[box_up_s]=${RES[box_up]}
done
SSH_LINE="| 1 GiB up vs \`ssh HOST 'cat > f'\` | skipped: set BENCH_SSH_HOST to a host whose sshd answers | | | |"
if [ -n "${BENCH_SSH_HOST:-}" ] && ssh -o BatchMode=yes -o ConnectTimeout=3 "$BENCH_SSH_HOST" true 2>/dev/null; then
  : >"$WORK/c"
  for _ in $(seq "$ROUNDS"); do secs ssh_up >>"$WORK/c"; done
  S=$(median <"$WORK/c")
  SSH_LINE=$(printf "| %d MiB up vs ssh %s | %.2f s | %.2f s | %.2fx | |" "$MB" "$BENCH_SSH_HOST" "${RES[box_up]}" "$S" "$(echo "$S / ${RES[box_up]}" | bc -l)")
fi
ratio() { echo "$1 / $2" | bc -l; }
echo "| transfer | boxd | baseline | ratio | target |"
echo "|---|---:|---:|---:|---|"
printf "| %d MiB up (boxctl cp) vs cat \\| cat | %.2f s | %.2f s | %.2fx | >= 0.7x |\n" "$MB" "${RES[box_up]}" "${RES[pipe_up]}" "$(ratio "${RES[pipe_up]}" "${RES[box_up]}")"
printf "| %d MiB up vs cat \\| dd conv=fsync (the upload's own fsync in the baseline too) | %.2f s | %.2f s | %.2fx | |\n" "$MB" "${RES[box_up_s]}" "${RES[sync_up]}" "$(ratio "${RES[sync_up]}" "${RES[box_up_s]}")"
printf "| %d MiB down vs cat \\| cat | %.2f s | %.2f s | %.2fx | >= 0.7x |\n" "$MB" "${RES[box_down]}" "${RES[pipe_down]}" "$(ratio "${RES[pipe_down]}" "${RES[box_down]}")"
printf "| tree (%s, %d files) up (boxctl cp -a) vs tar c \\| tar x | %.2f s | %.2f s | %.2fx | >= 0.5x |\n" "$TREE_HOW" "$NFILES" "${RES[tree_up]}" "${RES[tar_up]}" "$(ratio "${RES[tar_up]}" "${RES[tree_up]}")"
printf "| tree down vs tar c \\| tar x | %.2f s | %.2f s | %.2fx | >= 0.5x |\n" "${RES[tree_down]}" "${RES[tar_down]}" "$(ratio "${RES[tar_down]}" "${RES[tree_down]}")"
printf "| tree up durable (file_tree_write fsync: true) vs tar c \\| tar x && sync | %.2f s | %.2f s | %.2fx | |\n" "${RES[tree_up_sync]}" "${RES[tar_up_sync]}" "$(ratio "${RES[tar_up_sync]}" "${RES[tree_up_sync]}")"
echo "$SSH_LINE"
cmp "$WORK/big" "$WORK/box.back" && diff -r --no-dereference "$WORK/tree" "$WORK/tree.back" >/dev/null && echo "files.sh: copies verified (cmp, diff -r)"
