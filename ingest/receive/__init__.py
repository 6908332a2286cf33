"""Receive: binding the sockets (sockets.py), how each is received from
(receivers.py), the read loop (sources.py) and what one wake-up of it carries
(wakeup.py), decoding (codec.py), the dialects (GELF, syslog, statsd), and the
reader's side of a tap (tapped.py). The first folder a datagram meets; it
hands what it builds to the pipeline's queue (pipeline/)."""
