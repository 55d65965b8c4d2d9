"""RoBERTa masked-LM pre-training with fairseq and the LAWA plugin: corpus, tokenizer, runner, results."""
