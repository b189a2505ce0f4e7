"""The HTTP edge shared by every server process (router and gateway): what both need and neither owns.

Framing of the one error shape (`edge.errors`), connection deadlines (`edge.connections`), the connection bookkeeping
of both fast edges (`edge.fast`), the event loop (`edge.loop`), the API-key check
(`edge.auth`), server-sent events (`edge.sse`) and the parsers of the settings both read from their environment
(`edge.config`). Layering (pyproject's import contracts): api <- outbound <- queue <- edge <- dialects <- router |
gateway; the router and the gateway never import each other, they meet here and in the dialects.
"""
