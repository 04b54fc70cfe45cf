"""GeneratorService: validation, queue, micro-batcher, gallery; adapters per backend."""
