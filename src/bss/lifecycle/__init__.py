"""The audience lifecycle: member erasure, replace-mode uploads and opt-outs."""
