#!/usr/bin/env bash
# Checks docker/Dockerfile without a Docker engine.
#
#   docker/check-image.sh [path/to/kiln]     (default: .build/release/kiln of this repository)
#
# a. Every shared library the binary loads comes from a package the runtime stage installs,
#    from their dependency closure, or from the base image (Essential packages and apt's
#    closure, as in debian:bookworm-slim). Uses this host's dpkg and apt lists (bookworm).
# b. Builds the runtime stage by hand: a debootstrapped bookworm minbase root with the runtime
#    packages (cached in /var/cache/kiln-image-root, keyed by the package list) as the read-only
#    lower layer of an overlay, then the stage's own RUN, COPY, ENV, USER... steps replayed in
#    it (the binary stands in for the builder stage's output). Then, for several users and
#    privilege levels, the image's ENTRYPOINT + CMD runs there as a container would: new PID
#    and mount namespaces, tini as PID 1, pivot_root into the root, a fresh volume on
#    /var/lib/kiln, the image's environment (KILN_LISTEN moved to a free loopback port). It
#    checks /healthz, a python and a shell workload on the process backend, what
#    GET /v1/backends says (reported; FAIL only for isolate unavailable for a reason other than
#    the Node version, or an available backend that cannot run a trivial workload), the
#    HEALTHCHECK command run inside the container (and failing once the server is gone), and
#    that SIGTERM ends it with exit 0. The runs: root with every capability (like
#    --privileged), the image's USER with Docker's default capability set, root with Docker's
#    default capability set, and the image's USER with this host's Node 20 over the image's
#    node (like --build-arg NODE_MAJOR=20), when the host has one. Before them, the isolate
#    host's own tests (Sources/KilnBackends/isolate/host-test.mjs) run with the image's node.
#
# Needs root (namespaces, mounts, debootstrap), debootstrap, curl, python3, and apt lists
# (apt-get update). Prints PASS/FAIL per check and ends with "N passed, M failed"; exits
# non-zero when anything failed. Every mount lives in a private mount namespace, so it goes
# away with the script, however it ends; the servers it starts die with it (killed on exit,
# and a parent-death signal if the script itself is killed). The cached root is never written.
set -uo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
DOCKER_DIR=$(dirname "$SCRIPT")
REPO=$(dirname "$DOCKER_DIR")
DOCKERFILE=$DOCKER_DIR/Dockerfile
COMPOSE=$DOCKER_DIR/compose.yaml
BIN_ARG=${1:-$REPO/.build/release/kiln}
BIN=$(readlink -f "$BIN_ARG" 2>/dev/null || echo "$BIN_ARG")
CACHE=${KILN_IMAGE_CACHE:-/var/cache/kiln-image-root}
SUITE=bookworm
START_TIMEOUT=${KILN_CHECK_START_TIMEOUT:-90}

# Mounts stay in a namespace of our own: re-run the script inside one.
if [ "$(id -u)" = 0 ] && [ -z "${KILN_CHECK_IN_NS:-}" ]; then
    exec unshare --mount --propagation private -- env KILN_CHECK_IN_NS=1 bash "$SCRIPT" "$@"
fi

PASSED=0
FAILED=0
pass() { echo "PASS $*"; PASSED=$((PASSED + 1)); }
fail() { echo "FAIL $*"; FAILED=$((FAILED + 1)); }
info() { echo "     $*"; }
check() { # check "description" command...: PASS when the command succeeds
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}
all() { # all "test1" "test2"...: every shell test (as a string) holds
    local t
    for t in "$@"; do eval "$t" || return 1; done
}
finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" = 0 ]
    exit
}

