"""Dialects: thin adapters (parse -> invocation core -> render) for the native, SageMaker and Launch APIs.

A dialect depends only on the Protocols of `dialects.base` (never on `router`), so the router and the gateway can
both mount it. See docs/router.md, "Invocation core".
"""
