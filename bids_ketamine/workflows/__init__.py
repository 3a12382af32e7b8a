"""bids_ketamine.workflows."""
