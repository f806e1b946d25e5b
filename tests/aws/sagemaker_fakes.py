"""SageMaker's part for the calls moto 5.2 lacks, for tests that run whole steps or DAGs on aws.

Each fake answers ONLY the operations moto does not implement, through
:class:`tests.aws.stubs.OperationStubber` (botocore's Stubber limited to those operations, in
``respond`` mode so any number of calls is answered); every other call goes to moto's server.

* :class:`FeatureStoreFake` - ``sagemaker-featurestore-runtime`` ``PutRecord`` / ``GetRecord`` /
  ``BatchGetRecord``: keeps the online records and writes each put record to the offline store
  in moto's S3 the way SageMaker does (a Parquet file under
  ``<ResolvedOutputS3Uri>/year=/month=/day=/hour=/`` with ``write_time``,
  ``api_invocation_time`` and ``is_deleted``).
* :class:`EndpointFake` - ``sagemaker`` ``UpdateEndpoint`` (moto raises NotImplementedError):
  switches moto's endpoint to the new config as SageMaker would (or, with ``fail_updates``,
  leaves the old config and sets a FailureReason, as SageMaker's automatic rollback does); and
  ``sagemaker-runtime`` ``InvokeEndpoint`` (moto runs no container): runs the package's OWN
  handler (``code/inference.py`` from the endpoint model's ``model.tar.gz`` on moto's S3,
  loaded as the local server loads it, with the model's ``INFERENCE_PRECISION``).

:func:`install` wires both into the production classes (their clients are the patched ones).
"""
from __future__ import annotations

import io
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq

from tests.aws.stubs import OperationStubber, error, moto_sagemaker, streaming

SM_TYPES = {"Integral": pa.int64(), "Fractional": pa.float64(), "String": pa.string()}


class FeatureStoreFake:
    """Plays SageMaker Feature Store's runtime for ``runtime`` (a featurestore-runtime client)."""

    def __init__(self, runtime, region: str) -> None:
        self.sm = boto3.client("sagemaker", region_name=region)
        self.s3 = boto3.client("s3", region_name=region)
        self.puts: list[dict] = []
        self.online: dict[tuple[str, str], tuple[str, list[dict]]] = {}
        self.groups: dict[str, dict] = {}
        self.stub = OperationStubber(runtime, "PutRecord", "GetRecord", "BatchGetRecord", respond=self._respond)
        self.stub.activate()

    def _group(self, name: str) -> dict:
        if name not in self.groups:
            self.groups[name] = self.sm.describe_feature_group(FeatureGroupName=name)
        return self.groups[name]

    def _respond(self, op: str, params: dict) -> dict:
        if op == "PutRecord":
            self._put(params)
            return {}
        if op == "GetRecord":
            found = self.online.get((params["FeatureGroupName"], params["RecordIdentifierValueAsString"]))
            return {"Record": found[1]} if found else {}
        records, unprocessed = [], []
        for ident in params["Identifiers"]:
            for rid in ident["RecordIdentifiersValueAsString"]:
                found = self.online.get((ident["FeatureGroupName"], rid))
                if found:
                    records.append({"FeatureGroupName": ident["FeatureGroupName"],
                                    "RecordIdentifierValueAsString": rid, "Record": found[1]})
        return {"Records": records, "Errors": [], "UnprocessedIdentifiers": unprocessed}

    def _put(self, params: dict) -> None:
        self.puts.append(params)
        desc = self._group(params["FeatureGroupName"])
        values = {r["FeatureName"]: r["ValueAsString"] for r in params["Record"]}
        event = values[desc["EventTimeFeatureName"]]
        cols = {}
        for d in desc["FeatureDefinitions"]:
            raw = values.get(d["FeatureName"])
            value = None if raw is None else int(raw) if d["FeatureType"] == "Integral" else (
                float(raw) if d["FeatureType"] == "Fractional" else raw)
            cols[d["FeatureName"]] = pa.array([value], SM_TYPES[d["FeatureType"]])
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        cols["write_time"] = pa.array([now], pa.timestamp("us"))
        cols["api_invocation_time"] = pa.array([now], pa.timestamp("us"))
        cols["is_deleted"] = pa.array([False])
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf)
        et = datetime.fromisoformat(event.replace("Z", ""))
        root = desc["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"]
        bucket, prefix = root[len("s3://"):].split("/", 1)
        key = (f"{prefix}/year={et:%Y}/month={et:%m}/day={et:%d}/hour={et:%H}/"
               f"{now:%Y%m%dT%H%M%SZ}_{uuid.uuid4().hex[:12]}.parquet")
        self.s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
        rid = (params["FeatureGroupName"], values[desc["RecordIdentifierFeatureName"]])
        if rid not in self.online or event >= self.online[rid][0]:
            self.online[rid] = (event, params["Record"])


