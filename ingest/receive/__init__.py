"""Receive: the sockets and their drain loop, decoding, the dialects (GELF,
syslog, statsd), and the reader's side of a tap. The first folder a datagram
meets; it hands what it builds to the pipeline's queue (pipeline/)."""
