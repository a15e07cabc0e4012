#!/bin/sh
# Builds and tests the TypeScript SDK (protocol/sdk/js) against real boxd daemons.
#   1. installs Debian's nodejs, npm and python3-pip with apt-get where node, npm or pip is
#      missing (Node.js 18 or later; pip for the examples' `pip list`);
#   2. npm ci in protocol/sdk/js: the exact packages of package-lock.json into its node_modules
#      (--prefer-offline: from npm's cache when it has them, the registry otherwise), which
#      builds dist/esm and dist/cjs (the package's prepare script);
#   3. tests/sdk/test_js_sdk.py: the README's examples, the API, reconnect and re-attach;
#   4. TypeDoc (npm run docs, warnings are errors): the generated reference must have a page for
#      Box and for every class the package exports, so an undocumented export fails here.
# Needs boxd built (BOXD_BIN, default build/boxd). No input; safe to run again.
# The last line is the summary: `tests/sdk/run-js.sh: PASS ...` or `tests/sdk/run-js.sh: FAIL ...`.
set -eu
cd "$(dirname "$0")/../.."
t0=$(date +%s)
fail() {
    echo "tests/sdk/run-js.sh: FAIL ($1) after $(( $(date +%s) - t0 )) s"
    exit 1
}
# node and npm run the SDK and the examples' `npm install`; pip the examples' `pip list`.
missing=""
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
command -v pip >/dev/null 2>&1 || missing="$missing python3-pip"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Debian packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        # shellcheck disable=SC2086
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null; } ||
            fail "apt-get install$missing"
    else
        fail "these are needed:$missing (apt-get install$missing)"
    fi
fi
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || fail "node $(node --version) is older than 18"
BOXD_BIN=${BOXD_BIN:-$PWD/build/boxd}
[ -x "$BOXD_BIN" ] || fail "no boxd at $BOXD_BIN: build it (cmake --build build) or set BOXD_BIN"
export BOXD_BIN
echo "== npm ci and build (node $(node --version), npm $(npm --version))"
(cd protocol/sdk/js && npm ci --prefer-offline --no-audit --no-fund >/dev/null && npm run -s build) || fail "npm ci / build"
echo "== tests/sdk/test_js_sdk.py"
out=$(mktemp)
if /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/sdk/test_js_sdk.py >"$out" 2>&1; then
    rc=0
else
    rc=1
fi
cat "$out"
summary=$(tail -n 1 "$out" | sed 's/=//g; s/^ *//; s/ *$//')
rm -f "$out"
[ $rc = 0 ] || fail "$summary"
echo "== TypeDoc (npm run docs)"
(cd protocol/sdk/js && rm -rf docs && npm run -s docs >/dev/null) || fail "npm run docs: TypeDoc reported a warning or an error"
# Every class exported from src/index.ts has its page (classes/NAME.html).
for c in $(node --input-type=module -e '
    const m = await import("./protocol/sdk/js/dist/esm/index.js");
    console.log(Object.entries(m).filter(([, v]) => typeof v === "function" && /^class /.test(v.toString())).map(([k]) => k).join(" "));'); do
    [ -f "protocol/sdk/js/docs/classes/$c.html" ] || fail "TypeDoc wrote no page for the exported class $c"
done
grep -q "connect" protocol/sdk/js/docs/classes/Box.html || fail "the TypeDoc page of Box does not document connect"
echo "tests/sdk/run-js.sh: PASS ($summary) in $(( $(date +%s) - t0 )) s"
