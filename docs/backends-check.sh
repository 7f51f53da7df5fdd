#!/usr/bin/env bash
# Kiln isolation backends check: bubblewrap ("sandbox") and gVisor ("gvisor").
#
# Runs the argv templates from docs/backends-research.md against escape attempts and
# prints PASS/FAIL per check (INFO lines are observations, not checks). Needs root,
# bwrap, runsc (optional: skipped when missing), setpriv, prlimit, timeout,
# /usr/bin/python3 and /usr/bin/node. Everything it makes lives under one mktemp
# folder, two planted secret files and cgroups named kiln-check-<tag>; all are removed
# on exit. Every workload run is bounded by `timeout`, the whole script by a watchdog.
#
#   sudo bash docs/backends-check.sh            # all checks + cold-start medians
#   BENCH=0 sudo bash docs/backends-check.sh    # skip the cold-start medians
set -u

PY=/usr/bin/python3
NODE=/usr/bin/node
SH=/bin/sh
SANDBOX_UID=65534
SANDBOX_GID=65534
WORKLOAD_PATH=/usr/local/bin:/usr/bin:/bin
BENCH=${BENCH:-1}
MAX_SECONDS=${MAX_SECONDS:-300}

if [ "$(id -u)" != 0 ]; then echo "must run as root" >&2; exit 2; fi
for tool in bwrap setpriv prlimit timeout "$PY"; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
HAVE_NODE=0; [ -x "$NODE" ] && HAVE_NODE=1
HAVE_RUNSC=0; command -v runsc >/dev/null && HAVE_RUNSC=1

TAG=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
T=$(mktemp -d /tmp/kiln-check.XXXXXX)
chmod 711 "$T"                      # the sandbox uid must traverse to its work folder
CG_PARENT=kiln-check-$TAG           # gVisor cgroupsPath prefix: /kiln-check-<tag>/<id>
SECRET_ROOT=/root/kiln-secret-$TAG
SECRET_TMP=/tmp/kiln-secret-$TAG
NPASS=0; NFAIL=0; N=0
BG_PIDS=()

pass() { echo "PASS  $*"; NPASS=$((NPASS + 1)); }
fail() { echo "FAIL  $*"; NFAIL=$((NFAIL + 1)); }
info() { echo "INFO  $*"; }
check() { if [ "$1" = 0 ]; then shift; pass "$*"; else shift; fail "$*"; fi; }

