# shellcheck shell=bash
# Shared helpers of scripts/bench-compare, scripts/bench-rss and scripts/bench-sparse.
# Sourced, not run. Callers use `set -euo pipefail`.
#
# Environment:
#   CARGO_TARGET_DIR   where cargo builds (default: <repo>/target)
#   DISKSTREAM_BIN     use this diskstream binary instead of building one
#   KERNEL_RATE_BIN    use this kernel-rate binary instead of building one
#   DISKSTREAM_ARGS    extra tuning flags for every diskstream run (e.g. "--queue-depth 16")

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target}"
# shellcheck disable=SC2206
DS_EXTRA=(${DISKSTREAM_ARGS:-})

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup registry
# Everything a script creates is registered here and undone by one trap on EXIT, INT and TERM,
# in reverse order: unmount, detach loop devices, remove files.
CLEAN_LOOPS=()
CLEAN_MOUNTS=()
CLEAN_PATHS=()
CLEAN_HUGEPAGES=""
CLEANED=0

cleanup() {
    [[ $CLEANED == 1 ]] && return 0
    CLEANED=1
    set +e
    local i
    for ((i = ${#CLEAN_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${CLEAN_MOUNTS[i]}" 2>/dev/null || umount -l "${CLEAN_MOUNTS[i]}" 2>/dev/null
    done
    for ((i = ${#CLEAN_LOOPS[@]} - 1; i >= 0; i--)); do
        losetup -d "${CLEAN_LOOPS[i]}" 2>/dev/null
    done
    for ((i = ${#CLEAN_PATHS[@]} - 1; i >= 0; i--)); do
        rm -rf -- "${CLEAN_PATHS[i]}"
    done
    [[ -n $CLEAN_HUGEPAGES ]] && echo "$CLEAN_HUGEPAGES" >/proc/sys/vm/nr_hugepages
}

on_signal() {
    log "interrupted; cleaning up"
    cleanup
    trap - EXIT
    exit 130
}

install_cleanup_trap() {
    trap cleanup EXIT
    trap on_signal INT TERM HUP
}

register_path() { CLEAN_PATHS+=("$1"); }
register_loop() { CLEAN_LOOPS+=("$1"); }
register_mount() { CLEAN_MOUNTS+=("$1"); }

# ---------------------------------------------------------------- environment
require_root() {
    [[ $(id -u) == 0 ]] || die "$(basename "$0") must run as root (drop_caches, losetup)"
}

# ensure_tools CMD:PACKAGE ... — installs missing tools with apt-get (we are root).
ensure_tools() {
    local missing=() spec cmd pkg
    for spec in "$@"; do
        cmd="${spec%%:*}"
        pkg="${spec#*:}"
        if [[ $cmd == /* ]]; then
            [[ -x $cmd ]] || missing+=("$pkg")
        else
            command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# reserve_huge_pages N — reserves N more 2 MiB hugetlb pages (given back at exit) so fio can run
# with --mem=shmhuge too. diskstream's buffers are huge-page backed (THP), and whether fio's
# malloc'd buffers are physically contiguous depends on how fragmented memory happens to be: on
# this VM that alone moved fio's 1 MiB QD 1 reads between 1.0 and 2.4 GB/s. Running fio both ways
# and keeping its best makes the limit the device's, not memory layout luck. Sets FIO_MEMS.
FIO_MEMS=(malloc)
reserve_huge_pages() {
    local want="$1" old free
    if [[ ! -w /proc/sys/vm/nr_hugepages ]]; then
        log "no hugetlb pages on this kernel: fio runs with malloc'd buffers only"
        return 0
    fi
    old="$(cat /proc/sys/vm/nr_hugepages)"
    CLEAN_HUGEPAGES="$old"
    echo $((old + want)) >/proc/sys/vm/nr_hugepages
    free="$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)"
    if ((free >= want)); then
        FIO_MEMS=(malloc shmhuge)
    else
        log "only $free of $want huge pages could be reserved: fio runs with malloc'd buffers only"
    fi
}

# check_scratch DIR — creates DIR and refuses file systems without O_DIRECT (tmpfs).
check_scratch() {
    mkdir -p "$1"
    local fstype
    fstype="$(findmnt -no FSTYPE -T "$1" 2>/dev/null || stat -f -c %T "$1")"
    case "$fstype" in
        tmpfs | ramfs | overlay) die "$1 is on $fstype: use --dir on a real disk (O_DIRECT needed)" ;;
    esac
}

# build_bins — sets DS (diskstream) and KR (kernel-rate), building them if needed.
build_bins() {
    if [[ -n ${DISKSTREAM_BIN:-} && -n ${KERNEL_RATE_BIN:-} ]]; then
        DS="$DISKSTREAM_BIN"
        KR="$KERNEL_RATE_BIN"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, or set DISKSTREAM_BIN and KERNEL_RATE_BIN)"
    log "building release binaries in $TARGET_DIR"
    (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p diskstream -p diskstream-benches --bins)
    DS="${DISKSTREAM_BIN:-$TARGET_DIR/release/diskstream}"
    KR="${KERNEL_RATE_BIN:-$TARGET_DIR/release/kernel-rate}"
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
    sleep 1
}

# ---------------------------------------------------------------- sizes and numbers
# to_bytes 4G | 512M | 1234 -> bytes (binary suffixes, as head -c and truncate use them)
to_bytes() {
    local v="$1" n unit
    n="${v%[KkMmGgTt]}"
    unit="${v:${#n}}"
    case "$unit" in
        "") echo "$n" ;;
        K | k) echo $((n << 10)) ;;
        M | m) echo $((n << 20)) ;;
        G | g) echo $((n << 30)) ;;
        T | t) echo $((n << 40)) ;;
    esac
}

# calc EXPR [decimals] — floating point arithmetic through awk.
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }
# max_f A B
max_f() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 >= b + 0) ? a : b }'; }
min_f() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 <= b + 0) ? a : b }'; }
# ge A B -> success if A >= B
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 >= b + 0) }'; }

# json_field KEY FILE — value of a top-level scalar key in a one-line JSON object.
json_field() {
    sed -n "s/.*\"$1\":\\(\"[^\"]*\"\\|[^,}]*\\).*/\\1/p" "$2" | head -n1 | tr -d '"'
}

# ---------------------------------------------------------------- data
# make_mixed FILE BYTES [ZERO_RUNS] — FILE gets BYTES of `tar -cf - -C / usr` output (repeated if
# /usr is smaller), real data with no holes; then ZERO_RUNS runs of 16 MiB of written (allocated)
# zeroes spread evenly, like the free space of a real disk.
make_mixed() {
    local file="$1" bytes="$2" zruns="${3:-0}" i stride
    log "writing $bytes bytes of mixed data (tar of /usr) to $file"
    rm -f "$file"
    # Repeat the tar stream until head has enough. Stop once head is gone: tar then dies of SIGPIPE
    # (status > 128) or, if SIGPIPE is ignored, fails with EPIPE; the bound is a last resort.
    {
        local r rc
        for ((r = 0; r < 64; r++)); do
            rc=0
            tar -cf - -C / usr 2>/dev/null || rc=$?
            ((rc > 1)) && break
        done
    } | head -c "$bytes" >"$file" || true
    [[ $(stat -c %s "$file") == "$bytes" ]] || die "could not write $bytes bytes to $file"
    if ((zruns > 0)); then
        stride=$((bytes / 16777216 / zruns))
        for ((i = 0; i < zruns; i++)); do
            dd if=/dev/zero of="$file" bs=16M count=1 seek=$((i * stride + stride / 2)) \
                conv=notrunc,fsync status=none
        done
    fi
    sync
}

# cpu_ticks — "STEAL IDLE" of the whole machine since boot, in clock ticks (/proc/stat: steal, and idle +
# iowait): what a hypervisor took from this guest's vCPUs, and what nothing ran on.
cpu_ticks() {
    awk '/^cpu / { print $9, $5 + $6 }' /proc/stat
}

# timed OUTPREFIX CMD... — runs CMD under /usr/bin/time -v; sets T_WALL (s, measured around it), T_CPU (user+sys s),
# T_RSS (peak RSS, MiB), and for the whole machine over the run T_STEAL (vCPU seconds the hypervisor
# took: on a VM whose disk emulation shares the host cores of its vCPUs, I/O costs this) and T_IDLE
# (vCPU seconds idle or waiting for I/O). CMD's stdout goes to OUTPREFIX.out, stderr to OUTPREFIX.err.
timed() {
    local prefix="$1"
    shift
    local tf="$prefix.time" rc=0 t0 t1 steal0 idle0 steal1 idle1
    read -r steal0 idle0 < <(cpu_ticks)
    t0="$(date +%s%N)"
    /usr/bin/time -v -o "$tf" "$@" >"$prefix.out" 2>"$prefix.err" || rc=$?
    t1="$(date +%s%N)"
    read -r steal1 idle1 < <(cpu_ticks)
    T_STEAL="$(calc "($steal1 - $steal0) / $(getconf CLK_TCK)" 2)"
    T_IDLE="$(calc "($idle1 - $idle0) / $(getconf CLK_TCK)" 2)"
    if ((rc != 0)); then
        log "command failed ($rc): $*"
        sed 's/^/    /' "$prefix.err" >&2
        return "$rc"
    fi
    local u s rss
    T_WALL="$(calc "($t1 - $t0) / 1e9" 3)"
    u="$(sed -n 's/.*User time (seconds): //p' "$tf")"
    s="$(sed -n 's/.*System time (seconds): //p' "$tf")"
    T_CPU="$(calc "$u + $s" 2)"
    rss="$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$tf")"
    T_RSS="$(calc "$rss / 1024" 1)"
}

# fio_bw FILE — "READ WRITE" bandwidth in bytes/s (decimal), summed over the jobs of a fio
# --output-format=json result.
fio_bw() {
    jq -r '[([.jobs[].read.bw_bytes] | add), ([.jobs[].write.bw_bytes] | add)] | map(tostring) | join(" ")' "$1"
}
