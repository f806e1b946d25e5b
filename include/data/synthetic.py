"""Deterministic synthetic reviews in the raw landing schema, for scale tests and edge cases.

``generate_reviews`` returns a DataFrame with the raw columns (all strings, as they land);
``write_landing`` writes it as daily drops ``ds=YYYY-MM-DD/part-00000.csv``;
``write_landing_stream`` writes millions of rows chunk by chunk without holding them all.

Rows are produced in fixed blocks of ``BLOCK_ROWS``, each from its own seeded generator, so
the same ``(seed, n, ...)`` always gives the same rows whether they are generated at once or
streamed. Bad rows (``bad_fraction``) are spread over several kinds (see ``BAD_KINDS``);
their counts per kind are in ``df.attrs["bad_kinds"]``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from include.common.io import atomic_path
from include.data.landing import write_csv_atomic
from include.data.schema import RAW_COLUMNS

BLOCK_ROWS = 50_000

# Category -> relative frequency and a rating skew (positive: happier customers); names are
# the Kaggle "Class Name" values the real data uses as product_category.
CATEGORIES: dict[str, tuple[float, float]] = {
    "Dresses": (0.28, 0.0),
    "Knits": (0.21, 0.1),
    "Blouses": (0.14, -0.1),
    "Sweaters": (0.06, 0.0),
    "Pants": (0.06, 0.2),
    "Jeans": (0.05, 0.3),
    "Fine gauge": (0.05, 0.1),
    "Skirts": (0.04, 0.1),
    "Jackets": (0.03, 0.2),
    "Lounge": (0.03, 0.2),
    "Swim": (0.015, -0.4),
    "Outerwear": (0.015, 0.0),
    "Shorts": (0.014, 0.1),
    "Sleep": (0.01, 0.3),
    "Legwear": (0.008, 0.2),
    "Intimates": (0.007, 0.0),
    "Layering": (0.006, 0.3),
    "Trend": (0.005, -0.6),
}
# Base rating mix of the real data (1..5 stars), shifted per category by its skew.
BASE_RATING_P = np.array([0.036, 0.067, 0.122, 0.216, 0.559])

SENTENCES = {
    "neg": [
        "The fabric felt cheap and scratchy.",
        "It ran two sizes too small and the zipper broke.",
        "I returned it the same day.",
        "The color was nothing like the picture.",
        "Very disappointed with the quality for this price.",
        "The seams started to come apart after one wash.",
        "Unflattering cut, it looked like a sack on me.",
        "I would not recommend this to anyone.",
    ],
    "neu": [
        "It is okay, nothing special.",
        "The fit is fine but the material is thin.",
        "I might keep it, I am not sure yet.",
        "Decent for the price, though the color is a bit off.",
        "It runs slightly large, size down.",
        "The length was longer than expected.",
        "Average quality, it does the job.",
    ],
    "pos": [
        "I love this, it fits perfectly!",
        "The fabric is soft and drapes beautifully.",
        "I got so many compliments the first time I wore it.",
        "Great quality and true to size.",
        "Bought it in two colors, that is how much I like it.",
        "Comfortable enough to wear all day.",
        "Flattering on my figure and easy to style.",
        "Absolutely gorgeous, worth every penny.",
    ],
}

# Remarks any review may add (longer reviews draw several).
GENERAL = [
    "Shipping was fast and the package was neatly wrapped.",
    "I usually wear a medium in this brand and ordered my usual size.",
    "The model in the photo is much taller than me, so keep that in mind.",
    "Washed it on cold and hung it to dry, no shrinking so far.",
    "The sleeves are a little long for my arms.",
    "It layers well under a cardigan when the weather turns.",
    "The lining is nicely finished and the stitching looks even.",
    "I paired it with sandals for a summer wedding.",
    "My sister borrowed it and now wants one of her own.",
    "The pockets are deep enough for a phone, which I always look for.",
    "There is a bit of stretch, so it moves with you.",
    "Customer service answered my sizing question within an hour.",
]
# A personal detail per review makes texts (almost) unique, like real reviews.
COLORS = ("black", "navy", "ivory", "red", "olive", "blush", "grey", "teal", "mustard", "white", "plum", "camel")
SIZES = ("XS", "S", "M", "L", "XL", "petite S", "petite M", "0", "2", "4", "6", "8", "10", "12")

# Kinds of bad rows ``bad_fraction`` injects; each fails one row-level rule of the suite.
BAD_KINDS = (
    "rating_word",  # star_rating "five"
    "rating_zero",  # star_rating "0"
    "rating_six",  # star_rating "6"
    "empty_body",  # review_body missing
    "null_id",  # review_id missing
    "duplicate_id",  # review_id of the previous row in the same block
    "long_body",  # review_body of 6,000 characters (> 5,000)
)


class SyntheticError(ValueError):
    """A generator argument is out of range."""


def _check_args(n: int, bad_fraction: float, start_date: str, days: int) -> date:
    if n < 0:
        raise SyntheticError(f"n={n}: must be >= 0")
    if not 0.0 <= bad_fraction <= 1.0:
        raise SyntheticError(f"bad_fraction={bad_fraction}: must be within 0..1")
    if days < 1:
        raise SyntheticError(f"days={days}: must be >= 1")
    try:
        return date.fromisoformat(start_date)
    except ValueError as exc:
        raise SyntheticError(f"start_date={start_date!r}: expected YYYY-MM-DD") from exc


def _block(seed: int, index: int, rows: int, bad_fraction: float, start: date, days: int) -> pd.DataFrame:
    """Rows ``index*BLOCK_ROWS ...`` of the stream: depends only on (seed, index), not on n."""
    rng = np.random.default_rng([seed, index])
    names = list(CATEGORIES)
    weights = np.array([w for w, _ in CATEGORIES.values()])
    cat_idx = rng.choice(len(names), size=rows, p=weights / weights.sum())
    # Per-category rating mix: tilt the base mix towards 5 (skew > 0) or 1 (skew < 0).
    stars = np.empty(rows, dtype=np.int64)
    for ci, (_, skew) in enumerate(CATEGORIES.values()):
        mask = cat_idx == ci
        if mask.any():
            p = BASE_RATING_P * np.exp(skew * np.arange(-2, 3))
            stars[mask] = rng.choice(5, size=int(mask.sum()), p=p / p.sum()) + 1
    n_sent = np.clip(rng.poisson(4.0, size=rows), 1, 14)
    multiline = rng.random(rows) < 0.02  # some reviews span several lines (quoted newlines)
    pools = {k: np.array(v, dtype=object) for k, v in SENTENCES.items()}
    picks = rng.integers(0, 1 << 30, size=(rows, 14))
    detail = rng.integers(0, 1 << 30, size=(rows, 5))
    extra = np.where(rng.random(rows) < 0.3, np.minimum(rng.poisson(3.0, size=rows), 8), 0)
    short = rng.random(rows) < 0.05  # a few one-liners, like "Love it! (navy, size M, worn 3x)"
    general = np.array(GENERAL, dtype=object)
    bodies = []
    for i in range(rows):
        tone = "neg" if stars[i] <= 2 else "neu" if stars[i] == 3 else "pos"
        pool = pools[tone]
        c, z, h, w, pos = detail[i]
        if short[i]:
            bodies.append(f"{pool[picks[i, 0] % len(pool)]} ({COLORS[c % len(COLORS)]}, "
                          f"size {SIZES[z % len(SIZES)]}, worn {w % 60 + 1}x)")
            continue
        parts = list(dict.fromkeys(pool[p % len(pool)] for p in picks[i, : n_sent[i]]))
        parts += list(dict.fromkeys(general[p % len(general)] for p in picks[i, 14 - extra[i] :] if extra[i]))
        note = (f"I ordered the {COLORS[c % len(COLORS)]} one in {SIZES[z % len(SIZES)]}; "
                f"I am 5'{h % 12}\" and have worn it {w % 60 + 1} times.")
        parts.insert(int(pos % (len(parts) + 1)), note)
        bodies.append(("\n" if multiline[i] else " ").join(parts))
    first = index * BLOCK_ROWS
    day_off = rng.integers(0, days, size=rows)
    dates = [(start + timedelta(days=int(d))).isoformat() for d in range(days)]
    df = pd.DataFrame(
        {
            "review_id": [f"syn{seed}-{first + i:09d}" for i in range(rows)],
            "product_category": np.array(names, dtype=object)[cat_idx],
            "review_body": bodies,
            "star_rating": stars.astype(str).astype(object),
            "review_date": np.array(dates, dtype=object)[day_off],
        },
        dtype=object,  # plain Python str/None, as landed (pandas' str dtype would turn None into NaN)
    )
    _inject_bad(df, rng, bad_fraction)
    return df


def _inject_bad(df: pd.DataFrame, rng: np.random.Generator, bad_fraction: float) -> None:
    counts = dict.fromkeys(BAD_KINDS, 0)
    n_bad = int(round(len(df) * bad_fraction))
    if n_bad:
        # Row 0 is never chosen so that "duplicate_id" always has a previous row to copy.
        rows = rng.choice(np.arange(1, len(df)), size=min(n_bad, len(df) - 1), replace=False)
        kinds = rng.integers(0, len(BAD_KINDS), size=len(rows))
        chosen = set(rows.tolist())
        for r, k in zip(rows.tolist(), kinds.tolist()):
            kind = BAD_KINDS[k]
            if kind == "duplicate_id" and r - 1 in chosen:
                kind = "rating_word"  # the previous row is broken too: keep each row one kind
            _apply_bad(df, r, kind)
            counts[kind] += 1
    df.attrs["bad_kinds"] = counts


def _apply_bad(df: pd.DataFrame, r: int, kind: str) -> None:
    if kind == "rating_word":
        df.at[r, "star_rating"] = "five"
    elif kind == "rating_zero":
        df.at[r, "star_rating"] = "0"
    elif kind == "rating_six":
        df.at[r, "star_rating"] = "6"
    elif kind == "empty_body":
        df.at[r, "review_body"] = None
    elif kind == "null_id":
        df.at[r, "review_id"] = None
    elif kind == "duplicate_id":
        df.at[r, "review_id"] = df.at[r - 1, "review_id"]
    elif kind == "long_body":
        df.at[r, "review_body"] = ("This review goes on and on. " * 215)[:6000]


def iter_review_blocks(
    n: int, seed: int = 0, bad_fraction: float = 0.0, start_date: str = "2026-01-01", days: int = 1
) -> Iterator[pd.DataFrame]:
    """Yield the ``n`` rows of ``generate_reviews`` as DataFrames of at most ``BLOCK_ROWS``."""
    start = _check_args(n, bad_fraction, start_date, days)
    for index in range((n + BLOCK_ROWS - 1) // BLOCK_ROWS):
        rows = min(BLOCK_ROWS, n - index * BLOCK_ROWS)
        yield _block(seed, index, rows, bad_fraction, start, days)


def generate_reviews(
    n: int, seed: int = 0, bad_fraction: float = 0.0, start_date: str = "2026-01-01", days: int = 1
) -> pd.DataFrame:
    """``n`` synthetic reviews in the raw schema (all columns strings, as landed).

    All five ratings and 18 categories occur, with a category-dependent rating mix; review
    text matches the rating's sentiment, has 1-14 sentences and about 2% span several lines.
    ``bad_fraction`` of the rows are broken on purpose (kinds in ``BAD_KINDS``; counts in
    ``df.attrs["bad_kinds"]``). ``review_date`` is spread over ``days`` days from
    ``start_date``. Same arguments, same rows.
    """
    blocks = list(iter_review_blocks(n, seed, bad_fraction, start_date, days))
    if not blocks:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RAW_COLUMNS})
    df = pd.concat(blocks, ignore_index=True)
    df.attrs["bad_kinds"] = {k: sum(b.attrs["bad_kinds"][k] for b in blocks) for k in BAD_KINDS}
    return df


def write_landing(df: pd.DataFrame, landing_root: Path, part: int = 0) -> dict[str, Path]:
    """Write ``df`` as daily drops ``<landing_root>/ds=<review_date>/part-<part>.csv``.

    Each file is written under a temporary name and renamed, so a reader never sees half a
    file; an existing file of the same name is replaced. Returns {ds: path}.
    """
    missing = [c for c in RAW_COLUMNS if c not in df.columns]
    if missing:
        raise SyntheticError(f"DataFrame lacks raw column(s) {', '.join(missing)}")
    written: dict[str, Path] = {}
    for ds, rows in df.groupby("review_date", sort=True):
        dest = Path(landing_root) / f"ds={ds}" / f"part-{part:05d}.csv"
        write_csv_atomic(rows[list(RAW_COLUMNS)], dest)
        written[str(ds)] = dest
    return written


def write_landing_stream(
    n: int,
    landing_root: Path,
    seed: int = 0,
    bad_fraction: float = 0.0,
    start_date: str = "2026-01-01",
    days: int = 1,
) -> dict[str, Path]:
    """Write ``generate_reviews(n, ...)`` as daily drops block by block (bounded memory).

    Same rows and file layout as ``write_landing(generate_reviews(...))``; memory stays at
    one block (``BLOCK_ROWS`` rows) whatever ``n`` is. Returns {ds: path}.
    """
    root = Path(landing_root)
    writers: dict[str, csv.writer] = {}
    files: dict[str, Path] = {}
    # every day's file stays a temporary until all blocks are written; a failure removes them all
    with contextlib.ExitStack() as stack:
        for block in iter_review_blocks(n, seed, bad_fraction, start_date, days):
            for ds, rows in block.groupby("review_date", sort=True):
                if ds not in writers:
                    files[ds] = root / f"ds={ds}" / "part-00000.csv"
                    tmp = stack.enter_context(atomic_path(files[ds]))
                    fh = stack.enter_context(open(tmp, "w", encoding="utf-8", newline=""))
                    writers[ds] = csv.writer(fh, lineterminator="\n")
                    writers[ds].writerow(RAW_COLUMNS)
                writers[ds].writerows(rows[list(RAW_COLUMNS)].itertuples(index=False, name=None))
    return dict(sorted(files.items()))


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m include.data.synthetic --rows 1000000 --days 3 --bad-fraction 0.01``."""
    from include.common.config import get_settings
    from include.common.io import uri_to_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True, help="number of reviews")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-fraction", type=float, default=0.0, help="share of broken rows")
    parser.add_argument("--start-date", default="2026-01-01")
    parser.add_argument("--days", type=int, default=1, help="daily drops to spread rows over")
    parser.add_argument("--landing-root", type=Path, default=None, help="default: the landing zone")
    args = parser.parse_args(argv)
    root = args.landing_root or uri_to_path(get_settings().landing_uri)
    paths = write_landing_stream(args.rows, root, args.seed, args.bad_fraction, args.start_date, args.days)
    print(f"wrote {args.rows} synthetic reviews as {len(paths)} drop(s) under {root}")


if __name__ == "__main__":
    main()