cleanup() {
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if [ "$HAVE_RUNSC" = 1 ] && [ -d "$T/gv" ]; then
        for st in "$T"/gv/*/; do
            [ -d "$st" ] || continue
            for id in $(runsc --root "$st" list -quiet 2>/dev/null); do
                runsc --root "$st" delete --force "$id" >/dev/null 2>&1
            done
        done
    fi
    for c in /sys/fs/cgroup/*/"$CG_PARENT"; do
        [ -d "$c" ] || continue
        for d in "$c"/*/; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
        rmdir "$c" 2>/dev/null
    done
    rm -rf "$T" "$SECRET_ROOT" "$SECRET_TMP" "/tmp/kiln-w-$TAG"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 3' INT TERM
( sleep "$MAX_SECONDS"; echo "watchdog: over ${MAX_SECONDS}s, stopping" >&2; kill -TERM $$ ) 2>/dev/null &
BG_PIDS+=($!)

# Counts host processes whose argv contains $1 (not counting this scanner).
count_procs() {
    "$PY" -c '
import os, sys
pat, me, n = sys.argv[1].encode(), str(os.getpid()), 0
for p in os.listdir("/proc"):
    if p.isdigit() and p != me:
        try:
            if pat in open("/proc/%s/cmdline" % p, "rb").read(): n += 1
        except OSError: pass
print(n)' "$1"
}

# ---------------------------------------------------------------- host-side fixtures
echo "kiln-secret-$TAG" > "$SECRET_ROOT"; chmod 600 "$SECRET_ROOT"
echo "kiln-secret-$TAG" > "$SECRET_TMP"; chmod 644 "$SECRET_TMP"

# A TCP listener on host 127.0.0.1 that logs every accepted connection.
"$PY" -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(16)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
while True:
    c, _ = s.accept(); open(sys.argv[2], "a").write("CONNECTED\n"); c.close()' "$T/port" "$T/hits" &
BG_PIDS+=($!)
# A host process with a unique marker in its argv.
"$PY" -c 'import time; time.sleep(1000)' "kiln-marker-$TAG" &
BG_PIDS+=($!)
for _ in $(seq 50); do [ -s "$T/port" ] && break; sleep 0.1; done
PORT=$(cat "$T/port")
"$PY" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()' "$PORT"
sleep 0.2
if grep -q CONNECTED "$T/hits" 2>/dev/null && [ "$(count_procs "kiln-marker-$TAG")" -ge 1 ]; then
    : > "$T/hits"
    info "fixtures: secrets $SECRET_ROOT $SECRET_TMP, listener 127.0.0.1:$PORT (host can connect), marker kiln-marker-$TAG"
else
    echo "fixtures did not come up" >&2; exit 2
fi

# Minimal /etc for the sandboxes (bound read-only): no shadow, no host passwd.
mkdir -p "$T/etc"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/work:/usr/sbin/nologin\n' > "$T/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$T/etc/group"
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' > "$T/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files\n' > "$T/etc/nsswitch.conf"
chmod 755 "$T/etc"; chmod 644 "$T"/etc/*

# Read-only rootfs skeleton for gVisor: mount points and the merged-/usr symlinks.
mkdir -p "$T/rootfs"/{usr,etc,work,tmp,proc,dev}
ln -s usr/bin "$T/rootfs/bin"; ln -s usr/lib "$T/rootfs/lib"
ln -s usr/lib64 "$T/rootfs/lib64"; ln -s usr/sbin "$T/rootfs/sbin"
chmod 755 "$T/rootfs"

# OCI config.json writer for gVisor.
cat > "$T/mkspec.py" <<'EOF'
import json, sys
# mkspec.py OUT ROOTFS WORK ETC AS_MB CGROUP_MB CGROUPS_PATH TMP_MB -- ARGV... ; env in ENV_JSON
out, rootfs, work, etc, as_mb, cg_mb, cg_path, tmp_mb = sys.argv[1:9]
argv = sys.argv[sys.argv.index("--") + 1:]
rlimits = [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024},
           {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]
if int(as_mb):
    rlimits.append({"type": "RLIMIT_AS", "soft": int(as_mb) << 20, "hard": int(as_mb) << 20})
caps = {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")}
ro = ["rbind", "ro", "nosuid", "nodev"]
spec = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": 65534, "gid": 65534},
        "args": argv,
        "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/work"],
        "cwd": "/work",
        "capabilities": caps,
        "rlimits": rlimits,
        "noNewPrivileges": True,
    },
    "root": {"path": rootfs, "readonly": True},
    "hostname": "kiln",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=16m"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", "size=%dm" % int(tmp_mb)]},
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ro},
        {"destination": "/etc", "type": "bind", "source": etc, "options": ro},
        {"destination": "/work", "type": "bind", "source": work, "options": ["rbind", "rw", "nosuid", "nodev"]},
    ],
    "linux": {
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "cgroupsPath": cg_path,
        "resources": {"memory": {"limit": int(cg_mb) << 20}},
    },
}
json.dump(spec, open(out, "w"), indent=1)
EOF

# ---------------------------------------------------------------- workload runners
# new_work LANG FILE: makes a work folder holding main.<ext> (from FILE) and input.json.
new_work() {
    N=$((N + 1))
    local w="$T/w$N" ext
    case $1 in py) ext=py ;; node) ext=js ;; sh) ext=sh ;; esac
    mkdir -p "$w"
    cp "$2" "$w/main.$ext"
    printf '{"tag": "%s", "port": %s, "hello": "world"}\n' "$TAG" "$PORT" > "$w/input.json"
    chown -R "$SANDBOX_UID:$SANDBOX_GID" "$w"; chmod 700 "$w"
    WORK=$w
}

runtime_argv() {    # sets CMD and RLIMIT (1 when RLIMIT_AS applies) for LANG MEM_MB
    case $1 in
        py) CMD=("$PY" -u main.py); RLIMIT=1 ;;
        node) CMD=("$NODE" "--max-old-space-size=$2" main.js); RLIMIT=0 ;;
        sh) CMD=("$SH" main.sh); RLIMIT=1 ;;
    esac
}

# bwrap_argv WORK: the sandbox argv template (see backends-research.md), into BW.
bwrap_argv() {
    BW=(setpriv "--reuid=$SANDBOX_UID" "--regid=$SANDBOX_GID" --clear-groups --
        bwrap
        --unshare-all --unshare-user --unshare-cgroup --disable-userns
        --die-with-parent --new-session
        --uid "$SANDBOX_UID" --gid "$SANDBOX_GID" --cap-drop ALL --hostname kiln
        --ro-bind /usr /usr
        --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin
        --ro-bind "$T/etc" /etc
        --dev /dev --size $((16 << 20)) --tmpfs /dev/shm --remount-ro /dev
        --proc /proc
        --size $((64 << 20)) --tmpfs /tmp
        --bind "$1" /work
        --remount-ro /
        --chdir /work
        --clearenv --setenv PATH "$WORKLOAD_PATH" --setenv HOME /work
        --)
}

# run_sandbox LANG WORK MEM_MB TIMEOUT_S -> RC, OUT, ERR, MS
# `timeout` puts itself and the child in one process group and signals the group:
# SIGTERM at the deadline, SIGKILL 1 s later, like Kiln's process backend.
run_sandbox() {
    local lang=$1 w=$2 mem=$3 to=$4 t0 pre=()
    runtime_argv "$lang" "$mem"
    bwrap_argv "$w"
    [ "$RLIMIT" = 1 ] && pre=(prlimit "--as=$((mem << 20))" --)
    OUT=$w.out; ERR=$w.err
    t0=$(date +%s%N)
    timeout -k 1 "$to" "${pre[@]}" "${BW[@]}" "${CMD[@]}" < "$w/input.json" > "$OUT" 2> "$ERR"
    RC=$?
    MS=$((($(date +%s%N) - t0) / 1000000))
}

# run_gvisor LANG WORK MEM_MB TIMEOUT_S -> RC, OUT, ERR, MS, GV_ID, GV_STATE
run_gvisor() {
    local lang=$1 w=$2 mem=$3 to=$4 t0 as=0 id st
    runtime_argv "$lang" "$mem"
    [ "$RLIMIT" = 1 ] && as=$mem
    id=kiln-$TAG-$N; st=$T/gv/$id
    mkdir -p "$st/bundle"
    "$PY" "$T/mkspec.py" "$st/bundle/config.json" "$T/rootfs" "$w" "$T/etc" "$as" $((mem + 64)) \
        "/$CG_PARENT/$id" 64 -- "${CMD[@]}"
    OUT=$w.out; ERR=$w.err; GV_ID=$id; GV_STATE=$st
    t0=$(date +%s%N)
    timeout -k 1 "$to" runsc --root "$st" --network=none run --bundle "$st/bundle" "$id" \
        < "$w/input.json" > "$OUT" 2> "$ERR"
    RC=$?
    MS=$((($(date +%s%N) - t0) / 1000000))
}

# gvisor_cleanup: what Kiln does after every gVisor workload (normal exit or kill).
gvisor_cleanup() {
    runsc --root "$GV_STATE" delete --force "$GV_ID" >/dev/null 2>&1
    rm -rf "$GV_STATE"
    for c in /sys/fs/cgroup/*/"$CG_PARENT/$GV_ID"; do [ -d "$c" ] && rmdir "$c" 2>/dev/null; done
}

