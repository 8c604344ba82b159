"""DeBERTa-v2 and v3: ``attention.self.query_proj/key_proj/value_proj`` plus, without ``share_att_key``,
the relative-position projections ``pos_key_proj``/``pos_query_proj``, which are cut with the heads."""

from autocompress.models._base import Adapter
from autocompress.models.shrunk import BlockLayout

ADAPTER = Adapter(
    family="DeBERTa-v2 / v3",
    model_types=("deberta-v2",),
    layout=BlockLayout(
        blocks="encoder.layer",
        attention="attention.self",
        head_rows=(
            "attention.self.query_proj",
            "attention.self.key_proj",
            "attention.self.value_proj",
            "attention.self.pos_key_proj",
            "attention.self.pos_query_proj",
        ),
        head_columns="attention.output.dense",
        ffn_rows="intermediate.dense",
        ffn_columns="output.dense",
        headless="attention.self",
    ),
)
