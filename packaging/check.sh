#!/usr/bin/env bash
# Build every package (amd64, arm64, armhf .deb; x86_64, aarch64 .rpm), run each ARM binary
# under qemu-user (version, `check` of every example config, a short demo), read every
# package's metadata, then install the amd64 .deb on this machine, check what it installed,
# and remove it again. Run by .ci/run; needs root for the install part.
set -euo pipefail
cd "$(dirname "$0")/.."
# The ARM targets come from rustup's server: where it cannot be reached, say so loudly and
# check the amd64 packages alone rather than fail on a download.
archs=(amd64)
if rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf >/dev/null 2>&1; then
  archs+=(arm64 armhf)
else
  echo "!! SKIPPED: rustup cannot fetch the ARM targets here; arm64/armhf packages NOT built or checked"
fi
# CI packages the `dev` profile (FG_PROFILE): the same code, unoptimised, so the host's build
# reuses what the tests compiled and each ARM target takes about a minute instead of three.
# `bash packaging/build.sh` alone builds the release profile (the sizes in the README are
# those).
export FG_PROFILE=${FG_PROFILE:-dev}
profile_dir=$FG_PROFILE
[ "$FG_PROFILE" = dev ] && profile_dir=debug
bash packaging/build.sh "${archs[@]}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
target_dir=${CARGO_TARGET_DIR:-target}
deb=dist/fieldgate_${version}_amd64.deb
rpm=dist/fieldgate-${version}-1.x86_64.rpm

echo "-- package metadata and contents"
for a in "${archs[@]}"; do
  d=dist/fieldgate_${version}_$a.deb
  dpkg-deb --info "$d" | grep -E '^ (Package|Version|Architecture|Depends|Installed-Size):'
  test "$(dpkg-deb --field "$d" Architecture)" = "$a"
  dpkg-deb --field "$d" Depends | grep -q "libdbus-1-3"
  contents=$(dpkg-deb --contents "$d")
  grep -q '\./usr/bin/fieldgate$' <<<"$contents"
  grep -q '\./lib/systemd/system/fieldgate.service$' <<<"$contents"
done
rpm_archs=(x86_64)
[ "${#archs[@]}" -gt 1 ] && rpm_archs+=(aarch64)
for a in "${rpm_archs[@]}"; do
  r=dist/fieldgate-${version}-1.$a.rpm
  rpm -qip "$r" | grep -E '^(Name|Version|Architecture|License)'
  test "$(rpm -qp --queryformat '%{ARCH}' "$r")" = "$a"
  grep -qx /usr/bin/fieldgate <<<"$(rpm -qlp "$r")"
  grep -q dbus-libs <<<"$(rpm -qp --requires "$r")"
  grep -q useradd <<<"$(rpm -qp --scripts "$r")"
done

echo "-- ARM binaries under qemu-user"
# Each runs with the cross libc (/usr/TUPLE) and the target's libdbus from build.sh's sysroot.
# RSS and CPU under qemu say nothing about a real board: not measured here.
qemu_check() {
  local triple=$1 tuple=$2 qemu=$3 machine=$4
  local bin root
  bin=$(realpath "$target_dir/$triple/$profile_dir/fieldgate")
  root=$(realpath "$target_dir/sysroot/$5")
  readelf -h "$bin" | grep -q "Machine: *$machine"
  run() {
    QEMU_LD_PREFIX="/usr/$tuple" LD_LIBRARY_PATH="$root/lib/$tuple:$root/usr/lib/$tuple" \
      "$qemu" "$bin" "$@"
  }
  run --version | grep -q "^fieldgate $version"
  for c in config/*.toml; do
    run check -c "$c" >/dev/null 2>&1 || { echo "$triple: check $c failed" >&2; run check -c "$c"; exit 1; }
  done
  local out
  out=$(mktemp -d)
  (cd "$out" && run demo --for 6s >demo.log 2>&1) || { cat "$out/demo.log" >&2; exit 1; }
  # The readings went the whole way: devices polled, queued, published, seen by the viewer.
  grep -q "ONLINE" "$out/demo.log" && grep -q "^[0-9:.]* report " "$out/demo.log" \
    && grep -q "demo stopped" "$out/demo.log" || { cat "$out/demo.log" >&2; exit 1; }
  rm -rf "$out"
  echo "$triple: --version, check of $(ls config/*.toml | wc -l) configs and a 6 s demo under $qemu"
}
if [ "${#archs[@]}" -gt 1 ]; then
  qemu_check aarch64-unknown-linux-gnu aarch64-linux-gnu qemu-aarch64-static AArch64 arm64
  qemu_check armv7-unknown-linux-gnueabihf arm-linux-gnueabihf qemu-arm-static ARM armhf
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "-- not root: skipping the .deb install check"
  exit 0
fi
if dpkg -s fieldgate >/dev/null 2>&1; then
  echo "fieldgate is already installed on this machine; refusing to touch it" >&2
  exit 1
fi
trap 'apt-get purge -y -qq fieldgate >/dev/null 2>&1 || true' EXIT

echo "-- install $deb"
apt-get install -y -qq "./$deb" >/dev/null
fieldgate --version
fieldgate check -c /etc/fieldgate/fieldgate.toml
getent passwd fieldgate >/dev/null
test "$(stat -c '%a %G' /etc/fieldgate/fieldgate.toml)" = "640 fieldgate"
systemd-analyze verify /lib/systemd/system/fieldgate.service
score=$(systemd-analyze security --offline=true /lib/systemd/system/fieldgate.service | sed -n 's/.*exposure level for fieldgate.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $score (OK is <= 2.5)"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.5) }'
grep -q "^LimitNOFILE=8192" /lib/systemd/system/fieldgate.service
grep -q "^RestartForceExitStatus=79" /lib/systemd/system/fieldgate.service
grep -q "^DeviceAllow=char-ttymxc rw" /lib/systemd/system/fieldgate.service

echo "-- the JIT drop-in lifts exactly MemoryDenyWriteExecute and @resources (offline analysis)"
root=$(mktemp -d)
install -D -m 0644 /lib/systemd/system/fieldgate.service "$root/etc/systemd/system/fieldgate.service"
install -D -m 0644 /usr/share/doc/fieldgate/examples/jit-drivers.conf \
    "$root/etc/systemd/system/fieldgate.service.d/jit-drivers.conf"
analysis=$(systemd-analyze security --offline=true --root="$root" fieldgate.service)
rm -rf "$root"
echo "$analysis" | grep -q "✗ MemoryDenyWriteExecute="
echo "$analysis" | grep -q "✗ SystemCallFilter=~@resources"
echo "$analysis" | grep -q "✓ SystemCallFilter=~@privileged"
jit=$(echo "$analysis" | sed -n 's/.*exposure level for fieldgate.service: \([0-9.]*\).*/\1/p')
echo "with the JIT drop-in: exposure $jit"
awk -v s="$jit" 'BEGIN { exit !(s != "" && s <= 2.5) }'

echo "-- reinstall keeps the edited config (conffile)"
echo "# edited by the operator" >> /etc/fieldgate/fieldgate.toml
dpkg -i --force-confold "$deb" >/dev/null
grep -q "edited by the operator" /etc/fieldgate/fieldgate.toml

echo "-- purge removes the secrets beside the config too"
echo "s3cret" > /etc/fieldgate/secret
apt-get purge -y -qq fieldgate >/dev/null
test ! -e /usr/bin/fieldgate
test ! -e /etc/fieldgate/secret
test ! -e /var/lib/fieldgate
trap - EXIT
echo "packages OK: $deb $rpm"