# ---------------------------------------------------------------- workloads
cat > "$T/probe.py" <<'EOF'
import ctypes, errno, json, os, socket, sys
cfg = json.load(sys.stdin)
tag, port = cfg["tag"], cfg["port"]
def res(name, ok, detail=""):
    print("RESULT", name, "OK" if ok else "BAD", detail, flush=True)
def ename(e):
    return errno.errorcode.get(e, str(e))
def readable(p):
    try:
        open(p).read(); return True
    except OSError:
        return False
res("stdin", cfg.get("hello") == "world", "input.json arrived on stdin")
res("shadow", not readable("/etc/shadow"), "/etc/shadow")
res("secret_root", not readable("/root/kiln-secret-" + tag), "/root/kiln-secret-*")
res("secret_tmp", not readable("/tmp/kiln-secret-" + tag), "host /tmp/kiln-secret-*")
for d in ("/usr", "/etc", "", "/dev"):
    p = "%s/kiln-w-%s" % (d, tag)
    try:
        open(p, "w").write("x"); res("write_" + (d.strip("/") or "root"), False, p + " written")
    except OSError as e:
        res("write_" + (d.strip("/") or "root"), True, "%s: %s" % (p, ename(e.errno)))
try:
    open("/tmp/kiln-w-" + tag, "w").write("x"); print("INFO private /tmp is writable inside", flush=True)
