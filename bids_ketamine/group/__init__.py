"""bids_ketamine.group."""
