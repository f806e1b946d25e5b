"""Processing job: reviews -> balanced, split, tokenized BERT features (Parquet shards).

Runs unchanged in a SageMaker processing container or under the local runner. Reads every
CSV/Parquet file under ``--input-data`` (columns ``review_id, product_category,
review_body, star_rating`` and optional ``review_date``/``ds``), then:

1. cleans the text (whitespace, empty bodies) and maps ratings to sentiment
   (1-2 -> -1, 3 -> 0, 4-5 -> 1; ``label_id = sentiment + 1``);
2. balances the classes by down-sampling (``--balance-dataset true``, the course's way),
   or keeps all training rows and balances only validation/test (``eval``), or neither;
3. splits train / validation / test stratified by class (``--train-split-percentage``,
   ``--validation-split-percentage``, the rest is test);
4. tokenizes with the model's fast tokenizer (truncation at ``--max-seq-length``, no
   padding: the trainer pads per batch) and writes ``<output>/<split>/part-NNNNN.parquet``
   plus ``<output>/stats.json``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from common import parse_dataclass, resolve_model_dir

log = logging.getLogger("preprocess")
REQUIRED = ["review_id", "product_category", "review_body", "star_rating"]
SPLITS = ("train", "validation", "test")
SHARD_ROWS = 20_000


class PreprocessError(ValueError):
    """Input the job cannot turn into features."""


@dataclass
class PreprocessArguments:
    """Arguments; defaults follow the processing-container layout."""

    input_data: str = field(default="/opt/ml/processing/input/data", metadata={"help": "folder with CSV/Parquet files"})
    output_data: str = field(default="/opt/ml/processing/output",
                             metadata={"help": "output folder (one sub-folder per split)"})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "model folder whose tokenizer is used (default: MiniLM)"})
    max_seq_length: int = field(default=64, metadata={"help": "tokens per review after truncation (8..512)"})
    train_split_percentage: float = field(default=0.90, metadata={"help": "share of rows for training"})
    validation_split_percentage: float = field(default=0.05, metadata={"help": "share for validation; rest is test"})
    balance_dataset: str = field(default="true", metadata={
        "help": "true: down-sample all classes to the smallest; eval: balance validation/test only, train on all "
                "remaining rows; false: no balancing"})
    seed: int = field(default=42, metadata={"help": "seed for sampling and splitting"})

    def __post_init__(self) -> None:
        if not 8 <= self.max_seq_length <= 512:
            raise ValueError(f"--max-seq-length={self.max_seq_length}: must be in 8..512")
        tr, va = self.train_split_percentage, self.validation_split_percentage
        if not (0 < tr < 1 and 0 < va < 1 and tr + va < 1):
            raise ValueError(f"--train-split-percentage={tr}, --validation-split-percentage={va}: both in (0, 1) "
                             "with a sum < 1")
        choice = {"true": True, "false": False, "eval": "eval"}.get(str(self.balance_dataset).lower())
        if choice is None:
            raise ValueError(f"--balance-dataset={self.balance_dataset!r}: use true, false or eval")
        self.balance_dataset = choice


def parse_args(argv: list[str] | None = None) -> PreprocessArguments:
    return parse_dataclass(PreprocessArguments, argv, "Tokenize reviews into BERT features")


def read_input(folder: Path) -> pd.DataFrame:
    """All CSV/Parquet files under ``folder`` as one frame; names the file that is wrong."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".csv", ".parquet") and p.is_file())
    if not files:
        raise PreprocessError(f"{folder}: no .csv or .parquet files")
    frames = []
    for f in files:
        df = pd.read_parquet(f) if f.suffix == ".parquet" else pd.read_csv(f, dtype=str, keep_default_na=False)
        missing = [c for c in REQUIRED if c not in df.columns]
        if missing:
            raise PreprocessError(f"{f}: missing column(s) {', '.join(missing)}")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def clean(df: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Normalise text and labels; drop rows that cannot be used and count them."""
    out = df.copy()
    out["review_body"] = out["review_body"].astype(str).str.split().str.join(" ")
    rating = pd.to_numeric(out["star_rating"], errors="coerce")
    usable = (out["review_body"] != "") & rating.between(1, 5) & (rating % 1 == 0)
    dropped = {"empty_or_bad_rating": int((~usable).sum())}
    out, rating = out[usable].copy(), rating[usable].astype(int)
    dup = out["review_id"].astype(str).duplicated(keep="last")
    dropped["duplicate_review_id"] = int(dup.sum())
    out, rating = out[~dup], rating[~dup]
    out["star_rating"] = rating
    out["sentiment"] = np.select([rating <= 2, rating == 3], [-1, 0], 1).astype(np.int8)
    out["label_id"] = (out["sentiment"] + 1).astype(np.int8)
    date_col = "review_date" if "review_date" in out else ("ds" if "ds" in out else None)
    dates = pd.to_datetime(out[date_col], errors="coerce") if date_col else pd.Series(pd.NaT, index=out.index)
    if "ds" in out:  # reviews without a date take their partition's date
        dates = dates.fillna(pd.to_datetime(out["ds"], errors="coerce"))
    out["date"] = dates.dt.date
    out["review_id"] = out["review_id"].astype(str)
    return out.reset_index(drop=True), dropped


def split(df: pd.DataFrame, train_pct: float, val_pct: float, balance: bool | str, seed: int) -> pd.DataFrame:
    """Balance and split stratified by class; adds ``split_type``."""
    rng = np.random.default_rng(seed)
    groups = {k: g.iloc[rng.permutation(len(g))] for k, g in df.groupby("label_id")}
    if len(groups) < 2:
        raise PreprocessError(f"only one sentiment class in the input ({list(groups)}): cannot train a classifier")
    n_min = min(len(g) for g in groups.values())
    parts = []
    for g in groups.values():
        if balance is True:
            g = g.iloc[:n_min]
        n = n_min if balance == "eval" else len(g)
        n_val, n_test = int(round(n * val_pct)), int(round(n * (1 - train_pct - val_pct)))
        s = np.array(["train"] * len(g), dtype=object)
        s[:n_val] = "validation"
        s[n_val:n_val + n_test] = "test"
        parts.append(g.assign(split_type=s))
    out = pd.concat(parts)
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


def tokenize(texts: list[str], model_dir: str, max_len: int) -> list[list[int]]:
    """Fast-tokenizer ids (with special tokens, truncated, unpadded), with progress lines."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids: list[list[int]] = []
    start, batch = time.monotonic(), 2048
    for i in range(0, len(texts), batch):
        ids += tok(texts[i:i + batch], truncation=True, max_length=max_len)["input_ids"]
        done, el = len(ids), time.monotonic() - start
        log.info("tokenized %d/%d reviews (%.0f/s, ETA %.0fs)", done, len(texts), done / max(el, 1e-9),
                 (len(texts) - done) / max(done / max(el, 1e-9), 1e-9))
    return ids


def write_shards(df: pd.DataFrame, folder: Path) -> int:
    """Write ``df`` as ``part-NNNNN.parquet`` shards of at most SHARD_ROWS rows."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([
        ("review_id", pa.string()), ("date", pa.date32()), ("product_category", pa.string()),
        ("review_body", pa.string()), ("star_rating", pa.int8()), ("sentiment", pa.int8()),
        ("label_id", pa.int8()), ("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())),
        ("split_type", pa.string()),
    ])
    cols = [f.name for f in schema]
    for n, start in enumerate(range(0, max(len(df), 1), SHARD_ROWS)):
        table = pa.Table.from_pandas(df.iloc[start:start + SHARD_ROWS][cols], schema=schema, preserve_index=False)
        pq.write_table(table, folder / f"part-{n:05d}.parquet")
    return len(df)


def main(argv: list[str] | None = None) -> dict:
    """Run the job; returns the stats written to ``stats.json``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    t0 = time.monotonic()
    raw = read_input(Path(args.input_data))
    df, dropped = clean(raw)
    log.info("read %d rows, kept %d (dropped %s)", len(raw), len(df), dropped)
    if df.empty:
        raise PreprocessError(f"{args.input_data}: no usable rows (dropped: {dropped})")
    df = split(df, args.train_split_percentage, args.validation_split_percentage, args.balance_dataset, args.seed)
    df["input_ids"] = tokenize(df["review_body"].tolist(), resolve_model_dir(args.model_name_or_path),
                               args.max_seq_length)
    df["attention_mask"] = [[1] * len(x) for x in df["input_ids"]]
    out = Path(args.output_data)
    stats: dict = {"input_rows": len(raw), "dropped": dropped, "max_seq_length": args.max_seq_length,
                   "balance_dataset": args.balance_dataset, "splits": {}}
    for name in SPLITS:
        part = df[df["split_type"] == name]
        write_shards(part, out / name)
        stats["splits"][name] = {"rows": len(part),
                                 "by_label": {str(k): int(v) for k, v in
                                              part["label_id"].value_counts().sort_index().items()}}
    lengths = df["input_ids"].map(len)
    stats["tokens"] = {"mean": float(lengths.mean()), "p95": float(lengths.quantile(0.95)),
                       "truncated_share": float((lengths >= args.max_seq_length).mean())}
    stats["wall_s"] = round(time.monotonic() - t0, 2)
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    log.info("wrote %s in %.1fs: %s", out, stats["wall_s"], json.dumps(stats["splits"]))
    return stats


if __name__ == "__main__":
    try:
        main()
    except (PreprocessError, OSError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(2)
