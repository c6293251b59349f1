"""The registered models, built from the model config and the dataset's shapes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn

from dltune.errors import ConfigError, UserCodeError
from dltune.experiment.sections import ModelConfig
from dltune.imports import call, is_import_path, load, where
from dltune.registry import Registry

__all__ = ["MODELS", "build_model", "count_parameters"]

Builder = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]
MODELS: Registry[Builder] = Registry("model")

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU,
    "elu": nn.ELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...] | None, n_outputs: int, folders: Sequence[str] = (),
                factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """The model named by model.name for inputs of `input_shape` (one example) and `n_outputs` logits.

    Your own: model.name = "my_models:build" (looked for in `folders` first) or `factory` from Python is called as
    build(input_shape, n_outputs, **model.args) and must return an nn.Module; as build(**model.args) where the
    inputs' shape is not known (`input_shape` None: batches of the user's own DataLoaders)."""
    if factory is not None or is_import_path(cfg.name):
        fn = factory if factory is not None else load(cfg.name, "model.name", folders)
        named = where("model.name", cfg.name, factory)
        sizes = () if input_shape is None else (tuple(input_shape), n_outputs)
        model = call(fn, named, *sizes, **cfg.args)
        if not isinstance(model, nn.Module):
            raise UserCodeError(f"{named}: returned a {type(model).__name__}, not a torch nn.Module")
        return model
    if cfg.args:
        raise ConfigError(f"model.args: only for a model of your own (model.name = \"my_models:build\"); "
                          f"{cfg.name} takes its settings from [model] keys")
    if input_shape is None:
        raise ConfigError(f"model.name: {cfg.name} learns its sizes from (x, y) examples, which DataLoaders of your "
                          "own do not give; name a factory of your own (model.name = \"my_models:build\", called "
                          "with model.args)")
    return MODELS.get(cfg.name, path="model.name")(cfg, tuple(input_shape), n_outputs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _dense(sizes: Sequence[int], cfg: ModelConfig) -> list[nn.Module]:
    """Linear → activation → dropout for each consecutive pair of sizes."""
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), ACTIVATIONS[cfg.activation]()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
    return layers


@MODELS.register("mlp")
def mlp(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """Multi-layer perceptron on flattened inputs. Keys: hidden, activation, dropout."""
    n_in = int(torch.Size(input_shape).numel())
    sizes = [n_in, *cfg.hidden]
    return nn.Sequential(nn.Flatten(), *_dense(sizes, cfg), nn.Linear(sizes[-1], n_outputs))


@MODELS.register("cnn")
def cnn(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """Conv blocks then a dense head; image data only. Keys: channels, kernel_size, pooling, head, activation, dropout."""  # noqa: E501  (`dltune models` shows this first line whole)
    if len(input_shape) != 3:
        raise ConfigError(f"model.name: cnn needs image data (C, H, W); "
                          f"this dataset has {input_shape[0]} tabular features")
    blocks: list[nn.Module] = []
    c_in, size = input_shape[0], min(input_shape[1:])
    for c_out in cfg.channels:
        blocks += [nn.Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2), ACTIVATIONS[cfg.activation]()]
        if cfg.pooling != "none" and size >= 2:
            blocks.append(nn.MaxPool2d(2) if cfg.pooling == "max" else nn.AvgPool2d(2))
            size //= 2
        c_in = c_out
    features = nn.Sequential(*blocks, nn.Flatten())
    with torch.no_grad():
        n_flat = features(torch.zeros(1, *input_shape)).shape[1]
    sizes = [n_flat, *cfg.head]
    return nn.Sequential(features, *_dense(sizes, cfg), nn.Linear(sizes[-1], n_outputs))


# the recurrent layers a SequenceClassifier is built on: each takes (input_size, hidden_size, ...), which their base
# class nn.RNNBase, built with a mode first, does not
RecurrentCell = type[nn.RNN] | type[nn.LSTM] | type[nn.GRU]


class SequenceClassifier(nn.Module):
    """A recurrent net over an image read row by row (H steps of C·W features), or a table read
    feature by feature (D steps of 1), with a linear layer on the last layer's final hidden state."""

    def __init__(self, cell: RecurrentCell, cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> None:
        super().__init__()
        if len(input_shape) == 3:
            c, h, w = input_shape
            self.steps, self.features = h, c * w
        else:
            self.steps, self.features = int(torch.Size(input_shape).numel()), 1
        self.rnn = cell(self.features, cfg.hidden_size, num_layers=cfg.layers, batch_first=True,
                        bidirectional=cfg.bidirectional, dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.directions = 2 if cfg.bidirectional else 1
        self.out = nn.Linear(cfg.hidden_size * self.directions, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, C, H, W) -> (B, H, C*W)
            x = x.permute(0, 2, 1, 3).flatten(2)
        else:  # (B, D) -> (B, D, 1)
            x = x.reshape(x.shape[0], self.steps, self.features)
        _, h_n = self.rnn(x)
        if isinstance(h_n, tuple):  # LSTM: (h, c)
            h_n = h_n[0]
        last = h_n[-self.directions:]  # (directions, B, hidden): the top layer's final states
        return self.out(last.transpose(0, 1).flatten(1))


def _recurrent(cell: RecurrentCell, name: str) -> Builder:
    def build(cfg: ModelConfig, input_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
        return SequenceClassifier(cell, cfg, input_shape, n_outputs)

    build.__doc__ = (f"{name} over image rows (or table features) as a sequence. "
                     "Keys: hidden_size, layers, bidirectional, dropout.")
    return build


MODELS.register("rnn", _recurrent(nn.RNN, "Elman RNN (tanh)"))
MODELS.register("lstm", _recurrent(nn.LSTM, "LSTM"))
MODELS.register("gru", _recurrent(nn.GRU, "GRU"))
