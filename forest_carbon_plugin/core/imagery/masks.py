"""Quality masks from the products' own QA layers.

Every source maps onto the same user-facing classes (:data:`MASK_CLASSES`); fill/no-data
is always masked. ``True`` in a mask means "do not use this pixel".

* Landsat Collection-2 ``QA_PIXEL`` bits: 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud,
  4 cloud shadow, 5 snow, 7 water; ``QA_RADSAT`` ≠ 0: saturated.
* Sentinel-2 L2A ``SCL`` classes: 0 no data, 1 saturated/defective, 3 cloud shadow, 6 water,
  8/9 cloud medium/high probability, 10 thin cirrus, 11 snow.
* HLS ``Fmask`` bits: 0 cirrus, 1 cloud, 2 adjacent to cloud/shadow, 3 shadow, 4 snow,
  5 water; 255 fill.
* CFmask classes (ESPA, Landsat time series): 0 clear, 1 water, 2 shadow, 3 snow, 4 cloud,
  255 fill.

Sources: USGS Landsat 8-9 Collection 2 Level-2 Science Product Guide (LSDS-1619) for QA_PIXEL and
QA_RADSAT; ESA Sentinel-2 Products Specification Document and the Sen2Cor L2A product definition for
SCL; the HLS v2.0 User Guide (LP DAAC) for its Fmask byte; Zhu & Woodcock (2012, RSE 118:83-94) and
Foga et al. (2017, RSE 194:379-390) for the CFmask classes.
"""

from __future__ import annotations

import numpy as np

from ..errors import ForestCarbonError

MASK_CLASSES = ("cloud", "cloud_shadow", "cirrus", "snow", "water", "saturated")
DEFAULT_MASK = ("cloud", "cloud_shadow", "cirrus", "saturated")


def _bit(values, bit):
    return (values.astype(np.int64) >> bit) & 1 == 1


def qa_pixel_mask(qa: np.ndarray, classes) -> np.ndarray:
    """Landsat Collection-2 QA_PIXEL → mask (USGS LSDS-1619): fill (bit 0) always.

    Parameters
    ----------
    qa : numpy.ndarray
        The QA_PIXEL values (16-bit).
    classes : sequence of str
        Names of :data:`MASK_CLASSES` to mask; ``cloud`` includes the dilated rim (bit 1).

    Returns
    -------
    numpy.ndarray of bool
        True where masked.
    """
    mask = _bit(qa, 0)
    if "cloud" in classes:
        mask |= _bit(qa, 3) | _bit(qa, 1)
    if "cloud_shadow" in classes:
        mask |= _bit(qa, 4)
    if "cirrus" in classes:
        mask |= _bit(qa, 2)
    if "snow" in classes:
        mask |= _bit(qa, 5)
    if "water" in classes:
        mask |= _bit(qa, 7)
    return mask


SCL_CLASSES = {"cloud": (8, 9), "cloud_shadow": (3,), "cirrus": (10,), "snow": (11,), "water": (6,),
               "saturated": (1,)}


def scl_mask(scl: np.ndarray, classes) -> np.ndarray:
    """Sentinel-2 L2A scene classification → mask: no data (class 0) always.

    Parameters
    ----------
    scl : numpy.ndarray
        The SCL classes (:data:`SCL_CLASSES` maps the names to them).
    classes : sequence of str
        Names of :data:`MASK_CLASSES` to mask.

    Returns
    -------
    numpy.ndarray of bool
        True where the class is no data or one of ``classes``.
    """
    codes = [0] + [c for name in classes for c in SCL_CLASSES.get(name, ())]
    return np.isin(scl, codes)


def hls_fmask_mask(fmask: np.ndarray, classes) -> np.ndarray:
    """HLS Fmask byte → mask (HLS v2.0 User Guide): fill (255) always.

    Parameters
    ----------
    fmask : numpy.ndarray
        The Fmask bytes (bits 0 cirrus, 1 cloud, 2 adjacent, 3 shadow, 4 snow, 5 water).
    classes : sequence of str
        The :data:`MASK_CLASSES` whose bits mask a pixel; ``cloud`` includes bit 2 (adjacent to cloud/shadow).

    Returns
    -------
    numpy.ndarray of bool
        True for fill and where one of the classes' bits is set.
    """
    mask = fmask == 255
    bits = {"cirrus": (0,), "cloud": (1, 2), "cloud_shadow": (3,), "snow": (4,), "water": (5,)}
    for name in classes:
        for bit in bits.get(name, ()):
            mask |= _bit(fmask, bit) & (fmask != 255)
    return mask


CFMASK_CLASSES = {"water": 1, "cloud_shadow": 2, "snow": 3, "cloud": 4}


def cfmask_mask(fmask: np.ndarray, classes) -> np.ndarray:
    """CFmask/Fmask classes → mask (Zhu & Woodcock 2012; Foga et al. 2017): fill (255) always.

    Parameters
    ----------
    fmask : numpy.ndarray
        Classes 0 clear, 1 water, 2 shadow, 3 snow, 4 cloud, 255 fill.
    classes : sequence of str
        Mask class names; those CFmask lacks (cirrus, saturated) mask nothing.

    Returns
    -------
    numpy.ndarray of bool
        True for fill and the classes asked for.
    """
    codes = [255] + [CFMASK_CLASSES[name] for name in classes if name in CFMASK_CLASSES]
    return np.isin(fmask, codes)


def radsat_mask(radsat: np.ndarray) -> np.ndarray:
    """QA_RADSAT → mask: any band saturated (bits 0-8) or terrain occlusion (bit 11) (USGS LSDS-1619).

    Parameters
    ----------
    radsat : numpy.ndarray
        The QA_RADSAT values.

    Returns
    -------
    numpy.ndarray of bool
        True where saturated or occluded.
    """
    return (radsat.astype(np.int64) & 0b100111111111) != 0


MASKERS = {"qa_pixel": qa_pixel_mask, "scl": scl_mask, "fmask": cfmask_mask, "hls_fmask": hls_fmask_mask}


def parse_classes(classes) -> tuple[str, ...]:
    """The mask class names ``classes``, each once, in the order given.

    Parameters
    ----------
    classes : iterable of str
        Names of :data:`MASK_CLASSES`; case and spaces are forgiven (``"Cloud shadow"``).

    Returns
    -------
    tuple of str
    """
    out = []
    for item in classes or ():
        name = str(item).strip().lower().replace(" ", "_")
        if name not in MASK_CLASSES:
            raise ForestCarbonError(f"Unknown mask class '{item}': choose from {', '.join(MASK_CLASSES)}.")
        out.append(name)
    return tuple(dict.fromkeys(out))
