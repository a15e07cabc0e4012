#!/bin/sh
# deps.sh [build|tests|boxes|podman|sdk|all]...: installs the Debian 12 packages boxd needs, if any is
# missing, and says what it installs and why. Idempotent; needs root (apt-get) only when
# something is missing. Only Debian packages are downloaded, each without its Recommends
# (qemu's alone pulled about 150 packages).
#
# Groups (default: all):
#   build   compile boxd, boxctl and the client library; make the .deb (packaging/deb.sh)
#   tests   run the test suites (pytest, msgpack, the tools the tests drive)
#   boxes   build and boot the namespace box and the microVM box (tests/boxes, packaging/)
#   podman  the OCI image and the Kubernetes manifest (packaging/image.sh --format oci,
#           tests/boxes/test_image.py): podman, with runc (crun, podman's default, refuses a
#           host with hybrid cgroups) and catatonit (the pause process of `podman kube play`)
#   sdk     the SDK suites (tests/sdk): Node.js for the TypeScript SDK (its npm comes with
#           nodejs where that is NodeSource's build; tests/sdk/run-js.sh installs Debian's npm
#           otherwise), pip/setuptools/venv for the Python SDK's offline install and `pip list`
set -eu

group_pkgs() {
    case $1 in
    build) echo "build-essential cmake pkg-config libuv1-dev libmsgpack-dev libseccomp-dev dpkg-dev" ;;
    tests) echo "python3 python3-pytest python3-pytest-xdist python3-msgpack procps iproute2 util-linux sudo perl less openssh-client openssh-server" ;;
    boxes) echo "debootstrap qemu-system-x86 e2fsprogs busybox-static kmod cpio" ;;
    podman) echo "podman runc catatonit" ;;
    sdk) echo "nodejs python3-pip python3-setuptools python3-venv" ;;
    *) return 1 ;;
    esac
}
group_why() {
    case $1 in
    build) echo "to compile boxd and boxctl and package them" ;;
    tests) echo "to run the test suites" ;;
    boxes) echo "to build and boot the namespace and microVM boxes" ;;
    podman) echo "to run the OCI image and the Kubernetes manifest under podman" ;;
    sdk) echo "to build and test the TypeScript and Python SDKs" ;;
    esac
}

groups=${*:-build tests boxes podman sdk}
[ "$groups" = all ] && groups="build tests boxes podman sdk"
plan=""
total=""
for g in $groups; do
    pkgs=$(group_pkgs "$g") || { echo "deps.sh: unknown group '$g' (build, tests, boxes, podman, sdk or all)" >&2; exit 2; }
    missing=""
    for p in $pkgs; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        plan="$plan
deps.sh: $g ($(group_why "$g")):$missing"
        total="$total$missing"
    fi
done
[ -n "$total" ] || exit 0

[ "$(id -u)" = 0 ] || { echo "deps.sh: missing packages:$total; run as root to install them" >&2; exit 1; }
echo "deps.sh: installing Debian packages, without Recommends:$plan"
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing (a fresh container) or stale: refresh once, quietly.
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $total |
    grep -E '^(The following NEW packages|  |[0-9]+ upgraded)' || true
for p in $total; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        { echo "deps.sh: $p did not install (see apt-get above)" >&2; exit 1; }
done
echo "deps.sh: done"
