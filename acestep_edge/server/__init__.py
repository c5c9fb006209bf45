"""`acestep-edge serve`: a local Runware-compatible HTTP endpoint and web studio over one Pipeline."""
