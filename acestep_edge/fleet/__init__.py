"""`acestep-edge fleet`: the server's Runware endpoint on Ray Serve, in front of many renderer replicas."""
