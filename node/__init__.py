"""The Tidelog node: storage engine, Raft core, and the gRPC broker that drives them."""
