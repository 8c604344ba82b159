"""ALBERT: one block (``albert_layer_groups.0.albert_layers.0``) applied ``num_hidden_layers`` times.

Because the weights are shared across depth, a policy addresses that one
block: its bits, magnitude pruning, head count and FFN width apply at every
depth. Dropping blocks is not searchable (there is one), and every block
keeps at least one head (its attention module applies the output projection
and LayerNorm itself). Checkpoints with several layer groups are refused.
"""

from autocompress.models._base import Adapter
from autocompress.models.shrunk import BlockLayout

ADAPTER = Adapter(
    family="ALBERT",
    model_types=("albert",),
    layout=BlockLayout(
        blocks="encoder.albert_layer_groups.0.albert_layers",
        attention="attention",
        head_rows=("attention.query", "attention.key", "attention.value"),
        head_columns="attention.dense",
        ffn_rows="ffn",
        ffn_columns="ffn_output",
        shared_blocks=True,
    ),
    notes="one shared block: num_blocks is not searchable, every policy choice applies at all depths; at least 1 head",
)
