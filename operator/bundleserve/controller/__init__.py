"""The kopf operator: thin handlers -> one idempotent `reconcile()`; pure builders; one module (`kube`) that talks to the API."""
