"""The model registry: a front trial's verified ONNX file, logged with MLflow's ONNX flavor and registered.

The file registered is the one the search verified and timed (the trial
run's ``autocompress.artifact`` tag), with its tokenizer and ``policy.json``
beside it, so ``mlflow artifacts download --artifact-uri models:/NAME@champion``
gives ``model.onnx`` with ``extra_files/`` (tokenizer, policy) beside it, and ``mlflow.pyfunc.load_model`` runs it on
ONNX Runtime's CPU provider; the version's MLmodel metadata carries the
teacher's ``id2label``/``label2id``. Registering the same run twice reuses its
version; an alias (``champion`` for the chosen trial) moves to it. An embedding
model's sentence-transformers export registers beside it with MLflow's
``sentence_transformers`` flavor (``register_sentence_transformers``). A decoder's ONNX Runtime GenAI folder
registers as a pyfunc model that generates with it (``register_genai``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from autocompress.config import TASK_METRICS, ConfigError
from autocompress.models.loading import tokenizer_files

CHAMPION = "champion"
ARTIFACT_TAG = "autocompress.artifact"
"""On a trial's run: the ONNX file the search verified and timed."""
TOKENIZER_TAG = "autocompress.tokenizer"
"""On a search's parent run: the folder holding the tokenizer files shipped with every model."""
SENTENCE_TRANSFORMERS_SUFFIX = "-sentence-transformers"
"""An embedding model's sentence-transformers folder registers as ``NAME-sentence-transformers`` beside its ONNX ``NAME``."""
MODEL_NAME_TAG = "autocompress.registered_model"
"""On a search's parent run: the registered model its trials go to."""
VERSION_METRICS = (*(f"{split}_{metric}" for metrics in TASK_METRICS.values() for metric in metrics for split in ("dev", "test")),
                   "speedup", "speedup_vs_int8", "latency_ms", "size_mb", "compression", "decode_speedup", "decode_tokens_per_s",
                   "average_bits")
"""A trial run's metrics copied onto its registered model version (those its task has)."""


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    alias: str | None

    @property
    def uri(self) -> str:
        """``models:/NAME@ALIAS`` (or ``/VERSION``), what ``mlflow artifacts download`` and ``pyfunc.load_model`` take."""
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def default_model_name(study_name: str) -> str:
    return f"autocompress-{study_name}"


def register_run(run_id: str, *, name: str | None = None, alias: str | None = None, tracking_uri: str | None = None) -> Registered:
    """Register the model of one trial run; ``name`` defaults to the search's registered model."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        raise ConfigError(f"run {run_id}: not found at {client.tracking_uri} ({str(error).splitlines()[0]})") from None
    artifact = run.data.tags.get(ARTIFACT_TAG)
    if not artifact:
        raise ConfigError(f"run {run_id} ({run.info.run_name}) has no model: only completed trial runs of a search do")
    if not Path(artifact).is_file():
        raise ConfigError(f"run {run_id}: its ONNX file {artifact} is not here; register a front trial (trials off the front "
                          "give their files back under tracking.keep_artifacts: front) on the machine the search ran on")
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    name = name or parent.data.tags.get(MODEL_NAME_TAG) or default_model_name(parent.data.tags.get("optuna.study_name", "search"))
    version = _existing_version(client, name, run_id)
    if version is None:
        with tempfile.TemporaryDirectory() as folder:
            policy = json.loads(Path(client.download_artifacts(run_id, "policy.json", folder)).read_text())
        version = _log_and_register(client, run, Path(artifact), policy, parent.data.tags.get(TOKENIZER_TAG), name)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return Registered(name, str(version), alias)


def register_sentence_transformers(run_id: str, folder: Path, *, name: str, alias: str | None = None,
                                   tracking_uri: str | None = None) -> Registered:
    """An embedding model's sentence-transformers folder (its hf export, already checked by sentence-transformers itself)
    logged with MLflow's ``sentence_transformers`` flavor on its trial's run and registered as ``NAME-sentence-transformers``.

    ``mlflow.sentence_transformers.load_model(uri)`` then gives a ``SentenceTransformer`` and pyfunc's ``predict`` embeds
    strings; the ONNX version under ``NAME`` stays the file the search timed.
    """
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    client = MlflowClient(tracking_uri=tracking_uri)
    run, name = client.get_run(run_id), f"{name}{SENTENCE_TRANSFORMERS_SUFFIX}"
    version = _existing_version(client, name, run_id)
    if version is None:
        model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)  # as MLflow's flavor loads it
        requirements = [f"sentence-transformers=={sentence_transformers.__version__}", f"transformers=={transformers.__version__}",
                        f"torch=={torch.__version__.split('+')[0]}"]  # stated: MLflow would infer them in a subprocess loading the model
        policy = Path(folder) / "policy.json"

        def log() -> Any:
            return mlflow.sentence_transformers.log_model(
                model, name="sentence_transformers", pip_requirements=requirements, extra_files=[str(policy)] if policy.is_file() else None,
                metadata={"trial": run.data.tags.get("optuna.trial_number")})

        version = _register(client, run, name, log)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return Registered(name, str(version), alias)


def register_genai(run_id: str, folder: Path, *, name: str, alias: str | None = None, tracking_uri: str | None = None) -> Registered:
    """A decoder trial's ONNX Runtime GenAI folder (``best_model/``, with its ``policy.json``) logged on its run as a pyfunc
    model (``tracking.genai_model``) and registered as a version of ``name``; registering the run again reuses it."""
    import onnxruntime_genai
    from mlflow.models import infer_signature

    from autocompress.tracking.genai_model import GENAI_ARTIFACT, MAX_NEW_TOKENS, GenaiModel

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    version = _existing_version(client, name, run_id)
    if version is None:
        signature = infer_signature(["a prompt"], ["its continuation"], params={"max_new_tokens": MAX_NEW_TOKENS})

        def log() -> Any:
            return mlflow.pyfunc.log_model(
                name="model", python_model=GenaiModel(), artifacts={GENAI_ARTIFACT: str(folder)}, signature=signature,
                pip_requirements=[f"onnxruntime-genai=={onnxruntime_genai.__version__}", f"mlflow=={mlflow.__version__}"],
                metadata={"trial": run.data.tags.get("optuna.trial_number"), "runtime": "onnxruntime-genai"},
            )

        version = _register(client, run, name, log)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return Registered(name, str(version), alias)


def _existing_version(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version of ``name`` already registered from ``run_id``: registering a run again reuses it."""
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return existing[0].version if existing else None


