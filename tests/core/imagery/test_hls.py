"""HLS kernels and c-factors against the values computed in shared/notes/harmonization.md [C]."""

import pytest

from forest_carbon_plugin.core.imagery import hls


@pytest.mark.parametrize("angles, k_vol, k_geo", [
    ((30, 0, 0), -0.031443, -0.698222), ((45, 0, 0), -0.045862, -1.106819),
    ((30, 10, 0), 0.019683, -0.446630), ((30, 10, 180), -0.076913, -0.925294)])
def test_kernels(angles, k_vol, k_geo):
    assert hls.ross_thick(*angles) == pytest.approx(k_vol, abs=1e-6)
    assert hls.li_sparse(*angles) == pytest.approx(k_geo, abs=1e-6)


@pytest.mark.parametrize("band, raa, expected", [
    ("nir", 0, 0.945728), ("nir", 180, 1.054215), ("blue", 0, 0.947865), ("blue", 180, 1.051843)])
def test_c_factor(band, raa, expected):
    assert hls.c_factor(band, 30, 10, raa, 30) == pytest.approx(expected, abs=1e-6)


def test_bandpass_round_trip_and_table():
    # S2B SWIR2 offset is +0.0004 in the official code (a known third-party port has −0.0004)
    assert hls.BANDPASS_MSI_TO_OLI["S2B"]["B12"] == (0.9867, 0.0004)
    for band in hls.BANDPASS_MSI_TO_OLI["S2A"]:
        assert hls.bandpass_msi_to_oli(hls.bandpass_oli_to_msi(0.2345, band), band) == pytest.approx(0.2345)
    assert "B08" not in hls.BANDPASS_MSI_TO_OLI["S2A"]  # HLS does not adjust the broad NIR
