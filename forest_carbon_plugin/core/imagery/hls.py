"""HLS v2.0 constants and formulas: bandpass adjustment and the c-factor BRDF model.

Sources:

* Claverie, M. et al. (2018). The Harmonized Landsat and Sentinel-2 surface reflectance
  data set. Remote Sensing of Environment 219:145-161; HLS v2.0 User Guide (LP DAAC).
* Bandpass coefficients: the official HLS code, ``hls_libs/L8like/bandpass_parameter.S2{A,B,C}.txt``
  (MSI → OLI-like: ``ρ_OLI = slope·ρ_MSI + offset``, reflectance 0-1).
* BRDF: Roy, D.P. et al. (2016). A general method to normalize Landsat reflectance data to
  nadir BRDF adjusted reflectance. RSE 176:255-271 (fixed MODIS-derived coefficients;
  red-edge from Roy et al. 2017), kernels as in ``hls_libs/common/rtls.c``: RossThick and
  LiSparse-R with h/b = 2, b/r = 1.
"""

from __future__ import annotations

import numpy as np

#: MSI band → (slope, offset) per platform; rows as in the HLS code (B01, B02, B03, B04, B8A, B11, B12).
BANDPASS_MSI_TO_OLI = {
    "S2A": {"B01": (0.9959, -0.0002), "B02": (0.9778, -0.0040), "B03": (1.0053, -0.0009),
            "B04": (0.9765, 0.0009), "B8A": (0.9983, -0.0001), "B11": (0.9987, -0.0011),
            "B12": (1.0030, -0.0012)},
    "S2B": {"B01": (0.9959, -0.0002), "B02": (0.9778, -0.0040), "B03": (1.0075, -0.0008),
            "B04": (0.9761, 0.0010), "B8A": (0.9966, 0.0000), "B11": (1.0000, -0.0003),
            "B12": (0.9867, 0.0004)},
    "S2C": {"B01": (1.003, -0.0), "B02": (0.9851, -0.0027), "B03": (1.0038, -0.0009),
            "B04": (0.9718, 0.0011), "B8A": (0.9995, -0.0003), "B11": (0.9994, -0.0007),
            "B12": (0.991, 0.0004)},
}

#: Common band names (OLI convention) of the MSI bands that have an OLI counterpart.
MSI_COMMON_NAMES = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B8A": "nir",
                    "B11": "swir1", "B12": "swir2"}

#: c-factor coefficients (f_iso, f_vol, f_geo) by common band name.
BRDF_COEFFICIENTS = {
    "coastal": (0.0774, 0.0372, 0.0079), "blue": (0.0774, 0.0372, 0.0079),
    "green": (0.1306, 0.0580, 0.0178), "red": (0.1690, 0.0574, 0.0227),
    "re1": (0.2085, 0.0845, 0.0256), "re2": (0.2316, 0.1003, 0.0273), "re3": (0.2599, 0.1197, 0.0294),
    "nir": (0.3093, 0.1535, 0.0330), "nir_broad": (0.3093, 0.1535, 0.0330),
    "swir1": (0.3430, 0.1154, 0.0453), "swir2": (0.2658, 0.0639, 0.0387),
}


def bandpass_msi_to_oli(reflectance, msi_band: str, platform: str = "S2A"):
    """OLI-like reflectance from MSI reflectance, HLS's bandpass adjustment ``slope·ρ + offset``.

    Parameters
    ----------
    reflectance : array_like
        MSI reflectance (0-1).
    msi_band : str
        The MSI band (``"B02"`` …) of :data:`BANDPASS_MSI_TO_OLI`.
    platform : str
        ``"S2A"``, ``"S2B"`` or ``"S2C"``.

    Returns
    -------
    numpy.ndarray
        OLI-like reflectance (Claverie et al. 2018; HLS ``bandpass_parameter.S2*.txt``).
    """
    slope, offset = BANDPASS_MSI_TO_OLI[platform][msi_band]
    return slope * np.asarray(reflectance) + offset


def bandpass_oli_to_msi(reflectance, msi_band: str, platform: str = "S2A"):
    """The inverse adjustment: the MSI reflectance whose HLS adjustment gives ``reflectance``.

    Parameters
    ----------
    reflectance : array_like
        OLI-like reflectance (0-1).
    msi_band, platform : str
        As for :func:`bandpass_msi_to_oli`.

    Returns
    -------
    numpy.ndarray
        MSI reflectance.
    """
    slope, offset = BANDPASS_MSI_TO_OLI[platform][msi_band]
    return (np.asarray(reflectance) - offset) / slope


