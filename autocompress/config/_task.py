"""The ``task`` and ``teacher`` sections: the data, its three splits, the metric, and how the teacher is fine-tuned."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from autocompress.config._base import LABELLED_METRICS, TASK_METRICS, MetricName, Strict, TaskType

CAUSAL_LM_DEFAULTS = {"metric": "perplexity", "train": None, "dev": "wikitext-2/valid.txt", "test": "wikitext-2/test.txt",
                      "max_length": 256, "dev_subset": 16, "test_subset": 32}
"""A causal-lm task's own defaults: WikiText-2 (dev and GPTQ calibration from validation, the report from test) cut into
windows of ``max_length`` tokens; ``dev_subset``/``test_subset`` count windows, not rows."""


class _SplitFiles(Strict):
    """Labelled files an embedding task scores beside its texts, one per split (``dev``, ``test``), at least one of them."""

    section: ClassVar[str]
    dev: str | None = None
    test: str | None = None

    @model_validator(mode="after")
    def _some_file(self) -> "_SplitFiles":
        if self.dev is None and self.test is None:
            raise ValueError(f"task.{self.section} names no file for any split; set task.{self.section}.dev and/or "
                             f"task.{self.section}.test, or remove task.{self.section}")
        return self


class PairsConfig(_SplitFiles):
    """Sentence pairs with a gold similarity score (STS-B style), scored beside an embedding task's texts: ``gold_spearman``."""

    section = "pairs"

    dev: str | None = Field(None, description="pairs file under task.data_root scored on dev (the search may maximize gold_spearman); "
                            ".tsv/.csv with a header row, .jsonl, .json or .parquet; null: no pairs on dev")
    test: str | None = Field(None, description="pairs file scored for the final report; null: no pairs on test")
    sentence1_column: str = Field("sentence1", description="column holding a pair's first text")
    sentence2_column: str = Field("sentence2", description="column holding a pair's second text")
    score_column: str = Field("score", description="column holding the gold similarity (any numeric scale: only its order counts)")


class RetrievalConfig(_SplitFiles):
    """Queries retrieving from a corpus with relevance judgements (the BEIR layout), scored beside an embedding task's texts:
    ``ndcg_at_10`` and ``recall_at_100`` of each judged query over the whole corpus, cosine (or the index's similarity)."""

    section = "retrieval"

    queries: str = Field(description="queries file under task.data_root (BEIR: queries.jsonl): id_column and text_column")
    corpus: str = Field(description="corpus file (BEIR: corpus.jsonl): id_column, text_column and optionally title_column")
    dev: str | None = Field(None, description="relevance judgements scored on dev (BEIR: qrels/dev.tsv): columns query-id, corpus-id, "
                            "score (a graded relevance; 0 is not relevant); null: no retrieval on dev")
    test: str | None = Field(None, description="relevance judgements scored for the final report (BEIR: qrels/test.tsv); null: none on test")
    id_column: str = Field("_id", description="column holding a query's or a document's id")
    text_column: str = Field("text", description="column holding a query's or a document's text")
    title_column: str | None = Field("title", description="corpus column whose non-empty value is put before the text, as BEIR's "
                                     "evaluation does; null: texts only")


