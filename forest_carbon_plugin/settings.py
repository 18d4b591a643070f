"""The plugin's settings: the cluster that ``EXECUTION = 1`` runs on, kept between sessions.

Stored with ``QgsSettings`` under ``forest_carbon/cluster/…``; the dask-gateway password or token lives in
the QGIS authentication database (a 'Basic' configuration whose id is stored as
``forest_carbon/cluster/authcfg``), never in project files or plain settings. The cluster settings
dialog (:mod:`.gui.cluster_settings`) writes them; the Processing adapters
(:mod:`processing_provider.execution`) read them. Not core: it needs QGIS.
"""

from __future__ import annotations

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsSettings

from .core.errors import ForestCarbonError
from .core.parallel.connect import DEFAULT_WORKER_WAIT, ClusterSpec

PREFIX = "forest_carbon/cluster/"
MODES = ("local", "scheduler", "gateway")


def _value(settings, key, default, kind=str):
    value = settings.value(PREFIX + key, default)
    if kind is str:
        return "" if value is None else str(value)
    try:  # QgsSettings hands numbers back as strings from the .ini file
        return kind(value)
    except (TypeError, ValueError):
        return default


def load_spec() -> ClusterSpec:
    """The cluster of the settings (secrets from the authentication database)."""
    s = QgsSettings()
    spec = ClusterSpec(
        mode=_value(s, "mode", "local"), address=_value(s, "address", ""), tls_ca=_value(s, "tls_ca", ""),
        tls_cert=_value(s, "tls_cert", ""), tls_key=_value(s, "tls_key", ""),
        gateway_url=_value(s, "gateway_url", ""), gateway_auth=_value(s, "gateway_auth", ""),
        gateway_workers=_value(s, "gateway_workers", 2, int), n_workers=_value(s, "local_workers", 0, int),
        job_dir=_value(s, "job_dir", ""), timeout=_value(s, "timeout", 5.0, float),
        retries=_value(s, "retries", 3, int), worker_wait=_value(s, "worker_wait", DEFAULT_WORKER_WAIT, float))
    if spec.mode not in MODES:
        spec.mode = "local"
    if spec.mode == "scheduler" and not spec.address:
        spec.mode = "local"  # nothing configured: the local cluster
    authcfg = _value(s, "authcfg", "")
    if spec.mode == "gateway" and authcfg:
        spec.gateway_user, spec.gateway_secret = read_secret(authcfg)
    return spec


def save_spec(spec: ClusterSpec, authcfg: str = "") -> None:
    """Store ``spec`` in QgsSettings (no secret: the gateway's credentials go in the auth database, see
    :func:`store_secret`, and only their configuration id ``authcfg`` is stored here)."""
    s = QgsSettings()
    for key, value in (("mode", spec.mode), ("address", spec.address), ("tls_ca", spec.tls_ca),
                       ("tls_cert", spec.tls_cert), ("tls_key", spec.tls_key), ("gateway_url", spec.gateway_url),
                       ("gateway_auth", spec.gateway_auth), ("gateway_workers", int(spec.gateway_workers)),
                       ("local_workers", int(spec.n_workers)), ("job_dir", spec.job_dir),
                       ("timeout", float(spec.timeout)), ("retries", int(spec.retries)),
                       ("worker_wait", float(spec.worker_wait)), ("authcfg", authcfg)):
        s.setValue(PREFIX + key, value)
    s.sync()


def store_secret(user: str, secret: str, authcfg: str = "") -> str:
    """Put the gateway's user and password/token into the QGIS authentication database (a 'Basic'
    configuration); returns its id. Raises when the database is locked (no master password)."""
    manager = QgsApplication.authManager()
    config = QgsAuthMethodConfig()
    if authcfg:
        manager.loadAuthenticationConfig(authcfg, config, True)
    config.setName("Forest Carbon: Dask gateway")
    config.setMethod("Basic")
    config.setConfig("username", user)
    config.setConfig("password", secret)
    ok = manager.updateAuthenticationConfig(config) if config.id() else manager.storeAuthenticationConfig(config)
    ok = ok[0] if isinstance(ok, tuple) else ok
    if not ok or not config.id():
        raise ForestCarbonError("The QGIS authentication database did not take the gateway's credentials: set its "
                                "master password (Settings → Options → Authentication) and try again.")
    return config.id()


def read_secret(authcfg: str) -> tuple[str, str]:
    """The user and password/token of the authentication configuration ``authcfg``."""
    config = QgsAuthMethodConfig()
    QgsApplication.authManager().loadAuthenticationConfig(authcfg, config, True)
    return config.config("username", ""), config.config("password", "")
