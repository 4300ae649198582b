"""The synthetic hospitals' patients: who they are, and their true risk.

Ground truth
------------
The 5-year risk of incident type 2 diabetes follows the risk factors of the Framingham
Offspring Study diabetes model (Wilson et al., "Prediction of incident diabetes mellitus
in middle-aged adults", Arch Intern Med 2007;167:1068-74: impaired fasting glucose,
BMI 25-29.9 and >= 30, low HDL, parental history, triglycerides >= 150 mg/dL, blood
pressure >= 130/85 or treated) and of FINDRISC (Lindstrom & Tuomilehto, Diabetes Care
2003;26:725-31: age, waist, physical activity, antihypertensive drugs, history of high
glucose), with HbA1c 5.7-6.4 % as the ADA prediabetes range, gestational diabetes history
and ethnicity as in QDiabetes (Hippisley-Cox et al., BMJ 2009;338:b880). Effect sizes
are adapted, not copied, and the model adds what the published scores approximate away:
thresholds (fasting glucose only matters above 100 mg/dL), a hump-shaped age effect, and
interactions (impaired glucose x obesity; family history x young age; Asian ethnicity
lowering the BMI at which risk starts). A linear model therefore sees most of the signal
and trees see the rest, which is what comparing strategies needs.

Hospitals differ the way real ones do: size, age and ethnicity mix, prevalence (case mix
plus an unmeasured site effect), missingness of labs, and measurement habits (blood
pressure digit preference, glucose rounding). Everything is drawn from one seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa

from pipeline.contract import Contract

HOSPITALS = [
    "northgate",
    "riverside",
    "st-jude",
    "lakeview",
    "mercy-valley",
    "harbor-city",
    "pinecrest",
    "eastfield",
]
RACES = ["white", "black", "hispanic", "south_asian", "east_asian", "other"]
_BASE_RACE_MIX = np.array([0.55, 0.15, 0.15, 0.06, 0.05, 0.04])
_OVERSAMPLE = 1.35  # prevalent diabetes at index is excluded after drawing


@dataclass(frozen=True)
class SiteProfile:
    """What makes one synthetic hospital differ from another."""

    name: str
    rows: int
    age_mean: float
    female_share: float
    race_mix: np.ndarray
    site_effect: float
    missing: dict[str, float]
    bp_rounding: float
    glucose_decimals: int
    bmi_shift: float = 0.0  # kg/m2 added to every patient's BMI (a heavier population)


def site_names(n: int) -> list[str]:
    return HOSPITALS[:n] if n <= len(HOSPITALS) else [f"site-{i + 1:02d}" for i in range(n)]


def site_profiles(n_sites: int, total_rows: int, rng: np.random.Generator) -> list[SiteProfile]:
    """Non-IID hospital profiles; sizes span about 3x the site count from smallest to largest."""
    if n_sites < 1 or total_rows < 100 * n_sites:
        raise ValueError("need at least one site and 100 rows per site")
    ratio = min(30.0, 3.0 * n_sites)
    weights = np.exp(np.linspace(0.0, np.log(ratio), n_sites)) * rng.uniform(0.85, 1.15, n_sites)
    weights = rng.permutation(weights)
    sizes = np.floor(weights / weights.sum() * total_rows).astype(int)
    sizes[np.argmax(sizes)] += total_rows - sizes.sum()
    profiles = []
    for name, rows in zip(site_names(n_sites), sizes, strict=True):
        profiles.append(
            SiteProfile(
                name=name,
                rows=int(rows),
                age_mean=float(rng.uniform(42, 60)),
                female_share=float(rng.uniform(0.45, 0.60)),
                race_mix=rng.dirichlet(_BASE_RACE_MIX * 12),
                site_effect=float(rng.normal(0.0, 0.25)),
                missing={
                    "race_ethnicity": rng.uniform(0.0, 0.10),
                    "bmi": rng.uniform(0.0, 0.05),
                    "waist_cm": rng.uniform(0.2, 0.75),
                    "sbp": rng.uniform(0.0, 0.04),
                    "fasting_glucose": rng.uniform(0.02, 0.30),
                    "hba1c": rng.uniform(0.05, 0.50),
                    "lipids": rng.uniform(0.05, 0.40),
                    "smoking_status": rng.uniform(0.0, 0.15),
                    "physical_activity": rng.uniform(0.05, 0.40),
                    "family_history_diabetes": rng.uniform(0.05, 0.25),
                },
                bp_rounding=float(rng.choice([1.0, 2.0, 5.0, 10.0])),
                glucose_decimals=int(rng.choice([0, 1])),
            )
        )
    return profiles


def _patients(p: SiteProfile, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw n patients of one site (before the cohort rule), with their true risk."""
    age = np.clip(np.rint(rng.normal(p.age_mean, 14.0, n)), 18, 90)
    female = rng.random(n) < p.female_share
    race = rng.choice(len(RACES), size=n, p=p.race_mix)
    asian = np.isin(race, [3, 4])
    family = rng.random(n) < 0.25
    smoking = rng.choice(3, size=n, p=[0.55, 0.28, 0.17])
    activity = rng.choice(3, size=n, p=[0.30, 0.40, 0.30])

    bmi = np.exp(rng.normal(np.log(27.5), 0.19, n)) - 2.0 * asian + 0.8 * (activity == 0)
    bmi = bmi + p.bmi_shift
    bmi = np.clip(bmi + 1.5 * (race == 1) * female, 14, 68)
    waist = np.clip(28 + 2.35 * bmi + 7 * ~female + rng.normal(0, 6, n), 52, 175)
    sbp = np.clip(
        100 + 0.45 * age + 0.7 * (bmi - 27) + 4 * (race == 1) + rng.normal(0, 14, n), 80, 240
    )
    dbp = np.clip(0.42 * sbp + 24 + rng.normal(0, 7, n), 45, 140)
    hypertension = (sbp >= 140) | (rng.random(n) < 0.08)
    treated = hypertension & (rng.random(n) < 0.7)
    sbp = np.clip(np.where(treated, sbp - rng.uniform(5, 15, n), sbp), 80, 240)

    # Latent insulin resistance drives glycaemia and lipids together.
    z = (
        0.11 * (bmi - 27)
        + 0.025 * (age - 50)
        + 0.35 * family
        + 0.3 * asian
        + 0.25 * np.isin(race, [1, 2])
        - 0.25 * (activity == 2)
        + rng.normal(0, 0.8, n)
    )
    glucose = np.clip(90 + 7.5 * z + rng.normal(0, 7, n), 60, 200)
    hba1c = np.clip(
        5.25 + 0.2 * z + 0.01 * (glucose - 90) + 0.15 * (race == 1) + rng.normal(0, 0.22, n),
        4.0,
        9.0,
    )
    hdl = np.clip(58 - 5 * z - 10 * ~female + rng.normal(0, 11, n), 18, 120)
    trig = np.clip(np.exp(rng.normal(np.log(115) + 0.22 * z, 0.42, n)), 30, 900)
    ldl = np.clip(rng.normal(118, 32, n) + 3 * z, 30, 280)
    gdm = female & (rng.random(n) < 0.07 + 0.03 * (z > 1))

    ifg = np.clip(glucose - 100, 0, 26)
    prediabetes_a1c = np.clip(hba1c - 5.7, 0, None)
    bmi_start = np.where(asian, 23.0, 25.0)
    logit = (
        -4.6
        + p.site_effect
        + 0.11 * ifg
        + 2.2 * prediabetes_a1c
        + 0.12 * np.clip(bmi - bmi_start, 0, 20)
        + 0.80 * (ifg > 0) * (bmi >= 30)
        + 0.70 * (ifg > 0) * (hba1c >= 5.7)
        + 1.80 * np.exp(-(((age - 57) / 12) ** 2))
        + 0.45 * family
        + 0.65 * family * (age < 50)
        + 0.50 * (hdl < np.where(female, 50, 40))
        + 0.45 * (trig >= 150)
        + 0.30 * ((sbp >= 130) | (dbp >= 85) | treated)
        + 1.2 * gdm
        + np.array([0.0, 0.35, 0.35, 0.55, 0.3, 0.1])[race]
        + 0.30 * (smoking == 2)
        + np.array([0.30, 0.1, -0.2])[activity]
    )
    label = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    prevalent_dx = rng.random(n) < 0.02 * np.exp(0.5 * z)  # diagnosed before index
    return {
        "age": age,
        "female": female,
        "race": race,
        "family": family,
        "smoking": smoking,
        "activity": activity,
        "bmi": bmi,
        "waist": waist,
        "sbp": sbp,
        "dbp": dbp,
        "hypertension": hypertension,
        "treated": treated,
        "glucose": glucose,
        "hba1c": hba1c,
        "hdl": hdl,
        "ldl": ldl,
        "trig": trig,
        "gdm": gdm,
        "label": label,
        "prevalent_dx": prevalent_dx,
    }


