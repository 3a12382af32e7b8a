"""bids_ketamine.cli."""
