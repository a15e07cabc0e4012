#!/bin/sh
# Builds a fuzz target (a CMake target of a BOXD_FUZZERS=ON tree: clang, libFuzzer, ASan and
# UBSan) in build-fuzz/, runs it on its corpus with the msgpack dictionary, then merges what it
# found into the corpus.
#
# usage: tests/fuzz/run.sh TARGET [SECONDS] [-- LIBFUZZER_FLAGS...]
#   TARGET    frame, msg (the codec) or conn (the agent's connection state machine):
#             tests/fuzz/fuzz_TARGET.c
#   MAXLEN=N  for conn, the input size limit (default 4096)
#   SECONDS   how long to fuzz (-max_total_time), default 60
#   RUNS=N    in the environment: stop after N executions (-runs=N) instead of after SECONDS
#   CC        the compiler, default clang (Debian: clang-14 with libclang-rt-14-dev)
#
# New inputs go to build-fuzz/new-TARGET/ while fuzzing (kept there, so the next run resumes with
# them); afterwards only those that reach edges the repository corpus does not are merged into
# tests/fuzz/corpus/TARGET/ (-merge=1), so the corpus stays small. Crashes are saved as build-fuzz/artifacts-TARGET/crash-*: each one becomes a
# regress-* file in the corpus together with its fix (see README.md).
set -eu

usage() {
    echo "usage: $0 frame|msg|conn [SECONDS] [-- LIBFUZZER_FLAGS...]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
target=$1
shift
case $target in
frame | msg | conn) ;;
*) usage ;;
esac
seconds=60
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
    seconds=$1
    shift
fi
if [ $# -gt 0 ] && [ "$1" = "--" ]; then
    shift
fi

root=$(cd "$(dirname "$0")/../.." && pwd)
fuzz=$root/tests/fuzz
out=$root/build-fuzz
corpus=$fuzz/corpus/$target
new=$out/new-$target
artifacts=$out/artifacts-$target

mkdir -p "$new" "$artifacts"
# The fuzz targets are CMake targets of a tree configured with BOXD_FUZZERS=ON (clang, coverage
# instrumentation, ASan+UBSan everywhere): tests/CMakeLists.txt.
CC=${CC:-clang} cmake -S "$root" -B "$out" -DBOXD_FUZZERS=ON -DBOXD_WERROR=ON >/dev/null
cmake --build "$out" -j"$(nproc)" --target "fuzz_$target" >/dev/null
bin=$out/tests/fuzz_$target
# -max_len: frames up to the codec targets' 4096-byte limit and a little more; for conn, a few
# frames (longer inputs are slower without finding more: README.md).
if [ "$target" = conn ]; then
    maxlen=${MAXLEN:-4096}
else
    maxlen=4200
fi

if [ -n "${RUNS:-}" ]; then
    limit=-runs=$RUNS
else
    limit=-max_total_time=$seconds
fi

status=0
"$bin" -dict="$fuzz/msgpack.dict" -max_len=$maxlen -artifact_prefix="$artifacts/" \
    -print_final_stats=1 "$limit" "$@" "$new" "$corpus" || status=$?

# The repository corpus is a regression suite replayed by every ctest run, not the fuzzer's working
# set (that stays in $new for the next run): only inputs that reach new edges go in, without the
# hit-count features (-use_counters=0) that would add hundreds of near-duplicates.
"$bin" -merge=1 -use_counters=0 -artifact_prefix="$artifacts/" "$corpus" "$new"
echo "run.sh: $target: corpus $(ls "$corpus" | wc -l) files; fuzzer exit status $status" >&2
exit $status
