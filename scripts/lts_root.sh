#!/usr/bin/env bash
# `make test-lts`: the project's targets (by default `make test`) on Debian 13 (trixie) with QGIS 3.44 LTR
# from trixie-backports, inside a chroot made with debootstrap.
#
# The root is built once and cached in LTS_ROOT (default /var/cache/forest-carbon-lts: outside the checkout,
# so that CI's fresh clones on the same machine share it); it is rebuilt only when it is missing or was left
# half-built. Each run copies the checkout (without its venvs and build outputs) and ../shared into the root
# at /work, runs `make setup` and LTS_MAKE there with fresh venvs, and always unmounts what it mounted.
#
# Environment: LTS_ROOT (cache folder), LTS_MIRROR (Debian mirror; default: this machine's apt mirror),
# LTS_MAKE (targets to run inside, default "test"), PYTEST_ARGS (passed through to `make test`),
# LTS_REBUILD=1 (build the root again).
set -euo pipefail

CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)
LTS_ROOT=${LTS_ROOT:-/var/cache/forest-carbon-lts}
LTS_MAKE=${LTS_MAKE:-test}
SUITE=trixie
# Bump when the recipe below changes, so that cached roots are rebuilt.
RECIPE=1
ROOT=$LTS_ROOT/$SUITE
PARTIAL=$LTS_ROOT/$SUITE.partial
STAMP=.forest-carbon-lts-recipe

say() { echo "test-lts: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, mount and chroot): run it as root or with sudo"
mkdir -p "$LTS_ROOT"

mirror() {
    # The first plain Debian archive this machine's apt uses (deb822 or one-line sources), so the root
    # comes from the same (possibly local or pinned) mirror.
    local url
    url=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {print $2}' \
          | grep -v -e security -e '^$' | grep '/debian/\?$' | head -n1 || true)
    [ -n "$url" ] || url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
          | grep -v security | grep '/debian/\?$' | head -n1 || true)
    echo "${url:-http://deb.debian.org/debian}"
}
MIRROR=${LTS_MIRROR:-$(mirror)}

# Mount points made by this run, unmounted in reverse order by cleanup().
MOUNTS=()

mounts_under() {
    # Mount points at or below $1 (from the kernel's table, not from our own bookkeeping).
    awk -v p="$1" '$2 == p || index($2, p "/") == 1 {print $2}' /proc/self/mounts
}

# Sessions of the commands this run started in the root (setsid): cleanup() stops only those processes,
# never someone else's shell or tests in the same root.
SESSIONS=()

kill_inside() {
    # Our processes left running in the root (Dask workers, Xvfb, a stuck test) keep its mounts busy.
    local dir=$1 sig pid sid
    [ ${#SESSIONS[@]} -gt 0 ] || return 0
    for sig in TERM KILL; do
        while read -r pid sid; do
            case " ${SESSIONS[*]} " in *" $sid "*) ;; *) continue ;; esac
            [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$dir" ] && kill "-$sig" "$pid" 2>/dev/null || true
        done < <(ps -eo pid=,sess=)
        [ $sig = TERM ] && sleep 1
    done
    return 0
}

unmount_all() {
    local dir=$1 i m
    kill_inside "$dir"
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        m=${MOUNTS[i]}
        mountpoint -q "$m" 2>/dev/null && { umount -R "$m" 2>/dev/null || umount -R -l "$m" || true; }
    done
    MOUNTS=()
    # Anything still mounted below the root (a mount made by a process inside) goes too.
    for m in $(mounts_under "$dir" | sort -r); do
        umount -R "$m" 2>/dev/null || umount -R -l "$m" 2>/dev/null || true
    done
    if [ -n "$(mounts_under "$dir")" ]; then
        say "WARNING: still mounted below $dir:"; mounts_under "$dir" >&2
        return 1
    fi
}

CURRENT=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -n "$CURRENT" ] && { unmount_all "$CURRENT" || rc=1; }
    exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT
trap 'say "terminated"; exit 143' TERM

bind() {  # bind SRC DIR [ro]: a recursive bind that does not propagate unmounts back to the host
    mkdir -p "$2"
    mount --rbind "$1" "$2"
    MOUNTS+=("$2")
    mount --make-rslave "$2"
    [ "${3:-}" = ro ] && mount -o remount,bind,ro "$2" || true
}

enter() {  # mount the kernel file systems and the host's network and TLS settings into root $1
    local dir=$1
    CURRENT=$dir
    mkdir -p "$dir/proc"
    mount -t proc proc "$dir/proc"; MOUNTS+=("$dir/proc")
    bind /sys "$dir/sys"
    bind /dev "$dir/dev"
    cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        mkdir -p "$dir/etc/ssl/certs"
        cp -L /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
    fi
}

leave() {
    unmount_all "$CURRENT"
    CURRENT=""
}

