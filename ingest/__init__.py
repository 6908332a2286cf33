"""ingest: a datagram relay from local web workers and UDP emitters to Google Cloud Pub/Sub."""

__version__ = "0.1.0"
