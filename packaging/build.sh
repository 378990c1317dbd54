#!/usr/bin/env bash
# Build the .deb and .rpm from one release build:  bash packaging/build.sh  → dist/
# Needs dpkg-deb (Debian), rpmbuild (Debian package `rpm`) and libdbus-1-dev + pkg-config (the
# BLE feature); no cargo plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
deb_arch=$(dpkg --print-architecture)
rpm_arch=$(uname -m)
cargo build --release --locked --bin fieldgate --features ble

rm -rf dist && mkdir -p dist
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# The installed tree, shared by both packages.
tree="$stage/tree"
install -D -m 0755 "${CARGO_TARGET_DIR:-target}/release/fieldgate" "$tree/usr/bin/fieldgate"
install -D -m 0644 config/default.toml "$tree/etc/fieldgate/fieldgate.toml"
install -D -m 0644 README.md "$tree/usr/share/doc/fieldgate/README.md"
for f in config/*.toml; do install -D -m 0644 "$f" "$tree/usr/share/doc/fieldgate/examples/$(basename "$f")"; done
# The external-driver protocol and its runnable example program.
install -D -m 0644 drivers/exec/README.md "$tree/usr/share/doc/fieldgate/exec-drivers.md"
install -D -m 0755 drivers/exec/examples/thermostat.py "$tree/usr/share/doc/fieldgate/examples/thermostat.py"
# The drop-in that lets exec driver programs on JIT runtimes run under the unit's sandbox.
install -D -m 0644 systemd/jit-drivers.conf "$tree/usr/share/doc/fieldgate/examples/jit-drivers.conf"

# .deb (Debian: units under /lib/systemd/system)
deb="$stage/deb"
cp -a "$tree" "$deb"
install -D -m 0644 systemd/fieldgate.service "$deb/lib/systemd/system/fieldgate.service"
mkdir -p "$deb/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "packaging/deb/$s" "$deb/DEBIAN/$s"; done
echo "/etc/fieldgate/fieldgate.toml" > "$deb/DEBIAN/conffiles"
cat > "$deb/DEBIAN/control" <<CTL
Package: fieldgate
Version: $version
Architecture: $deb_arch
Maintainer: fieldgate developers <fieldgate@localhost>
Depends: adduser, libc6, libdbus-1-3
Section: net
Priority: optional
Installed-Size: $(du -sk "$deb" | cut -f1)
Description: edge gateway daemon: field devices to an IoT platform over MQTT
 fieldgate reads Modbus TCP/RTU devices, serial ASCII instruments, BLE
 sensors and external driver programs, keeps every reading in a durable
 store-and-forward queue (SQLite) and delivers them over one MQTT session,
 adding child devices and reporting their status on the platform.
CTL
dpkg-deb --root-owner-group --build "$deb" "dist/fieldgate_${version}_${deb_arch}.deb" >/dev/null

# .rpm (units under /usr/lib/systemd/system)
rpmtree="$stage/rpm"
cp -a "$tree" "$rpmtree"
install -D -m 0644 systemd/fieldgate.service "$rpmtree/usr/lib/systemd/system/fieldgate.service"
rpmbuild -bb --quiet \
  --define "_topdir $stage/rpmbuild" \
  --define "_build_id_links none" \
  --define "fg_version $version" \
  --define "fg_arch $rpm_arch" \
  --define "fg_stage $rpmtree" \
  packaging/fieldgate.spec
cp "$stage"/rpmbuild/RPMS/*/fieldgate-*.rpm dist/
ls -l dist/
