"""The pipeline itself: config, mixtures, buckets, streams, the sample contract, shards, tokenizer."""
