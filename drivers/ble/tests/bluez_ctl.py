#!/usr/bin/python3
"""Drive python-dbusmock's bluez5 template for the BLE tests (no Bluetooth hardware here).

Reads one command per line on stdin, answers "ok" (or "ok VALUE") on stdout:
  adapter NAME                      add an adapter (hci0)
  device ADAPTER ADDR NAME          add a device
  sd ADDR UUID16 HEX                set its ServiceData {uuid: bytes} (an advertisement)
  md ADDR COMPANY HEX               set its ManufacturerData {company: bytes}
  gatt ADDR SVC CHAR UUID128 HEX    add GATT service SVC / characteristic CHAR with a value
  notify ADDR SVC CHAR HEX          change a characteristic's value (a notification)
  value ADDR SVC CHAR               print a characteristic's current value (after a write)
The bus address comes from DBUS_SYSTEM_BUS_ADDRESS.
"""
import os
import sys

import dbus

BUS = dbus.bus.BusConnection(os.environ["DBUS_SYSTEM_BUS_ADDRESS"])
MOCK = "org.freedesktop.DBus.Mock"
CHAR_IFACE = "org.bluez.GattCharacteristic1"


def obj(path):
    return BUS.get_object("org.bluez", path)


def dev_path(addr, adapter="hci0"):
    return f"/org/bluez/{adapter}/dev_" + addr.replace(":", "_").upper()


def uuid128(u16):
    return f"0000{u16.lower()}-0000-1000-8000-00805f9b34fb"


def data(hexstr):
    return dbus.Array([dbus.Byte(b) for b in bytes.fromhex(hexstr)], signature="y", variant_level=1)


def run(cmd):
    op, *a = cmd.split()
    if op == "adapter":
        obj("/org/bluez").AddAdapter(a[0], "fieldgate-test", dbus_interface="org.bluez.Mock")
    elif op == "device":
        obj("/org/bluez").AddDevice(a[0], a[1], a[2], dbus_interface="org.bluez.Mock")
    elif op == "sd":
        # Properties.Set (dbusmock's UpdateProperties cannot wrap dictionaries); it emits
        # PropertiesChanged like BlueZ does for each new advertisement.
        value = dbus.Dictionary({uuid128(a[1]): data(a[2])}, signature="sv", variant_level=1)
        obj(dev_path(a[0])).Set("org.bluez.Device1", "ServiceData", value, dbus_interface="org.freedesktop.DBus.Properties")
    elif op == "md":
        value = dbus.Dictionary({dbus.UInt16(int(a[1], 16)): data(a[2])}, signature="qv", variant_level=1)
        obj(dev_path(a[0])).Set("org.bluez.Device1", "ManufacturerData", value, dbus_interface="org.freedesktop.DBus.Properties")
    elif op == "gatt":
        addr, svc, char, uuid, hexval = a
        dp = dev_path(addr)
        sp = f"{dp}/service{svc}"
        cp = f"{sp}/char{char}"
        root = obj("/")
        if not BUS.get_object("org.bluez", "/").GetManagedObjects(dbus_interface="org.freedesktop.DBus.ObjectManager").get(sp):
            root.AddObject(sp, "org.bluez.GattService1", {
                "UUID": dbus.String("0000181a-0000-1000-8000-00805f9b34fb", variant_level=1),
                "Primary": dbus.Boolean(True, variant_level=1),
                "Device": dbus.ObjectPath(dp, variant_level=1),
                "Handle": dbus.UInt16(int(svc, 16), variant_level=1),
                "Includes": dbus.Array([], signature="o", variant_level=1),
            }, [], dbus_interface=MOCK)
        root.AddObject(cp, CHAR_IFACE, {
            "UUID": dbus.String(uuid, variant_level=1),
            "Service": dbus.ObjectPath(sp, variant_level=1),
            "Value": data(hexval),
            "Notifying": dbus.Boolean(False, variant_level=1),
            "Flags": dbus.Array(["read", "write", "notify"], signature="s", variant_level=1),
            "Handle": dbus.UInt16(int(char, 16), variant_level=1),
        }, [
            ("ReadValue", "a{sv}", "ay", f"ret = self.Get('{CHAR_IFACE}', 'Value')"),
            ("WriteValue", "aya{sv}", "", f"self.UpdateProperties('{CHAR_IFACE}', {{'Value': dbus.Array(args[0], signature='y')}})"),
            ("StartNotify", "", "", ""),
            ("StopNotify", "", "", ""),
        ], dbus_interface=MOCK)
        obj(dp).UpdateProperties("org.bluez.Device1", {
            "ServicesResolved": dbus.Boolean(True, variant_level=1),
            "Connected": dbus.Boolean(True, variant_level=1),
        }, dbus_interface=MOCK)
    elif op == "notify":
        addr, svc, char, hexval = a
        cp = f"{dev_path(addr)}/service{svc}/char{char}"
        obj(cp).UpdateProperties(CHAR_IFACE, {"Value": data(hexval)}, dbus_interface=MOCK)
    elif op == "value":
        addr, svc, char = a
        cp = f"{dev_path(addr)}/service{svc}/char{char}"
        v = obj(cp).Get(CHAR_IFACE, "Value", dbus_interface="org.freedesktop.DBus.Properties")
        return bytes(v).hex()
    else:
        raise ValueError(f"unknown command {op}")
    return ""


for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        out = run(line)
        print(("ok " + out).strip(), flush=True)
    except Exception as e:  # report, keep serving
        print("error " + str(e).replace("\n", " | "), flush=True)
