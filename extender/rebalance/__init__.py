"""The rebalancer: moves work off nodes that stay hot (pure `detect`/`choose`, API edge apart)."""