WORK=$(mktemp -d /tmp/kiln-check.XXXXXX)
SERVER_PIDS=()
cleanup() {
    local p
    for p in "${SERVER_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    for p in "${SERVER_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    umount -l "$WORK/merged" 2>/dev/null
    mountpoint -q "$WORK/merged" 2>/dev/null || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------
# The Dockerfile, parsed once into JSON: stages, their steps, the runtime packages.
# ------------------------------------------------------------------------------------------
PARSED=$WORK/dockerfile.json
python3 - "$DOCKERFILE" > "$PARSED" <<'EOF' || { echo "FAIL cannot parse $DOCKERFILE"; echo "0 passed, 1 failed"; exit 1; }
import json, re, shlex, sys

def logical_lines(path):
    out, cur, start = [], "", None
    for no, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
        s = line.strip()
        if s.startswith("#") or (not s and cur):   # comments and blank lines, also inside a continuation
            continue
        if not s:
            continue
        if start is None:
            start = no
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1]
            continue
        out.append((start, (cur + line).strip()))
        cur, start = "", None
    return out

def flags(rest):
    fl = {}
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        k, _, v = word[2:].partition("=")
        fl[k] = v
        rest = rest.lstrip()
    return fl, rest

def exec_or_shell(text):
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return ["/bin/sh", "-c", text]

PKG = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
stages = []
for line, text in logical_lines(sys.argv[1]):
    op, _, rest = text.partition(" ")
    op, rest = op.upper(), rest.strip()
    if op == "FROM":
        _, rest = flags(rest)
        parts = rest.split()
        stages.append({"line": line, "base": parts[0], "name": parts[2] if len(parts) > 2 and parts[1].lower() == "as" else "",
                       "steps": [], "packages": []})
        continue
    if not stages:
        continue                       # global ARGs
    st = {"op": op, "line": line}
    if op == "RUN":
        st["flags"], st["cmd"] = flags(rest)
        for m in re.finditer(r"apt-get\s+(?:-\S+\s+)*install\b(.*?)(?=;|&&|\|\||$)", st["cmd"], re.S):
            for tok in m.group(1).split():
                if not tok.startswith("-") and "$" not in tok and PKG.match(tok) and tok not in stages[-1]["packages"]:
                    stages[-1]["packages"].append(tok)
    elif op in ("COPY", "ADD"):
        st["flags"], rest = flags(rest)
        parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        st["src"], st["dest"] = parts[:-1], parts[-1]
    elif op == "ENV":
        toks = shlex.split(rest)
        st["env"] = [t.split("=", 1) for t in toks] if all("=" in t for t in toks) else [[toks[0], rest.split(None, 1)[1]]]
    elif op == "ARG":
        name, eq, default = rest.partition("=")
        st["name"], st["default"] = name.strip(), default.strip().strip('"')
    elif op in ("ENTRYPOINT", "CMD"):
        st["argv"] = exec_or_shell(rest)
    elif op == "HEALTHCHECK":
        st["flags"], rest = flags(rest)
        kind, _, cmd = rest.partition(" ")
        st["argv"] = exec_or_shell(cmd) if kind.upper() == "CMD" else None
    elif op == "VOLUME":
        st["paths"] = json.loads(rest) if rest.startswith("[") else rest.split()
    elif op in ("USER", "WORKDIR", "STOPSIGNAL", "EXPOSE", "LABEL", "SHELL", "ONBUILD"):
        st["value"] = rest
    else:
        st["value"] = rest
    stages[-1]["steps"].append(st)
json.dump({"stages": stages}, sys.stdout, indent=1)
EOF
dq() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); rt=d["stages"][-1]; r=eval(sys.argv[2]); print(r if isinstance(r,str) else json.dumps(r))' "$PARSED" "$1"; }

mapfile -t PACKAGES < <(dq '"\n".join(rt["packages"])')
RUNTIME_BASE=$(dq 'rt["base"]')
echo "Dockerfile: $DOCKERFILE (runtime stage '$(dq 'rt["name"]')' FROM $RUNTIME_BASE)"
echo "runtime packages: ${PACKAGES[*]}"
echo "binary: $BIN"

# ------------------------------------------------------------------------------------------
# Static checks of the Dockerfile, the build context and compose.yaml.
# ------------------------------------------------------------------------------------------
[ "${#PACKAGES[@]}" -gt 0 ] && pass "runtime stage installs ${#PACKAGES[@]} packages" || fail "no apt-get install found in the runtime stage"
check "runtime stage is FROM debian:bookworm-slim" [ "$RUNTIME_BASE" = "debian:bookworm-slim" ]
check "runtime installs with --no-install-recommends and removes the apt lists" \
    python3 -c 'import json,sys; rt=json.load(open(sys.argv[1]))["stages"][-1]; runs=[s["cmd"] for s in rt["steps"] if s["op"]=="RUN" and "apt-get install" in s["cmd"]]; sys.exit(not runs or not all(r.count("apt-get install")==r.count("--no-install-recommends") and "rm -rf /var/lib/apt/lists" in r for r in runs))' "$PARSED"
ENTRY=$(dq '[s["argv"] for s in rt["steps"] if s["op"]=="ENTRYPOINT"][-1] + [s["argv"] for s in rt["steps"] if s["op"]=="CMD"][-1]')
check "ENTRYPOINT + CMD is tini -- kiln serve ($ENTRY)" [ "$ENTRY" = '["/usr/bin/tini", "--", "/usr/local/bin/kiln", "serve"]' ]
check "STOPSIGNAL SIGTERM, EXPOSE 8080, VOLUME /var/lib/kiln" \
    [ "$(dq '{s["op"]: s.get("value", s.get("paths")) for s in rt["steps"] if s["op"] in ("STOPSIGNAL","EXPOSE","VOLUME")} == {"STOPSIGNAL": "SIGTERM", "EXPOSE": "8080", "VOLUME": ["/var/lib/kiln"]}')" = true ]
HEALTH_ARGV=$(dq '[s["argv"] for s in rt["steps"] if s["op"]=="HEALTHCHECK"][-1]' 2>/dev/null)
check "HEALTHCHECK has an exec-form command ($HEALTH_ARGV)" all '[ -n "$HEALTH_ARGV" ]' '[ "${HEALTH_ARGV:0:1}" = "[" ]'
# The builder copies paths from the build context: they must exist and not be ignored.
missing=""
while IFS= read -r src; do
    compgen -G "$REPO/$src" >/dev/null || missing="$missing $src"
done < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); [print(x) for s in d["stages"] for st in s["steps"] if st["op"] in ("COPY","ADD") and "from" not in st["flags"] for x in st["src"] if x != "."]' "$PARSED")
check "every COPY source from the build context exists${missing:+ (missing:$missing)}" [ -z "$missing" ]
if [ -f "$REPO/.dockerignore" ]; then
    ignored=$(python3 - "$REPO/.dockerignore" "$PARSED" "$REPO" <<'EOF'
import fnmatch, glob, json, os, sys
pats = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")]
def ignored(p):
    out = False
    for pat in pats:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        parts = p.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            out = not neg
    return out
d = json.load(open(sys.argv[2]))
need = set()
for s in d["stages"]:
    for st in s["steps"]:
        if st["op"] in ("COPY", "ADD") and "from" not in st["flags"]:
            for src in st["src"]:
                for f in glob.glob(os.path.join(sys.argv[3], src)):
                    for root, _, files in os.walk(f) if os.path.isdir(f) else [(os.path.dirname(f), [], [os.path.basename(f)])]:
                        for name in files:
                            need.add(os.path.relpath(os.path.join(root, name), sys.argv[3]))
print(" ".join(sorted(p for p in need if ignored(p))[:10]))
EOF
)
    check ".dockerignore keeps every file the Dockerfile copies${ignored:+ (ignored: $ignored)}" [ -z "$ignored" ]
