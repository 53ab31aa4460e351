"""The chaos harness: real faults against real nodes, and a checker for acknowledged-message loss."""
