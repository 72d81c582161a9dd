"""Swarm benchmark: ours, direct download and BitTorrent on one shaped network, against the Kumar–Ross bound."""