class TaskConfig(Strict):
    """A task and its three splits: train, dev (search decisions) and test (the final report).

    The teacher and distillation train on ``train``; every search decision
    (objective, constraints, pruner) reads ``dev``; ``test`` is only scored for
    the report, never read by the search. Without a ``dev`` file (or
    ``hf_dev_split``), ``dev_size`` rows are carved from the training file,
    stratified by label and seeded, and held out from teacher training and
    distillation; without a ``test`` file, ``test_size`` rows likewise.
    """

    type: TaskType = Field(
        "sequence-classification",
        description="the kind of task (autocompress.tasks): sequence-classification is a label per text or per pair of texts; "
        "embedding is a sentence-embedding model (sentence-transformers), compressed to agree with its own embeddings, "
        "on unlabelled texts; causal-lm is a decoder language model scored by perplexity on plain-text dev and test files "
        "(windows of max_length tokens; defaults: WikiText-2 valid/test, 16 dev and 32 test windows of 256 tokens)",
    )
    data_root: str | None = Field(
        None,
        description="folder the relative train/dev/test paths resolve against; a relative value is relative to the config file; "
        "$AUTOCOMPRESS_DATA_ROOT overrides it; null: the config file's folder",
    )
    train: str | None = Field(
        "sst2/train.tsv",
        description="training file under data_root: .tsv or .csv (a header row, or none with task.columns), .jsonl, "
        ".json (JSON lines or one array of objects) or .parquet; the teacher and distillation train on it, "
        "minus the dev rows carved from it when dev is null; its labels define the task's labels unless task.labels is set; "
        "null only with hf_dataset",
    )
    dev: str | None = Field(
        None,
        description="dev file: every search decision (objective task.metric, constraints, pruner, selection) reads it; "
        "null: carve dev_size rows from train, stratified by label and seeded by split_seed, held out of all training",
    )
    test: str | None = Field(
        "sst2/validation.tsv",
        description="untouched test file, scored only for the final report and never read by the search "
        "(SST-2's public validation set, as its test labels are hidden); null (an embedding task's default): carve "
        "test_size rows from train (before dev is carved), or hf_test_split with hf_dataset",
    )
    test_size: int = Field(
        2000,
        ge=2,
        description="rows carved from train as the test split when test is null (files only), else ignored; "
        "an embedding task's neighbour recall searches among them, so at least 2,000 is advised",
    )
    dev_size: int = Field(
        1000,
        ge=2,
        description="rows carved from train as the dev split when dev (or hf_dev_split) is null, else ignored; "
        "more rows: less noisy search decisions, fewer training rows; must be below the training rows",
    )
    split_seed: int = Field(
        0,
        description="seed of the stratified dev carve-out; changing it changes the dev rows, the training rows and so the teacher's cache key",
    )
    hf_dataset: str | None = Field(
        None,
        description="Hugging Face dataset id (datasets.load_dataset) read instead of the train/dev/test files; a ClassLabel "
        "label feature gives the label names; null: read the files",
    )
    hf_config: str | None = Field(None, description="configuration name of hf_dataset (e.g. sst2 of glue); null: the dataset's default")
    hf_train_split: str = Field("train", description="split of hf_dataset used as train (with hf_dataset only)")
    hf_dev_split: str | None = Field(
        None, description="split of hf_dataset used as dev; null: carve dev_size rows from hf_train_split, as for files"
    )
    hf_test_split: str = Field("validation", description="split of hf_dataset used as the test split of the final report (with hf_dataset only)")
    text_column: str = Field("sentence", description="column (file header, task.columns entry or dataset feature) holding the text")
    text_pair_column: str | None = Field(
        None,
        description="column holding the second text of a sentence-pair task (premise/hypothesis, question/sentence: GLUE MRPC, "
        "QNLI, MNLI style); both texts are tokenized together as one input; null: one text per row",
    )
    label_column: str = Field(
        "label",
        description="column holding the label: integers 0 .. N-1 (kept as the class ids) or words (World, entailment; "
        "mapped to ids in the order of task.labels, else sorted by name); not read by an embedding task, whose files may "
        "also be .txt (one text per non-blank line)",
    )
    labels: list[str] | None = Field(
        None,
        min_length=2,
        description="the label names in class-id order, written to the exported models' id2label; words in the data must be "
        "among them, integers are their ids; null: the train split's words sorted by name, or for integer labels "
        "the Hugging Face ClassLabel names, else 0, 1, ...",
    )
    num_labels: int | None = Field(
        None,
        ge=2,
        description="number of classes: the size of the classification head; null: inferred from task.labels or the train "
        "split's labels (integers: the largest + 1, without gaps); when given it must agree with them",
    )
    columns: list[str] | None = Field(
        None,
        min_length=1,
        description="names of the columns of a headerless .tsv/.csv file, by position (the file then has no header row "
        "and every line must have this many fields); null: the first line is the header",
    )
    metric: MetricName = Field(
        "accuracy",
        description="the dev metric the search maximizes, constrains (search.constraints.max_accuracy_drop) and selects with. "
        "Classification: accuracy; f1, the F1 of label 1 (binary tasks only); or macro_f1, the unweighted mean of every "
        "class's F1; all of accuracy, the task's F1 (f1 for 2 labels, else macro_f1) and this one are recorded. "
        "Embedding (default cosine): cosine, the mean cosine between the teacher's and the model's embedding of a text; "
        "recall_at_10, the share of each text's 10 nearest neighbours (by the teacher) the model finds among the split; "
        "spearman, the rank correlation of pairwise similarities with the teacher's; all three are recorded. "
        "With task.pairs: gold_spearman, the rank correlation of each pair's cosine with its gold score; with "
        "task.retrieval: ndcg_at_10 and recall_at_100 of the judged queries; to be maximized they need their dev and test files. "
        "Each on dev and test",
    )
    max_length: int = Field(
        64,
        ge=8,
        le=512,
        description="tokens per sentence after truncation, for training, scoring and latency timing; raise it for long texts (slower)",
    )
    train_subset: int | None = Field(
        None,
        ge=1,
        description="rows of the train split drawn (seeded, without replacement) for the teacher and distillation, "
        "e.g. for a quick trial run; null: all rows",
    )
    dev_subset: int | None = Field(
        None,
        ge=1,
        description="score only the first N dev rows (a carved dev split is shuffled, so a random sample); "
        "faster trials, noisier decisions; null: all rows",
    )
    test_subset: int | None = Field(None, ge=1, description="score only the first N test rows in the final report; null: all rows")
    pairs: PairsConfig | None = Field(None, description="an embedding task's labelled sentence pairs, scored on dev and/or test "
                                      "beside the texts (gold_spearman); null: none")
    retrieval: RetrievalConfig | None = Field(None, description="an embedding task's retrieval files (queries, corpus, judgements), "
                                              "scored on dev and/or test beside the texts (ndcg_at_10, recall_at_100); null: none")

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_task(cls, data: Any) -> Any:
        """An embedding task's own defaults: it optimizes ``cosine`` (accuracy needs labels), and without a ``test`` file it
        carves ``test_size`` texts (SST-2's 872 validation rows are too few a corpus for neighbour recall)."""
        if isinstance(data, dict) and data.get("type") == "embedding":
            return {"metric": "cosine", "test": None, **data}
        if isinstance(data, dict) and data.get("type") == "causal-lm":
            return {**CAUSAL_LM_DEFAULTS, **data}
        return data

    @model_validator(mode="after")
    def _labels_agree(self) -> "TaskConfig":
        if self.metric not in TASK_METRICS[self.type]:
            raise ValueError(f"task.metric {self.metric!r} is not a metric of task.type {self.type!r}; allowed: {', '.join(TASK_METRICS[self.type])}")
        if self.type == "causal-lm":
            missing = [f"task.{split}" for split in ("dev", "test") if not getattr(self, split)]
            if missing or self.hf_dataset:
                raise ValueError("a causal-lm task reads plain-text files: set task.dev and task.test (hf_dataset is not read)")
        for section in ("pairs", "retrieval"):
            if getattr(self, section) is not None and self.type != "embedding":
                raise ValueError(f"task.{section} is scored by an embedding task; task.type {self.type!r} has labels of its own")
        section = LABELLED_METRICS.get(self.metric)
        if section is not None:
            files = getattr(self, section)
            missing = [f"task.{section}.{split}" for split in ("dev", "test") if files is None or getattr(files, split) is None]
            if missing:
                raise ValueError(f"task.metric {self.metric!r} is scored on task.{section}'s files: set {' and '.join(missing)}")
        if self.labels is not None:
            repeated = sorted({name for name in self.labels if self.labels.count(name) > 1})
            if repeated:
                raise ValueError(f"task.labels names each class once; repeated: {repeated}")
            if self.num_labels is not None and self.num_labels != len(self.labels):
                raise ValueError(f"task.num_labels ({self.num_labels}) disagrees with the {len(self.labels)} names of task.labels")
        if self.columns is not None:
            if self.hf_dataset:
                raise ValueError("task.columns names the columns of headerless .tsv/.csv files; a Hugging Face dataset names its own")
            labelled = [self.label_column] if self.type != "embedding" else []
            needed = [self.text_column, *labelled, *([self.text_pair_column] if self.text_pair_column else [])]
            missing = [name for name in needed if name not in self.columns]
            if missing or len(set(self.columns)) != len(self.columns):
                problem = f"lacks {missing}" if missing else "repeats a name"
                raise ValueError(f"task.columns {self.columns} {problem}; it must name text_column, label_column (and text_pair_column) once each")
        return self


class TeacherConfig(Strict):
    """How the uncompressed reference is obtained: a fine-tuned checkpoint, or fine-tuning."""

    checkpoint: str | None = Field(
        None,
        description="already fine-tuned classifier (local folder or hub id) used as the teacher, the recipe below ignored; "
        "null: fine-tune `model` with this recipe, cached by a hash of model files, training data and recipe",
    )
    steps: int = Field(
        1000, ge=1, description="AdamW optimizer steps of teacher fine-tuning over the shuffled train split; more: a better teacher, a longer first run"
    )
    batch_size: int = Field(32, ge=1, description="training rows per teacher step")
    learning_rate: float = Field(
        5e-5, gt=0, description="peak AdamW learning rate, reached after warm-up, then decayed linearly to 0 at the last step"
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="fraction of steps spent in linear learning-rate warm-up (0.06 = the first 6 %)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW (decoupled) weight decay of teacher fine-tuning")
    seed: int = Field(0, description="seed of the batch order and of torch (the new classification head); part of the teacher's cache key")
