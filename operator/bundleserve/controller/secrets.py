"""Each Endpoint's own credentials: one Secret per Endpoint, made by the operator, that reaches that Endpoint alone.

Why (issue 17): the operator used to copy the shared Secrets (the one Redis password, every API key, the S3 keys) into
every Endpoint's namespace, where any pod of that namespace could read them and so reach every other namespace's
tasks, results and endpoints. Now nothing shared leaves the operator's namespace (docs/security.md):
- `<endpoint>-bundleserve-credentials` (a child of the Endpoint, in its namespace) holds
  - `url`, `username`, `password`, `address`: the Endpoint's own Redis ACL user (queue/acl.py), allowed the keys and
    channels under `bundleserve:{<namespace>/<name>}:` only. The operator creates the user with the master
    credential (BUNDLESERVE_REDIS_URL, in its own namespace) on every reconcile (a Redis restart without an ACL file
    forgets users: the drift timer brings them back within a minute); the password is generated once and kept in
    this Secret (delete the Secret to rotate it);
  - `api-keys`: this Endpoint's gateway key and the keys scoped to its namespace (api/credentials.py), never a
    cluster-wide key;
- the S3 result store's Secret (BUNDLESERVE_RESULTS_S3_SECRET) is no longer copied: the pods reference the Secret of
  that name in their own namespace, which the cluster admin creates per namespace (credentials for that namespace's
  prefix); a missing one is `Degraded=True/SecretMissing`.
The Secret's data is never logged, put in status or hashed into an annotation (the desired-hash covers key names).
A missing master API-key Secret is `Degraded=True/SecretMissing`, the Endpoint's own callback Secret
(`spec.async.callback.auth.secretName`) `Degraded=True/CallbackSecretMissing`.
RBAC: get on Secrets (the master API-key Secret in the operator's namespace; the Endpoint's own credentials, callback
and S3 Secrets in its namespace), create/update (the credentials Secret). See charts/bundleserve/files/operator-rbac.yaml.

Errors: `BuildError` (a Degraded reason) for anything the cluster admin or the Endpoint's author must fix.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Awaitable, Callable

from bundleserve.api.credentials import KeysFile, KeysFileError
from bundleserve.api.endpoint import Endpoint, Mode
from bundleserve.controller.builders import BuildContext, BuildError, Manifest
from bundleserve.controller.builders.common import metadata, stamp_desired_hash
from bundleserve.controller.builders.deployment import API_KEYS_KEY, callback_auth
from bundleserve.controller.kube import KubeClient
from bundleserve.queue import acl, keys

CREDENTIALS_SUFFIX = "bundleserve-credentials"
#: Creates or resets the Endpoint's Redis user: (queue id, password). The operator's is queue.acl.ensure_user over
#: its master connection (controller/state.py).
EnsureQueueUser = Callable[[str, str], Awaitable[None]]


def credentials_name(endpoint: str) -> str:
    """`<endpoint>-bundleserve-credentials`, within the 253 characters of a Secret name."""
    return f"{endpoint}-{CREDENTIALS_SUFFIX}"[:253].rstrip("-.")


def _decoded(secret: Manifest | None, key: str) -> str | None:
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        return None
    try:
        return base64.b64decode(raw).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def build_credentials(endpoint: Endpoint, data: dict[str, str]) -> Manifest:
    """The Secret as a child: its desired-hash covers the key names, never the values."""
    secret: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(endpoint, credentials_name(endpoint.name)),
        "type": "Opaque",
        "data": sorted(data),
    }
    stamp_desired_hash(secret)
    secret["data"] = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return secret


async def check_callback_secret(endpoint: Endpoint, kube: KubeClient) -> None:
    """The Secret of `spec.async.callback.auth` must exist in the Endpoint's namespace: without it the router would
    send callbacks unauthenticated (or its pods would never start), so it is Degraded=True/CallbackSecretMissing."""
    auth = callback_auth(endpoint)
    if auth is not None and await kube.get("Secret", endpoint.namespace, auth.secret_name) is None:
        raise BuildError(
            "CallbackSecretMissing",
            f"the Secret {endpoint.namespace}/{auth.secret_name} of spec.async.callback.auth does not exist"
            f" (keys {'username, password' if auth.kind == 'basic' else 'tls.crt, tls.key'})",
        )


async def master_keys(context: BuildContext, kube: KubeClient) -> KeysFile | None:
    """The master API-key file from the operator's own namespace (None: authentication off)."""
    config = context.config
    if not config.api_keys_secret:
        return None
    home = config.secrets_namespace
    if home is None:
        raise BuildError(
            "SecretMissing",
            f"BUNDLESERVE_API_KEYS_SECRET={config.api_keys_secret} is set but the operator knows no namespace of its"
            " own to read it from (set POD_NAMESPACE or BUNDLESERVE_SECRETS_NAMESPACE)",
        )
    found = await kube.get("Secret", home, config.api_keys_secret)
    text = _decoded(found, API_KEYS_KEY)
    if text is None:
        raise BuildError(
            "SecretMissing",
            f"the Secret {home}/{config.api_keys_secret} (BUNDLESERVE_API_KEYS_SECRET) does not exist or has no"
            f" `{API_KEYS_KEY}` key",
        )
    try:
        return KeysFile.parse(text)
    except KeysFileError as error:
        raise BuildError("InvalidApiKeys", f"the Secret {home}/{config.api_keys_secret}: {error}") from None