else
    info "no .dockerignore at the repository root: the build context would include .build and .git"
fi
if [ -f "$COMPOSE" ]; then
    compose_msg=$(python3 - "$COMPOSE" "$HEALTH_ARGV" <<'EOF' 2>&1
import json, sys
try:
    import yaml
except ImportError:
    print("pyyaml missing, compose.yaml not checked"); sys.exit(0)
c = yaml.safe_load(open(sys.argv[1]))
(name, svc), = c["services"].items()
problems = []
b = svc.get("build", {})
if b.get("context") != ".." or b.get("dockerfile") != "docker/Dockerfile": problems.append("build context/dockerfile")
vols = [v for v in svc.get("volumes", []) if isinstance(v, str) and v.endswith(":/var/lib/kiln")]
if not vols or vols[0].split(":")[0] not in (c.get("volumes") or {}): problems.append("named volume on /var/lib/kiln")
if not any(str(p).endswith(":8080") for p in svc.get("ports", [])): problems.append("port 8080")
if svc.get("stop_grace_period") != "15s": problems.append("stop_grace_period")
hc = svc.get("healthcheck", {}).get("test")
if hc != ["CMD"] + json.loads(sys.argv[2]): problems.append("healthcheck test %r" % hc)
print("; ".join(problems) if problems else "")
sys.exit(1 if problems else 0)
EOF
)
    check "compose.yaml: service '$(python3 -c 'import yaml,sys; print(*yaml.safe_load(open(sys.argv[1]))["services"])' "$COMPOSE" 2>/dev/null)' builds docker/Dockerfile, named volume, 8080, healthcheck, 15s grace${compose_msg:+ ($compose_msg)}" all '[ -z "$compose_msg" ] || [ "$compose_msg" = "pyyaml missing, compose.yaml not checked" ]'
fi

# ------------------------------------------------------------------------------------------
# a. Shared libraries against the runtime packages.
# ------------------------------------------------------------------------------------------
echo "--- a. shared libraries"
if [ ! -x "$BIN" ]; then
    fail "binary $BIN exists"
    finish
fi
APT_PURE=(-o Dir::State::status=/dev/null)   # bookworm's own candidates, not this host's installs
if ! apt-cache "${APT_PURE[@]}" show libc6 >/dev/null 2>&1; then
    fail "apt lists are present (run apt-get update)"
    finish
fi
unknown=""
for p in "${PACKAGES[@]}"; do
    apt-cache "${APT_PURE[@]}" show "$p" >/dev/null 2>&1 || unknown="$unknown $p"
done
check "every runtime package exists in $SUITE${unknown:+ (unknown:$unknown)}" [ -z "$unknown" ]

closure() {
    apt-cache "${APT_PURE[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$@" 2>/dev/null | grep -v '^ ' | grep -v '^<' | sed 's/:.*//' | sort -u
}
closure "${PACKAGES[@]}" > "$WORK/closure"
mapfile -t ESSENTIAL < <(dpkg-query -W -f '${Package} ${Essential}\n' | awk '$2 == "yes" { print $1 }')
closure "${ESSENTIAL[@]}" apt > "$WORK/base"
info "dependency closure: $(wc -l < "$WORK/closure") packages; base image (Essential + apt): $(wc -l < "$WORK/base")"

