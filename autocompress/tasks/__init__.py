"""The task: how its data is read and split, its teacher, and the metrics a search maximizes.

``base.Task`` is the seam every task implements (``classification`` is the
first); ``registry`` names them for ``task.type``. ``files`` reads one task file, ``data`` turns files or Hugging Face datasets into splits,
``teacher`` fine-tunes (once, cached) the model the policies compress, and
``metrics`` names and computes the scores (accuracy, F1, macro F1).
"""

from autocompress._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["Examples", "batches", "load_split", "read_file", "resolve_labels", "task_labels", "token_counts"], "data"),
    **dict.fromkeys(["RawSplit", "read_raw"], "files"),
    **dict.fromkeys(["check_metric", "classification_scores", "split_scores", "task_metrics"], "metrics"),
    **dict.fromkeys(["Teacher", "get_teacher", "locate_teacher", "teacher_key"], "teacher"),
    "Task": "base",
    "SequenceClassification": "classification",
    **dict.fromkeys(["TASKS", "task_for"], "registry"),
})
