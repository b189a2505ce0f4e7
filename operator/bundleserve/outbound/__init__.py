"""Outbound HTTP to destinations a client chose (url inputs, completion callbacks): the destination guard.

Below `queue` and `router` (it imports only `api`), so both use the one guard: `destinations.AddressPolicy` decides per
address, `connector.guarded_connector` makes aiohttp connect only to addresses the policy allowed.
"""
