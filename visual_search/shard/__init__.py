"""One search shard: float16 vector store + metadata, FAISS IVF-PQ with exact re-scoring,
write-ahead log and snapshots, served over gRPC (see proto/visual_search/v1/shard.proto)."""
