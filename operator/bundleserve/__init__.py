"""bundleserve: serve model bundles on Kubernetes with sync, streaming and durable async invocation."""

__version__ = "0.1.0"
