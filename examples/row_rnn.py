"""A recurrent classifier that reads an image row by row: each row of pixels is one time step (the
"sequential MNIST" task), embedded by a Linear layer, run through an nn.LSTM or nn.GRU, the last
step's output classified by a Linear head. Sequence models of speech, sensors or text have this
shape; crossdistill compresses it as it is (its gate weights as `rnn.ih_l0`, `rnn.hh_l0`, ...;
docs/any_model.md, recurrent layers). Nothing is registered.

    from examples.row_rnn import row_rnn
    model = row_rnn("lstm", features=28, width=128)      # input (N, 1, 28, 28): 28 steps of 28

benchmarks/recurrent_fashion.py trains one on Fashion-MNIST and compresses it from K images per
class (docs/results/any_model.md).
"""
from __future__ import annotations

import torch
from torch import nn


class RowRNN(nn.Module):
    def __init__(self, kind: str, features: int, width: int, layers: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind](width, width, num_layers=layers, batch_first=True)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.relu(self.embed(x.flatten(1, -2)))  # (N, 1, rows, cols) -> (N, rows, width)
        return self.head(self.rnn(steps)[0][:, -1])


def row_rnn(kind: str = "lstm", features: int = 28, width: int = 128, layers: int = 2,
            num_classes: int = 10) -> RowRNN:
    return RowRNN(kind, features, width, layers, num_classes)
