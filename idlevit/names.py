"""Names in the artefact contract: the exported graph's inputs and outputs, and the bundled dataset."""

from __future__ import annotations

IMAGES = "images"
LOGITS = "logits"
#: The bundled dataset: scikit-learn's 8x8 digits, as `--data digits` names it (see idlevit.data).
DIGITS = "digits"


def kept_indices_name(layer: int) -> str:
    """Name of the graph output carrying the kept token positions of idle block ``layer``."""
    return f"kept_indices_{layer}"


def token_scores_name(layer: int) -> str:
    """Reference-only output: the (B, N) CLS scores of the image tokens in idle block ``layer``."""
    return f"token_scores_{layer}"
