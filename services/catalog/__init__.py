"""CatalogService: the registry of models, samplers and backends."""
