#!/usr/bin/env bash
# Build the packages:  bash packaging/build.sh [ARCH...]  → dist/
#
# ARCH is a Debian architecture: amd64, arm64, armhf (default: all three). Each gets a .deb;
# amd64 and arm64 also an .rpm (x86_64, aarch64). Every binary is a release build with the BLE
# feature, stripped, dynamically linked against the target's libdbus (Depends/Requires name
# it). One cargo invocation per target; the target directory is reused between runs.
#
# A fresh Debian 12 machine needs only this script and rustup: it installs what is missing
# (apt as root or through sudo: dpkg-dev, rpm, pkg-config, libdbus-1-dev, the cross gcc and
# libc for each ARM target; rustup: the Rust targets) and fetches each ARM target's libdbus
# and the libraries it links (libsystemd0, …) from Debian's archive for that architecture
# with `apt-get download` into target/sysroot/ARCH — unpacked, not installed, so the build
# machine's own packages are never changed to match (Multi-Arch: same would force the host's
# libsystemd0 to the archive's exact version).
set -euo pipefail
cd "$(dirname "$0")/.."

archs=("$@")
[ "${#archs[@]}" -eq 0 ] && archs=(amd64 arm64 armhf)

host_arch=$(dpkg --print-architecture)
# FG_PROFILE: the cargo profile (default `release`; CI checks with `dev`, see check.sh).
profile=${FG_PROFILE:-release}
profile_dir=$profile
[ "$profile" = dev ] && profile_dir=debug
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
target_dir=${CARGO_TARGET_DIR:-target}

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo

