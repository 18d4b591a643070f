"""Cluster settings dialog: values in QgsSettings under forest_carbon/cluster/, the gateway secret in the QGIS
authentication database (never in the settings), what EXECUTION/SCHEDULER resolve to."""

from __future__ import annotations

import time

import pytest

KEYS = ("mode", "address", "tls_ca", "tls_cert", "tls_key", "gateway_url", "gateway_auth", "gateway_workers",
        "local_workers", "job_dir", "timeout", "retries", "worker_wait", "authcfg")


@pytest.fixture
def clean_settings(qgis_app):
    """Run with empty cluster settings; put the user's back afterwards."""
    from qgis.core import QgsSettings

    from forest_carbon_plugin.settings import PREFIX

    settings = QgsSettings()
    saved = {k: settings.value(PREFIX + k) for k in KEYS if settings.contains(PREFIX + k)}
    settings.remove("forest_carbon/cluster")
    yield settings
    settings.remove("forest_carbon/cluster")
    for key, value in saved.items():
        settings.setValue(PREFIX + key, value)


def _all_values(settings):
    settings.beginGroup("forest_carbon/cluster")
    try:
        return {k: str(settings.value(k)) for k in settings.allKeys()}
    finally:
        settings.endGroup()


def test_dialog_stores_settings_and_reloads_them(clean_settings, tmp_path):
    from forest_carbon_plugin.gui.cluster_settings import ClusterSettingsDialog
    from forest_carbon_plugin.settings import load_spec

    assert load_spec().mode == "local"  # nothing configured: the local cluster
    dialog = ClusterSettingsDialog()
    dialog.mode.setCurrentIndex(1)
    dialog.address.setText("tls://10.1.2.3:8786")
    for edit, name in ((dialog.tls_ca, "ca.pem"), (dialog.tls_cert, "cert.pem"), (dialog.tls_key, "key.pem")):
        edit.setText(str(tmp_path / name))
    dialog.job_dir.setText(str(tmp_path / "jobs"))
    dialog.retries.setValue(5)
    dialog.timeout.setValue(7)
    assert dialog.worker_wait.value() == 60  # the default: a job without workers fails after a minute
    dialog.worker_wait.setValue(120)
    dialog.accept()
    spec = load_spec()
    assert (spec.mode, spec.address, spec.tls_key, spec.retries, spec.timeout, spec.worker_wait) == \
        ("scheduler", "tls://10.1.2.3:8786", str(tmp_path / "key.pem"), 5, 7.0, 120.0)
    assert spec.job_dir == str(tmp_path / "jobs")
    again = ClusterSettingsDialog()
    assert again.mode.currentIndex() == 1 and again.address.text() == "tls://10.1.2.3:8786"
    assert again.tls_ca.text() == str(tmp_path / "ca.pem") and again.retries.value() == 5
    assert again.worker_wait.value() == 120
    again.mode.setCurrentIndex(0)
    again.local_workers.setValue(3)
    again.accept()
    spec = load_spec()
    assert spec.mode == "local" and spec.n_workers == 3


def test_gateway_secret_goes_to_the_auth_database(clean_settings, tmp_path):
    from qgis.core import QgsApplication

    from forest_carbon_plugin.gui.cluster_settings import ClusterSettingsDialog
    from forest_carbon_plugin.settings import load_spec

    manager = QgsApplication.authManager()
    if manager.isDisabled():
        pytest.skip(f"the QGIS authentication system is disabled here: {manager.disabledMessage()}")
    if not manager.masterPasswordIsSet() and not manager.setMasterPassword("forest-carbon-tests", True):
        pytest.skip("the QGIS authentication database of this profile has another master password")
    secret = f"s3cret-{time.time_ns()}"
    dialog = ClusterSettingsDialog()
    dialog.mode.setCurrentIndex(2)
    dialog.gateway_url.setText("https://gateway.example.org")
    dialog.gateway_auth.setCurrentIndex(1)
    dialog.gateway_user.setText("analyst")
    dialog.gateway_secret.setText(secret)
    dialog.accept()
    values = _all_values(clean_settings)
    assert values["authcfg"] and not any(secret in v for v in values.values())
    spec = load_spec()
    assert (spec.mode, spec.gateway_user, spec.gateway_secret) == ("gateway", "analyst", secret)
    assert ClusterSettingsDialog().gateway_secret.text() == ""  # never shown again
    manager.removeAuthenticationConfig(values["authcfg"])


def test_execution_resolves_scheduler_and_reports_a_bad_address(clean_settings, forestcarbon_provider):
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException

    from forest_carbon_plugin.gui.cluster_settings import ClusterSettingsDialog
    from processing_provider.execution import requested_spec

    alg = QgsApplication.processingRegistry().createAlgorithmById("forestcarbon:canopymetrics")
    context = QgsProcessingContext()
    assert requested_spec(alg, {"EXECUTION": 0, "SCHEDULER": "tcp://x:1"}, context) is None
    assert requested_spec(alg, {"EXECUTION": 1}, context).mode == "local"  # nothing configured
    spec = requested_spec(alg, {"EXECUTION": 1, "SCHEDULER": "tcp://10.0.0.9:8786"}, context)
    assert (spec.mode, spec.address) == ("scheduler", "tcp://10.0.0.9:8786")
    assert requested_spec(alg, {"EXECUTION": 2, "SCHEDULER": "tcp://10.0.0.9:8786"}, context).mode == "local"
    dialog = ClusterSettingsDialog()
    dialog.mode.setCurrentIndex(1)
    dialog.address.setText("tcp://127.0.0.1:1")
    dialog.timeout.setValue(2)
    started = time.monotonic()
    assert "tcp://127.0.0.1:1" in dialog.test_connection()
    assert time.monotonic() - started < 8
    import processing

    from tests.conftest import SAMPLE_LAZ

    with pytest.raises(QgsProcessingException, match=r"tls://127\.0\.0\.1:1 speaks TLS"):
        processing.run("forestcarbon:canopymetrics", {"INPUT": str(SAMPLE_LAZ), "EXECUTION": 1,
                                                      "SCHEDULER": "tls://127.0.0.1:1", "OUTPUT": "TEMPORARY_OUTPUT"})
