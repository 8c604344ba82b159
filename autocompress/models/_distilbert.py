"""DistilBERT: ``transformer.layer`` blocks, ``q_lin``/``k_lin``/``v_lin``/``out_lin`` attention, ``ffn.lin1``/``lin2``.

Its attention module also applies the output projection, so it has no
zero-width stand-in: every block keeps at least one head.
"""

from autocompress.models._base import Adapter
from autocompress.models.shrunk import BlockLayout

ADAPTER = Adapter(
    family="DistilBERT",
    model_types=("distilbert",),
    layout=BlockLayout(
        blocks="transformer.layer",
        attention="attention",
        head_rows=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        head_columns="attention.out_lin",
        ffn_rows="ffn.lin1",
        ffn_columns="ffn.lin2",
        head_count_attrs=("n_heads",),
        head_width_attrs=("dim",),
        ffn_config_attr="hidden_dim",
    ),
    notes="every block keeps at least 1 head",
)