lib_package() { # the package owning a library path (usrmerge: try /usr/lib and /lib spellings)
    local path=$1 cand out
    for cand in "$path" "/usr${path#/usr}" "${path#/usr}" "$(readlink -f "$path")"; do
        out=$(dpkg -S "$cand" 2>/dev/null | head -1) && [ -n "$out" ] && { echo "${out%%:*}"; return 0; }
    done
    return 1
}
mapfile -t NEEDED < <(readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
info "NEEDED: ${NEEDED[*]}"
ldd_out=$(ldd "$BIN" 2>&1)
if grep -q "not found" <<<"$ldd_out"; then
    fail "every library resolves on this host: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t' ' ')"
fi
bad=""
n=0
while read -r soname path; do
    [ -n "$path" ] || continue
    n=$((n + 1))
    pkg=$(lib_package "$path") || { bad="$bad $soname(no package owns $path)"; continue; }
    if grep -qx "$pkg" "$WORK/base"; then how="base image"
    elif grep -qx "$pkg" "$WORK/closure"; then how="runtime packages"
    else bad="$bad $soname($pkg)"; how="MISSING"; fi
    for x in "${NEEDED[@]}"; do [ "$x" = "${soname##*/}" ] && info "$x -> $pkg ($how)"; done
done < <(awk '/=>/ { print $1, $3 } /^\t\/.*ld-linux/ { print $1, $1 }' <<<"$ldd_out")
check "all $n libraries the binary loads (NEEDED and their dependencies) come from the runtime packages or the base image${bad:+ (not provided:$bad)}" [ -z "$bad" ]

# ------------------------------------------------------------------------------------------
# b. The runtime stage, built by hand, and the server in it.
# ------------------------------------------------------------------------------------------
echo "--- b. the image, emulated"
if [ "$(id -u)" != 0 ]; then
    fail "the emulated image needs root (namespaces, mounts, debootstrap)"
    finish
fi
for tool in debootstrap curl unshare nsenter pivot_root setpriv ps; do
    command -v "$tool" >/dev/null || { fail "$tool is installed"; finish; }
done
MIRROR=${KILN_MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -oE 'https?://[^ ]+' | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ARCH=$(dpkg --print-architecture)
SORTED=$(printf '%s\n' "${PACKAGES[@]}" | sort -u | paste -sd, -)
KEY=$(printf '%s\n' "$SUITE" minbase "$ARCH" "$MIRROR" "$SORTED" | sha256sum | cut -c1-16)
ROOT=$CACHE/$SUITE-$ARCH-$KEY
if [ -f "$ROOT/.kiln-complete" ]; then
    info "cached root $ROOT ($SORTED)"
else
    info "debootstrap $SUITE minbase with $SORTED from $MIRROR into $ROOT (minutes, once)"
    mkdir -p "$CACHE"
    rm -rf "$ROOT.tmp"
    if timeout 1800 debootstrap --variant=minbase --include="$SORTED" "$SUITE" "$ROOT.tmp" "$MIRROR" > "$WORK/debootstrap.log" 2>&1; then
        rm -rf "$ROOT.tmp/var/cache/apt/archives/"*.deb
        printf '%s\n' "$SORTED" > "$ROOT.tmp/.kiln-complete"
        rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"
    else
        tail -n 20 "$WORK/debootstrap.log" | sed 's/^/     /'
        rm -rf "$ROOT.tmp"
        fail "debootstrap $SUITE with the runtime packages"
        finish
    fi
fi
pass "bookworm minbase root with the runtime packages"

# The overlay: the cached root read-only below, this run's image layers above.
M=$WORK/merged
mkdir -p "$WORK/upper" "$WORK/ovl-work" "$M"
if ! mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$WORK/upper,workdir=$WORK/ovl-work" "$M"; then
    fail "overlay mount of the cached root"
    finish
fi
# What debian:bookworm-slim adds to a minbase root: its apt sources.
rm -f "$M/etc/apt/sources.list"
cat > "$M/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian*}/debian-security
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# enter.sh: run a command in the root the way a container runtime would.
#   enter.sh ROOT VOLUME SYS NODE USER CAPS ENVFILE -- argv...
# In a fresh mount namespace: a small /dev, /sys, resolv.conf and hosts, the volume and
# optionally another node binary mounted into the root; pivot_root into it (not chroot: user
# namespaces, which bubblewrap needs, refuse chrooted callers); then the root's own unshare
# makes a PID namespace with its own /proc whose PID 1 is the command itself (tini PID 1,
# kiln PID 2, as under docker run: the numbering matters, see the README notes), the root's
# setpriv sets the user and capability bounding set, and the environment is ENVFILE's
# (NUL-separated) and nothing else.
cat > "$WORK/enter.sh" <<'EOF'
set -e
M=$1 VOL=$2 SYS=$3 NODE=$4 USERSPEC=$5 CAPS=$6 ENVFILE=$7
shift 8
mapfile -d '' ENVS < "$ENVFILE"
# A /proc for the way in (umount reads mountinfo); the PID namespace's own goes over it below.
mount -t proc -o nosuid,nodev,noexec proc "$M/proc"
mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs "$M/dev"
for n in null zero full random urandom tty; do : > "$M/dev/$n"; mount --bind "/dev/$n" "$M/dev/$n"; done
mkdir -p "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$M/dev/pts"
mount -t tmpfs -o nosuid,nodev,mode=1777,size=65536k shm "$M/dev/shm"
ln -s pts/ptmx "$M/dev/ptmx"; ln -s /proc/self/fd "$M/dev/fd"
ln -s /proc/self/fd/0 "$M/dev/stdin"; ln -s /proc/self/fd/1 "$M/dev/stdout"; ln -s /proc/self/fd/2 "$M/dev/stderr"
mount --rbind /sys "$M/sys"
[ "$SYS" = rw ] || mount -o remount,bind,ro "$M/sys"
for f in resolv.conf hosts; do
    [ -e "$M/etc/$f" ] || : > "$M/etc/$f"
    mount --bind "/etc/$f" "$M/etc/$f"
done
[ "$VOL" = - ] || mount --bind "$VOL" "$M/var/lib/kiln"
# A container's /tmp is its own (kiln is PID 2 in every container, so its work root is
# always /tmp/kiln-work-2): runs of the server must not share one.
[ "${FRESH_TMP:-}" != 1 ] || mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$M/tmp"
[ "$NODE" = - ] || mount --bind "$NODE" "$M/usr/bin/node"
cd "$M"
pivot_root . .
umount -l .
cd /
pre=()
docker_caps=-all,+chown,+dac_override,+fsetid,+fowner,+mknod,+net_raw,+setgid,+setuid,+setfcap,+setpcap,+net_bind_service,+sys_chroot,+kill,+audit_write
if [ "$USERSPEC" != root ]; then pre+=(--reuid="${USERSPEC%%:*}" --regid="${USERSPEC##*:}" --init-groups); fi
if [ "$CAPS" = docker ]; then pre+=(--bounding-set="$docker_caps" --inh-caps=-all); fi
# setpriv's uid change clears the parent-death signal unshare --kill-child gave; set it again.
[ "${#pre[@]}" -eq 0 ] || pre=(/usr/bin/setpriv "${pre[@]}" --pdeathsig KILL --)
exec /usr/bin/unshare --pid --fork --kill-child --mount-proc -- "${pre[@]}" /usr/bin/env -i "${ENVS[@]}" "$@"
EOF

# The replayed stage's state.
declare -A IMG_ENV=()
IMG_ENV_ORDER=()
IMG_USER=root
IMG_WORKDIR=/
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
set_env() { [ -n "${IMG_ENV[$1]+x}" ] || IMG_ENV_ORDER+=("$1"); IMG_ENV[$1]=$2; }
userspec() { # USER value -> root | uid:gid, resolved in the root's passwd
    local u=${1%%:*}
    if [ "$u" = root ] || [ "$u" = 0 ]; then echo root; return; fi
    local line
    line=$(awk -F: -v u="$u" '$1 == u || $3 == u { print $3 ":" $4; exit }' "$M/etc/passwd")
    [ -n "$line" ] && echo "$line" || echo "$u:$u"
}
home_of() { awk -F: -v u="$1" '$1 == u || $3 == u { print $6; exit }' "$M/etc/passwd"; }
write_env() { # write_env FILE USER [KEY=VALUE overrides...]: the container's environment
    local file=$1 user=$2 k; shift 2
    local -A e=()
    local order=(PATH HOSTNAME HOME)
    e[PATH]=$DEFAULT_PATH; e[HOSTNAME]=kiln-check; e[HOME]=$(home_of "$user"); e[HOME]=${e[HOME]:-/}
    for k in "${IMG_ENV_ORDER[@]}"; do [ -n "${e[$k]+x}" ] || order+=("$k"); e[$k]=${IMG_ENV[$k]}; done
    for kv in "$@"; do k=${kv%%=*}; [ -n "${e[$k]+x}" ] || order+=("$k"); e[$k]=${kv#*=}; done
    : > "$file"
    for k in "${order[@]}"; do printf '%s=%s\0' "$k" "${e[$k]}" >> "$file"; done
}
in_root() { # in_root VOL SYS NODE USER CAPS ENVFILE -- argv... (foreground, at most 10 minutes)
    timeout -s KILL "${IN_ROOT_TIMEOUT:-600}" setpriv --pdeathsig KILL -- \
        unshare --mount --propagation private -- bash "$WORK/enter.sh" "$M" "$@"
}

# Replay the runtime stage's steps.
nsteps=$(dq 'len(rt["steps"])')
replay_ok=1
declare -A ARGS=()
for ((i = 0; i < nsteps; i++)); do
    op=$(dq "rt['steps'][$i]['op']")
    line=$(dq "rt['steps'][$i]['line']")
    case $op in
        ARG)
            name=$(dq "rt['steps'][$i]['name']")
            ARGS[$name]=$(dq "rt['steps'][$i]['default']")
            ;;
        ENV)
            while IFS= read -r -d '' kv; do set_env "${kv%%=*}" "${kv#*=}"; done \
                < <(python3 -c 'import json,sys; [sys.stdout.write("%s=%s\0" % tuple(kv)) for kv in json.load(open(sys.argv[1]))["stages"][-1]["steps"][int(sys.argv[2])]["env"]]' "$PARSED" "$i")
            ;;
        RUN)
            cmd=$(dq "rt['steps'][$i]['cmd']")
            extra=()
            for a in "${!ARGS[@]}"; do extra+=("$a=${ARGS[$a]}"); done
            write_env "$WORK/run.env" "$IMG_USER" "${extra[@]}"
            if in_root - ro - "$(userspec "$IMG_USER")" full "$WORK/run.env" -- /bin/sh -c "cd '$IMG_WORKDIR' && $cmd" > "$WORK/run-$line.log" 2>&1; then
                info "RUN (line $line) ok"
            else
                tail -n 15 "$WORK/run-$line.log" | sed 's/^/     | /'
                fail "RUN at Dockerfile line $line"
                replay_ok=0
            fi
            ;;
        COPY | ADD)
            from=$(dq "rt['steps'][$i]['flags'].get('from','')")
            dest=$(dq "rt['steps'][$i]['dest']")
            mapfile -t srcs < <(dq "'\n'.join(rt['steps'][$i]['src'])")
            target=$M$dest
            case $dest in /*) ;; *) target=$M$IMG_WORKDIR/$dest ;; esac
            for src in "${srcs[@]}"; do
                if [ -n "$from" ]; then
                    # The builder stage's output: the binaries under test stand in for it
                    # (kiln-init is built beside kiln).
                    case $(basename "$src") in
                        kiln) file=$BIN ;;
                        kiln-init) file=$(dirname "$BIN")/kiln-init ;;
                        *) fail "COPY --from=$from $src (line $line): only kiln and kiln-init can be emulated"; replay_ok=0; continue ;;
                    esac
                else
                    file=$REPO/$src
                fi
                mkdir -p "$(dirname "$target")"
                if [ -d "$target" ] || [[ $dest == */ ]]; then mkdir -p "$target"; cp -a "$file" "$target/"; else cp -a "$file" "$target"; fi
                chown -R "$(dq "rt['steps'][$i]['flags'].get('chown','0:0')")" "$target"
                chmod_flag=$(dq "rt['steps'][$i]['flags'].get('chmod','')")
                [ -z "$chmod_flag" ] || chmod -R "$chmod_flag" "$target"
                info "COPY ${from:+--from=$from }$src -> $dest"
            done
            ;;
        USER) IMG_USER=$(dq "rt['steps'][$i]['value']") ;;
        WORKDIR) IMG_WORKDIR=$(dq "rt['steps'][$i]['value']"); mkdir -p "$M$IMG_WORKDIR" ;;
        VOLUME | EXPOSE | HEALTHCHECK | STOPSIGNAL | ENTRYPOINT | CMD | LABEL) ;;
        *) fail "Dockerfile line $line: $op is not emulated by this script"; replay_ok=0 ;;
    esac
