"""botocore sessions and boto3 clients, and what the AWS config file says about them.

The environment's endpoints and region are read once by integrity.settings and passed in by
integrity.connections, which builds the storage and queue clients for the CLI and the Dagster
resources alike; this module only adds what the profile in the AWS config file says (its region,
a service's `endpoint_url` in its `services` section). Credentials always come from the
standard AWS chain inside boto3, never from here.
"""

from __future__ import annotations

import threading
from typing import Any

_LOCK = threading.Lock()
_LOADER: list[Any] = []  # one data loader for the process: it only caches botocore's data files


def botocore_session() -> Any:
    """A fresh botocore session (one per client: sessions are not shared across threads).

    Sessions share one data loader, so a client does not parse the service model and the
    endpoint rules again (that parse is most of a new client's cost).
    """
    import botocore.loaders
    import botocore.session

    core = botocore.session.Session()
    with _LOCK:
        if not _LOADER:  # AWS_DATA_PATH as the process found it, as botocore's own would
            _LOADER.append(botocore.loaders.create_loader(core.get_config_variable("data_path")))
        loader = _LOADER[0]
    core.register_component("data_loader", loader)
    return core


def client(service: str, core: Any, **kwargs: Any) -> Any:
    """A boto3 client on this botocore session (credentials: the standard AWS chain)."""
    import boto3

    with _LOCK:
        boto_session = boto3.session.Session(botocore_session=core)
        # boto3 adds its data path to the loader's search paths on every session: keep one.
        paths = core.get_component("data_loader").search_paths
        paths[:] = list(dict.fromkeys(paths))
    return boto_session.client(service, **kwargs)


def profile_region(core: Any | None = None) -> str | None:
    """The region the AWS profile (config file, or botocore's own AWS_DEFAULT_REGION) gives."""
    return (core or botocore_session()).get_config_variable("region") or None


def service_endpoint(
    service: str, configured: str | None = None, core: Any | None = None
) -> str | None:
    """The endpoint configured for this one service, never the global one.

    `configured` (AWS_ENDPOINT_URL_<SERVICE>, read by integrity.settings), else the service's
    `endpoint_url` in the profile's `services` section of the AWS config file; None when neither
    is set or configured endpoints are ignored.
    """
    core = core or botocore_session()
    if core.get_config_variable("ignore_configured_endpoint_urls"):
        return None
    if configured:
        return configured
    section = core.get_scoped_config().get("services")
    if not section:
        return None
    services = core.full_config.get("services", {}).get(section) or {}
    return (services.get(service.lower()) or {}).get("endpoint_url") or None
