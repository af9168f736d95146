"""Data: the Cilium CRDs (vendored from ../shared/reference/cilium-crds) and the NetworkPolicy schema."""
