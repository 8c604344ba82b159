"""Learned cost models: predict a policy's latency or size before measuring it, and store them per hardware."""

from autocompress.cost._features import FEATURES_VERSION, architecture_id, policy_features
from autocompress.cost._model import CostModel, CostTerms, cost_terms, is_clearly_infeasible
from autocompress.cost._store import CostModelStore

__all__ = ["FEATURES_VERSION", "architecture_id", "CostModel", "CostModelStore", "CostTerms", "cost_terms", "is_clearly_infeasible", "policy_features"]