def _log_and_register(client: MlflowClient, run: Any, artifact: Path, policy: dict[str, Any], tokenizer: str | None, name: str) -> str:
    import onnx

    with tempfile.TemporaryDirectory() as folder:
        extra = {"policy.json": Path(folder) / "policy.json"}
        extra["policy.json"].write_text(json.dumps(policy, indent=2, sort_keys=True) + "\n")
        extra |= {path.name: path for path in (tokenizer_files(tokenizer) if tokenizer else [])}
        model = onnx.load(str(artifact))

        def log() -> Any:
            return mlflow.onnx.log_model(
                model,
                name="model",
                onnx_execution_providers=["CPUExecutionProvider"],
                save_as_external_data=False,
                signature=_signature(artifact),
                # what mlflow.onnx's pyfunc needs; spares MLflow inferring them in a subprocess that loads the model (seconds)
                pip_requirements=[*mlflow.onnx.get_default_pip_requirements(), f"numpy=={np.__version__}"],
                extra_files=[str(path) for path in extra.values()],
                metadata={"autocompress.policy_version": policy.get("version"), "trial": run.data.tags.get("optuna.trial_number"),
                          **_label_names(tokenizer)},
                params={k: str(v) for k, v in run.data.params.items() if not k.startswith("block")},
            )

        return _register(client, run, name, log)


def _register(client: MlflowClient, run: Any, name: str, log: Callable[[], Any]) -> str:
    """Log a model with ``log()`` inside trial ``run`` (left as it ended) and register it as a new version of ``name``,
    tagged with the run's task and speed metrics."""
    metrics = {k: v for k, v in run.data.metrics.items() if k in VERSION_METRICS}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            info = log()
        client.set_terminated(run.info.run_id, status=run.info.status, end_time=run.info.end_time)
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(name, description="Compressed models found by autocompress; `champion` is the search's chosen trial.")
        version = client.create_model_version(  # resolves models:/m-... through the tracking URI set above
            name, info.model_uri, run_id=run.info.run_id, model_id=info.model_id,
            tags={**{k: f"{v:.6g}" for k, v in metrics.items()}, "trial": run.data.tags.get("optuna.trial_number", "")},
            description=f"trial {run.data.tags.get('optuna.trial_number')}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()),
        )
    finally:
        mlflow.set_tracking_uri(previous)
    return version.version


def _label_names(model_folder: str | None) -> dict[str, dict[str, Any]]:
    """``id2label`` and ``label2id`` of the teacher (whose folder holds the tokenizer): what each output logit of the model means."""
    config = Path(model_folder) / "config.json" if model_folder else None
    if config is None or not config.is_file():
        return {}
    content = json.loads(config.read_text())
    return {key: content[key] for key in ("id2label", "label2id") if key in content}


def _signature(artifact: Path):
    """Input and output tensors as the file declares them; its dynamic axes (batch, sequence) stay -1."""
    import onnxruntime as ort
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])

    def schema(tensors: list[Any]) -> Schema:
        dtypes = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}
        return Schema([TensorSpec(np.dtype(dtypes[t.type]), tuple(d if isinstance(d, int) else -1 for d in t.shape), t.name) for t in tensors])

    return ModelSignature(inputs=schema(session.get_inputs()), outputs=schema(session.get_outputs()))
