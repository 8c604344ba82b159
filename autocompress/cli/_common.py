"""What every command shares: exit statuses, logging to the screen and the search's log file, opening a study."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from autocompress.config import ConfigError
from autocompress.credentials import SecretFilter
from autocompress.deprecation import RenamedWarning

NO_FEASIBLE_TRIAL = 3
"""Exit status of a search in which no trial met the constraints."""
INTERRUPTED = 130
"""Exit status of a search stopped by Ctrl-C or SIGTERM."""
QUIET_LOGGERS = ("optuna", "transformers", "ray", "mlflow", "alembic", "httpx", "urllib3", "root", "onnxruntime")
"""Libraries whose info and warnings (per-trial parameter dumps, load reports) go to the log file, not the screen."""


def setup_logging(log_file: Path | None = None) -> None:
    """Everything at INFO into ``log_file``; on screen, our own lines (only warnings under the live line of a terminal)."""
    import optuna
    import transformers

    for name in ("mlflow", "ray"):  # libraries that attach their own screen handler: route them through ours
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    transformers.utils.logging.disable_progress_bar()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, "autocompress", False)]:
        root.removeHandler(handler)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if sys.stderr.isatty() else logging.INFO)
    console.addFilter(lambda record: not record.name.startswith(QUIET_LOGGERS) or record.levelno >= logging.ERROR)
    console.setFormatter(fmt)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file)
        file.setFormatter(fmt)
        handlers.append(file)
    for handler in handlers:
        handler.autocompress = True
        handler.addFilter(SecretFilter())  # a driver's error quoting a store URL never prints its password
        root.addHandler(handler)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """A renamed field is the user's file's business, not our source line's: one line naming both names."""
    if issubclass(category, RenamedWarning):
        return f"autocompress: warning: {message}\n"
    return _PYTHON_FORMAT_WARNING(message, category, filename, lineno, line)


_PYTHON_FORMAT_WARNING = warnings.formatwarning


def load_study(storage: str, name: str):
    """The study ``name`` in ``storage``, or a one-line error naming both."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from autocompress.credentials import masked, resolve, scrub

    try:
        return optuna.load_study(study_name=name, storage=resolve(storage, "--storage"))
    except KeyError:
        raise ConfigError(f"{masked(storage)}: no study named {name!r}") from None
    except (SQLAlchemyError, RuntimeError, ValueError, ImportError, OSError) as error:  # not an Optuna database, a bad URL, a missing driver
        reason = scrub(str(error).strip().splitlines()[0])
        raise ConfigError(f"{masked(storage)}: cannot open as an Optuna storage ({reason})") from None