except OSError as e:
    print("INFO private /tmp not writable:", ename(e.errno), flush=True)
open("/work/out.txt", "w").write("ok")
res("write_work", open("/work/out.txt").read() == "ok", "/work is writable")
names = [n for _, n in socket.if_nameindex()]
res("net_ifaces", names == ["lo"], "interfaces: " + ",".join(names))
for name, addr in (("net_host_tcp", ("127.0.0.1", port)), ("net_outbound", ("1.1.1.1", 80))):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect(addr); res(name, False, "connected to %s:%d" % addr)
    except OSError as e:
        res(name, True, "%s:%d refused (%s)" % (addr + (type(e).__name__,)))
    finally:
        s.close()
seen, pids = False, 0
for p in os.listdir("/proc"):
    if p.isdigit():
        pids += 1
        try:
            if ("kiln-marker-" + tag).encode() in open("/proc/%s/cmdline" % p, "rb").read():
                seen = True
        except OSError:
            pass
res("host_process_hidden", not seen, "%d pids visible in /proc" % pids)
try:
    f = "/proc/sys/kernel/printk_ratelimit"
    v = open(f).read()
    open(f, "w").write(v)       # writes back the current value: harmless if it succeeds
    res("sysctl_write", False, f + " accepted a write (host sysctl!)")
except OSError as e:
    res("sysctl_write", True, "/proc/sys/kernel/printk_ratelimit: " + ename(e.errno))
libc = ctypes.CDLL(None, use_errno=True)
r = libc.mount(b"none", b"/usr", None, 32 | 4096, None)          # MS_REMOUNT|MS_BIND -> rw
res("remount_usr_rw", r != 0, ("mount: " + ename(ctypes.get_errno())) if r else "/usr remounted rw")
try:
    import getpass, multiprocessing
    with multiprocessing.Pool(2) as pool:
        squares = pool.map(abs, [-1, -2])
    res("runtime_works", squares == [1, 2] and getpass.getuser() == "nobody"
        and socket.getaddrinfo("localhost", 80)[0][4][0] in ("127.0.0.1", "::1"),
        "multiprocessing.Pool, getpass.getuser(), localhost resolve")
except Exception as e:
    res("runtime_works", False, repr(e))
print("INFO uid=%d gid=%d hostname=%s pid=%d" % (os.getuid(), os.getgid(), socket.gethostname(), os.getpid()), flush=True)
r = libc.unshare(0x10000000)                                     # CLONE_NEWUSER
res("nested_userns", r != 0, ("unshare(CLONE_NEWUSER): " + ename(ctypes.get_errno())) if r else "new user namespace created")
EOF

cat > "$T/mem.py" <<'EOF'
small = bytearray(30 * 1024 * 1024)
print("SMALL_OK", flush=True)
try:
    big = bytearray(200 * 1024 * 1024)
    for i in range(0, len(big), 4096):
        big[i] = 1
    print("ALLOCATED", flush=True)
except MemoryError:
    print("MEMORYERROR", flush=True)
EOF

cat > "$T/timeout.py" <<'EOF'
import json, subprocess, sys, time
tag = json.load(sys.stdin)["tag"]
m = "kiln-tmo-" + tag
subprocess.Popen(["/bin/sh", "-c", "sleep 1000; : " + m])
subprocess.Popen(["/bin/sh", "-c", "trap '' TERM HUP; sleep 1000; : " + m], start_new_session=True)
print("STARTED", flush=True)
while True:
    time.sleep(0.1)
EOF

cat > "$T/probe.js" <<'EOF'
const fs = require("fs"), net = require("net");
const cfg = JSON.parse(fs.readFileSync(0, "utf8"));
const res = (n, ok, d) => console.log("RESULT", n, ok ? "OK" : "BAD", d || "");
const readable = p => { try { fs.readFileSync(p); return true } catch (e) { return false } };
res("shadow", !readable("/etc/shadow"), "/etc/shadow");
res("secret_root", !readable("/root/kiln-secret-" + cfg.tag), "/root/kiln-secret-*");
let seen = false;
for (const p of fs.readdirSync("/proc").filter(x => /^\d+$/.test(x))) {
  try { if (fs.readFileSync("/proc/" + p + "/cmdline").includes("kiln-marker-" + cfg.tag)) seen = true } catch (e) {}
}
res("host_process_hidden", !seen, "");
try { fs.writeFileSync("/usr/kiln-w-" + cfg.tag, "x"); res("write_usr", false, "written") }
catch (e) { res("write_usr", true, e.code) }
const s = net.connect({host: "127.0.0.1", port: cfg.port});
const t = setTimeout(() => { res("net_host_tcp", true, "timeout"); s.destroy() }, 2000);
s.on("connect", () => { clearTimeout(t); res("net_host_tcp", false, "connected"); s.destroy() });
s.on("error", e => { clearTimeout(t); res("net_host_tcp", true, e.code) });
EOF

