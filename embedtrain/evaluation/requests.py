"""How a compression (LLM2Vec-Gen) model's inputs are phrased at evaluation: as requests for the answer it embeds."""
from __future__ import annotations

# METHODS.md section 3: a compression model embeds the answer the LLM would give, so its inputs are requests
# for that answer. Retrieval / reranking queries ask for a passage, their documents for a summary (a run's
# eval.document_instruction replaces it); every other task type is symmetric and takes the STS request.
GENERATION_REQUESTS = {"query": "Generate a passage that best answers this question: ",
                       "document": "Summarize the following passage: ",
                       "symmetric": "Generate text that is semantically similar to this text: "}
ASYMMETRIC_TYPES = ("Retrieval", "Reranking")


def generation_request(task_metadata, prompt_type, document: str | None = None) -> str:
    """mteb instruction policy (task metadata, prompt type) -> the request for this input."""
    from mteb.types import PromptType  # mteb is the optional `eval` extra; only evaluation calls this

    if prompt_type == PromptType.document:
        return document or GENERATION_REQUESTS["document"]
    return GENERATION_REQUESTS["query" if task_metadata.type in ASYMMETRIC_TYPES else "symmetric"]
