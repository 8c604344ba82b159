"""The task: how its data is read and split, its teacher, its head, and the metrics a search maximizes.

``base.Task`` is the seam every task implements: ``classification`` (a label
per text or pair) and ``embedding`` (sentence embeddings); ``registry`` names
them for ``task.type``. ``heads`` says how a task reads, scores, distils and
verifies a model's output. ``files`` reads one task file, ``data`` turns
labelled files or Hugging Face datasets into splits and ``texts`` unlabelled
ones, ``teacher`` fine-tunes (once, cached) a classifier the policies
compress, ``metrics`` scores classifiers (accuracy, F1, macro F1) and
``embedding_metrics`` embeddings against their teacher's (cosine, neighbour
recall, Spearman; output quantization) and against labels (gold Spearman of
pairs, nDCG@10 and recall@100 of retrieval), whose files ``evaluation_sets`` reads.
``causal_lm`` (a decoder's perplexity on plain text) is the third task;
``language_modeling`` scores decoders: perplexity over fixed windows, KL to the
teacher, greedy agreement.
"""

from autocompress._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    **dict.fromkeys(["Examples", "batches", "load_split", "read_file", "resolve_labels", "task_labels", "token_counts"], "data"),
    **dict.fromkeys(["RawSplit", "read_raw", "read_rows"], "files"),
    **dict.fromkeys(["check_metric", "classification_scores", "split_scores", "task_metrics"], "metrics"),
    **dict.fromkeys(["Teacher", "TeacherLocation", "get_teacher", "hash_files", "locate_teacher", "teacher_key"], "teacher"),
    "Task": "base",
    "SequenceClassification": "classification",
    **dict.fromkeys(["EmbeddingTeacher", "SentenceEmbeddingTask"], "embedding"),
    **dict.fromkeys(["CausalLanguageModeling", "CausalLMTeacher", "NextToken", "Windows"], "causal_lm"),
    **dict.fromkeys(["EMBEDDING_METRICS", "bytes_per_vector", "embedding_scores", "mean_cosine", "neighbour_recall", "quantize_embeddings",
                     "similarity_spearman", "gold_spearman", "retrieval_scores"], "embedding_metrics"),
    **dict.fromkeys(["EvaluationSets", "PairSet", "RetrievalSet", "evaluation_scores", "load_evaluation_sets"], "evaluation_sets"),
    **dict.fromkeys(["EMBEDDING_TARGET", "Calibration", "Head", "Logits", "SentenceEmbedding"], "heads"),
    **dict.fromkeys(["Texts", "load_split_texts", "load_texts"], "texts"),
    **dict.fromkeys(["TASKS", "task_for"], "registry"),
})