done
[ "$replay_ok" = 1 ] && pass "runtime stage replayed (RUN, COPY, ENV, USER, WORKDIR) in the root"

IMAGE_USER=$IMG_USER
KILN_SPEC=$(userspec "$IMAGE_USER")
write_env "$WORK/plain.env" root
in_root - ro - root full "$WORK/plain.env" -- /bin/sh -c '
    for x in /usr/bin/tini /usr/bin/bwrap /usr/bin/runsc /usr/bin/python3 /usr/bin/node /usr/bin/setpriv /usr/local/bin/kiln /usr/local/bin/kiln-init; do
        [ -x "$x" ] || echo "missing $x"
    done
    ldd /usr/local/bin/kiln /usr/local/bin/kiln-init | grep "not found"
    echo "node $(node --version), $(python3 --version), $(bwrap --version), runsc $(runsc --version 2>&1 | head -1)" >&2
    stat -c "volume %U:%G %a" /var/lib/kiln >&2' > "$WORK/inspect.out" 2> "$WORK/inspect.err"
sed 's/^/     /' "$WORK/inspect.err"
check "in the root: tini, bwrap, runsc, python3, node, setpriv, kiln, kiln-init present; ldd finds every library$(sed 's/^/; /' "$WORK/inspect.out" | tr -d '\n')" [ ! -s "$WORK/inspect.out" ]
check "/var/lib/kiln belongs to the image user ($IMAGE_USER) with mode 755" grep -q "^volume $IMAGE_USER:.* 755$" "$WORK/inspect.err"
NODE_VERSION=$(sed -n 's/^node \(v[0-9.]*\),.*/\1/p' "$WORK/inspect.err")

