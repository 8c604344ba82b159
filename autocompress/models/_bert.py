"""BERT and the families that share its module names: RoBERTa, XLM-R, CamemBERT, ELECTRA, ERNIE, data2vec-text."""

from autocompress.models._base import Adapter
from autocompress.models.shrunk import BlockLayout

ADAPTER = Adapter(
    family="BERT / RoBERTa / XLM-R / ELECTRA",
    model_types=("bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text"),
    layout=BlockLayout(
        blocks="encoder.layer",
        attention="attention.self",
        head_rows=("attention.self.query", "attention.self.key", "attention.self.value"),
        head_columns="attention.output.dense",
        ffn_rows="intermediate.dense",
        ffn_columns="output.dense",
        headless="attention.self",
    ),
)