async def credentials(
    endpoint: Endpoint, context: BuildContext, kube: KubeClient, ensure_user: EnsureQueueUser | None
) -> tuple[BuildContext, list[Manifest]]:
    """The build context whose Secret names are this Endpoint's own, and the Secret to apply (first, before the
    Deployment that references it). Creates or resets the Endpoint's Redis user. Raises BuildError."""
    await check_callback_secret(endpoint, kube)
    config = context.config
    if config.results_s3_secret and await kube.get("Secret", endpoint.namespace, config.results_s3_secret) is None:
        raise BuildError(
            "SecretMissing",
            f"the Secret {endpoint.namespace}/{config.results_s3_secret} (BUNDLESERVE_RESULTS_S3_SECRET) does not"
            " exist: each namespace has its own S3 credentials for results (docs/security.md)",
        )
    data: dict[str, str] = {}
    based_on: str | None = None  # the resourceVersion of the Secret whose password is kept
    keys_file = await master_keys(context, kube)
    if keys_file is not None:
        data[API_KEYS_KEY] = keys_file.router_file(endpoint.namespace, endpoint.name)
    master_url = config.redis_url
    wants_queue = endpoint.spec.serves(Mode.ASYNC) and master_url is not None
    if wants_queue and master_url is not None:
        if ensure_user is None:
            raise BuildError("QueueUnavailable", "the operator has no connection to the queue's Redis yet")
        name = credentials_name(endpoint.name)
        existing = await kube.get("Secret", endpoint.namespace, name)
        kept = _decoded(existing, "password")
        password = kept or acl.new_password()
        if existing is not None and kept:
            # Written only over the version the password came from (`reconcile.apply_children`): a Secret deleted
            # meanwhile (a rotation) must not come back with the old password from a reconcile that read it before.
            based_on = existing.get("metadata", {}).get("resourceVersion")
        queue = keys.queue_id(endpoint.namespace, endpoint.name)
        try:
            await ensure_user(queue, password)
        except acl.AclUnsupported as error:
            raise BuildError("QueueUnavailable", str(error)) from None
        except Exception as error:  # the Redis being down must not leave a Deployment with a user that may not exist
            reason = type(error).__name__
            raise BuildError("QueueUnavailable", f"cannot create the Endpoint's Redis user ({reason})") from None
        data.update(
            url=acl.endpoint_url(master_url, queue, password),
            username=acl.username(queue),
            password=password,
            address=acl.address(master_url),
        )
    if not data:
        return dataclasses.replace(context, config=dataclasses.replace(config, redis_secret=None)), []
    secret = build_credentials(endpoint, data)
    if based_on is not None:
        secret["metadata"]["resourceVersion"] = based_on
    own = credentials_name(endpoint.name)
    local = dataclasses.replace(
        config,
        redis_secret=own if wants_queue else None,
        api_keys_secret=own if keys_file is not None else None,
    )
    return dataclasses.replace(context, config=local), [secret]
