"""A sequence model: input normalisation -> [conv stem] -> recurrent stack [| conv branch] -> head.

``config.json`` of a sequence model holds ``model_type: "sequence"``, the
recurrent stack's config under ``rnn``, the head (``"frame"``: one output
per step; ``"sequence"``: one output per sequence from its last valid
step; ``None``: the stack's output as is), labels, the front-end settings
under ``features`` and the input/output names. A sequence head reads the
last valid step (``pool: "last"``, the default, omitted from the config) or
the mean over valid steps (``pool: "mean"``; offline only, it cannot
stream). ``summary`` (optional, a list of row indices into the final hidden
state ``(L*dirs, B, H)``) makes a last-step head read those rows
concatenated instead of the last layer's; sums of rows are folded into the
head weight by the importer. ``stem`` (optional, ``{"kind": "conv",
"channels", "kernel", "stride", "input_size"}``) puts a causal strided conv
stem before the stack (:mod:`edgelstm.nn.stem`; offline only). ``fcn``
(optional, ``{"kind": "fcn", "channels": [...], "kernels": [...]}``, optional
``"dropout"`` on the stack's features while training) runs a
fully convolutional branch beside the stack whose pooled features are
concatenated after the stack's before a sequence head (the LSTM-FCN design,
:mod:`edgelstm.nn.fcn`; offline only). ``provenance``
(optional) records how the weights were trained.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn

from edgelstm.errors import ConfigError
from edgelstm.fast import dense as _dense
from edgelstm.nn.fcn import ConvBranch
from edgelstm.nn.layers import RECURRENT, Recurrent, SaveMixin
from edgelstm.nn.stem import ConvStem, stem_lengths

HEADS = ("frame", "sequence", None)
POOLS = ("last", "mean")


class Normalize(nn.Module):
    """Per-feature ``(x - mean) / std`` with stored statistics ``(I,)``."""

    def __init__(self, size: int):
        super().__init__()
        self.mean = mx.zeros((size,))
        self.std = mx.ones((size,))
        self.freeze()  # statistics of the data, not something an optimiser should move

    def __call__(self, x):
        """x ``(..., I)`` -> normalised ``(..., I)``."""
        return (x - self.mean) / self.std


class SequenceModel(SaveMixin, nn.Module):
    """Recurrent stack with optional normalisation and a linear head.

    Args:
        rnn: the recurrent stack (:class:`edgelstm.LSTM`, ``GRU`` or ``RNN``).
        num_outputs: outputs of the head; ignored when ``head`` is ``None``.
        head: ``"frame"``, ``"sequence"`` or ``None``.
        labels: class names, one per output, or ``None``.
        normalize: keep input mean/std (``norm.mean``, ``norm.std``).
        features: front-end settings stored with the model (a dict).
        input_names, output_names: names used by ONNX export and ``run``.
        pool: how a sequence head summarises the steps: ``"last"`` (the
            final hidden state, streams) or ``"mean"`` (mean of the last
            layer's outputs over valid steps; whole sequences only).
        summary: rows of the final hidden state ``(L*dirs, B, H)`` a
            last-step sequence head reads, concatenated in this order
            (``None``: the last layer's, ``[L*dirs - dirs, ..., L*dirs - 1]``).
        provenance: JSON-able training record stored in ``config.json``.
        stem: ``{"kind": "conv", "channels": C, "kernel": k, "stride": s}``
            puts a :class:`~edgelstm.nn.stem.ConvStem` between the
            normalisation and the recurrent stack (whose ``input_size`` is
            then ``C``); the model then takes the stem's ``input_size``
            features per step (also stored under ``stem``) and cannot stream.
        fcn: ``{"kind": "fcn", "channels": [C_1, ...], "kernels": [k_1, ...]}``
            (and optionally ``"dropout": p`` and ``"padding": "same"`` or
            ``"causal"``, the default when absent) adds a
            :class:`~edgelstm.nn.fcn.ConvBranch` on the normalised input; a sequence head then reads the stack's summary ``(B, F)``
            concatenated with the branch's pooled ``(B, C_n)``. Needs
            ``head="sequence"``; the model cannot stream.
    """

    def __init__(
        self,
        rnn: Recurrent,
        num_outputs: int | None = None,
        head: str | None = "frame",
        labels: list[str] | None = None,
        normalize: bool = False,
        features: dict | None = None,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
        pool: str = "last",
        provenance: dict | None = None,
        summary: list[int] | None = None,
        stem: dict | None = None,
        fcn: dict | None = None,
    ):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"head must be one of 'frame', 'sequence' or null, got {head!r}")
        if pool not in POOLS:
            raise ConfigError(f"pool must be 'last' or 'mean', got {pool!r}")
        if pool != "last" and head != "sequence":
            raise ConfigError(f"pool={pool!r} needs head='sequence'")
        if provenance is not None and not isinstance(provenance, dict):
            raise ConfigError("provenance must be an object")
        if labels is not None:
            labels = [str(x) for x in labels]
            num_outputs = num_outputs or len(labels)
            if len(labels) != num_outputs:
                raise ConfigError(f"{len(labels)} labels for {num_outputs} outputs")
        if head is not None and not num_outputs:
            raise ConfigError("a model with a head needs num_outputs (or labels)")
        summary = _check_summary(summary, rnn, head, pool)
        self.rnn = rnn
        self.head_type = head
        self.num_outputs = num_outputs if head is not None else rnn.output_size
        self.labels = labels
        self.features = dict(features) if features else None
        self.input_names = list(input_names or ["input"])
        self.output_names = list(output_names or ["output"])
        self.pool = pool
        self.provenance = dict(provenance) if provenance else None
        self.summary = summary
        if stem is not None:
            if not rnn.batch_first:
                raise ConfigError("a stem needs a batch-first recurrent stack")
            size = stem.get("input_size") if isinstance(stem, dict) else None
            self.stem = ConvStem.from_config(
                size if size is not None else rnn.input_size,
                {k: v for k, v in stem.items() if k != "input_size"})
            if self.stem.channels != rnn.input_size:
                raise ConfigError(f"the stem gives {self.stem.channels} channels, the recurrent "
                                  f"stack takes {rnn.input_size}")
        if fcn is not None:
            if head != "sequence" or not rnn.batch_first:
                raise ConfigError("an fcn branch needs head='sequence' and a batch-first stack")
            self.fcn = ConvBranch.from_config(self.input_size, fcn)
        if normalize:
            self.norm = Normalize(self.input_size)
        if head is not None:
            width = rnn.output_size if summary is None else len(summary) * rnn.hidden_size
            if fcn is not None:
                width += self.fcn.output_size
            self.head = nn.Linear(width, num_outputs)

    @property
    def input_size(self) -> int:
        """Features per input step, ``I``."""
        return self.stem.input_size if "stem" in self else self.rnn.input_size

    def config(self) -> dict:
        """JSON-able description, the ``config.json`` of a checkpoint."""
        return {
            "model_type": "sequence", "rnn": self.rnn.config(), "head": self.head_type,
            "num_outputs": self.num_outputs, "labels": self.labels,
            "normalize": "norm" in self, "features": self.features,
            "input_names": self.input_names, "output_names": self.output_names,
            # optional keys only when set: older checkpoints' configs stay byte-identical
            **({"pool": self.pool} if self.pool != "last" else {}),
            **({"summary": list(self.summary)} if self.summary is not None else {}),
            **({"stem": {**self.stem.config(), "input_size": self.stem.input_size}}
               if "stem" in self else {}),
            **({"fcn": self.fcn.config()} if "fcn" in self else {}),
            **({"provenance": self.provenance} if self.provenance else {}),
        }

    @property
    def can_stream(self) -> bool:
        """Whether a chunk-by-chunk session gives the offline result."""
        return (not self.rnn.bidirectional and self.pool == "last" and "stem" not in self
                and "fcn" not in self)

    @classmethod
    def from_config(cls, config: dict) -> SequenceModel:
        """Build an untrained model from :meth:`config` output."""
        rc = config.get("rnn") or {}
        kind = rc.get("model_type")
        if kind not in RECURRENT:
            raise ConfigError(f"rnn.model_type must be lstm, gru or rnn, got {kind!r}")
        return cls(
            RECURRENT[kind].from_config(rc), num_outputs=config.get("num_outputs"),
            head=config.get("head"), labels=config.get("labels"),
            normalize=bool(config.get("normalize")), features=config.get("features"),
            input_names=config.get("input_names"), output_names=config.get("output_names"),
            pool=config.get("pool") or "last", provenance=config.get("provenance"),
            summary=config.get("summary"), stem=config.get("stem"), fcn=config.get("fcn"),
        )

    def zero_state(self, batch_size: int):
        """Zero recurrent state for ``batch_size`` streams."""
        return self.rnn.zero_state(batch_size)

    def __call__(self, x, state=None, lengths=None, return_state: bool = False,
                 fast: bool | None = None) -> Any:
        """Run the model.

        Args:
            x: ``(B, T, I)`` or unbatched ``(T, I)``.
            state: recurrent state as for :class:`edgelstm.LSTM`.
            lengths: valid steps per sequence ``(B,)``.
            return_state: also return the final recurrent state.

        Returns:
            ``(B, T, C)`` for a frame head, ``(B, C)`` for a sequence head
            (``C`` = ``num_outputs``); with ``return_state``, ``(out, state)``.
        """
        batch = x.shape[0] if x.ndim == 3 else 1
        head = self.get("head")
        dense = self._dense_on_kernel(x, batch, head, fast)
        if "norm" in self:
            x = (_dense.normalize(x, self.norm.mean, self.norm.std, batch=batch) if dense
                 else self.norm(x))
        if "fcn" in self:
            if state is not None:
                raise ConfigError("a model with an fcn branch cannot stream (its pooled conv "
                                  "features are not carried as state); run whole sequences")
            branch = self.fcn(x, lengths, fast=fast)
        if "stem" in self:
            if state is not None:  # the final state is an output; resuming from one is not
                raise ConfigError("a model with a conv stem cannot stream (no state for the "
                                  "stem's input window); run whole sequences")
            x = self.stem(x)
            lengths = stem_lengths(lengths, self.stem.stride)
        y, final = self.rnn(x, state, lengths=lengths, fast=fast)
        if dense and head is not None:
            head = _kernel_head(head, batch)
        if "fcn" in self:
            summary = _mean_steps(y, lengths) if self.pool == "mean" else self._last_step(y, final)
            if self.training and self.fcn.dropout:  # evaluation: identity, nothing to export
                summary = nn.Dropout(self.fcn.dropout)(summary)
            y = head(mx.concatenate([summary, branch], axis=-1))
        elif self.head_type == "sequence" and self.pool == "mean":
            y = head(_mean_steps(y, lengths))
        elif self.head_type == "sequence" and dense and self._reads_last_row():
            y = head(final[0] if isinstance(final, tuple) else final, row=-1)
        elif self.head_type == "sequence":
            y = head(self._last_step(y, final))
        elif self.head_type == "frame":
            y = head(y)
        return (y, final) if return_state else y

    def _dense_on_kernel(self, x, batch: int, head, fast) -> bool:
        """Whether the normalisation and ``head`` run as the kernels' dense ops.

        In evaluation only, where the recurrent kernels run (see
        :func:`edgelstm.fast.dense.on_kernel`): a streamed chunk of a
        computed input then runs without MLX's stream thread, ~100 µs a chunk.
        """
        if fast is False or self.training or "fcn" in self:  # fcn: the head reads a concatenation
            return False
        if head is not None and type(head) is not nn.Linear:  # quantized heads: MLX ops
            return False
        return _dense.on_kernel(batch, x, head.weight if head is not None else None)

    def _reads_last_row(self) -> bool:
        """A last-step head reading just the last state row (one direction, no summary)."""
        return self.summary is None and self.rnn.num_directions == 1

    def _last_step(self, y, final):
        """Per-sequence summary ``(B, n*H)``: the ``summary`` rows of the final hidden state.

        By default the last layer's final hidden state(s), ``n = dirs``.
        """
        h = final[0] if isinstance(final, tuple) else final
        if self.summary is not None:
            return mx.concatenate([h[r] for r in self.summary], axis=-1)
        dirs = self.rnn.num_directions
        last = h[-dirs:]  # (dirs, B, H) or (dirs, H) when unbatched
        return mx.concatenate(list(last), axis=-1)


def _kernel_head(head: nn.Linear, batch: int):
    """``head`` as the kernels' linear op: ``f(z, row=None)`` (``row``: read ``z[row]``)."""
    bias = head.get("bias")
    return lambda z, row=None: _dense.linear(z, head.weight, bias, batch=batch, row=row)


def _check_summary(summary, rnn, head, pool) -> list[int] | None:
    """Validated ``summary`` rows; the default (last layer's rows, in order) becomes ``None``."""
    if summary is None:
        return None
    rows = rnn.num_layers * rnn.num_directions
    if head != "sequence" or pool != "last":
        raise ConfigError("summary needs head='sequence' and pool='last'")
    if (not isinstance(summary, (list, tuple)) or not summary
            or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < rows
                       for r in summary)):
        raise ConfigError(f"summary must be a non-empty list of state rows in [0, {rows}), "
                          f"got {summary!r}")
    summary = [int(r) for r in summary]
    return None if summary == list(range(rows - rnn.num_directions, rows)) else summary


def _mean_steps(y, lengths):
    """Mean of ``y`` ``(B, T, F)`` (or ``(T, F)``) over each sequence's valid steps -> ``(B, F)``."""
    if y.ndim == 2:
        return y.mean(axis=0)
    if lengths is None:
        return y.mean(axis=1)
    lengths = mx.array(lengths) if not isinstance(lengths, mx.array) else lengths
    mask = (mx.arange(y.shape[1])[None, :] < lengths[:, None]).astype(y.dtype)
    total = (y * mask[:, :, None]).sum(axis=1)
    return total / mx.maximum(lengths.astype(y.dtype), 1.0)[:, None]
