"""Publish: the publisher pool and its retry policy, the Pub/Sub channel and
its wire encoding, the topic checks, and the health state publishes and
probes record. The last folder before Pub/Sub; it takes batches from the
pipeline (pipeline/)."""
