"""Sun position, Earth-Sun distance and HLS v2.0's NBAR solar zenith.

* Solar position: NOAA's general solar position equations (fractional-year series of
  Spencer 1971 for the declination and the equation of time), accurate to a few tenths of
  a degree, well within what BRDF normalization needs.
* Earth-Sun distance: the Astronomical Almanac's low-precision formula (about 1e-4 AU).
* NBAR solar zenith θn (HLS v2.0, ``hls_libs/common/mean_solarzen.c``): the mean of the solar
  zeniths at the Landsat-8 and Sentinel-2 overpass times over the tile centre on the
  acquisition day; local overpass time from Li, Zhang & Roy (2019, IEEE TGRS 57(6):3591-3598, Eq. 4):
  ``t = LTDN − asin(tan(lat)/tan(i))·(180/π)/15`` hours.
"""

from __future__ import annotations

import datetime as _dt
import math

#: (inclination i in degrees, local time of the descending node in hours) — Li, Zhang & Roy 2019.
ORBITS = {"landsat8": (98.2, 10.18333), "sentinel2": (98.62, 10.5)}


def _fractional_year(when: _dt.datetime) -> float:
    start = _dt.datetime(when.year, 1, 1, tzinfo=when.tzinfo)
    days = 366 if when.year % 4 == 0 and (when.year % 100 != 0 or when.year % 400 == 0) else 365
    hours = when.hour + when.minute / 60 + when.second / 3600
    return 2 * math.pi / days * ((when - start).days + (hours - 12) / 24)


def declination_deg(when: _dt.datetime) -> float:
    """Solar declination at ``when`` (NOAA's fractional-year series, Spencer 1971).

    Parameters
    ----------
    when : datetime.datetime
        The instant (aware; UTC).

    Returns
    -------
    float
        Declination in degrees (north positive).
    """
    g = _fractional_year(when)
    return math.degrees(0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
                        - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
                        - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))


def equation_of_time_min(when: _dt.datetime) -> float:
    """The equation of time, by the same series as :func:`declination_deg`.

    Parameters
    ----------
    when : datetime.datetime
        As for :func:`declination_deg`.

    Returns
    -------
    float
        True minus mean solar time, in minutes: what turns the mean solar time (UTC plus
        4 minutes per degree of longitude) into the sun's hour angle.
    """
    g = _fractional_year(when)
    return 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                     - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))


def _zenith_from_hour_angle(lat_deg: float, decl_deg: float, hour_angle_deg: float) -> float:
    lat, decl, ha = (math.radians(v) for v in (lat_deg, decl_deg, hour_angle_deg))
    cos_z = math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(ha)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos_z))))


def sun_position(when: _dt.datetime, lat_deg: float, lon_deg: float) -> tuple[float, float]:
    """The sun's position at a UTC time, by NOAA's general solar position equations.

    Parameters
    ----------
    when : datetime.datetime
        The instant; a naive datetime is taken as UTC.
    lat_deg, lon_deg : float
        Latitude and longitude (east positive), degrees.

    Returns
    -------
    tuple of float
        (solar zenith, solar azimuth clockwise from north), degrees.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    when = when.astimezone(_dt.timezone.utc)
    decl = declination_deg(when)
    minutes = when.hour * 60 + when.minute + when.second / 60
    true_solar = minutes + equation_of_time_min(when) + 4 * lon_deg
    ha = true_solar / 4 - 180
    zenith = _zenith_from_hour_angle(lat_deg, decl, ha)
    lat, dec, z = (math.radians(v) for v in (lat_deg, decl, zenith))
    denom = math.cos(lat) * math.sin(z)
    if abs(denom) < 1e-12:
        return zenith, 180.0
    cos_az = (math.sin(lat) * math.cos(z) - math.sin(dec)) / denom
    az = math.degrees(math.acos(max(-1.0, min(1.0, cos_az))))  # measured from south, see NOAA
    azimuth = (180 - az) % 360 if ha <= 0 else (180 + az) % 360
    return zenith, azimuth


def earth_sun_distance_au(when: _dt.date | _dt.datetime) -> float:
    """Earth-Sun distance by the Astronomical Almanac's low-precision formula (about 1e-4 AU).

    Parameters
    ----------
    when : datetime.date or datetime.datetime
        The day.

    Returns
    -------
    float
        Distance, astronomical units.
    """
    if isinstance(when, _dt.datetime):
        day = when.date()
    else:
        day = when
    n = (day - _dt.date(2000, 1, 1)).days - 0.5  # days from J2000.0 at 0h UT
    g = math.radians(357.529 + 0.98560028 * n)
    return 1.00014 - 0.01671 * math.cos(g) - 0.00014 * math.cos(2 * g)


def overpass_local_time_h(lat_deg: float, orbit: str) -> float:
    """Local (mean solar) time of a sun-synchronous overpass at a latitude (Li, Zhang & Roy 2019, Eq. 4).

    Parameters
    ----------
    lat_deg : float
        Latitude, degrees.
    orbit : str
        A key of :data:`ORBITS` (``"landsat8"``, ``"sentinel2"``).

    Returns
    -------
    float
        Local time, hours.
    """
    incl, ltdn = ORBITS[orbit]
    ratio = math.tan(math.radians(lat_deg)) / math.tan(math.radians(incl))
    return ltdn - math.degrees(math.asin(max(-1.0, min(1.0, ratio)))) / 15


def nbar_solar_zenith_deg(lat_deg: float, when: _dt.date | _dt.datetime, lon_deg: float = 0.0) -> float:
    """HLS v2.0's NBAR solar zenith θn for a tile centre on the acquisition day.

    As HLS's ``mean_solarzen.c``: each overpass's local mean time becomes UTC through the
    longitude (``t − lon/15``), the sun position at that instant gives a zenith, and θn is
    the mean of the Landsat-8 and Sentinel-2 zeniths. Above 81.3° latitude HLS uses the
    granule's mean observed zenith instead; callers handle that case.

    Parameters
    ----------
    lat_deg : float
        Latitude of the tile centre, degrees.
    when : datetime.date or datetime.datetime
        The acquisition day.
    lon_deg : float
        Longitude of the tile centre, degrees east.

    Returns
    -------
    float
        θn, degrees.
    """
    day = when.date() if isinstance(when, _dt.datetime) else when
    midnight = _dt.datetime(day.year, day.month, day.day, tzinfo=_dt.timezone.utc)
    zeniths = []
    for orbit in ("landsat8", "sentinel2"):
        utc_hours = overpass_local_time_h(lat_deg, orbit) - lon_deg / 15
        zeniths.append(sun_position(midnight + _dt.timedelta(hours=utc_hours), lat_deg, lon_deg)[0])
    return sum(zeniths) / 2
