"""Generated gRPC stubs of the public API: search.proto and the shard.proto messages it imports
(written here by scripts/gen_proto.sh, or by the package build when missing; not in git)."""
