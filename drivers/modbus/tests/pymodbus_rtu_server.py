#!/usr/bin/python3
"""An independent Modbus RTU server (Debian's python3-pymodbus) on a serial port, for the
wire-compatibility test. Units 1 and 2; holding register N of unit U holds N + 1000*U;
coil N is on when N is odd. Writes are kept, so a write can be read back.

usage: pymodbus_rtu_server.py PORT BAUD
"""
import logging
import sys

from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSlaveContext)
from pymodbus.server import StartSerialServer
from pymodbus.transaction import ModbusRtuFramer


def unit(u):
    regs = ModbusSequentialDataBlock(0, [(n + 1000 * u) & 0xFFFF for n in range(1000)])
    coils = ModbusSequentialDataBlock(0, [n % 2 == 1 for n in range(1000)])
    return ModbusSlaveContext(hr=regs, ir=regs, co=coils, di=coils, zero_mode=True)


def main():
    logging.basicConfig(level=logging.WARNING)
    port, baud = sys.argv[1], int(sys.argv[2])
    ctx = ModbusServerContext(slaves={1: unit(1), 2: unit(2)}, single=False)
    print("serving", port, flush=True)
    StartSerialServer(context=ctx, framer=ModbusRtuFramer, port=port, baudrate=baud,
                      bytesize=8, parity="N", stopbits=1, timeout=0.05,
                      ignore_missing_slaves=True)


if __name__ == "__main__":
    main()
