#!/usr/bin/env bash
# Build the jail's root filesystem into DEST: the host's node with the shared libraries it loads,
# the runner, and empty mount points. Nothing else of the host goes in (no shell, no resolv.conf,
# no /sys), so a jail sees only what it needs to run a step.
#
#   images/node/build-rootfs.sh DEST        (node from $NODE, else from PATH)
#
# The image is built in a temporary directory next to DEST and then renamed into place, so DEST is
# always either the old image or the new one, whole; re-running replaces it.
set -euo pipefail

die() {
    echo "build-rootfs: $*" >&2
    exit 1
}

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 DEST"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runner="$here/runner.js"
[[ -f $runner ]] || die "missing $runner"

node=${NODE:-$(command -v node || true)}
[[ -n $node ]] || die "node not found: put it on PATH or set NODE"
node=$(readlink -f "$node")
[[ -f $node && -x $node ]] || die "$node is not an executable file"
# Steps' HTTPS verifies with the CA store compiled into node: the image has no /etc/ssl.
# (configure --openssl-use-def-ca-store leaves this define; --use-openssl-ca at run time is not
# passed to jails.)
system_ca=$("$node" -p "process.config.target_defaults.defines.includes('NODE_OPENSSL_CERT_STORE')")
[[ $system_ca == false ]] ||
    die "$node verifies TLS with the system's CA store, which a jail does not have"

dest_parent=$(dirname "$1")
mkdir -p "$dest_parent"
dest="$(cd "$dest_parent" && pwd)/$(basename "$1")"

# Same directory as DEST, so the final rename stays on one filesystem.
work=$(mktemp -d "$dest.build.XXXXXX")
old=""
cleanup() {
    rm -rf "$work"
    [[ -z $old ]] || rm -rf "$old"
}
trap cleanup EXIT
umask 022
chmod 0755 "$work"

mkdir -p "$work"/{usr/local/bin,sandboxd,tmp,proc,dev,etc}
install -m 0755 "$node" "$work/usr/local/bin/node"
install -m 0644 "$runner" "$work/sandboxd/runner.js"

# Every library ldd resolves, and the dynamic loader, at the same absolute path as on the host
# (the loader's path is written into the node binary). ldd lines look like
#   libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)   or   /lib64/ld-linux-x86-64.so.2 (0x...)
# linux-vdso has no file. Symlinks are followed: the copy is the file itself.
ldd_out=$(ldd "$node" 2>&1) || {
    # A static node has nothing to copy; anything else that ldd refuses is an error.
    [[ $ldd_out == *"not a dynamic executable"* ]] || die "ldd $node failed: $ldd_out"
    ldd_out=""
}
[[ $ldd_out != *"not found"* ]] || die "$node needs libraries that are missing: $ldd_out"
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)
loader=$(awk '$1 ~ /^\// { print $1 }' <<<"$ldd_out")
while IFS= read -r lib; do
    [[ -n $lib ]] || continue
    [[ -e $lib ]] || die "ldd lists $lib, which does not exist"
    mkdir -p "$work$(dirname "$lib")"
    # The kernel opens the loader as an executable (PT_INTERP), so it needs the x bit.
    if [[ $lib == "$loader" ]]; then mode=0755; else mode=0644; fi
    install -m "$mode" "$(readlink -f "$lib")" "$work$lib"
done <<<"$libs"

# Bind-mount targets for the four devices a jail gets.
for device in null zero random urandom; do
    : >"$work/dev/$device"
done

cat >"$work/etc/passwd" <<'EOF'
root:x:0:0:root:/tmp:/sbin/nologin
sandbox:x:1000:1000::/tmp:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$work/etc/group" <<'EOF'
root:x:0:
sandbox:x:1000:
nogroup:x:65534:
EOF
echo sandbox >"$work/etc/hostname"
cat >"$work/etc/hosts" <<'EOF'
127.0.0.1 localhost sandbox
::1 localhost
EOF

# Root-owned (when building as root), nobody else may write.
find "$work" -type d -exec chmod 0755 {} +
if [[ $(id -u) -eq 0 ]]; then
    chown -R 0:0 "$work"
else
    echo "build-rootfs: note: not root, files stay owned by $(id -un)" >&2
fi

# Into place. An existing image is first moved aside (one rename each way); it is removed only
# after the new one is in place.
if [[ -e $dest ]]; then
    old=$(mktemp -d "$dest.old.XXXXXX")
    mv -T "$dest" "$old/image"
fi
mv -T "$work" "$dest"

echo "build-rootfs: $dest: $(du -sh "$dest" | cut -f1) (node $("$node" --version) from $node)"
