"""bids_ketamine.simulate."""
