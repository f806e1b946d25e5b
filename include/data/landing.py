"""The shipped real data (Women's E-Commerce Clothing Reviews) and its daily landing drops.

The Kaggle file has no review dates and other column names than the pipeline's raw schema.
``load_kaggle_reviews`` maps it onto ``review_id, product_category, review_body,
star_rating, review_date``; ``land_daily_drops`` spreads the reviews over consecutive days
and writes them as ``landing/reviews/ds=YYYY-MM-DD/part-00000.csv`` so that the nightly
schedule has real partitions to pick up.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from include.common.config import PROJECT_ROOT, get_settings
from include.common.io import atomic_path, uri_to_path
from include.data.schema import RAW_COLUMNS

log = logging.getLogger(__name__)

SHIPPED_DATA = PROJECT_ROOT / "data" / "womens_clothing_ecommerce_reviews.csv.gz"
KAGGLE_COLUMNS = ["Title", "Review Text", "Rating", "Department Name", "Class Name"]


class LandingError(ValueError):
    """The source file cannot be mapped onto the raw schema."""


@dataclass(frozen=True)
class Drop:
    """One landed daily partition."""

    ds: str
    path: Path
    rows: int


def load_kaggle_reviews(path: Path | str | None = None) -> pd.DataFrame:
    """Read the Kaggle CSV (plain or .gz) and map it onto the raw schema.

    ``product_category`` is ``Class Name`` (``Department Name`` when missing), ``review_body``
    is ``Title. Review Text``. Rows without review text are dropped; their count is in
    ``df.attrs["dropped_no_text"]``. ``review_date`` is left empty (see ``assign_dates``).
    """
    path = Path(path or SHIPPED_DATA)
    if not path.exists():
        raise LandingError(f"{path}: file not found (the project ships it under data/)")
    src = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    missing = [c for c in KAGGLE_COLUMNS if c not in src.columns]
    if missing:
        raise LandingError(f"{path}: missing column(s) {', '.join(missing)}")
    text = src["Review Text"].str.strip()
    has_text = text != ""
    src, text = src[has_text], text[has_text]
    title = src["Title"].str.strip()
    body = title.where(title == "", title + ". ") + text
    category = src["Class Name"].where(src["Class Name"].str.strip() != "", src["Department Name"])
    ids = src.iloc[:, 0] if src.columns[0] in ("", "Unnamed: 0") else pd.Series(src.index, index=src.index)
    df = pd.DataFrame(
        {
            "review_id": "wecr-" + ids.astype(str).str.zfill(5),
            "product_category": category.replace("", "Unknown"),
            "review_body": body,
            "star_rating": src["Rating"].astype(int),
            "review_date": "",
        }
    ).reset_index(drop=True)
    df.attrs["dropped_no_text"] = int((~has_text).sum())
    log.info("read %d reviews from %s, dropped %d without text", len(df), path, df.attrs["dropped_no_text"])
    return df


def assign_dates(df: pd.DataFrame, end_date: date, days: int) -> pd.DataFrame:
    """Spread rows in file order over ``days`` consecutive days ending at ``end_date``."""
    if days < 1:
        raise LandingError(f"days={days}: must be at least 1")
    start = end_date - timedelta(days=days - 1)
    offsets = (pd.RangeIndex(len(df)) * days) // max(len(df), 1)
    out = df.copy()
    out["review_date"] = [(start + timedelta(days=int(o))).isoformat() for o in offsets]
    return out


def write_csv_atomic(df: pd.DataFrame, dest: Path) -> None:
    """Write ``df`` as UTF-8 CSV to ``dest`` via a temporary name and a rename."""
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")


def land_daily_drops(
    landing_root: Path,
    end_date: date,
    days: int = 30,
    source: Path | str | None = None,
    limit: int | None = None,
) -> list[Drop]:
    """Land the real reviews as ``days`` daily drops ending at ``end_date``.

    Re-landing replaces each partition's file (idempotent). ``limit`` keeps the first rows
    only (tests).
    """
    df = load_kaggle_reviews(source)
    if limit:
        df = df.head(limit)
    df = assign_dates(df, end_date, days)
    drops = []
    for ds, part in df.groupby("review_date", sort=True):
        dest = landing_root / f"ds={ds}" / "part-00000.csv"
        write_csv_atomic(part[list(RAW_COLUMNS)], dest)
        drops.append(Drop(ds=str(ds), path=dest, rows=len(part)))
    return drops


def yesterday_utc() -> date:
    """The last complete day in UTC: the partition a nightly run processes."""
    return datetime.now(timezone.utc).date() - timedelta(days=1)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m include.data.landing --days 30 --end 2026-11-24``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30, help="number of daily drops")
    parser.add_argument("--end", type=date.fromisoformat, default=None, help="last ds (default: yesterday UTC)")
    parser.add_argument("--source", default=None, help="Kaggle CSV (default: the shipped copy)")
    parser.add_argument("--limit", type=int, default=None, help="land only the first N reviews")
    args = parser.parse_args(argv)
    root = uri_to_path(get_settings().landing_uri)
    drops = land_daily_drops(root, args.end or yesterday_utc(), args.days, args.source, args.limit)
    total = sum(d.rows for d in drops)
    print(f"landed {total} reviews as {len(drops)} daily drops {drops[0].ds}..{drops[-1].ds} under {root}")


if __name__ == "__main__":
    main()
