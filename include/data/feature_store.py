"""The feature store of the configured backend - the one place that chooses it (``local``:
``feature_store_local.py``; ``aws``: SageMaker Feature Store, ``feature_store_sagemaker.py``,
imported only on that backend) - and the feature store's command line. The interface, the
feature group definitions and their checks are ``feature_store_base.py``.

CLI: ``python -m include.data.feature_store list | describe NAME | query SQL | get NAME ID``
(``make features [SQL="..."]``).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from include.common.config import ConfigError, Settings, get_settings
from include.data.feature_store_base import FeatureStore, FeatureStoreError, FeatureValidationError
from include.data.feature_store_local import LocalFeatureStore


def get_feature_store(settings: Settings | None = None) -> FeatureStore:
    """The feature store of the configured backend (the one place that switches on it)."""
    settings = settings or get_settings()
    if settings.backend == "local":
        return LocalFeatureStore(settings)
    from include.common.aws import load_aws_config
    from include.data.feature_store_sagemaker import SageMakerFeatureStore

    return SageMakerFeatureStore(load_aws_config().validate())


# --------------------------------------------------------------------------- CLI


def _print_table(columns: list[str], rows: list[tuple], limit: int = 200) -> None:
    def cell(v: Any) -> str:
        text = json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    shown = [[cell(v) for v in r] for r in rows[:limit]]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in shown:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if len(rows) > limit:
        print(f"... {len(rows) - limit} more row(s)")


def main(argv: list[str] | None = None) -> int:
    """``list`` | ``describe NAME`` | ``query SQL`` | ``get NAME ID [ID ...]`` | ``rebuild-online NAME``."""
    parser = argparse.ArgumentParser(prog="python -m include.data.feature_store",
                                     description="Feature store: feature groups kept as code, an offline and an online store, "
                                                 "point-in-time reads.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="feature groups with record counts")
    sub.add_parser("describe", help="a group's definition").add_argument("name")
    sub.add_parser("query", help="read-only SQL; groups are views feature_store.<name>").add_argument("sql")
    get = sub.add_parser("get", help="records from the online store")
    get.add_argument("name")
    get.add_argument("ids", nargs="+")
    sub.add_parser("rebuild-online", help="rebuild the online store from the offline store").add_argument("name")
    args = parser.parse_args(argv)
    store = get_feature_store()
    try:
        if args.cmd == "list":
            groups = store.list_feature_groups()
            if not groups:
                print("no feature group yet (the pipeline's preprocess step creates reviews_features)")
            else:
                _print_table(list(groups[0]), [tuple(g.values()) for g in groups])
        elif args.cmd == "describe":
            print(json.dumps(store.describe_feature_group(args.name).to_dict(), indent=1))
        elif args.cmd == "query":
            _print_table(*store.query(args.sql))
        elif args.cmd == "get":
            found = store.batch_get_record(args.name, args.ids)
            for rid in args.ids:
                print(json.dumps(found.get(rid)) if rid in found else f"{rid}: not in the online store")
        else:
            print(f"{store.rebuild_online(args.name)} record(s) written to the online store")
    except (FeatureValidationError, FeatureStoreError, ConfigError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(main())
