"""bundleserve's Python SDK: Launch's request/response model over the native API (docs/client.md).

```python
from bundleserve.client import Client, EndpointRequest

with Client("http://127.0.0.1:8080") as client:
    echo = client.endpoint("echo", mode="sync")
    print(echo.predict(EndpointRequest(args={"x": 1})).result_value())
```
`AsyncClient` (in `bundleserve.client.aio`) mirrors it for asyncio. Of the rest of the package only
`bundleserve.api` is imported, so the SDK stays a thin client.
"""

from bundleserve.client.aio import AsyncClient
from bundleserve.client.errors import (
    BundleserveError,
    ConnectionFailed,
    InvalidRequest,
    ModelError,
    ModeNotServed,
    ModesUnknown,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from bundleserve.client.models import EndpointInfo, EndpointRequest, EndpointResponse, InvalidEndpointRequest
from bundleserve.client.sync import (
    AsyncEndpoint,
    Client,
    EndpointResponseFuture,
    EndpointResponseStream,
    StreamingEndpoint,
    SyncEndpoint,
)
from bundleserve.client.wire import RetryPolicy

__all__ = [
    "AsyncClient",
    "AsyncEndpoint",
    "BundleserveError",
    "Client",
    "ConnectionFailed",
    "EndpointInfo",
    "EndpointRequest",
    "EndpointResponse",
    "EndpointResponseFuture",
    "EndpointResponseStream",
    "InvalidEndpointRequest",
    "InvalidRequest",
    "ModeNotServed",
    "ModelError",
    "ModesUnknown",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RetryPolicy",
    "ServerError",
    "StreamingEndpoint",
    "SyncEndpoint",
    "Timeout",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]