# The isolate host's own tests (escape attempts included) with the image's node, as the image
# user: whether the isolate backend is sound on this Node, not only whether it starts.
ISO_SRC=$REPO/Sources/KilnBackends/isolate
if [ -f "$ISO_SRC/host-test.mjs" ]; then
    rm -rf "$M/tmp/kiln-isolate-test" && cp -a "$ISO_SRC" "$M/tmp/kiln-isolate-test" && chmod -R a+rX "$M/tmp/kiln-isolate-test"
    write_env "$WORK/test.env" "$IMAGE_USER"
    IN_ROOT_TIMEOUT=300 in_root - ro - "$KILN_SPEC" docker "$WORK/test.env" -- \
        /bin/sh -c 'cd /tmp/kiln-isolate-test && node --test host-test.mjs' > "$WORK/isolate-test.log" 2>&1
    rc=$?
    counts="$(sed -n 's/^# \(pass\|fail\) \([0-9]*\)$/\1 \2/p' "$WORK/isolate-test.log" | paste -sd, -)"
    if [ "$rc" = 0 ]; then
        pass "isolate host tests (host-test.mjs) with the image's node $NODE_VERSION as $IMAGE_USER: $counts"
    else
        grep -E '^not ok' "$WORK/isolate-test.log" | head -5 | sed 's/^/     | /'
        fail "isolate host tests (host-test.mjs) with the image's node $NODE_VERSION as $IMAGE_USER: exit $rc${counts:+, $counts}"
    fi
    rm -rf "$M/tmp/kiln-isolate-test"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
