"""A sentencepiece tokenizer trained locally on the training split (nothing is downloaded).

fairseq's RoBERTa recipe downloads GPT-2's BPE files, which machines without internet cannot do.
Here sentencepiece learns a subword vocabulary from ``train.txt`` and every split is written as
space-separated pieces, the input ``fairseq-preprocess`` builds its dictionary from. The model
file also serves ``--bpe sentencepiece --sentencepiece-model spm.model`` when the trained
RoBERTa is loaded with ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["encode_file", "train_tokenizer"]


def _spm():
    try:
        import sentencepiece
    except ImportError as err:
        raise RuntimeError("the tokenizer needs sentencepiece: pip install 'lawa-optim[fairseq]'") from err
    return sentencepiece


def train_tokenizer(train_txt: str | Path, prefix: str | Path, vocab_size: int = 4000, model_type: str = "bpe",
                    sample_lines: int = 2_000_000, seed: int = 1) -> Path:
    """Train sentencepiece on ``train_txt``; return the ``.model`` path (``prefix`` + ``.model``).

    Args:
        train_txt (str or Path): one sentence per line.
        prefix (str or Path): output prefix; writes ``prefix.model`` and ``prefix.vocab``.
        vocab_size (int): pieces in the vocabulary (default: 4000).
        model_type (str): ``"bpe"`` or ``"unigram"`` (default: ``"bpe"``).
        sample_lines (int): train on at most this many lines, sampled (default: 2,000,000).
        seed (int): sentencepiece's sampling seed (default: 1).
    """
    spm = _spm()
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        input=str(train_txt),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        input_sentence_size=sample_lines,
        shuffle_input_sentence=True,
        num_threads=1,  # deterministic
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def encode_file(model: str | Path, src: str | Path, dst: str | Path, batch_lines: int = 10_000) -> int:
    """Write ``src`` as space-separated pieces into ``dst`` (blank lines kept); return the piece count."""
    spm = _spm()
    sp = spm.SentencePieceProcessor(model_file=str(model))
    pieces = 0
    tmp = Path(str(dst) + ".tmp")
    with open(src, encoding="utf-8") as fin, open(tmp, "w", encoding="utf-8") as fout:
        batch: list[str] = []

        def flush() -> int:
            encoded = sp.encode([line for line in batch], out_type=str)
            fout.write("".join(" ".join(toks) + "\n" for toks in encoded))
            batch.clear()
            return sum(len(toks) for toks in encoded)

        for line in fin:
            batch.append(line.rstrip("\n"))
            if len(batch) >= batch_lines:
                pieces += flush()
        if batch:
            pieces += flush()
    tmp.replace(dst)
    return pieces