in_root() {  # in_root DIR COMMAND...: a clean environment, plus the host's PIP_* and PYTEST_ARGS
    local dir=$1; shift
    local vars=(HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
                PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
    local v
    while IFS= read -r v; do vars+=("$v"); done < <(env | grep -E '^(PIP_[A-Z_]+|PYTEST_ARGS)=' || true)
    # In the background and waited for, so that INT/TERM reach our trap at once (bash runs traps only
    # after a foreground child ends) and cleanup() stops what runs inside.
    # fd 9 (the lock) stays out, so that nothing left inside could hold the lock.
    # (without job control the background child leads no group, so setsid makes it the session leader
    # without forking: its session id is $!; -w keeps the exit status should it ever fork)
    setsid -w chroot "$dir" /usr/bin/env -i "${vars[@]}" "$@" 9>&- &
    SESSIONS+=("$!")
    wait $!
}

build_root() {
    local started=$SECONDS
    say "building the Debian 13 root in $ROOT (mirror $MIRROR); about 10 minutes"
    if [ -n "$(mounts_under "$PARTIAL")" ]; then
        die "something is still mounted below $PARTIAL; unmount it (umount -R) and run again"
    fi
    rm -rf --one-file-system "$PARTIAL"
    if ! command -v debootstrap >/dev/null; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
    fi
    debootstrap --variant=minbase "$SUITE" "$PARTIAL" "$MIRROR" >"$LTS_ROOT/debootstrap.log" 2>&1 \
        || { tail -n 30 "$LTS_ROOT/debootstrap.log" >&2; die "debootstrap failed (log: $LTS_ROOT/debootstrap.log)"; }
    cat >"$PARTIAL/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates $SUITE-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    : >"$PARTIAL/etc/apt/sources.list"
    # Documentation is never read in the root; skipping it saves a few hundred MB.
    printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
        >"$PARTIAL/etc/dpkg/dpkg.cfg.d/01-nodoc"
    local packages
    packages=$(make -s -C "$CHECKOUT" deb-packages)
    enter "$PARTIAL"
    in_root "$PARTIAL" apt-get update -q
    # QGIS 3.44 LTR (and the libraries it needs) from backports; the rest of the Makefile's list from trixie.
    in_root "$PARTIAL" apt-get install -y -q --no-install-recommends -t "$SUITE-backports" \
        qgis python3-qgis qgis-providers
    # shellcheck disable=SC2086
    in_root "$PARTIAL" apt-get install -y -q --no-install-recommends make ca-certificates $packages
    in_root "$PARTIAL" apt-get clean
    leave
    echo "$RECIPE" >"$PARTIAL/$STAMP"
    if [ -d "$ROOT" ]; then
        [ -z "$(mounts_under "$ROOT")" ] || die "something is still mounted below $ROOT; unmount it and run again"
        rm -rf --one-file-system "$ROOT"
    fi
    mv "$PARTIAL" "$ROOT"
    say "root built in $((SECONDS - started)) s: $(chroot "$ROOT" dpkg-query -W -f='qgis ${Version}' qgis)"
}

copy_pip_config() {
    # pip's configuration files (index, find-links, certificates, constraints) travel into the root, and
    # local folders they name are bound read-only at the same path, so pip inside finds what it finds here.
    local f dir
    for f in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip"; do
        [ -e "$f" ] || continue
        if [ "$f" = "$HOME/.config/pip" ] || [ "$f" = "$HOME/.pip" ]; then
            dir=$ROOT/root/${f#"$HOME"/}
        else
            dir=$ROOT$f
        fi
        mkdir -p "$(dirname "$dir")"; rm -rf "$dir"; cp -rL "$f" "$dir"
    done
    local paths
    paths=$( { cat /etc/pip.conf /etc/xdg/pip/*.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf" 2>/dev/null \
               | sed -n 's/^[[:space:]]*\(find-links\|index-url\|extra-index-url\)[[:space:]]*=//p';
               env | sed -n 's/^PIP_\(FIND_LINKS\|INDEX_URL\|EXTRA_INDEX_URL\)=//p'; } \
             | tr ' ' '\n' | sed -n 's#^file://##; /^\//p' | sort -u || true)
    for f in $paths; do
        # an index URL names .../simple; its files may be linked from the folder above
        case "$f" in */simple|*/simple/) f=$(dirname "$f") ;; esac
        if [ -d "$f" ] && ! mountpoint -q "$ROOT$f"; then bind "$f" "$ROOT$f" ro; fi
    done
    return 0
}

run_suite() {
    say "copying the checkout and ../shared into $ROOT/work"
    rm -rf --one-file-system "$ROOT/work"
    mkdir -p "$ROOT/work/main"
    tar -C "$CHECKOUT" --exclude=./.venv --exclude=./.venv-worker --exclude=./build --exclude=./dist \
        --exclude=./demo_output --exclude=./.wheelhouse --exclude=./.qgis-settings --exclude=./.pytest_cache --exclude=./.lts-root \
        --exclude=__pycache__ -cf - . | tar -C "$ROOT/work/main" -xf -
    if [ -d "$CHECKOUT/../shared" ]; then
        cp -a "$CHECKOUT/../shared" "$ROOT/work/shared"
    else
        say "no ../shared beside the checkout: tests that need its data will skip"
    fi
    enter "$ROOT"
    copy_pip_config
    say "$(chroot "$ROOT" dpkg-query -W -f='QGIS ${Version}' qgis), $(chroot "$ROOT" /usr/bin/python3 --version)"
    say "running make setup $LTS_MAKE in the root"
    local started=$SECONDS rc=0
    in_root "$ROOT" /bin/bash -c "cd /work/main && make setup && make $LTS_MAKE" || rc=$?
    say "make setup $LTS_MAKE in the root: exit $rc after $((SECONDS - started)) s"
    leave
    return "$rc"
}

exec 9>"$LTS_ROOT/.lock"
flock 9 || die "could not lock $LTS_ROOT/.lock"
if [ "${LTS_REBUILD:-0}" = 1 ] || [ "$(cat "$ROOT/$STAMP" 2>/dev/null)" != "$RECIPE" ]; then
    build_root
fi
run_suite