# Rust triple, GNU multiarch tuple, rpm arch (empty: no rpm) per Debian architecture.
triple_of() {
  case "$1" in
    amd64) echo x86_64-unknown-linux-gnu ;;
    arm64) echo aarch64-unknown-linux-gnu ;;
    armhf) echo armv7-unknown-linux-gnueabihf ;;
    *) echo "unknown architecture $1 (amd64, arm64, armhf)" >&2; exit 64 ;;
  esac
}
multiarch_of() {
  case "$1" in
    amd64) echo x86_64-linux-gnu ;;
    arm64) echo aarch64-linux-gnu ;;
    armhf) echo arm-linux-gnueabihf ;;
  esac
}
rpm_arch_of() {
  case "$1" in
    amd64) echo x86_64 ;;
    arm64) echo aarch64 ;;
    *) echo "" ;;
  esac
}
# The cross gcc and libc packages of a Debian architecture.
cross_packages_of() {
  case "$1" in
    arm64) echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
    armhf) echo gcc-arm-linux-gnueabihf libc6-dev-armhf-cross ;;
  esac
}

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# libdbus and what it links, for one foreign architecture, unpacked under target/sysroot/ARCH.
sysroot() {
  local arch=$1 dir="$target_dir/sysroot/$1"
  if [ -f "$dir/.complete" ]; then echo "$dir"; return; fi
  if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
    $SUDO dpkg --add-architecture "$arch"
  fi
  # An index that fails to refresh (a mirror mid-sync) leaves the previous one: fine here.
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  rm -rf "$dir" && mkdir -p "$dir/debs"
  local libs=(libdbus-1-dev libdbus-1-3 libsystemd0 libcap2 libgcrypt20 libgpg-error0 liblz4-1
              liblzma5 libzstd1)
  # As root, apt would hand the download to its unprivileged `_apt` user, who may not be able
  # to write here: keep it as the caller.
  (cd "$dir/debs" && apt-get download -qq -o APT::Sandbox::User="$(id -un)" "${libs[@]/%/:$arch}" >/dev/null)
  for d in "$dir"/debs/*.deb; do dpkg-deb -x "$d" "$dir"; done
  # Absolute links (libdbus-1.so → /lib/…) would point into the build machine: re-aim them
  # inside the sysroot, or the linker falls back to the static libdbus-1.a.
  find "$dir" -type l -lname '/*' | while read -r l; do
    ln -sfn "$(realpath -m "$dir/$(readlink "$l")")" "$l"
  done
  touch "$dir/.complete"
  echo "$dir"
}

apt_install dpkg-dev rpm pkg-config libdbus-1-dev gcc libc6-dev
for arch in "${archs[@]}"; do
  triple=$(triple_of "$arch")
  if [ "$arch" != "$host_arch" ]; then
    # shellcheck disable=SC2046
    apt_install $(cross_packages_of "$arch")
    rustup target list --installed | grep -qx "$triple" || rustup target add "$triple"
  fi
done

# Build: the host's architecture natively (same target dir as the tests), each other one
# cross-compiled, with its C compiler (ring, the bundled SQLite) and its libdbus.
bin_of() {
  local arch=$1
  if [ "$arch" = "$host_arch" ]; then
    echo "$target_dir/$profile_dir/fieldgate"
  else
    echo "$target_dir/$(triple_of "$arch")/$profile_dir/fieldgate"
  fi
}
for arch in "${archs[@]}"; do
  echo "== build $arch"
  if [ "$arch" = "$host_arch" ]; then
    cargo build --profile "$profile" --locked --bin fieldgate --features ble
    continue
  fi
  triple=$(triple_of "$arch")
  ma=$(multiarch_of "$arch")
  root=$(realpath "$(sysroot "$arch")")
  up=$(echo "$triple" | tr 'a-z-' 'A-Z_')
  env "CARGO_TARGET_${up}_LINKER=$ma-gcc" \
      "CC_${triple//-/_}=$ma-gcc" \
      "AR_${triple//-/_}=$ma-ar" \
      "CARGO_TARGET_${up}_RUSTFLAGS=-C link-arg=-Wl,-rpath-link,$root/lib/$ma:$root/usr/lib/$ma" \
      PKG_CONFIG_ALLOW_CROSS=1 \
      PKG_CONFIG_SYSROOT_DIR="$root" \
      PKG_CONFIG_LIBDIR="$root/usr/lib/$ma/pkgconfig:$root/usr/share/pkgconfig" \
      cargo build --profile "$profile" --locked --bin fieldgate --features ble --target "$triple"
done

rm -rf dist && mkdir -p dist
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

for arch in "${archs[@]}"; do
  bin=$(bin_of "$arch")
  rpm_arch=$(rpm_arch_of "$arch")
  work="$stage/$arch"
  # The installed tree, shared by both packages.
  tree="$work/tree"
  install -D -m 0755 "$bin" "$tree/usr/bin/fieldgate"
  install -D -m 0644 config/default.toml "$tree/etc/fieldgate/fieldgate.toml"
  install -D -m 0644 README.md "$tree/usr/share/doc/fieldgate/README.md"
  for f in config/*.toml; do install -D -m 0644 "$f" "$tree/usr/share/doc/fieldgate/examples/$(basename "$f")"; done
  # The external-driver protocol and its runnable example program.
  install -D -m 0644 drivers/exec/README.md "$tree/usr/share/doc/fieldgate/exec-drivers.md"
  install -D -m 0755 drivers/exec/examples/thermostat.py "$tree/usr/share/doc/fieldgate/examples/thermostat.py"
  # The drop-in that lets exec driver programs on JIT runtimes run under the unit's sandbox.
  install -D -m 0644 systemd/jit-drivers.conf "$tree/usr/share/doc/fieldgate/examples/jit-drivers.conf"

  # .deb (Debian: units under /lib/systemd/system)
  deb="$work/deb"
  cp -a "$tree" "$deb"
  install -D -m 0644 systemd/fieldgate.service "$deb/lib/systemd/system/fieldgate.service"
  mkdir -p "$deb/DEBIAN"
  for s in postinst prerm postrm; do install -m 0755 "packaging/deb/$s" "$deb/DEBIAN/$s"; done
  echo "/etc/fieldgate/fieldgate.toml" > "$deb/DEBIAN/conffiles"
  cat > "$deb/DEBIAN/control" <<CTL
Package: fieldgate
Version: $version
Architecture: $arch
Maintainer: fieldgate developers <fieldgate@localhost>
Depends: adduser, libc6 (>= 2.34), libgcc-s1, libdbus-1-3 (>= 1.6)
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$deb" | cut -f1)
Description: edge gateway daemon: field devices to an IoT platform over MQTT
 fieldgate reads Modbus TCP/RTU devices, serial ASCII instruments, BLE
 sensors and external driver programs, keeps every reading in a durable
 store-and-forward queue (SQLite) and delivers them over one MQTT session,
 adding child devices and reporting their status on the platform.
CTL
  dpkg-deb --root-owner-group --build "$deb" "dist/fieldgate_${version}_${arch}.deb" >/dev/null

  # .rpm (units under /usr/lib/systemd/system)
  [ -z "$rpm_arch" ] && continue
  rpmtree="$work/rpm"
  cp -a "$tree" "$rpmtree"
  install -D -m 0644 systemd/fieldgate.service "$rpmtree/usr/lib/systemd/system/fieldgate.service"
  rpmbuild -bb --quiet \
    --target "$rpm_arch-linux" \
    --define "_topdir $work/rpmbuild" \
    --define "_build_id_links none" \
    --define "__strip /bin/true" \
    --define "fg_version $version" \
    --define "fg_arch $rpm_arch" \
    --define "fg_stage $rpmtree" \
    packaging/fieldgate.spec
  cp "$work"/rpmbuild/RPMS/*/fieldgate-*.rpm dist/
done
ls -l dist/
