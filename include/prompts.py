"""The one prompt layout: training inputs (data curation) and evaluation questions (generation).

Shared below both stages, so the model is asked exactly what it was trained on.
"""

from __future__ import annotations


def format_prompt(question: str, contexts: list[str], system: str = "") -> str:
    """The one prompt layout used for training inputs and for evaluation questions."""
    parts = [system] if system else []
    if contexts:
        parts.append("Context:\n" + "\n\n".join(contexts))
    parts.append(f"Question: {question}\nAnswer:")
    return "\n\n".join(parts)
