"""Shard tests share 2 busy cores: FAISS's OpenMP spin-waiting collapses under contention
(PQ training measured 8x slower with 2 threads than with 1 at load > cores), so use one thread."""

import faiss

faiss.omp_set_num_threads(1)