class EndpointFake:
    """Plays SageMaker for ``UpdateEndpoint`` (on ``sm``) and ``InvokeEndpoint`` (on ``runtime``)."""

    def __init__(self, sm, runtime, region: str, workdir: Path | None = None) -> None:
        self.region = region
        self.sm = boto3.client("sagemaker", region_name=region)  # unstubbed: reads moto's state
        self.s3 = boto3.client("s3", region_name=region)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="endpoint-fake-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fail_updates = ""  # a FailureReason: updates then fail as SageMaker's rollback leaves them
        self.updates: list[dict] = []
        self.invocations: list[dict] = []
        self._slots: dict[tuple[str, str], object] = {}
        self.update_stub = OperationStubber(sm, "UpdateEndpoint", respond=self._update)
        self.invoke_stub = OperationStubber(runtime, "InvokeEndpoint", respond=self._invoke)
        self.update_stub.activate()
        self.invoke_stub.activate()

    def _update(self, op: str, params: dict) -> dict:
        self.updates.append(params)
        backend = moto_sagemaker(self.region)
        ep = backend.endpoints[params["EndpointName"]]
        if self.fail_updates:
            ep.failure_reason = self.fail_updates
        else:
            config = backend.endpoint_configs[params["EndpointConfigName"]]
            ep.endpoint_config_name = params["EndpointConfigName"]
            ep.production_variants = ep._process_production_variants(config.production_variants)
        return {"EndpointArn": ep.arn}

    def _slot(self, endpoint_name: str):
        from include.model.packaging import extract_package
        from include.serving.server import load_slot

        config = self.sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
        model_name = self.sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]["ModelName"]
        container = self.sm.describe_model(ModelName=model_name)["PrimaryContainer"]
        env = container.get("Environment", {})
        key = (container["ModelDataUrl"], env.get("INFERENCE_PRECISION", "fp32"))
        if key not in self._slots:
            bucket, s3_key = container["ModelDataUrl"][len("s3://"):].split("/", 1)
            local = self.workdir / f"{len(self._slots)}.tar.gz"
            self.s3.download_file(bucket, s3_key, str(local))
            model_dir = extract_package(local.as_uri(), self.workdir / f"model-{len(self._slots)}")
            self._slots[key] = load_slot(str(model_dir), env.get("MODEL_VERSION", ""), key[1])
        return self._slots[key]

    def _invoke(self, op: str, params: dict) -> dict:
        self.invocations.append(params)
        try:
            slot = self._slot(params["EndpointName"])
            handler = slot.handler
            data = handler.input_fn(params["Body"], params.get("ContentType"))
            accept = params.get("Accept") or params.get("ContentType")
            body = handler.output_fn(handler.predict_fn(data, slot.model), accept)
        except Exception as exc:  # noqa: BLE001 - the container answers an error, as SageMaker's ModelError
            return error("ModelError", f"Received client error (400) from primary with message "
                                       f"\"{type(exc).__name__}: {exc}\"", 424)
        data = body.encode() if isinstance(body, str) else body
        return {"Body": streaming(data), "ContentType": accept}


def install(monkeypatch, region: str, workdir: Path | None = None) -> tuple[FeatureStoreFake, EndpointFake]:
    """Give the production SageMaker classes clients on which the fakes answer what moto lacks."""
    from include.data.feature_store_sagemaker import SageMakerFeatureStore
    from include.serving.endpoint_sagemaker import SageMakerEndpoint

    fs_runtime = boto3.client("sagemaker-featurestore-runtime", region_name=region)
    sm = boto3.client("sagemaker", region_name=region)
    runtime = boto3.client("sagemaker-runtime", region_name=region)
    features = FeatureStoreFake(fs_runtime, region)
    endpoint = EndpointFake(sm, runtime, region, workdir)
    monkeypatch.setattr(SageMakerFeatureStore, "runtime", property(lambda self: fs_runtime))
    monkeypatch.setattr(SageMakerEndpoint, "sm", property(lambda self: sm))
    monkeypatch.setattr(SageMakerEndpoint, "runtime", property(lambda self: runtime))
    return features, endpoint
