"""Where an AWS client points, resolved once for the CLI and the Dagster resources alike.

boto3's own convention decides: `AWS_ENDPOINT_URL_<SERVICE>` (or the `services` section of the
AWS config file) names one service's endpoint and wins over the global `AWS_ENDPOINT_URL` (or
the profile's `endpoint_url`); `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` turns all of them off.
The region is `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's. The storage client
(integrity.storage.s3.s3_client) and the queue client (integrity.remediation.queue.sqs_client)
are built from these; credentials always come from the standard AWS chain, never from here.
"""

from __future__ import annotations

import os
import threading
from typing import Any

ENV_ENDPOINT_URL = "AWS_ENDPOINT_URL"
ENV_REGION = "AWS_REGION"
ENV_DEFAULT_REGION = "AWS_DEFAULT_REGION"


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


def region(core: Any | None = None) -> str | None:
    """AWS_REGION, else AWS_DEFAULT_REGION, else the profile's region (botocore reads only the
    last two, so a CLI and a resource could otherwise disagree under `AWS_REGION=auto`)."""
    configured = os.environ.get(ENV_REGION) or os.environ.get(ENV_DEFAULT_REGION)
    if configured:
        return configured
    return (core or botocore_session()).get_config_variable("region") or None


def service_endpoint(service: str, core: Any | None = None) -> str | None:
    """The endpoint configured for this one service, never the global one.

    `AWS_ENDPOINT_URL_<SERVICE>`, else the service's `endpoint_url` in the profile's `services`
    section of the AWS config file; None when neither is set or configured endpoints are ignored.
    """
    core = core or botocore_session()
    if core.get_config_variable("ignore_configured_endpoint_urls"):
        return None
    configured = os.environ.get(f"{ENV_ENDPOINT_URL}_{service.upper()}")
    if configured:
        return configured
    section = core.get_scoped_config().get("services")
    if not section:
        return None
    services = core.full_config.get("services", {}).get(section) or {}
    return (services.get(service.lower()) or {}).get("endpoint_url") or None
