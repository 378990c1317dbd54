#!/usr/bin/env bash
# Build both packages, install the .deb on this machine, check what it installed, and remove
# it again. Run by .ci/run; needs root for the install part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/build.sh
deb=$(ls dist/fieldgate_*.deb)
rpm=$(ls dist/fieldgate-*.rpm)

echo "-- rpm metadata and contents"
rpm -qip "$rpm" | grep -E '^(Name|Version|Architecture|License)'
rpm -qlp "$rpm"
rpm -qp --scripts "$rpm" | grep -q useradd

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
