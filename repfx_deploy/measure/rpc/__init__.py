"""Measure on a device over TVM RPC: a tracker hands out devices by key; each runs the TVM runtime.

``endpoint`` parses ``HOST:PORT``; ``tracker`` talks to a tracker (device list, session requests, all with
bounded waits); ``server`` runs a tracker or a device server in this process; ``emulator`` starts an aarch64
server under qemu-user; ``remote`` uploads artifacts, checks their outputs and times them on the device.
Only ``remote`` and ``server`` import TVM, and only inside their functions.
"""
