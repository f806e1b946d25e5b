"""Training data for train.py: read channel shards, check them, plan and pad batches.

Everything here is plain numpy + pyarrow so it is cheap to test and to reuse from the
benchmarks; ``EpochBatches`` is the batch sampler ``transformers.Trainer`` draws from. The
throughput tricks live here:

* dynamic padding - a batch is padded to its own longest review, not ``max_seq_length``;
* length-grouped batches - within a shuffled "mega-batch" of ``group_factor`` batches the
  rows are sorted by length, so a batch holds reviews of similar length and little padding;
  the batch order is shuffled again so the loss curve does not follow review length.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import ID2LABEL

REQUIRED_COLUMNS = ("input_ids", "label_id")


class TrainingDataError(ValueError):
    """A channel the job cannot train or validate on (names channel, folder or file)."""


@dataclass
class Split:
    """One channel in memory: token ids per row (int32 arrays) and labels (0/1/2)."""

    name: str
    folder: Path
    input_ids: list[np.ndarray]
    labels: np.ndarray
    # star ratings 1..5 when the shards carry ``star_rating`` (the auxiliary training target)
    ratings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Unpadded length of every row."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def class_counts(self) -> dict[int, int]:
        """Rows per label id (only the labels present)."""
        ids, counts = np.unique(self.labels, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}

    def subset(self, idx: np.ndarray) -> "Split":
        """A new Split with the rows ``idx`` (in that order)."""
        return Split(self.name, self.folder, [self.input_ids[i] for i in idx], self.labels[idx],
                     None if self.ratings is None else self.ratings[idx])


def _shards(folder: Path, channel: str) -> list[Path]:
    if not folder.is_dir():
        raise TrainingDataError(f"channel {channel!r}: folder {folder} does not exist "
                                f"(set SM_CHANNEL_{channel.upper()} or --{channel}_dir)")
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise TrainingDataError(f"channel {channel!r}: no Parquet shards (part-NNNNN.parquet) in {folder}")
    return files


def load_channel(folder: str | Path, channel: str, max_seq_length: int,
                 max_samples: int = 0, seed: int = 42) -> Split:
    """Read every ``*.parquet`` shard of a channel folder.

    Rows longer than ``max_seq_length`` are cut (keeping the final ``[SEP]``), so a run with a
    shorter sequence length than preprocessing used still works. ``max_samples`` > 0 keeps a
    seeded random subset. Fails with :class:`TrainingDataError` on a missing folder, no
    shards, missing columns, no rows or labels outside 0..2.
    """
    import pyarrow.parquet as pq

    folder = Path(folder)
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ratings: list[np.ndarray] | None = []
    for f in _shards(folder, channel):
        have = pq.read_schema(f).names
        missing = [c for c in REQUIRED_COLUMNS if c not in have]
        if missing:
            raise TrainingDataError(f"channel {channel!r}: {f} lacks column(s) {', '.join(missing)}")
        # the optional star_rating comes in the same read (the auxiliary training target)
        want_stars = ratings is not None and "star_rating" in have
        table = pq.read_table(f, columns=list(REQUIRED_COLUMNS) + (["star_rating"] if want_stars else []))
        col = table.column("input_ids").combine_chunks()
        flat = col.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
        offsets = col.offsets.to_numpy()
        ids.extend(flat[offsets[i]:offsets[i + 1]] for i in range(len(col)))
        labels.append(table.column("label_id").to_numpy(zero_copy_only=False).astype(np.int64))
        stars = table.column("star_rating") if want_stars else None
        # optional column: a shard without it, or with a gap, turns it off for the channel
        ratings = None if stars is None or stars.null_count else ratings + [stars.to_numpy(zero_copy_only=False)]
    y = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    if len(y) == 0:
        raise TrainingDataError(f"channel {channel!r}: the shards in {folder} hold no rows")
    bad = ~np.isin(y, list(ID2LABEL))
    if bad.any():
        raise TrainingDataError(f"channel {channel!r}: {int(bad.sum())} row(s) in {folder} have label_id outside "
                                f"0..2 (first: {int(y[bad][0])})")
    empty = [i for i, x in enumerate(ids) if len(x) == 0]
    if empty:
        raise TrainingDataError(f"channel {channel!r}: {len(empty)} row(s) in {folder} have empty input_ids")
    ids = [truncate(x, max_seq_length) for x in ids]
    stars = np.concatenate(ratings).astype(np.int64) if ratings else None
    if stars is not None and not np.isin(stars, [1, 2, 3, 4, 5]).all():
        stars = None  # not usable as the auxiliary target; the label is all training needs
    split = Split(channel, folder, ids, y, stars)
    if 0 < max_samples < len(split):
        split = split.subset(np.sort(np.random.default_rng(seed).permutation(len(split))[:max_samples]))
    return split


def truncate(ids: np.ndarray, max_len: int) -> np.ndarray:
    """Cut a tokenized row to ``max_len`` tokens, keeping its last token ([SEP])."""
    if len(ids) <= max_len:
        return ids
    return np.concatenate([ids[:max_len - 1], ids[-1:]])


def require_classes(split: Split, min_classes: int = 2) -> None:
    """Fail when a channel holds fewer than ``min_classes`` sentiment classes."""
    counts = split.class_counts()
    if len(counts) < min_classes:
        names = ", ".join(f"{ID2LABEL[k]} ({v} rows)" for k, v in counts.items())
        raise TrainingDataError(f"channel {split.name!r}: {split.folder} holds only one class: {names}; "
                                f"a classifier needs at least {min_classes} of negative/neutral/positive")


def class_weights(counts: dict[int, int], mode: str, num_labels: int = 3) -> np.ndarray | None:
    """Loss weights per class: ``balanced`` (n / (k * n_c)), ``sqrt`` (its square root) or ``none``."""
    if mode == "none":
        return None
    total = sum(counts.values())
    w = np.ones(num_labels, dtype=np.float64)
    for c in range(num_labels):
        n_c = counts.get(c, 0)
        w[c] = total / (len(counts) * n_c) if n_c else 0.0
    if mode == "sqrt":
        w = np.sqrt(w)
    return (w / w[w > 0].mean()).astype(np.float32)


def epoch_class_counts(counts: dict[int, int], max_class_ratio: float) -> dict[int, int]:
    """Rows per class that one epoch uses (``epoch_rows``' cap applied to ``counts``).

    Class weights must balance *these*, not the whole channel: weighting by the full counts
    while the epoch caps the majority class under-weights it twice (measured: positive recall
    0.76 at precision 0.94 on a balanced test set, a ~6x too small weight).
    """
    if max_class_ratio <= 0 or not counts:
        return dict(counts)
    present = [n for n in counts.values() if n > 0]
    cap = int(np.ceil(min(present) * max_class_ratio)) if present else 0
    return {c: min(n, cap) for c, n in counts.items()}


def epoch_rows(labels: np.ndarray, max_class_ratio: float, seed: int, epoch: int) -> np.ndarray:
    """Row indices used in ``epoch``: all rows, or each class capped at ratio x smallest class.

    The cap re-draws the majority rows every epoch, so over several epochs the model still
    sees most of them (epoch-wise under-sampling).
    """
    if max_class_ratio <= 0:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, epoch, 7])
    classes, counts = np.unique(labels, return_counts=True)
    cap = int(np.ceil(counts.min() * max_class_ratio))
    keep = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        keep.append(rows if len(rows) <= cap else rng.choice(rows, cap, replace=False))
    return np.sort(np.concatenate(keep))


def plan_batches(lengths: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, epoch: int,
                 group_by_length: bool = True, group_factor: int = 50) -> list[np.ndarray]:
    """The batches (arrays of row indices) of one epoch; deterministic in (seed, epoch).

    Determinism is what makes resuming from a checkpoint exact: the resumed run rebuilds the
    same plan and skips the batches already done.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rows[rng.permutation(len(rows))]
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[np.ndarray] = []
    mega = batch_size * group_factor
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class EpochBatches:
    """The train batch sampler: each epoch's rows (``epoch_rows``) in ``plan_batches`` order.

    ``transformers.Trainer`` calls ``set_epoch`` before every epoch, so the majority-class cap
    is re-drawn per epoch; on resume it skips the batches already done of the same plan.
    """

    def __init__(self, split: Split, batch_size: int, max_class_ratio: float, seed: int, group_by_length: bool):
        self.split, self.batch_size, self.ratio, self.seed = split, batch_size, max_class_ratio, seed
        self.group, self.lengths, self.epoch = group_by_length, split.lengths, 0
        self.epoch_size = len(epoch_rows(split.labels, max_class_ratio, seed, 0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rows = epoch_rows(self.split.labels, self.ratio, self.seed, self.epoch)
        return (b.tolist() for b in plan_batches(self.lengths, rows, self.batch_size, self.seed, self.epoch,
                                                   self.group))

    def __len__(self) -> int:
        return -(-self.epoch_size // self.batch_size)


def collate(split: Split, idx: np.ndarray, pad_id: int = 0, pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Pad rows ``idx`` into int64 arrays ``input_ids``, ``attention_mask``, ``labels``.

    ``pad_to=None`` pads to the longest row in the batch (dynamic padding); an int pads to a
    fixed width (the plain baseline).
    """
    seqs = [split.input_ids[i] for i in idx]
    width = pad_to or max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": split.labels[idx]}
    if split.ratings is not None:
        batch["ratings"] = split.ratings[idx] - 1  # 0..4: the auxiliary head's classes
    return batch
