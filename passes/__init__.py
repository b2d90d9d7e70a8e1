"""Graph passes: pure functions ``Net -> Net`` (BN folding, trimming, k-means, ...)."""
