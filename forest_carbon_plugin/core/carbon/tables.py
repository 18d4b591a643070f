"""Reference tables of the carbon conversions: height allometries, root-to-shoot ratios, carbon fraction.

Units: AGB in Mg (dry matter) per ha; biomass = AGB·(1 + R); carbon = biomass·CF; CO2e = carbon·44/12.

References
----------
IPCC (2006) 2006 IPCC Guidelines for National Greenhouse Gas Inventories, Vol. 4 (AFOLU), Ch. 4 (Forest Land),
Table 4.3 (carbon fraction, p. 4.48) and Table 4.4 (root-to-shoot ratios, p. 4.49).
Mokany K., Raison R.J. & Prokushkin A.S. (2006) Critical analysis of root:shoot ratios in terrestrial biomes.
Global Change Biology 12:84-96.
Asner G.P. & Mascaro J. (2014) Mapping tropical forest carbon: calibrating plot estimates to a simple LiDAR
metric. Remote Sensing of Environment 140:614-624.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ForestCarbonError

__all__ = ["CO2_PER_C", "DEFAULT_CARBON_FRACTION", "AllometryModel", "ALLOMETRIES", "ECOZONES", "root_shoot_ratio",
           "ECOZONE_CITATION", "CARBON_FRACTION_CITATION", "DEDUCTION_CITATION", "CO2_CITATION"]

CO2_PER_C = 44.0 / 12.0
DEFAULT_CARBON_FRACTION = 0.47
CO2_CITATION = "CO2/C = 44/12 (molar masses, as the standards use)."


@dataclass(frozen=True)
class AllometryModel:
    """A published height allometry ``AGB (Mg/ha) = a · H^b`` (H: canopy height, m).

    ``needs`` lists the stand inputs that fix ``a``: the model's coefficient is multiplied by
    ``basal_area^basal_area_exponent · wood_density^wood_density_exponent``; a model that predicts carbon
    (``predicts="acd"``, Mg C/ha) is turned into AGB by dividing by the carbon fraction.
    """

    key: str
    label: str
    citation: str
    verified: bool
    a: float | None = None
    b: float | None = None
    a_se: float = 0.0
    b_se: float = 0.0
    needs: tuple = ()
    basal_area_exponent: float = 0.0
    wood_density_exponent: float = 0.0
    predicts: str = "agb"


ALLOMETRIES = {
    "custom": AllometryModel(
        "custom", "Custom: AGB = ALLOMETRY_A · H^ALLOMETRY_B",
        "user-supplied coefficients (and their standard errors ALLOMETRY_A_SE, ALLOMETRY_B_SE)", True),
    "asner_mascaro_2014": AllometryModel(
        "asner_mascaro_2014",
        "Asner & Mascaro 2014 general model: ACD = 3.8358·TCH^0.2807·BA^0.9721·WD^1.3763",
        "Asner G.P. & Mascaro J. (2014) Mapping tropical forest carbon: calibrating plot estimates to a simple LiDAR "
        "metric. Remote Sensing of Environment 140:614-624. The coefficients were not checked against the paper: "
        "compare them with its general model before relying on them. ACD (Mg C/ha) is turned into AGB by dividing "
        "by CARBON_FRACTION, so that the carbon output equals the model's ACD. Needs the regional basal area BA (m²/ha) and wood density WD (g/cm³).",
        False, a=3.8358, b=0.2807, needs=("basal_area", "wood_density"), basal_area_exponent=0.9721,
        wood_density_exponent=1.3763, predicts="acd"),
}

# IPCC 2006 GL Vol. 4 Ch. 4 Table 4.4, p. 4.49 ("Ratio of below-ground biomass to above-ground biomass (R)"; the
# values are the rounded medians of Mokany, Raison & Prokushkin 2006, Global Change Biology 12:84-96):
# [(upper AGB bound in t d.m./ha, R), ...]. Status: checked against the unrounded Mokany et al. values that
# third-party code uses (boreal 0.392/0.239, temperate oak 0.295, eucalypt 0.437, tropical moist deciduous
# 0.205/0.235); the primary PDF could not be opened from the development machine. The 2019 Refinement's revised
# Table 4.4 (by origin and continent) is not used: it needs inputs this tool does not take.
ECOZONES = {
    "tropical_rainforest": ("Tropical rainforest", [(math.inf, 0.37)]),
    "tropical_moist_deciduous": ("Tropical moist deciduous forest", [(125, 0.20), (math.inf, 0.24)]),
    "tropical_dry": ("Tropical dry forest", [(20, 0.56), (math.inf, 0.28)]),
    "tropical_shrubland": ("Tropical shrubland", [(math.inf, 0.40)]),
    "tropical_mountain": ("Tropical mountain systems", [(math.inf, 0.27)]),
    "temperate_conifer": ("Temperate conifer forest", [(50, 0.40), (150, 0.29), (math.inf, 0.20)]),
    "temperate_oak": ("Temperate oak forest (table gives AGB > 70 only)", [(math.inf, 0.30)]),
    "temperate_eucalypt": ("Temperate eucalyptus forest", [(50, 0.44), (150, 0.28), (math.inf, 0.20)]),
    "temperate_other_broadleaf": ("Other temperate broadleaf forest", [(75, 0.46), (150, 0.23), (math.inf, 0.24)]),
    "boreal_conifer": ("Boreal coniferous forest", [(75, 0.39), (math.inf, 0.24)]),
    "boreal_broadleaf": ("Boreal broadleaf forest", [(math.inf, 0.24)]),
}
ECOZONE_CITATION = ("IPCC 2006 Guidelines for National GHG Inventories, Vol. 4, Ch. 4, Table 4.4, p. 4.49 "
                    "(root-to-shoot ratios by ecological zone and above-ground biomass class, from Mokany et al. "
                    "2006); set ROOT_SHOOT to use another value")
# IPCC 2006 GL Vol. 4 Ch. 4 Table 4.3, p. 4.48: default carbon fraction 0.47 (tropical/subtropical 0.47,
# temperate/boreal 0.47; broad-leaved 0.48, conifers 0.51 are the finer rows). Same status as Table 4.4 above.
CARBON_FRACTION_CITATION = ("0.47: IPCC 2006 Guidelines Vol. 4, Ch. 4, Table 4.3, p. 4.48, default carbon fraction "
                            "of dry matter")
DEDUCTION_CITATION = (
    "deduction = max(0, U − ALLOWED_UNCERTAINTY), U = half-width of the CONFIDENCE interval of the total as a % of "
    "the total; creditable = total × (1 − deduction/100). Default 10% at 90% confidence in the style of Verra "
    "VM0047 §8.4; VMD0017 uses 15% at 95%: set ALLOWED_UNCERTAINTY and CONFIDENCE to your standard's edition. "
    "Apply this deduction before any buffer deduction, not summed with it.")


def root_shoot_ratio(ecozone: str, agb_mg_ha: float) -> float:
    """The IPCC default root-to-shoot ratio of an ecological zone.

    Parameters
    ----------
    ecozone : str
        A key of :data:`ECOZONES`.
    agb_mg_ha : float
        The stand's mean above-ground biomass (Mg dry matter per ha), which chooses the biomass class.

    Returns
    -------
    float
        R, below-ground over above-ground biomass (IPCC 2006 Vol. 4 Ch. 4 Table 4.4).
    """
    if ecozone not in ECOZONES:
        raise ForestCarbonError(f"Unknown ecozone '{ecozone}'. Choose one of: {', '.join(ECOZONES)}.")
    for upper, ratio in ECOZONES[ecozone][1]:
        if agb_mg_ha <= upper:
            return ratio
    return ECOZONES[ecozone][1][-1][1]