def _masked(values: np.ndarray, rate: float, rng: np.random.Generator) -> pa.Array:
    return pa.array(values, mask=rng.random(len(values)) < rate)


def _round_to(x: np.ndarray, step: float) -> np.ndarray:
    return np.round(x / step) * step


def add_months(year: int, month: int, months: int) -> tuple[int, int]:
    total = year * 12 + (month - 1) + months
    return total // 12, total % 12 + 1


def _follow_up_dates(
    n: int, closes: list[tuple[int, int]], follow_up: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Index dates whose follow-up closes in one of `closes`; returns (index dates, month idx)."""
    which = np.sort(rng.integers(0, len(closes), n))
    days = rng.integers(1, 29, n)
    index = np.empty(n, dtype="datetime64[D]")
    for i, (y, m) in enumerate(closes):
        iy, im = add_months(y, m, -follow_up)
        sel = which == i
        index[sel] = np.datetime64(f"{iy:04d}-{im:02d}-01") + (days[sel] - 1)
    return index, which


def generate_site(
    profile: SiteProfile,
    contract: Contract,
    closes: list[tuple[int, int]],
    rng: np.random.Generator,
) -> tuple[pa.Table, np.ndarray]:
    """One site's cohort as an Arrow table in the contract's schema, and each row's
    index into `closes` (the month its follow-up closed)."""
    drawn = _patients(profile, int(profile.rows * _OVERSAMPLE) + 50, rng)
    keep = ~drawn["prevalent_dx"] & (drawn["glucose"] < 126) & (drawn["hba1c"] < 6.5)
    keep &= drawn["age"] >= 18
    idx = np.flatnonzero(keep)[: profile.rows]
    if len(idx) < profile.rows:  # pragma: no cover - oversampling covers every profile
        raise RuntimeError(f"site {profile.name}: too few eligible patients drawn")
    d = {k: v[idx] for k, v in drawn.items()}
    n = len(idx)
    miss = profile.missing

    salt = int(rng.integers(0, 2**62))
    keys = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(salt)
    index_dates, month_idx = _follow_up_dates(n, closes, contract.cohort.follow_up_months, rng)
    glucose = np.round(d["glucose"], profile.glucose_decimals)
    glucose = np.minimum(glucose, 125.9 if profile.glucose_decimals else 125.0)
    lipid_missing = rng.random(n) < miss["lipids"]
    sexes = np.array(["male", "female"])[d["female"].astype(int)]
    columns = {
        contract.key.name: pa.array([f"{profile.name[:3]}-{k:016x}" for k in keys.tolist()]),
        "index_date": pa.array(index_dates, type=pa.date32()),
        "age": pa.array(d["age"].astype(np.int16)),
        "sex": pa.array(sexes),
        "race_ethnicity": _masked(np.array(RACES)[d["race"]], miss["race_ethnicity"], rng),
        "bmi": _masked(np.round(d["bmi"], 1), miss["bmi"], rng),
        "waist_cm": _masked(np.round(d["waist"], 0), miss["waist_cm"], rng),
        "sbp": _masked(_round_to(d["sbp"], profile.bp_rounding), miss["sbp"], rng),
        "dbp": _masked(_round_to(d["dbp"], profile.bp_rounding), miss["sbp"], rng),
        "fasting_glucose": _masked(glucose, miss["fasting_glucose"], rng),
        "hba1c": _masked(np.round(d["hba1c"], 1).clip(None, 6.4), miss["hba1c"], rng),
        "hdl": pa.array(np.round(d["hdl"], 0), mask=lipid_missing),
        "ldl": pa.array(np.round(d["ldl"], 0), mask=lipid_missing),
        "triglycerides": pa.array(np.round(d["trig"], 0), mask=lipid_missing),
        "smoking_status": _masked(
            np.array(["never", "former", "current"])[d["smoking"]], miss["smoking_status"], rng
        ),
        "physical_activity": _masked(
            np.array(["inactive", "insufficient", "active"])[d["activity"]],
            miss["physical_activity"],
            rng,
        ),
        "family_history_diabetes": _masked(d["family"], miss["family_history_diabetes"], rng),
        "hypertension_dx": pa.array(d["hypertension"]),
        "antihypertensive_use": pa.array(d["treated"]),
        "gestational_diabetes_history": pa.array(d["gdm"]),
        contract.label.name: pa.array(d["label"].astype(np.int8)),
    }
    schema = contract.arrow_schema
    table = pa.table([columns[f.name].cast(f.type) for f in schema], schema=schema)
    return table, month_idx


def close_months(until: str, months: int) -> list[tuple[int, int]]:
    """The `months` calendar months ending with `until` (YYYY-MM), oldest first."""
    y, m = (int(x) for x in until.split("-"))
    return [add_months(y, m, -k) for k in range(months - 1, -1, -1)]


def month_of(d: date, follow_up_months: int) -> str:
    """The YYYY-MM in which follow-up from index date `d` closes."""
    y, m = add_months(d.year, d.month, follow_up_months)
    return f"{y:04d}-{m:02d}"
