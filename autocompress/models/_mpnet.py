"""MPNet: ``attention.attn.q/k/v/o`` and a BERT-style FFN.

Its relative position bias is computed once per forward for all blocks with
one row per head, so removing a head from one block would misalign it: the
head count is not searchable; FFN width and blocks are.
"""

from autocompress.models._base import Adapter
from autocompress.models.shrunk import BlockLayout

ADAPTER = Adapter(
    family="MPNet",
    model_types=("mpnet",),
    layout=BlockLayout(
        blocks="encoder.layer",
        attention="attention.attn",
        head_rows=("attention.attn.q", "attention.attn.k", "attention.attn.v"),
        head_columns="attention.attn.o",
        ffn_rows="intermediate.dense",
        ffn_columns="output.dense",
        fixed_heads="its relative position bias is shared by all blocks, one row per head",
    ),
    notes="heads are not searchable (a position bias shared by all blocks, per head)",
)
