"""An ONNX Runtime GenAI folder as an MLflow pyfunc model: prompts in, greedy continuations out.

MLflow has no flavor for ONNX Runtime GenAI, so a decoder's chosen folder is
logged as a ``PythonModel`` whose artifact is the folder itself:
``mlflow.pyfunc.load_model("models:/NAME@champion").predict(["The capital of France is"])``
generates with the very kernels the search timed; ``params={"max_new_tokens": N}``.
"""

from __future__ import annotations

from typing import Any

import mlflow

GENAI_ARTIFACT = "genai"
MAX_NEW_TOKENS = 32


class GenaiModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        import onnxruntime_genai as og

        self.model = og.Model(context.artifacts[GENAI_ARTIFACT])
        self.tokenizer = og.Tokenizer(self.model)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> list[str]:
        """The greedy continuation of each prompt (a list of strings, or a one-column DataFrame)."""
        import onnxruntime_genai as og

        prompts = model_input.iloc[:, 0].tolist() if hasattr(model_input, "iloc") else list(model_input)
        new_tokens = int((params or {}).get("max_new_tokens", MAX_NEW_TOKENS))
        continuations = []
        for prompt in prompts:
            ids = self.tokenizer.encode(str(prompt))
            settings = og.GeneratorParams(self.model)
            settings.set_search_options(max_length=len(ids) + new_tokens, do_sample=False)
            generator = og.Generator(self.model, settings)
            generator.append_tokens(ids)
            while not generator.is_done():
                generator.generate_next_token()
            continuations.append(self.tokenizer.decode(generator.get_sequence(0)[len(ids):]))
        return continuations
