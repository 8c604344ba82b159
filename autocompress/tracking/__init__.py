"""MLflow tracking: a parent run per search and a child run per trial, reports, and the model registry."""

from autocompress._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "Tracker": "runs",
    **dict.fromkeys(["Registered", "register_run"], "registry"),
    **dict.fromkeys(["progress_series", "write_reports"], "reports"),
})
