"""Measure on a device over TVM RPC: a tracker hands out devices by key; each runs the TVM runtime.

``endpoint`` parses ``HOST:PORT``; ``tracker`` talks to a tracker (device list, session requests, all with
bounded waits); ``server`` runs a tracker (``tracker_server``) or a device server (``listener``, ``registration``; sessions
confined by ``files``) in this process; ``emulator`` starts an aarch64 server under qemu-user; ``remote``
uploads artifacts, checks their outputs and times them on the device. ``auth`` (the shared token),
``exposure`` (where a server may listen) and ``framing`` (the wire format, read with bounds) are shared.
TVM is imported only inside functions.
"""