child_of() { ps -o pid= --ppid "$1" 2>/dev/null | head -1 | tr -d ' '; }
# Every run has a token (the image refuses to listen beyond loopback without one) and allows
# the process backend, so that the image's runtimes are checked whatever isolates here.
CHECK_TOKEN=check-image-token
post() { curl -sS -m 60 -H "Authorization: Bearer $CHECK_TOKEN" -H 'Content-Type: application/json' -d "$2" "http://127.0.0.1:$PORT$1"; }
field() { python3 -c 'import json,sys
try: d=json.loads(sys.argv[1])
except Exception: print("(not JSON: %s)" % sys.argv[1][:200]); sys.exit()
for k in sys.argv[2].split("."): d=d.get(k) if isinstance(d, dict) else None
print(d if not isinstance(d,(dict,list)) else json.dumps(d))' "$1" "$2"; }

# serve LABEL USER CAPS SYS NODE: one container run of the image's ENTRYPOINT + CMD.
serve() {
    local label=$1 user=$2 caps=$3 sys=$4 node=$5
    local spec n=$((${#SERVER_PIDS[@]} + 1))
    spec=$(userspec "$user")
    PORT=$(free_port)
    local vol=$WORK/volume-$n out=$WORK/server-$n.out err=$WORK/server-$n.err
    # A fresh named volume: Docker copies the image's folder, owner and mode into it.
    mkdir -p "$vol" && cp -a "$M/var/lib/kiln/." "$vol/" && chown --reference="$M/var/lib/kiln" "$vol" && chmod --reference="$M/var/lib/kiln" "$vol"
    write_env "$WORK/server-$n.env" "$user" "KILN_LISTEN=127.0.0.1:$PORT" "KILN_API_TOKEN=$CHECK_TOKEN" \
        "KILN_ISOLATION=process,sandbox,gvisor,isolate"
    mapfile -t argv < <(dq '"\n".join([s["argv"] for s in rt["steps"] if s["op"]=="ENTRYPOINT"][-1] + [s["argv"] for s in rt["steps"] if s["op"]=="CMD"][-1])')
    echo "--- run $n: $label (port $PORT)"
    FRESH_TMP=1 setpriv --pdeathsig KILL -- unshare --mount --propagation private -- \
        bash "$WORK/enter.sh" "$M" "$vol" "$sys" "$node" "$spec" "$caps" "$WORK/server-$n.env" -- "${argv[@]}" > "$out" 2> "$err" &
    local ush=$!
    SERVER_PIDS+=("$ush")
    local deadline=$((SECONDS + START_TIMEOUT)) init=""
    while [ $SECONDS -lt $deadline ] && kill -0 "$ush" 2>/dev/null && ! grep -q "listening" "$out"; do sleep 0.5; done
    init=$(child_of "$ush")
    if ! grep -q "listening on http://127.0.0.1:$PORT" "$out"; then
        fail "[$label] server prints 'listening on http://127.0.0.1:$PORT' within ${START_TIMEOUT}s"
        tail -n 15 "$err" "$out" | sed 's/^/     | /'
        kill -KILL "$ush" 2>/dev/null; wait "$ush" 2>/dev/null
        return
    fi
    pass "[$label] $(head -1 "$out")"
    local code
    code=$(curl -s -m 10 -o "$WORK/healthz-$n" -w '%{http_code}' "http://127.0.0.1:$PORT/healthz")
    check "[$label] GET /healthz from the host: $code $(cat "$WORK/healthz-$n" 2>/dev/null)" [ "$code" = 200 ]

    local r
    r=$(post /v1/workloads '{"runtime":"python","isolation":"process","code":"import sys, json\nd = json.load(sys.stdin)\nprint(json.dumps({\"sum\": d[\"a\"] + d[\"b\"]}))","input":{"a":1,"b":2}}')
    check "[$label] python workload on process: $(field "$r" status), output $(field "$r" output)" \
        all '[ "$(field "$r" status)" = completed ]' '[ "$(field "$r" output)" = "{\"sum\": 3}" ]'
    r=$(post /v1/workloads '{"runtime":"shell","isolation":"process","code":"echo hello from $(id -un 2>/dev/null || id -u)"}')
    check "[$label] shell workload on process: $(field "$r" status), output $(field "$r" output | tr -d '\n')" \
        [ "$(field "$r" status)" = completed ]

    local backends
    backends=$(curl -sS -m 10 -H "Authorization: Bearer $CHECK_TOKEN" "http://127.0.0.1:$PORT/v1/backends")
    python3 - "$backends" > "$WORK/backends-$n" <<'EOF'
import json, sys
for b in json.loads(sys.argv[1])["backends"]:
    detail = b["reason"] or ""
    if b["available"] and b["name"] == "process":
        detail = "process tree: %s" % b["limits"].get("process_tree")
    print("%s\t%s\t%s" % (b["name"], "available" if b["available"] else "unavailable", detail))
EOF
    local name avail reason
    while IFS=$'\t' read -r name avail reason; do
        if [ "$avail" = available ]; then info "backend $name: available${reason:+ ($reason)}"; else info "backend $name: unavailable: $reason"; fi
        printf '%s\t%s\t%s\t%s\n' "$label" "$name" "$avail" "$reason" >> "$WORK/summary"
        case $name in
            process) check "[$label] process backend available" [ "$avail" = available ] ;;
            isolate)
                if [ "$avail" = available ]; then
                    pass "[$label] isolate backend available"
                    r=$(post /v1/workloads '{"runtime":"node","isolation":"isolate","code":"export default (x) => x * 2","input":21}')
                    check "[$label] node workload on isolate: $(field "$r" status), output $(field "$r" output)" [ "$(field "$r" output)" = 42 ]
                else
                    check "[$label] isolate unavailable only because of the Node version" \
                        grep -qE "lacks the internal hooks|Node\.js \(v" <<<"$reason"
                fi
                ;;
            sandbox | gvisor)
                if [ "$avail" = available ]; then
                    r=$(post /v1/workloads "{\"runtime\":\"python\",\"isolation\":\"$name\",\"code\":\"import os; print(os.getuid())\"}")
                    check "[$label] python workload on $name: $(field "$r" status), uid $(field "$r" output)" [ "$(field "$r" status)" = completed ]
                fi
                ;;
        esac
    done < "$WORK/backends-$n"

    check "[$label] JSON access log lines on stdout" \
        python3 -c 'import json,sys; ls=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]; sys.exit(not ls or not all({"method","path","status","duration_ms"} <= set(l) for l in ls))' "$out"

    # The HEALTHCHECK command, inside the container (as docker exec would: its namespaces,
    # root, user and environment).
    local hc=() pre=()
    mapfile -t hc < <(dq '"\n".join([s["argv"] for s in rt["steps"] if s["op"]=="HEALTHCHECK"][-1])')
    mapfile -d '' envs < "$WORK/server-$n.env"
    [ "$spec" = root ] || pre=(/usr/bin/setpriv --reuid="${spec%%:*}" --regid="${spec##*:}" --init-groups --)
    if [ -n "$init" ] && timeout 20 nsenter -t "$init" -m -p -r -w -- "${pre[@]}" /usr/bin/env -i "${envs[@]}" "${hc[@]}" > "$WORK/hc-$n" 2>&1; then
        pass "[$label] HEALTHCHECK ${hc[*]} inside the container: $(tail -1 "$WORK/hc-$n")"
    else
        fail "[$label] HEALTHCHECK ${hc[*]} inside the container: $(tail -3 "$WORK/hc-$n" | tr '\n' ' ')"
    fi

    # SIGTERM to PID 1 (tini), which forwards it to kiln: a graceful stop, exit 0.
    local t0=$SECONDS rc
    kill -TERM "$init" 2>/dev/null
    while kill -0 "$ush" 2>/dev/null && [ $((SECONDS - t0)) -lt 15 ]; do sleep 0.2; done
    if kill -0 "$ush" 2>/dev/null; then
        fail "[$label] SIGTERM stops the container within 15 s"
        kill -KILL "$ush" 2>/dev/null; wait "$ush" 2>/dev/null
    else
        wait "$ush"; rc=$?
        check "[$label] SIGTERM: exit code $rc after $((SECONDS - t0)) s" [ "$rc" = 0 ]
    fi
    # Stopped: the health check must now say unhealthy.
    if in_root "$vol" ro - "$spec" full "$WORK/server-$n.env" -- "${hc[@]}" > "$WORK/hc-down-$n" 2>&1; then
        fail "[$label] HEALTHCHECK fails once the server is gone"
    else
        pass "[$label] HEALTHCHECK fails once the server is gone: $(tail -1 "$WORK/hc-down-$n")"
    fi
    grep -v '^{' "$err" | grep -iE "error|warn|fatal" | head -5 | sed 's/^/     stderr: /'
}

# The image listens on 0.0.0.0: without a token its command must refuse to start (exit 2).
mkdir -p "$WORK/volume-notoken" && cp -a "$M/var/lib/kiln/." "$WORK/volume-notoken/"
chown --reference="$M/var/lib/kiln" "$WORK/volume-notoken"
write_env "$WORK/notoken.env" "$IMG_USER" "KILN_LISTEN=0.0.0.0:$(free_port)"
mapfile -t argv < <(dq '"\n".join([s["argv"] for s in rt["steps"] if s["op"]=="ENTRYPOINT"][-1] + [s["argv"] for s in rt["steps"] if s["op"]=="CMD"][-1])')
rc=0
IN_ROOT_TIMEOUT=60 in_root "$WORK/volume-notoken" ro - "$(userspec "$IMG_USER")" docker "$WORK/notoken.env" -- "${argv[@]}" \
    > "$WORK/notoken.out" 2>&1 || rc=$?
if [ "$rc" = 2 ] && grep -q "refusing to listen" "$WORK/notoken.out"; then
    pass "without KILN_API_TOKEN the image refuses to start: $(grep -m1 refusing "$WORK/notoken.out")"
else
    fail "without KILN_API_TOKEN the image refuses to start (exit $rc)"
    tail -n 5 "$WORK/notoken.out" | sed 's/^/     | /'
fi

serve "root, all capabilities (docker run --user root --privileged)" root full rw -
serve "$IMAGE_USER, the image's USER (docker run)" "$IMAGE_USER" docker ro -
serve "root, Docker's default capabilities (docker run --user root)" root docker ro -
# NODE_MAJOR=20: this host's Node 20 over the root's node, when there is one.
HOST_NODE=$(command -v node 2>/dev/null || true)
HOST_NODE_VERSION=$(node --version 2>/dev/null || true)
if [[ $HOST_NODE_VERSION == v20.* ]] && [[ $NODE_VERSION != v20.* ]]; then
    serve "$IMAGE_USER with this host's Node $HOST_NODE_VERSION (as with --build-arg NODE_MAJOR=20)" "$IMAGE_USER" docker ro "$(readlink -f "$HOST_NODE")"
else
    info "no Node 20 on this host to stand in for NODE_MAJOR=20 (host: ${HOST_NODE_VERSION:-none}, image: $NODE_VERSION)"
fi

echo "--- summary: backends per run"
[ -f "$WORK/summary" ] && python3 - "$WORK/summary" <<'EOF'
import sys
runs = {}
for line in open(sys.argv[1]):
    label, name, avail, reason = line.rstrip("\n").split("\t")
    runs.setdefault(label, []).append("%s %s%s" % (name, "yes" if avail == "available" else "NO", " (" + reason.strip() + ")" if reason.strip() else ""))
for label, bs in runs.items():
    print("     " + label)
    for b in bs:
        print("       " + b)
EOF
info "image: $RUNTIME_BASE + ${PACKAGES[*]}; node $NODE_VERSION; user $IMAGE_USER"
info "Not emulated: Docker's default seccomp profile (refuses CLONE_NEWUSER without CAP_SYS_ADMIN), its"
info "AppArmor profile (refuses mount) and its masked /proc paths (a user namespace may not mount a new"
info "proc then). Under them the sandbox backend, which always runs bubblewrap as uid 65534 in a new user"
info "namespace, is unavailable unless the container runs with --privileged, or with seccomp=unconfined"
info "(or CAP_SYS_ADMIN), apparmor=unconfined and systempaths=unconfined."
finish