def ross_thick(sza_deg, vza_deg, raa_deg):
    """RossThick volumetric kernel K_vol (Roujean et al. 1992; Wanner et al. 1995), HLS ``rtls.c`` conventions.

    Parameters
    ----------
    sza_deg, vza_deg, raa_deg : array_like
        Solar zenith, view zenith and relative azimuth (view − solar), degrees.

    Returns
    -------
    numpy.ndarray
        K_vol.
    """
    ts, tv, phi = (np.radians(np.asarray(a, dtype=float)) for a in (sza_deg, vza_deg, raa_deg))
    cos_xi = np.cos(ts) * np.cos(tv) + np.sin(ts) * np.sin(tv) * np.cos(phi)
    xi = np.arccos(np.clip(cos_xi, -1.0, 1.0))
    return ((np.pi / 2 - xi) * cos_xi + np.sin(xi)) / (np.cos(ts) + np.cos(tv)) - np.pi / 4


def li_sparse(sza_deg, vza_deg, raa_deg, h_b: float = 2.0):
    """LiSparse-R geometric kernel K_geo (Wanner et al. 1995) with b/r = 1 (no angle transform).

    Parameters
    ----------
    sza_deg, vza_deg, raa_deg : array_like
        Solar zenith, view zenith and relative azimuth (view − solar), degrees.
    h_b : float
        Crown centre height over vertical crown radius, h/b (2 in HLS).

    Returns
    -------
    numpy.ndarray
        K_geo.
    """
    ts, tv, phi = (np.radians(np.asarray(a, dtype=float)) for a in (sza_deg, vza_deg, raa_deg))
    tan_s, tan_v = np.tan(ts), np.tan(tv)
    cos_xi = np.cos(ts) * np.cos(tv) + np.sin(ts) * np.sin(tv) * np.cos(phi)
    d = np.sqrt(np.maximum(tan_s ** 2 + tan_v ** 2 - 2 * tan_s * tan_v * np.cos(phi), 0.0))
    sec_sum = 1 / np.cos(ts) + 1 / np.cos(tv)
    cos_t = np.clip(h_b * np.sqrt(d ** 2 + (tan_s * tan_v * np.sin(phi)) ** 2) / sec_sum, -1.0, 1.0)
    t = np.arccos(cos_t)
    overlap = (t - np.sin(t) * cos_t) * sec_sum / np.pi
    return overlap - sec_sum + (1 + cos_xi) / (np.cos(ts) * np.cos(tv)) / 2


def brdf_model(band: str, sza_deg, vza_deg, raa_deg):
    """The c-factor BRDF model ``f_iso + f_vol·K_vol + f_geo·K_geo`` (Roy et al. 2016, 2017 coefficients).

    Parameters
    ----------
    band : str
        A common band name of :data:`BRDF_COEFFICIENTS`.
    sza_deg, vza_deg, raa_deg : array_like
        Solar zenith, view zenith and relative azimuth (view − solar), degrees.

    Returns
    -------
    numpy.ndarray
        Modelled reflectance.
    """
    f_iso, f_vol, f_geo = BRDF_COEFFICIENTS[band]
    return f_iso + f_vol * ross_thick(sza_deg, vza_deg, raa_deg) + f_geo * li_sparse(sza_deg, vza_deg, raa_deg)


def c_factor(band: str, sza_deg, vza_deg, raa_deg, nbar_sza_deg):
    """NBAR c-factor: the model at (θn, nadir view) over the model at the observed geometry (Roy et al. 2016).

    Parameters
    ----------
    band : str
        A common band name of :data:`BRDF_COEFFICIENTS`.
    sza_deg, vza_deg : array_like
        Observed solar and view zeniths, degrees.
    raa_deg : array_like
        View azimuth − solar azimuth, degrees (0 = backscatter, the hot-spot side).
    nbar_sza_deg : float
        The NBAR solar zenith θn, degrees (:func:`.solar.nbar_solar_zenith_deg`).

    Returns
    -------
    numpy.ndarray
        The factor that multiplies the observed reflectance.
    """
    return brdf_model(band, nbar_sza_deg, 0.0, 0.0) / brdf_model(band, sza_deg, vza_deg, raa_deg)


def c_factor_from_kernels(band: str, k_vol, k_geo, nbar_k_vol: float, nbar_k_geo: float):
    """The c-factor from precomputed kernels: the kernels depend on the geometry only, so a block
    computes them once for all its bands.

    Parameters
    ----------
    band : str
        A common band name of :data:`BRDF_COEFFICIENTS`.
    k_vol, k_geo : array_like
        :func:`ross_thick` and :func:`li_sparse` at the observed geometry.
    nbar_k_vol, nbar_k_geo : float
        The same at the NBAR geometry (θn, nadir view).

    Returns
    -------
    numpy.ndarray
        The c-factor.
    """
    f_iso, f_vol, f_geo = BRDF_COEFFICIENTS[band]
    return (f_iso + f_vol * nbar_k_vol + f_geo * nbar_k_geo) / (f_iso + f_vol * k_vol + f_geo * k_geo)
