"""Data on disk: the corpus (Arrow shards + Parquet tables), importers of THUMOS / ActivityNet layouts, synthetic corpora, detections I/O."""