cat > "$T/heap.js" <<'EOF'
const a = [];
for (;;) a.push(new Array(1e5).fill(1.5));
EOF

cat > "$T/buffer.js" <<'EOF'
const b = Buffer.alloc(200 * 1024 * 1024, 1);
console.log("BUFFER_OK", b.length);
EOF

cat > "$T/probe.sh" <<'EOF'
tag=$(sed 's/.*"tag": "\([0-9a-f]*\)".*/\1/' /work/input.json)
if cat /etc/shadow >/dev/null 2>&1; then echo "RESULT shadow BAD read"; else echo "RESULT shadow OK"; fi
if (echo x > /usr/kiln-w-$tag) 2>/dev/null; then echo "RESULT write_usr BAD"; else echo "RESULT write_usr OK"; fi
if grep -qa "kiln-marker-$tag" /proc/[0-9]*/cmdline 2>/dev/null; then echo "RESULT host_process_hidden BAD"; else echo "RESULT host_process_hidden OK"; fi
ls / >/dev/null 2>&1 && echo "INFO coreutils ls works" || echo "INFO coreutils ls fails: $(ls / 2>&1 | head -1)"
EOF

# expect_results BACKEND LABEL NAMES...: one PASS/FAIL per RESULT line name in $OUT.
expect_results() {
    local be=$1 label=$2 name line; shift 2
    for name in "$@"; do
        line=$(grep -m1 "^RESULT $name " "$OUT")
        if [ -z "$line" ]; then fail "$be $label $name: no result (rc=$RC: $(head -c 300 "$ERR" | tr '\n' ' '))"
        elif [ "$(echo "$line" | cut -d' ' -f3)" = OK ]; then pass "$be $label $name: $(echo "$line" | cut -d' ' -f4-)"
        else fail "$be $label $name: $(echo "$line" | cut -d' ' -f4-)"; fi
    done
    grep '^INFO' "$OUT" | sed "s/^INFO /INFO  $be $label: /"
}

host_side_checks() {    # after a probe run: nothing leaked onto the host
    local be=$1
    [ ! -e "/tmp/kiln-w-$TAG" ]; check $? "$be host /tmp untouched (sandbox /tmp is private)"
    [ ! -e "/usr/kiln-w-$TAG" ] && [ ! -e "/etc/kiln-w-$TAG" ] && [ ! -e "/kiln-w-$TAG" ]
    check $? "$be host /usr, /etc, / untouched"
    if grep -q CONNECTED "$T/hits" 2>/dev/null; then fail "$be host listener saw a connection"
    else pass "$be host listener saw no connection"; fi
    [ "$(stat -c %u "$WORK/out.txt" 2>/dev/null)" = "$SANDBOX_UID" ]
    check $? "$be files written in /work are owned by host uid $SANDBOX_UID ($(stat -c %u "$WORK/out.txt" 2>/dev/null))"
}

