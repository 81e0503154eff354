"""Model cards and Hub pushes."""

from .card import CardConfig, gather_card_facts, render_model_card, write_model_card
from .validation import validate_card_data

__all__ = ["CardConfig", "gather_card_facts", "render_model_card", "validate_card_data", "write_model_card"]
