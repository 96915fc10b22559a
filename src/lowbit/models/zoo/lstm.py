"""An LSTM sequence classifier: ``nn.Embedding`` -> ``nn.LSTM`` -> Linear on the last hidden state."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..checks import check_input

__all__ = ["LSTMClassifier"]


class LSTMClassifier(nn.Module):
    """Token ids ``[batch, seq_len]`` -> embedding -> LSTM (batch first) -> ``fc`` on the final hidden state."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, vocab: int = 100, embed: int = 32, hidden: int = 32, layers: int = 1
    ) -> None:
        super().__init__()
        check_input(input_shape, num_classes, "(seq_len,)", (1,))
        if min(vocab, embed, hidden, layers) < 1:
            raise ValueError(f"vocab, embed, hidden and layers must be >= 1, got {vocab}, {embed}, {hidden}, {layers}")
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Class logits."""
        _, (h, _) = self.lstm(self.embed(tokens))
        return self.fc(h[-1])