run_suite() {
    local be=$1 run=$2 n before
    echo "== $be"
    # Python: every escape attempt.
    new_work py "$T/probe.py"; $run py "$WORK" 64 20
    local userns_check=nested_userns
    [ "$be" = gvisor ] && userns_check=""
    expect_results "$be" python stdin shadow secret_root secret_tmp write_usr write_etc write_root \
        write_dev write_work net_ifaces net_host_tcp net_outbound host_process_hidden sysctl_write \
        remount_usr_rw runtime_works $userns_check
    [ "$be" = gvisor ] && grep -q "^RESULT nested_userns" "$OUT" && \
        info "$be python: $(grep -m1 '^RESULT nested_userns' "$OUT" | cut -d' ' -f4-) (inside the gVisor kernel; not a check)"
    host_side_checks "$be"
    [ "$be" = gvisor ] && gvisor_cleanup

    # Memory: 64 MB limit, 30 MB must work, 200 MB must not.
    new_work py "$T/mem.py"; $run py "$WORK" 64 20
    if grep -q ALLOCATED "$OUT"; then fail "$be python mem 64MB: 200 MB allocation succeeded"
    elif grep -q MEMORYERROR "$OUT"; then pass "$be python mem 64MB: 200 MB -> MemoryError (rc=$RC)"
    elif [ "$RC" = 137 ]; then pass "$be python mem 64MB: 200 MB -> killed (SIGKILL, rc=137)"
    else fail "$be python mem 64MB: unclear (rc=$RC) $(tr '\n' ' ' < "$ERR" | head -c 200)"; fi
    grep -q SMALL_OK "$OUT"; check $? "$be python mem 64MB: a 30 MB allocation still works"
    [ "$be" = gvisor ] && gvisor_cleanup

    # Timeout: a sleeping loop plus children (one in its own session, ignoring SIGTERM).
    new_work py "$T/timeout.py"; $run py "$WORK" 64 2
    grep -q STARTED "$OUT"; check $? "$be timeout: workload started"
    { [ "$RC" = 124 ] || [ "$RC" = 137 ]; } && [ "$MS" -lt 4500 ]
    check $? "$be timeout 2s: ended at the deadline (rc=$RC after ${MS} ms)"
    sleep 0.3
    n=$(count_procs "kiln-tmo-$TAG")
    [ "$n" = 0 ]; check $? "$be timeout: no workload process left on the host ($n)"
    if [ "$be" = gvisor ]; then
        n=$(count_procs "$GV_STATE")
        [ "$n" = 0 ]; check $? "gvisor timeout: no runsc/gofer/sandbox process left ($n)"
        info "gvisor timeout: state dir before cleanup: $(ls "$GV_STATE" 2>/dev/null | grep -v bundle | tr '\n' ' ')"
        gvisor_cleanup
        [ ! -e "$GV_STATE" ] && ! ls -d /sys/fs/cgroup/*/"$CG_PARENT/$GV_ID" >/dev/null 2>&1
        check $? "gvisor timeout: state dir and cgroups removed after delete --force + rm -rf"
    else
        n=$(count_procs "$WORK")
        [ "$n" = 0 ]; check $? "sandbox timeout: no bwrap process left ($n)"
    fi

    # Node spot-check.
    if [ "$HAVE_NODE" = 1 ]; then
        : > "$T/hits"
        new_work node "$T/probe.js"; $run node "$WORK" 64 20
        expect_results "$be" node shadow secret_root host_process_hidden write_usr net_host_tcp
        [ "$be" = gvisor ] && gvisor_cleanup
        new_work node "$T/heap.js"; $run node "$WORK" 64 20
        grep -q "heap out of memory" "$ERR" && [ "$RC" != 0 ]
        check $? "$be node --max-old-space-size=64: heap exhaustion aborts (rc=$RC)"
        [ "$be" = gvisor ] && gvisor_cleanup
        new_work node "$T/buffer.js"; $run node "$WORK" 64 20
        if grep -q BUFFER_OK "$OUT"; then
            info "$be node: a 200 MB Buffer (off-heap) is NOT stopped by --max-old-space-size (rc=$RC)"
        else
            info "$be node: a 200 MB Buffer was stopped (rc=$RC)"
        fi
        [ "$be" = gvisor ] && gvisor_cleanup
    fi

    # Shell spot-check.
    new_work sh "$T/probe.sh"; $run sh "$WORK" 64 20
    expect_results "$be" sh shadow write_usr host_process_hidden
    [ "$be" = gvisor ] && gvisor_cleanup
}

# ---------------------------------------------------------------- bubblewrap
run_suite sandbox run_sandbox

# Why bwrap must not run as root (even with --uid 65534 --cap-drop ALL): the sandbox
# process stays host uid 0, and /proc/sys accepts root's writes. Writes the current value back.
new_work py "$T/probe.py"
chmod 777 "$WORK"      # root without capabilities is "other" to a folder owned by 65534
bwrap_argv "$WORK"
timeout -k 1 20 "${BW[@]:5}" "$PY" -u main.py < "$WORK/input.json" > "$WORK.out" 2>&1
info "sandbox run as root instead of uid $SANDBOX_UID: $(grep -m1 '^RESULT sysctl_write' "$WORK.out" | cut -d' ' -f3-) (why bwrap is started as uid $SANDBOX_UID)"

# bwrap inside a PID namespace made by a root process (what Kiln's process backend does).
new_work sh /dev/null
echo 'echo "pid=$$"' > "$WORK/main.sh"; chown "$SANDBOX_UID" "$WORK/main.sh"
run_sandbox_in_pidns() {
    runtime_argv sh 64; bwrap_argv "$WORK"
    timeout -k 1 20 unshare --pid --fork --kill-child "${BW[@]}" "${CMD[@]}" < /dev/null > "$WORK.out" 2> "$WORK.err"
    RC=$?
}
run_sandbox_in_pidns
[ "$RC" = 0 ] && grep -q 'pid=2' "$WORK.out"
check $? "sandbox works when started inside a fresh PID namespace (rc=$RC, $(cat "$WORK.out" "$WORK.err" | head -c 120))"

# ---------------------------------------------------------------- gVisor
if [ "$HAVE_RUNSC" = 1 ]; then
    info "runsc: $(runsc --version 2>&1 | head -1), default platform: $(runsc flags 2>&1 | grep -A1 -- '-platform string' | tail -1 | sed -n 's/.*(default "\(.*\)").*/\1/p')"
    run_suite gvisor run_gvisor

    # runsc inside a PID namespace made by a root process: expected to fail (see doc).
    new_work sh /dev/null
    echo 'echo ok' > "$WORK/main.sh"; chown "$SANDBOX_UID" "$WORK/main.sh"
    runtime_argv sh 64; id=kiln-$TAG-pidns; st=$T/gv/$id; mkdir -p "$st/bundle"
    "$PY" "$T/mkspec.py" "$st/bundle/config.json" "$T/rootfs" "$WORK" "$T/etc" 64 128 "/$CG_PARENT/$id" 64 -- "${CMD[@]}"
    timeout -k 1 20 unshare --pid --fork --kill-child runsc --root "$st" --network=none run --bundle "$st/bundle" "$id" \
        < /dev/null > "$WORK.out" 2> "$WORK.err"
    info "gvisor inside a root-made PID namespace (no new /proc): rc=$? $(tail -c 160 "$WORK.err" | tr '\n' ' ')"
    GV_ID=$id; GV_STATE=$st; gvisor_cleanup
else
    info "runsc not installed: gVisor checks skipped"
fi

# ---------------------------------------------------------------- cold start
if [ "$BENCH" = 1 ]; then
    echo "== cold start (median wall time, python3 -c pass)"
    new_work py /dev/null
    bwrap_argv "$WORK"
    GVS=$T/gv/bench; mkdir -p "$GVS/bundle"
    "$PY" "$T/mkspec.py" "$GVS/bundle/config.json" "$T/rootfs" "$WORK" "$T/etc" 64 128 "/$CG_PARENT/bench" 64 -- "$PY" -c pass
    "$PY" - "$GVS" "$HAVE_RUNSC" "$WORK" "${BW[@]}" <<'EOF'
import os, statistics, subprocess, sys, time
gvs, have_runsc, work, bw = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4:]
env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work}
def median(argv, n, name):
    times = []
    for i in range(n):
        a = [x.replace("{i}", str(i)) for x in argv]
        t = time.perf_counter()
        r = subprocess.run(a, env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=30)
        times.append((time.perf_counter() - t) * 1000)
        if r.returncode != 0:
            print("INFO  bench %s failed: %s" % (name, r.stderr[-200:])); return
    print("INFO  cold start %-34s median %6.1f ms  (min %.1f, max %.1f, n=%d)"
          % (name, statistics.median(times), min(times), max(times), n))
median(["/usr/bin/python3", "-c", "pass"], 20, "plain python3 -c pass")
median(bw + ["/usr/bin/python3", "-c", "pass"], 20, "bwrap python3 -c pass")
if have_runsc:
    median(["runsc", "--root", gvs + "/st{i}", "--network=none", "run", "--bundle", gvs + "/bundle",
            "bench-{i}"], 10, "runsc run python3 -c pass")
EOF
    GV_ID=x; GV_STATE=$GVS; gvisor_cleanup
    for c in /sys/fs/cgroup/*/"$CG_PARENT"/bench; do [ -d "$c" ] && rmdir "$c" 2>/dev/null; done
fi

echo "== $NPASS passed, $NFAIL failed"
[ "$NFAIL" = 0 ]
